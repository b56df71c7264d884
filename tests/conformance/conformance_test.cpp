// The conformance suite: what every backend must do, run over every backend
// built. Tasks here are plain functions and captureless lambdas, so the same
// suite runs on the process backends. A new backend joins by adding its name
// to kBackends below.
#include <joblib/worker_sdk.hpp>
#include "test_backends.hpp"
#include "test_sync.hpp"

#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>

namespace {

using joblib::delayed;
using joblib::Parallel;
using joblib::ReturnAs;

// Under mpirun (ctest's mpi.conformance runs this binary so), the mpi backend joins.
bool in_mpi_job() {
  const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
  return size && std::atoi(size) > 1;
}

// ---- the list: one line per backend ----------------------------------------
const std::vector<std::string> kBackends = [] {
  std::vector<std::string> names = {
      "sequential",
      "threading",
      "tbb",
      "openmp",
      "loky",
      "multiprocessing",
      "mine",  // examples/custom_backend, loaded by path
  };
  if (in_mpi_job()) names.push_back("mpi");
  return names;
}();

double root(int x) { return std::sqrt(x); }
std::tuple<double, double> modf_pair(double x) {
  double whole = 0;
  double frac = std::modf(x, &whole);
  return {frac, whole};
}
int slow_identity(int x) {
  // uneven work: every third task is much longer
  double acc = 0;
  for (int k = 0; k < (x % 3 == 0 ? 200000 : 10); ++k) acc += std::sqrt(double(k));
  return x + static_cast<int>(acc * 0);
}
int fail_at_3(int x) {
  if (x == 3) throw std::invalid_argument("bad input: 3");
  return x;
}
int out_of_range_at_0(int x) {
  if (x == 0) throw std::out_of_range("index 0");
  return x;
}
std::string label(int x) { return "item-" + std::to_string(x); }
std::string slow_label(int x) { return label(slow_identity(x)); }
bool slow_odd(int x) { return slow_identity(x) % 2 == 1; }
void slow_nothing(int x) { (void)slow_identity(x); }

// A task that leaves marks in `dir` (tasks may run in other processes):
// "start_<x>_<pid>" when it starts, "end_<x>" when it ends. Every task but
// the first runs until its call asks it to stop (10 s at most), so that
// some are still running when their call is dropped.
int marked_task(std::string dir, int x) {
  std::ofstream(dir + "/start_" + std::to_string(x) + "_" + std::to_string(::getpid()));
  if (x > 0) joblib_test::wait_until([] { return joblib::stop_requested(); }, std::chrono::seconds(10));
  std::ofstream(dir + "/end_" + std::to_string(x));
  return x;
}

// The marks in `dir`: task index -> pid of the process that started it.
std::map<int, pid_t> started_tasks(const std::filesystem::path& dir) {
  std::map<int, pid_t> out;
  for (auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("start_", 0) != 0) continue;
    const auto sep = name.find('_', 6);
    out[std::stoi(name.substr(6, sep - 6))] = static_cast<pid_t>(std::stol(name.substr(sep + 1)));
  }
  return out;
}

class Conformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    static bool registered = [] {
      joblib::register_parallel_backend("mine", std::filesystem::path(JOBLIB_TEST_MY_BACKEND));
      return true;
    }();
    (void)registered;
    auto names = joblib::available_backends();
    if (std::find(names.begin(), names.end(), GetParam()) == names.end())
      GTEST_SKIP() << "backend '" << GetParam() << "' is not built here";
  }
  joblib::ParallelOptions opts(ReturnAs mode = ReturnAs::list) const {
    return {.n_jobs = GetParam() == "sequential" ? 1 : 2, .backend = GetParam(), .return_as = mode};
  }
};

