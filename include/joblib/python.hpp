#pragma once
// Python's own files, read and written without Python and without running
// anything: joblib.dump / pickle.dump files (pickle protocols 2-5, every
// compression Python joblib writes, numpy arrays inline or in joblib's
// NumpyArrayWrapper layout) as a tree of PyValue. See docs/python.md.
//
//   joblib::PyValue v = joblib::load_python("model.joblib");     // joblib.dump or pickle.dump wrote it
//   double alpha = v["params"]["alpha"].as<double>();
//   joblib::Array<float> w = v["weights"].as<joblib::Array<float>>();
//   joblib::dump_python(v, "out.joblib");                        // joblib.load reads it back
//
// The reader knows a fixed set of classes (numpy arrays, dtypes and
// scalars, complex, set, frozenset, bytearray and joblib's
// NumpyArrayWrapper); a file that names any other class is refused with a
// StoreError naming it, as soon as the reader meets the name: nothing in
// the file is ever called.
#include <joblib/array.hpp>
#include <joblib/export.hpp>
#include <joblib/numpy.hpp>
#include <joblib/options.hpp>
#include <joblib/persistence.hpp>

#include <complex>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace joblib {

/// The Python type of a PyValue.
enum class PyKind : std::uint8_t {
  none,      // None
  boolean,   // bool
  integer,   // int (one that fits 64 bits, signed or unsigned)
  floating,  // float (and numpy float scalars)
  complex,   // complex
  string,    // str (UTF-8)
  bytes,     // bytes, bytearray
  list,      // list
  tuple,     // tuple
  dict,      // dict (insertion order kept)
  set,       // set, frozenset
  array,     // numpy.ndarray of a numeric dtype
};

/// Python's name of a kind: "NoneType", "bool", "int", "float", "complex",
/// "str", "bytes", "list", "tuple", "dict", "set", "numpy.ndarray".
JOBLIB_EXPORT std::string_view kind_name(PyKind kind) noexcept;

namespace detail {
struct PyNode;
template <class T>
inline constexpr bool is_joblib_array_v = false;
template <class T>
inline constexpr bool is_joblib_array_v<Array<T>> = true;
}  // namespace detail

/// A Python value read by load_python or built to write with dump_python.
/// Copies share the same (immutable) value, as Python references do.
class JOBLIB_EXPORT PyValue {
 public:
  /// None.
  PyValue() noexcept;
  /// None.
  PyValue(std::nullptr_t) noexcept;  // NOLINT: implicit on purpose
  /// A bool.
  PyValue(bool value);  // NOLINT
  /// An int.
  template <std::integral I>
    requires(!std::same_as<I, bool> && !std::same_as<I, char>)
  PyValue(I value)  // NOLINT
      : PyValue(std::is_signed_v<I> ? from_int(static_cast<std::int64_t>(value))
                                    : from_uint(static_cast<std::uint64_t>(value))) {}
  /// A float.
  PyValue(double value);  // NOLINT
  PyValue(float value) : PyValue(static_cast<double>(value)) {}  // NOLINT
  /// A complex.
  PyValue(std::complex<double> value);  // NOLINT
  PyValue(std::complex<float> value) : PyValue(std::complex<double>(value)) {}  // NOLINT
  /// A str (UTF-8).
  PyValue(std::string value);  // NOLINT
  PyValue(std::string_view value) : PyValue(std::string(value)) {}  // NOLINT
  PyValue(const char* value) : PyValue(std::string(value)) {}       // NOLINT
  /// A bytes.
  PyValue(std::vector<std::byte> value);  // NOLINT
  /// A numpy array of T's dtype; shares the array's buffer.
  template <class T>
  PyValue(const Array<T>& array) : PyValue(from_array(detail::to_any(array))) {}  // NOLINT
  /// A dict of str keys (in the map's order).
  PyValue(const std::map<std::string, PyValue>& dict);  // NOLINT
  /// A list.
  PyValue(std::vector<PyValue> list);  // NOLINT

