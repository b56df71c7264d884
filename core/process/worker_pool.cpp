// The worker SDK's pool: one driver thread per worker process sends a
// batch, waits for the reply and completes the batch; and PoolBackend, a
// process backend over a pool whose policy (a pool per call, or one kept
// across calls) its subclass chooses. The policies live in the plugins.
#include "worker.hpp"

#include <joblib/errors.hpp>
#include <joblib/worker_sdk.hpp>

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

namespace joblib::worker_sdk {
using namespace std::chrono_literals;

struct WorkerPool::Slot {
  WorkerProcess worker;
  const void* running_call = nullptr;
  const Batch* running_batch = nullptr;
  std::size_t memory_limit = 0;      // of the running job (0: none)
  std::size_t tasks_run = 0;         // by the current worker process
  const Batch* killed_batch = nullptr;  // cancel(batch) killed it (timeout)
  std::size_t killed_at_rss = 0;     // the watcher killed it: its resident memory then
  bool retire = false;
  const void* killed_for = nullptr;  // abort(call) killed it: a batch of that call is not a crash
  bool killed_all = false;           // kill_all() (Ctrl-C)
  bool exited = false;               // its driver has returned (retired)
  std::thread driver;
};

namespace {
std::exception_ptr cancelled() { return std::make_exception_ptr(Error("cancelled")); }

std::string mib(std::size_t bytes) { return fmt::format("{:.1f} MiB", double(bytes) / (1024.0 * 1024.0)); }

constexpr auto kMemoryPoll = std::chrono::milliseconds(10);
}  // namespace

// Resident memory of a process, in bytes (0 when it cannot be read): the
// second field of /proc/<pid>/statm, in pages. Cheap; counts the pages a
// forked worker still shares with its parent.
std::size_t resident_memory(pid_t pid) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/statm", static_cast<int>(pid));
  std::FILE* f = std::fopen(path, "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  const int got = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  if (got != 2) return 0;
  return static_cast<std::size_t>(resident) * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

// The memory a process alone holds (its unique set size): Private_Clean +
// Private_Dirty of /proc/<pid>/smaps_rollup, in bytes; pages shared with
// the parent after a fork, with other workers or with other programs are
// not counted. Walks the page tables: asked only when the resident size is
// already over the limit. Falls back to the resident size.
std::size_t private_memory(pid_t pid) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/smaps_rollup", static_cast<int>(pid));
  std::FILE* f = std::fopen(path, "r");
  if (!f) return resident_memory(pid);
  char line[256];
  std::size_t kb = 0;
  bool found = false;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long v = 0;
    if (std::sscanf(line, "Private_Clean: %lu kB", &v) == 1 || std::sscanf(line, "Private_Dirty: %lu kB", &v) == 1) {
      kb += v;
      found = true;
    }
  }
  std::fclose(f);
  return found ? kb * 1024 : resident_memory(pid);
}

std::exception_ptr memory_limit_exceeded(pid_t pid, std::size_t memory, std::size_t limit,
                                         std::size_t batch_size) noexcept {
  try {
    return std::make_exception_ptr(TerminatedWorkerError(fmt::format(
        "A worker process (pid {}) was stopped: its memory reached {}, over worker_memory_limit = {} "
        "({} bytes).\nThe worker was running a batch of {} task{}.",
        pid, mib(memory), mib(limit), limit, batch_size, batch_size == 1 ? "" : "s")));
  } catch (...) {
    return std::make_exception_ptr(std::bad_alloc());
  }
}


WorkerPool::WorkerPool(WorkerOptions options, int n_workers)
    : options_(std::move(options)), n_workers_(std::max(n_workers, 1)) {
  {
    std::lock_guard lock(m_);
    add_slots_locked(n_workers_);
  }
  detail::register_pool(this);
}

WorkerPool::~WorkerPool() {
  detail::unregister_pool(this);
  {
    std::lock_guard lock(m_);
    stopping_ = true;
    cv_.notify_all();
  }
  // Drivers finish the job they run (abort() first if that must not wait).
  for (auto& s : slots_)
    if (s->driver.joinable()) s->driver.join();
  if (watcher_.joinable()) watcher_.join();
  for (auto& s : slots_) s->worker.stop();
}

