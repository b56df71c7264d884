// Resilience beyond joblib (issue 13): retries, every outcome, worker
// recycling, memory caps and cancellation, on every backend where each
// applies. Tasks that must run in worker processes are plain functions and
// keep their state in files (a marker file says "this task ran before").
#include <joblib/joblib.hpp>
#include <joblib/worker_sdk.hpp>

#include "test_sync.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using joblib::delayed;
using joblib::Outcome;
using joblib::Parallel;
using joblib::ParallelOptions;
using joblib::ReturnAs;
using joblib_test::kHangGuard;
using joblib_test::process_gone;
using joblib_test::wait_until;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

// A folder of its own for one test's marker files.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> n{0};
    path = fs::temp_directory_path() / ("joblib_resilience_" + std::to_string(::getpid()) + "_" + std::to_string(++n));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string str() const { return path.string(); }
};

// True the first time it is called for `name` in `dir` (in any process).
bool first_time(const std::string& dir, const std::string& name) {
  const std::string p = dir + "/" + name;
  std::ofstream f(p, std::ios::app);
  f.seekp(0, std::ios::end);
  const bool first = f.tellp() == 0;
  f << 'x';
  return first;
}
int runs_of(const std::string& dir, const std::string& name) {
  std::error_code ec;
  const auto size = fs::file_size(dir + "/" + name, ec);
  return ec ? 0 : static_cast<int>(size);
}

int square_or_throw(int i) {
  if (i == 3) throw std::invalid_argument("bad input 3");
  if (i == 7) throw std::out_of_range("index 7 out of range");
  return i * i;
}
void void_or_throw(int i) {
  if (i % 4 == 1) throw std::runtime_error("void task " + std::to_string(i) + " failed");
}
// Kills its own worker the first time it runs (per index).
int die_once(std::string dir, int i) {
  if (first_time(dir, "die" + std::to_string(i))) std::abort();
  return i * 10;
}
int always_die(int i) {
  if (i == 2) std::abort();
  return i;
}
// Throws a transient error the first time it runs (per index).
int flaky(std::string dir, int i) {
  if (first_time(dir, "flaky" + std::to_string(i))) throw std::runtime_error("transient failure");
  return i + 100;
}
int wrong_input(std::string dir, int i) {
  first_time(dir, "wrong" + std::to_string(i));
  if (i == 1) throw std::invalid_argument("wrong input");
  return i;
}
int slow_square(int i) {
  std::this_thread::sleep_for(2ms);  // a workload: long enough for a worker to be killed mid-run
  return i * i;
}
int pid_of(int) { return static_cast<int>(::getpid()); }
// Touches `mb` MiB, a little at a time (so that the memory watcher sees it grow).
int allocate_mb(int mb) {
  std::vector<std::vector<char>> chunks;
  for (int i = 0; i < mb; ++i) {
    chunks.emplace_back(std::size_t{1} << 20);
    std::memset(chunks.back().data(), 1, chunks.back().size());
    if (i % 16 == 0) std::this_thread::sleep_for(1ms);
  }
  return static_cast<int>(chunks.size());
}
int allocate_once(std::string dir, int mb) {
  if (first_time(dir, "alloc")) return allocate_mb(mb);
  return -mb;
}
// Hangs (30 s at most) the first time it runs for index 1; else returns i.
int hang_once(std::string dir, int i) {
  if (i == 1 && first_time(dir, "hang")) std::this_thread::sleep_for(30s);
  return i;
}
int hang_at_2(int i) {
  if (i == 2) std::this_thread::sleep_for(30s);
  return i;
}
// Writes its pid to dir/i, then waits (30 s at most) for the call to stop.
int wait_for_stop(std::string dir, int i) {
  {
    std::ofstream(dir + "/" + std::to_string(i) + ".tmp") << ::getpid();
    fs::rename(dir + "/" + std::to_string(i) + ".tmp", dir + "/" + std::to_string(i));
  }
  wait_until([] { return joblib::stop_requested(); }, 30s);
  return i;
}
int count_files(const std::string& dir) {
  int n = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}
std::vector<pid_t> pids_in(const std::string& dir) {
  std::vector<pid_t> out;
  for (auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".tmp") continue;
    pid_t pid = 0;
    std::ifstream(e.path()) >> pid;
    if (pid > 0) out.push_back(pid);
  }
  return out;
}

bool is_process(const std::string& backend) { return backend == "loky" || backend == "multiprocessing"; }

// ---- on every backend ------------------------------------------------------------

