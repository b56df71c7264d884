#pragma once
// The node behind a PyValue, shared by the value API, the pickle reader and
// the pickle writer.
#include "npy_format.hpp"

#include <joblib/python.hpp>

#include <complex>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace joblib::detail {

/// What a reader-only node stands for before it becomes a value: a class
/// or function the reader knows, a numpy dtype, a NumpyArrayWrapper or an
/// ndarray waiting for its BUILD. None of them may be left in a result.
enum class PySpecial : std::uint8_t { none, global, dtype, wrapper, ndarray };

/// The classes and functions load_python knows (the only globals it takes).
enum class PyGlobal : std::uint8_t {
  wrapper,      // joblib.numpy_pickle.NumpyArrayWrapper
  ndarray,      // numpy.ndarray, numpy.memmap
  dtype,        // numpy.dtype
  reconstruct,  // numpy.core.multiarray._reconstruct
  scalar,       // numpy.core.multiarray.scalar
  frombuffer,   // numpy.core.numeric._frombuffer
  complex,      // builtins.complex
  set,          // builtins.set
  frozenset,    // builtins.frozenset
  bytearray,    // builtins.bytearray
  bytes,        // builtins.bytes
  encode,       // _codecs.encode (protocol 2's bytes)
};

/// Python's hash identity of a hashable value: a 128-bit digest of a
/// canonical encoding (equal keys as Python compares them: 1, 1.0 and True
/// are one key). Fixed-size, so that a long key used many times costs its
/// length once.
struct PyDigest {
  std::uint64_t lo = 0, hi = 0;
  bool operator==(const PyDigest&) const = default;
};
struct PyDigestHash {
  std::size_t operator()(const PyDigest& d) const noexcept { return static_cast<std::size_t>(d.lo); }
};

struct PyContainer {
  std::vector<PyValue> items;                      // list, tuple, set
  std::vector<std::pair<PyValue, PyValue>> dict;   // dict
  std::unordered_map<PyDigest, std::size_t, PyDigestHash> index;  // key digest -> position (dict, set)
};

struct PyNode {
  PyKind kind = PyKind::none;
  PySpecial special = PySpecial::none;
  bool big = false;        // an int above INT64_MAX, held in `u`
  PyGlobal global{};       // special == global
  std::int64_t i = 0;      // int, bool (0/1)
  std::uint64_t u = 0;     // int when big
  double f = 0, im = 0;    // float; complex (f + im j)
  std::string s;           // str (UTF-8), bytes
  std::unique_ptr<PyContainer> c;  // list, tuple, dict, set
  std::unique_ptr<AnyArray> array;  // array
  NpyDescr dtype{};        // special == dtype
  // The digest of a str, bytes or tuple, once computed (a tuple's when it is
  // made: py_finish_tuple); `unhashable` for a tuple holding a list, dict...
  mutable bool has_digest = false;
  mutable bool unhashable = false;
  mutable PyDigest digest{};

  PyContainer& container() {
    if (!c) c = std::make_unique<PyContainer>();
    return *c;
  }

  PyNode() = default;
  PyNode(const PyNode&) = delete;
  PyNode& operator=(const PyNode&) = delete;
  /// Frees the nodes only this one holds without recursion, so that a list
  /// nested a million deep (a hostile file) is freed in constant stack.
  ~PyNode();
};

/// The digest of a node; false when Python cannot hash it (list, dict,
/// array, a reader-only node, a tuple holding one of those). Never recurses:
/// a tuple's digest is made from its items' when the tuple is finished.
bool py_digest(const PyNode* node, PyDigest& out);

/// The digest of the str `key`, as a dict lookup needs it.
PyDigest py_str_digest(std::string_view key);

/// Computes and caches the digest of a tuple whose items are all set.
void py_finish_tuple(const PyNode& tuple);

/// Adds `value` under `key` to the dict `d` (replacing the value of an
/// equal key). Throws StoreError "{where}: ..." for an unhashable key.
void py_dict_set(PyNode& d, PyValue key, PyValue value, const char* where);

/// Adds `item` to the set `s` unless an equal item is there. Throws
/// StoreError for an unhashable item.
void py_set_add(PyNode& s, PyValue item, const char* where);

/// Python's type name of a node, reader-only nodes included.
std::string py_type_name(const PyNode* node);

}  // namespace joblib::detail