TEST_P(Conformance, SqrtExample) {
  std::vector<double> r = Parallel(opts())(std::views::iota(0, 10) |
                                           std::views::transform([](int i) { return delayed(root)(i * i); }));
  EXPECT_EQ(r, (std::vector<double>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST_P(Conformance, ModfExampleReturnsTuples) {
  std::vector<std::tuple<double, double>> r = Parallel(opts())(
      std::views::iota(0, 10) | std::views::transform([](int i) { return delayed(modf_pair)(i / 2.0); }));
  ASSERT_EQ(r.size(), 10u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(std::get<0>(r[static_cast<std::size_t>(i)]), (i % 2) * 0.5);
    EXPECT_EQ(std::get<1>(r[static_cast<std::size_t>(i)]), i / 2);
  }
}

TEST_P(Conformance, KeepsInputOrderOnUnevenTasks) {
  std::vector<int> r = Parallel(opts()).map(slow_identity, std::views::iota(0, 60));
  for (int i = 0; i < 60; ++i) EXPECT_EQ(r[static_cast<std::size_t>(i)], i);
}

TEST_P(Conformance, ManyTinyTasks) {
  std::vector<double> r = Parallel(opts()).map(root, std::views::iota(0, 20000));
  ASSERT_EQ(r.size(), 20000u);
  EXPECT_EQ(r[19999], std::sqrt(19999.0));
}

TEST_P(Conformance, EmptyInput) {
  std::vector<double> r = Parallel(opts()).map(root, std::vector<int>{});
  EXPECT_TRUE(r.empty());
}

TEST_P(Conformance, StringResults) {
  std::vector<std::string> r = Parallel(opts()).map(label, std::views::iota(0, 3));
  EXPECT_EQ(r, (std::vector<std::string>{"item-0", "item-1", "item-2"}));
}

// A list call of one-task batches that finish out of order (every third task
// is long): the dispatcher keeps runs of finished batches as one, and every
// result still comes in input order, whether the batches wrote it into the
// call's output (a sized input), kept it (a filtered input, pulled lazily),
// or it is a bool, a string, an outcome, or the index of a void task.
TEST_P(Conformance, OneTaskBatchesFinishingOutOfOrderKeepInputOrder) {
  joblib::ParallelOptions o = opts();
  o.batch_size = 1;
  constexpr int n = 90;
  const auto evens = [] { return std::views::iota(0, 2 * n) | std::views::filter([](int i) { return i % 2 == 0; }); };
  std::vector<int> direct = Parallel(o).map(slow_identity, std::views::iota(0, n));
  std::vector<int> lazy =
      Parallel(o)(evens() | std::views::transform([](int i) { return delayed(slow_identity)(i / 2); }));
  std::vector<std::string> labels =
      Parallel(o)(evens() | std::views::transform([](int i) { return delayed(slow_label)(i / 2); }));
  std::vector<bool> odd = Parallel(o).map(slow_odd, std::views::iota(0, n));
  auto outcomes =
      Parallel(o).outcomes(std::views::iota(0, n) | std::views::transform([](int i) { return delayed(fail_at_3)(i); }));
  std::vector<std::size_t> void_indexes;
  for (std::size_t i : Parallel(o).map(slow_nothing, std::views::iota(0, n))) void_indexes.push_back(i);
  ASSERT_EQ(direct.size(), std::size_t(n));
  ASSERT_EQ(lazy.size(), std::size_t(n));
  ASSERT_EQ(labels.size(), std::size_t(n));
  ASSERT_EQ(odd.size(), std::size_t(n));
  ASSERT_EQ(void_indexes.size(), std::size_t(n));
  std::size_t k = 0;
  for (auto& outcome : outcomes) {
    if (k == 3) {
      EXPECT_FALSE(outcome.has_value());
    } else {
      EXPECT_EQ(outcome.value(), static_cast<int>(k));
    }
    ++k;
  }
  EXPECT_EQ(k, std::size_t(n));
  for (int i = 0; i < n; ++i) {
    const auto u = static_cast<std::size_t>(i);
    EXPECT_EQ(direct[u], i);
    EXPECT_EQ(lazy[u], i);
    EXPECT_EQ(labels[u], label(i));
    EXPECT_EQ(odd[u], i % 2 == 1);
    EXPECT_EQ(void_indexes[u], u);
  }
}

TEST_P(Conformance, ExceptionTypeAndMessageReachTheCaller) {
  try {
    Parallel(opts()).map(fail_at_3, std::views::iota(0, 10)).to_vector();
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "bad input: 3");
  }
  try {
    Parallel(opts()).map(out_of_range_at_0, std::views::iota(0, 10)).to_vector();
    FAIL() << "expected std::out_of_range";
  } catch (const std::out_of_range& e) {
    EXPECT_STREQ(e.what(), "index 0");
  }
}

TEST_P(Conformance, GeneratorKeepsSubmissionOrder) {
  auto r = Parallel(opts(ReturnAs::generator)).map(slow_identity, std::views::iota(0, 30));
  int expected = 0;
  for (int v : r) EXPECT_EQ(v, expected++);
  EXPECT_EQ(expected, 30);
}

TEST_P(Conformance, UnorderedGeneratorDeliversEachResultOnce) {
  auto r = Parallel(opts(ReturnAs::generator_unordered)).map(slow_identity, std::views::iota(0, 30));
  std::multiset<int> got(r.begin(), r.end());
  std::multiset<int> expected;
  for (int i = 0; i < 30; ++i) expected.insert(i);
  EXPECT_EQ(got, expected);
}

TEST_P(Conformance, GeneratorThrowsWhileIterating) {
  auto r = Parallel(opts(ReturnAs::generator)).map(fail_at_3, std::views::iota(0, 10));
  EXPECT_THROW(
      {
        for (int v : r) (void)v;
      },
      std::invalid_argument);
}

TEST_P(Conformance, DroppedGeneratorEndsCleanly) {
  namespace fs = std::filesystem;
  const fs::path marks =
      fs::temp_directory_path() / ("joblib_test_dropped_" + GetParam() + "_" + std::to_string(::getpid()));
  fs::remove_all(marks);
  fs::create_directories(marks);
  {
    auto r = Parallel(opts(ReturnAs::generator))(std::views::iota(0, 1000) | std::views::transform([&](int i) {
                                                   return delayed(marked_task)(marks.string(), i);
                                                 }));
    auto it = r.begin();
    EXPECT_EQ(*it, 0);
  }  // dropped after its first element: the destructor returns, and nothing of the call runs any more
  const std::map<int, pid_t> started = started_tasks(marks);
  EXPECT_LT(started.size(), 1000u) << "the rest of the input is not run";
  for (const auto& [task, pid] : started) {
    // A task that started has ended, or the worker process running it is gone (killed).
    if (fs::exists(marks / ("end_" + std::to_string(task)))) continue;
    if (GetParam() == "mpi") {
      // A rank cannot be killed: it is told that the call stopped, and its
      // task, which watches joblib::stop_requested(), ends at once.
      EXPECT_TRUE(joblib_test::wait_until([&] { return fs::exists(marks / ("end_" + std::to_string(task))); }))
          << "task " << task << " did not see the stop";
      continue;
    }
    EXPECT_TRUE(pid != ::getpid() && joblib_test::process_gone(pid)) << "task " << task << " still runs";
  }
  // No worker process of the call is left, but the idle ones a reusable pool keeps (loky).
  // (MPI ranks serve the whole job: their tasks ended above.)
  std::set<pid_t> workers;
  if (GetParam() == "mpi") {
    fs::remove_all(marks);
    return;
  }
  for (const auto& entry : started)
    if (entry.second != ::getpid()) workers.insert(entry.second);
  for (pid_t worker : workers) {
    const auto gone_or_kept = [worker] {
      const auto pool = joblib::worker_sdk::pool_worker_pids();
      return joblib_test::process_gone(worker) || std::find(pool.begin(), pool.end(), worker) != pool.end();
    };
    EXPECT_TRUE(joblib_test::wait_until(gone_or_kept)) << "worker " << worker << " of the dropped call is left running";
  }
  // A later call on the same backend works, and no task of the dropped call starts meanwhile.
  std::vector<double> later = Parallel(opts()).map(root, std::vector{0, 1, 4, 9});
  EXPECT_EQ(later, (std::vector<double>{0, 1, 2, 3}));
  EXPECT_EQ(started_tasks(marks).size(), started.size()) << "a task of the dropped call started after the drop";
  fs::remove_all(marks);
}

TEST_P(Conformance, BackToBackCallsReuseTheBackend) {
  for (int round = 0; round < 20; ++round) {
    std::vector<double> r = Parallel(opts()).map(root, std::vector{0, 1, 4});
    EXPECT_EQ(r, (std::vector<double>{0, 1, 2}));
  }
}

TEST_P(Conformance, WorksFromAScope) {
  joblib::parallel_backend scope(GetParam(), {.n_jobs = 2});
  std::vector<double> r = Parallel().map(root, std::vector{9, 16});
  EXPECT_EQ(r, (std::vector<double>{3, 4}));
}

INSTANTIATE_TEST_SUITE_P(Backends, Conformance, ::testing::ValuesIn(kBackends),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// Every backend built must be in the list above.
TEST(ConformanceList, CoversEveryAvailableBackend) {
  joblib::register_parallel_backend("mine", std::filesystem::path(JOBLIB_TEST_MY_BACKEND));
  for (const std::string& name : joblib::available_backends()) {
    if (name.rfind("fake_", 0) == 0 || name == "default_probe" || name == "throws" || name == "mine_from_toml")
      continue;  // registered by other tests
    if (name == "mpi" && !in_mpi_job()) continue;  // its conformance run is under mpirun (mpi.conformance)
    EXPECT_NE(std::find(kBackends.begin(), kBackends.end(), name), kBackends.end())
        << "backend '" << name << "' is built but not in the conformance list";
  }
}

}  // namespace
