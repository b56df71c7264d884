// Two thread runtimes in one process: OpenMP regions inside parallel tasks
// are capped (joblib's inner_max_num_threads), so a tbb/threading/openmp
// scope with n_jobs workers does not start n_jobs x cpu_count threads.
#include <joblib/joblib.hpp>

#include <gtest/gtest.h>
#include <omp.h>

#include <ranges>

namespace {

int threads_in_an_omp_region(int) {
  int n = 0;
#pragma omp parallel
  {
#pragma omp single
    n = omp_get_num_threads();
  }
  return n;
}

std::vector<int> run_in_scope(const std::string& backend, std::optional<int> inner) {
  joblib::parallel_backend scope(backend, {.n_jobs = 2, .inner_max_num_threads = inner});
  return joblib::Parallel({.batch_size = 1}).map(threads_in_an_omp_region, std::views::iota(0, 6));
}

class InnerThreads : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto names = joblib::available_backends();
    if (std::find(names.begin(), names.end(), GetParam()) == names.end()) GTEST_SKIP();
  }
};

TEST_P(InnerThreads, DefaultCapIsCpuCountOverNJobs) {
  const int expected = std::max(joblib::cpu_count() / 2, 1);
  for (int n : run_in_scope(GetParam(), std::nullopt)) EXPECT_EQ(n, GetParam() == "openmp" ? 1 : expected);
}

TEST_P(InnerThreads, ScopeSetsTheCap) {
  // openmp: a region inside a task of an OpenMP team is nested, and libgomp
  // runs nested regions on one thread (max-active-levels 1).
  for (int n : run_in_scope(GetParam(), 3)) EXPECT_EQ(n, GetParam() == "openmp" ? 1 : 3);
}

TEST_P(InnerThreads, CallerSettingIsUntouched) {
  const int before = omp_get_max_threads();
  (void)run_in_scope(GetParam(), 1);
  EXPECT_EQ(omp_get_max_threads(), before);
}

INSTANTIATE_TEST_SUITE_P(Backends, InnerThreads, ::testing::Values("threading", "tbb", "openmp"));

}  // namespace
