// The dispatcher's pieces that stand alone (core/parallel/batching.hpp):
// joblib's auto batch size, the cut of a sized input's tail, the timeout
// watchdog's clock, and the store of finished batches.
#include "batching.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using joblib::detail::AutoBatchSize;
using joblib::detail::cut_tail;
using joblib::detail::SequenceStore;
using joblib::detail::TimeoutClock;

TEST(AutoBatchSizeTest, StartsAtOneAndDoublesWhileBatchesAreFast) {
  AutoBatchSize a;
  EXPECT_EQ(a.next(), 1u);
  std::size_t expected = 1;
  for (int i = 0; i < 5; ++i) {
    a.completed(a.size(), 0.001);  // far under 0.2 s: at most double
    expected *= 2;
    EXPECT_EQ(a.next(), expected);
  }
}

TEST(AutoBatchSizeTest, GrowsOnlyToWhatWouldTakeTwiceTheIdealDuration) {
  AutoBatchSize a;
  a.completed(1, 0.15);  // ideal = floor(1 * 0.2 / 0.15) * 2 = 2
  EXPECT_EQ(a.next(), 2u);
  a.completed(2, 0.19);  // ideal = floor(2 * 0.2 / 0.19) * 2 = 4
  EXPECT_EQ(a.next(), 4u);
  a.completed(4, 0.5);   // between 0.2 and 2 s: kept
  EXPECT_EQ(a.next(), 4u);
}

TEST(AutoBatchSizeTest, ShrinksWhenBatchesAreSlow) {
  AutoBatchSize a;
  for (int i = 0; i < 4; ++i) {
    a.completed(a.size(), 0.001);
    a.next();
  }
  ASSERT_EQ(a.size(), 16u);
  a.completed(16, 8.0);  // ideal = floor(16 * 0.2 / 8) = 0 -> 2 * 0 -> at least 1
  EXPECT_EQ(a.next(), 1u);
}

TEST(AutoBatchSizeTest, OnlyFullSizeBatchesCount) {
  AutoBatchSize a;
  a.completed(1, 0.001);
  ASSERT_EQ(a.next(), 2u);
  a.completed(1, 0.001);  // a tail batch of another size: ignored
  EXPECT_EQ(a.next(), 2u);
}

TEST(AutoBatchSizeTest, SaysWhatJoblibSaysWhenTheSizeChanges) {
  AutoBatchSize a;
  a.completed(1, 0.01);
  std::string message;
  EXPECT_EQ(a.next(&message), 2u);
  EXPECT_EQ(message, "Batch computation too fast (0.01s.) Setting batch_size=2.");
  for (int i = 0; i < 3; ++i) {
    a.completed(a.size(), 0.001);
    a.next();
  }
  ASSERT_EQ(a.size(), 16u);
  a.completed(16, 3.0);  // ideal = floor(16 * 0.2 / 3) = 1 -> 2
  message.clear();
  EXPECT_EQ(a.next(&message), 2u);
  EXPECT_EQ(message, "Batch computation too slow (3.0s.) Setting batch_size=2.");
  message.clear();
  a.completed(2, 1.0);  // in range: no change, no message
  EXPECT_EQ(a.next(&message), 2u);
  EXPECT_EQ(message, "");
}

TEST(AutoBatchSizeTest, ATimeoutKeepsBatchesWellUnderIt) {
  AutoBatchSize a(1.0);  // ideal range 0.1 .. 0.25 s
  a.completed(1, 0.15);  // fast enough without a timeout, not with one: kept at 1
  EXPECT_EQ(a.next(), 1u);
  AutoBatchSize b(1.0);
  for (int i = 0; i < 3; ++i) {
    b.completed(b.size(), 0.001);
    b.next();
  }
  ASSERT_EQ(b.size(), 8u);
  b.completed(8, 0.3);  // over timeout/4: shrinks (ideal = floor(8 * 0.1 / 0.3) = 2 -> 4)
  EXPECT_EQ(b.next(), 4u);
}

TEST(CutTailTest, TheLastBatchesOfASizedInputAreFiner) {
  EXPECT_EQ(cut_tail(8, 1000, 2), 8u);  // plenty left
  EXPECT_EQ(cut_tail(8, 15, 2), 1u);    // under 8 * 2 left: 15 / 20 -> at least 1
  EXPECT_EQ(cut_tail(100, 99, 1), 9u);
  EXPECT_EQ(cut_tail(100, 100, 1), 100u);
  EXPECT_EQ(cut_tail(0, 0, 4), 1u);     // never 0
}

