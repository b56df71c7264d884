#pragma once
// Thread-local configuration scopes and the resolution of one Parallel call.
#include <joblib/backend.hpp>
#include <joblib/options.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace joblib::detail {

/// The merged configuration in force in this thread.
struct Frame {
  std::optional<std::string> backend;
  std::optional<int> n_jobs;
  std::optional<int> verbose;
  std::optional<std::string> temp_folder;
  std::optional<std::string> max_nbytes;
  std::optional<MmapMode> mmap_mode;
  std::optional<Prefer> prefer;
  std::optional<Require> require;
  std::optional<int> inner_max_num_threads;
  std::map<std::string, std::string> settings;
  Initializer initializer;
  int nesting_level = 0;
};

/// The innermost frame of this thread (an empty frame outside any scope).
JOBLIB_EXPORT const Frame& current_frame();

/// Pushes a frame that runs tasks of a call: backend = the call's nested
/// backend, n_jobs reset to 1, nesting level + 1; sets the stop flag that
/// stop_requested() reads. Pops on destruction.
/// OpenMP's thread-count setters, when OpenMP is loaded in the process.
struct OmpHooks {
  void (*set_num_threads)(int) = nullptr;
  int (*get_max_threads)() = nullptr;
  /// Looks them up (dlsym); both stay null when no OpenMP runtime is loaded.
  static OmpHooks find();
};

class TaskScope {
 public:
  /// `inner_threads` > 0 caps OpenMP regions opened by the task on this
  /// thread (joblib's inner_max_num_threads); restored on destruction.
  TaskScope(const NestedBackend& nested, int nesting_level, const std::atomic<bool>* stop, int inner_threads = 0,
            const OmpHooks& omp = {});
  ~TaskScope();
  TaskScope(const TaskScope&) = delete;
  TaskScope& operator=(const TaskScope&) = delete;

 private:
  const std::atomic<bool>* saved_stop_;
  const OmpHooks* omp_ = nullptr;
  int saved_omp_threads_ = 0;
};

/// Sets the flag stop_requested() reads in this thread, and nothing else
/// (a sequential call's tasks keep the caller's configuration); restores it
/// on destruction.
class StopFlagScope {
 public:
  explicit StopFlagScope(const std::atomic<bool>* stop) noexcept;
  ~StopFlagScope();
  StopFlagScope(const StopFlagScope&) = delete;
  StopFlagScope& operator=(const StopFlagScope&) = delete;

 private:
  const std::atomic<bool>* saved_;
};

/// Everything one call needs, resolved from options, scope and defaults.
struct Resolved {
  std::string backend_name;                    // "sequential" when running in the caller
  std::shared_ptr<ParallelBackendBase> backend;  // null when sequential
  BackendCapabilities caps;
  int n_jobs = 1;                              // effective
  std::string requested_n_jobs;                // for "Parallel(n_jobs=...)"
  int verbose = 0;
  std::optional<double> timeout;
  std::string pre_dispatch;
  std::optional<int> batch_size;
  std::string temp_folder;
  std::optional<std::size_t> max_nbytes;
  MmapMode mmap_mode = MmapMode::r;
  ReturnAs return_as = ReturnAs::list;
  NestedBackend nested;
  int nesting_level = 0;
  int inner_threads = 0;                       // thread cap for OpenMP inside tasks (0: untouched)
  std::vector<std::byte> initializer;          // process backends
  OmpHooks omp;
  ProgressCallback on_progress;
  bool progress_bar = false;
  int retries = 0;
  RetryPredicate retry_if;
  std::optional<int> max_tasks_per_child;
  std::optional<std::size_t> worker_memory_limit;
  std::stop_token stop_token;
};

/// Resolves a call (may load a plugin). Throws BackendError, std::invalid_argument.
JOBLIB_EXPORT Resolved resolve(const ParallelOptions& options);

/// "ThreadingBackend" for "threading", as joblib names its backend classes.
JOBLIB_EXPORT std::string backend_class_name(const std::string& name);

/// joblib's n_jobs rule: 0 is an error, negative counts back from cpu_count()+1, clamped at 1.
JOBLIB_EXPORT int resolve_n_jobs(int n_jobs);

}  // namespace joblib::detail
