// Worker processes seen from their parent (the worker SDK's WorkerProcess):
// spawning this program again with the handshake, forking, the initializer,
// reaping; the memmap folder of a call; and Ctrl-C and fork-child handling
// shared by every pool of every plugin.
#include "memmap.hpp"
#include "worker.hpp"

#include <joblib/detail/process.hpp>

#include <joblib/errors.hpp>
#include <joblib/worker_sdk.hpp>

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>

extern char** environ;

namespace joblib::worker_sdk {
using namespace std::chrono_literals;
using detail::WatchedChannel;

namespace {

// ---- descriptors a forked child must close -------------------------------------

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
// While pools exist, SIGINT is caught: a watcher thread kills every worker,
// removes the memmapping folders, and then ends the program as SIGINT would
// (when the program had no handler of its own) or calls the program's handler
// and lets the running calls fail with InterruptedError.

std::mutex g_pools_mutex;  // taken before any pool's own lock, never under it
std::set<WorkerPool*>* g_pools = new std::set<WorkerPool*>();
std::set<WorkerPool*>& pools() { return *g_pools; }
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
    const bool ends_program = g_previous_sigint.sa_handler == SIG_DFL && !(g_previous_sigint.sa_flags & SA_SIGINFO);
    {
      std::lock_guard lock(g_pools_mutex);
      for (WorkerPool* p : pools()) p->kill_all(ends_program);
    }
    if (ends_program) detail::remove_memmap_folders_and_raise(SIGINT);  // end as SIGINT would
    detail::remove_memmap_folders();
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

// ---- fork children ---------------------------------------------------------------

std::mutex g_fork_hooks_mutex;
std::vector<void (*)() noexcept>& fork_hooks() {
  static auto* v = new std::vector<void (*)() noexcept>();
  return *v;
}

}  // namespace

bool interrupted() noexcept { return g_interrupted.load(); }
void clear_interrupted() noexcept { g_interrupted = false; }

std::vector<pid_t> pool_worker_pids() {
  std::lock_guard lock(g_pools_mutex);
  std::vector<pid_t> out;
  for (WorkerPool* p : pools())
    for (pid_t pid : p->worker_pids()) out.push_back(pid);
  return out;
}

void at_fork_child(void (*reset)() noexcept) {
  std::lock_guard lock(g_fork_hooks_mutex);
  fork_hooks().push_back(reset);
}

}  // namespace joblib::worker_sdk

namespace joblib::detail {

namespace {
// At exit, no worker outlives the program: pools still alive (kept by a
// plugin that did not stop them) have their workers killed.
void kill_workers_at_exit() {
  std::lock_guard lock(worker_sdk::g_pools_mutex);
  for (worker_sdk::WorkerPool* p : worker_sdk::pools()) p->kill_all();
}
}  // namespace

void register_pool(worker_sdk::WorkerPool* pool) {
  worker_sdk::install_sigint_handler();
  static std::once_flag at_exit;
  std::call_once(at_exit, [] { std::atexit(kill_workers_at_exit); });
  std::lock_guard lock(worker_sdk::g_pools_mutex);
  worker_sdk::pools().insert(pool);
}

void unregister_pool(worker_sdk::WorkerPool* pool) noexcept {
  std::lock_guard lock(worker_sdk::g_pools_mutex);
  worker_sdk::pools().erase(pool);
}

void reset_in_fork_child() noexcept {
  using namespace worker_sdk;
  // Only this thread exists in the child: re-make the locks (some were held
  // by threads that are gone) and forget the parent's pools without
  // destroying them (their driver threads do not exist here).
  new (&g_spawn_mutex) std::mutex();
  new (&g_fds_mutex) std::mutex();
  new (&g_pools_mutex) std::mutex();
  new (&g_fork_hooks_mutex) std::mutex();
  parent_fds().clear();  // consistent: the forking thread held its lock
  // Pools may have been changing under g_pools_mutex (not held across
  // fork): the child's copy is left as it is, and a new registry used.
  g_pools = new std::set<WorkerPool*>();
  reset_memmap_state_in_fork_child();
  for (auto* reset : fork_hooks()) reset();
}

}  // namespace joblib::detail

