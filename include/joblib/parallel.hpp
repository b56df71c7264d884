#pragma once
// Parallel: joblib's parallel map. Parallel(options)(tasks) runs a range of
// tasks (delayed(f)(args...), Task<R>, or any callable taking no argument) on
// the resolved backend and returns Results<R>.
#include <joblib/config.hpp>
#include <joblib/delayed.hpp>
#include <joblib/detail/engine.hpp>
#include <joblib/detail/process.hpp>
#include <joblib/detail/throw.hpp>
#include <joblib/options.hpp>
#include <joblib/outcome.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <deque>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace joblib {

namespace detail {
template <class TaskT>
using task_result_t = std::remove_cvref_t<std::invoke_result_t<TaskT&>>;
}  // namespace detail

/// True when a task of type T can run on a process backend (loky,
/// multiprocessing, mpi): a joblib::delayed(f)(args...) whose f is a
/// function, a lambda without captures or an encodable functor, whose
/// arguments and result are encodable. A library can static_assert it, or
/// overload on it, to know at compile time that its caller may pick any
/// backend. A task that is not portable still runs on thread backends.
template <class T>
concept portable_task = std::is_invocable_v<std::remove_cvref_t<T>&> &&
                        detail::PortableTask<std::remove_cvref_t<T>,
                                             detail::task_result_t<std::remove_cvref_t<T>>>::value;

namespace detail {


/// Where a batch keeps its results: a vector, except for bool (whose
/// std::vector has no references to hand out).
template <class R>
using result_store_t = std::conditional_t<std::is_same_v<R, bool>, std::deque<bool>, std::vector<R>>;

/// A batch's results, typed: in its own vector, or (list mode over a
/// sliced input, DirectOutput) written straight into the call's output
/// vector at the batch's place, so that the list is never copied.
template <class R>
class ResultBatch : public BatchBase {
 public:
  result_store_t<R> results_;
  R* direct_ = nullptr;                        // this batch's first slot in *output_
  std::shared_ptr<std::vector<R>> output_;     // the call's output (direct batches)

  /// Results available: those made so far.
  std::size_t result_count() const noexcept { return direct_ ? this->completed_ : results_.size(); }
  /// Result i of the batch.
  R& result(std::size_t i) noexcept { return direct_ ? direct_[i] : results_[i]; }

