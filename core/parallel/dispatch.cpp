// The engine behind Parallel: pulls tasks lazily, batches them (fixed or
// auto size), keeps at most pre_dispatch batches in flight (plus results not
// yet taken, in generator modes), orders results, reports progress, enforces
// timeouts and stops on the first error.
#include "batching.hpp"
#include "config.hpp"
#include "expr.hpp"
#include "progress.hpp"
#include "fork_safety.hpp"

#include <joblib/detail/engine.hpp>
#include <joblib/errors.hpp>

#include <boost/container/small_vector.hpp>
#include <fmt/format.h>

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <stop_token>
#include <typeinfo>
#include <vector>

namespace joblib::detail {

// Batches to hand to the backend (one or two at a time, mostly): on the stack.
using BatchList = boost::container::small_vector<BatchBase*, 8>;
namespace {

constexpr std::size_t kNoError = std::numeric_limits<std::size_t>::max();

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Spins (with a pause) for up to ~50 us while `value` still equals `seen`.
void spin_until_changed(const std::atomic<std::uint64_t>& value, std::uint64_t seen) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
  for (int i = 0;; ++i) {
    if (value.load(std::memory_order_acquire) != seen) return;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((i & 15) == 15) sched_yield();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return;
  }
}

std::string task_count(std::size_t n) { return fmt::format("{} task{}", n, n == 1 ? "" : "s"); }

// ", on <where>" for a batch whose backend said where it runs, else "".
std::string where(const BatchBase& b) {
  std::string w = b.location();
  return w.empty() ? w : ", on " + w;
}

// The longest the caller sleeps without looking at a stop_token: a stop
// request is seen within this (std::stop_callback cannot take the call's
// lock: it may run in a progress callback that holds it).
constexpr auto kStopPoll = std::chrono::milliseconds(20);

template <class E>
bool is_a(const std::exception_ptr& e) {
  if (!e) return false;
  try {
    std::rethrow_exception(e);
  } catch (const E&) {
    return true;
  } catch (...) {
  }
  return false;
}

// "what(e)\n<note>" as an exception of the same joblib type, for the errors a retry can end with.
std::exception_ptr with_attempts(const std::exception_ptr& e, int attempts, int retries) {
  const std::string note = fmt::format("The batch was tried {} times (retries = {}).", attempts, retries);
  try {
    std::rethrow_exception(e);
  } catch (const TimeoutError& x) {
    return std::make_exception_ptr(TimeoutError(fmt::format("{}\n{}", x.what(), note)));
  } catch (const TerminatedWorkerError& x) {
    return std::make_exception_ptr(TerminatedWorkerError(fmt::format("{}\n{}", x.what(), note)));
  } catch (...) {
  }
  return e;
}

}  // namespace

using DoneStore = SequenceStore<BatchBase>;

class CallImpl final : public Call, public std::enable_shared_from_this<CallImpl> {
 public:
  CallImpl(Resolved cfg, std::unique_ptr<Source> source, std::string repr)
      : cfg_(std::move(cfg)), source_(std::move(source)), printer_(cfg_.verbose, std::move(repr), cfg_.progress_bar),
        auto_batch_(cfg_.timeout) {
    n_tasks_ = source_->remaining();
    sequential_ = !cfg_.backend;
    generator_ = cfg_.return_as != ReturnAs::list;
    outcomes_ = source_->gives_outcomes();
    small_results_ = source_->small_results();
    clocked_ = cfg_.timeout.has_value() || !cfg_.batch_size;
    // An input cut into index ranges (Parallel::map over an iota or a
    // vector) starts its auto batches at 1/64 of each worker's share: no
    // ramp from 1 for a million tiny tasks, and at most 1/64 of a worker's
    // work in one batch when tasks are long. Generators keep joblib's start
    // (their window bounds the tasks in flight).
    if (!cfg_.batch_size && source_->splits() && n_tasks_ && !generator_ && !sequential_ &&
        !cfg_.caps.needs_encoded_tasks)
      auto_batch_.start_at(*n_tasks_ / (64 * std::size_t(std::max(cfg_.n_jobs, 1))));
  }

  ~CallImpl() override = default;

  void start();
  std::unique_ptr<BatchBase> next() override;
  std::optional<std::size_t> input_size() const noexcept override { return n_tasks_; }
  void close() noexcept override;
  void batch_done(BatchBase& b) noexcept;

  const Resolved& config() const noexcept { return cfg_; }
  const NestedBackend& nested() const noexcept { return cfg_.nested; }
  int nesting_level() const noexcept { return cfg_.nesting_level; }

 private:
  using Lock = std::unique_lock<std::mutex>;

  std::size_t next_batch_size_locked();
  void dispatch_locked(BatchList& out, std::int64_t now = -1);
  std::unique_ptr<BatchBase> pull_batch_locked(std::size_t bs, bool& failed);
  void submit(const BatchList& batches) noexcept;
  bool start_claiming(BatchList& out);
  void claimer_done_locked(BatchBase& b, std::unique_ptr<BatchBase>& dropped);
  void finish_claims_locked(std::unique_ptr<BatchBase> b);
  void record_error_locked(std::size_t seq, std::exception_ptr e);
  void store_done_locked(std::unique_ptr<BatchBase> b);
  // Generator modes whose results may be large count tasks whose results
  // the consumer has not finished with (running, done, and the batch it is
  // iterating): that bounds memory. Generators of small plain results count
  // those batches instead, and list mode counts batches in flight, as
  // joblib: auto batching then grows batches freely.
  bool window_counts_tasks() const { return generator_ && !small_results_; }
  std::size_t in_window_locked() const {
    if (window_counts_tasks()) return running_tasks_ + done_tasks_ + held_tasks_;
    return generator_ ? running_.size() + done_.size() + (held_tasks_ > 0 ? 1 : 0) : running_.size();
  }
  bool finished_locked() const { return exhausted_ && running_.empty(); }
  ProgressState progress_locked() const;
  void report_progress_locked();
  void report_finished_locked();
  void call_on_progress_locked();
  [[noreturn]] void raise_locked(Lock& lk);
  void wait_locked(Lock& lk, const std::function<bool()>& ready);
  [[noreturn]] void time_out_locked(Lock& lk, const BatchBase& b, bool waiting);
  void finish_backend() noexcept;
  std::unique_ptr<BatchBase> take_locked();
  std::unique_ptr<BatchBase> run_inline_locked(Lock& lk);
  void on_stop_requested() noexcept;
  void check_cancelled_locked(Lock& lk);
  bool retry_locked(BatchBase& b);
  bool give_up_on_locked(BatchBase& b, const std::string& message, BatchList& out);

