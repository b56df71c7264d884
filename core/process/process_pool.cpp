// Worker process pools (loky: spawned and reused; multiprocessing: forked
// per call), the process backend built on them, and Ctrl-C handling.
#include "process_pool.hpp"

#include "config.hpp"

#include <joblib/config.hpp>
#include <joblib/detail/process_backend.hpp>
#include <joblib/detail/process.hpp>
#include <joblib/errors.hpp>

#include <fcntl.h>
#include <poll.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <set>

extern char** environ;

namespace joblib::detail {
namespace {

using namespace std::chrono_literals;

// Longest idle_worker_timeout accepted: a poll() of it in milliseconds fits an int.
constexpr double kMaxIdleTimeout = 2e6;

// ---- every pool, for Ctrl-C and for forked children ----------------------------

std::mutex g_pools_mutex;
std::set<ProcessPool*>& all_pools() {
  static auto* s = new std::set<ProcessPool*>();
  return *s;
}
std::mutex g_fds_mutex;  // a leaf lock: guards parent_fds() only
// Held from socketpair() until the parent's copy of the child's end is closed
// and the parent's end is recorded: a fork in between would let another
// child inherit (and keep open) this worker's socket.
std::mutex g_spawn_mutex;
std::set<int>& parent_fds() {  // parent ends of worker sockets: a forked child closes them
  static auto* s = new std::set<int>();
  return *s;
}

// ---- Ctrl-C ----------------------------------------------------------------------
// While process pools exist, SIGINT is caught: a watcher thread kills every
// worker, removes the memmapping folders, and then ends the program as SIGINT
// would (when the program had no handler of its own) or calls the program's
// handler and lets the running calls fail with InterruptedError.

int g_sig_pipe[2] = {-1, -1};
struct sigaction g_previous_sigint {};
std::atomic<bool> g_interrupted{false};

void on_sigint(int) {
  const char c = 1;
  [[maybe_unused]] ssize_t w = ::write(g_sig_pipe[1], &c, 1);
}

void watch_sigint() {
  for (;;) {
    char c;
    ssize_t r = ::read(g_sig_pipe[0], &c, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return;
    g_interrupted = true;
    {
      std::lock_guard lock(g_pools_mutex);
      for (ProcessPool* p : all_pools())
        if (g_previous_sigint.sa_handler == SIG_DFL) p->kill_and_reap_all();
        else p->kill_all();
    }
    remove_memmap_folders();
    if (g_previous_sigint.sa_handler == SIG_DFL && !(g_previous_sigint.sa_flags & SA_SIGINFO)) {
      ::signal(SIGINT, SIG_DFL);
      ::kill(::getpid(), SIGINT);  // end as SIGINT would
      return;
    }
    if (g_previous_sigint.sa_flags & SA_SIGINFO) {
      if (g_previous_sigint.sa_sigaction) g_previous_sigint.sa_sigaction(SIGINT, nullptr, nullptr);
    } else if (g_previous_sigint.sa_handler != SIG_IGN && g_previous_sigint.sa_handler != SIG_DFL) {
      g_previous_sigint.sa_handler(SIGINT);
    }
  }
}

void install_sigint_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    ::sigaction(SIGINT, nullptr, &current);
    if (!(current.sa_flags & SA_SIGINFO) && current.sa_handler == SIG_IGN) return;  // Ctrl-C ignored: keep it so
    if (::pipe2(g_sig_pipe, O_CLOEXEC) != 0) return;
    g_previous_sigint = current;
    struct sigaction act {};
    act.sa_handler = on_sigint;
    sigemptyset(&act.sa_mask);
    act.sa_flags = SA_RESTART;
    ::sigaction(SIGINT, &act, nullptr);
    std::thread(watch_sigint).detach();
  });
}

// Stops every pool at exit, so no worker outlives the program.
void stop_pools_at_exit();

std::string terminated_message(const std::string& codes, const Batch& b) {
  (void)b;
  return fmt::format(
      "A worker process managed by the executor was unexpectedly terminated. This could be caused by a "
      "segmentation fault while calling the function or by an excessive memory usage causing the Operating "
      "System to kill the worker.\n\nThe exit codes of the workers are {{{}}}",
      codes);
}

}  // namespace

bool interrupted() noexcept { return g_interrupted.load(); }

