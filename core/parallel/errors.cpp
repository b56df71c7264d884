#include <joblib/backend.hpp>
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