  Resolved cfg_;
  std::unique_ptr<Source> source_;
  ProgressPrinter printer_;
  std::optional<std::size_t> n_tasks_;
  bool sequential_ = false;
  bool generator_ = false;

  std::mutex m_;
  std::condition_variable cv_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> events_{0};  // bumped with every wake-up of the caller
  bool exhausted_ = false;      // the input is fully pulled (or its producer failed)
  bool closed_ = false;         // the consumer let go of the call
  bool raised_ = false;         // the call's error was thrown
  bool timed_out_ = false;
  std::string timeout_message_;
  int in_callback_ = 0;                    // workers inside batch_done
  std::shared_ptr<CallImpl> self_;         // keeps an abandoned (timed out) call alive
  bool finished_printed_ = false;
  std::atomic<bool> backend_stopped_{false};

  std::size_t window_ = 0;      // max batches in flight (0 = unlimited, pre_dispatch="all")
  long pre_dispatch_amount_ = 0;
  std::size_t next_seq_ = 0, next_first_ = 0, next_take_ = 0;
  std::map<std::size_t, std::unique_ptr<BatchBase>> running_;  // dispatched, not finished
  // A node of running_ kept from a finished batch for the next one (a
  // batch_size = 1 call would allocate one per task).
  std::map<std::size_t, std::unique_ptr<BatchBase>>::node_type spare_node_;
  // Batch times are read: a timeout watches them, or auto batching sizes by them.
  bool clocked_ = false;
  DoneStore done_;                                             // finished, not taken
  std::deque<std::size_t> done_order_;                         // completion order (unordered)
  std::exception_ptr error_;
  std::size_t error_seq_ = kNoError;

  std::int64_t last_completion_ns_ = 0;  // when a batch of this call last completed
  std::optional<TimeoutClock> timeout_clock_;     // set when the call has a timeout
  std::vector<TimeoutClock::Batch> clocks_;       // the watchdog's look at running_ (reused)
  std::vector<BatchBase*> in_flight_;             // the batches of clocks_, in the same order
  std::size_t dispatched_tasks_ = 0, dispatched_batches_ = 0, completed_tasks_ = 0;
  std::size_t running_tasks_ = 0, done_tasks_ = 0, held_tasks_ = 0;
  AutoBatchSize auto_batch_;
  bool outcomes_ = false;                 // Parallel::outcomes()
  bool claiming_ = false;                 // the workers claim index ranges (start_claiming)
  bool small_results_ = false;            // Source::small_results(): a generator's window counts batches
  // Batches left running on a thread after a timeout, their tasks retried
  // (or given TimeoutError outcomes) elsewhere: dropped when they end.
  std::map<const BatchBase*, std::unique_ptr<BatchBase>> abandoned_;
  std::atomic<bool> cancelled_{false};    // the stop_token was requested
  bool stop_possible_ = false;
  // Last: unregistered first, while everything it touches still exists.
  std::unique_ptr<std::stop_callback<std::function<void()>>> on_stop_;
};

// ---------------------------------------------------------------------------

void CallImpl::start() {
  if (cfg_.timeout && std::isinf(*cfg_.timeout)) cfg_.timeout.reset();  // infinity: no timeout
  if (cfg_.stop_token.stop_possible()) {
    stop_possible_ = true;
    // Runs at once when a stop was already requested.
    on_stop_ = std::make_unique<std::stop_callback<std::function<void()>>>(
        cfg_.stop_token, std::function<void()>([this] { on_stop_requested(); }));
  }
  if ((cfg_.max_tasks_per_child || cfg_.worker_memory_limit) && !cfg_.caps.needs_encoded_tasks) {
    std::fprintf(stderr,
                 "UserWarning: max_tasks_per_child and worker_memory_limit apply to process backends (loky, "
                 "multiprocessing); the '%s' backend ignores them.\n",
                 cfg_.backend_name.c_str());
  }
  if (sequential_) {
    if (cfg_.timeout) {
      static std::once_flag warned;
      std::call_once(warned, [] {
        std::fprintf(stderr,
                     "UserWarning: The backend class 'SequentialBackend' does not support timeout. You have set "
                     "'timeout' in Parallel but the 'timeout' parameter will not be used.\n");
      });
    }
    if (!generator_) {
      Lock lk(m_);
      while (!exhausted_) {
        auto b = run_inline_locked(lk);
        if (!b) break;
        store_done_locked(std::move(b));
      }
      check_cancelled_locked(lk);
    }
    return;
  }

  // Parallel: window, backend start, first dispatch from the caller.
  if (cfg_.pre_dispatch == "all") {
    window_ = 0;
  } else {
    long amount = eval_pre_dispatch(cfg_.pre_dispatch, cfg_.n_jobs);
    if (amount < 1)
      throw std::invalid_argument(
          fmt::format("pre_dispatch must give at least 1 batch, got {} from '{}'", amount, cfg_.pre_dispatch));
    window_ = static_cast<std::size_t>(amount);
    pre_dispatch_amount_ = amount;
  }
  if (cfg_.timeout && !cfg_.caps.supports_timeout) {
    std::fprintf(stderr,
                 "UserWarning: The backend class '%s' does not support timeout. You have set 'timeout=%g' in Parallel "
                 "but the 'timeout' parameter will not be used.\n",
                 backend_class_name(cfg_.backend_name).c_str(), *cfg_.timeout);
    cfg_.timeout.reset();
  }
  if (cfg_.timeout) timeout_clock_.emplace(*cfg_.timeout);
  if (cfg_.caps.needs_encoded_tasks) {
    // joblib's early pickling-error capture: refuse before any task runs.
    if (std::optional<std::string> why = source_->portability_problem())
      throw SerializationError(fmt::format("cannot use the {} backend: {}", cfg_.backend_name, *why));
  }
  printer_.message(fmt::format("Using backend {} with {} concurrent workers.", backend_class_name(cfg_.backend_name),
                               cfg_.n_jobs));
  CallSettings settings;
  settings.initializer = cfg_.initializer;
  settings.n_jobs = cfg_.n_jobs;
  settings.timeout = cfg_.timeout;
  settings.verbose = std::max(0, cfg_.verbose - 50);
  settings.temp_folder = cfg_.temp_folder;
  settings.max_nbytes = cfg_.max_nbytes;
  settings.mmap_mode = cfg_.mmap_mode;
  settings.max_tasks_per_child = cfg_.max_tasks_per_child;
  settings.worker_memory_limit = cfg_.worker_memory_limit;
  if (std::exception_ptr e = cfg_.backend->start_call(settings)) {
    backend_stopped_ = true;
    std::rethrow_exception(e);
  }
  BatchList out;
  if (!start_claiming(out)) {
    Lock lk(m_);
    dispatch_locked(out);
    if (finished_locked()) report_finished_locked();
  }
  submit(out);
  if (!generator_) {
    Lock lk(m_);
    wait_locked(lk, [this] { return finished_locked() && in_callback_ == 0; });
    lk.unlock();
    finish_backend();
  }
}

