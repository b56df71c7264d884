#pragma once
// numpy's .npy and .npz files (numpy.save, numpy.savez, numpy.load), read
// and written without Python: versions 1.0, 2.0 and 3.0 of the format, the
// numeric dtypes, either byte order, C and Fortran order, memory mapping;
// .npz archives stored or deflated (through libzip). See docs/python.md.
//
//   joblib::save_npy("a.npy", array);                 // numpy.load("a.npy") reads it
//   auto a = joblib::load_npy<double>("a.npy");       // Array<double>
//   auto m = joblib::load_npy<double>("a.npy", {.mmap_mode = joblib::MmapMode::r});  // mapped
//   joblib::save_npz("set.npz", {{"x", x}, {"y", y}});   // numpy.savez (x, y of any dtypes)
//   auto set = joblib::load_npz("set.npz");           // set.at<double>("x")
#include <joblib/array.hpp>
#include <joblib/detail/throw.hpp>
#include <joblib/export.hpp>
#include <joblib/options.hpp>

#include <complex>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace joblib {

/// Options of load_npy.
struct NpyOptions {
  MmapMode mmap_mode = MmapMode::none;  // r, r+ or c: map the file's data (C order, native byte order only)
};

namespace detail {

/// numpy's dtype of T: kind ('b' bool, 'i' signed, 'u' unsigned, 'f' float,
/// 'c' complex) and item size; kind 0 for a type .npy files cannot hold.
template <class T>
constexpr std::pair<char, std::size_t> npy_dtype() {
  if constexpr (std::is_same_v<T, bool>)
    return {'b', 1};
  else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>)
    return {'i', sizeof(T)};
  else if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>)
    return {'u', sizeof(T)};
  else if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)
    return {'f', sizeof(T)};
  else if constexpr (std::is_same_v<T, std::complex<float>> || std::is_same_v<T, std::complex<double>>)
    return {'c', sizeof(T)};
  else
    return {0, 0};
}

/// What a .npy file holds, read into (or mapped as) a C-order buffer of the
/// native byte order.
struct NpyData {
  std::vector<std::size_t> shape;
  SharedBuffer buffer;
};

/// Reads `path`, checking that its dtype is (kind, item_size). Throws
/// StoreError (not a .npy file, a bad header, another dtype, truncated data,
/// mmap_mode on a Fortran-order or byte-swapped file), std::invalid_argument
/// (mmap_mode w+), std::filesystem::filesystem_error (cannot open).
JOBLIB_EXPORT NpyData load_npy_data(const std::filesystem::path& path, char kind, std::size_t item_size,
                                    MmapMode mode);

/// Writes `bytes` (C order, native byte order) as a .npy file of dtype (kind,
/// item_size) and `shape`, atomically. Throws std::filesystem::filesystem_error.
JOBLIB_EXPORT void save_npy_data(const std::filesystem::path& path, char kind, std::size_t item_size,
                                 const std::vector<std::size_t>& shape, const std::byte* bytes);

/// An array of any numeric dtype (kind, item size), C order, native byte
/// order: what .npz archives and Python files hold before a caller names T.
struct AnyArray {
  char kind = 0;
  std::size_t item_size = 0;
  std::vector<std::size_t> shape;
  SharedBuffer buffer;
};

/// "float64", "int32", "bool", "complex128"... for (kind, item size).
JOBLIB_EXPORT std::string dtype_name(char kind, std::size_t item_size);

/// Throws StoreError "{what} holds {dtype of a}, not {kind, item_size}"
/// unless `a` has that dtype.
JOBLIB_EXPORT void check_dtype(const AnyArray& a, char kind, std::size_t item_size, std::string_view what);

/// Views `a` as an AnyArray (shares its buffer).
template <class T>
AnyArray to_any(const Array<T>& a) {
  constexpr auto dtype = npy_dtype<T>();
  static_assert(dtype.first != 0,
                "joblib: the element type must be bool, a fixed-size integer, float, double or std::complex of those");
  return AnyArray{dtype.first, dtype.second, a.shape(), a.buffer()};
}

/// The Array<T> that `a` holds (shares its buffer); throws as check_dtype.
template <class T>
Array<T> from_any(const AnyArray& a, std::string_view what) {
  constexpr auto dtype = npy_dtype<T>();
  static_assert(dtype.first != 0,
                "joblib: the element type must be bool, a fixed-size integer, float, double or std::complex of those");
  check_dtype(a, dtype.first, dtype.second, what);
  if (a.buffer.size == 0) return Array<T>(a.shape);
  return Array<T>(a.shape, a.buffer);
}

}  // namespace detail

