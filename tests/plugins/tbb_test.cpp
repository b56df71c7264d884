// The tbb plugin: nested calls on oneTBB arenas always get threads.
#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <ranges>
#include <thread>
#include <vector>

namespace {
using joblib::delayed;
using joblib::Parallel;
using namespace std::chrono_literals;

std::atomic<int> g_outer_running{0};

int inner_task(int x) { return x + 1; }

// Waits until every outer task runs (so each oneTBB worker of the outer
// arena is held by a task waiting for its nested call), then makes a nested
// tbb call.
int outer_task(int x) {
  ++g_outer_running;
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (g_outer_running.load() < 2 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  std::vector<int> r = Parallel({.n_jobs = 2, .backend = "tbb"}).map(inner_task, std::views::iota(0, 8));
  int s = 0;
  for (int v : r) s += v;
  return s + x;
}

TEST(TbbTest, NestedCallsGetThreadsWhileEveryOuterWorkerWaits) {
  for (int round = 0; round < 10; ++round) {
    g_outer_running = 0;
    std::vector<int> r = Parallel({.n_jobs = 2, .backend = "tbb", .batch_size = 1}).map(outer_task, std::vector{0, 100});
    EXPECT_EQ(r, (std::vector{36, 136})) << "round " << round;
  }
}

}  // namespace
