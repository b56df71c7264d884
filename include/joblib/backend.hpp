#pragma once
// The plugin SDK: what a backend implements and how it exports itself.
//
// A backend only executes. The dispatcher (Parallel) owns batching, order,
// progress, timeouts and errors; it hands the backend batches through
// submit() and each batch reports its own outcome when run. Every entry point
// is noexcept: a backend reports failures as data (Batch::fail, or an
// exception_ptr returned from start_call), never by throwing across the
// plugin boundary. See docs/plugins.md for a walk-through and the misuses.
#include <joblib/export.hpp>
#include <joblib/options.hpp>


#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace joblib {

class BufferSink;
class BufferSource;
namespace detail {
struct CodeRef;
class OutputStream;
}  // namespace detail

/// Bumped whenever the layout or the virtual interface below changes. A plugin
/// built against another version is refused with BackendError.
inline constexpr int plugin_abi_version = 5;

/// What a backend can do; the resolver and the dispatcher ask, never check names.
struct BackendCapabilities {
  bool uses_threads = false;               // runs tasks on threads of this process
  bool supports_sharedmem = false;         // tasks may share memory with the caller (require = sharedmem)
  bool supports_timeout = true;            // the dispatcher may give up on a running batch
  bool supports_return_generator = true;   // generator modes are allowed
  bool needs_encoded_tasks = false;        // tasks travel to another process (process, MPI backends)
  bool supports_inner_max_num_threads = false;  // honours inner_max_num_threads
};

/// One batch of tasks handed to a backend by the dispatcher. The backend calls
/// exactly one of run() or fail(), once, on any thread. After that call the
/// batch may already be destroyed: do not touch it again.
class JOBLIB_EXPORT Batch {
 public:
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;
  /// Runs the batch's tasks in the calling thread, in order, and reports the
  /// outcome (results or the task's exception) to the dispatcher.
  virtual void run() noexcept = 0;
  /// Reports that the backend could not run the batch (for instance its
  /// worker died); the call fails with this exception.
  virtual void fail(std::exception_ptr error) noexcept = 0;
  /// Number of tasks in the batch.
  virtual std::size_t size() const noexcept = 0;

  // ---- out-of-process backends (needs_encoded_tasks) ----
  /// Encodes the batch for a worker process: `entry` receives the portable
  /// reference of the function the worker must run, `out` the encoded tasks,
  /// `sink` the large buffers (memmapping). Returns the error instead of
  /// throwing (SerializationError when the tasks cannot travel); the batch
  /// is then still to be failed or completed.
  virtual std::exception_ptr encode(detail::CodeRef& entry, detail::OutputStream& out,
                                    BufferSink* sink) noexcept = 0;
  /// Out-of-process backends: the batch is being handed to a worker now
  /// (its timeout clock starts).
  virtual void started() noexcept = 0;
  /// Completes the batch with its encoded results, as the worker's entry
  /// point wrote them (their large buffers from `source`). Counts as run().
  virtual void complete(std::span<const std::byte> results, BufferSource* source) noexcept = 0;
  /// Completes the batch with the failure of its task `index` (0-based in
  /// the batch): the tasks before it ran, their results are dropped, and
  /// the call fails with `error`. Counts as run().
  virtual void fail_task(std::size_t index, std::exception_ptr error) noexcept = 0;
  /// Index of the batch's first task in the call's input.
  virtual std::size_t first_task_index() const noexcept = 0;
  /// The function of task `index` of the batch, for messages ("" if unknown).
  virtual std::string task_function_name(std::size_t index) const noexcept = 0;
  /// Out-of-process backends: where the batch runs from now on ("worker
  /// process 1234", "MPI rank 2, host node7"), named in the TimeoutError of
  /// a batch that runs over the timeout. Call it before started().
  virtual void set_location(std::string where) noexcept = 0;

 protected:
  Batch() = default;
  ~Batch();
};

