#pragma once
// numpy's .npy files (numpy.save / numpy.load), read and written without
// Python: versions 1.0, 2.0 and 3.0 of the format, the numeric dtypes, either
// byte order, C and Fortran order, memory mapping. See docs/python.md.
//
//   joblib::save_npy("a.npy", array);                 // numpy.load("a.npy") reads it
//   auto a = joblib::load_npy<double>("a.npy");       // Array<double>
//   auto m = joblib::load_npy<double>("a.npy", {.mmap_mode = joblib::MmapMode::r});  // mapped
#include <joblib/array.hpp>
#include <joblib/export.hpp>
#include <joblib/options.hpp>

#include <complex>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <type_traits>
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

}  // namespace joblib
