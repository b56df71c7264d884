#pragma once
// Pieces of the dispatcher that can be read and tested alone
// (docs/architecture.md, "dispatch"): joblib's auto batch size, the cut of
// a sized input's tail, the timeout watchdog's clock, and the store of
// finished batches.
#include <joblib/export.hpp>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace joblib::detail {

/// joblib's AutoBatchingMixin: start at 1; while full-size batches take
/// less than 0.2 s the size doubles (at most to what would take 0.4 s);
/// above 2 s it shrinks. With a timeout the bounds shrink to timeout/10 and
/// timeout/4, so that a batch timed as a whole stays well under it.
class JOBLIB_EXPORT AutoBatchSize {
 public:
  static constexpr double kMinIdealBatchDuration = 0.2;
  static constexpr double kMaxIdealBatchDuration = 2.0;

  explicit AutoBatchSize(std::optional<double> timeout = std::nullopt) noexcept;
  /// The current size.
  std::size_t size() const noexcept { return size_; }
  /// joblib's batch_completed(): a batch of `batch_size` tasks ran in
  /// `seconds`; only full-size batches move the smoothed duration.
  void completed(std::size_t batch_size, double seconds) noexcept;
  /// joblib's compute_batch_size(): the size for the next batch. When it
  /// changes and `message` is given, joblib's verbose line is put there
  /// ("Batch computation too fast (0.01s.) Setting batch_size=4.").
  std::size_t next(std::string* message = nullptr);
  /// Starts at `size` instead of 1 (before any batch completed): an input
  /// that costs nothing to cut and whose size is known starts at a share of
  /// it, as TBB's auto partitioner does, instead of ramping up from 1 at a
  /// round trip per doubling. Slow tasks shrink it as usual.
  void start_at(std::size_t size) noexcept { size_ = size == 0 ? 1 : size; }

 private:
  double min_ideal_, max_ideal_;
  std::size_t size_ = 1;
  double smoothed_ = 0.0;
};

/// The tail of a sized input is cut finer, to limit stragglers: with fewer
/// than `batch_size * n_jobs` tasks left, batches of remaining/(10*n_jobs)
/// (at least 1).
JOBLIB_EXPORT std::size_t cut_tail(std::size_t batch_size, std::size_t remaining, int n_jobs) noexcept;

/// The timeout watchdog's clock (joblib 1.5's timeout, per batch): which
/// batches in flight are over the limit, and when to look again.
///
/// A running batch is on the clock from when it (or, for a batch timed task
/// by task, its current task) started. A batch still waiting for a worker is
/// on the clock from when it was dispatched or, if later, from the call's
/// last completed batch or the earliest start among the running batches: a
/// worker busy with tasks that end frees up within the timeout; one held by
/// a stuck task never does (TimeoutError when no batch completes within the
/// timeout).
class JOBLIB_EXPORT TimeoutClock {
 public:
  /// One batch in flight: `started_ns` is 0 while it waits for a worker.
  struct Batch {
    std::int64_t started_ns = 0;
    std::int64_t dispatched_ns = 0;
    bool stopping = false;  // already being stopped: never reported, but its start counts
  };
  /// A batch over the limit: its index in the span given to look().
  struct Over {
    std::size_t index = 0;
    bool waiting = false;  // it never started: it waited for a worker
  };
  struct Look {
    /// Over the limit: the running batches first, then the waiting ones,
    /// each group in the order given (the dispatcher reports the first it
    /// cannot stop alone).
    std::vector<Over> over;
    /// When the next batch not over the limit would be (now + at most the
    /// limit, and at most an hour, for a look that finds nothing).
    std::int64_t deadline_ns = 0;
  };
  /// The longest the watchdog sleeps between two looks.
  static constexpr std::int64_t kMaxWaitNs = std::int64_t{3600} * 1'000'000'000;