std::size_t CallImpl::next_batch_size_locked() {
  std::size_t bs = 1;
  if (cfg_.batch_size) {
    bs = static_cast<std::size_t>(*cfg_.batch_size);
  } else {
    // joblib's compute_batch_size (here on every backend, sequential
    // included: C++ tasks of nanoseconds need it)
    std::string message;
    bs = auto_batch_.next(cfg_.verbose >= 10 ? &message : nullptr);
    if (!message.empty()) printer_.message(message);
  }
  if (!sequential_ && window_ == 0 && !cfg_.batch_size && n_tasks_) {
    // pre_dispatch = "all": the whole input is dispatched before any batch
    // completes, so auto batching has no measure yet; batches of 1 would
    // cost a round trip per task. Cut it into about 8 batches per worker.
    const std::size_t per = (*n_tasks_ + 8 * std::size_t(cfg_.n_jobs) - 1) / (8 * std::size_t(cfg_.n_jobs));
    bs = std::max(bs, per);
  }
  if (!sequential_ && n_tasks_) bs = cut_tail(bs, source_->remaining().value_or(0), cfg_.n_jobs);
  // A worker replaced after N tasks never gets a batch of more than N.
  if (cfg_.max_tasks_per_child && cfg_.caps.needs_encoded_tasks)
    bs = std::min(bs, static_cast<std::size_t>(*cfg_.max_tasks_per_child));
  return std::max<std::size_t>(bs, 1);
}

// The one place both paths (dispatch to a backend, run in the caller) take
// a batch from the input and account for it: its sequence number, its
// first input index, the dispatched counters. Null when the input is
// exhausted, or when pulling threw (the error is recorded, `failed` set).
std::unique_ptr<BatchBase> CallImpl::pull_batch_locked(std::size_t bs, bool& failed) {
  failed = false;
  std::unique_ptr<BatchBase> b;
  try {
    b = source_->pull(bs);
  } catch (...) {
    exhausted_ = true;
    record_error_locked(next_seq_, std::current_exception());
    failed = true;
    return nullptr;
  }
  if (!b) {
    exhausted_ = true;
    return nullptr;
  }
  b->seq_ = next_seq_++;
  b->first_index_ = next_first_;
  next_first_ += b->size_;
  b->stop_ = &stop_;
  dispatched_tasks_ += b->size_;
  ++dispatched_batches_;
  return b;
}

void CallImpl::dispatch_locked(BatchList& out, std::int64_t now) {
  while (!stop_.load(std::memory_order_relaxed) && !exhausted_ && (window_ == 0 || in_window_locked() < window_)) {
    std::size_t bs = next_batch_size_locked();
    if (window_counts_tasks() && window_ != 0) {
      // The window counts tasks. Refilling it slot by slot would keep every
      // batch at the size of the one that just completed, so auto batching
      // could never grow: wait until a whole batch fits (a batch is at most
      // the window's share of one worker), unless nothing is running.
      const std::size_t share = std::max<std::size_t>(1, window_ / std::size_t(std::max(cfg_.n_jobs, 1)));
      const std::size_t want = std::min(bs, share);
      const std::size_t free = window_ - in_window_locked();
      if (free < want && running_tasks_ > 0) break;
      bs = std::min(want, free);
    }
    bool failed = false;
    std::unique_ptr<BatchBase> b = pull_batch_locked(bs, failed);
    if (!b) break;
    if (clocked_) {
      if (now < 0) now = now_ns();
      b->dispatched_ns_ = now;
    }
    b->clock_each_task_ = cfg_.timeout.has_value();
    b->call_ = this;
    // A batch on threads cannot be stopped after a timeout: keep copies of
    // its tasks to try them again on another thread.
    if (cfg_.timeout && (cfg_.retries > 0 || outcomes_) && !cfg_.caps.needs_encoded_tasks)
      b->spare_ = b->copy_tasks();
    running_tasks_ += b->size_;
    out.push_back(b.get());
    if (spare_node_) {
      spare_node_.key() = b->seq_;
      spare_node_.mapped() = std::move(b);
      running_.insert(std::move(spare_node_));
    } else {
      running_.emplace(b->seq_, std::move(b));
    }
  }
}

void CallImpl::submit(const BatchList& batches) noexcept {
  for (BatchBase* b : batches) cfg_.backend->submit(*b);
}

