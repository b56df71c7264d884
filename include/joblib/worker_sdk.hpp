#pragma once
// The worker SDK: what an out-of-process backend is built from. The loky and
// multiprocessing plugins are written with it, and so can a backend of yours
// (workers reached over SSH, a job queue, a cluster's launcher): see
// docs/plugins.md, "A process backend of your own".
//
// The pieces, parent side:
//   - frames over a byte channel (write_frame, read_frame);
//   - a batch encoded into a run request (encode_request), its large
//     buffers written once to the call's memmap folder (CallMemmap);
//   - a reply turned back into decoded results or the failed task's
//     exception, handed to the batch (complete_batch);
//   - worker processes: this program started again (spawn) or forked,
//     with the handshake, the initializer and death watching
//     (WorkerProcess);
//   - a pool of them, one driver thread per worker, with per-call abort
//     and resizing (WorkerPool), and a backend base over a pool
//     (PoolBackend) whose subclass only chooses the pool;
//   - Ctrl-C: the workers of every pool are killed before the program's
//     own SIGINT handling (interrupted()).
// Worker side:
//   - serve_request() runs one request and hands back the reply, for
//     channels that are not a socket; serve_channel() is the whole loop;
//   - worker_main_guard() (joblib/worker.hpp) takes over a spawned worker
//     before main runs user code (the main wrap of joblib::joblib).
//
// Every function here is thread-safe unless it says otherwise.
#include <joblib/backend.hpp>
#include <joblib/export.hpp>
#include <joblib/options.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

namespace joblib::detail {
class MemmapContext;
}

namespace joblib::worker_sdk {

// ---- frames ------------------------------------------------------------------

/// What a frame carries. `run` and `init` carry a request (encode_request,
/// CallSettings::initializer), `reply` a reply payload, `exit` asks the
/// worker to leave, `idle_exit` is a worker saying it leaves (idle), `ping`
/// is answered by an empty reply.
enum class FrameKind : std::uint32_t { run = 1, reply = 2, init = 3, exit = 4, idle_exit = 5, ping = 6 };

/// One frame: a 16-byte header (magic, kind, size) and the payload.
struct Frame {
  FrameKind kind{};
  std::vector<std::byte> payload;
};

/// Writes one frame whose payload is `a` followed by `b` to descriptor `fd`
/// (blocking). Returns false when the peer is gone. Throws nothing.
JOBLIB_EXPORT bool write_frame(int fd, FrameKind kind, std::span<const std::byte> a,
                               std::span<const std::byte> b = {}) noexcept;
/// Reads one frame from `fd` (blocking). nullopt at end of file, on a read
/// error, or when the bytes are not a frame. Throws nothing.
JOBLIB_EXPORT std::optional<Frame> read_frame(int fd) noexcept;

// ---- the memmapping of a call ------------------------------------------------

/// The memmap folder of one call (joblib's MemmappingPool folder): buffers
/// over `max_nbytes` are written there once per content and workers map
/// them with `mmap_mode`. Created on first use under temp_folder (else
/// JOBLIB_TEMP_FOLDER, /dev/shm, the system temp folder), removed by
/// cleanup() or the destructor, and swept by later programs if this one
/// dies first.
class JOBLIB_EXPORT CallMemmap {
 public:
  /// The folder policy of `settings` (temp_folder, max_nbytes, mmap_mode).
  /// Throws nothing; the folder is created when a buffer first needs it.
  explicit CallMemmap(const CallSettings& settings);
  ~CallMemmap();
  CallMemmap(const CallMemmap&) = delete;
  CallMemmap& operator=(const CallMemmap&) = delete;
  /// Removes the folder and its files. Idempotent.
  void cleanup() noexcept;
  /// The internal context (for the SDK's own functions).
  detail::MemmapContext* context() const noexcept { return impl_.get(); }