  /// Batches that wrote into the call's output are windows of it: the next
  /// one extends this one's. Others move their results in.
  bool absorb(BatchBase& next) noexcept override {
    if (typeid(next) != typeid(*this)) return false;  // (the same batch type: the same call's)
    auto* n = static_cast<ResultBatch*>(&next);
    if (direct_ || n->direct_) return direct_ && n->direct_ && direct_ + this->completed_ == n->direct_;
    if constexpr (!std::is_nothrow_move_constructible_v<R>) {
      return false;
    } else {
      const std::size_t old = results_.size();
      try {
        if constexpr (requires { results_.reserve(old); }) {
          const std::size_t need = old + n->results_.size();
          if (need > results_.capacity()) results_.reserve(std::max(need, 2 * results_.capacity()));  // (geometric)
        }
        for (R& r : n->results_) results_.push_back(std::move(r));
      } catch (...) {  // out of memory (a deque of bool grows by blocks): as it was
        while (results_.size() > old) results_.pop_back();
        return false;
      }
      return true;
    }
  }
};
template <>
class ResultBatch<void> : public BatchBase {
 public:
  /// No results: the next batch's tasks only extend this one's.
  bool absorb(BatchBase& next) noexcept override { return typeid(next) == typeid(*this); }
};

/// What a batch keeps per task: the result, or its Outcome (Parallel::outcomes).
template <class R, bool Outcomes>
using batch_value_t = std::conditional_t<Outcomes, Outcome<R>, R>;

/// The tasks of a batch pulled from a lazy input: held in a vector.
template <class TaskT>
struct VectorTasks {
  std::vector<TaskT> tasks_;
  std::size_t task_count() const noexcept { return tasks_.size(); }
  TaskT& task_at(std::size_t i) noexcept { return tasks_[i]; }
  const TaskT& task_at(std::size_t i) const noexcept { return tasks_[i]; }
  /// Frees the tasks once every one has run.
  void release_tasks() noexcept {
    tasks_.clear();
    tasks_.shrink_to_fit();
  }
  static constexpr bool copyable = std::is_copy_constructible_v<TaskT>;
  void copy_tasks_into(VectorTasks& dst) const { dst.tasks_ = std::vector<TaskT>(tasks_.begin(), tasks_.end()); }
};

/// The tasks of a batch cut from a sized random-access input whose elements
/// are made on demand (an iota or a vector through a transform): an index
/// range of the shared input; each task is made where it runs, so that
/// cutting a batch costs nothing whatever its size.
template <class View, class TaskT>
struct SliceTasks {
  std::shared_ptr<const View> view_;  // keeps first_ valid
  std::ranges::iterator_t<const View> first_{};  // the batch's first element
  std::size_t count_ = 0;
  std::size_t task_count() const noexcept { return count_; }
  TaskT task_at(std::size_t i) const { return first_[static_cast<std::ptrdiff_t>(i)]; }
  void release_tasks() noexcept {}
  static constexpr bool copyable = true;
  void copy_tasks_into(SliceTasks& dst) const { dst = *this; }
};

/// An input whose elements can be read from several threads at once with
/// no effect: an iota, or a contiguous sized range (a vector, an array, a
/// span), as Parallel::map's input.
template <class T>
inline constexpr bool is_iota_view_v = false;
template <class W, class B>
inline constexpr bool is_iota_view_v<std::ranges::iota_view<W, B>> = true;
template <class Inputs>
inline constexpr bool splittable_input_v = [] {
  using V = std::remove_cvref_t<std::views::all_t<Inputs>>;
  if constexpr (is_iota_view_v<V>)
    return std::ranges::sized_range<const V>;
  else
    return std::ranges::contiguous_range<const V> && std::ranges::sized_range<const V>;
}();

/// True when a call over `View` (map's transform of a splittable input) is
/// cut into SliceTasks: a sized random-access range, iterable through a
/// const reference, whose elements are made by value. A user's own range
/// keeps the lazy path (its producer runs in the caller, in order, as
/// joblib's does), and so does Parallel::outcomes.
template <class View, class TaskT, bool Outcomes>
inline constexpr bool sliceable_v = [] {
  if constexpr (Outcomes || !std::ranges::random_access_range<const View> || !std::ranges::sized_range<const View>)
    return false;
  else
    return std::is_same_v<std::ranges::range_reference_t<const View>, TaskT> && std::is_move_constructible_v<TaskT>;
}();

/// A batch of tasks of one type: run() is a monomorphic loop. With
/// `Outcomes`, every task runs and each result is an Outcome<R>. `Store`
/// holds the tasks (VectorTasks) or says how to make them (SliceTasks).
template <class TaskT, class R, bool Outcomes = false, class Store = VectorTasks<TaskT>>
class BatchOf final : public ResultBatch<batch_value_t<R, Outcomes>>, public Store {
 public:
  using Store::task_at;
  using Store::task_count;

  /// Where results go straight to (DirectOutput), or null.
  auto direct() const noexcept {
    if constexpr (Outcomes || std::is_void_v<R>)
      return static_cast<void*>(nullptr);
    else
      return this->direct_;
  }

  void run_tasks() noexcept override {
    // A retried batch (ParallelOptions::retry_if) goes on from its failed
    // task. The count lives in a local while tasks run (a task is an opaque
    // call: a member would be stored and reloaded around each one).
    const std::size_t n = task_count();
    std::size_t i = this->completed_;
    try {
      [[maybe_unused]] auto* const out = direct();
      if constexpr (Outcomes || (!std::is_void_v<R> && !std::is_same_v<R, bool>))
        if (!out) this->results_.reserve(n);
      const bool clock = this->clock_each_task_;
      for (; i < n; ++i) {
        if (this->should_stop()) break;
        if (clock) this->restart_clock();
        decltype(auto) task = task_at(i);  // a reference into the batch, or a task made here
        if constexpr (Outcomes) {
          try {
            if constexpr (std::is_void_v<R>) {
              std::invoke(task);
              this->results_.emplace_back(std::in_place);
            } else {
              this->results_.emplace_back(std::in_place, std::invoke(task));
            }
          } catch (...) {
            this->results_.emplace_back(std::current_exception());
          }
        } else if constexpr (std::is_void_v<R>) {
          std::invoke(task);
        } else if (out) {
          out[i] = std::invoke(task);
        } else {
          this->results_.emplace_back(std::invoke(task));
        }
      }
    } catch (...) {
      this->error_ = std::current_exception();
      this->error_offset_ = i;
    }
    this->completed_ = i;
    if (i == n) this->release_tasks();  // kept otherwise: the batch may be tried again
  }