// A list call over an input cut into index ranges, on threads, that nothing
// watches batch by batch (no timeout, retries, outcomes, verbose or
// progress): n_jobs batches claim ranges of the input from one atomic
// counter, as OpenMP's dynamic schedule does, instead of a batch made,
// queued and reported under the call's lock for each range. A range is
// batch_size tasks, or (auto) a guided share of what is left, capped at
// 1/64 of a worker's share. Results, their order, the error raised (the
// one of the lowest input index) and stopping stay as the batched path
// gives them.
bool CallImpl::start_claiming(BatchList& out) {
  if (generator_ || sequential_ || cfg_.caps.needs_encoded_tasks || cfg_.timeout || cfg_.retries > 0 ||
      outcomes_ || cfg_.verbose > 0 || cfg_.on_progress || cfg_.progress_bar || !n_tasks_ || *n_tasks_ == 0 ||
      !source_->splits())
    return false;
  const std::size_t n = *n_tasks_;
  const std::size_t jobs = std::size_t(std::max(cfg_.n_jobs, 1));
  auto range = std::make_shared<ClaimRange>(n, cfg_.batch_size ? std::size_t(*cfg_.batch_size) : 0,
                                            n / (64 * jobs), 4 * jobs);
  std::vector<std::unique_ptr<BatchBase>> claimers;
  try {
    // No more at once than pre_dispatch lets batches be in flight.
    const std::size_t count = std::min({jobs, n, window_ == 0 ? jobs : window_});
    claimers = source_->claimers(count, range);  // reserves the output
  } catch (...) {
    finish_backend();
    throw;
  }
  if (claimers.empty()) return false;
  Lock lk(m_);
  claiming_ = true;
  exhausted_ = true;
  dispatched_tasks_ = n;
  const std::int64_t now = now_ns();
  for (auto& b : claimers) {
    b->size_ = n;  // any task of the input may be its (what a backend reports about it says so)
    b->seq_ = next_seq_++;
    b->stop_ = &stop_;
    b->call_ = this;
    b->dispatched_ns_ = now;
    ++dispatched_batches_;
    out.push_back(b.get());
    running_.emplace(b->seq_, std::move(b));
  }
  running_tasks_ = n;
  return true;
}

// A claiming batch has run out of ranges (or the call stopped). Its error
// is ranked by the input index of its failing task. When the last one
// ends and every task ran, one of them stands for the whole input: it is
// what the caller takes, its results in the call's output.
void CallImpl::claimer_done_locked(BatchBase& b, std::unique_ptr<BatchBase>& dropped) {
  auto node = running_.extract(b.seq_);
  last_completion_ns_ = now_ns();
  completed_tasks_ += b.completed_;
  if (b.error_ && b.from_backend_ && stop_.load()) b.error_ = nullptr;  // dropped by a stopping backend
  // A task's error by its input index; one the backend gave the whole batch after them.
  if (b.error_) record_error_locked(b.from_backend_ ? kNoError - 1 : b.first_index_ + b.error_offset_, b.error_);
  if (!running_.empty()) {
    dropped = std::move(node.mapped());
    return;
  }
  running_tasks_ = 0;
  finish_claims_locked(std::move(node.mapped()));
}

// Every claiming batch has ended (the one that made the output among
// them): when every task ran, `b` stands for the whole input (the caller
// takes it, its results in the output); otherwise the call stopped and its
// error is raised.
void CallImpl::finish_claims_locked(std::unique_ptr<BatchBase> b) {
  if (closed_ || error_ || completed_tasks_ != *n_tasks_) return;
  b->size_ = b->completed_ = *n_tasks_;
  b->seq_ = 0;
  b->claims_done();
  done_tasks_ = *n_tasks_;
  done_.put(0, std::move(b));
  report_finished_locked();
}

void CallImpl::record_error_locked(std::size_t seq, std::exception_ptr e) {
  if (seq < error_seq_) {
    error_seq_ = seq;
    error_ = std::move(e);
  }
  stop_.store(true);
}

ProgressState CallImpl::progress_locked() const {
  ProgressState s;
  s.n_tasks = n_tasks_;
  s.completed_tasks = completed_tasks_;
  s.dispatched_tasks = dispatched_tasks_;
  s.dispatched_batches = dispatched_batches_;
  s.iterating = !exhausted_;
  s.completed = exhausted_ && running_.empty() && !error_ && completed_tasks_ == dispatched_tasks_;
  s.pre_dispatch_amount = pre_dispatch_amount_;
  return s;
}

void CallImpl::report_progress_locked() {
  if (error_) return;
  ProgressState s = progress_locked();
  if (!finished_printed_ && printer_.print_progress(s)) finished_printed_ = true;
  printer_.bar(s, s.completed);
  call_on_progress_locked();
}

void CallImpl::call_on_progress_locked() {
  if (!cfg_.on_progress || error_) return;
  std::optional<std::size_t> total = n_tasks_;
  if (!total && exhausted_) total = dispatched_tasks_;
  try {
    cfg_.on_progress(completed_tasks_, total);
  } catch (...) {
    // A throwing callback stops the call like a failing task.
    record_error_locked(next_seq_, std::current_exception());
  }
}

void CallImpl::report_finished_locked() {
  if (finished_printed_ || error_) return;
  ProgressState s = progress_locked();
  if (!s.completed) return;
  finished_printed_ = printer_.print_progress(s);
  if (!finished_printed_) finished_printed_ = true;
  printer_.bar(s, true);
  // An input of unknown size: its total is known only now.
  if (!n_tasks_) call_on_progress_locked();
}

