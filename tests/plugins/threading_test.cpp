// The threading plugin: persistent pools, thread reuse, per-level pools.
#include "test_sync.hpp"

#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <ranges>
#include <set>
#include <thread>

namespace {

using joblib::delayed;
using joblib::Parallel;
using namespace std::chrono_literals;

std::thread::id thread_id() { return std::this_thread::get_id(); }

std::set<std::thread::id> ids_of_a_call(int n_jobs) {
  std::vector<std::thread::id> ids = Parallel({.n_jobs = n_jobs, .backend = "threading", .batch_size = 1})(
      std::views::iota(0, 64) | std::views::transform([](int) { return delayed(thread_id)(); }));
  return {ids.begin(), ids.end()};
}

struct Meeting {
  bool saw_the_other = false;
  std::thread::id thread;
};

TEST(ThreadingBackendTest, RunsOnNJobsWorkerThreadsAtOnceNotTheCaller) {
  // Two tasks that each wait (10 s at most) until both have started: both
  // meet only if two threads run them at the same time.
  std::atomic<int> arrived{0};
  auto meet = [&arrived] {
    ++arrived;
    const bool met = joblib_test::wait_until([&] { return arrived.load() == 2; }, 10s);
    return Meeting{met, std::this_thread::get_id()};
  };
  std::vector<Meeting> m = Parallel({.n_jobs = 2, .backend = "threading", .batch_size = 1})(
      std::views::iota(0, 2) | std::views::transform([&](int) { return delayed(meet)(); }));
  ASSERT_EQ(m.size(), 2u);
  EXPECT_TRUE(m[0].saw_the_other) << "the two tasks did not run at the same time";
  EXPECT_TRUE(m[1].saw_the_other) << "the two tasks did not run at the same time";
  EXPECT_NE(m[0].thread, m[1].thread);
  for (const Meeting& one : m) EXPECT_NE(one.thread, std::this_thread::get_id());
  // And never more threads than n_jobs, none of them the caller.
  auto ids = ids_of_a_call(2);
  EXPECT_EQ(ids.count(std::this_thread::get_id()), 0u);
  EXPECT_LE(ids.size(), 2u);
}

TEST(ThreadingBackendTest, PoolIsReusedAcrossCalls) {
  std::set<std::thread::id> all;
  for (int i = 0; i < 10; ++i) {
    auto ids = ids_of_a_call(3);
    all.insert(ids.begin(), ids.end());
  }
  EXPECT_LE(all.size(), 3u);  // the same 3 threads every time
}

TEST(ThreadingBackendTest, ConcurrentCallersShareThePoolSafely) {
  std::vector<std::thread> callers;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t)
    callers.emplace_back([&] {
      for (int round = 0; round < 20; ++round) {
        std::vector<int> r = Parallel({.n_jobs = 2, .backend = "threading"})
                                 .map([](int x) { return x + 1; }, std::views::iota(0, 50));
        if (r.size() == 50 && r[49] == 50) ++ok;
      }
    });
  for (auto& c : callers) c.join();
  EXPECT_EQ(ok.load(), 80);
}

}  // namespace