class Resilience : public ::testing::TestWithParam<std::string> {
 protected:
  ParallelOptions opts(ParallelOptions o = {}) const {
    o.n_jobs = GetParam() == "sequential" ? 1 : 2;
    o.backend = GetParam();
    return o;
  }
};

TEST_P(Resilience, OutcomesHoldEveryValueAndEveryError) {
  for (auto mode : {ReturnAs::list, ReturnAs::generator, ReturnAs::generator_unordered}) {
    auto results = Parallel(opts({.return_as = mode})).outcomes(std::views::iota(0, 10) | std::views::transform([](int i) {
                                                                  return delayed(square_or_throw)(i);
                                                                }));
    std::map<int, int> values;
    int errors = 0, n = 0, k = 0;
    std::vector<Outcome<int>> all;
    for (auto& o : results) all.push_back(o);
    ASSERT_EQ(all.size(), 10u);
    for (auto& o : all) {
      ++n;
      if (o) {
        values[o.value()] = 1;
        EXPECT_EQ(o.error(), nullptr);
      } else {
        ++errors;
        EXPECT_FALSE(o.has_value());
        EXPECT_THROW(o.value(), std::logic_error);  // invalid_argument and out_of_range, with their own types
      }
      ++k;
    }
    EXPECT_EQ(errors, 2);
    EXPECT_EQ(values.size(), 8u);
    EXPECT_EQ(values.count(9), 0u);
    EXPECT_EQ(values.count(49), 0u);
    if (mode != ReturnAs::generator_unordered) {
      // In order: the errors are at 3 and 7, with their types.
      EXPECT_THROW(all[3].value(), std::invalid_argument);
      EXPECT_THROW(all[7].value(), std::out_of_range);
      EXPECT_EQ(all[9].value(), 81);
      try {
        all[7].value();
      } catch (const std::out_of_range& e) {
        EXPECT_STREQ(e.what(), "index 7 out of range");
      }
    }
  }
}

TEST_P(Resilience, OutcomesOfVoidTasks) {
  std::vector<Outcome<void>> all =
      Parallel(opts()).outcomes(std::views::iota(0, 8) | std::views::transform([](int i) {
                                  return delayed(void_or_throw)(i);
                                }));
  ASSERT_EQ(all.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(all[i].has_value(), i % 4 != 1) << i;
    if (i % 4 == 1) EXPECT_THROW(all[i].value(), std::runtime_error);
  }
}

TEST_P(Resilience, StopBeforeTheCallStartsRunsNothing) {
  TempDir dir;
  std::stop_source stop;
  stop.request_stop();
  try {
    Parallel(opts({.stop_token = stop.get_token()}))
        .map([](std::string d) { return wait_for_stop(d, 0); }, std::vector<std::string>(4, dir.str()))
        .to_vector();
    FAIL() << "no CancelledError";
  } catch (const joblib::CancelledError& e) {
    EXPECT_THAT(e.what(), HasSubstr("the call was cancelled: its stop_token was requested"));
  }
  EXPECT_EQ(count_files(dir.str()), 0);
}

TEST_P(Resilience, CancelledCallsStopPromptlyAndLeaveNoWorker) {
  for (auto mode : {ReturnAs::list, ReturnAs::generator}) {
    TempDir dir;
    std::stop_source stop;
    std::jthread stopper([&] {
      wait_until([&] { return !pids_in(dir.str()).empty(); });
      stop.request_stop();
    });
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::string> dirs(20, dir.str());
    try {
      auto r = Parallel(opts({.batch_size = 1, .return_as = mode, .stop_token = stop.get_token()}))(
          std::views::iota(0, 20) | std::views::transform([&](int i) { return delayed(wait_for_stop)(dirs[i], i); }));
      for (int v : r) (void)v;  // generator: the error comes on a step
      FAIL() << "no CancelledError";
    } catch (const joblib::CancelledError& e) {
      EXPECT_THAT(e.what(), HasSubstr("stop_token"));
    }
    // Well before the 30 s a task waits when it sees no stop.
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 20s);
    stopper.join();
    // Not every task started, and no worker of the call is left running.
    EXPECT_LT(static_cast<int>(pids_in(dir.str()).size()), 20);
    if (is_process(GetParam()))
      for (pid_t pid : pids_in(dir.str())) EXPECT_TRUE(wait_until([&] { return process_gone(pid); })) << pid;
  }
  // The backend still works.
  std::vector<int> again = Parallel(opts()).map(pid_of, std::views::iota(0, 4));
  EXPECT_EQ(again.size(), 4u);
}

