#pragma once
// Internal seam between the Parallel templates and the compiled dispatcher
// (core/parallel/dispatch.cpp). Not part of the public API: names here may change.
#include <joblib/backend.hpp>
#include <joblib/export.hpp>
#include <joblib/options.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace joblib::detail {

class CallImpl;

/// A batch as the dispatcher sees it; BatchOf<Task, R> (parallel.hpp) holds
/// the tasks and results, and runs them as one monomorphic loop.
class JOBLIB_EXPORT BatchBase : public Batch {
 public:
  BatchBase() = default;
  virtual ~BatchBase();
  void run() noexcept final;
  void fail(std::exception_ptr error) noexcept final;
  std::size_t size() const noexcept final { return size_; }
  std::exception_ptr encode(CodeRef& entry, OutputStream& out, BufferSink* sink) noexcept final;
  void complete(std::span<const std::byte> results, BufferSource* source) noexcept final;
  void fail_task(std::size_t index, std::exception_ptr error) noexcept final;
  std::size_t first_task_index() const noexcept final { return first_index_; }
  std::string task_function_name(std::size_t index) const noexcept final;
  void started() noexcept final;
  void set_location(std::string where) noexcept final;
  /// What set_location() last said ("" when the backend said nothing).
  std::string location() const;

  /// Runs the tasks in order until one throws or the call stops; records
  /// completed_, error_ and error_offset_.
  virtual void run_tasks() noexcept = 0;
  /// Process backends: encodes the tasks (throws SerializationError).
  virtual void encode_tasks(CodeRef& entry, OutputStream& out, BufferSink* sink) = 0;
  /// Process backends: decodes the results a worker sent (throws SerializationError).
  virtual void decode_results(std::span<const std::byte> bytes, BufferSource* source) = 0;
  /// Name of the function of task i of the batch, for error messages.
  virtual std::string task_function(std::size_t i) const = 0;
  /// Drops the results, before the batch is tried again from its start.
  virtual void reset_results() noexcept = 0;
  /// Parallel::outcomes: gives `error` as the outcome of every task without
  /// one and returns true (the batch is then complete); false otherwise.
  virtual bool fill_error(std::exception_ptr error) = 0;
  /// A batch holding copies of the tasks, to try them again while this one
  /// still runs on a thread (after a timeout); null when tasks cannot be copied.
  virtual std::unique_ptr<BatchBase> copy_tasks() const = 0;
  /// A claiming batch (Source::claimers) that stands for the whole input
  /// once every task has run: points its results at the call's output.
  virtual void claims_done() noexcept {}
  /// List mode: takes in the results of `next`, a finished batch of the same
  /// call whose tasks come right after this one's, so that one batch object
  /// stands for both (the dispatcher then adds up their counts). False, with
  /// nothing changed, when it cannot (another kind of batch, or no memory).
  virtual bool absorb(BatchBase& next) noexcept {
    (void)next;
    return false;
  }

  // ---- the dispatcher's bookkeeping ----
  std::size_t size_ = 0;           // tasks in the batch
  std::size_t first_index_ = 0;    // index of the first task in the call's input
  std::size_t seq_ = 0;            // batch number within the call
  std::size_t completed_ = 0;      // tasks that returned normally
  std::exception_ptr error_{};     // first exception of the batch
  std::size_t error_offset_ = 0;   // index within the batch of the task that threw
  bool from_backend_ = false;      // error_ came from Batch::fail
  const std::atomic<bool>* stop_ = nullptr;  // the call's stop flag

  /// True when the call stopped (an error, a cancel, a close): no further
  /// task of the batch starts. Between tasks only.
  bool should_stop() const noexcept { return stop_ && stop_->load(std::memory_order_relaxed); }
  CallImpl* call_ = nullptr;                 // set while dispatched
  std::int64_t dispatched_ns_ = 0;
  std::atomic<std::int64_t> started_ns_{0};  // when the batch (or, with a timeout, its current task) started
  bool clock_each_task_ = false;             // a timeout is set: restart the clock at every task
  int attempts_ = 1;                         // times the batch (or, resumed, its failing task) was tried
  std::size_t retry_from_ = 0;               // the task a resumed batch was last retried from
  bool timed_out_ = false;                   // cancelled after running over the timeout (retries)
  bool abandoned_ = false;                   // left running on a thread after a timeout; its outcome is dropped
  std::unique_ptr<BatchBase> spare_;         // copies of the tasks (thread backends, timeout and retries)
  mutable std::mutex location_m_;            // set_location() runs on the backend's thread
  std::string location_;

  /// Restarts the timeout clock (called before each task when a timeout is set).
  void restart_clock() noexcept;
  /// A TerminatedWorkerError in error_ gets "It was running task(s) ... of the call (function)."
  void name_dead_worker_tasks() noexcept;
};