bool CallImpl::retry_locked(BatchBase& b) {
  if (!b.error_) return false;
  // Rethrows to learn types, on a pool's thread beside a fork: see loader_walk_mutex().
  std::lock_guard walk(loader_walk_mutex());
  if (b.timed_out_) {
    // Its worker was killed after the timeout (ParallelOptions::retries, outcomes).
    b.error_ = std::make_exception_ptr(TimeoutError(
        fmt::format("a task ran longer than the timeout of {} s (timed as a batch of {} starting at task {}{})",
                    cfg_.timeout.value_or(0), task_count(b.size_), b.first_index_, where(b))));
  }
  if (stop_.load() || closed_) return false;
  // A worker that died: reported by the backend, or by a relay in a task's
  // place (an MPI rank whose child died).
  const bool worker_lost = b.timed_out_ || is_a<TerminatedWorkerError>(b.error_);
  bool task_error = false;
  if (!b.from_backend_ && cfg_.retry_if) {
    try {
      task_error = cfg_.retry_if(b.error_);
    } catch (...) {
      task_error = false;  // a predicate that throws says no
    }
  }
  if (task_error && !cfg_.caps.needs_encoded_tasks && b.completed_ > b.retry_from_) {
    // A batch on threads resumes at its failing task: a later task that
    // fails has attempts of its own.
    b.attempts_ = 1;
    b.retry_from_ = b.completed_;
  }
  if (!(worker_lost || task_error) || b.attempts_ > cfg_.retries) {
    if (b.attempts_ > 1) b.error_ = with_attempts(b.error_, b.attempts_, cfg_.retries);
    return false;
  }
  if (cfg_.verbose >= 10) {
    std::string why;
    try {
      std::rethrow_exception(b.error_);
    } catch (const std::exception& e) {
      why = e.what();
    } catch (...) {
      why = "unknown error";
    }
    printer_.message(fmt::format("Retrying a batch of {} starting at task {} (attempt {} of {}): {}",
                                 task_count(b.size_), b.first_index_, b.attempts_ + 1, cfg_.retries + 1,
                                 why.substr(0, why.find('\n'))));
  }
  // A batch on threads goes on from the task that threw; one that travels
  // to a worker is sent again whole (its results travel together).
  const bool resume = task_error && !cfg_.caps.needs_encoded_tasks;
  if (!resume) {
    b.completed_ = 0;
    b.reset_results();
  }
  b.retry_from_ = b.completed_;
  b.error_ = nullptr;
  b.error_offset_ = 0;
  b.from_backend_ = false;
  b.timed_out_ = false;
  ++b.attempts_;
  b.started_ns_.store(0, std::memory_order_relaxed);
  b.dispatched_ns_ = now_ns();
  return true;
}

void CallImpl::batch_done(BatchBase& b) noexcept {
  // Lifetime: the caller does not let this call go while a worker is in here
  // (in_callback_), except after a timeout, when the call keeps itself alive
  // (self_) until its last running batch has reported.
  std::shared_ptr<CallImpl> last_ref;   // set when an abandoned call ends here
  std::unique_ptr<BatchBase> dropped;   // destroyed after the lock is released
  BatchList out;
  {
    Lock lk(m_);
    ++in_callback_;
    if (b.abandoned_) {
      // Left running after a timeout; its tasks were tried elsewhere.
      if (auto it = abandoned_.find(&b); it != abandoned_.end()) {
        dropped = std::move(it->second);
        abandoned_.erase(it);
      }
    } else if (claiming_) {
      claimer_done_locked(b, dropped);
      if (finished_locked() || error_ || stop_.load(std::memory_order_relaxed)) {
        events_.fetch_add(1, std::memory_order_release);
        cv_.notify_all();
      }
    } else if (retry_locked(b)) {
      out.push_back(&b);  // stays in running_; sent again below
    } else {
      auto node = running_.extract(b.seq_);
      running_tasks_ -= b.size_;
      if (clocked_) last_completion_ns_ = now_ns();
      const double duration = double(last_completion_ns_ - b.dispatched_ns_) * 1e-9;
      if (b.error_ && b.from_backend_ && stop_.load()) {
        // A batch the backend dropped or killed because the call was already
        // stopping: not an error of its own.
        b.error_ = nullptr;
      }
      if (b.error_ && outcomes_) {
        // Parallel::outcomes: a batch that failed as a whole (its worker died
        // for good) gives its error to each of its tasks.
        try {
          if (b.fill_error(b.error_)) b.error_ = nullptr;
        } catch (...) {
          b.error_ = std::current_exception();
        }
      }
      completed_tasks_ += b.completed_;
      if (b.error_) {
        record_error_locked(b.seq_, b.error_);
      } else if (b.completed_ == b.size_ && !cfg_.batch_size && b.attempts_ == 1) {
        auto_batch_.completed(b.size_, duration);  // joblib's batch_completed()
      }
      if (closed_ || error_ || b.completed_ < b.size_) {
        dropped = std::move(node.mapped());
      } else {
        done_tasks_ += b.size_;
        store_done_locked(std::move(node.mapped()));
        if (cfg_.return_as == ReturnAs::generator_unordered) done_order_.push_back(b.seq_);
      }
      if (node && !spare_node_) spare_node_ = std::move(node);  // its batch moved out above
      report_progress_locked();
      dispatch_locked(out, clocked_ ? last_completion_ns_ : -1);
      if (finished_locked()) report_finished_locked();
      // Wake the caller only when it has something to do: a result to hand out
      // (generators), the end of the call, an error, or a stop that waits for
      // running tasks.
      const bool wake = finished_locked() || error_ || (generator_ && !done_.empty()) ||
                        (stop_.load(std::memory_order_relaxed) && running_.empty());
      if (wake) {
        events_.fetch_add(1, std::memory_order_release);
        cv_.notify_all();
      }
    }
  }
  if (!out.empty()) submit(out);
  dropped.reset();
  Lock lk(m_);
  if (--in_callback_ == 0) {
    if (self_ && running_.empty() && abandoned_.empty()) last_ref = std::move(self_);
    // Whoever waits for the callbacks to leave also waits for the call to
    // finish, fail, stop or run dry: wake the caller only then, not after
    // every batch (a woken caller spins, and takes a core from the workers).
    if (finished_locked() || error_ || closed_ || timed_out_ || stop_.load(std::memory_order_relaxed) ||
        running_.empty()) {
      events_.fetch_add(1, std::memory_order_release);
      cv_.notify_all();
    }
  }
  lk.unlock();
  // last_ref (if any) is released here, after the lock: the call may end now.
}

