// The dispatcher: order, return modes, errors, abort, nesting, laziness,
// back-pressure, timeout and progress. Backend-independent behaviour is in
// conformance/; this file covers what needs threads to observe.
#include "doc_quotes.hpp"
#include "test_sync.hpp"

#include "progress.hpp"

#include <joblib/joblib.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <regex>

#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <numeric>
#include <ranges>
#include <set>
#include <sstream>
#include <thread>

namespace {

using joblib::delayed;
using joblib::Parallel;
using joblib::ReturnAs;
using joblib_test::wait_until;
using namespace std::chrono_literals;

double root(int x) { return std::sqrt(x); }
int square(int x) { return x * x; }

// Waits until `flag` is set (at most 10 s, so a broken test fails instead of hanging).
bool wait_for(const std::atomic<bool>& flag) { return wait_until([&] { return flag.load(); }, 10s); }

// Waits until the running task's call asks it to stop (at most 10 s).
bool wait_for_stop_request() { return wait_until([] { return joblib::stop_requested(); }, 10s); }

TEST(ParallelTest, JoblibSqrtExample) {
  std::vector<double> r = Parallel({.n_jobs = 2})(
      std::views::iota(0, 10) | std::views::transform([](int i) { return delayed(root)(i * i); }));
  EXPECT_EQ(r, (std::vector<double>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST(ParallelTest, MapIsSugarForDelayed) {
  std::vector<double> s = Parallel({.n_jobs = 2}).map(root, std::vector{1, 4, 9});
  EXPECT_EQ(s, (std::vector<double>{1, 2, 3}));
}

TEST(ParallelTest, ResultDoesNotReferToItsParallelObject) {
  auto results = Parallel({.n_jobs = 2, .return_as = ReturnAs::generator}).map(square, std::vector{1, 2, 3});
  std::vector<int> got(results.begin(), results.end());
  EXPECT_EQ(got, (std::vector<int>{1, 4, 9}));
}

TEST(ParallelTest, LvalueRangeIsReferencedNotCopied) {
  std::vector<joblib::Task<int>> tasks;
  for (int i = 0; i < 5; ++i) tasks.push_back(delayed(square)(i));
  std::vector<int> r = Parallel({.n_jobs = 2})(tasks);
  EXPECT_EQ(r, (std::vector<int>{0, 1, 4, 9, 16}));
  EXPECT_TRUE(static_cast<bool>(tasks[0]));  // an lvalue range is not moved from
}

TEST(ParallelTest, TasksOfDifferentCallablesMixAsTaskR) {
  struct Triple {
    int operator()(int x) const { return 3 * x; }
  };
  std::vector<joblib::Task<int>> tasks{delayed(square)(3), delayed(Triple{})(3), delayed([](int x) { return x + 1; })(3),
                                       [] { return 42; }};
  std::vector<int> r = Parallel({.n_jobs = 2})(std::move(tasks));
  EXPECT_EQ(r, (std::vector<int>{9, 9, 4, 42}));
}

TEST(ParallelTest, ArgumentsAreCapturedByValue) {
  std::vector<int> data{1, 2, 3};
  auto task = delayed([](const std::vector<int>& v) { return v.size(); })(data);
  data.clear();
  std::vector<std::size_t> r = Parallel({.n_jobs = 2})(std::vector{task});
  EXPECT_EQ(r, (std::vector<std::size_t>{3}));
}

TEST(ParallelTest, VoidTasksFinishBeforeTheCallReturns) {
  std::atomic<int> sum{0};
  auto results = Parallel({.n_jobs = 2})(std::views::iota(1, 101) | std::views::transform([&](int i) {
                                           return delayed([&sum](int x) { sum += x; })(i);
                                         }));
  EXPECT_EQ(sum.load(), 5050);
  static_assert(std::is_same_v<decltype(results), joblib::Results<void>>);
}

TEST(ParallelTest, VoidGeneratorYieldsTaskIndices) {
  auto results = Parallel({.n_jobs = 2, .return_as = ReturnAs::generator_unordered})(
      std::views::iota(0, 20) | std::views::transform([](int i) { return delayed([](int) {})(i); }));
  std::set<std::size_t> seen(results.begin(), results.end());
  EXPECT_EQ(seen.size(), 20u);
  EXPECT_EQ(*seen.rbegin(), 19u);
}

TEST(ParallelTest, EmptyInputGivesEmptyResult) {
  std::vector<int> r = Parallel({.n_jobs = 2}).map(square, std::vector<int>{});
  EXPECT_TRUE(r.empty());
}

TEST(ParallelTest, KeepsOrderOnUnevenTasks) {
  // The sleeps are the workload (later tasks tend to finish first); the
  // order asserted holds however long they take.
  auto slow_first = [](int i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(i % 3 == 0 ? 5 : 0));
    return i;
  };
  std::vector<int> r = Parallel({.n_jobs = 2, .batch_size = 1}).map(slow_first, std::views::iota(0, 30));
  std::vector<int> expected(30);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(r, expected);
}

TEST(ParallelTest, UnorderedGeneratorGivesEveryResultOnce) {
  auto r = Parallel({.n_jobs = 2, .return_as = ReturnAs::generator_unordered}).map(square, std::views::iota(0, 100));
  std::multiset<int> got(r.begin(), r.end());
  std::multiset<int> expected;
  for (int i = 0; i < 100; ++i) expected.insert(i * i);
  EXPECT_EQ(got, expected);
}

TEST(ParallelTest, UnorderedGeneratorYieldsInCompletionOrder) {
  // Task 0 waits until task 1 has been delivered: only completion order can finish.
  std::atomic<bool> one_delivered{false};
  auto r = Parallel({.n_jobs = 2, .batch_size = 1, .return_as = ReturnAs::generator_unordered})(
      std::views::iota(0, 2) | std::views::transform([&](int i) {
        return delayed([&one_delivered](int k) {
          if (k == 0) wait_for(one_delivered);
          return k;
        })(i);
      }));
  std::vector<int> order;
  for (int v : r) {
    order.push_back(v);
    if (v == 1) one_delivered = true;
  }
  EXPECT_EQ(order, (std::vector<int>{1, 0}));
}

// ---- errors ----------------------------------------------------------------

TEST(ErrorTest, TaskExceptionKeepsItsTypeAndMessage) {
  auto f = [](int i) -> int {
    if (i == 3) throw std::out_of_range("index 3 is out of range");
    return i;
  };
  try {
    Parallel({.n_jobs = 2}).map(f, std::views::iota(0, 10)).to_vector();
    FAIL();
  } catch (const std::out_of_range& e) {
    EXPECT_STREQ(e.what(), "index 3 is out of range");
  }
}

TEST(ErrorTest, FirstFailureInSubmissionOrderWins) {
  // Task 1 fails first in time; task 0 fails later. The caller sees task 0's error.
  std::atomic<bool> zero_started{false};
  auto f = [&zero_started](int i) -> int {
    if (i == 0) {
      zero_started = true;
      wait_for_stop_request();
      throw std::invalid_argument("task 0");
    }
    wait_for(zero_started);
    throw std::runtime_error("task 1");
  };
  try {
    Parallel({.n_jobs = 2, .batch_size = 1}).map(f, std::views::iota(0, 2)).to_vector();
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "task 0");
  }
}

TEST(ErrorTest, TasksNotYetStartedAreNotStarted) {
  // Task 0 fails; every other task is still running when it does (each
  // waits until the call asks it to stop; one 10 s bound for them all, so a
  // build that runs the whole input fails instead of hanging).
  std::atomic<int> ran{0};
  const auto until = std::chrono::steady_clock::now() + 10s;
  auto f = [&ran, until](int i) {
    if (i == 0) throw std::runtime_error("boom");
    ++ran;
    wait_until([] { return joblib::stop_requested(); },
               std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now()));
    return i;
  };
  EXPECT_THROW(Parallel({.n_jobs = 2, .batch_size = 1}).map(f, std::views::iota(0, 1000)).to_vector(),
               std::runtime_error);
  EXPECT_LT(ran.load(), 50);  // bounded by the pre_dispatch window, not the input
}

TEST(ErrorTest, ErrorInTheInputRangeReachesTheCaller) {
  auto producer = std::views::iota(0, 100) | std::views::transform([](int i) {
                    if (i == 7) throw std::logic_error("producer failed at 7");
                    return delayed(square)(i);
                  });
  try {
    Parallel({.n_jobs = 2}).operator()(producer).to_vector();
    FAIL();
  } catch (const std::logic_error& e) {
    EXPECT_STREQ(e.what(), "producer failed at 7");
  }
}

TEST(ErrorTest, GeneratorDeliversResultsBeforeTheError) {
  auto f = [](int i) -> int {
    if (i == 5) throw std::domain_error("five");
    return i;
  };
  auto r = Parallel({.n_jobs = 1, .return_as = ReturnAs::generator}).map(f, std::views::iota(0, 10));
  std::vector<int> got;
  try {
    for (int v : r) got.push_back(v);
    FAIL();
  } catch (const std::domain_error& e) {
    EXPECT_STREQ(e.what(), "five");
  }
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(ErrorTest, CallIsUsableAgainAfterAnError) {
  auto f = [](int i) -> int {
    if (i == 1) throw std::runtime_error("x");
    return i;
  };
  EXPECT_THROW(Parallel({.n_jobs = 2}).map(f, std::views::iota(0, 4)).to_vector(), std::runtime_error);
  std::vector<int> r = Parallel({.n_jobs = 2}).map(square, std::views::iota(0, 4));
  EXPECT_EQ(r, (std::vector<int>{0, 1, 4, 9}));
}

TEST(ErrorTest, BadOptionsNameTheField) {
  EXPECT_THAT([] { Parallel({.batch_size = 0}); },
              ::testing::ThrowsMessage<std::invalid_argument>(
                  ::testing::HasSubstr("batch_size must be 'auto' or a positive integer, got: 0")));
  EXPECT_THAT([] { Parallel({.pre_dispatch = "lots"}); },
              ::testing::ThrowsMessage<std::invalid_argument>(::testing::HasSubstr("pre_dispatch")));
  EXPECT_THAT([] { Parallel({.timeout = -1.0}); },
              ::testing::ThrowsMessage<std::invalid_argument>(::testing::HasSubstr("timeout")));
  EXPECT_THAT([] { Parallel({.max_nbytes = "1Z"}); },
              ::testing::ThrowsMessage<std::invalid_argument>(::testing::HasSubstr("max_nbytes")));
}

TEST(ErrorTest, PreDispatchBelowOneIsRefusedAtCallTime) {
  EXPECT_THAT([] { Parallel({.n_jobs = 2, .pre_dispatch = "n_jobs - 2"}).map(square, std::vector{1}).to_vector(); },
              ::testing::ThrowsMessage<std::invalid_argument>(::testing::HasSubstr("pre_dispatch")));
}

// ---- nesting ---------------------------------------------------------------

TEST(NestingTest, TasksSeeNestingLevelOne) {
  std::vector<int> levels = Parallel({.n_jobs = 2})(std::views::iota(0, 4) | std::views::transform([](int) {
                                                     return delayed([] { return joblib::nesting_level(); })();
                                                   }));
  EXPECT_EQ(levels, (std::vector<int>(4, 1)));
}

TEST(NestingTest, NestedParallelWithoutNJobsRunsSequentiallyInTheTask) {
  auto outer = [] {
    const auto me = std::this_thread::get_id();
    std::vector<bool> same = Parallel()(std::views::iota(0, 4) | std::views::transform([me](int) {
                                          return delayed([me] { return std::this_thread::get_id() == me; })();
                                        }));
    return std::all_of(same.begin(), same.end(), [](bool b) { return b; });
  };
  std::vector<bool> r = Parallel({.n_jobs = 2})(std::views::iota(0, 2) | std::views::transform([&](int) {
                                                 return delayed(outer)();
                                               }));
  EXPECT_EQ(r, (std::vector<bool>{true, true}));
}

TEST(NestingTest, LevelsGoThreadsThenSequential) {
  // joblib's test_nested_parallelism_limit: threading at level 1, sequential below.
  auto inner = [] { return joblib::nesting_level(); };
  auto middle = [&] {
    std::vector<int> r = Parallel({.n_jobs = 2})(std::views::iota(0, 2) | std::views::transform([&](int) {
                                                   return delayed(inner)();
                                                 }));
    return r[0] * 10 + joblib::nesting_level();
  };
  std::vector<int> r = Parallel({.n_jobs = 2})(std::views::iota(0, 2) | std::views::transform([&](int) {
                                                 return delayed(middle)();
                                               }));
  EXPECT_EQ(r, (std::vector<int>{21, 21}));  // middle at level 1, inner at level 2
}

// ---- laziness, pre_dispatch and back-pressure ---------------------------------

TEST(DispatchTest, ProducerIsPulledAsJoblibsExampleShows) {
  // reference/001: pre_dispatch='1.5*n_jobs' -> 3 produced before any result,
  // then one more per finished task.
  std::vector<std::string> log;
  std::mutex m;
  auto producer = std::views::iota(0, 6) | std::views::transform([&](int i) {
                    std::lock_guard lock(m);
                    log.push_back("Produced " + std::to_string(i));
                    return delayed(root)(i);
                  });
  std::vector<double> r = Parallel({.n_jobs = 2,
                                    .pre_dispatch = "1.5*n_jobs",
                                    .batch_size = 1,
                                    .on_progress = [&](std::size_t done, std::optional<std::size_t>) {
                                      std::lock_guard lock(m);
                                      log.push_back("Done " + std::to_string(done));
                                    }})(producer);
  EXPECT_EQ(r.size(), 6u);
  std::vector<std::string> expected{"Produced 0", "Produced 1", "Produced 2", "Done 1", "Produced 3",
                                    "Done 2",     "Produced 4", "Done 3",     "Produced 5", "Done 4",
                                    "Done 5",     "Done 6"};
  EXPECT_EQ(log, expected);
}

TEST(DispatchTest, AllPreDispatchPullsTheWholeInputFirst) {
  std::atomic<int> produced{0};
  std::atomic<int> produced_when_first_ran{-1};
  auto f = [&](int i) {
    int expected = -1;
    produced_when_first_ran.compare_exchange_strong(expected, produced.load());
    return i;
  };
  auto producer = std::views::iota(0, 50) | std::views::transform([&](int i) {
                    ++produced;
                    return delayed(f)(i);
                  });
  std::vector<int> r = Parallel({.n_jobs = 2, .pre_dispatch = "all", .batch_size = 1})(producer);
  EXPECT_EQ(r.size(), 50u);
  EXPECT_EQ(produced.load(), 50);
}

TEST(DispatchTest, GeneratorAppliesBackPressure) {
  std::atomic<int> produced{0};
  std::atomic<int> finished{0};
  auto producer = std::views::iota(0, 1000) | std::views::transform([&](int i) {
                    ++produced;
                    return delayed([&finished](int x) {
                      ++finished;
                      return x * x;
                    })(i);
                  });
  auto r = Parallel({.n_jobs = 2, .pre_dispatch = "2 * n_jobs", .batch_size = 1,
                     .return_as = ReturnAs::generator})(producer);
  auto it = r.begin();
  EXPECT_EQ(*it, 0);
  // A slow consumer: it holds on while every task produced so far finishes.
  // The workers are then idle, and only the window keeps the producer back.
  EXPECT_TRUE(wait_until([&] { return finished.load() == produced.load(); }, 10s));
  EXPECT_LE(produced.load(), 4 + 1);
  int count = 0;
  for (; it != r.end(); ++it) ++count;
  EXPECT_EQ(count, 1000);
}

TEST(DispatchTest, DroppingAGeneratorStopsTheRest) {
  // Task 0 returns at once; the others are still running when the generator
  // is dropped (each waits until the call asks it to stop, 10 s at most).
  std::atomic<int> started{0};
  std::atomic<int> running{0};
  {
    auto r = Parallel({.n_jobs = 2, .batch_size = 1, .return_as = ReturnAs::generator})(
        std::views::iota(0, 1000) | std::views::transform([&](int i) {
          return delayed([&started, &running](int x) {
            ++started;
            ++running;
            if (x > 0) wait_for_stop_request();
            --running;
            return x;
          })(i);
        }));
    auto it = r.begin();
    EXPECT_EQ(*it, 0);
  }  // destroyed part way: returns only once nothing runs any more
  EXPECT_EQ(running.load(), 0) << "a task still ran after the generator was destroyed";
  const int after = started.load();
  EXPECT_LT(after, 100);  // the rest of the input is not run
  // Nothing of the dropped call starts later, not even once the pool has
  // served another call.
  std::vector<int> later = Parallel({.n_jobs = 2}).map(square, std::views::iota(0, 4));
  EXPECT_EQ(later, (std::vector<int>{0, 1, 4, 9}));
  EXPECT_EQ(started.load(), after);
}

// Batches of a call, counted by on_progress (called once per finished batch).
std::size_t batches_of(joblib::ParallelOptions o, int n) {
  std::atomic<std::size_t> batches{0};
  o.on_progress = [&](std::size_t, std::optional<std::size_t>) { ++batches; };
  auto r = Parallel(o).map([](int i) { return i + 1; }, std::views::iota(0, n));
  long sum = 0;
  for (int v : r) sum += v;
  EXPECT_EQ(sum, long(n) * (n + 1) / 2);
  return batches.load();
}

TEST(DispatchTest, AutoBatchesGrowUnderAGeneratorWindow) {
  // The window counts tasks; refilled slot by slot, every batch stayed the
  // size of the one that completed (1 task): 20000 batches.
  const std::size_t b = batches_of({.n_jobs = 2, .backend = "threading", .pre_dispatch = "64",
                                    .return_as = ReturnAs::generator}, 20000);
  EXPECT_LT(b, 20000u / 4);
}

TEST(DispatchTest, AGeneratorOfSmallResultsGrowsItsBatchesAsAListDoes) {
  // Small plain results (int here): the default window of 2 * n_jobs counts
  // batches, as in list mode and joblib, so trivial tasks are not held to
  // batches of pre_dispatch / n_jobs = 2 tasks (10000 batches, a round trip
  // each on a process backend).
  for (ReturnAs mode : {ReturnAs::generator, ReturnAs::generator_unordered}) {
    const std::size_t b = batches_of({.n_jobs = 2, .backend = "threading", .return_as = mode}, 20000);
    EXPECT_LT(b, 1000u);
  }
}

TEST(DispatchTest, AGeneratorOfLargeResultsKeepsItsWindowInTasksUnderAutoBatching) {
  // Results that may be large (a std::vector): the window counts tasks held
  // (running, finished but not taken, the batch being iterated), whatever
  // batch size auto batching wants: memory for results stays bounded.
  std::atomic<int> produced{0};
  std::atomic<int> finished{0};
  auto producer = std::views::iota(0, 5000) | std::views::transform([&](int i) {
                    ++produced;
                    return delayed([&finished](int x) {
                      ++finished;
                      return std::vector<int>(8, x);
                    })(i);
                  });
  auto r = Parallel({.n_jobs = 2, .return_as = ReturnAs::generator})(producer);
  auto it = r.begin();
  EXPECT_EQ((*it)[0], 0);
  EXPECT_TRUE(wait_until([&] { return finished.load() == produced.load(); }, 10s));
  EXPECT_LE(produced.load(), 4 + 1);  // 2 * n_jobs tasks, plus the one being iterated
  int count = 1;
  for (++it; it != r.end(); ++it) ++count;
  EXPECT_EQ(count, 5000);
}

TEST(DispatchTest, AllPreDispatchCutsTheInputIntoBatchesNotSingleTasks) {
  // "all" dispatches everything before any batch completes: auto batching
  // has no measure yet, and batches of one task would cost a round trip each.
  EXPECT_LE(batches_of({.n_jobs = 2, .backend = "threading", .pre_dispatch = "all"}, 20000), 200u);
  EXPECT_LE(batches_of({.n_jobs = 2, .backend = "threading", .pre_dispatch = "all", .return_as = ReturnAs::generator},
                       20000),
            200u);
  // A fixed batch_size is kept.
  EXPECT_EQ(batches_of({.n_jobs = 2, .backend = "threading", .pre_dispatch = "all", .batch_size = 1}, 100), 100u);
}

TEST(DispatchTest, FixedBatchSizeGroupsTasks) {
  std::vector<std::thread::id> ids = Parallel({.n_jobs = 2, .pre_dispatch = "all", .batch_size = 5})(
      std::views::iota(0, 20) | std::views::transform([](int) {
        return delayed([] { return std::this_thread::get_id(); })();
      }));
  // Each batch of 5 runs as one loop on one thread; the last 5 tasks are the
  // tail (fewer than batch_size * n_jobs left), which joblib cuts finer.
  for (int b = 0; b < 15; b += 5)
    for (int i = b; i < b + 5; ++i) EXPECT_EQ(ids[static_cast<std::size_t>(i)], ids[static_cast<std::size_t>(b)]);
}

// ---- timeout -----------------------------------------------------------------

TEST(TimeoutTest, ListModeRaisesPromptly) {
  // Task 1 is stuck: it ignores stop requests and ends only when the test
  // lets it go (or after 30 s, so that a build which waits for it fails
  // instead of hanging). The state is shared, not on this stack: an
  // abandoned task may outlive the test.
  struct Stuck {
    std::atomic<bool> running{false}, released{false}, ended{false}, told_to_stop{false};
  };
  auto stuck = std::make_shared<Stuck>();
  auto f = [stuck](int i) {
    if (i == 1) {
      stuck->running = true;
      wait_until([&] { return stuck->released.load(); }, 30s);
      stuck->told_to_stop = joblib::stop_requested();
      stuck->ended = true;
    }
    return i;
  };
  try {
    Parallel({.n_jobs = 2, .timeout = 0.2, .batch_size = 1}).map(f, std::views::iota(0, 4)).to_vector();
    ADD_FAILURE() << "expected a TimeoutError";
  } catch (const joblib::TimeoutError& e) {
    EXPECT_STREQ(e.what(), "a task ran longer than the timeout of 0.2 s (in a batch of 1 task starting at task 1)");
    joblib_test::expect_doc_quotes("backends.md", "`" + std::string(e.what()) + "`");
    EXPECT_TRUE(stuck->running.load());
    EXPECT_FALSE(stuck->ended.load()) << "the call waited for the stuck task";
  }
  stuck->released = true;
  EXPECT_TRUE(wait_until([&] { return stuck->ended.load(); }, 30s));
  EXPECT_TRUE(stuck->told_to_stop.load()) << "the task that ran over was not asked to stop";
}

TEST(TimeoutTest, GeneratorRaisesWhileIterating) {
  auto f = [](int i) {
    if (i == 2) wait_until([] { return joblib::stop_requested(); }, 5s);  // stuck until the call gives up on it
    return i;
  };
  auto r = Parallel({.n_jobs = 2, .timeout = 0.2, .batch_size = 1, .return_as = ReturnAs::generator})
               .map(f, std::views::iota(0, 4));
  EXPECT_THROW(
      {
        for (int v : r) (void)v;
      },
      joblib::TimeoutError);
}

TEST(TimeoutTest, FastTasksDoNotTimeOut) {
  std::vector<int> r = Parallel({.n_jobs = 2, .timeout = 5.0}).map(square, std::views::iota(0, 100));
  EXPECT_EQ(r.size(), 100u);
}
}  // namespace

namespace {

TEST(ParallelTest, BoolResultsIterate) {
  auto r = joblib::Parallel({.n_jobs = 2, .return_as = joblib::ReturnAs::generator})
               .map([](int x) { return x % 2 == 0; }, std::views::iota(0, 6));
  std::vector<bool> got;
  for (bool b : r) got.push_back(b);
  EXPECT_EQ(got, (std::vector<bool>{true, false, true, false, true, false}));
}

TEST(TimeoutTest, IsPerTaskNotPerBatch) {
  // 3000 tasks of 1 ms, timeout 0.15 s: auto batching must not turn this into
  // a timeout (batches of several tasks each under the limit). The sleeps are
  // the workload, each 150 times shorter than the limit.
  auto one_ms = [](int i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return i;
  };
  std::vector<int> r = joblib::Parallel({.n_jobs = 2, .timeout = 0.15}).map(one_ms, std::views::iota(0, 3000));
  EXPECT_EQ(r.size(), 3000u);
}

}  // namespace

namespace {

// ---- the messages docs/errors.md and docs/backends.md quote -----------------

using joblib_test::expect_doc_quotes;

template <class F>
std::string invalid_argument_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(DocMessagesTest, ParallelOptionsAreRefusedWithTheDocumentedMessages) {
  const std::vector<std::string> messages{
      invalid_argument_of([] { Parallel({.n_jobs = 0}); }),
      invalid_argument_of([] { Parallel({.batch_size = 0}); }),
      invalid_argument_of([] { Parallel({.timeout = -1.0}); }),
      invalid_argument_of([] { Parallel({.verbose = -1}); }),
      invalid_argument_of([] { Parallel({.max_nbytes = "1Z"}); }),
      invalid_argument_of([] { Parallel({.pre_dispatch = "lots"}); }),
      invalid_argument_of([] { Parallel({.pre_dispatch = "1000001"}); }),
      invalid_argument_of([] { Parallel({.pre_dispatch = "1+1+1+1+1+1+1+1+1+1+1+1+1+1+1+1"}); }),
      invalid_argument_of([] { Parallel({.n_jobs = 2, .pre_dispatch = "n_jobs - 2"}).map(square, std::vector{1}); }),
  };
  const std::vector<std::string> expected{
      "n_jobs == 0 in Parallel has no meaning",
      "batch_size must be 'auto' or a positive integer, got: 0",
      "timeout must be a positive number of seconds, got: -1",
      "verbose must be >= 0, got: -1",
      "max_nbytes: Invalid literal for size give: 1Z (type str) should be alike '10G', '500M', '50K'.",
      "pre_dispatch: 'lots' is not a valid or supported arithmetic expression.",
      "pre_dispatch: Numeric literal 1000001 is too large, max is 1000000.",
      "pre_dispatch: Expression '1+1+1+1+1+1+1+1+1+1+1+1+1+1+1+'... is too long. Max length is 30, got 31.",
      "pre_dispatch must give at least 1 batch, got 0 from 'n_jobs - 2'",
  };
  EXPECT_EQ(messages, expected);
  for (const std::string& m : expected) expect_doc_quotes("errors.md", "`" + m + "`");
}

// A backend that fails every batch without saying why.
class SilentFailureBackend final : public joblib::ParallelBackendBase {
 public:
  using ParallelBackendBase::ParallelBackendBase;
  std::string name() const override { return "silent_failure"; }
  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c;
    c.uses_threads = true;
    c.supports_sharedmem = true;
    return c;
  }
  void submit(joblib::Batch& b) noexcept override { b.fail(nullptr); }
};

TEST(DocMessagesTest, ABatchFailedWithoutAReasonIsABackendError) {
  joblib::register_parallel_backend("silent_failure", [](const joblib::BackendInit& i) {
    return std::make_unique<SilentFailureBackend>(i);
  });
  try {
    Parallel({.n_jobs = 2, .backend = "silent_failure"}).map(square, std::vector{1, 2}).to_vector();
    ADD_FAILURE() << "no error";
  } catch (const joblib::BackendError& e) {
    EXPECT_STREQ(e.what(), "a backend failed a batch without saying why");
    expect_doc_quotes("errors.md", "`" + std::string(e.what()) + "`");
  }
}

TEST(DocMessagesTest, ASequentialCallWarnsOnceThatItHasNoTimeout) {
  // Once per process: the check runs in a process of its own.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string expected =
      "UserWarning: The backend class 'SequentialBackend' does not support timeout. You have set 'timeout' in "
      "Parallel but the 'timeout' parameter will not be used.";
  expect_doc_quotes("backends.md", "`" + expected + "`");
  EXPECT_EXIT(
      {
        ::testing::internal::CaptureStderr();
        std::vector<int> a = Parallel({.n_jobs = 1, .timeout = 1.0}).map(square, std::views::iota(0, 3));
        std::vector<int> b = Parallel({.timeout = 2.0}).map(square, std::views::iota(0, 3));
        const std::string err = ::testing::internal::GetCapturedStderr();
        std::fprintf(stderr, "stderr was:\n%s", err.c_str());
        std::_Exit(err == expected + "\n" && a == b && a == std::vector<int>{0, 1, 4} ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(DocMessagesTest, VerboseLinesHaveJoblibsFormat) {
  joblib::detail::ProgressPrinter printer(11, "Parallel(n_jobs=2)", false);
  joblib::detail::ProgressState s;
  s.n_tasks = 25;
  ::testing::internal::CaptureStderr();
  printer.message("Using backend ThreadingBackend with 2 concurrent workers.");
  s.completed_tasks = 4;
  s.dispatched_tasks = 6;
  s.dispatched_batches = 6;
  printer.print_progress(s);  // input still being pulled, size known
  joblib::detail::ProgressState unsized = s;
  unsized.n_tasks.reset();
  printer.print_progress(unsized);  // size unknown
  s.iterating = false;  // input exhausted: joblib's frequency rule (25 // 11 + 1 = 3)
  s.completed_tasks = 23;
  s.dispatched_tasks = 25;
  printer.print_progress(s);
  s.completed_tasks = 25;
  s.completed = true;
  EXPECT_TRUE(printer.print_progress(s));
  const std::string err = ::testing::internal::GetCapturedStderr();
  const std::regex lines(
      R"(\[Parallel\(n_jobs=2\)\]: Using backend ThreadingBackend with 2 concurrent workers\.
\[Parallel\(n_jobs=2\)\]: Done  4 out of 25 \| elapsed: +[0-9]+\.[0-9]s
\[Parallel\(n_jobs=2\)\]: Done   4 tasks      \| elapsed: +[0-9]+\.[0-9]s
\[Parallel\(n_jobs=2\)\]: Done 23 out of 25 \| elapsed: +[0-9]+\.[0-9]s remaining: +[0-9]+\.[0-9]s
\[Parallel\(n_jobs=2\)\]: Done 25 out of 25 \| elapsed: +[0-9]+\.[0-9]s finished
)");
  EXPECT_TRUE(std::regex_match(err, lines)) << err;
  for (const char* quoted : {"`Using backend ThreadingBackend with 2 concurrent workers.`",
                             "`Done  4 out of 25 \\| elapsed:    0.0s`", "`Done   4 tasks      \\| elapsed:    0.0s`",
                             "`Done 23 out of 25 \\| elapsed:    0.2s remaining:    0.0s`",
                             "`Done 25 out of 25 \\| elapsed:    0.3s finished`"})
    expect_doc_quotes("backends.md", quoted);
}

}  // namespace