 private:
  std::unique_ptr<detail::MemmapContext> impl_;
};

// ---- requests and replies ----------------------------------------------------

/// A `run` request ready to send, in pieces: `bytes` (after `headroom`
/// bytes of the backend's own: the entry point, the tasks, the table of
/// buffers), then each of `buffers` at its 64-byte boundary. The buffers
/// view the batch's own arguments, so they travel without a copy: send the
/// request before the batch is completed or failed.
struct Request {
  std::vector<std::byte> bytes;
  std::vector<std::span<const std::byte>> buffers;
  std::size_t headroom = 0;
  /// The payload in wire order: `bytes`, then for each buffer the zeros
  /// that pad it to its 64-byte boundary and the buffer itself. What a
  /// channel that gathers (writev, an MPI datatype) sends as it is.
  JOBLIB_EXPORT std::vector<std::span<const std::byte>> pieces() const;
  /// The payload's size on the wire, headroom included.
  JOBLIB_EXPORT std::size_t size() const noexcept;
  /// The whole payload in one vector (copies the buffers), for channels
  /// that send one block.
  JOBLIB_EXPORT std::vector<std::byte> flatten() const;
};

/// Worker side: memory to read large messages into, reused from one
/// message to the next while no task holds a window into it (a fresh block
/// of hundreds of megabytes costs a page fault per 4 KiB). Not thread-safe.
class JOBLIB_EXPORT ReceiveBlock {
 public:
  /// At least `n` bytes, 64-byte aligned: the kept block when nothing else
  /// holds it and it is large enough, else a new one (of 64 KiB at least,
  /// and from 1 MiB on with 1 MiB to spare), kept instead unless it is the
  /// smaller. Throws std::bad_alloc.
  std::shared_ptr<std::byte> get(std::size_t n);
  /// Lets go of the kept block (a worker idle for a while).
  void release() noexcept { kept_.reset(); }
  bool holds() const noexcept { return kept_ != nullptr; }

 private:
  std::shared_ptr<std::byte> kept_;
  std::size_t size_ = 0;
};

/// Encodes `batch` into a `run` request: the portable reference of its
/// entry point, its tasks, and its large buffers: in the memmap folder when
/// `memmap` is given and they are over its max_nbytes; else, from 64 KiB on,
/// in the request's `buffers` (no copy); smaller ones inline. Throws what
/// encoding throws (SerializationError for a task that cannot travel,
/// StoreError when the memmap folder cannot be written); the batch is left
/// to be failed by the caller. With `headroom`, the bytes start that many
/// bytes into the vector: room for a header of the backend's own.
JOBLIB_EXPORT Request encode_request_parts(Batch& batch, CallMemmap* memmap, std::size_t headroom = 0);

/// Sender side: the large buffers one worker already holds during a call
/// (sent once per worker, named by content after that). Pass the same
/// object for every request to that worker in one call; clear() it when a
/// new call starts or the worker lost them. Not thread-safe.
class JOBLIB_EXPORT SentBuffers {
 public:
  /// Empty: the worker holds nothing yet. Throws std::bad_alloc.
  SentBuffers();
  ~SentBuffers();
  /// Movable (a backend keeps one per worker in a vector); a moved-from
  /// object holds nothing and may only be destroyed or assigned to.
  SentBuffers(SentBuffers&&) noexcept;
  SentBuffers& operator=(SentBuffers&&) noexcept;
  /// Forgets every buffer. Throws nothing.
  void clear() noexcept;
  /// How many distinct buffers the worker holds. Throws nothing.
  std::size_t size() const noexcept;
  struct Impl;
  /// The internal state (for the SDK's own functions).
  Impl* impl() const noexcept { return impl_.get(); }