  void encode_tasks(CodeRef& entry, OutputStream& out, BufferSink* sink) override {
    if constexpr (PortableTask<TaskT, R>::value) {
      const void* code = nullptr;
      if constexpr (Outcomes)
        code = reinterpret_cast<const void*>(&outcome_entry<TaskT, R>);
      else
        code = reinterpret_cast<const void*>(&batch_entry<TaskT, R>);
      const CodeRef& ref = code_ref(code);
      if (!(entry == ref)) entry = ref;  // (mostly the same as for the last batch: no copy)
      EncodeArchive ar(out, sink);
      const std::size_t n = task_count();
      ar.save_u64(n);
      for (std::size_t i = 0; i < n; ++i) save_task(ar, task_at(i));
    } else {
      throw_not_portable(type_name<TaskT>(), PortableTask<TaskT, R>::why());
    }
  }

  void decode_results(std::span<const std::byte> bytes, BufferSource* source) override {
    if constexpr (PortableTask<TaskT, R>::value) {
      if constexpr (Outcomes) {
        decode_outcomes(bytes, source);
      } else if constexpr (std::is_void_v<R>) {
        this->completed_ = static_cast<std::size_t>(decode<std::uint64_t>(bytes, source));
      } else if (!decode_into_output(bytes, source)) {
        decode_into(this->results_, bytes, source);
        this->completed_ = this->results_.size();
      }
      if (this->completed_ != task_count()) throw_result_count(this->completed_, task_count());
      this->release_tasks();
    }
  }

  void reset_results() noexcept override {
    if constexpr (requires { this->results_.clear(); }) this->results_.clear();
  }

  bool fill_error(std::exception_ptr error) override {
    if constexpr (Outcomes) {
      while (this->results_.size() < this->size_) this->results_.emplace_back(error);
      this->completed_ = this->size_;
      this->release_tasks();
      return true;
    } else {
      (void)error;
      return false;
    }
  }

  std::unique_ptr<BatchBase> copy_tasks() const override {
    if constexpr (Store::copyable) {
      auto copy = std::make_unique<BatchOf>();
      this->copy_tasks_into(*copy);
      copy->size_ = this->size_;
      return copy;
    } else {
      return nullptr;
    }
  }

  std::string task_function(std::size_t i) const override {
    if constexpr (requires(const TaskT& t) { t.function(); }) {
      using F = std::remove_cvref_t<decltype(std::declval<const TaskT&>().function())>;
      if constexpr (std::is_pointer_v<F>) {
        if (i < task_count()) {
          try {
            return function_name(reinterpret_cast<const void*>(task_at(i).function()));
          } catch (...) {  // making the task threw: the type still names it
          }
        }
      }
      return type_name<F>();
    } else {
      return type_name<TaskT>();
    }
  }

 private:
  // A batch with its place in the call's output (direct()) decodes its
  // results there, through this thread's scratch vector: it keeps no vector
  // of its own (a batch_size = 1 call would allocate, and keep, one per
  // task). False, with nothing decoded, for a batch without that place.
  bool decode_into_output(std::span<const std::byte> bytes, BufferSource* source) {
    if constexpr (std::is_same_v<R, bool>) {  // never written directly (std::vector<bool> has no R&)
      return false;
    } else {
      if (!direct()) return false;
      static thread_local std::vector<R> scratch;
      struct Clear {
        std::vector<R>& s;
        ~Clear() {
          s.clear();
          if (s.capacity() * sizeof(R) > (std::size_t{1} << 16)) std::vector<R>().swap(s);
        }
      } clear{scratch};
      decode_into(scratch, bytes, source);
      this->completed_ = scratch.size();
      for (std::size_t k = 0; k < scratch.size() && k < task_count(); ++k) direct()[k] = std::move(scratch[k]);
      return true;
    }
  }

  // What outcome_entry wrote: the count, then per task [1][result] or [0][error envelope].
  void decode_outcomes(std::span<const std::byte> bytes, BufferSource* source) {
    if constexpr (PortableTask<TaskT, R>::value) {
      this->results_.clear();
      decode_with<std::vector<Outcome<R>>>(bytes, source, [&](DecodeArchive& ar) {
        const std::uint64_t n = ar.load_count();
        for (std::uint64_t i = 0; i < n; ++i) {
          std::uint8_t ok = 0;
          ar(ok);
          if (ok) {
            if constexpr (std::is_void_v<R>)
              this->results_.emplace_back(std::in_place);
            else
              this->results_.emplace_back(std::in_place, load_value<R>(ar));
          } else {
            std::string envelope;
            ar(envelope);
            this->results_.emplace_back(remote_error(envelope, static_cast<std::size_t>(i)));
          }
        }
      });
      this->completed_ = this->results_.size();
    }
  }