namespace joblib::worker_sdk {

// ---- the memmap folder of a call -------------------------------------------------

CallMemmap::CallMemmap(const CallSettings& s)
    : impl_(std::make_unique<detail::MemmapContext>(s.temp_folder, s.max_nbytes, s.mmap_mode)) {}
CallMemmap::~CallMemmap() = default;
void CallMemmap::cleanup() noexcept { impl_->cleanup(); }

// ---- worker processes --------------------------------------------------------------

std::exception_ptr worker_terminated(int wait_status, pid_t pid, std::size_t batch_size) {
  return std::make_exception_ptr(TerminatedWorkerError(fmt::format(
      "A worker process managed by the executor was unexpectedly terminated. This could be caused by a "
      "segmentation fault while calling the function or by an excessive memory usage causing the Operating "
      "System to kill the worker.\n\nThe exit codes of the workers are {{{}}}\nThe worker (pid {}) was running "
      "a batch of {} task{}.",
      describe_exit(wait_status), pid, batch_size, batch_size == 1 ? "" : "s")));
}

WorkerProcess::WorkerProcess(pid_t pid, int fd) noexcept : pid_(pid), fd_(fd), pidfd_(detail::open_pidfd(pid)) {
  std::lock_guard lock(g_fds_mutex);
  parent_fds().insert(fd);
}

WorkerProcess::WorkerProcess(WorkerProcess&& o) noexcept
    : pid_(std::exchange(o.pid_, 0)), fd_(std::exchange(o.fd_, -1)), pidfd_(std::exchange(o.pidfd_, -1)),
      token_(std::move(o.token_)) {}

WorkerProcess& WorkerProcess::operator=(WorkerProcess&& o) noexcept {
  if (this != &o) {
    if (running()) {
      kill();
      wait();
    }
    close();
    pid_ = std::exchange(o.pid_, 0);
    fd_ = std::exchange(o.fd_, -1);
    pidfd_ = std::exchange(o.pidfd_, -1);
    token_ = std::move(o.token_);
  }
  return *this;
}

WorkerProcess::~WorkerProcess() {
  if (running()) {
    kill();
    wait();
  }
  close();
}

namespace {
WatchedChannel channel_of(pid_t pid, int fd, int pidfd) { return {fd, pid, pidfd}; }
}  // namespace

bool WorkerProcess::exited() const noexcept { return pid_ <= 0 || detail::process_exited(pid_); }

bool WorkerProcess::send(FrameKind kind, std::span<const std::byte> a, std::span<const std::byte> b) noexcept {
  if (fd_ < 0) return false;
  return detail::write_frame(channel_of(pid_, fd_, pidfd_), kind, a, b);
}

bool WorkerProcess::send_request(FrameKind kind, const Request& request) noexcept {
  if (fd_ < 0) return false;
  try {
    return detail::write_request_frame(channel_of(pid_, fd_, pidfd_), kind, request);
  } catch (...) {
    return false;
  }
}

Received WorkerProcess::receive() noexcept {
  Received out;
  if (fd_ < 0) return out;
  try {
    detail::FrameResult r = detail::read_frame(channel_of(pid_, fd_, pidfd_));
    out.frame = std::move(r.frame);
    out.garbled = r.garbled;
  } catch (...) {
    out.garbled = true;
  }
  return out;
}

void WorkerProcess::kill() noexcept {
  if (pid_ > 0) ::kill(pid_, SIGKILL);
}

int WorkerProcess::wait(std::chrono::milliseconds grace, bool* was_alive) noexcept {
  int status = 0;
  if (pid_ <= 0) return status;
  // A worker whose socket just closed may not have finished exiting yet.
  const auto until = std::chrono::steady_clock::now() + grace;
  while (!detail::process_exited(pid_) && std::chrono::steady_clock::now() < until) {
    if (pidfd_ >= 0) {
      pollfd p{pidfd_, POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(grace.count()));
    } else {
      std::this_thread::sleep_for(1ms);
    }
  }
  const bool alive = !detail::process_exited(pid_);
  if (alive) ::kill(pid_, SIGKILL);  // never wait for a live child
  if (was_alive) *was_alive = alive;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

void WorkerProcess::close() noexcept {
  {
    std::lock_guard lock(g_fds_mutex);
    parent_fds().erase(fd_);
  }
  if (fd_ >= 0) ::close(fd_);
  if (pidfd_ >= 0) ::close(pidfd_);
  pid_ = 0;
  fd_ = -1;
  pidfd_ = -1;
  token_.clear();
}

void WorkerProcess::stop() noexcept {
  if (pid_ <= 0) return;
  // Told to leave; killed if it has not left within a second; then reaped
  // and its socket closed: no zombie, no orphan, no open fd.
  send(FrameKind::exit, {});
  wait(1000ms);
  close();
}

WorkerProcess WorkerProcess::start(const WorkerOptions& options) {
  WorkerProcess w = launch(options);
  w.handshake(options);
  return w;
}

WorkerProcess WorkerProcess::launch(const WorkerOptions& options) {
  if (options.start == StartMethod::spawn && !main_guard_ran())
    throw BackendError(
        "a process backend that spawns workers runs this program again, and this program did not start "
        "through joblib's main guard: link it with CMake's joblib::joblib target (which wraps main), or call "
        "joblib::worker_main_guard(argc, argv) first thing in main()");
  std::unique_lock spawn_lock(g_spawn_mutex);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw BackendError(fmt::format("socketpair failed: {}", std::strerror(errno)));
  pid_t pid = -1;
  std::string token;
  if (options.start == StartMethod::spawn) {
    token = detail::make_worker_token();
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
      if (options.env.count(key) || key.rfind("JOBLIB_WORKER_", 0) == 0) continue;
      env_store.push_back(kv);
    }
    for (auto& [k, v] : options.env) env_store.push_back(k + "=" + v);
    env_store.push_back(fmt::format("JOBLIB_WORKER_FD={}", kChildFd));
    env_store.push_back(fmt::format("JOBLIB_WORKER_IDLE={}", options.idle_timeout));
    env_store.push_back(fmt::format("JOBLIB_WORKER_PARENT={}", ::getpid()));
    env_store.push_back(fmt::format("JOBLIB_WORKER_TOKEN={}", token));
    std::vector<char*> envp;
    for (auto& s : env_store) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = detail::saved_argv();
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
      throw BackendError(
          fmt::format("cannot start a worker process (posix_spawn of /proc/self/exe): {}", std::strerror(rc)));
    }
  } else {
    // The leaf locks of the state a child inherits (worker sockets, fork
    // hooks, memmap folders) are held across fork(): a thread changing that
    // state at that moment would leave the child a half-made copy (an ASan
    // run caught a child clearing parent_fds() while another thread of the
    // parent was erasing from it: a double free).
    detail::lock_memmap_state_for_fork();
    std::unique_lock hooks_lock(g_fork_hooks_mutex);
    std::unique_lock fds_lock(g_fds_mutex);
    const std::vector<int> to_close(parent_fds().begin(), parent_fds().end());
    std::fflush(nullptr);  // else the child would print the parent's unflushed output again
    const pid_t parent = ::getpid();
    pid = ::fork();
    if (pid != 0) {
      fds_lock.unlock();
      hooks_lock.unlock();
      detail::unlock_memmap_state_after_fork();
    }
    if (pid == 0) {
      fds_lock.release();  // re-made by reset_in_fork_child()
      hooks_lock.release();
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
      detail::reset_in_fork_child();
      serve_channel(detail::move_channel_out_of_reach(sv[1]), 0);
    }
    ::close(sv[1]);
    if (pid < 0) {
      const int err = errno;
      ::close(sv[0]);
      throw BackendError(fmt::format("cannot fork a worker process: {}", std::strerror(err)));
    }
  }
  WorkerProcess w(pid, sv[0]);
  spawn_lock.unlock();
  w.token_ = std::move(token);
  return w;
}