 private:
  std::unique_ptr<Impl> impl_;
};

/// encode_request_parts() for a worker that keeps large buffers for the
/// call (serve_request() with a KeptBuffers): a buffer over `memmap`'s
/// max_nbytes travels in the request the first time this worker needs it
/// (recorded in `sent`), and as a reference to the worker's copy after,
/// instead of being written to the memmap folder (which such a worker, on
/// another host, cannot read). Without max_nbytes (None), or with `sent`
/// null, as encode_request_parts(batch, memmap, headroom). Throws as
/// encode_request_parts.
JOBLIB_EXPORT Request encode_request_parts(Batch& batch, CallMemmap* memmap, std::size_t headroom,
                                           SentBuffers* sent);

/// Worker side: the large buffers this worker keeps for the call whose
/// requests name them (SentBuffers), each written once to a file in a
/// private folder of this process (under JOBLIB_TEMP_FOLDER, else /dev/shm,
/// else the system temp folder) that each task maps with the call's
/// mmap_mode: `r` and `c` privately (a task's writes never reach another
/// task), `r+` and `w+` shared by the tasks of this worker. clear() (or the
/// destructor) removes the folder; a folder left by a process that died is
/// swept by the next process that uses the temp root. Not thread-safe.
class JOBLIB_EXPORT KeptBuffers {
 public:
  /// Empty; the folder is made when a first buffer is kept. Throws std::bad_alloc.
  KeptBuffers();
  /// clear().
  ~KeptBuffers();
  KeptBuffers(const KeptBuffers&) = delete;
  KeptBuffers& operator=(const KeptBuffers&) = delete;
  /// Drops every buffer and removes their files. Throws nothing.
  void clear() noexcept;
  /// How many distinct buffers are kept. Throws nothing.
  std::size_t size() const noexcept;
  struct Impl;
  /// The internal state (for the SDK's own functions).
  Impl* impl() const noexcept { return impl_.get(); }