// ---- the pool ----------------------------------------------------------------------

ProcessPool::ProcessPool(PoolConfig cfg) : cfg_(std::move(cfg)) {
  {
    std::lock_guard lock(g_pools_mutex);
    all_pools().insert(this);
    static std::once_flag at_exit;
    std::call_once(at_exit, [] { std::atexit(stop_pools_at_exit); });
  }
  install_sigint_handler();
  std::lock_guard lock(m_);
  add_slots_locked(std::max(cfg_.n_workers, 1));
}

ProcessPool::~ProcessPool() {
  {
    std::lock_guard lock(g_pools_mutex);
    all_pools().erase(this);
  }
  std::vector<std::unique_ptr<Slot>> slots;
  {
    std::lock_guard lock(m_);
    stopping_ = true;
    cv_.notify_all();
  }
  // Drivers finish the job they run (abort() first if that must not wait).
  for (auto& s : slots_)
    if (s->driver.joinable()) s->driver.join();
  for (auto& s : slots_) stop_worker(s.get());
}

void ProcessPool::stop_worker(Slot* slot) {
  if (slot->pid <= 0) return;
  // Told to leave; killed if it has not left within a second; then reaped
  // and its socket closed: no zombie, no orphan, no open fd.
  write_frame(channel(slot), FrameKind::exit, {});
  reap(slot, nullptr, 1000ms);
}

void ProcessPool::add_slots_locked(int n) {
  for (int i = 0; i < n; ++i) {
    auto slot = std::make_unique<Slot>();
    Slot* raw = slot.get();
    slots_.push_back(std::move(slot));
    raw->driver = std::thread([this, raw] { drive(raw); });
  }
}

void ProcessPool::resize(int n) {
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
  cfg_.n_workers = n;
}

void ProcessPool::submit(Job job) {
  {
    std::unique_lock lock(m_);
    if (aborted_.count(job.tag)) {
      lock.unlock();
      job.batch->fail(std::make_exception_ptr(Error("cancelled")));
      return;
    }
    queue_.push_back(job);
  }
  cv_.notify_one();
}

void ProcessPool::forget(const void* tag) noexcept {
  std::lock_guard lock(m_);
  aborted_.erase(tag);
}

void ProcessPool::abort(const void* tag) noexcept {
  std::vector<Job> dropped;
  {
    std::lock_guard lock(m_);
    aborted_.insert(tag);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->tag == tag) {
        dropped.push_back(*it);
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto& s : slots_)
      if (s->running_tag == tag && s->pid > 0) {
        s->killed_for = tag;
        ::kill(s->pid, SIGKILL);
      }
  }
  for (Job& j : dropped) j.batch->fail(std::make_exception_ptr(Error("cancelled")));
}

void ProcessPool::kill_all() noexcept {
  std::lock_guard lock(m_);
  for (auto& s : slots_)
    if (s->pid > 0) {
      s->killed_all = true;
      ::kill(s->pid, SIGKILL);
    }
}

void ProcessPool::kill_and_reap_all() noexcept {
  std::vector<pid_t> pids;
  {
    std::lock_guard lock(m_);
    for (auto& s : slots_)
      if (s->pid > 0) {
        s->killed_all = true;
        ::kill(s->pid, SIGKILL);
        pids.push_back(s->pid);
      }
  }
  for (pid_t pid : pids) ::waitpid(pid, nullptr, 0);  // the program ends next: no zombie left
}

void ProcessPool::start_all() {
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
    if (s->pid > 0) continue;
    if (!ensure_worker(s, why)) throw BackendError(why);
    fresh.push_back(s);
  }
  for (Slot* s : fresh) {
    std::optional<WireFrame> pong;
    if (write_frame(channel(s), FrameKind::ping, {})) pong = read_frame(channel(s)).frame;
    if (!pong || pong->kind != FrameKind::reply) throw BackendError("a worker died at start");
  }
}

std::vector<pid_t> ProcessPool::worker_pids() const {
  std::lock_guard lock(m_);
  std::vector<pid_t> out;
  for (auto& s : slots_)
    if (s->pid > 0) out.push_back(s->pid);
  return out;
}