/// Given to a backend's factory: where it runs and what the scope asked for.
struct BackendInit {
  int nesting_level = 0;                           // 0 at top level, +1 inside each parallel task
  std::optional<int> inner_max_num_threads{};
  std::map<std::string, std::string> settings{};   // BackendOptions/ConfigOptions::settings
};

/// Settings of one Parallel call, given to start_call().
struct CallSettings {
  int n_jobs = 1;                       // effective number of workers for this call (>= 2)
  std::optional<double> timeout{};      // seconds per task, if any
  int verbose = 0;
  std::string temp_folder{};
  std::optional<std::size_t> max_nbytes{};
  MmapMode mmap_mode = MmapMode::r;
  std::vector<std::byte> initializer{};  // process backends: request run first in every new worker
  std::optional<int> max_tasks_per_child{};           // process backends: replace a worker after N tasks
  std::optional<std::size_t> worker_memory_limit{};   // process backends: bytes of resident memory per worker
};

/// Backend that tasks of a parallel call see as active (joblib's get_nested_backend).
struct NestedBackend {
  std::string name;                     // a registered backend name
  std::optional<int> n_jobs{};          // unset: nested Parallel() runs with 1 job
};

/// Base of every backend. The dispatcher creates one instance per Parallel
/// call (from the backend's factory) and calls, in order: start_call, then
/// submit for each batch (possibly from several threads at once), then
/// stop_call. abort() may come at any time from any thread. Pools meant to
/// outlive a call (persistent threads, worker processes) live in the plugin,
/// not in the instance.
class JOBLIB_EXPORT ParallelBackendBase {
 public:
  explicit ParallelBackendBase(BackendInit init = {}) : init_(std::move(init)) {}
  ParallelBackendBase(const ParallelBackendBase&) = delete;
  ParallelBackendBase& operator=(const ParallelBackendBase&) = delete;
  virtual ~ParallelBackendBase();

  /// The backend's name, as registered.
  virtual std::string name() const = 0;
  /// What the backend can do.
  virtual BackendCapabilities capabilities() const noexcept = 0;
  /// How many workers a requested n_jobs (>= 1, already resolved from -1, -2,
  /// ...) really gives; 1 makes the call run sequentially in the caller.
  virtual int effective_n_jobs(int n_jobs) const noexcept { return n_jobs < 1 ? 1 : n_jobs; }
  /// Prepares for a call (sizes a pool). A non-null result fails the call.
  virtual std::exception_ptr start_call(const CallSettings& settings) noexcept;
  /// Runs the batch (eventually calling batch.run() or batch.fail()).
  virtual void submit(Batch& batch) noexcept = 0;
  /// The call is over; no further submit for it.
  virtual void stop_call() noexcept {}
  /// Stop what can be stopped (queued work, worker processes) after an
  /// error, a timeout or an abandoned generator. Batches already handed out
  /// must still be completed (run() returns early for a stopped call).
  virtual void abort() noexcept {}
  /// The call ended with batches still running that cannot be stopped (they
  /// ran over the call's timeout on threads): they finish in the background
  /// and their results are dropped. Later calls must not wait for them: a
  /// backend that reuses engines gives later calls fresh ones
  /// (EngineCache::retire). Called before stop_call().
  virtual void abandon() noexcept {}
  /// Stops one batch that ran over the call's timeout, so that it can be
  /// retried (ParallelOptions::retries) or reported while the call goes on:
  /// a process backend kills the worker running it, and the batch is then
  /// failed as usual (any error: the dispatcher knows why). Returns false
  /// when the batch cannot be stopped (it runs on a thread); the default.
  virtual bool cancel(Batch& batch) noexcept {
    (void)batch;
    return false;
  }
  /// Backend that tasks see as active: by default threading at nesting
  /// level 1 and sequential beyond, as joblib.
  virtual NestedBackend nested_backend() const;

  /// Nesting level this instance runs at (0 at top level).
  int nesting_level() const noexcept { return init_.nesting_level; }
  /// What the factory was given.
  const BackendInit& init() const noexcept { return init_; }

