#pragma once
// Scoped configuration (parallel_backend, parallel_config), the backend
// registry (register_parallel_backend, available_backends) and CPU counts.
#include <joblib/backend.hpp>
#include <joblib/export.hpp>
#include <joblib/options.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace joblib {

/// RAII scope, like joblib's parallel_config context manager: until the object
/// is destroyed, Parallel calls made in this thread take the fields set here
/// as defaults. Nested scopes merge: an inner scope overrides only the fields
/// it sets. The setting is thread-local (threads you start do not inherit it;
/// parallel tasks see the backend's nested backend instead).
/// Throws BackendError for an unknown backend name, std::invalid_argument for
/// bad values (n_jobs == 0, prefer/require inconsistent, settings or
/// inner_max_num_threads without a backend). Scopes must be destroyed in
/// reverse order of creation (as automatic objects are).
class JOBLIB_EXPORT parallel_config {
 public:
  explicit parallel_config(ConfigOptions options = {});
  ~parallel_config();
  parallel_config(const parallel_config&) = delete;
  parallel_config& operator=(const parallel_config&) = delete;

 private:
  std::size_t depth_;
};

/// Legacy form of parallel_config that names a backend: n_jobs defaults to -1
/// (all CPUs), as joblib's parallel_backend. Throws as parallel_config.
class JOBLIB_EXPORT parallel_backend {
 public:
  explicit parallel_backend(std::string backend, BackendOptions options = {});
  parallel_backend(const parallel_backend&) = delete;
  parallel_backend& operator=(const parallel_backend&) = delete;

 private:
  parallel_config scope_;
};

/// Factory of an in-process backend; called once per Parallel call.
using BackendFactory = std::function<std::unique_ptr<ParallelBackendBase>(const BackendInit&)>;

/// Registers (or replaces) a backend made by `factory`. With make_default it
/// becomes the backend used when nothing names one. Thread-safe.
/// Throws std::invalid_argument for an empty name or factory.
JOBLIB_EXPORT void register_parallel_backend(const std::string& name, BackendFactory factory,
                                             bool make_default = false);

/// Registers (or replaces) a backend from a plugin shared object. The library
/// is loaded at once (so a bad file fails here): BackendError naming the path
/// and the reason (missing file, missing factory, ABI mismatch). Thread-safe.
JOBLIB_EXPORT void register_parallel_backend(const std::string& name,
                                             const std::filesystem::path& library,
                                             bool make_default = false);

/// Reads one more plugins.toml (same format as the installed one) and adds its
/// entries; libraries load lazily on first use. Throws BackendError if the
/// file cannot be read or parsed. Thread-safe.
JOBLIB_EXPORT void load_plugins_file(const std::filesystem::path& toml_file);

/// Names of the backends that can be used here, sorted: "sequential", every
/// plugins.toml entry whose library exists, and every registered backend.
JOBLIB_EXPORT std::vector<std::string> available_backends();

/// Number of CPUs this process may use: the minimum of the hardware count, the
/// CPU affinity mask, the cgroup CPU quota and JOBLIB_MAX_CPU_COUNT; at least 1.
JOBLIB_EXPORT int cpu_count();

/// The number of workers a Parallel call with this n_jobs would use in this
/// thread, scope-aware: unset takes the scope's n_jobs (1 outside any scope);
/// -1 is all CPUs, -2 all but one. Throws std::invalid_argument for 0.
JOBLIB_EXPORT int effective_n_jobs(std::optional<int> n_jobs = -1);

/// Nesting level of the calling thread: 0 outside parallel tasks, 1 inside a
/// task of a top-level Parallel call, and so on.
JOBLIB_EXPORT int nesting_level() noexcept;

/// Inside a task: true once the call it belongs to is stopping (an error in
/// another task, a timeout, an abandoned generator). Long tasks may poll it
/// and return early. Always false outside tasks.
JOBLIB_EXPORT bool stop_requested() noexcept;

}  // namespace joblib