int ProcessPool::reap(Slot* slot, bool* was_alive, std::chrono::milliseconds grace) {
  int status = 0;
  if (slot->pid > 0) {
    // A worker whose socket just closed may not have finished exiting yet.
    const auto until = std::chrono::steady_clock::now() + grace;
    while (!process_exited(slot->pid) && std::chrono::steady_clock::now() < until) {
      if (slot->pidfd >= 0) {
        pollfd p{slot->pidfd, POLLIN, 0};
        ::poll(&p, 1, static_cast<int>(grace.count()));
      } else {
        std::this_thread::sleep_for(1ms);
      }
    }
    const bool alive = !process_exited(slot->pid);
    if (alive) ::kill(slot->pid, SIGKILL);  // never wait for a live child
    if (was_alive) *was_alive = alive;
    while (::waitpid(slot->pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  std::lock_guard lock(m_);
  forget_worker_locked(slot);
  return status;
}

void ProcessPool::forget_worker_locked(Slot* slot) {
  {
    std::lock_guard lock(g_fds_mutex);
    parent_fds().erase(slot->fd);
  }
  if (slot->fd >= 0) ::close(slot->fd);
  if (slot->pidfd >= 0) ::close(slot->pidfd);
  slot->pid = 0;
  slot->fd = -1;
  slot->pidfd = -1;
}

bool ProcessPool::ensure_worker(Slot* slot, std::string& why) {
  if (slot->pid > 0 && (slot->killed_for || slot->killed_all)) {
    // A kill was sent (possibly just after its job ended): wait for it to land.
    reap(slot);
  }
  {
    std::lock_guard lock(m_);
    slot->killed_for = nullptr;
    slot->killed_all = false;
  }
  if (slot->pid > 0) {
    int status = 0;
    if (::waitpid(slot->pid, &status, WNOHANG) == 0) return true;  // alive
    // It died while idle (killed, or left): start a fresh one.
    std::lock_guard lock(m_);
    forget_worker_locked(slot);
  }
  std::unique_lock spawn_lock(g_spawn_mutex);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    why = fmt::format("socketpair failed: {}", std::strerror(errno));
    return false;
  }
  pid_t pid = -1;
  const std::string token = cfg_.start == StartMethod::spawn ? make_worker_token() : std::string();
  if (cfg_.start == StartMethod::spawn) {
    constexpr int kChildFd = 3;
    int child_end = sv[1];
    if (child_end == kChildFd) child_end = ::fcntl(sv[1], F_DUPFD_CLOEXEC, 10);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, child_end, kChildFd);
    std::vector<std::string> env_store;
    for (char** e = environ; e && *e; ++e) {
      const std::string kv = *e;
      const std::string key = kv.substr(0, kv.find('='));
      if (cfg_.env.count(key) || key.rfind("JOBLIB_WORKER_", 0) == 0) continue;
      env_store.push_back(kv);
    }
    for (auto& [k, v] : cfg_.env) env_store.push_back(k + "=" + v);
    env_store.push_back(fmt::format("JOBLIB_WORKER_FD={}", kChildFd));
    env_store.push_back(fmt::format("JOBLIB_WORKER_IDLE={}", cfg_.idle_timeout));
    env_store.push_back(fmt::format("JOBLIB_WORKER_PARENT={}", ::getpid()));
    env_store.push_back(fmt::format("JOBLIB_WORKER_TOKEN={}", token));
    std::vector<char*> envp;
    for (auto& s : env_store) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = saved_argv();
    if (args.empty()) args.push_back("joblib-worker");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = ::posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (child_end != sv[1]) ::close(child_end);
    ::close(sv[1]);
    if (rc != 0) {
      ::close(sv[0]);
      why = fmt::format("cannot start a worker process (posix_spawn of /proc/self/exe): {}", std::strerror(rc));
      return false;
    }
  } else {
    std::vector<int> to_close;
    {
      std::lock_guard lock(g_fds_mutex);
      to_close.assign(parent_fds().begin(), parent_fds().end());
    }
    std::fflush(nullptr);  // else the child would print the parent's unflushed output again
    const pid_t parent = ::getpid();
    pid = ::fork();
    if (pid == 0) {
      // The child: only this thread exists. Close the other workers'
      // sockets, then serve.
      ::close(sv[0]);
      for (int fd : to_close) ::close(fd);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(0);  // the parent died before the line above
      ::signal(SIGINT, SIG_IGN);
      // The spawn lock is held by this (copied) thread, and other threads of
      // the parent may have held the pools' locks: a task that makes a
      // process call of its own needs them free.
      reset_pools_in_fork_child();
      run_worker(move_channel_out_of_reach(sv[1]), 0);
    }
    ::close(sv[1]);
    if (pid < 0) {
      ::close(sv[0]);
      why = fmt::format("cannot fork a worker process: {}", std::strerror(errno));
      return false;
    }
  }
  {
    std::lock_guard lock(g_fds_mutex);
    parent_fds().insert(sv[0]);
  }
  spawn_lock.unlock();
  {
    std::lock_guard lock(m_);
    slot->pid = pid;
    slot->fd = sv[0];
    slot->pidfd = open_pidfd(pid);
  }
  // The spawned worker takes over only after this handshake (a program
  // merely started with JOBLIB_WORKER_FD in its environment does not).
  if (!token.empty() && !write_frame_raw(channel(slot), token)) {
    reap(slot);
    why = "a worker process died at start";
    return false;
  }
  if (!cfg_.initializer.empty()) {
    // joblib's initializer: run once in every new worker, before any task.
    if (!write_frame(channel(slot), FrameKind::init, cfg_.initializer)) {
      reap(slot);
      why = "the worker died before its initializer ran";
      return false;
    }
    std::optional<WireFrame> reply = read_frame(channel(slot)).frame;
    if (!reply || reply->kind != FrameKind::reply || reply->payload.empty() ||
        reply->payload[0] != std::byte{static_cast<std::uint8_t>(ReplyStatus::ok)}) {
      if (reply && reply->kind == FrameKind::reply && !reply->payload.empty()) {
        try {
          rethrow_remote(std::span<const std::byte>(reply->payload).subspan(1), 0, "initializer");
        } catch (const std::exception& e) {
          why = fmt::format("the worker initializer failed: {}", e.what());
        }
      } else {
        why = "the worker died in its initializer";
      }
      ::kill(pid, SIGKILL);
      reap(slot);
      return false;
    }
  }
  return true;
}

void ProcessPool::drive(Slot* slot) {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(m_);
      while (!(stopping_ || slot->retire || !queue_.empty())) {
        if (cv_.wait_for(lock, 200ms) == std::cv_status::timeout && slot->pid > 0) {
          // Reap a worker that left idle (or was killed) while nothing ran on
          // it, so that no zombie stays behind.
          int status = 0;
          if (::waitpid(slot->pid, &status, WNOHANG) == slot->pid) forget_worker_locked(slot);
        }
      }
      if (queue_.empty() || slot->retire) {
        if (slot->retire) {
          lock.unlock();
          stop_worker(slot);
          lock.lock();
          slot->exited = true;
          return;
        }
        if (stopping_) return;
        continue;
      }
      job = queue_.front();
      queue_.pop_front();
      if (aborted_.count(job.tag)) {
        lock.unlock();
        job.batch->fail(std::make_exception_ptr(Error("cancelled")));
        continue;
      }
      slot->running_tag = job.tag;
    }
    run_job(slot, job);
    std::lock_guard lock(m_);
    slot->running_tag = nullptr;
  }
}