TEST_P(Resilience, RetryIfTriesATasksOwnExceptionAgain) {
  TempDir dir;
  std::vector<std::string> dirs(6, dir.str());
  std::vector<int> r = Parallel(opts({.retries = 2, .retry_if = joblib::retry_on<std::runtime_error>()}))(
      std::views::iota(0, 6) | std::views::transform([&](int i) { return delayed(flaky)(dirs[i], i); }));
  EXPECT_EQ(r, (std::vector<int>{100, 101, 102, 103, 104, 105}));
  // An exception retry_if does not accept is the task's answer: one run.
  EXPECT_THROW(Parallel(opts({.batch_size = 1, .retries = 2, .retry_if = joblib::retry_on<std::runtime_error>()}))(
                   std::views::iota(0, 3) | std::views::transform([&](int i) { return delayed(wrong_input)(dirs[i], i); }))
                   .to_vector(),
               std::invalid_argument);
  EXPECT_EQ(runs_of(dir.str(), "wrong1"), 1);
  // Without retry_if, no task exception is retried.
  TempDir fresh;
  std::vector<std::string> fdirs(3, fresh.str());
  EXPECT_THROW(Parallel(opts({.batch_size = 1, .retries = 2}))(
                   std::views::iota(0, 3) | std::views::transform([&](int i) { return delayed(flaky)(fdirs[i], i); }))
                   .to_vector(),
               std::runtime_error);
}

std::vector<std::string> all_backends() {
  return {"sequential", "threading", "tbb", "openmp", "loky", "multiprocessing"};
}
INSTANTIATE_TEST_SUITE_P(Backends, Resilience, ::testing::ValuesIn(all_backends()));

// ---- process backends ------------------------------------------------------------

class ProcessResilience : public Resilience {};

TEST_P(ProcessResilience, RetriesRunAgainTheTasksWhoseWorkerDied) {
  TempDir dir;
  std::vector<std::string> dirs(6, dir.str());
  auto tasks = [&] {
    return std::views::iota(0, 6) | std::views::transform([&](int i) { return delayed(die_once)(dirs[i], i); });
  };
  std::vector<int> r = Parallel(opts({.batch_size = 1, .retries = 1}))(tasks());
  EXPECT_EQ(r, (std::vector<int>{0, 10, 20, 30, 40, 50}));
  // A batch that travels is tried again whole: its second attempt may meet
  // the death of another of its tasks.
  TempDir batched;
  std::vector<std::string> bdirs(6, batched.str());
  std::vector<int> rb = Parallel(opts({.batch_size = 2, .retries = 2}))(
      std::views::iota(0, 6) | std::views::transform([&](int i) { return delayed(die_once)(bdirs[i], i); }));
  EXPECT_EQ(rb, (std::vector<int>{0, 10, 20, 30, 40, 50}));
  // A task that kills its worker every time: the error says how many attempts were made.
  try {
    Parallel(opts({.batch_size = 1, .retries = 2})).map(always_die, std::views::iota(0, 4)).to_vector();
    FAIL() << "no TerminatedWorkerError";
  } catch (const joblib::TerminatedWorkerError& e) {
    EXPECT_THAT(e.what(), HasSubstr("{SIGABRT(-6)}"));
    EXPECT_THAT(e.what(), HasSubstr("It was running task 2 of the call"));
    EXPECT_THAT(e.what(), HasSubstr("The batch was tried 3 times (retries = 2)."));
  }
  // Without retries, the first death ends the call, as joblib.
  TempDir fresh;
  std::vector<std::string> fdirs(6, fresh.str());
  EXPECT_THROW(Parallel(opts({.batch_size = 2}))(std::views::iota(0, 6) | std::views::transform([&](int i) {
                                                    return delayed(die_once)(fdirs[i], i);
                                                  }))
                   .to_vector(),
               joblib::TerminatedWorkerError);
}

TEST_P(ProcessResilience, KilledWorkersInALongRunAreRetriedAndEveryResultIsRight) {
  // Fault injection: a thread kills a random worker twice while the call runs.
  std::atomic<bool> done{false};
  std::atomic<int> kills{0};
  std::jthread killer([&] {
    std::mt19937 rng(12345);
    for (int k = 0; k < 2 && !done; ++k) {
      std::this_thread::sleep_for(100ms);  // spacing between faults, not a synchronisation
      std::vector<pid_t> pids = joblib::worker_sdk::pool_worker_pids();
      if (pids.empty()) continue;
      ::kill(pids[rng() % pids.size()], SIGKILL);
      ++kills;
    }
  });
  std::vector<int> r = Parallel(opts({.retries = 2})).map(slow_square, std::views::iota(0, 400));
  done = true;
  killer.join();
  ASSERT_EQ(r.size(), 400u);
  for (int i = 0; i < 400; ++i) ASSERT_EQ(r[i], i * i) << i;
  EXPECT_GE(kills.load(), 1);
}