 private:
  std::unique_ptr<Impl> impl_;
};

/// encode_request_parts() in one vector (the buffers copied after the
/// bytes): the payload of a `run` frame. Throws as encode_request_parts.
JOBLIB_EXPORT std::vector<std::byte> encode_request(Batch& batch, CallMemmap* memmap, std::size_t headroom = 0);

/// Writes one frame whose payload is `request` to descriptor `fd`
/// (blocking; each large buffer in one write, from where it is). Returns
/// false when the peer is gone. Throws nothing.
JOBLIB_EXPORT bool write_request_frame(int fd, FrameKind kind, const Request& request) noexcept;

/// Completes `batch` from the payload of a worker's `reply` frame: with the
/// decoded results, or with the failed task's exception (the same standard,
/// joblib or registered type as thrown in the worker, its message carrying
/// the worker's stack trace). A garbled payload fails the batch with
/// SerializationError. Throws nothing; the batch is done afterwards.
JOBLIB_EXPORT void complete_batch(Batch& batch, std::span<const std::byte> reply) noexcept;

/// The outcome of an initializer from its reply payload: null when it ran,
/// else BackendError("the worker initializer failed: <its error>").
JOBLIB_EXPORT std::exception_ptr initializer_outcome(std::span<const std::byte> reply) noexcept;
/// Resident memory of process `pid` in bytes (/proc/<pid>/statm), 0 when it
/// cannot be read. Cheap; counts pages a forked child shares with its parent.
JOBLIB_EXPORT std::size_t resident_memory(pid_t pid) noexcept;
/// The memory process `pid` alone holds, in bytes: Private_Clean +
/// Private_Dirty of /proc/<pid>/smaps_rollup (its resident memory where that
/// cannot be read). Walks its page tables: ask when resident_memory() is
/// already over a limit. What worker_memory_limit measures.
JOBLIB_EXPORT std::size_t private_memory(pid_t pid) noexcept;
/// The TerminatedWorkerError of a worker stopped for going over
/// worker_memory_limit: names the pid, the memory, the limit and the batch size.
JOBLIB_EXPORT std::exception_ptr memory_limit_exceeded(pid_t pid, std::size_t memory, std::size_t limit,
                                                       std::size_t batch_size) noexcept;

/// A reply payload that fails task `index` of the request's batch with
/// `error`, as serve_request() replies when a task throws: for a backend
/// that relays requests and must answer for a worker that died. Never throws
/// (empty only when memory runs out).
JOBLIB_EXPORT std::vector<std::byte> failure_reply(std::size_t index, std::exception_ptr error) noexcept;

/// Worker side: runs one request (the payload of a `run` or `init` frame)
/// in this process and calls `reply(head, body)` once with the reply
/// payload, head then body (sent together as one frame's payload). Tasks
/// see a nested threading backend, and joblib::stop_requested() returns
/// true once `*stop` is (when given): a backend that learns that the call
/// was stopped sets it. Throws nothing (a failure is a reply).
JOBLIB_EXPORT void serve_request(
    std::span<const std::byte> request,
    const std::function<void(std::span<const std::byte> head, std::span<const std::byte> body)>& reply,
    const std::atomic<bool>* stop = nullptr) noexcept;
/// serve_request() for a request that lies in `block`, a buffer the caller
/// shares (allocated with joblib::detail::allocate_buffer, say): a large
/// buffer that travelled in the request, 64-byte aligned there, becomes a
/// window into `block` for its task instead of a copy. Throws nothing.
JOBLIB_EXPORT void serve_request(
    std::span<const std::byte> request,
    const std::function<void(std::span<const std::byte> head, std::span<const std::byte> body)>& reply,
    const std::atomic<bool>* stop, std::shared_ptr<std::byte> block) noexcept;
/// serve_request() for a worker that keeps large buffers for the call: a
/// buffer sent once (encode_request_parts with SentBuffers) is kept in
/// `kept`, and a later request that names it maps it from there. A request
/// that names a buffer `kept` does not hold fails with a SerializationError
/// saying so. Throws nothing.
JOBLIB_EXPORT void serve_request(
    std::span<const std::byte> request,
    const std::function<void(std::span<const std::byte> head, std::span<const std::byte> body)>& reply,
    const std::atomic<bool>* stop, std::shared_ptr<std::byte> block, KeptBuffers* kept) noexcept;

/// Worker side: serves frames on descriptor `fd` until an `exit` frame or
/// end of file, then ends the process; after `idle_timeout_seconds` (> 0)
/// without a request it sends `idle_exit` and ends. Ignores SIGINT (the
/// parent handles Ctrl-C). Never returns.
[[noreturn]] JOBLIB_EXPORT void serve_channel(int fd, double idle_timeout_seconds);

// ---- worker processes ----------------------------------------------------------

/// How a worker process starts.
enum class StartMethod {
  spawn,  // this program run again (posix_spawn of /proc/self/exe with the saved argv); needs the main guard
  fork,   // a fork of the caller: only the calling thread exists in the child
};

/// A new worker's settings.
struct WorkerOptions {
  StartMethod start = StartMethod::spawn;
  std::map<std::string, std::string> env{};   // spawn: variables added to (or replacing) the caller's
  double idle_timeout = 0;                    // spawn: seconds idle before the worker leaves (0: never)
  std::vector<std::byte> initializer{};       // an `init` request run first (CallSettings::initializer)
};

/// What WorkerProcess::receive() got.
struct Received {
  std::optional<Frame> frame;  // nullopt: the worker is gone, or the stream broke
  bool garbled = false;        // bytes came that are not a frame (a task wrote to the channel?)
};

/// One worker process seen from its parent: its pid, the parent's end of
/// its socket, and a pidfd that tells when it exits (so that reads and
/// writes end when the worker dies, even if a process it started keeps the
/// socket open). Move-only; the destructor kills and reaps a worker still
/// running. Not thread-safe, except kill() and pid().
class JOBLIB_EXPORT WorkerProcess {
 public:
  WorkerProcess() = default;
  /// Adopts a child of this process that serves frames on `fd` (the
  /// parent's end of its channel), for backends that start workers their
  /// own way (over ssh, say). Takes ownership of `fd`.
  WorkerProcess(pid_t pid, int fd) noexcept;
  WorkerProcess(WorkerProcess&& o) noexcept;
  WorkerProcess& operator=(WorkerProcess&& o) noexcept;
  ~WorkerProcess();