bool CallImpl::give_up_on_locked(BatchBase& b, const std::string& message, BatchList& out) {
  // A batch on a thread ran over the timeout: it cannot be stopped, so it is
  // left to finish (its outcome dropped) and its spare copy is tried again,
  // or, retries spent, gives TimeoutError outcomes.
  std::unique_ptr<BatchBase> spare = std::move(b.spare_);
  if (!spare) return false;
  auto node = running_.extract(b.seq_);
  spare->seq_ = b.seq_;
  spare->first_index_ = b.first_index_;
  spare->stop_ = &stop_;
  spare->call_ = this;
  spare->clock_each_task_ = b.clock_each_task_;
  spare->attempts_ = b.attempts_ + 1;
  spare->dispatched_ns_ = now_ns();
  b.abandoned_ = true;
  abandoned_.emplace(&b, std::move(node.mapped()));
  const std::size_t seq = spare->seq_;
  if (b.attempts_ <= cfg_.retries) {
    if (cfg_.verbose >= 10)
      printer_.message(fmt::format("Retrying a batch of {} starting at task {} (attempt {} of {}): {}",
                                   task_count(spare->size_), spare->first_index_, spare->attempts_,
                                   cfg_.retries + 1, message));
    spare->spare_ = spare->copy_tasks();
    out.push_back(spare.get());
    running_.emplace(seq, std::move(spare));
    return true;
  }
  // Retries spent, and the call gives outcomes: every task of the batch times out.
  std::exception_ptr e = std::make_exception_ptr(TimeoutError(message));
  if (b.attempts_ > 1) e = with_attempts(e, b.attempts_, cfg_.retries);
  spare->fill_error(e);
  spare->attempts_ = b.attempts_;
  running_tasks_ -= spare->size_;
  completed_tasks_ += spare->size_;
  done_tasks_ += spare->size_;
  store_done_locked(std::move(spare));
  if (cfg_.return_as == ReturnAs::generator_unordered) done_order_.push_back(seq);
  report_progress_locked();
  dispatch_locked(out);
  if (finished_locked()) report_finished_locked();
  return true;
}

void CallImpl::on_stop_requested() noexcept {
  // Runs in the thread that called request_stop(): flags only (the caller
  // sees them within kStopPoll and stops the backend).
  cancelled_.store(true);
  stop_.store(true);
  events_.fetch_add(1, std::memory_order_release);
  cv_.notify_all();
}

void CallImpl::check_cancelled_locked(Lock& lk) {
  if (!cancelled_.load() || raised_) return;
  const bool failed_before = error_ != nullptr;
  if (!failed_before && claiming_) {
    // Claiming batches count their tasks when they end: let them stop (they
    // do so between tasks) before saying how far the call got. A task that
    // fails meanwhile (seeing the stop) does not replace the cancel, as a
    // batch's error recorded after it does not on the batched path.
    lk.unlock();
    cfg_.backend->abort();
    lk.lock();
    cv_.wait(lk, [this] { return running_.empty() && in_callback_ == 0; });
  }
  if (!failed_before) {
    error_ = std::make_exception_ptr(CancelledError(fmt::format(
        "the call was cancelled: its stop_token was requested ({} of {} tasks done)", completed_tasks_,
        n_tasks_ ? std::to_string(*n_tasks_) : std::string("?"))));
    error_seq_ = 0;
    stop_.store(true);
  }
  raise_locked(lk);
}

void CallImpl::raise_locked(Lock& lk) {
  stop_.store(true);
  if (!timed_out_ && cfg_.backend) {
    lk.unlock();
    cfg_.backend->abort();
    lk.lock();
    // Structured concurrency: tasks already running on threads are waited for.
    cv_.wait(lk, [this] { return running_.empty() && in_callback_ == 0; });
  }
  bool abandoned = false;
  if (timed_out_) {
    // Tasks that ran over cannot be stopped, but no worker may still be about
    // to submit when the backend stops: wait for those in the callback.
    cv_.wait(lk, [this] { return in_callback_ == 0; });
    if (!running_.empty()) {
      self_ = shared_from_this();
      abandoned = true;
    }
  }
  exhausted_ = true;
  done_.clear();
  done_order_.clear();
  done_tasks_ = 0;
  raised_ = true;
  std::exception_ptr e = error_;
  const std::string timeout_message = timeout_message_;
  lk.unlock();
  // Later calls must not wait for the workers the abandoned tasks hold.
  if (abandoned) cfg_.backend->abandon();
  finish_backend();
  // After a timeout this call may be destroyed by a worker thread while the
  // caller still handles the error: give the caller an object of its own.
  if (timed_out_) throw TimeoutError(timeout_message);
  std::rethrow_exception(e);
}

void CallImpl::wait_locked(Lock& lk, const std::function<bool()>& ready) {
  bool spun = false;
  for (;;) {
    check_cancelled_locked(lk);
    if (error_) raise_locked(lk);
    if (ready()) return;
    if (!spun) {
      // Spin briefly before sleeping: a short call finishes within a few
      // microseconds, far less than a futex wake-up costs.
      spun = true;
      const std::uint64_t seen = events_.load(std::memory_order_acquire);
      lk.unlock();
      spin_until_changed(events_, seen);
      lk.lock();
      continue;
    }
    spun = false;
    if (!timeout_clock_) {
      if (stop_possible_)
        cv_.wait_for(lk, kStopPoll);
      else
        cv_.wait(lk);
      continue;
    }
    const std::int64_t now = now_ns();
    clocks_.clear();
    in_flight_.clear();
    for (auto& [seq, b] : running_) {
      clocks_.push_back({b->started_ns_.load(std::memory_order_relaxed), b->dispatched_ns_, b->timed_out_});
      in_flight_.push_back(b.get());
    }
    const TimeoutClock::Look look = timeout_clock_->look(clocks_, last_completion_ns_, now);
    std::int64_t deadline = look.deadline_ns;
    if (stop_possible_) deadline = std::min<std::int64_t>(deadline, now + kStopPoll.count() * 1'000'000);
    std::vector<BatchBase*> give_up;  // thread batches over the limit, with spare copies
    for (const TimeoutClock::Over& over : look.over) {
      BatchBase* b = in_flight_[over.index];
      if (!over.waiting && (b->attempts_ <= cfg_.retries || outcomes_)) {
        // Retries or outcomes: stop this batch only, and go on.
        if (cfg_.caps.needs_encoded_tasks && cfg_.backend->cancel(*b)) {
          b->timed_out_ = true;
          continue;
        }
        if (b->spare_) {
          give_up.push_back(b);
          continue;
        }
      }
      time_out_locked(lk, *b, over.waiting);  // throws
    }
    if (!give_up.empty()) {
      BatchList out;
      for (BatchBase* b : give_up)
        give_up_on_locked(*b,
                          fmt::format("a task ran longer than the timeout of {} s (in a batch of {} starting at task {})",
                                      *cfg_.timeout, task_count(b->size_), b->first_index_),
                          out);
      if (!out.empty()) {
        lk.unlock();
        submit(out);
        lk.lock();
      }
      events_.fetch_add(1, std::memory_order_release);
      continue;
    }
    cv_.wait_for(lk, std::chrono::nanoseconds(std::max<std::int64_t>(deadline - now, 1000)));
  }
}

