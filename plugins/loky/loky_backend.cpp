// The loky backend: a reusable pool of worker processes started by running
// this program again, built on the worker SDK (joblib/worker_sdk.hpp). The
// policy is this file's: one process-wide pool, reused by every call of the
// same kind (initializer, thread caps, idle timeout) and resized to the
// call's n_jobs; workers idle for `idle_worker_timeout` seconds leave; the
// BLAS/OpenMP thread caps of joblib's loky backend are set in the workers'
// environment. See docs/backends.md.
#include <joblib/backend.hpp>
#include <joblib/config.hpp>
#include <joblib/errors.hpp>
#include <joblib/worker_sdk.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

namespace {

namespace sdk = joblib::worker_sdk;

// Longest idle_worker_timeout accepted: a poll() of it in milliseconds fits an int.
constexpr double kMaxIdleTimeout = 2e6;
constexpr double kDefaultIdleTimeout = 300.0;

// ---- the process-wide pool ------------------------------------------------------

std::mutex g_pool_mutex;
std::shared_ptr<sdk::WorkerPool>& kept_pool() {
  static auto* p = new std::shared_ptr<sdk::WorkerPool>();
  return *p;
}

// The same workers serve calls whose worker options match; n_jobs aside
// (the pool is resized).
bool same_kind(const sdk::WorkerOptions& a, const sdk::WorkerOptions& b) {
  return a.start == b.start && a.idle_timeout == b.idle_timeout && a.env == b.env && a.initializer == b.initializer;
}

// At exit the kept pool stops its workers (exit frame, then SIGKILL after 1 s).
void stop_pool_at_exit() {
  std::shared_ptr<sdk::WorkerPool> pool;
  {
    std::lock_guard lock(g_pool_mutex);
    pool = std::move(kept_pool());
  }
}

// In a child forked by another backend: the parent's pool is not ours to
// stop, and its lock may have been held by a thread that is gone.
void forget_pool_in_fork_child() noexcept {
  new (&g_pool_mutex) std::mutex();
  new (&kept_pool()) std::shared_ptr<sdk::WorkerPool>();  // left alone, not released
}
[[maybe_unused]] const bool g_fork_hook = (sdk::at_fork_child(forget_pool_in_fork_child), true);

std::shared_ptr<sdk::WorkerPool> reusable_pool(const sdk::WorkerOptions& options, int n_workers) {
  std::lock_guard lock(g_pool_mutex);
  auto& pool = kept_pool();
  if (pool && same_kind(pool->options(), options)) {
    if (pool->size() != n_workers) pool->resize(n_workers);
    return pool;
  }
  const bool first = !pool;
  pool = std::make_shared<sdk::WorkerPool>(options, n_workers);  // the old one stops when its last call lets go
  if (first) {
    static std::once_flag at_exit;
    std::call_once(at_exit, [] { std::atexit(stop_pool_at_exit); });
  }
  return pool;
}

double idle_timeout_setting(const joblib::BackendInit& init) {
  auto it = init.settings.find("idle_worker_timeout");
  if (it == init.settings.end()) return kDefaultIdleTimeout;
  char* end = nullptr;
  const double v = std::strtod(it->second.c_str(), &end);
  if (it->second.empty() || !end || *end || !std::isfinite(v) || v < 0 || v > kMaxIdleTimeout)
    throw std::invalid_argument(
        "idle_worker_timeout must be a finite number of seconds from 0 to 2e+06 (0: workers never leave), got '" +
        it->second + "'");
  return v;
}

// ---- the backend ------------------------------------------------------------------

class LokyBackend final : public sdk::PoolBackend {
 public:
  using PoolBackend::PoolBackend;
  static std::unique_ptr<joblib::ParallelBackendBase> make(const joblib::BackendInit& init) {
    return std::make_unique<LokyBackend>(init);
  }
  std::string name() const override { return "loky"; }
  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c = PoolBackend::capabilities();
    c.supports_inner_max_num_threads = true;
    return c;
  }

 protected:
  std::shared_ptr<sdk::WorkerPool> make_pool(const joblib::CallSettings& s) override {
    if (!sdk::main_guard_ran())
      throw joblib::BackendError(
          "the loky backend starts workers by running this program again, and this program did not start "
          "through joblib's main guard: link it with CMake's joblib::joblib target (which wraps main), or call "
          "joblib::worker_main_guard(argc, argv) first thing in main()");
    sdk::WorkerOptions options;
    options.start = sdk::StartMethod::spawn;
    options.idle_timeout = idle_timeout_setting(init());
    options.initializer = s.initializer;
    // joblib's per-worker thread caps for BLAS/OpenMP/TBB inside tasks.
    const int cap =
        init().inner_max_num_threads.value_or(std::max(joblib::cpu_count() / std::max(s.n_jobs, 1), 1));
    for (const char* var : {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                            "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS"}) {
      const char* parent = std::getenv(var);
      options.env[var] =
          (parent && *parent && !init().inner_max_num_threads) ? std::string(parent) : std::to_string(cap);
    }
    if (!std::getenv("ENABLE_IPC")) options.env.emplace("ENABLE_IPC", "1");
    return reusable_pool(options, s.n_jobs);
  }
};

}  // namespace

JOBLIB_EXPORT_BACKEND_FACTORY(LokyBackend::make)