  /// A limit of `seconds` (saturated: 1e10 s does not overflow).
  explicit TimeoutClock(double seconds) noexcept;
  std::int64_t limit_ns() const noexcept { return limit_; }
  /// Looks at `batches` at time `now_ns`; `last_completion_ns` is when a
  /// batch of the call last completed (0: none yet).
  Look look(std::span<const Batch> batches, std::int64_t last_completion_ns, std::int64_t now_ns) const;

 private:
  std::int64_t limit_;
};

/// Finished items not yet taken, indexed by sequence number from 0: constant
/// time for the in-order case (list mode and ordered generators), where a
/// std::map of 100,000 small batches cost more than the batches themselves.
/// put_folding() lets an item take in the ones next to it in the sequence,
/// so that a long run of finished items is kept as one (list mode: a call of
/// a million batches keeps a few items, not a million).
template <class T>
class SequenceStore {
 public:
  /// Stores the item of number `seq` (not stored or taken before).
  void put(std::size_t seq, std::unique_ptr<T> item) {
    const std::size_t i = seq - base_;
    if (i == slots_.size()) {  // the next in order: the common case
      slots_.emplace_back().item = std::move(item);
      ++count_;
      return;
    }
    if (i > slots_.size()) slots_.resize(i + 1);
    slots_[i].item = std::move(item);
    ++count_;
  }
  /// Stores the item of number `seq` (not stored or taken before), folded
  /// with the items put_folding() stored next to it where
  /// `fold(T& first, T& next)` takes `next`, the item whose numbers come
  /// right after `first`'s, into `first` (true), or leaves both as they are
  /// (false): the item stored right after it is taken in, and the item it
  /// comes right after takes it in. take() hands out an item with the count
  /// of numbers folded into it.
  template <class Fold>
  void put_folding(std::size_t seq, std::unique_ptr<T> item, Fold&& fold) {
    std::size_t span = 1;
    auto after = runs_.lower_bound(seq);  // the first run after it (in order: none)
    if (after != runs_.end() && after->first == seq + 1 && fold(*item, *after->second.item)) {
      span += after->second.span;
      after = runs_.erase(after);
      --count_;
    }
    if (after != runs_.begin()) {
      auto before = std::prev(after);
      if (before->first + before->second.span == seq && fold(*before->second.item, *item)) {
        before->second.span += span;
        return;
      }
    }
    runs_.emplace_hint(after, seq, Run{std::move(item), span});
    ++count_;
  }
  /// Item `seq` if it is stored and not taken yet, else null. `span`, when
  /// given, is set to the count of numbers the item stands for, from seq (1,
  /// or more once put_folding() folded others into it).
  std::unique_ptr<T> take(std::size_t seq, std::size_t* span = nullptr) {
    if (auto it = runs_.find(seq); it != runs_.end()) {
      std::unique_ptr<T> out = std::move(it->second.item);
      if (span) *span = it->second.span;
      runs_.erase(it);
      --count_;
      return out;
    }
    if (seq < base_ || seq - base_ >= slots_.size()) return nullptr;
    Slot& s = slots_[seq - base_];
    if (!s.item) return nullptr;
    std::unique_ptr<T> out = std::move(s.item);
    if (span) *span = 1;
    s.taken = true;
    --count_;
    while (!slots_.empty() && slots_.front().taken) {
      slots_.pop_front();
      ++base_;
    }
    return out;
  }
  bool empty() const noexcept { return count_ == 0; }
  std::size_t size() const noexcept { return count_; }
  /// Drops every stored item.
  void clear() noexcept {
    for (Slot& s : slots_) s.item.reset();
    runs_.clear();
    count_ = 0;
  }

 private:
  struct Slot {
    std::unique_ptr<T> item;
    bool taken = false;
  };
  struct Run {
    std::unique_ptr<T> item;
    std::size_t span = 1;  // numbers it stands for, from its key
  };
  std::deque<Slot> slots_;
  std::map<std::size_t, Run> runs_;  // put_folding(): by first number
  std::size_t base_ = 0;
  std::size_t count_ = 0;
};

}  // namespace joblib::detail
