// Parallel::map over an iota or a contiguous range is cut into index ranges
// that the workers make their tasks from (issue 14, point 1), and a list
// call writes its results straight into the vector it returns. Values,
// order, error order and the modes must be those of the lazy path, on every
// backend; a user's own range is still pulled by the caller, in order.
#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <stop_token>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using joblib::Parallel;
using joblib::ReturnAs;

double half(int i) { return i * 0.5; }
std::string shout(const std::string& s) { return s + "!"; }
int fails_at_700(int i) {
  if (i == 700) throw std::out_of_range("task 700 fails");
  return i;
}

class Split : public ::testing::TestWithParam<std::string> {
 protected:
  joblib::ParallelOptions opts(joblib::ParallelOptions o = {}) const {
    o.n_jobs = 2;
    o.backend = GetParam();
    return o;
  }
};

TEST_P(Split, MapOverAnIotaGivesEveryResultInOrderInEveryMode) {
  const int n = 20000;
  std::vector<double> expected(n);
  for (int i = 0; i < n; ++i) expected[std::size_t(i)] = half(i);
  EXPECT_EQ(std::vector<double>(Parallel(opts()).map(half, std::views::iota(0, n))), expected);
  // Read one by one instead of converted.
  std::vector<double> one_by_one;
  for (double v : Parallel(opts()).map(half, std::views::iota(0, n))) one_by_one.push_back(v);
  EXPECT_EQ(one_by_one, expected);
  std::vector<double> gen;
  for (double v : Parallel(opts({.return_as = ReturnAs::generator})).map(half, std::views::iota(0, n))) gen.push_back(v);
  EXPECT_EQ(gen, expected);
  std::vector<double> unordered;
  for (double v : Parallel(opts({.return_as = ReturnAs::generator_unordered})).map(half, std::views::iota(0, n)))
    unordered.push_back(v);
  std::sort(unordered.begin(), unordered.end());
  EXPECT_EQ(unordered, expected);
  // Fixed batch sizes and a timeout (its own results per batch) agree.
  EXPECT_EQ(std::vector<double>(Parallel(opts({.batch_size = 7})).map(half, std::views::iota(0, n))), expected);
  EXPECT_EQ(std::vector<double>(Parallel(opts({.timeout = 60.0})).map(half, std::views::iota(0, n))), expected);
}

TEST_P(Split, MapOverAVectorReadsItsElements) {
  std::vector<std::string> words;
  for (int i = 0; i < 3000; ++i) words.push_back("w" + std::to_string(i));
  std::vector<std::string> expected;
  for (const auto& w : words) expected.push_back(w + "!");
  EXPECT_EQ(std::vector<std::string>(Parallel(opts()).map(shout, words)), expected);
  EXPECT_EQ(std::vector<std::string>(Parallel(opts()).map(shout, std::vector<std::string>(words))), expected);
  EXPECT_TRUE(std::vector<std::string>(Parallel(opts()).map(shout, std::vector<std::string>{})).empty());
}

TEST_P(Split, TheFirstErrorInSubmissionOrderStillWins) {
  try {
    (void)std::vector<int>(Parallel(opts()).map(fails_at_700, std::views::iota(0, 5000)));
    ADD_FAILURE() << "no error";
  } catch (const std::out_of_range& e) {
    EXPECT_STREQ(e.what(), "task 700 fails");
  }
  // A generator hands out results in order, then throws as soon as the
  // error is known (joblib's _raise_error_fast): a prefix of the results
  // before the failing task, never one after it.
  std::vector<int> got;
  try {
    for (int v : Parallel(opts({.batch_size = 50, .return_as = ReturnAs::generator}))
                     .map(fails_at_700, std::views::iota(0, 5000)))
      got.push_back(v);
    ADD_FAILURE() << "no error";
  } catch (const std::out_of_range&) {
  }
  ASSERT_LE(got.size(), 700u);
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], int(i));
}

INSTANTIATE_TEST_SUITE_P(Backends, Split,
                         ::testing::Values("sequential", "threading", "tbb", "openmp", "loky", "multiprocessing"));

// An element whose copy (into its task) takes a moment and counts how many
// copies run at once.
struct Probe {
  static inline std::atomic<int> copying{0}, most{0};
  int value = 0;
  Probe() = default;
  explicit Probe(int v) : value(v) {}
  Probe(const Probe& o) : value(o.value) {
    const int now = ++copying;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
    while (std::chrono::steady_clock::now() < until) {
    }
    --copying;
  }
  Probe& operator=(const Probe&) = default;
};
int probe_value(const Probe& p) { return p.value; }

