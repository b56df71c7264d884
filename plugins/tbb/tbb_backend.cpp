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

// oneTBB gives its arenas at most (max_allowed_parallelism - 1) worker
// threads in all, hardware concurrency by default. Nobody joins our arenas as
// a master (the caller waits in the dispatcher), and a worker running a task
// that waits for a nested call (its own arena, one level down) or a task
// abandoned after a timeout is lost to every other arena: the limit must
// cover every slot of every arena made, or a nested arena can get no thread
// at all. It is raised (never lowered) to that sum + 1. oneTBB takes the
// smallest value of all live global_control objects, so the one we hold is
// replaced, not added to.
std::mutex& parallelism_mutex() {
  static auto* m = new std::mutex();
  return *m;
}
std::size_t g_total_slots = 0;  // slots of every arena made (under parallelism_mutex)

void ensure_parallelism_locked() {
  static tbb::global_control* ours = nullptr;
  // What oneTBB allows now (it follows the CPU affinity mask, not the CPUs online).
  const auto allowed = tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism);
  if (g_total_slots + 1 <= allowed) return;
  auto* raised = new tbb::global_control(tbb::global_control::max_allowed_parallelism, g_total_slots + 1);
  delete ours;
  ours = raised;
}

// n_jobs slots, none reserved for a master thread.
struct Arena {
  explicit Arena(int n_jobs) : arena(n_jobs, 0) {
    {
      std::lock_guard lock(parallelism_mutex());
      g_total_slots += static_cast<std::size_t>(n_jobs);
      ensure_parallelism_locked();
    }
    arena.initialize();
  }
  // A retired arena keeps its slots counted: its threads may still be held
  // by an abandoned task. oneTBB lends them to other arenas once it ends.
  void retire() noexcept {}
  void push(joblib::Batch& batch) {
    arena.enqueue([&batch] { batch.run(); });
  }
  tbb::task_arena arena;
};

joblib::EngineCache<Arena>& arenas() {
  static auto* cache = new joblib::EngineCache<Arena>();
  return *cache;
}

class TbbBackend final : public joblib::EngineBackend<Arena> {
 public:
  explicit TbbBackend(const joblib::BackendInit& init) : EngineBackend(init, "tbb", arenas) {}
};
}  // namespace

JOBLIB_EXPORT_BACKEND(TbbBackend)