void CallImpl::time_out_locked(Lock& lk, const BatchBase& b, bool waiting) {
  timed_out_ = true;
  timeout_message_ =
      waiting ? fmt::format("a batch of {} starting at task {} waited longer than the timeout of {} s for a "
                            "worker, and no batch of the call completed meanwhile",
                            task_count(b.size_), b.first_index_, *cfg_.timeout)
              : fmt::format("a task ran longer than the timeout of {} s ({} batch of {} starting at task {}{})",
                            *cfg_.timeout, b.clock_each_task_ && !cfg_.caps.needs_encoded_tasks ? "in a" : "timed as a",
                            task_count(b.size_), b.first_index_, where(b));
  if (!waiting && b.attempts_ > 1)
    timeout_message_ += fmt::format("\nThe batch was tried {} times (retries = {}).", b.attempts_, cfg_.retries);
  record_error_locked(0, std::make_exception_ptr(TimeoutError(timeout_message_)));
  error_seq_ = 0;
  lk.unlock();
  cfg_.backend->abort();
  lk.lock();
  raise_locked(lk);
}

void CallImpl::finish_backend() noexcept {
  if (!cfg_.backend || backend_stopped_.exchange(true)) return;
  on_stop_.reset();  // a stop requested from now on concerns nothing of this call
  bool abandon = false;
  {
    Lock lk(m_);
    if (!abandoned_.empty()) {
      // Batches still running on threads after a timeout: this call stays
      // alive until they end, and later calls must not wait for them.
      self_ = shared_from_this();
      abandon = true;
    }
  }
  if (abandon) cfg_.backend->abandon();
  cfg_.backend->stop_call();
}

void CallImpl::store_done_locked(std::unique_ptr<BatchBase> b) {
  const std::size_t seq = b->seq_;
  if (generator_) {
    done_.put(seq, std::move(b));
    return;
  }
  // List mode: a finished batch right after another in the input is folded
  // into it, so that a call of a million batches does not keep a million
  // batch objects until it ends (the results, if any, are moved in).
  done_.put_folding(seq, std::move(b), [](BatchBase& first, BatchBase& next) {
    const auto whole = [](const BatchBase& x) { return !x.error_ && x.completed_ == x.size_; };
    if (!whole(first) || !whole(next) || first.first_index_ + first.size_ != next.first_index_ ||
        !first.absorb(next))
      return false;
    first.size_ += next.size_;
    first.completed_ += next.completed_;
    return true;
  });
}

std::unique_ptr<BatchBase> CallImpl::take_locked() {
  if (generator_ && cfg_.return_as == ReturnAs::generator_unordered) {
    if (done_order_.empty()) return nullptr;
    const std::size_t seq = done_order_.front();
    done_order_.pop_front();
    auto b = done_.take(seq);
    done_tasks_ -= b->size_;
    held_tasks_ = b->size_;
    return b;
  }
  std::size_t span = 1;
  auto b = done_.take(next_take_, &span);
  if (!b) return nullptr;
  next_take_ += span;
  done_tasks_ -= b->size_;
  held_tasks_ = b->size_;
  return b;
}

std::unique_ptr<BatchBase> CallImpl::run_inline_locked(Lock& lk) {
  check_cancelled_locked(lk);
  if (stop_ || exhausted_) return nullptr;
  const std::size_t bs = next_batch_size_locked();
  bool failed = false;
  std::unique_ptr<BatchBase> b = pull_batch_locked(bs, failed);
  if (failed) raise_locked(lk);
  if (!b) {
    report_finished_locked();
    return nullptr;
  }
  // Sequential: run in the caller, with the active configuration unchanged
  // (joblib's SequentialBackend.get_nested_backend).
  const std::int64_t t0 = now_ns();
  lk.unlock();
  {
    StopFlagScope tasks_see(&stop_);  // joblib::stop_requested() in the tasks
    b->run_tasks();
  }
  lk.lock();
  while (retry_locked(*b)) {  // retry_if: a task's own exception tried again
    lk.unlock();
    {
      StopFlagScope tasks_see(&stop_);
      b->run_tasks();
    }
    lk.lock();
  }
  check_cancelled_locked(lk);
  if (b->error_ && outcomes_ && b->fill_error(b->error_)) b->error_ = nullptr;
  completed_tasks_ += b->completed_;
  if (!cfg_.batch_size && !b->error_) auto_batch_.completed(b->size_, double(now_ns() - t0) * 1e-9);
  if (b->error_) {
    record_error_locked(b->seq_, b->error_);
    // A generator first hands out the results the batch made before its
    // failing task; the error comes on the next step, as joblib's does.
    if (generator_ && b->completed_ > 0) return b;
    raise_locked(lk);
  }
  report_progress_locked();
  if (n_tasks_ && source_->remaining() == std::optional<std::size_t>(0)) {
    exhausted_ = true;
    report_finished_locked();
  }
  return b;
}

std::unique_ptr<BatchBase> CallImpl::next() {
  BatchList out;
  std::unique_ptr<BatchBase> b;
  {
    Lock lk(m_);
    if (raised_ || closed_) return nullptr;
    if (sequential_) {
      if (error_) raise_locked(lk);
      if (auto ready = take_locked()) return ready;
      return run_inline_locked(lk);
    }
    if (generator_ && held_tasks_ > 0) {
      // The consumer is done with the batch it held: its slots free up.
      held_tasks_ = 0;
      dispatch_locked(out);
      if (!out.empty()) {
        lk.unlock();
        submit(out);
        out.clear();
        lk.lock();
      }
    }
    wait_locked(lk, [&] {
      b = take_locked();
      return b != nullptr || (finished_locked() && in_callback_ == 0);
    });
    if (b && generator_) dispatch_locked(out);  // a window slot may have freed up
  }
  if (!out.empty()) submit(out);
  if (!b) finish_backend();
  return b;
}

