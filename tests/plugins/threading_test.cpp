// The threading plugin: persistent pools, thread reuse, per-level pools.
#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <ranges>
#include <set>
#include <thread>

namespace {

using joblib::delayed;
using joblib::Parallel;

std::thread::id thread_id() { return std::this_thread::get_id(); }

std::set<std::thread::id> ids_of_a_call(int n_jobs) {
  std::vector<std::thread::id> ids = Parallel({.n_jobs = n_jobs, .backend = "threading", .batch_size = 1})(
      std::views::iota(0, 64) | std::views::transform([](int) { return delayed(thread_id)(); }));
  return {ids.begin(), ids.end()};
}

TEST(ThreadingBackendTest, RunsOnWorkerThreadsNotTheCaller) {
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