  std::exception_ptr remote_error(const std::string& envelope, std::size_t i) const {
    try {
      return decode_failure(std::as_bytes(std::span<const char>(envelope.data(), envelope.size())),
                            this->first_index_, [this](std::size_t k) { return this->task_function_name(k); })
          .error;
    } catch (...) {
      (void)i;
      return std::current_exception();
    }
  }
};

/// The output of a claimed call. Its storage is reserved by the caller
/// (from the caller's heap, which frees it); its elements are made by the
/// first claiming batch to start, slice after slice, while the others
/// already run tasks: a range whose elements are made is written in
/// place, one that is not yet made keeps its results aside (pending),
/// moved in once every element is made.
template <class R>
struct ClaimOutput {
  std::shared_ptr<std::vector<R>> vec;  // capacity reserved for `size`: its storage never moves
  R* base = nullptr;                    // vec's storage
  std::size_t size = 0;
  std::atomic<std::size_t> ready{0};    // elements [0, ready) are made
  std::atomic<bool> unmade{true};       // the first batch to start makes them
  std::mutex m;                         // pending, and its last move
  std::vector<std::pair<std::size_t, std::vector<R>>> pending;

  /// Makes the `size` default results (about 256 KiB at a time), then moves
  /// the pending ones in. Throws what R's default constructor throws.
  void make() {
    constexpr std::size_t slice = sizeof(R) >= (std::size_t(256) << 10) ? 1 : (std::size_t(256) << 10) / sizeof(R);
    for (std::size_t k = 0; k < size;) {
      k = size - k < slice ? size : k + slice;
      vec->resize(k);  // within the reserved capacity: no element moves
      ready.store(k, std::memory_order_release);
    }
    std::lock_guard lock(m);
    for (auto& [first, results] : pending) std::ranges::move(results, base + first);
    pending.clear();
    vec.reset();  // the batches hold it (ResultBatch::output_); the Results moves it out when alone
  }
  /// The results of tasks first.., run while their elements were not made.
  void put(std::size_t first, std::vector<R>&& results) {
    std::lock_guard lock(m);
    if (first + results.size() <= ready.load(std::memory_order_acquire))
      std::ranges::move(results, base + first);
    else
      pending.emplace_back(first, std::move(results));
  }
};

/// A batch that claims index ranges of a sliced input (ClaimRange) and runs
/// them until none is left or the call stops, writing each result straight
/// into the call's output (Source::claimers: list calls on threads). Its
/// completed_ counts the tasks it ran; error_offset_ is the input index of
/// the task that threw.
template <class View, class TaskT, class R>
class ClaimBatch final : public ResultBatch<R> {
 public:
  std::shared_ptr<View> view_;
  std::shared_ptr<ClaimRange> range_;
  std::shared_ptr<ClaimOutput<R>> out_;  // null when R is void

  void run_tasks() noexcept override {
    const auto first = std::ranges::begin(std::as_const(*view_));
    std::size_t i = 0, ran = 0, begin = 0, end = 0;
    // Runs tasks [from, to), `store` taking each; false when the call stopped.
    auto run = [&](std::size_t from, std::size_t to, auto&& store) {
      for (i = from; i < to; ++i) {
        if (this->should_stop()) return false;
        TaskT task = first[static_cast<std::ptrdiff_t>(i)];
        store(i, task);
        ++ran;
      }
      return true;
    };
    try {
      [[maybe_unused]] std::size_t ready = 0;  // what this batch last saw of out_->ready
      if constexpr (!std::is_void_v<R>)
        if (out_->unmade.exchange(false)) out_->make();
      while (!this->should_stop() && range_->claim(begin, end)) {
        bool going = true;
        if constexpr (std::is_void_v<R>) {
          going = run(begin, end, [](std::size_t, TaskT& task) { std::invoke(task); });
        } else {
          if (end > ready) ready = out_->ready.load(std::memory_order_acquire);
          if (end <= ready) {
            going = run(begin, end, [&](std::size_t k, TaskT& task) { out_->base[k] = std::invoke(task); });
          } else {  // not made yet: keep these results aside
            i = begin;  // what fails here fails at the range's first task
            std::vector<R> aside(end - begin);
            going = run(begin, end, [&](std::size_t k, TaskT& task) { aside[k - begin] = std::invoke(task); });
            if (going) {
              i = begin;
              out_->put(begin, std::move(aside));
            }
          }
        }
        if (!going) break;
      }
    } catch (...) {
      this->error_ = std::current_exception();
      this->error_offset_ = i;
    }
    this->completed_ += ran;
  }