TEST(SplitThreads, MapMakesItsTasksOnTheWorkersInParallel) {
  std::vector<Probe> probes;
  for (int i = 0; i < 4000; ++i) probes.emplace_back(i);
  Probe::most = 0;
  const std::vector<int> r = Parallel({.n_jobs = 2, .backend = "threading"}).map(probe_value, probes);
  ASSERT_EQ(r.size(), 4000u);
  EXPECT_EQ(r[1234], 1234);
  // Both workers copied elements into tasks at the same time: the tasks
  // were not pulled one by one under the call's lock.
  EXPECT_EQ(Probe::most.load(), 2);
}

TEST(SplitThreads, AUsersOwnRangeIsStillPulledOneAtATimeInOrder) {
  // The producer runs under the call's lock (on whichever thread dispatches
  // next), never concurrently: no lock is needed here.
  std::vector<int> produced;
  auto tasks = std::views::iota(0, 5000) | std::views::transform([&](int i) {
                 produced.push_back(i);
                 return joblib::delayed(half)(i);
               });
  const std::vector<double> r = Parallel({.n_jobs = 2, .backend = "threading"})(tasks);
  ASSERT_EQ(r.size(), 5000u);
  ASSERT_EQ(produced.size(), 5000u);
  for (int i = 0; i < 5000; ++i) EXPECT_EQ(produced[std::size_t(i)], i);
}

// List calls on threads: the workers claim index ranges of the input from
// one counter (batch_size tasks, or guided shares) instead of batches made
// under the call's lock. Every task must run once, results in place, the
// error of the lowest index must win, and a cancel must say how far it got.
class SplitClaim : public ::testing::TestWithParam<std::string> {};

TEST_P(SplitClaim, EveryTaskRunsOnceWhateverTheSizesBatchSizesAndWorkers) {
  for (int n : {1, 2, 3, 7, 64, 1000, 4099}) {
    for (std::optional<int> bs : {std::optional<int>{}, std::optional<int>{1}, std::optional<int>{3},
                                  std::optional<int>{1000}}) {
      for (int jobs : {2, 5}) {
        std::vector<std::atomic<int>> runs(static_cast<std::size_t>(n));
        const std::vector<long> r = Parallel({.n_jobs = jobs, .backend = GetParam(), .batch_size = bs})
                                        .map([&](int i) {
                                          ++runs[std::size_t(i)];
                                          return long(i) * 3;
                                        }, std::views::iota(0, n));
        ASSERT_EQ(r.size(), std::size_t(n));
        for (int i = 0; i < n; ++i) {
          ASSERT_EQ(r[std::size_t(i)], long(i) * 3) << "n=" << n << " jobs=" << jobs << " i=" << i;
          ASSERT_EQ(runs[std::size_t(i)].load(), 1) << "n=" << n << " jobs=" << jobs << " i=" << i;
        }
        // Tasks returning void: each runs once too.
        std::vector<std::atomic<int>> void_runs(static_cast<std::size_t>(n));
        Parallel({.n_jobs = jobs, .backend = GetParam(), .batch_size = bs})
            .map([&](int i) { ++void_runs[std::size_t(i)]; }, std::views::iota(0, n))
            .wait();
        for (int i = 0; i < n; ++i) ASSERT_EQ(void_runs[std::size_t(i)].load(), 1) << "void n=" << n << " i=" << i;
      }
    }
  }
}

TEST_P(SplitClaim, TheLowestIndexErrorWinsWhenALaterTaskFailsFirst) {
  for (std::optional<int> bs : {std::optional<int>{1}, std::optional<int>{}}) {
    std::atomic<bool> later_failed{false};
    try {
      (void)std::vector<int>(Parallel({.n_jobs = 2, .backend = GetParam(), .batch_size = bs})
                                 .map([&](int i) {
                                   if (i == 700) {
                                     // Fails only after task 3000 has failed on the other worker.
                                     const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
                                     while (!later_failed && std::chrono::steady_clock::now() < until)
                                       std::this_thread::sleep_for(std::chrono::milliseconds(1));
                                     throw std::out_of_range("task 700 fails");
                                   }
                                   if (i == 3000) {
                                     later_failed = true;
                                     throw std::invalid_argument("task 3000 fails");
                                   }
                                   return i;
                                 }, std::views::iota(0, 5000)));
      ADD_FAILURE() << "no error";
    } catch (const std::out_of_range& e) {
      EXPECT_STREQ(e.what(), "task 700 fails");
    } catch (const std::exception& e) {
      ADD_FAILURE() << "the later task's error won: " << e.what();
    }
    EXPECT_TRUE(later_failed.load());
  }
}