  /// A tuple of `items`.
  static PyValue tuple(std::vector<PyValue> items);
  /// A set of `items` (repeats dropped, as Python does). Throws StoreError
  /// for an item Python cannot hash (list, dict, array).
  static PyValue set(std::vector<PyValue> items);
  /// A dict with keys of any hashable kind, in the given order (a repeated
  /// key keeps its first place and takes the last value, as in Python).
  /// Throws StoreError for a key Python cannot hash.
  static PyValue dict(std::vector<std::pair<PyValue, PyValue>> items);
  /// An array (the type-erased form of PyValue(const Array<T>&)).
  static PyValue from_array(detail::AnyArray array);

  /// The value's Python type.
  PyKind kind() const noexcept;
  /// True for None.
  bool is_none() const noexcept { return kind() == PyKind::none; }
  /// Number of items of a list, tuple, set or dict, bytes of a bytes, code
  /// units (bytes) of a str, elements of an array. Throws StoreError for
  /// other kinds (naming the kind).
  std::size_t size() const;

  /// The value of the str key `key` of a dict. Throws std::out_of_range
  /// when the dict has no such key, StoreError when this is not a dict.
  const PyValue& operator[](std::string_view key) const;
  const PyValue& operator[](const char* key) const { return (*this)[std::string_view(key)]; }
  /// Item `index` of a list or tuple (a negative index counts from the end,
  /// as in Python). Throws std::out_of_range when out of range, StoreError
  /// when this is not a list or tuple.
  template <std::integral I>
    requires(!std::same_as<I, bool>)
  const PyValue& operator[](I index) const {
    if constexpr (std::is_signed_v<I>)
      return item(static_cast<std::int64_t>(index));
    else
      return item_unsigned(static_cast<std::uint64_t>(index));
  }
  /// True when this is a dict with the str key `key`. Never throws.
  bool contains(std::string_view key) const noexcept;
  /// The items of a list, tuple or set. Throws StoreError for other kinds.
  const std::vector<PyValue>& items() const;
  /// The (key, value) pairs of a dict in insertion order. Throws StoreError
  /// for other kinds.
  const std::vector<std::pair<PyValue, PyValue>>& dict_items() const;

  /// The dtype of an array ("float64", "int32", ...). Throws StoreError for
  /// other kinds.
  std::string dtype() const;
  /// The shape of an array. Throws StoreError for other kinds.
  const std::vector<std::size_t>& shape() const;

  /// The value as a C++ type: bool; an integer type (an int whose value it
  /// holds); double or float (a float or an int); std::complex<double> or
  /// <float> (a complex, float or int); std::string (a str);
  /// std::vector<std::byte> (a bytes); joblib::Array<T> (an array of T's
  /// dtype, sharing its buffer); PyValue. Throws StoreError naming both
  /// types when the kinds differ, and naming the value when an int does not
  /// fit the integer type.
  template <class T>
  T as() const {
    if constexpr (std::is_same_v<T, PyValue>) {
      return *this;
    } else if constexpr (std::is_same_v<T, bool>) {
      return as_bool();
    } else if constexpr (std::is_integral_v<T>) {
      if constexpr (std::is_signed_v<T>) {
        const std::int64_t v = as_int64(sizeof(T), true);
        if (v < static_cast<std::int64_t>(std::numeric_limits<T>::min()) ||
            v > static_cast<std::int64_t>(std::numeric_limits<T>::max()))
          throw_int_range(sizeof(T), true);
        return static_cast<T>(v);
      } else {
        const std::uint64_t v = as_uint64(sizeof(T));
        if (v > static_cast<std::uint64_t>(std::numeric_limits<T>::max())) throw_int_range(sizeof(T), false);
        return static_cast<T>(v);
      }
    } else if constexpr (std::is_floating_point_v<T>) {
      return static_cast<T>(as_double());
    } else if constexpr (std::is_same_v<T, std::complex<double>> || std::is_same_v<T, std::complex<float>>) {
      return T(as_complex());
    } else if constexpr (std::is_same_v<T, std::string>) {
      return as_string();
    } else if constexpr (std::is_same_v<T, std::vector<std::byte>>) {
      return as_bytes();
    } else if constexpr (detail::is_joblib_array_v<T>) {
      return detail::from_any<typename T::value_type>(as_any_array(), "the Python array");
    } else {
      static_assert(sizeof(T) == 0,
                    "PyValue::as<T>: T must be bool, an integer type, float, double, std::complex, std::string, "
                    "std::vector<std::byte>, joblib::Array<T> or PyValue");
    }
  }