  void claims_done() noexcept override {
    if constexpr (!std::is_void_v<R>) this->direct_ = out_->base;
  }

  // Never called: claiming batches are made for thread backends only.
  [[noreturn]] void encode_tasks(CodeRef&, OutputStream&, BufferSink*) override { throw_claimed(); }
  [[noreturn]] void decode_results(std::span<const std::byte>, BufferSource*) override { throw_claimed(); }
  void reset_results() noexcept override {}
  bool fill_error(std::exception_ptr) override { return false; }
  std::unique_ptr<BatchBase> copy_tasks() const override { return nullptr; }
  std::string task_function(std::size_t) const override { return type_name<TaskT>(); }

 private:
  [[noreturn]] static void throw_claimed() {
    throw_not_portable(type_name<TaskT>(), "a batch that claims index ranges runs on threads only");
  }
};

/// Pulls tasks from an input range. `View` is views::all of what the user
/// passed: an owning view for rvalue containers, a ref_view for lvalues.
/// A sliceable input (sliceable_v) is cut into index ranges instead.
template <class View, bool Owns, bool Outcomes = false, bool Split = false>
class RangeSource final : public Source {
 public:
  using TaskT = std::remove_cvref_t<std::ranges::range_reference_t<View>>;
  using R = task_result_t<TaskT>;
  static constexpr bool sliced = Split && sliceable_v<View, TaskT, Outcomes>;
  /// Whether a list call over this input can write its results straight
  /// into the output it returns.
  static constexpr bool can_write_directly = [] {
    if constexpr (!sliced || std::is_void_v<R> || std::is_same_v<R, bool>)
      return false;
    else
      return std::is_default_constructible_v<R> && std::is_move_constructible_v<R> && std::is_move_assignable_v<R>;
  }();

  /// `direct_output`: a list call without a timeout (no batch is ever
  /// abandoned while running): results go straight into the output.
  explicit RangeSource(View view, bool direct_output = false)
      : view_(std::make_shared<View>(std::move(view))), it_(std::ranges::begin(*view_)) {
    if constexpr (std::ranges::sized_range<View>) total_ = static_cast<std::size_t>(std::ranges::size(*view_));
    if constexpr (can_write_directly)
      if (direct_output && *total_ > 0) output_ = std::make_shared<std::vector<R>>();  // sized when used
  }

  std::unique_ptr<BatchBase> pull(std::size_t max) override {
    if constexpr (sliced) {
      if (pulled_ == *total_) return nullptr;
      auto batch = std::make_unique<BatchOf<TaskT, R, Outcomes, SliceTasks<View, TaskT>>>();
      batch->view_ = view_;
      batch->first_ = std::ranges::begin(std::as_const(*view_)) + static_cast<std::ptrdiff_t>(pulled_);
      batch->count_ = std::min(max, *total_ - pulled_);
      batch->size_ = batch->count_;
      if constexpr (can_write_directly) {
        if (output_) {
          if (output_->size() != *total_) output_->resize(*total_);
          batch->output_ = output_;
          batch->direct_ = output_->data() + pulled_;
        }
      }
      pulled_ += batch->count_;
      if constexpr (can_write_directly)
        if (pulled_ == *total_) output_.reset();  // the batches and the Results hold it now
      return batch;
    } else {
      const auto end = std::ranges::end(*view_);
      if (it_ == end) return nullptr;
      auto batch = std::make_unique<BatchOf<TaskT, R, Outcomes>>();
      batch->tasks_.reserve(max);
      for (std::size_t k = 0; k < max && it_ != end; ++k) {
        if constexpr (Owns)
          batch->tasks_.emplace_back(std::ranges::iter_move(it_));
        else
          batch->tasks_.emplace_back(*it_);
        ++it_;
        ++pulled_;
      }
      batch->size_ = batch->tasks_.size();
      return batch;
    }
  }

  std::optional<std::size_t> remaining() const override {
    if (total_) return *total_ - pulled_;
    return std::nullopt;
  }

