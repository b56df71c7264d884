#pragma once
// joblib-cpp error types. Every error the library raises derives from
// joblib::Error (itself a std::runtime_error); a task's own standard
// exception (std::invalid_argument, std::out_of_range, ...) reaches the caller
// unchanged from every backend. Bad option values raise std::invalid_argument
// naming the field and the value. See docs/errors.md.
#include <joblib/export.hpp>

#include <cstddef>
#include <stdexcept>
#include <string>

namespace joblib {

/// Base of every joblib-cpp error.
class JOBLIB_EXPORT Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  ~Error() override;
};

/// A task failed out of process and its exception type is not known here.
/// what() names the exception type, the task's function and the message.
class JOBLIB_EXPORT TaskError : public Error {
 public:
  TaskError(std::string type_name, std::string message, std::string remote_traceback,
            std::size_t task_index, std::string function = {});
  ~TaskError() override;
  /// Demangled type name of the exception thrown in the worker.
  const std::string& type_name() const noexcept { return type_name_; }
  /// The exception's own what().
  const std::string& message() const noexcept { return message_; }
  /// Stack trace taken in the worker where the exception was thrown.
  const std::string& remote_traceback() const noexcept { return traceback_; }
  /// Index of the failed task in the call's input order.
  std::size_t task_index() const noexcept { return task_index_; }
  /// Name of the task's function where symbols allow it, else empty.
  const std::string& function() const noexcept { return function_; }

 private:
  std::string type_name_, message_, traceback_, function_;
  std::size_t task_index_;
};

/// A task ran longer than ParallelOptions::timeout.
class JOBLIB_EXPORT TimeoutError : public Error {
 public:
  using Error::Error;
  ~TimeoutError() override;
};

/// A worker process died (signal, exit, OOM kill) while running a task.
class JOBLIB_EXPORT TerminatedWorkerError : public Error {
 public:
  using Error::Error;
  ~TerminatedWorkerError() override;
};

/// A value or task cannot be encoded (or decoded) for another process or a file.
class JOBLIB_EXPORT SerializationError : public Error {
 public:
  using Error::Error;
  ~SerializationError() override;
};

/// Unknown backend name, or a plugin that fails to load.
class JOBLIB_EXPORT BackendError : public Error {
 public:
  using Error::Error;
  ~BackendError() override;
};

/// The call was cancelled: its ParallelOptions::stop_token was requested
/// (or its Results was destroyed before the end, where nothing sees it).
class JOBLIB_EXPORT CancelledError : public Error {
 public:
  using Error::Error;
  ~CancelledError() override;
};

/// A dump file that is bad, truncated, of another type or of a newer format.
class JOBLIB_EXPORT StoreError : public Error {
 public:
  using Error::Error;
  ~StoreError() override;
};

}  // namespace joblib
