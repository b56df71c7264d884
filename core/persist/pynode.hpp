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

struct PyContainer {
  std::vector<PyValue> items;                      // list, tuple, set
  std::vector<std::pair<PyValue, PyValue>> dict;   // dict
  std::unordered_map<std::string, std::size_t> index;  // hash key -> position (dict, set)
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

  PyContainer& container() {
    if (!c) c = std::make_unique<PyContainer>();
    return *c;
  }
};

/// Python's hash identity of a node as a string (equal keys as Python
/// compares them: 1, 1.0 and True are one key); false when Python cannot
/// hash the node (list, dict, array, or a reader-only node).
bool py_hash_key(const PyNode* node, std::string& out);

/// Adds `value` under `key` to the dict `d` (replacing the value of an
/// equal key). Throws StoreError "{where}: ..." for an unhashable key.
void py_dict_set(PyNode& d, PyValue key, PyValue value, const char* where);

/// Adds `item` to the set `s` unless an equal item is there. Throws
/// StoreError for an unhashable item.
void py_set_add(PyNode& s, PyValue item, const char* where);

/// Python's type name of a node, reader-only nodes included.
std::string py_type_name(const PyNode* node);

}  // namespace joblib::detail