/// The index ranges of a call's input that its workers claim one after
/// another, as OpenMP's dynamic and guided schedules do (Source::claimers):
/// a fixed size (batch_size), or a guided one, a share of what is left,
/// capped. Claiming is one atomic operation: no lock, no batch object.
class ClaimRange {
 public:
  /// `total` tasks; ranges of `fixed` tasks, or (fixed = 0) of what is left
  /// divided by `divisor`, between 1 and `max_chunk`.
  ClaimRange(std::size_t total, std::size_t fixed, std::size_t max_chunk, std::size_t divisor) noexcept
      : total_(total), fixed_(fixed), max_chunk_(max_chunk < 1 ? 1 : max_chunk), divisor_(divisor < 1 ? 1 : divisor) {}

  /// Claims the next range [begin, end); false once every index is claimed.
  bool claim(std::size_t& begin, std::size_t& end) noexcept {
    if (fixed_ != 0) {
      if (next_.load(std::memory_order_relaxed) >= total_) return false;
      begin = next_.fetch_add(fixed_, std::memory_order_relaxed);
      if (begin >= total_) return false;
      end = total_ - begin < fixed_ ? total_ : begin + fixed_;
      return true;
    }
    std::size_t cur = next_.load(std::memory_order_relaxed);
    for (;;) {
      if (cur >= total_) return false;
      std::size_t chunk = (total_ - cur) / divisor_;
      chunk = chunk < 1 ? 1 : (chunk > max_chunk_ ? max_chunk_ : chunk);
      if (next_.compare_exchange_weak(cur, cur + chunk, std::memory_order_relaxed)) {
        begin = cur;
        end = cur + chunk;
        return true;
      }
    }
  }

 private:
  alignas(64) std::atomic<std::size_t> next_{0};
  alignas(64) std::size_t total_;
  std::size_t fixed_, max_chunk_, divisor_;
};

/// The input of one call: pulls tasks lazily into batches.
class JOBLIB_EXPORT Source {
 public:
  virtual ~Source();
  /// Pulls at most `max` (>= 1) tasks into a new batch; nullptr at the end of
  /// the input. Called under the call's lock. Throws what the input throws.
  virtual std::unique_ptr<BatchBase> pull(std::size_t max) = 0;
  /// Tasks not yet pulled, when the input knows its size.
  virtual std::optional<std::size_t> remaining() const = 0;
  /// Why the tasks cannot travel to another process (nullopt: they can).
  virtual std::optional<std::string> portability_problem() const = 0;
  /// True for Parallel::outcomes(): a batch's failure becomes its tasks' outcomes.
  virtual bool gives_outcomes() const noexcept { return false; }
  /// True when batches are index ranges that cost nothing to cut, whatever
  /// their size (SliceTasks).
  virtual bool splits() const noexcept { return false; }
  /// True when each result is a small plain value (a number, a small
  /// struct of them: trivially copyable, at most small_result_bytes), so
  /// that results held for a generator's consumer cost little memory.
  virtual bool small_results() const noexcept { return false; }
  /// Before anything is pulled, for a list call on threads: `count` batches
  /// that each run tasks of `range` until it is exhausted (or the call
  /// stops), writing results straight into the call's output, which it
  /// reserves (the first of them to start makes its elements); the input is
  /// then fully pulled. Empty when this input cannot be claimed (it is not
  /// cut into index ranges, or its results cannot be written in place).
  /// Throws std::bad_alloc.
  virtual std::vector<std::unique_ptr<BatchBase>> claimers(std::size_t count,
                                                           const std::shared_ptr<ClaimRange>& range) {
    (void)count;
    (void)range;
    return {};
  }
};

/// The largest result Source::small_results() calls small.
inline constexpr std::size_t small_result_bytes = 64;

/// One running Parallel call.
class JOBLIB_EXPORT Call {
 public:
  virtual ~Call();
  /// Next finished batch (submission order, or completion order for
  /// generator_unordered); nullptr once every task has been delivered.
  /// Throws the call's first error (in submission order), TimeoutError, or
  /// what the input threw.
  virtual std::unique_ptr<BatchBase> next() = 0;
  /// Abandons the call: nothing more starts, process workers are stopped,
  /// and tasks running on threads are waited for (except after a timeout).
  virtual void close() noexcept = 0;
  /// The number of tasks of the call, when its input is sized.
  virtual std::optional<std::size_t> input_size() const noexcept { return std::nullopt; }
};

/// Validates options that do not depend on the scope; throws
/// std::invalid_argument naming the field and the value.
JOBLIB_EXPORT void validate(const ParallelOptions& options);

/// Resolves the backend and n_jobs and starts the call. In list mode every
/// task has run when it returns (and the first error is thrown from here).
JOBLIB_EXPORT std::shared_ptr<Call> start_call(const ParallelOptions& options,
                                               std::unique_ptr<Source> source);

/// "Parallel(n_jobs=...)" as joblib prints it.
JOBLIB_EXPORT std::string parallel_repr(const ParallelOptions& options);

}  // namespace joblib::detail