TEST(SequenceStoreTest, TakesInOrderWhateverOrderItemsArrive) {
  SequenceStore<int> s;
  s.put(2, std::make_unique<int>(20));
  s.put(0, std::make_unique<int>(0));
  EXPECT_EQ(s.size(), 2u);
  EXPECT_EQ(s.take(1), nullptr);  // not there yet
  auto zero = s.take(0);
  ASSERT_NE(zero, nullptr);
  EXPECT_EQ(*zero, 0);
  EXPECT_EQ(s.take(0), nullptr);  // taken once only
  s.put(1, std::make_unique<int>(10));
  EXPECT_EQ(*s.take(1), 10);
  EXPECT_EQ(*s.take(2), 20);
  EXPECT_TRUE(s.empty());
}

namespace {
// A run of numbers, as a folded batch of a list call is a run of tasks.
struct Numbers {
  std::vector<int> numbers;
  bool foldable = true;
};
bool append(Numbers& first, Numbers& next) {
  if (!first.foldable || !next.foldable) return false;
  first.numbers.insert(first.numbers.end(), next.numbers.begin(), next.numbers.end());
  return true;
}
std::unique_ptr<Numbers> run_of(int n, bool foldable = true) { return std::make_unique<Numbers>(Numbers{{n}, foldable}); }

// Takes every item in order, as a list call's results are walked; returns
// the numbers, and checks that each item stands for as many numbers as it
// holds.
std::vector<int> walk(SequenceStore<Numbers>& s, std::size_t count) {
  std::vector<int> out;
  for (std::size_t seq = 0; seq < count;) {
    std::size_t span = 0;
    auto r = s.take(seq, &span);
    if (!r) {
      ADD_FAILURE() << "nothing at " << seq;
      break;
    }
    EXPECT_EQ(span, r->numbers.size());
    out.insert(out.end(), r->numbers.begin(), r->numbers.end());
    seq += span;
  }
  return out;
}
}  // namespace

TEST(SequenceStoreTest, ItemsInOrderFoldIntoOne) {
  SequenceStore<Numbers> s;
  for (int i = 0; i < 10; ++i) s.put_folding(static_cast<std::size_t>(i), run_of(i), append);
  EXPECT_EQ(s.size(), 1u);
  EXPECT_EQ(walk(s, 10), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_TRUE(s.empty());
}

TEST(SequenceStoreTest, ItemsOutOfOrderFoldWithBothNeighbours) {
  SequenceStore<Numbers> s;
  for (int i : {3, 1, 5, 0, 2, 4}) s.put_folding(static_cast<std::size_t>(i), run_of(i), append);
  EXPECT_EQ(s.size(), 1u);
  EXPECT_EQ(walk(s, 6), (std::vector<int>{0, 1, 2, 3, 4, 5}));
}

TEST(SequenceStoreTest, AnItemThatDoesNotFoldStaysApartAndTheRestStillFold) {
  SequenceStore<Numbers> s;
  for (int i : {0, 1, 4, 3, 2, 5, 6}) s.put_folding(static_cast<std::size_t>(i), run_of(i, i != 3), append);
  EXPECT_EQ(s.size(), 3u);  // 0-2, 3 (which folds with neither), 4-6
  std::size_t span = 0;
  auto first = s.take(0, &span);
  EXPECT_EQ(span, 3u);
  EXPECT_EQ(first->numbers, (std::vector<int>{0, 1, 2}));
  auto three = s.take(3, &span);
  EXPECT_EQ(span, 1u);
  EXPECT_EQ(three->numbers, (std::vector<int>{3}));
  auto rest = s.take(4, &span);
  EXPECT_EQ(span, 3u);
  EXPECT_EQ(rest->numbers, (std::vector<int>{4, 5, 6}));
  EXPECT_TRUE(s.empty());
}

TEST(SequenceStoreTest, AnyArrivalOrderKeepsOneItemPerRunAndTakesEveryNumberInOrder) {
  std::mt19937 random(12345);
  for (int round = 0; round < 50; ++round) {
    const int n = 200;
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), random);
    SequenceStore<Numbers> s;
    std::vector<bool> stored(n, false);
    for (int i : order) {
      s.put_folding(static_cast<std::size_t>(i), run_of(i, i % 37 != 5), append);
      stored[static_cast<std::size_t>(i)] = true;
      // One item per run of stored numbers (a run also breaks before a number
      // that does not fold, and after one).
      std::size_t runs = 0;
      for (int k = 0; k < n; ++k)
        if (stored[static_cast<std::size_t>(k)] &&
            (k == 0 || !stored[static_cast<std::size_t>(k - 1)] || k % 37 == 5 || (k - 1) % 37 == 5))
          ++runs;
      ASSERT_EQ(s.size(), runs) << "round " << round << ", after " << i;
    }
    std::vector<int> all(n);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(walk(s, n), all) << "round " << round;
    EXPECT_TRUE(s.empty());
  }
}