/// Loads a .npy file that numpy.save (or save_npy) wrote as an Array<T>. T
/// must match the file's dtype exactly (bool for b1, std::int8_t..int64_t
/// for i1-i8, uint8_t..uint64_t for u1-u8, float, double,
/// std::complex<float>, std::complex<double>): another dtype is a StoreError
/// naming both. A big-endian file is converted; a Fortran-order file loads as
/// a C-order Array of the same shape and values. With options.mmap_mode r,
/// r+ or c the data is mapped, not read (writes reach the file with r+).
/// Throws StoreError for a file that is not a valid .npy file (naming what is
/// wrong), std::invalid_argument for mmap_mode w+,
/// std::filesystem::filesystem_error when the file cannot be opened.
template <class T>
Array<T> load_npy(const std::filesystem::path& path, NpyOptions options = {}) {
  constexpr auto dtype = detail::npy_dtype<T>();
  static_assert(dtype.first != 0,
                "joblib::load_npy<T>: T must be bool, a fixed-size integer, float, double or std::complex of those");
  detail::NpyData data = detail::load_npy_data(path, dtype.first, dtype.second, options.mmap_mode);
  if (data.buffer.size == 0) return Array<T>(std::move(data.shape));
  return Array<T>(std::move(data.shape), std::move(data.buffer));
}

/// Writes `array` as a .npy file that numpy.load reads: the oldest format
/// version that can hold its header, the data at a 64-byte offset, the
/// native (little-endian) byte order, C order. Replaces `path` atomically.
/// Throws std::filesystem::filesystem_error when the file cannot be written.
template <class T>
void save_npy(const std::filesystem::path& path, const Array<T>& array) {
  constexpr auto dtype = detail::npy_dtype<T>();
  static_assert(dtype.first != 0,
                "joblib::save_npy: the element type must be bool, a fixed-size integer, float, double or "
                "std::complex of those");
  detail::save_npy_data(path, dtype.first, dtype.second, array.shape(),
                        reinterpret_cast<const std::byte*>(array.data()));
}

/// One array to save_npz: any Array<T> of a numpy dtype, shared, not copied.
class NpzArray {
 public:
  /// Views `array` (implicit, so `{{"x", x}, {"y", y}}` mixes dtypes).
  template <class T>
  NpzArray(const Array<T>& array) : array_(detail::to_any(array)) {}  // NOLINT: implicit on purpose
  /// The array, type-erased.
  const detail::AnyArray& any() const noexcept { return array_; }

 private:
  detail::AnyArray array_;
};

/// Options of save_npz.
struct NpzOptions {
  bool compress = false;  // true: deflate each member (numpy.savez_compressed); false: store (numpy.savez)
};

/// Writes `arrays` as a .npz archive that numpy.load reads: one member
/// "{name}.npy" per array, in the given order, each a .npy file as save_npy
/// writes it, stored or (with options.compress) deflated; zip64 when large.
/// Replaces `path` atomically. Throws std::invalid_argument for an empty or
/// repeated name or one with a '/' or a NUL, StoreError when the archive cannot
/// be written (naming libzip's reason).
JOBLIB_EXPORT void save_npz(const std::filesystem::path& path,
                            const std::vector<std::pair<std::string, NpzArray>>& arrays, NpzOptions options = {});

/// The arrays of a .npz archive, read into memory, by name (numpy's
/// NpzFile without the lazy loading).
class NpzFile {
 public:
  NpzFile() = default;
  /// Used by load_npz.
  explicit NpzFile(std::vector<std::pair<std::string, detail::AnyArray>> arrays) : arrays_(std::move(arrays)) {}

  /// The names of the arrays ("x" for the member "x.npy"), in the archive's order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(arrays_.size());
    for (const auto& [name, array] : arrays_) out.push_back(name);
    return out;
  }
  /// Number of arrays.
  std::size_t size() const noexcept { return arrays_.size(); }
  /// True when an array of that name is in the archive.
  bool contains(std::string_view name) const noexcept { return lookup(name) != nullptr; }

  /// The array `name` as an Array<T>. Throws std::out_of_range when there is
  /// no such array, StoreError when it holds another dtype (naming both).
  template <class T>
  Array<T> at(std::string_view name) const {
    return detail::from_any<T>(find(name), "the array '" + std::string(name) + "'");
  }
  /// The dtype of the array `name` ("float64"); throws std::out_of_range.
  std::string dtype(std::string_view name) const {
    const detail::AnyArray& a = find(name);
    return detail::dtype_name(a.kind, a.item_size);
  }
  /// The shape of the array `name`; throws std::out_of_range.
  const std::vector<std::size_t>& shape(std::string_view name) const { return find(name).shape; }

 private:
  const detail::AnyArray* lookup(std::string_view name) const noexcept {
    for (const auto& [n, a] : arrays_)
      if (n == name) return &a;
    return nullptr;
  }
  const detail::AnyArray& find(std::string_view name) const {
    if (const detail::AnyArray* a = lookup(name)) return *a;
    detail::throw_no_array(name);
  }
  std::vector<std::pair<std::string, detail::AnyArray>> arrays_;
};

/// Reads every array of a .npz archive (numpy.savez or savez_compressed, or
/// save_npz) into memory; members whose name does not end in ".npy" are
/// skipped, as numpy lists them apart. Each member is a .npy file read as
/// load_npy reads one (any version, byte order and memory order).
/// Throws StoreError for a file that is not a zip archive or a member that is
/// not a valid .npy file or fails its CRC (naming the member),
/// std::filesystem::filesystem_error when the file cannot be opened.
JOBLIB_EXPORT NpzFile load_npz(const std::filesystem::path& path);

}  // namespace joblib
