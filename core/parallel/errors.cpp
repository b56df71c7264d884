#include <joblib/backend.hpp>
#include <joblib/detail/throw.hpp>
#include <joblib/errors.hpp>

#include <fmt/format.h>

namespace joblib {

Error::~Error() = default;
TimeoutError::~TimeoutError() = default;
TerminatedWorkerError::~TerminatedWorkerError() = default;
SerializationError::~SerializationError() = default;
BackendError::~BackendError() = default;
StoreError::~StoreError() = default;
CancelledError::~CancelledError() = default;

namespace {
std::string task_error_text(const std::string& type, const std::string& message,
                            const std::string& traceback, std::size_t index, const std::string& function) {
  std::string text = fmt::format("{} in task {}", type, index);
  if (!function.empty()) text += fmt::format(" ({})", function);
  text += ": " + message;
  if (!traceback.empty()) text += "\n\nWorker traceback:\n" + traceback;
  return text;
}
}  // namespace

TaskError::TaskError(std::string type_name, std::string message, std::string remote_traceback,
                     std::size_t task_index, std::string function)
    : Error(task_error_text(type_name, message, remote_traceback, task_index, function)),
      type_name_(std::move(type_name)),
      message_(std::move(message)),
      traceback_(std::move(remote_traceback)),
      function_(std::move(function)),
      task_index_(task_index) {}
TaskError::~TaskError() = default;

Batch::~Batch() = default;
ParallelBackendBase::~ParallelBackendBase() = default;

std::exception_ptr ParallelBackendBase::start_call(const CallSettings&) noexcept { return {}; }

NestedBackend ParallelBackendBase::nested_backend() const {
  // joblib's rule: threads one level down, sequential below that.
  if (nesting_level() + 1 <= 1) return {"threading", std::nullopt};
  return {"sequential", std::nullopt};
}

}  // namespace joblib

// include/joblib/detail/throw.hpp
namespace joblib::detail {

void throw_index_out_of_range(const char* where, std::size_t index, std::size_t size) {
  throw std::out_of_range(fmt::format("{}: index {} out of range for size {}", where, index, size));
}

void throw_no_array(std::string_view name) {
  throw std::out_of_range(fmt::format("joblib::NpzFile: no array named '{}'", name));
}

void throw_not_copyable() { throw std::logic_error("joblib::Task: the captured callable is not copyable"); }

void throw_not_portable(std::string_view type, std::string_view why) {
  throw SerializationError(fmt::format("cannot send tasks of type {} to a worker process: {}", type, why));
}

void throw_result_count(std::size_t got, std::size_t expected) {
  throw SerializationError(fmt::format("a worker sent {} results for {} tasks", got, expected));
}

void throw_store_error(std::string_view message) { throw StoreError(std::string(message)); }

}  // namespace joblib::detail
