#pragma once
// The throws made inside the library's templates, compiled once in the
// library (as oneTBB's throw_exception and {fmt}'s vformat do): an
// instantiation that may throw pays for a call, not for building the
// message and the exception inline. Each function names what it throws.
#include <joblib/export.hpp>

#include <cstddef>
#include <string_view>

namespace joblib::detail {

/// Throws std::out_of_range: "<where>: index <index> out of range for size <size>".
[[noreturn]] JOBLIB_EXPORT void throw_index_out_of_range(const char* where, std::size_t index, std::size_t size);
/// Throws std::out_of_range: "joblib::NpzFile: no array named '<name>'".
[[noreturn]] JOBLIB_EXPORT void throw_no_array(std::string_view name);
/// Throws std::logic_error: "joblib::Task: the captured callable is not copyable".
[[noreturn]] JOBLIB_EXPORT void throw_not_copyable();
/// Throws SerializationError: "cannot send tasks of type <type> to a worker process: <why>".
[[noreturn]] JOBLIB_EXPORT void throw_not_portable(std::string_view type, std::string_view why);
/// Throws SerializationError: "a worker sent <got> results for <expected> tasks".
[[noreturn]] JOBLIB_EXPORT void throw_result_count(std::size_t got, std::size_t expected);
/// Throws StoreError with `message`.
[[noreturn]] JOBLIB_EXPORT void throw_store_error(std::string_view message);

}  // namespace joblib::detail