TEST_P(ProcessResilience, OutcomesOfAWorkerThatDiedForGood) {
  std::vector<Outcome<int>> all =
      Parallel(opts({.batch_size = 1, .retries = 1})).outcomes(std::views::iota(0, 5) | std::views::transform([](int i) {
                                                                  return delayed(always_die)(i);
                                                                }));
  ASSERT_EQ(all.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(all[i].has_value(), i != 2) << i;
  try {
    all[2].value();
    FAIL();
  } catch (const joblib::TerminatedWorkerError& e) {
    EXPECT_THAT(e.what(), HasSubstr("The batch was tried 2 times (retries = 1)."));
  }
}

TEST_P(ProcessResilience, NoWorkerRunsMoreThanMaxTasksPerChild) {
  for (std::optional<int> batch : {std::optional<int>{}, std::optional<int>{2}}) {
    std::vector<int> pids =
        Parallel(opts({.batch_size = batch, .max_tasks_per_child = 3})).map(pid_of, std::views::iota(0, 40));
    ASSERT_EQ(pids.size(), 40u);
    std::map<int, int> per_worker;
    for (int p : pids) ++per_worker[p];
    for (auto& [pid, n] : per_worker) EXPECT_LE(n, 3) << "worker " << pid;
    EXPECT_GE(per_worker.size(), 14u);
  }
}

// A fresh worker's own memory stays well under the limit (under ASan, its
// shadow memory alone is over 64 MiB).
#if defined(__SANITIZE_ADDRESS__)
constexpr const char* kWorkerLimit = "512M";
constexpr const char* kWorkerLimitText = "over worker_memory_limit = 512.0 MiB (536870912 bytes)";
#else
constexpr const char* kWorkerLimit = "64M";
constexpr const char* kWorkerLimitText = "over worker_memory_limit = 64.0 MiB (67108864 bytes)";
#endif

TEST_P(ProcessResilience, AWorkerOverItsMemoryLimitIsStoppedAndNamed) {
  try {
    Parallel(opts({.batch_size = 1, .worker_memory_limit = kWorkerLimit})).map(allocate_mb, std::vector<int>{1, 1500, 1}).to_vector();
    FAIL() << "no TerminatedWorkerError";
  } catch (const joblib::TerminatedWorkerError& e) {
    EXPECT_THAT(e.what(), HasSubstr(kWorkerLimitText));
    EXPECT_THAT(e.what(), HasSubstr("It was running task 1 of the call"));
  }
  // The next call works, and below the limit nothing is stopped.
  std::vector<int> r = Parallel(opts({.worker_memory_limit = "256M"})).map(allocate_mb, std::vector<int>{8, 8, 8});
  EXPECT_EQ(r, (std::vector<int>{8, 8, 8}));
  // With retries, the task runs again on a fresh worker.
  TempDir dir;
  std::vector<int> again = Parallel(opts({.retries = 1, .worker_memory_limit = kWorkerLimit}))(
      std::views::single(delayed(allocate_once)(dir.str(), 1500)));
  EXPECT_EQ(again, std::vector<int>{-1500});
}

TEST_P(ProcessResilience, ATimedOutTaskIsRetriedOnAFreshWorker) {
  TempDir dir;
  std::vector<std::string> dirs(4, dir.str());
  std::vector<int> r = Parallel(opts({.timeout = 1.0, .batch_size = 1, .retries = 1}))(
      std::views::iota(0, 4) | std::views::transform([&](int i) { return delayed(hang_once)(dirs[i], i); }));
  EXPECT_EQ(r, (std::vector<int>{0, 1, 2, 3}));
}

TEST_P(ProcessResilience, OutcomesGiveTimeoutErrorToAStuckTaskAndTheRestRun) {
  std::vector<Outcome<int>> all = Parallel(opts({.timeout = 1.0, .batch_size = 1}))
                                      .outcomes(std::views::iota(0, 5) | std::views::transform([](int i) {
                                                  return delayed(hang_at_2)(i);
                                                }));
  ASSERT_EQ(all.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(all[i].has_value(), i != 2) << i;
  EXPECT_THROW(all[2].value(), joblib::TimeoutError);
}

INSTANTIATE_TEST_SUITE_P(Backends, ProcessResilience, ::testing::Values("loky", "multiprocessing"));

// ---- thread backends ---------------------------------------------------------------

std::atomic<int> g_hang_runs{0};
int hang_first_run(int i) {
  if (i == 1 && g_hang_runs.fetch_add(1) == 0) std::this_thread::sleep_for(3s);  // the first run is left behind
  return i;
}

class ThreadResilience : public ::testing::TestWithParam<std::string> {};

TEST_P(ThreadResilience, ATimedOutTaskIsRetriedOnAnotherThreadAndTheFirstResultDropped) {
  g_hang_runs = 0;
  std::vector<int> r = Parallel({.n_jobs = 2, .backend = GetParam(), .timeout = 0.3, .batch_size = 1, .retries = 1})
                           .map(hang_first_run, std::views::iota(0, 4));
  EXPECT_EQ(r, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(g_hang_runs.load(), 2);
  std::this_thread::sleep_for(3s);  // let the abandoned run end before the next test
}

TEST_P(ThreadResilience, OutcomesGiveTimeoutErrorToAStuckTaskAndTheRestRun) {
  g_hang_runs = 0;
  std::vector<Outcome<int>> all = Parallel({.n_jobs = 2, .backend = GetParam(), .timeout = 0.3, .batch_size = 1})
                                      .outcomes(std::views::iota(0, 4) | std::views::transform([](int i) {
                                                  return delayed(hang_first_run)(i);
                                                }));
  ASSERT_EQ(all.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(all[i].has_value(), i != 1) << i;
  EXPECT_THROW(all[1].value(), joblib::TimeoutError);
  std::this_thread::sleep_for(3s);
}
INSTANTIATE_TEST_SUITE_P(Threads, ThreadResilience, ::testing::Values("threading", "tbb"));

TEST(ThreadTimeoutRetries, RetriesSpentATimeoutEndsTheCallAndSaysSo) {
  try {
    Parallel({.n_jobs = 2, .backend = "threading", .timeout = 0.2, .batch_size = 1, .retries = 1})
        .map([](int i) {
          if (i == 1) std::this_thread::sleep_for(1s);
          return i;
        }, std::views::iota(0, 3))
        .to_vector();
    FAIL() << "no TimeoutError";
  } catch (const joblib::TimeoutError& e) {
    EXPECT_THAT(e.what(), HasSubstr("The batch was tried 2 times (retries = 1)."));
  }
  std::this_thread::sleep_for(1s);
}

TEST(ResilienceOptions, ThreadBackendsSayTheyIgnoreProcessOnlyOptions) {
  ::testing::internal::CaptureStderr();
  std::vector<int> r = Parallel({.n_jobs = 2, .backend = "threading", .max_tasks_per_child = 2}).map(pid_of, std::views::iota(0, 3));
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(r.size(), 3u);
  EXPECT_THAT(err, HasSubstr("UserWarning: max_tasks_per_child and worker_memory_limit apply to process backends (loky, "
                             "multiprocessing); the 'threading' backend ignores them."));
}

TEST(ResilienceOptions, VerboseSaysWhichBatchIsRetried) {
  TempDir dir;
  ::testing::internal::CaptureStderr();
  std::vector<int> r = Parallel({.n_jobs = 2, .backend = "threading", .verbose = 10, .batch_size = 1, .retries = 1,
                                 .retry_if = joblib::retry_on<std::runtime_error>()})
                           .map([](std::string d) { return flaky(d, 4); }, std::vector<std::string>{dir.str()});
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(r, std::vector<int>{104});
  EXPECT_THAT(err, HasSubstr("Retrying a batch of 1 task starting at task 0 (attempt 2 of 2): transient failure"));
}

TEST(ResilienceOptions, CancelledErrorSaysHowFarTheCallGot) {
  std::stop_source stop;
  std::atomic<int> ran{0};
  try {
    Parallel({.n_jobs = 1, .batch_size = 1, .stop_token = stop.get_token()})
        .map([&](int i) {
          if (++ran == 3) stop.request_stop();
          return i;
        }, std::views::iota(0, 10))
        .to_vector();
    FAIL();
  } catch (const joblib::CancelledError& e) {
    EXPECT_STREQ(e.what(), "the call was cancelled: its stop_token was requested (2 of 10 tasks done)");
  }
  EXPECT_EQ(ran.load(), 3);
}

TEST(ResilienceOptions, BadValuesAreRefusedAndNamed) {
  EXPECT_THROW(Parallel({.retries = -1}), std::invalid_argument);
  EXPECT_THROW(Parallel({.max_tasks_per_child = 0}), std::invalid_argument);
  try {
    Parallel({.worker_memory_limit = "lots"});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("worker_memory_limit"));
  }
  EXPECT_THROW(Parallel({.worker_memory_limit = "0"}), std::invalid_argument);
}

}  // namespace