  /// Starts a worker: spawns this program again (handshake included) or
  /// forks, then runs the initializer if any. Throws BackendError naming
  /// the cause (no main guard, spawn or fork failure, a worker dead at
  /// start, the initializer's own error).
  static WorkerProcess start(const WorkerOptions& options);
  /// start() in two steps, for a pool that must know the process before
  /// its handshake and initializer run (so that it can kill it meanwhile):
  /// launch() makes the process (throws BackendError), handshake() sends the
  /// spawn token and runs the initializer (throws BackendError; the worker
  /// is then reaped and closed).
  static WorkerProcess launch(const WorkerOptions& options);
  void handshake(const WorkerOptions& options);

  pid_t pid() const noexcept { return pid_; }
  /// True while it holds a process (started, not yet closed).
  bool running() const noexcept { return pid_ > 0; }
  /// True once the process has exited (not reaped).
  bool exited() const noexcept;
  /// Sends one frame; false once the worker has exited.
  bool send(FrameKind kind, std::span<const std::byte> a, std::span<const std::byte> b = {}) noexcept;
  /// Sends a request in one frame, its large buffers from where they are;
  /// false once the worker has exited.
  bool send_request(FrameKind kind, const Request& request) noexcept;
  /// Reads one frame; gives up when the worker exits.
  Received receive() noexcept;
  /// SIGKILL to the worker (no wait).
  void kill() noexcept;
  /// Waits up to `grace` for the worker to exit, kills it if it has not,
  /// and reaps it. Returns the wait status; `*was_alive` says whether it had
  /// to be killed. The descriptors stay open until close().
  int wait(std::chrono::milliseconds grace = std::chrono::milliseconds(0), bool* was_alive = nullptr) noexcept;
  /// Closes the descriptors and forgets the process (reap it first).
  void close() noexcept;
  /// Asks the worker to leave (an `exit` frame), kills it after a second,
  /// reaps it and closes.
  void stop() noexcept;

 private:
  pid_t pid_ = 0;
  int fd_ = -1;
  int pidfd_ = -1;
  std::string token_;  // the spawn handshake still to send
};

/// "SIGKILL(-9)", "EXIT(3)" from a wait status, as joblib names them.
JOBLIB_EXPORT std::string describe_exit(int wait_status);

/// The TerminatedWorkerError of a worker that died (wait status `status`)
/// while running a batch of `batch_size` tasks, with joblib's message.
JOBLIB_EXPORT std::exception_ptr worker_terminated(int wait_status, pid_t pid, std::size_t batch_size);

/// True once worker_main_guard() ran in this process (needed by spawn).
JOBLIB_EXPORT bool main_guard_ran() noexcept;

// ---- Ctrl-C and forks ------------------------------------------------------------

/// While a WorkerPool exists, SIGINT is caught: every pool's workers are
/// killed, the memmap folders removed, and the program ends as SIGINT would
/// (or its own handler runs and running calls fail with "Parallel call
/// interrupted (SIGINT)"). True since the last clear_interrupted().
JOBLIB_EXPORT bool interrupted() noexcept;
/// Forgets an earlier Ctrl-C (a new call starts).
JOBLIB_EXPORT void clear_interrupted() noexcept;

/// Process ids of the live workers of every WorkerPool of this process
/// (every plugin's), for diagnostics and tests.
JOBLIB_EXPORT std::vector<pid_t> pool_worker_pids();

/// Registers `reset`, run in a child made by a `fork` start, before it
/// serves: re-make the locks of your own process-wide state (other threads
/// of the parent may have held them) and forget pools that belong to the
/// parent. Call it once, from a plugin's static initialiser, say.
JOBLIB_EXPORT void at_fork_child(void (*reset)() noexcept);

// ---- a pool of workers -----------------------------------------------------------

/// Workers with one driver thread each: a driver takes a queued batch,
/// encodes it, starts a worker if its own has died or left idle, sends the
/// request and completes the batch from the reply, or fails it with
/// TerminatedWorkerError when the worker dies. Workers start lazily and are
/// stopped (exit frame, SIGKILL after 1 s, reaped) by the destructor.
class JOBLIB_EXPORT WorkerPool {
 public:
  /// One queued batch: the call it belongs to (any address that tells calls
  /// apart) and the call's memmap folder (may be null).
  struct Job {
    Batch* batch = nullptr;
    const void* call = nullptr;
    CallMemmap* memmap = nullptr;
    std::size_t max_tasks = 0;     // > 0: the worker is replaced before it would run more tasks than this
    std::size_t memory_limit = 0;  // > 0: a worker whose resident memory goes over it is killed
  };