  std::vector<std::unique_ptr<BatchBase>> claimers(std::size_t count,
                                                   const std::shared_ptr<ClaimRange>& range) override {
    std::vector<std::unique_ptr<BatchBase>> out;
    if constexpr (sliced && (can_write_directly || std::is_void_v<R>)) {
      if (pulled_ != 0 || !total_ || *total_ == 0) return out;
      [[maybe_unused]] std::shared_ptr<ClaimOutput<R>> output;
      if constexpr (!std::is_void_v<R>) {
        if (!output_) return out;
        output = std::make_shared<ClaimOutput<R>>();
        output->size = *total_;
        output->vec = std::move(output_);  // the batches and the Results hold it now
        // Allocated here, from the caller's heap arena (which frees it, and
        // reuses it call after call); its elements are made by a worker.
        output->vec->reserve(*total_);
        output->base = output->vec->data();
      }
      for (std::size_t k = 0; k < count; ++k) {
        auto b = std::make_unique<ClaimBatch<View, TaskT, R>>();
        b->view_ = view_;
        b->range_ = range;
        if constexpr (!std::is_void_v<R>) {
          b->out_ = output;
          b->output_ = output->vec;
        }
        out.push_back(std::move(b));
      }
      pulled_ = *total_;
    }
    return out;
  }

  bool gives_outcomes() const noexcept override { return Outcomes; }
  bool splits() const noexcept override { return sliced; }
  bool small_results() const noexcept override {
    if constexpr (std::is_void_v<R>)
      return true;
    else
      return !Outcomes && std::is_trivially_copyable_v<R> && sizeof(R) <= small_result_bytes;
  }

  std::optional<std::string> portability_problem() const override {
    if constexpr (PortableTask<TaskT, R>::value)
      return std::nullopt;
    else
      return "tasks of type " + type_name<TaskT>() + " cannot travel to another process: " +
             PortableTask<TaskT, R>::why();
  }

 private:
  std::shared_ptr<View> view_;  // shared with the sliced batches
  std::ranges::iterator_t<View> it_;
  std::shared_ptr<std::vector<R>> output_;  // list mode, can_write_directly: the call's results
  std::size_t pulled_ = 0;
  std::optional<std::size_t> total_;
};

}  // namespace detail

/// Makes a worker initializer, joblib's initializer/initargs: f(args...)
/// runs once in each new worker process of a process backend, before any
/// task. f must be a function or a captureless lambda; args are encoded.
template <class F, class... Args>
Initializer initializer(F f, Args... args) {
  using D = Delayed<std::decay_t<F>, std::decay_t<Args>...>;
  static_assert(detail::PortableTask<D, std::remove_cvref_t<std::invoke_result_t<D&>>>::value,
                "joblib::initializer(f, args...): f must be a function or a lambda without captures, and the "
                "arguments must be encodable");
  D call(std::in_place, std::move(f), std::move(args)...);
  detail::MemoryOutput out;
  detail::EncodeArchive ar(out);
  detail::save_task(ar, call);
  Initializer init;
  init.request = detail::make_init_request(
      detail::code_ref(reinterpret_cast<const void*>(&detail::init_entry<D>)), out.bytes());
  init.description = detail::type_name<std::decay_t<F>>();
  return init;
}

namespace detail {

/// What Results<R> and Results<void> share: the call, the batch being read
/// and the position in it; closing (the call stops when its Results goes).
/// B is ResultBatch<R> (its results are read) or BatchBase (tasks
/// returning void: its completed count is read).
template <class B>
class ResultsCursor {
 public:
  /// Stops the call if it is still running (as destruction does).
  void close() noexcept {
    if (call_) call_->close();
    call_.reset();
    batch_.reset();
    done_ = true;
  }

 protected:
  explicit ResultsCursor(std::shared_ptr<Call> call) : call_(std::move(call)) {}
  ResultsCursor(ResultsCursor&&) noexcept = default;
  ResultsCursor& operator=(ResultsCursor&& o) noexcept {
    if (this != &o) {
      close();
      call_ = std::move(o.call_);
      batch_ = std::move(o.batch_);
      pos_ = o.pos_;
      done_ = o.done_;
    }
    return *this;
  }
  ~ResultsCursor() { close(); }

  void advance() {
    ++pos_;
    fill();
  }
  bool at_end() {
    fill();
    return done_;
  }
  // Makes batch_/pos_ point at an available result, or sets done_.
  void fill() {
    while (!done_ && (!batch_ || pos_ >= available(*batch_))) {
      batch_.reset();
      pos_ = 0;
      if (!call_) {
        done_ = true;
        break;
      }
      std::unique_ptr<BatchBase> b = call_->next();
      if (!b) {
        done_ = true;
        call_.reset();
        break;
      }
      batch_.reset(static_cast<B*>(b.release()));
    }
  }

  std::shared_ptr<Call> call_;
  std::unique_ptr<B> batch_;
  std::size_t pos_ = 0;
  bool done_ = false;

 private:
  static std::size_t available(const B& b) {
    if constexpr (requires { b.result_count(); })
      return b.result_count();
    else
      return b.completed_;
  }
};

}  // namespace detail

