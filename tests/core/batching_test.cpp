// The dispatcher's pieces that stand alone (core/parallel/batching.hpp):
// joblib's auto batch size, the cut of a sized input's tail, and the store
// of finished batches.
#include "batching.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <string>

using joblib::detail::AutoBatchSize;
using joblib::detail::cut_tail;
using joblib::detail::SequenceStore;

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

TEST(SequenceStoreTest, ClearDropsWhatIsStored) {
  SequenceStore<int> s;
  s.put(0, std::make_unique<int>(1));
  s.put(5, std::make_unique<int>(2));
  s.clear();
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(s.take(5), nullptr);
}