  /// A pool of `n_workers` (>= 1) workers started with `options`.
  WorkerPool(WorkerOptions options, int n_workers);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Queues a batch; it runs on the next free worker.
  void submit(Job job);
  /// Fails the queued batches of `call` and kills the workers running its
  /// batches (fresh ones start for later jobs); later batches of `call`
  /// fail at once until forget(call).
  void abort(const void* call) noexcept;
  /// Forgets an aborted call (it is over).
  void forget(const void* call) noexcept;
  /// Kills the worker running `batch` (it ran over its timeout); the batch
  /// is then failed as cancelled. False when no worker runs it now.
  bool cancel(const Batch* batch) noexcept;
  /// Grows or shrinks to `n` workers (a shrinking worker finishes its batch).
  void resize(int n);
  int size() const;
  const WorkerOptions& options() const noexcept { return options_; }
  /// Starts every worker now and waits until each answers a ping. Throws
  /// BackendError if one cannot start.
  void start_all();
  /// Process ids of the live workers.
  std::vector<pid_t> worker_pids() const;
  /// Kills every worker now; with `reap`, also waits for them (Ctrl-C).
  void kill_all(bool reap = false) noexcept;

 private:
  struct Slot;
  void drive(Slot* slot);
  void run_job(Slot* slot, const Job& job);
  bool ensure_worker(Slot* slot, std::string& why);
  int reap(Slot* slot, bool* was_alive = nullptr, std::chrono::milliseconds grace = std::chrono::milliseconds(0));
  void add_slots_locked(int n);
  void watch_memory();

  WorkerOptions options_;
  int n_workers_ = 1;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  std::set<const void*> aborted_;
  std::vector<std::unique_ptr<Slot>> slots_;
  bool stopping_ = false;
  std::thread watcher_;  // worker_memory_limit: samples the workers' resident memory
};

/// A process backend over a WorkerPool: submit, abort and stop_call are
/// done; a subclass gives its name and pool policy in make_pool() (a pool
/// per call, or one kept across calls). Capabilities: no shared memory,
/// timeouts and generators supported, tasks encoded.
class JOBLIB_EXPORT PoolBackend : public ParallelBackendBase {
 public:
  using ParallelBackendBase::ParallelBackendBase;
  ~PoolBackend() override;
  BackendCapabilities capabilities() const noexcept override;
  /// Clears an earlier Ctrl-C, makes the call's memmap folder and asks
  /// make_pool() for the pool. Returns what make_pool() throws.
  std::exception_ptr start_call(const CallSettings& settings) noexcept override;
  void submit(Batch& batch) noexcept override;
  void stop_call() noexcept override;
  void abort() noexcept override;
  /// Kills the worker running `batch` (timeout with retries or outcomes).
  bool cancel(Batch& batch) noexcept override;

 protected:
  /// The pool this call runs on (called by start_call; may throw).
  virtual std::shared_ptr<WorkerPool> make_pool(const CallSettings& settings) = 0;

 private:
  std::shared_ptr<WorkerPool> pool_;
  std::unique_ptr<CallMemmap> memmap_;
  std::size_t max_tasks_ = 0, memory_limit_ = 0;
};

}  // namespace joblib::worker_sdk

/// Exports `void fn(int argc, char** argv)` from a plugin as its worker
/// takeover: with `takes_over_when = "VAR"` in the plugin's plugins.toml
/// entry, every program that starts through the main guard while VAR is
/// set in its environment loads the plugin and calls fn before main. fn
/// returns in a process that must run main (rank 0 of an MPI job, say) and
/// never returns in one that becomes a worker. Use once per plugin, at
/// namespace scope.
#define JOBLIB_EXPORT_WORKER_TAKEOVER(fn) JOBLIB_DETAIL_PLUGIN_ALIAS(fn, joblib_worker_takeover)