/// What Parallel returns: an input range of R, and implicitly a std::vector<R>.
/// In list mode every task has finished when you get it; in generator modes
/// iterating drives the call and throws the call's error when it reaches it.
/// Destroying an unfinished Results stops the call (no further task starts,
/// running thread tasks are waited for). Move-only; not thread-safe.
template <class R>
class Results : public detail::ResultsCursor<detail::ResultBatch<R>> {
  using Cursor = detail::ResultsCursor<detail::ResultBatch<R>>;
  using Cursor::batch_;
  using Cursor::done_;
  using Cursor::fill;
  using Cursor::pos_;

 public:
  using value_type = R;

  class iterator {
   public:
    using value_type = R;
    using difference_type = std::ptrdiff_t;
    using iterator_concept = std::input_iterator_tag;
    using iterator_category = std::input_iterator_tag;
    using reference = R&;
    using pointer = R*;
    iterator() = default;
    explicit iterator(Results* r) : r_(r) {}
    R& operator*() const { return r_->current(); }
    R* operator->() const { return &r_->current(); }
    iterator& operator++() {
      r_->advance();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.done(); }
    friend bool operator==(const iterator& a, const iterator& b) { return a.done() == b.done(); }

   private:
    bool done() const { return !r_ || r_->at_end(); }

    Results* r_ = nullptr;
  };

  explicit Results(std::shared_ptr<detail::Call> call) : Cursor(std::move(call)) {}
  Results(Results&&) noexcept = default;
  Results& operator=(Results&&) noexcept = default;

  /// Input iterator over the results; begin() may block (generator modes).
  iterator begin() {
    fill();
    return iterator(this);
  }
  /// The end: compares equal to an iterator once every result has been taken.
  iterator end() const noexcept { return iterator(); }

  /// Collects the results not yet taken. Throws the call's error.
  std::vector<R> to_vector() {
    fill();
    if (!done_ && pos_ == 0 && batch_->output_ && batch_->first_index_ == 0) {
      // The batches wrote into the call's output: hand it over. A batch
      // with its own results is moved in (none today: spare copies of
      // batches exist only with a timeout, which turns direct output off).
      std::shared_ptr<std::vector<R>> output = batch_->output_;
      while (!done_) {
        if (!batch_->direct_)
          for (std::size_t k = pos_; k < batch_->results_.size(); ++k)
            (*output)[batch_->first_index_ + k] = std::move(batch_->results_[k]);
        pos_ = batch_->result_count();
        fill();
      }
      if (output.use_count() == 1) return std::move(*output);
      return *output;
    }
    std::vector<R> out;
    // One allocation, not log2(n) regrowths and their copies and page faults.
    if (this->call_)
      if (const std::optional<std::size_t> n = this->call_->input_size()) out.reserve(*n);
    while (!done_) {
      for (std::size_t k = pos_, n = batch_->result_count(); k < n; ++k) out.push_back(std::move(batch_->result(k)));
      pos_ = batch_->result_count();
      fill();
    }
    return out;
  }
  operator std::vector<R>() { return to_vector(); }  // NOLINT: implicit, as the API promises

 private:
  R& current() {
    fill();
    return batch_->result(pos_);
  }
};

/// Results of tasks returning void. In list mode the call has finished when
/// you get it. In generator modes iterating drives the call; each element is
/// the input index of a finished task (completion order for
/// generator_unordered). wait() runs the call to its end.
template <>
class Results<void> : public detail::ResultsCursor<detail::BatchBase> {
 public:
  using value_type = std::size_t;

  class iterator {
   public:
    using value_type = std::size_t;
    using difference_type = std::ptrdiff_t;
    using iterator_concept = std::input_iterator_tag;
    using iterator_category = std::input_iterator_tag;
    using reference = std::size_t;
    using pointer = void;
    iterator() = default;
    explicit iterator(Results* r) : r_(r) {}
    std::size_t operator*() const { return r_->current(); }
    iterator& operator++() {
      r_->advance();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.done(); }
    friend bool operator==(const iterator& a, const iterator& b) { return a.done() == b.done(); }

   private:
    bool done() const { return !r_ || r_->at_end(); }

    Results* r_ = nullptr;
  };

  explicit Results(std::shared_ptr<detail::Call> call) : ResultsCursor(std::move(call)) {}
  Results(Results&&) noexcept = default;
  Results& operator=(Results&&) noexcept = default;

  iterator begin() {
    fill();
    return iterator(this);
  }
  iterator end() const noexcept { return iterator(); }