TEST_P(SplitClaim, ACancelledCallCountsEveryTaskThatRan) {
  std::stop_source stop;
  std::atomic<int> ran{0};
  try {
    (void)std::vector<int>(Parallel({.n_jobs = 2, .backend = GetParam(), .batch_size = 1,
                                     .stop_token = stop.get_token()})
                               .map([&](int i) {
                                 if (++ran == 3) stop.request_stop();
                                 return i;
                               }, std::views::iota(0, 100000)));
    FAIL() << "no CancelledError";
  } catch (const joblib::CancelledError& e) {
    EXPECT_EQ(std::string(e.what()), "the call was cancelled: its stop_token was requested (" +
                                         std::to_string(ran.load()) + " of 100000 tasks done)");
  }
  EXPECT_LT(ran.load(), 100000);
}

TEST_P(SplitClaim, ACallStartedRightAfterAnotherGetsEveryWorker) {
  // Two tasks that each wait for the other: they finish only if the call
  // runs them at once. Calls follow each other with no pause (the openmp
  // team's previous region may still be ending when the next call starts).
  for (int call = 0; call < 40; ++call) {
    std::atomic<int> arrived{0};
    const std::vector<int> r = Parallel({.n_jobs = 2, .backend = GetParam(), .batch_size = 1})
                                   .map([&](int i) {
                                     ++arrived;
                                     const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
                                     while (arrived.load() < 2 && std::chrono::steady_clock::now() < until)
                                       std::this_thread::yield();
                                     return arrived.load() >= 2 ? i : -1;
                                   }, std::views::iota(0, 2));
    ASSERT_EQ(r, (std::vector<int>{0, 1})) << "call " << call << ": its two tasks did not run at once";
  }
}

TEST_P(SplitClaim, ACancelWinsOverTheErrorOfATaskThatSeesIt) {
  // Tasks that throw when they see the stop: the call still raises
  // CancelledError, as the batched path does.
  std::stop_source stop;
  std::atomic<int> started{0};
  std::jthread stopper([&] {
    while (started.load() < 2) std::this_thread::yield();
    stop.request_stop();
  });
  try {
    (void)std::vector<int>(Parallel({.n_jobs = 2, .backend = GetParam(), .batch_size = 1,
                                     .stop_token = stop.get_token()})
                               .map([&](int i) {
                                 ++started;
                                 const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
                                 while (!joblib::stop_requested() && std::chrono::steady_clock::now() < until)
                                   std::this_thread::sleep_for(std::chrono::milliseconds(5));
                                 if (joblib::stop_requested()) throw std::runtime_error("a task saw the stop");
                                 return i;
                               }, std::views::iota(0, 100)));
    ADD_FAILURE() << "no error";
  } catch (const joblib::CancelledError& e) {
    EXPECT_NE(std::string(e.what()).find("its stop_token was requested"), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "the task's error won: " << e.what();
  }
}

// A result that counts its copies.
struct Counted {
  static inline std::atomic<int> copies{0};
  int value = 0;
  Counted() = default;
  explicit Counted(int v) : value(v) {}
  Counted(const Counted& o) : value(o.value) { ++copies; }
  Counted& operator=(const Counted& o) {
    value = o.value;
    ++copies;
    return *this;
  }
  Counted(Counted&&) noexcept = default;
  Counted& operator=(Counted&&) noexcept = default;
};

TEST_P(SplitClaim, TheResultsAreWrittenInPlaceAndNeverCopied) {
  Counted::copies = 0;
  const std::vector<Counted> r =
      Parallel({.n_jobs = 2, .backend = GetParam()}).map([](int i) { return Counted(i); }, std::views::iota(0, 100000));
  ASSERT_EQ(r.size(), 100000u);
  for (int i = 0; i < 100000; ++i) ASSERT_EQ(r[std::size_t(i)].value, i);
  EXPECT_EQ(Counted::copies.load(), 0);
}

TEST_P(SplitClaim, PreDispatchStillBoundsTheTasksInFlight) {
  // joblib's pre_dispatch = "1": one batch in flight, so one task at a time.
  std::atomic<int> now{0}, most{0};
  const std::vector<int> r = Parallel({.n_jobs = 2, .backend = GetParam(), .pre_dispatch = "1", .batch_size = 1})
                                 .map([&](int i) {
                                   const int in = ++now;
                                   int seen = most.load();
                                   while (in > seen && !most.compare_exchange_weak(seen, in)) {
                                   }
                                   std::this_thread::sleep_for(std::chrono::milliseconds(1));
                                   --now;
                                   return i;
                                 }, std::views::iota(0, 20));
  ASSERT_EQ(r.size(), 20u);
  EXPECT_EQ(r[19], 19);
  EXPECT_EQ(most.load(), 1);
}

INSTANTIATE_TEST_SUITE_P(Threads, SplitClaim, ::testing::Values("threading", "tbb", "openmp"));

}  // namespace
