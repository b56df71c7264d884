#pragma once
// Options of Parallel and of the configuration scopes (parallel_backend,
// parallel_config). Aggregates: write `{.n_jobs = 4, .prefer = Prefer::threads}`.
#include <cstddef>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace joblib {

/// Soft hint for choosing a backend when no scope names one.
enum class Prefer { none, processes, threads };
/// Hard constraint: sharedmem always ends on a thread backend.
enum class Require { none, sharedmem };
/// What Parallel returns: a finished list, or a generator in submission or completion order.
enum class ReturnAs { list, generator, generator_unordered };
/// joblib's memory-map modes: None, 'r', 'r+', 'w+', 'c'.
enum class MmapMode { none, r, r_plus, w_plus, c };

/// A function run once in each new worker process of a process backend
/// (loky, multiprocessing) before any task, as joblib's initializer and
/// initargs. Make one with joblib::initializer(f, args...).
struct Initializer {
  std::vector<std::byte> request{};   // encoded call (empty: none)
  std::string description{};
  explicit operator bool() const noexcept { return !request.empty(); }
};

/// Progress callback: tasks done so far, and the total once it is known.
using ProgressCallback = std::function<void(std::size_t done, std::optional<std::size_t> total)>;

/// Decides whether a task's own exception is worth another attempt
/// (ParallelOptions::retry_if). Make one with joblib::retry_on<E...>().
using RetryPredicate = std::function<bool(const std::exception_ptr&)>;

/// A RetryPredicate that accepts the exceptions of the types E... (and of
/// types derived from them): `.retries = 3, .retry_if = joblib::retry_on<std::system_error>()`.
/// On process backends a task's exception arrives as its own type when it
/// is a standard or joblib type or a registered one, else as TaskError.
template <class... E>
RetryPredicate retry_on() {
  static_assert(sizeof...(E) > 0, "joblib::retry_on<E...>(): name at least one exception type");
  return [](const std::exception_ptr& error) {
    if (!error) return false;
    bool match = false;
    auto try_one = [&]<class T>() {
      if (match) return;
      try {
        std::rethrow_exception(error);
      } catch (const T&) {
        match = true;
      } catch (...) {
      }
    };
    (try_one.template operator()<E>(), ...);
    return match;
  };
}

/// A setting that may be left unset, so that "not written" and "written
/// with the default value" differ: an unset field of ParallelOptions takes
/// the innermost scope's value, a written one always wins. Converts from
/// anything T is constructible from (`.verbose = 0`, `.max_nbytes = "1M"`,
/// `.max_nbytes = std::nullopt` for a Setting<std::optional<std::string>>),
/// and reads as a std::optional<T>.
template <class T>
class Setting : public std::optional<T> {
 public:
  Setting() = default;
  template <class U>
    requires(std::is_constructible_v<T, U &&> && !std::is_same_v<std::remove_cvref_t<U>, Setting>)
  Setting(U&& value) : std::optional<T>(std::in_place, std::forward<U>(value)) {}  // NOLINT: implicit on purpose
};

/// Parameters of Parallel, in the order of joblib's Parallel parameters.
/// A field not written is unset: it takes the innermost scope's value if
/// one is set, else the default shown. A value written always wins over a
/// scope, even when it equals the default (`.verbose = 0` silences a
/// parallel_config({.verbose = 10}) scope).
struct ParallelOptions {
  std::optional<int> n_jobs{};              // unset: 1 unless a scope sets it; -1 all CPUs; -2 all but one; 0 is an error
  std::string backend{};                    // "" = scope / hints / default; else a backend name
  Setting<int> verbose{};                   // 0 unset; joblib's progress messages: stderr below 50, stdout from 50
  std::optional<double> timeout{};          // seconds, per task
  std::string pre_dispatch = "2 * n_jobs";  // "all", an integer, or an expression in n_jobs
  std::optional<int> batch_size{};          // unset = "auto"
  Setting<std::string> temp_folder{};       // "" or unset = JOBLIB_TEMP_FOLDER, /dev/shm, then the system temp folder
  Setting<std::optional<std::string>> max_nbytes{};  // "1M" unset; std::nullopt (or "none") = never memmap
  Setting<MmapMode> mmap_mode{};            // MmapMode::r unset
  Setting<Prefer> prefer{};                 // Prefer::none unset
  Setting<Require> require{};               // Require::none unset
  ReturnAs return_as = ReturnAs::list;
  // ---- beyond joblib ----
  ProgressCallback on_progress{};           // called after every finished batch (every task when sequential)
  bool progress_bar = false;                // live bar with rate and ETA on stderr when it is a terminal
  Initializer initializer{};                // process backends: run once per new worker
  // ---- resilience (beyond joblib; docs/errors.md) ----
  int retries = 0;                          // a task whose worker died or that timed out runs again, up to N times
  std::optional<int> max_tasks_per_child{}; // process backends: a worker is replaced after N tasks (leaky tasks)
  std::optional<std::string> worker_memory_limit{};  // "2G": a process worker above it is replaced; its task fails
                                            // with TerminatedWorkerError naming the limit (or is retried)
  std::stop_token stop_token{};             // request_stop() cancels the call: CancelledError
  RetryPredicate retry_if{};                // a task's own exception is retried (under `retries`) when this says so
};

/// Options of parallel_backend(name, options).
struct BackendOptions {
  std::optional<int> n_jobs{};                     // -1 (all CPUs) when unset, as joblib
  std::optional<int> inner_max_num_threads{};      // thread cap for TBB/OpenMP code inside tasks
  std::map<std::string, std::string> settings{};   // backend-specific settings
};

/// Options of parallel_config(options), in joblib's parallel_config order.
/// Every field is optional: only the fields set override the enclosing scope.
struct ConfigOptions {
  std::optional<std::string> backend{};
  std::optional<int> n_jobs{};
  std::optional<int> verbose{};
  std::optional<std::string> temp_folder{};
  std::optional<std::string> max_nbytes{};         // "none" disables memmapping
  std::optional<MmapMode> mmap_mode{};
  std::optional<Prefer> prefer{};
  std::optional<Require> require{};
  std::optional<int> inner_max_num_threads{};
  std::map<std::string, std::string> settings{};
  Initializer initializer{};                       // process backends: run once per new worker
};

}  // namespace joblib