void ProcessPool::run_job(Slot* slot, const Job& job) {
  Batch& batch = *job.batch;
  CodeRef entry;
  MemoryOutput structure;
  RequestSink sink(job.memmap);
  std::vector<std::byte> request;
  try {
    if (std::exception_ptr e = batch.encode(entry, structure, &sink)) {
      batch.fail(e);
      return;
    }
    request = make_request(entry, std::move(sink.buffers()), structure.bytes());
  } catch (...) {
    batch.fail(std::current_exception());
    return;
  }
  for (int attempt = 0;; ++attempt) {
    std::string why;
    if (!ensure_worker(slot, why)) {
      batch.fail(std::make_exception_ptr(BackendError(why)));
      return;
    }
    const pid_t pid = slot->pid;
    {
      std::lock_guard lock(m_);
      if (aborted_.count(job.tag)) {
        // The call stopped while this batch was being encoded or its worker started.
        batch.fail(std::make_exception_ptr(Error("cancelled")));
        return;
      }
    }
    batch.started();
    // Read even when the write failed: a worker that left idle just before
    // has said so in a frame waiting in our socket.
    write_frame(channel(slot), FrameKind::run, request);
    FrameResult reply = read_frame(channel(slot));
    if (reply.frame && reply.frame->kind == FrameKind::idle_exit) {
      // It left idle without reading our request: not a crash. Send the
      // request again, to a fresh worker.
      reap(slot);
      if (attempt < 100) continue;
      batch.fail(std::make_exception_ptr(BackendError(
          fmt::format("worker processes kept leaving idle before taking a batch (idle_worker_timeout={} s)",
                      cfg_.idle_timeout))));
      return;
    }
    if (!reply.frame || reply.frame->kind != FrameKind::reply) {
      bool killed = false;
      {
        std::lock_guard lock(m_);
        killed = slot->killed_for == job.tag || slot->killed_all;
      }
      bool was_alive = false;
      const int status = reap(slot, &was_alive, reply.garbled ? 0ms : 1000ms);
      if (killed || g_interrupted)
        batch.fail(std::make_exception_ptr(g_interrupted ? Error("Parallel call interrupted (SIGINT)")
                                                         : Error("cancelled")));
      else if (was_alive)
        batch.fail(std::make_exception_ptr(TerminatedWorkerError(fmt::format(
            "The worker process (pid {}) sent {} instead of a reply (did a task write to the worker's channel, "
            "or close it?); it was stopped.\nThe worker was running a batch of {} task{}.",
            pid, reply.garbled ? "bytes that are not a joblib frame" : "nothing", batch.size(),
            batch.size() == 1 ? "" : "s"))));
      else
        batch.fail(std::make_exception_ptr(TerminatedWorkerError(
            terminated_message(describe_exit(status), batch) +
            fmt::format("\nThe worker (pid {}) was running a batch of {} task{}.", pid, batch.size(),
                        batch.size() == 1 ? "" : "s"))));
      return;
    }
    // The reply: [status][results] or [status][error envelope]. The batch
    // gets decoded results or the failed task's exception, never bytes of
    // the wire format.
    const std::span<const std::byte> payload(reply.frame->payload);
    if (payload.empty()) {
      batch.fail(std::make_exception_ptr(SerializationError("a worker sent an empty reply")));
    } else if (payload[0] == std::byte{static_cast<std::uint8_t>(ReplyStatus::ok)}) {
      batch.complete(payload.subspan(1), nullptr);
    } else {
      RemoteFailure failure;
      try {
        failure = decode_failure(payload.subspan(1), batch.first_task_index(),
                                 [&batch](std::size_t i) { return batch.task_function_name(i); });
      } catch (...) {
        batch.fail(std::current_exception());
        return;
      }
      batch.fail_task(failure.index, failure.error);
    }
    return;
  }
}

