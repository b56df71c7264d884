#pragma once
// Worker processes of the process backends (loky, multiprocessing, mpi).
//
// The loky backend starts workers by running this program again; a worker
// must take over before main() runs user code, but after every global of the
// program is initialised. Linking through CMake's joblib::joblib target does
// it for you (the link wraps main, -Wl,--wrap=main). With another build
// system, call worker_main_guard() first thing in main():
//
//     int main(int argc, char** argv) {
//       joblib::worker_main_guard(argc, argv);   // returns at once in the parent
//       ...
//     }
#include <joblib/export.hpp>

#include <exception>
#include <functional>
#include <string>
#include <typeinfo>

namespace joblib {

/// In a worker process started by a process backend: runs the worker loop
/// and ends the process (never returns). In any other process: records
/// argv (workers are started with the same arguments) and returns at once.
/// Thread-safe; calling it twice is harmless.
JOBLIB_EXPORT void worker_main_guard(int argc, char** argv);

/// Makes an exception type of yours cross the process boundary with its
/// type: a task throwing E in a worker throws E(what) in the caller.
/// Without registration the caller gets joblib::TaskError. E must be
/// constructible from a std::string. Call it in the caller (in main, say).
template <class E>
void register_exception_type();

namespace detail {
JOBLIB_EXPORT void register_exception_rethrower(const std::type_info& type,
                                                std::function<void(const std::string&)> rethrow);
JOBLIB_EXPORT void register_exception_factory(const std::type_info& type,
                                              std::function<std::exception_ptr(const std::string&)> make);
}  // namespace detail

template <class E>
void register_exception_type() {
  detail::register_exception_factory(typeid(E),
                                     [](const std::string& what) { return std::make_exception_ptr(E(what)); });
}

}  // namespace joblib