void WorkerProcess::handshake(const WorkerOptions& options) {
  // The spawned worker takes over only after this handshake (a program
  // merely started with JOBLIB_WORKER_FD in its environment does not).
  if (!token_.empty()) {
    const std::string token = std::exchange(token_, std::string());
    if (!detail::write_frame_raw(channel_of(pid_, fd_, pidfd_), token)) {
      wait();
      close();
      throw BackendError("a worker process died at start");
    }
  }
  if (options.initializer.empty()) return;
  // joblib's initializer: run once in every new worker, before any task.
  if (!send(FrameKind::init, options.initializer)) {
    wait();
    close();
    throw BackendError("the worker died before its initializer ran");
  }
  std::optional<Frame> reply = receive().frame;
  std::exception_ptr failed;
  if (reply && reply->kind == FrameKind::reply) {
    failed = initializer_outcome(reply->payload);
    if (!failed) return;
  } else {
    failed = std::make_exception_ptr(BackendError("the worker died in its initializer"));
  }
  kill();
  wait();
  close();
  std::rethrow_exception(failed);
}

std::vector<std::byte> failure_reply(std::size_t index, std::exception_ptr error) noexcept {
  try {
    const std::string envelope = detail::task_error_envelope(index, std::move(error));
    std::vector<std::byte> out(1 + envelope.size());
    out[0] = std::byte{static_cast<std::uint8_t>(detail::ReplyStatus::error)};
    std::memcpy(out.data() + 1, envelope.data(), envelope.size());
    return out;
  } catch (...) {
    return {};
  }
}

std::exception_ptr initializer_outcome(std::span<const std::byte> reply) noexcept {
  if (!reply.empty() && reply[0] == std::byte{static_cast<std::uint8_t>(detail::ReplyStatus::ok)}) return nullptr;
  std::string why = "the worker initializer failed";
  if (!reply.empty()) {
    try {
      std::rethrow_exception(detail::initializer_failure(reply.subspan(1)));
    } catch (const std::exception& e) {
      why = fmt::format("the worker initializer failed: {}", e.what());
    } catch (...) {
    }
  }
  return std::make_exception_ptr(BackendError(why));
}

}  // namespace joblib::worker_sdk