namespace {
std::mutex g_reusable_mutex;
std::shared_ptr<ProcessPool>& reusable_slot() {
  static auto* p = new std::shared_ptr<ProcessPool>();
  return *p;
}

void stop_pools_at_exit() {
  std::shared_ptr<ProcessPool> pool;
  {
    std::lock_guard lock(g_reusable_mutex);
    pool = std::move(reusable_slot());
  }
  pool.reset();  // exit frames, reaped workers
  std::lock_guard lock(g_pools_mutex);
  for (ProcessPool* p : all_pools()) p->kill_all();
}
}  // namespace

std::shared_ptr<ProcessPool> reusable_pool(const PoolConfig& cfg) {
  std::shared_ptr<ProcessPool> old;
  std::lock_guard lock(g_reusable_mutex);
  auto& slot = reusable_slot();
  if (slot && slot->config().same_kind(cfg)) {
    if (slot->config().n_workers != cfg.n_workers) slot->resize(cfg.n_workers);
    return slot;
  }
  old = std::move(slot);
  slot = std::make_shared<ProcessPool>(cfg);
  return slot;  // `old` is stopped when its last call lets go of it
}

void reset_pools_in_fork_child() noexcept {
  // Only this thread exists in the child: re-make the locks (some were held
  // by threads that are gone) and forget the parent's pools without
  // destroying them (their driver threads do not exist here).
  new (&g_spawn_mutex) std::mutex();
  new (&g_fds_mutex) std::mutex();
  new (&g_pools_mutex) std::mutex();
  new (&g_reusable_mutex) std::mutex();
  parent_fds().clear();
  all_pools().clear();
  new (&reusable_slot()) std::shared_ptr<ProcessPool>();  // the parent's pool is left alone, not released
  reset_memmap_state_in_fork_child();
}