void WorkerPool::add_slots_locked(int n) {
  for (int i = 0; i < n; ++i) {
    auto slot = std::make_unique<Slot>();
    Slot* raw = slot.get();
    slots_.push_back(std::move(slot));
    raw->driver = std::thread([this, raw] { drive(raw); });
  }
}

int WorkerPool::size() const {
  std::lock_guard lock(m_);
  return n_workers_;
}

void WorkerPool::resize(int n) {
  n = std::max(n, 1);
  std::unique_lock lock(m_);
  // Slots whose driver has retired are joined and dropped first.
  std::vector<std::unique_ptr<Slot>> gone;
  for (auto it = slots_.begin(); it != slots_.end();) {
    if ((*it)->retire && (*it)->exited) {
      gone.push_back(std::move(*it));
      it = slots_.erase(it);
    } else {
      ++it;
    }
  }
  lock.unlock();
  for (auto& g : gone)
    if (g->driver.joinable()) g->driver.join();
  lock.lock();
  int live = 0;
  for (auto& s : slots_)
    if (!s->retire) ++live;
  if (n > live) {
    add_slots_locked(n - live);
  } else {
    for (auto it = slots_.rbegin(); it != slots_.rend() && live > n; ++it)
      if (!(*it)->retire) {
        (*it)->retire = true;
        --live;
      }
    cv_.notify_all();
  }
  n_workers_ = n;
}

void WorkerPool::submit(Job job) {
  {
    std::unique_lock lock(m_);
    if (job.memory_limit > 0 && !watcher_.joinable()) watcher_ = std::thread([this] { watch_memory(); });
    if (aborted_.count(job.call)) {
      lock.unlock();
      job.batch->fail(cancelled());
      return;
    }
    queue_.push_back(job);
  }
  cv_.notify_one();
}

void WorkerPool::forget(const void* call) noexcept {
  std::lock_guard lock(m_);
  aborted_.erase(call);
}

void WorkerPool::abort(const void* call) noexcept {
  std::vector<Job> dropped;
  {
    std::lock_guard lock(m_);
    aborted_.insert(call);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->call == call) {
        dropped.push_back(*it);
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto& s : slots_)
      if (s->running_call == call && s->worker.running()) {
        s->killed_for = call;
        s->worker.kill();
      }
  }
  for (Job& j : dropped) j.batch->fail(cancelled());
}

bool WorkerPool::cancel(const Batch* batch) noexcept {
  std::lock_guard lock(m_);
  for (auto& s : slots_)
    if (s->running_batch == batch && s->worker.running()) {
      s->killed_batch = batch;
      s->worker.kill();
      return true;
    }
  return false;
}

void WorkerPool::watch_memory() {
  std::unique_lock lock(m_);
  while (!stopping_) {
    cv_.wait_for(lock, kMemoryPoll);
    for (auto& s : slots_) {
      if (s->memory_limit == 0 || !s->running_batch || !s->worker.running() || s->killed_at_rss) continue;
      if (resident_memory(s->worker.pid()) <= s->memory_limit) continue;
      const std::size_t rss = private_memory(s->worker.pid());
      if (rss > s->memory_limit) {
        s->killed_at_rss = rss;
        s->worker.kill();
      }
    }
  }
}

void WorkerPool::kill_all(bool and_reap) noexcept {
  std::vector<pid_t> pids;
  {
    std::lock_guard lock(m_);
    for (auto& s : slots_)
      if (s->worker.running()) {
        s->killed_all = true;
        s->worker.kill();
        pids.push_back(s->worker.pid());
      }
  }
  if (and_reap)
    for (pid_t pid : pids) ::waitpid(pid, nullptr, 0);  // the program ends next: no zombie left
}

void WorkerPool::start_all() {
  std::vector<Slot*> slots;
  {
    std::lock_guard lock(m_);
    for (auto& s : slots_)
      if (!s->retire) slots.push_back(s.get());
  }
  // Start them all, then wait until each answers: an empty request round trip.
  std::vector<Slot*> fresh;
  for (Slot* s : slots) {
    std::string why;
    if (s->worker.running()) continue;
    if (!ensure_worker(s, why)) throw BackendError(why);
    fresh.push_back(s);
  }
  for (Slot* s : fresh) {
    std::optional<Frame> pong;
    if (s->worker.send(FrameKind::ping, {})) pong = s->worker.receive().frame;
    if (!pong || pong->kind != FrameKind::reply) throw BackendError("a worker died at start");
  }
}