 private:
  BackendInit init_;
};

/// Capabilities of a backend that runs batches on threads of this process
/// (threading, tbb, openmp, most user backends): shared memory, timeouts,
/// generators, the OpenMP thread cap inside tasks.
constexpr BackendCapabilities thread_backend_capabilities() noexcept {
  BackendCapabilities c;
  c.uses_threads = true;
  c.supports_sharedmem = true;
  c.supports_inner_max_num_threads = true;
  return c;
}

/// A process-wide cache of execution engines (thread pools, arenas, teams)
/// for a plugin, one per (nesting level, n_jobs): made on first use with
/// Engine(n_jobs), reused by every later call until retired (Engine has a
/// `void retire() noexcept`), never destroyed (joining
/// threads from a static destructor could wait on a task abandoned after a
/// timeout). Nested calls get engines of their own, so a task waiting for
/// its nested call never starves the engine it runs on. Thread-safe.
template <class Engine>
class EngineCache {
 public:
  /// The engine for (level, n_jobs). Throws what Engine's constructor throws.
  Engine& get(int level, int n_jobs) {
    std::lock_guard lock(*mutex_);
    auto& slot = (*engines_)[{level, n_jobs}];
    if (!slot) slot = std::make_unique<Engine>(n_jobs);
    return *slot;
  }
  /// Takes `engine` out of the cache, if it is the one cached for (level,
  /// n_jobs), and calls its retire(): later get() calls make a fresh engine
  /// while the retired one finishes what it runs (a task abandoned after a
  /// timeout) and then lets its threads go. The engine object itself is
  /// never destroyed (calls still running may use it).
  void retire(int level, int n_jobs, Engine* engine) noexcept {
    std::lock_guard lock(*mutex_);
    auto it = engines_->find({level, n_jobs});
    if (it == engines_->end() || it->second.get() != engine) return;
    it->second->retire();
    retired_->push_back(std::move(it->second));  // kept: a retired engine is never destroyed
    engines_->erase(it);
  }
  /// For a pthread_atfork child handler: the child has none of the parent's
  /// threads, so it starts with no engines (the parent's are leaked).
  void forget() noexcept {
    mutex_ = new std::mutex();
    engines_ = new Map();
    retired_ = new std::vector<std::unique_ptr<Engine>>();
  }

 private:
  using Map = std::map<std::pair<int, int>, std::unique_ptr<Engine>>;
  std::mutex* mutex_ = new std::mutex();
  Map* engines_ = new Map();
  std::vector<std::unique_ptr<Engine>>* retired_ = new std::vector<std::unique_ptr<Engine>>();
};

/// A thread backend over engines kept in an EngineCache (a thread pool, a
/// oneTBB arena, an OpenMP team): start_call takes the engine for (nesting
/// level, n_jobs) from `cache()` (and calls its `begin_call()` if it has
/// one), submit hands each batch to `engine.push(batch)` (a throw fails the
/// batch), abandon retires the engine, stop_call and the destructor call its
/// `end_call()` if it has one. Engine needs `Engine(int n_jobs)`,
/// `void push(Batch&)` and `void retire() noexcept`. Derive from it and
/// export the derived class:
///
///   class MyBackend final : public joblib::EngineBackend<MyPool> {
///    public:
///     explicit MyBackend(const joblib::BackendInit& init) : EngineBackend(init, "mine", my_pools) {}
///   };
template <class Engine>
class EngineBackend : public ParallelBackendBase {
 public:
  EngineBackend(const BackendInit& init, std::string name, EngineCache<Engine>& (*cache)())
      : ParallelBackendBase(init), name_(std::move(name)), cache_(cache) {}
  ~EngineBackend() override { end(); }

  std::string name() const override { return name_; }
  BackendCapabilities capabilities() const noexcept override { return thread_backend_capabilities(); }

