#pragma once
// Code addresses that mean the same thing in another process running the
// same program (docs/architecture.md, decision 4): a function is sent as the module it
// lives in, its offset from the module's load base, and the module's
// build-id. Internal: used by the process and MPI backends.
#include <joblib/export.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace joblib::detail {

/// The module as a reference travels: "" for the program this process runs
/// when it has a build-id (a worker runs the same program, checked by its
/// build-id, wherever its file lies on the worker's host), else its path.
JOBLIB_EXPORT const std::string& module_on_the_wire(const std::string& module, const std::string& build_id) noexcept;

struct CodeRef {
  std::string module;       // absolute path of the executable or shared object ("": the program this process runs)
  std::uint64_t offset = 0; // address minus the module's load base
  std::string build_id;     // hex GNU build-id of the module ("" if it has none)

  template <class Archive>
  void save(Archive& ar) const {
    ar(module_on_the_wire(module, build_id), offset, build_id);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(module, offset, build_id);
  }
  friend bool operator==(const CodeRef&, const CodeRef&) = default;
};

/// The portable reference of a code address of this process. Throws
/// SerializationError when the address lies in no loaded module. The
/// reference is the calling thread's, kept until its next call (it is looked
/// up for every batch a process backend sends: it is not copied).
JOBLIB_EXPORT const CodeRef& code_ref(const void* address);

/// The address `ref` names in this process (loading the module if needed;
/// module "" is the program this process runs). Throws SerializationError
/// when the module cannot be found or loaded, or its build-id differs
/// (another build of the program).
JOBLIB_EXPORT void* resolve_code(const CodeRef& ref);

/// Demangled name of the function at `address` (static functions included,
/// from the symbol table), or "" when no symbol covers it.
JOBLIB_EXPORT std::string function_name(const void* address);

/// The machine code of the function that starts at `address`, as loaded
/// (its symbol's size from the module's symbol table), or an empty span
/// when no function symbol starts there (a stripped module).
JOBLIB_EXPORT std::span<const std::byte> function_code(const void* address);

/// Demangles a C++ symbol or type name (defined with the codec).
JOBLIB_EXPORT std::string demangle(const char* name);

}  // namespace joblib::detail