std::vector<pid_t> WorkerPool::worker_pids() const {
  std::lock_guard lock(m_);
  std::vector<pid_t> out;
  for (auto& s : slots_)
    if (s->worker.running()) out.push_back(s->worker.pid());
  return out;
}

int WorkerPool::reap(Slot* slot, bool* was_alive, std::chrono::milliseconds grace) {
  const int status = slot->worker.wait(grace, was_alive);
  std::lock_guard lock(m_);
  slot->worker.close();
  return status;
}

bool WorkerPool::ensure_worker(Slot* slot, std::string& why) {
  if (slot->worker.running() && (slot->killed_for || slot->killed_all)) {
    // A kill was sent (possibly just after its job ended): wait for it to land.
    reap(slot);
  }
  if (slot->worker.running() && (slot->killed_batch || slot->killed_at_rss)) reap(slot);
  {
    std::lock_guard lock(m_);
    slot->killed_for = nullptr;
    slot->killed_all = false;
    slot->killed_batch = nullptr;
    slot->killed_at_rss = 0;
  }
  if (slot->worker.running()) {
    int status = 0;
    if (::waitpid(slot->worker.pid(), &status, WNOHANG) == 0) return true;  // alive
    // It died while idle (killed, or left): start a fresh one.
    std::lock_guard lock(m_);
    slot->worker.close();
  }
  try {
    WorkerProcess fresh = WorkerProcess::launch(options_);
    {
      std::lock_guard lock(m_);  // abort() may kill it from now on
      slot->worker = std::move(fresh);
      slot->tasks_run = 0;
    }
    slot->worker.handshake(options_);
  } catch (const std::exception& e) {
    std::lock_guard lock(m_);
    slot->worker.close();  // handshake() has reaped it
    why = e.what();
    return false;
  }
  return true;
}

void WorkerPool::drive(Slot* slot) {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(m_);
      while (!(stopping_ || slot->retire || !queue_.empty())) {
        if (cv_.wait_for(lock, 200ms) == std::cv_status::timeout && slot->worker.running()) {
          // Reap a worker that left idle (or was killed) while nothing ran on
          // it, so that no zombie stays behind.
          int status = 0;
          if (::waitpid(slot->worker.pid(), &status, WNOHANG) == slot->worker.pid()) slot->worker.close();
        }
      }
      if (queue_.empty() || slot->retire) {
        if (slot->retire) {
          lock.unlock();
          slot->worker.stop();
          lock.lock();
          slot->exited = true;
          return;
        }
        if (stopping_) return;
        continue;
      }
      job = queue_.front();
      queue_.pop_front();
      if (aborted_.count(job.call)) {
        lock.unlock();
        job.batch->fail(cancelled());
        continue;
      }
      slot->running_call = job.call;
      slot->running_batch = job.batch;
    }
    run_job(slot, job);
    std::lock_guard lock(m_);
    slot->running_call = nullptr;
    slot->running_batch = nullptr;
    slot->memory_limit = 0;
  }
}

