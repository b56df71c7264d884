// The tbb backend: batches run in a oneTBB task_arena of n_jobs slots, kept
// for the life of the process and reused by every call with the same n_jobs.
#include <joblib/backend.hpp>

#include <tbb/global_control.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// oneTBB gives an arena at most (max_allowed_parallelism - 1) worker threads,
// hardware concurrency by default. Nobody joins our arenas as a master (the
// caller waits in the dispatcher), so raise the limit to n_jobs + 1 when a
// call asks for more. global_control objects are kept, never destroyed.
void ensure_parallelism(int n_jobs) {
  static std::mutex m;
  static std::vector<tbb::global_control*>* keep = new std::vector<tbb::global_control*>();
  std::lock_guard lock(m);
  // What oneTBB allows now (it follows the CPU affinity mask, not the CPUs online).
  const auto allowed = tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism);
  if (static_cast<std::size_t>(n_jobs) + 1 <= allowed) return;
  keep->push_back(new tbb::global_control(tbb::global_control::max_allowed_parallelism,
                                          static_cast<std::size_t>(n_jobs) + 1));
}

// n_jobs slots, none reserved for a master thread.
struct Arena {
  explicit Arena(int n_jobs) : arena(n_jobs, 0) { arena.initialize(); }
  tbb::task_arena arena;
};

joblib::EngineCache<Arena>& arenas() {
  static auto* cache = new joblib::EngineCache<Arena>();
  return *cache;
}

class TbbBackend final : public joblib::ParallelBackendBase {
 public:
  explicit TbbBackend(const joblib::BackendInit& init) : ParallelBackendBase(init) {}

  std::string name() const override { return "tbb"; }

  joblib::BackendCapabilities capabilities() const noexcept override { return joblib::thread_backend_capabilities(); }

  std::exception_ptr start_call(const joblib::CallSettings& s) noexcept override {
    try {
      ensure_parallelism(s.n_jobs);
      arena_ = &arenas().get(nesting_level(), s.n_jobs).arena;
    } catch (...) {
      return std::current_exception();
    }
    return {};
  }

  void submit(joblib::Batch& batch) noexcept override {
    try {
      arena_->enqueue([&batch] { batch.run(); });
    } catch (...) {
      batch.fail(std::current_exception());
    }
  }

 private:
  tbb::task_arena* arena_ = nullptr;
};

}  // namespace

JOBLIB_EXPORT_BACKEND(TbbBackend)