  /// A short Python-like rendering for messages ("{'a': 1, 'w': array(float64, shape=(3,))}");
  /// long containers and strings are cut with "...".
  std::string repr() const;

  /// The node (for the library's own reader and writer).
  const std::shared_ptr<detail::PyNode>& node() const noexcept { return node_; }
  /// Wraps a node (for the library's own reader).
  explicit PyValue(std::shared_ptr<detail::PyNode> node) noexcept;

 private:
  static PyValue from_int(std::int64_t v);
  static PyValue from_uint(std::uint64_t v);
  const PyValue& item(std::int64_t index) const;
  const PyValue& item_unsigned(std::uint64_t index) const;
  bool as_bool() const;
  std::int64_t as_int64(std::size_t bytes, bool is_signed) const;
  std::uint64_t as_uint64(std::size_t bytes) const;
  [[noreturn]] void throw_int_range(std::size_t bytes, bool is_signed) const;
  double as_double() const;
  std::complex<double> as_complex() const;
  std::string as_string() const;
  std::vector<std::byte> as_bytes() const;
  const detail::AnyArray& as_any_array() const;

  friend struct detail::PyNode;  // frees deep trees without recursion
  std::shared_ptr<detail::PyNode> node_;  // null for None
};

/// Options of load_python.
struct PythonLoadOptions {
  /// r, r+ or c: map the arrays of an uncompressed joblib file (those
  /// joblib.dump stored after the pickle stream, in C order and this
  /// machine's byte order) instead of reading them; r+ writes reach the file.
  MmapMode mmap_mode = MmapMode::none;
};

/// Reads a file written by Python's joblib.dump (any compression it writes:
/// zlib, gzip, bz2, xz, lzma, lz4, detected from the first bytes as joblib
/// does) or by pickle.dump (protocols 2-5) into a PyValue tree. It runs no
/// code: a pickle that names any class outside the set in this header's
/// comment is refused.
/// Throws StoreError for a refused class ("... the pickle names os.system,
/// which load_python does not read ..."), a file that is not a pickle or is
/// truncated or corrupted, an int wider than 64 bits, an array of a
/// non-numeric dtype, or one that cannot be mapped as asked (naming what is
/// wrong); std::invalid_argument for mmap_mode w+;
/// std::filesystem::filesystem_error when the file cannot be opened.
JOBLIB_EXPORT PyValue load_python(const std::filesystem::path& path, PythonLoadOptions options = {});

/// Options of dump_python.
struct PythonDumpOptions {
  /// As for dump(): a level, true, or (method, level), or the file name's
  /// extension; every method but zstd (Python joblib does not read it).
  Compress compress{};
};

/// Writes `value` as a pickle (protocol 4) that Python's joblib.load reads,
/// arrays in joblib's own layout (NumpyArrayWrapper, data after the pickle
/// opcodes, 16-byte aligned); a value without arrays is also a plain pickle
/// that pickle.load reads. Compressed as options.compress says, the file
/// replaced atomically.
/// Throws std::invalid_argument for a bad compress option or zstd,
/// StoreError for a value nested deeper than 1000 levels,
/// std::filesystem::filesystem_error when the file cannot be written.
JOBLIB_EXPORT void dump_python(const PyValue& value, const std::filesystem::path& path,
                               PythonDumpOptions options = {});

}  // namespace joblib