void WorkerPool::run_job(Slot* slot, const Job& job) {
  Batch& batch = *job.batch;
  Request request;
  try {
    request = encode_request_parts(batch, job.memmap);
  } catch (...) {
    batch.fail(std::current_exception());
    return;
  }
  const std::size_t n_tasks = batch.size();
  if (job.max_tasks > 0 && slot->worker.running() && slot->tasks_run > 0 &&
      slot->tasks_run + n_tasks > job.max_tasks) {
    // max_tasks_per_child: this worker has done its share; a fresh one takes the batch.
    slot->worker.send(FrameKind::exit, {});
    reap(slot, nullptr, 1000ms);
  }
  for (int attempt = 0;; ++attempt) {
    std::string why;
    if (!ensure_worker(slot, why)) {
      batch.fail(std::make_exception_ptr(BackendError(why)));
      return;
    }
    const pid_t pid = slot->worker.pid();
    {
      std::lock_guard lock(m_);
      if (aborted_.count(job.call)) {
        // The call stopped while this batch was being encoded or its worker started.
        batch.fail(cancelled());
        return;
      }
    }
    {
      std::lock_guard lock(m_);
      slot->memory_limit = job.memory_limit;  // the watcher looks from now on
    }
    batch.set_location(fmt::format("worker process {}", pid));
    batch.started();
    // Read even when the write failed: a worker that left idle just before
    // has said so in a frame waiting in our socket.
    slot->worker.send_request(FrameKind::run, request);
    Received reply = slot->worker.receive();
    if (reply.frame && reply.frame->kind == FrameKind::idle_exit) {
      // It left idle without reading our request: not a crash. Send the
      // request again, to a fresh worker.
      reap(slot);
      if (attempt < 100) continue;
      batch.fail(std::make_exception_ptr(BackendError(
          fmt::format("worker processes kept leaving idle before taking a batch (idle_worker_timeout={} s)",
                      options_.idle_timeout))));
      return;
    }
    if (!reply.frame || reply.frame->kind != FrameKind::reply) {
      bool killed = false;
      std::size_t rss = 0;
      {
        std::lock_guard lock(m_);
        killed = slot->killed_for == job.call || slot->killed_all || slot->killed_batch == job.batch;
        rss = slot->killed_at_rss;
      }
      bool was_alive = false;
      const int status = reap(slot, &was_alive, reply.garbled ? 0ms : 1000ms);
      if (rss > 0 && !killed)
        batch.fail(memory_limit_exceeded(pid, rss, job.memory_limit, n_tasks));
      else if (killed || interrupted())
        batch.fail(interrupted() ? std::make_exception_ptr(Error("Parallel call interrupted (SIGINT)")) : cancelled());
      else if (was_alive)
        batch.fail(std::make_exception_ptr(TerminatedWorkerError(fmt::format(
            "The worker process (pid {}) sent {} instead of a reply (did a task write to the worker's channel, "
            "or close it?); it was stopped.\nThe worker was running a batch of {} task{}.",
            pid, reply.garbled ? "bytes that are not a joblib frame" : "nothing", batch.size(),
            batch.size() == 1 ? "" : "s"))));
      else
        batch.fail(worker_terminated(status, pid, batch.size()));
      return;
    }
    slot->tasks_run += n_tasks;  // before completing: the batch may be gone after
    complete_batch(batch, reply.frame->payload);
    return;
  }
}

// ---- a backend over a pool ----------------------------------------------------------

PoolBackend::~PoolBackend() { stop_call(); }

BackendCapabilities PoolBackend::capabilities() const noexcept {
  BackendCapabilities c;
  c.uses_threads = false;
  c.supports_sharedmem = false;
  c.supports_timeout = true;
  c.supports_return_generator = true;
  c.needs_encoded_tasks = true;
  return c;
}

std::exception_ptr PoolBackend::start_call(const CallSettings& s) noexcept {
  try {
    clear_interrupted();  // an earlier Ctrl-C has been reported by the calls it stopped
    memmap_ = std::make_unique<CallMemmap>(s);
    max_tasks_ = s.max_tasks_per_child ? static_cast<std::size_t>(*s.max_tasks_per_child) : 0;
    memory_limit_ = s.worker_memory_limit.value_or(0);
    pool_ = make_pool(s);
    if (!pool_) throw BackendError(name() + ": make_pool() gave no pool");
  } catch (...) {
    return std::current_exception();
  }
  return {};
}

void PoolBackend::submit(Batch& batch) noexcept {
  try {
    pool_->submit({&batch, this, memmap_.get(), max_tasks_, memory_limit_});
  } catch (...) {
    batch.fail(std::current_exception());
  }
}

bool PoolBackend::cancel(Batch& batch) noexcept { return pool_ && pool_->cancel(&batch); }

void PoolBackend::abort() noexcept {
  if (pool_) pool_->abort(this);
}

void PoolBackend::stop_call() noexcept {
  if (memmap_) memmap_->cleanup();
  if (pool_) pool_->forget(this);
  pool_.reset();  // a pool per call ends here; a kept pool lives on
}

}  // namespace joblib::worker_sdk