TEST(SequenceStoreTest, ClearDropsWhatIsStored) {
  SequenceStore<int> s;
  s.put(0, std::make_unique<int>(1));
  s.put(5, std::make_unique<int>(2));
  s.clear();
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(s.take(5), nullptr);
}

// --- the timeout watchdog's clock ------------------------------------------

namespace {
constexpr std::int64_t kSec = 1'000'000'000;
}

TEST(TimeoutClockTest, ARunningBatchIsOverTheLimitFromItsStart) {
  const TimeoutClock clock(1.0);
  const TimeoutClock::Batch running{.started_ns = 10 * kSec, .dispatched_ns = 9 * kSec};
  auto look = clock.look({&running, 1}, 0, 10 * kSec + kSec / 2);
  EXPECT_TRUE(look.over.empty());
  EXPECT_EQ(look.deadline_ns, 11 * kSec + 1);  // the next look: just past its limit
  look = clock.look({&running, 1}, 0, 11 * kSec + 1);
  ASSERT_EQ(look.over.size(), 1u);
  EXPECT_EQ(look.over[0].index, 0u);
  EXPECT_FALSE(look.over[0].waiting);
}

TEST(TimeoutClockTest, AWaitingBatchCountsFromTheLastCompletionOrTheEarliestStart) {
  const TimeoutClock clock(1.0);
  // Dispatched at 0 s, waiting; a batch of the call completed at 5 s.
  std::vector<TimeoutClock::Batch> batches{{.started_ns = 0, .dispatched_ns = 0}};
  EXPECT_TRUE(clock.look(batches, 5 * kSec, 5 * kSec + kSec / 2).over.empty());
  auto look = clock.look(batches, 5 * kSec, 6 * kSec + 1);
  ASSERT_EQ(look.over.size(), 1u);
  EXPECT_TRUE(look.over[0].waiting);
  // A running batch that started at 7 s moves the waiting one's clock too:
  // the worker it holds frees up within the timeout if its task ends.
  batches.push_back({.started_ns = 7 * kSec, .dispatched_ns = 0});
  look = clock.look(batches, 5 * kSec, 7 * kSec + kSec / 2);
  EXPECT_TRUE(look.over.empty());
  EXPECT_EQ(look.deadline_ns, 8 * kSec + 1);
}

TEST(TimeoutClockTest, RunningBatchesAreReportedBeforeWaitingOnes) {
  const TimeoutClock clock(1.0);
  const std::vector<TimeoutClock::Batch> batches{
      {.started_ns = 0, .dispatched_ns = 1},           // waiting since 1 ns
      {.started_ns = 2, .dispatched_ns = 1},           // running since 2 ns
      {.started_ns = 3, .dispatched_ns = 1, .stopping = true},  // being stopped: not reported
  };
  const auto look = clock.look(batches, 0, 5 * kSec);
  ASSERT_EQ(look.over.size(), 2u);
  EXPECT_EQ(look.over[0].index, 1u);
  EXPECT_FALSE(look.over[0].waiting);
  EXPECT_EQ(look.over[1].index, 0u);
  EXPECT_TRUE(look.over[1].waiting);
}

TEST(TimeoutClockTest, AHugeLimitNeitherOverflowsNorSleepsMoreThanAnHour) {
  const TimeoutClock clock(1e10);  // 1e19 ns would overflow an int64
  EXPECT_GT(clock.limit_ns(), 0);
  const TimeoutClock::Batch running{.started_ns = 1, .dispatched_ns = 1};
  const auto look = clock.look({&running, 1}, 0, 100 * kSec);
  EXPECT_TRUE(look.over.empty());
  EXPECT_EQ(look.deadline_ns, 100 * kSec + TimeoutClock::kMaxWaitNs);
}
