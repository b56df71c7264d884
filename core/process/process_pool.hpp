#pragma once
// Pools of worker processes for the process backends: one driver thread per
// worker sends a batch, waits for the reply and completes the batch. Workers
// are started lazily, restarted when they die or leave idle, and stopped at
// exit. `spawn` runs this program again (loky); `fork` forks the caller
// (multiprocessing).
#include "worker.hpp"

#include <joblib/backend.hpp>
#include <joblib/export.hpp>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

namespace joblib::detail {

enum class StartMethod { spawn, fork };

struct PoolConfig {
  StartMethod start = StartMethod::spawn;
  int n_workers = 1;
  double idle_timeout = 300.0;                  // seconds; a spawned worker idle this long leaves
  std::map<std::string, std::string> env;       // extra environment of spawned workers
  std::vector<std::byte> initializer;           // request payload run first in every worker ("" = none)
  int nesting_level = 0;

  /// Same workers can serve both (n_workers aside: pools are resized).
  bool same_kind(const PoolConfig& o) const {
    return start == o.start && idle_timeout == o.idle_timeout && env == o.env && initializer == o.initializer &&
           nesting_level == o.nesting_level;
  }
};

class JOBLIB_EXPORT ProcessPool {
 public:
  struct Job {
    Batch* batch = nullptr;
    const void* tag = nullptr;        // the call (backend instance) it belongs to
    MemmapContext* memmap = nullptr;
  };

  explicit ProcessPool(PoolConfig cfg);
  ~ProcessPool();  // stops the workers (exit frame, then SIGKILL after 1 s) and reaps them
  ProcessPool(const ProcessPool&) = delete;
  ProcessPool& operator=(const ProcessPool&) = delete;

  /// Queues a batch; it runs on the next free worker. Thread-safe.
  void submit(Job job);
  /// Fails the queued batches of `tag` and kills the workers running its
  /// batches (they are restarted for later jobs). Thread-safe.
  void abort(const void* tag) noexcept;
  /// Forgets an aborted tag (its call is over).
  void forget(const void* tag) noexcept;
  /// Grows or shrinks to n workers.
  void resize(int n);
  /// Kills every worker now (Ctrl-C handled by the program).
  void kill_all() noexcept;
  /// Kills every worker and waits for them (Ctrl-C ending the program).
  void kill_and_reap_all() noexcept;
  const PoolConfig& config() const noexcept { return cfg_; }
  /// Starts every worker now and waits until they all serve (pool start
  /// time, for benchmarks). Throws BackendError if one cannot start.
  void start_all();
  /// Process ids of the live workers (for tests and the fault-injection test).
  std::vector<pid_t> worker_pids() const;

 private:
  struct Slot {
    pid_t pid = 0;
    int fd = -1;
    int pidfd = -1;                    // watches the worker's exit (not its socket, which grandchildren may hold)
    const void* running_tag = nullptr;
    bool retire = false;
    const void* killed_for = nullptr;  // abort(tag) killed it: a batch of that call is not a crash
    bool killed_all = false;           // kill_all() (Ctrl-C)
    bool exited = false;               // its driver has returned (retired)
    std::thread driver;
  };
  void drive(Slot* slot);
  void run_job(Slot* slot, const Job& job);
  bool ensure_worker(Slot* slot, std::string& why);
  /// Reaps the slot's worker (killing it first if it still runs: never
  /// blocks on a live child) and closes its descriptors. Returns the wait
  /// status; `was_alive` says whether it had to be killed.
  int reap(Slot* slot, bool* was_alive = nullptr, std::chrono::milliseconds grace = std::chrono::milliseconds(0));
  void forget_worker_locked(Slot* slot);
  WatchedChannel channel(const Slot* slot) const { return {slot->fd, slot->pid, slot->pidfd}; }
  void stop_worker(Slot* slot);
  void add_slots_locked(int n);

  PoolConfig cfg_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  std::set<const void*> aborted_;   // calls whose batches must not start any more
  std::vector<std::unique_ptr<Slot>> slots_;
  bool stopping_ = false;
};

/// The process-wide reusable pool of the loky backend for `cfg`: the same
/// pool as the last call if it is of the same kind (resized to
/// cfg.n_workers), else a new one (the old one is stopped).
JOBLIB_EXPORT std::shared_ptr<ProcessPool> reusable_pool(const PoolConfig& cfg);

/// A backend running batches in worker processes (loky, multiprocessing).
class JOBLIB_EXPORT ProcessBackend : public ParallelBackendBase {
 public:
  ProcessBackend(const BackendInit& init, StartMethod start);
  ~ProcessBackend() override;
  std::string name() const override;
  BackendCapabilities capabilities() const noexcept override;
  std::exception_ptr start_call(const CallSettings& settings) noexcept override;
  void submit(Batch& batch) noexcept override;
  void stop_call() noexcept override;
  void abort() noexcept override;

  /// The pool this call runs on (for tests).
  std::shared_ptr<ProcessPool> pool() const { return pool_; }

 private:
  StartMethod start_;
  std::shared_ptr<ProcessPool> pool_;
  std::unique_ptr<MemmapContext> memmap_;
};

/// In a child forked by the multiprocessing pool: forget the parent's pools
/// and reset the locks their threads may have held at the fork, so that a
/// process call made by a task in the child works.
void reset_pools_in_fork_child() noexcept;

/// Worker pids of the loky backend's reusable pool (empty if none).
JOBLIB_EXPORT std::vector<pid_t> loky_worker_pids();

}  // namespace joblib::detail