  std::exception_ptr start_call(const CallSettings& settings) noexcept override {
    try {
      n_jobs_ = settings.n_jobs;
      engine_ = &cache_().get(nesting_level(), settings.n_jobs);
      if constexpr (requires(Engine& e) { e.begin_call(); }) engine_->begin_call();
    } catch (...) {
      engine_ = nullptr;
      return std::current_exception();
    }
    return {};
  }

  void submit(Batch& batch) noexcept override {
    try {
      engine_->push(batch);
    } catch (...) {
      batch.fail(std::current_exception());
    }
  }

  void abandon() noexcept override {
    if (engine_) cache_().retire(nesting_level(), n_jobs_, engine_);
  }

  void stop_call() noexcept override { end(); }

 protected:
  /// The engine of the current call (null outside a call).
  Engine* engine() const noexcept { return engine_; }

 private:
  void end() noexcept {
    if constexpr (requires(Engine& e) { e.end_call(); }) {
      if (engine_) engine_->end_call();
    }
    engine_ = nullptr;
  }

  std::string name_;
  EngineCache<Engine>& (*cache_)();
  Engine* engine_ = nullptr;
  int n_jobs_ = 0;
};

/// Signature of a plugin's factory.
using BackendFactoryFn = std::unique_ptr<ParallelBackendBase>(const BackendInit&);

namespace detail {
inline int plugin_abi() { return plugin_abi_version; }
}  // namespace detail

}  // namespace joblib

/// Exports `fn` under the C name `name`, as Boost.DLL's BOOST_DLL_ALIAS
/// does on ELF (a pointer in the `boostdll` section that
/// boost::dll::shared_library::get_alias reads), without including
/// Boost.DLL into every file that includes this header.
#define JOBLIB_DETAIL_PLUGIN_ALIAS(fn, name)                                                   \
  namespace _autoaliases {                                                                  \
  extern "C" __attribute__((visibility("default"))) const void* name;                       \
  __attribute__((section("boostdll"))) __attribute__((weak)) const void* name =             \
      reinterpret_cast<const void*>(reinterpret_cast<intptr_t>(&fn));                       \
  }

/// Exports a backend class from a plugin shared object. Use once per plugin, at
/// namespace scope: JOBLIB_EXPORT_BACKEND(MyBackend). The class needs a
/// constructor taking `const joblib::BackendInit&`.
#define JOBLIB_EXPORT_BACKEND(Class)                                                         \
  namespace joblib_plugin_entry {                                                           \
  inline std::unique_ptr<::joblib::ParallelBackendBase> make(const ::joblib::BackendInit& i) { \
    return std::make_unique<Class>(i);                                                      \
  }                                                                                         \
  inline int abi() { return ::joblib::plugin_abi_version; }                                 \
  }                                                                                         \
  JOBLIB_DETAIL_PLUGIN_ALIAS(joblib_plugin_entry::make, joblib_backend_factory)             \
  JOBLIB_DETAIL_PLUGIN_ALIAS(joblib_plugin_entry::abi, joblib_plugin_abi)

/// Exports a factory function `std::unique_ptr<joblib::ParallelBackendBase>
/// fn(const joblib::BackendInit&)` from a plugin, for backends that are not a
/// single class. Use once per plugin, at namespace scope.
#define JOBLIB_EXPORT_BACKEND_FACTORY(fn)                                      \
  namespace joblib_plugin_entry {                                             \
  inline std::unique_ptr<::joblib::ParallelBackendBase> make(const ::joblib::BackendInit& i) { \
    return fn(i);                                                             \
  }                                                                           \
  inline int abi() { return ::joblib::plugin_abi_version; }                   \
  }                                                                           \
  JOBLIB_DETAIL_PLUGIN_ALIAS(joblib_plugin_entry::make, joblib_backend_factory) \
  JOBLIB_DETAIL_PLUGIN_ALIAS(joblib_plugin_entry::abi, joblib_plugin_abi)