std::vector<pid_t> loky_worker_pids() {
  std::lock_guard lock(g_reusable_mutex);
  auto& slot = reusable_slot();
  return slot ? slot->worker_pids() : std::vector<pid_t>{};
}

// ---- the backend ----------------------------------------------------------------

ProcessBackend::ProcessBackend(const BackendInit& init, StartMethod start)
    : ParallelBackendBase(init), start_(start) {}

ProcessBackend::~ProcessBackend() { stop_call(); }

std::string ProcessBackend::name() const { return start_ == StartMethod::spawn ? "loky" : "multiprocessing"; }

BackendCapabilities ProcessBackend::capabilities() const noexcept {
  BackendCapabilities c;
  c.uses_threads = false;
  c.supports_sharedmem = false;
  c.supports_timeout = true;
  c.supports_return_generator = true;
  c.needs_encoded_tasks = true;
  c.supports_inner_max_num_threads = start_ == StartMethod::spawn;
  return c;
}

std::exception_ptr ProcessBackend::start_call(const CallSettings& s) noexcept {
  try {
    g_interrupted = false;  // an earlier Ctrl-C has been reported by the calls it stopped
    if (start_ == StartMethod::spawn && !main_guard_ran())
      throw BackendError(
          "the loky backend starts workers by running this program again, and this program did not start "
          "through joblib's main guard: link it with CMake's joblib::joblib target (which wraps main), or call "
          "joblib::worker_main_guard(argc, argv) first thing in main()");
    PoolConfig cfg;
    cfg.start = start_;
    cfg.n_workers = s.n_jobs;
    cfg.nesting_level = nesting_level();
    if (auto it = init().settings.find("idle_worker_timeout"); it != init().settings.end()) {
      char* end = nullptr;
      cfg.idle_timeout = std::strtod(it->second.c_str(), &end);
      if (it->second.empty() || !end || *end || !std::isfinite(cfg.idle_timeout) || cfg.idle_timeout < 0 ||
          cfg.idle_timeout > kMaxIdleTimeout)
        throw std::invalid_argument(fmt::format(
            "idle_worker_timeout must be a finite number of seconds from 0 to {:g} (0: workers never leave), got '{}'",
            kMaxIdleTimeout, it->second));
    }
    if (start_ == StartMethod::spawn) {
      // joblib's per-worker thread caps for BLAS/OpenMP/TBB inside tasks.
      const int cap = init().inner_max_num_threads.value_or(std::max(cpu_count() / std::max(s.n_jobs, 1), 1));
      for (const char* var : {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                              "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS"}) {
        const char* parent = std::getenv(var);
        cfg.env[var] = (parent && *parent && !init().inner_max_num_threads) ? std::string(parent) : std::to_string(cap);
      }
      if (!std::getenv("ENABLE_IPC")) cfg.env.emplace("ENABLE_IPC", "1");
    }
    cfg.initializer = s.initializer;
    memmap_ = std::make_unique<MemmapContext>(s.temp_folder, s.max_nbytes, s.mmap_mode);
    pool_ = start_ == StartMethod::spawn ? reusable_pool(cfg) : std::make_shared<ProcessPool>(cfg);
  } catch (...) {
    return std::current_exception();
  }
  return {};
}

void ProcessBackend::submit(Batch& batch) noexcept {
  try {
    pool_->submit({&batch, this, memmap_.get()});
  } catch (...) {
    batch.fail(std::current_exception());
  }
}

void ProcessBackend::abort() noexcept {
  if (pool_) pool_->abort(this);
}

void ProcessBackend::stop_call() noexcept {
  if (memmap_) memmap_->cleanup();
  if (pool_) pool_->forget(this);
  pool_.reset();  // a fork pool ends here; the loky pool lives on
}

}  // namespace joblib::detail

namespace joblib::detail {
std::unique_ptr<ParallelBackendBase> make_process_backend(const BackendInit& init, bool fork) {
  return std::make_unique<ProcessBackend>(init, fork ? StartMethod::fork : StartMethod::spawn);
}
}  // namespace joblib::detail
