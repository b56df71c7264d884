// The conformance suite: what every backend must do, run over every backend
// built. Tasks here are plain functions and captureless lambdas, so the same
// suite runs on the process backends. A new backend joins by adding its name
// to kBackends below.
#include "test_backends.hpp"

#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>

namespace {

using joblib::delayed;
using joblib::Parallel;
using joblib::ReturnAs;

// ---- the list: one line per backend ----------------------------------------
const std::vector<std::string> kBackends = {
    "sequential",
    "threading",
    "tbb",
    "openmp",
    "loky",
    "multiprocessing",
    "mine",  // examples/custom_backend, loaded by path
};

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
  auto r = Parallel(opts(ReturnAs::generator)).map(slow_identity, std::views::iota(0, 1000));
  auto it = r.begin();
  EXPECT_EQ(*it, 0);
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
    EXPECT_NE(std::find(kBackends.begin(), kBackends.end(), name), kBackends.end())
        << "backend '" << name << "' is built but not in the conformance list";
  }
}

}  // namespace