  /// Runs the call to its end. Throws the call's error.
  void wait() {
    while (!at_end()) advance();
  }
 private:
  std::size_t current() {
    fill();
    return batch_->first_index_ + pos_;
  }
};

/// Readable parallel mapping, as joblib's Parallel:
///
///     std::vector<double> r = joblib::Parallel({.n_jobs = 2})(
///         std::views::iota(0, 10) |
///         std::views::transform([](int i) { return joblib::delayed(root)(i * i); }));
///
/// The constructor validates what it can (std::invalid_argument naming the
/// field); a call resolves the backend and n_jobs from the options, the
/// innermost scope and the defaults (BackendError for an unknown or broken
/// backend). A Parallel object holds only options: it is cheap to copy and
/// may be used from several threads at once.
class Parallel {
 public:
  /// Throws std::invalid_argument for a bad field (n_jobs 0, batch_size < 1,
  /// unparsable pre_dispatch or max_nbytes, negative timeout).
  explicit Parallel(ParallelOptions options = {}) : options_(std::move(options)) { detail::validate(options_); }

  /// Runs a range of tasks. An rvalue range is moved into the call and kept
  /// while the result needs it; an lvalue range is referenced and must
  /// outlive the result. The range is pulled lazily (pre_dispatch).
  /// List mode: returns when every task has run, throwing the first task
  /// error (in submission order) with its own type. Generator modes: errors
  /// are thrown while iterating.
  template <std::ranges::input_range Range>
    requires std::is_invocable_v<std::remove_cvref_t<std::ranges::range_reference_t<Range>>&>
  auto operator()(Range&& tasks) const {
    return run<false>(std::forward<Range>(tasks));
  }

  /// Runs a range of tasks as operator() does, but never stops at a task's
  /// error: every task runs, and each element is the task's
  /// joblib::Outcome<R>, its value or its exception (its own type, across
  /// processes too). Retries (ParallelOptions::retries) apply first; a task
  /// whose worker died for good gets TerminatedWorkerError as its outcome.
  /// The call itself still throws what ends a call: TimeoutError,
  /// CancelledError, BackendError, or what the input range throws.
  template <std::ranges::input_range Range>
    requires std::is_invocable_v<std::remove_cvref_t<std::ranges::range_reference_t<Range>>&>
  auto outcomes(Range&& tasks) const {
    using View = std::views::all_t<Range>;
    constexpr bool owns = !std::is_lvalue_reference_v<Range> &&
                          !std::ranges::view<std::remove_cvref_t<Range>>;
    using SourceT = detail::RangeSource<View, owns, true>;
    using R = typename SourceT::R;
    auto source = std::make_unique<SourceT>(std::views::all(std::forward<Range>(tasks)));
    return Results<Outcome<R>>(detail::start_call(options_, std::move(source)));
  }

  /// Sugar for (*this)(delayed(f)(x) for x in inputs). Does not compile
  /// when f cannot be called with one element of `inputs`.
  /// An iota or a contiguous input (vector, array, span) is cut into index
  /// ranges that the workers make their tasks from, as TBB's parallel_for
  /// does; any other input is pulled lazily, in order, by the caller.
  template <class F, std::ranges::input_range Inputs>
    requires delayable<F, std::ranges::range_reference_t<Inputs>>
  auto map(F&& f, Inputs&& inputs) const {
    return run<detail::splittable_input_v<Inputs>>(
        std::views::all(std::forward<Inputs>(inputs)) |
        std::views::transform([g = delayed(std::forward<F>(f))](auto&& x) { return g(std::forward<decltype(x)>(x)); }));
  }

  /// The options given to the constructor.
  const ParallelOptions& options() const noexcept { return options_; }

 private:
  // operator() and map: `Split` lets a sliceable input be cut into index
  // ranges (detail::SliceTasks), and a list call write into its output.
  template <bool Split, class Range>
  auto run(Range&& tasks) const {
    using View = std::views::all_t<Range>;
    constexpr bool owns = !std::is_lvalue_reference_v<Range> &&
                          !std::ranges::view<std::remove_cvref_t<Range>>;
    using SourceT = detail::RangeSource<View, owns, false, Split>;
    using R = typename SourceT::R;
    auto source = std::make_unique<SourceT>(std::views::all(std::forward<Range>(tasks)),
                                            options_.return_as == ReturnAs::list && !options_.timeout);
    return Results<R>(detail::start_call(options_, std::move(source)));
  }

 public:
  /// "Parallel(n_jobs=N)" as joblib prints it in progress messages.
  std::string repr() const { return detail::parallel_repr(options_); }

 private:
  ParallelOptions options_;
};

}  // namespace joblib
