// Timeouts on the thread backends: prompt for every call, never waiting for
// tasks an earlier call abandoned, and exact about what "no timeout" means.
#include "doc_quotes.hpp"

#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <ranges>
#include <string>
#include <thread>
#include <vector>

namespace {
using joblib::delayed;
using joblib::Parallel;
using joblib::ReturnAs;
using namespace std::chrono_literals;

// Tasks that hold their worker until the test lets them go (or 60 s pass).
std::atomic<bool> g_release{false};
std::atomic<int> g_stuck_running{0};
std::atomic<int> g_stuck_finished{0};

int stuck(int x) {
  ++g_stuck_running;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (!g_release.load() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  ++g_stuck_finished;
  return x;
}

// A quick task that reports whether any stuck task had finished when it ran.
bool stuck_had_finished(int) { return g_stuck_finished.load() > 0; }

void release_stuck_tasks() {
  g_release = true;
  while (g_stuck_finished.load() < g_stuck_running.load()) std::this_thread::sleep_for(1ms);
  g_release = false;
  g_stuck_running = 0;
  g_stuck_finished = 0;
}

class TimeoutBackends : public ::testing::TestWithParam<const char*> {};

TEST_P(TimeoutBackends, LaterCallsGetFreeWorkersAfterATimeout) {
  // Every worker is stuck in a task of the first call, which times out.
  EXPECT_THROW(Parallel({.n_jobs = 2, .backend = GetParam(), .timeout = 0.2, .batch_size = 1}).map(stuck, std::vector{1, 2}),
               joblib::TimeoutError);
  // The next calls (list, generator, unordered generator, same n_jobs) run
  // on workers of their own, while the stuck tasks still hold theirs.
  for (ReturnAs mode : {ReturnAs::list, ReturnAs::generator, ReturnAs::generator_unordered}) {
    std::vector<bool> seen =
        Parallel({.n_jobs = 2, .backend = GetParam(), .timeout = 30.0, .return_as = mode}).map(stuck_had_finished, std::views::iota(0, 20));
    EXPECT_EQ(seen, std::vector<bool>(20, false)) << "a later call waited for the abandoned tasks";
  }
  // A second timeout right after is as prompt.
  EXPECT_THROW(Parallel({.n_jobs = 2, .backend = GetParam(), .timeout = 0.2, .batch_size = 1, .return_as = ReturnAs::generator})
                   .map(stuck, std::vector{3, 4})
                   .to_vector(),
               joblib::TimeoutError);
  EXPECT_EQ(g_stuck_finished.load(), 0);
  release_stuck_tasks();
}

TEST_P(TimeoutBackends, ABatchWaitingForAWorkerCountsTowardItsTimeout) {
  // Another thread's call (no timeout) holds every worker of the engine this
  // call would share; this call's batches wait, and its timeout fires.
  std::thread other([&] {
    std::vector<int> r = Parallel({.n_jobs = 2, .backend = GetParam(), .batch_size = 1}).map(stuck, std::vector{1, 2});
    EXPECT_EQ(r, (std::vector{1, 2}));
  });
  while (g_stuck_running.load() < 2) std::this_thread::sleep_for(1ms);
  try {
    Parallel({.n_jobs = 2, .backend = GetParam(), .timeout = 0.2, .batch_size = 2})
        .map(stuck_had_finished, std::views::iota(0, 8))
        .to_vector();
    ADD_FAILURE() << "the call waited for the other call's tasks instead of timing out";
  } catch (const joblib::TimeoutError& e) {
    // The first batch that waits is named (docs/backends.md quotes this message).
    EXPECT_STREQ(e.what(), "a batch of 2 tasks starting at task 0 waited longer than the timeout of 0.2 s for a "
                           "worker, and no batch of the call completed meanwhile");
    joblib_test::expect_doc_quotes("backends.md", "`" + std::string(e.what()) + "`");
  }
  EXPECT_EQ(g_stuck_finished.load(), 0);
  release_stuck_tasks();
  other.join();
}

INSTANTIATE_TEST_SUITE_P(Threads, TimeoutBackends, ::testing::Values("threading", "tbb", "openmp"));

int twice(int x) { return 2 * x; }

TEST(TimeoutTest, TheMessageIsTheOneTheDocsQuote) {
  try {
    Parallel({.n_jobs = 2, .backend = "threading", .timeout = 0.2, .batch_size = 1}).map(stuck, std::vector{0}).to_vector();
    ADD_FAILURE() << "no timeout";
  } catch (const joblib::TimeoutError& e) {
    EXPECT_STREQ(e.what(), "a task ran longer than the timeout of 0.2 s (in a batch of 1 task starting at task 0)");
    joblib_test::expect_doc_quotes("errors.md", "`" + std::string(e.what()) + "`");
  }
  release_stuck_tasks();
}

TEST(TimeoutTest, InfiniteAndHugeTimeoutsNeverFire) {
  for (double t : {std::numeric_limits<double>::infinity(), 1e10, 1e300, 9.3e9}) {
    for (const char* backend : {"threading", "loky"}) {
      std::vector<int> r = Parallel({.n_jobs = 2, .backend = backend, .timeout = t}).map(twice, std::views::iota(0, 50));
      EXPECT_EQ(r.size(), 50u) << t;
      EXPECT_EQ(r[49], 98) << t << " " << backend;
    }
  }
}

TEST(TimeoutTest, NanAndNonPositiveTimeoutsAreRejected) {
  for (double t : {std::nan(""), 0.0, -1.0, -std::numeric_limits<double>::infinity()}) {
    try {
      Parallel({.n_jobs = 2, .timeout = t}).map(twice, std::views::iota(0, 2)).to_vector();
      ADD_FAILURE() << "timeout " << t << " accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("timeout must be a positive number of seconds"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