void CallImpl::close() noexcept {
  Lock lk(m_);
  if (closed_) return;
  closed_ = true;
  if (!sequential_) {
    if (!finished_locked()) {
      stop_.store(true);
      lk.unlock();
      cfg_.backend->abort();
      lk.lock();
    }
    if (!timed_out_) cv_.wait(lk, [this] { return running_.empty() && in_callback_ == 0; });
  }
  done_.clear();
  done_order_.clear();
  lk.unlock();
  finish_backend();
}

// ---------------------------------------------------------------------------

BatchBase::~BatchBase() = default;
Source::~Source() = default;
Call::~Call() = default;

void BatchBase::run() noexcept {
  CallImpl* call = call_;
  if (clock_each_task_) started_ns_.store(now_ns(), std::memory_order_relaxed);
  {
    const Resolved& cfg = call->config();
    TaskScope scope(cfg.nested, cfg.nesting_level + 1, stop_, cfg.inner_threads, cfg.omp);
    run_tasks();
  }
  call->batch_done(*this);  // may destroy *this: nothing may follow
}

std::exception_ptr BatchBase::encode(CodeRef& entry, OutputStream& out, BufferSink* sink) noexcept {
  try {
    encode_tasks(entry, out, sink);
  } catch (...) {
    return std::current_exception();
  }
  return {};
}

void BatchBase::started() noexcept {
  // Only a timeout's watchdog reads when a batch started (a call without
  // one does not read the clock here for every batch).
  started_ns_.store(clock_each_task_ ? now_ns() : 1, std::memory_order_relaxed);
}
void BatchBase::set_location(std::string where) noexcept {
  std::lock_guard lock(location_m_);
  location_.swap(where);
}
std::string BatchBase::location() const {
  std::lock_guard lock(location_m_);
  return location_;
}
void BatchBase::restart_clock() noexcept { started_ns_.store(now_ns(), std::memory_order_relaxed); }

void BatchBase::complete(std::span<const std::byte> results, BufferSource* source) noexcept {
  CallImpl* call = call_;
  try {
    decode_results(results, source);
  } catch (...) {
    error_ = std::current_exception();
  }
  call->batch_done(*this);  // may destroy *this
}

void BatchBase::fail_task(std::size_t index, std::exception_ptr error) noexcept {
  CallImpl* call = call_;
  completed_ = index < size_ ? index : 0;
  error_ = error ? error : std::make_exception_ptr(BackendError("a backend failed a task without saying why"));
  name_dead_worker_tasks();
  call->batch_done(*this);  // may destroy *this
}

void BatchBase::name_dead_worker_tasks() noexcept {
  // Say which tasks a dead worker was running (joblib users ask which input
  // killed it).
  const std::string function = size_ ? task_function_name(0) : std::string("?");
  // On a pool's thread, beside a fork: see loader_walk_mutex().
  std::lock_guard walk(loader_walk_mutex());
  try {
    std::rethrow_exception(error_);
  } catch (const TerminatedWorkerError& e) {
    const std::string tasks = size_ == 1 ? fmt::format("task {}", first_index_)
                                         : fmt::format("tasks {} to {}", first_index_, first_index_ + size_ - 1);
    try {
      if (std::string(e.what()).find("\nIt was running ") == std::string::npos)
        error_ = std::make_exception_ptr(
            TerminatedWorkerError(fmt::format("{}\nIt was running {} of the call ({}).", e.what(), tasks, function)));
    } catch (...) {
    }
  } catch (...) {
  }
}

std::string BatchBase::task_function_name(std::size_t index) const noexcept {
  try {
    return task_function(index);
  } catch (...) {
    return {};
  }
}

void BatchBase::fail(std::exception_ptr error) noexcept {
  CallImpl* call = call_;
  error_ = error ? error : std::make_exception_ptr(BackendError("a backend failed a batch without saying why"));
  name_dead_worker_tasks();
  from_backend_ = true;
  call->batch_done(*this);
}

void validate(const ParallelOptions& o) {
  if (o.n_jobs && *o.n_jobs == 0) throw std::invalid_argument("n_jobs == 0 in Parallel has no meaning");
  if (o.batch_size && *o.batch_size < 1)
    throw std::invalid_argument(
        fmt::format("batch_size must be 'auto' or a positive integer, got: {}", *o.batch_size));
  if (o.timeout && !(*o.timeout > 0))
    throw std::invalid_argument(fmt::format("timeout must be a positive number of seconds, got: {}", *o.timeout));
  if (o.verbose && *o.verbose < 0) throw std::invalid_argument(fmt::format("verbose must be >= 0, got: {}", *o.verbose));
  if (o.pre_dispatch != "all") {
    long amount = eval_pre_dispatch(o.pre_dispatch, 1);  // syntax check with any n_jobs
    (void)amount;
  }
  if (o.max_nbytes && *o.max_nbytes) (void)parse_bytes(**o.max_nbytes, "max_nbytes");
  if (o.retries < 0) throw std::invalid_argument(fmt::format("retries must be >= 0, got: {}", o.retries));
  if (o.max_tasks_per_child && *o.max_tasks_per_child < 1)
    throw std::invalid_argument(
        fmt::format("max_tasks_per_child must be a positive integer, got: {}", *o.max_tasks_per_child));
  if (o.worker_memory_limit) {
    const std::optional<std::size_t> limit = parse_bytes(*o.worker_memory_limit, "worker_memory_limit");
    if (!limit || *limit == 0)
      throw std::invalid_argument(fmt::format("worker_memory_limit must be a positive size such as \"2G\", got: '{}'",
                                              *o.worker_memory_limit));
  }
}

std::shared_ptr<Call> start_call(const ParallelOptions& options, std::unique_ptr<Source> source) {
  Resolved cfg = resolve(options);
  auto call = std::make_shared<CallImpl>(std::move(cfg), std::move(source), parallel_repr(options));
  call->start();
  return call;
}

std::string parallel_repr(const ParallelOptions& options) {
  std::optional<int> n = options.n_jobs;
  if (!n) n = current_frame().n_jobs;
  return fmt::format("Parallel(n_jobs={})", n.value_or(1));
}

}  // namespace joblib::detail
