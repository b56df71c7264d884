// Scopes, n_jobs rules and backend resolution (joblib-behaviour.md §1.9).
#include "config.hpp"
#include "test_backends.hpp"

#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <ranges>
#include <thread>

namespace {

using joblib::ConfigOptions;
using joblib::Prefer;
using joblib::Require;
using joblib::detail::resolve;

TEST(NJobsTest, UnsetIsOneOutsideAnyScope) { EXPECT_EQ(joblib::effective_n_jobs(std::nullopt), 1); }

TEST(NJobsTest, MinusOneIsAllCpusMinusTwoAllButOne) {
  const int cpus = joblib::cpu_count();
  EXPECT_EQ(joblib::effective_n_jobs(-1), cpus);
  EXPECT_EQ(joblib::effective_n_jobs(-2), std::max(cpus - 1, 1));
}

TEST(NJobsTest, VeryNegativeClampsAtOne) { EXPECT_EQ(joblib::effective_n_jobs(-100), 1); }

TEST(NJobsTest, AboveCpuCountIsAllowed) { EXPECT_EQ(joblib::effective_n_jobs(64), 64); }

TEST(NJobsTest, ZeroIsAnError) {
  EXPECT_THROW(joblib::effective_n_jobs(0), std::invalid_argument);
  try {
    joblib::Parallel({.n_jobs = 0});
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "n_jobs == 0 in Parallel has no meaning");
  }
  EXPECT_THROW(joblib::parallel_config({.n_jobs = 0}), std::invalid_argument);
}

TEST(NJobsTest, ScopeSetsUnsetNJobs) {
  joblib::parallel_config scope({.backend = "threading", .n_jobs = 3});
  EXPECT_EQ(joblib::effective_n_jobs(std::nullopt), 3);
  EXPECT_EQ(resolve({}).n_jobs, 3);
  EXPECT_EQ(resolve({.n_jobs = 2}).n_jobs, 2);  // explicit wins
}

TEST(NJobsTest, ParallelBackendDefaultsToAllCpus) {
  joblib::parallel_backend scope("threading");
  EXPECT_EQ(joblib::effective_n_jobs(std::nullopt), joblib::cpu_count());
  EXPECT_EQ(joblib::Parallel().repr(), "Parallel(n_jobs=-1)");
}

TEST(NJobsTest, CpuCountIsPositiveAndHonoursTheEnvironmentCap) {
  EXPECT_GE(joblib::cpu_count(), 1);
  setenv("JOBLIB_MAX_CPU_COUNT", "1", 1);
  EXPECT_EQ(joblib::cpu_count(), 1);
  unsetenv("JOBLIB_MAX_CPU_COUNT");
}

TEST(ScopeTest, IsThreadLocal) {
  joblib::parallel_config scope({.n_jobs = 4});
  int seen = -1;
  std::thread([&] { seen = joblib::effective_n_jobs(std::nullopt); }).join();
  EXPECT_EQ(seen, 1);
  EXPECT_EQ(joblib::effective_n_jobs(std::nullopt), 4);
}

TEST(ScopeTest, NestedScopesMerge) {
  joblib::parallel_config outer({.backend = "threading", .verbose = 3});
  {
    joblib::parallel_config inner({.n_jobs = 2});
    auto r = resolve({});
    EXPECT_EQ(r.backend_name, "threading");  // outer backend survives the inner n_jobs
    EXPECT_EQ(r.n_jobs, 2);
    EXPECT_EQ(r.verbose, 3);
  }
  EXPECT_EQ(resolve({}).n_jobs, 1);  // inner scope popped
  EXPECT_EQ(resolve({}).backend_name, "sequential");
}

TEST(ScopeTest, UnknownBackendNamesItAndListsTheAvailableOnes) {
  try {
    joblib::parallel_backend scope("no_such_backend");
    FAIL() << "expected BackendError";
  } catch (const joblib::BackendError& e) {
    EXPECT_NE(std::string(e.what()).find("'no_such_backend'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("threading"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("sequential"), std::string::npos) << e.what();
  }
}

TEST(ScopeTest, SettingsWithoutBackendAreRefused) {
  EXPECT_THROW(joblib::parallel_config({.inner_max_num_threads = 2}), std::invalid_argument);
  EXPECT_THROW(joblib::parallel_config({.settings = {{"a", "b"}}}), std::invalid_argument);
}

TEST(ScopeTest, BadMaxNbytesIsRefused) {
  try {
    joblib::parallel_config scope({.max_nbytes = "12Q"});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("max_nbytes"), std::string::npos);
  }
}

TEST(ScopeTest, NestingLevelIsZeroAtTopLevel) { EXPECT_EQ(joblib::nesting_level(), 0); }

// ---- the resolution table ------------------------------------------------

class ResolutionTest : public ::testing::Test {
 protected:
  void SetUp() override { joblib_test::register_fake_backends(); }
};

TEST_F(ResolutionTest, DefaultIsThreadingAndUnsetNJobsIsSequential) {
  EXPECT_EQ(resolve({}).backend_name, "sequential");
  auto r = resolve({.n_jobs = 2});
  EXPECT_EQ(r.backend_name, "threading");
  EXPECT_EQ(r.n_jobs, 2);
}

TEST_F(ResolutionTest, ExplicitBackendBeatsScope) {
  joblib::parallel_backend scope("fake_processes", {.n_jobs = 2});
  EXPECT_EQ(resolve({.backend = "fake_threads"}).backend_name, "fake_threads");
}

TEST_F(ResolutionTest, ScopeBeatsPreferHint) {
  joblib::parallel_backend scope("fake_processes", {.n_jobs = 2});
  auto r = resolve({.prefer = Prefer::threads});
  EXPECT_EQ(r.backend_name, "fake_processes");
  EXPECT_EQ(r.n_jobs, 2);
}

TEST_F(ResolutionTest, ExplicitBackendIgnoresHints) {
  EXPECT_EQ(resolve({.n_jobs = 2, .backend = "fake_processes", .prefer = Prefer::threads}).backend_name,
            "fake_processes");
}

TEST_F(ResolutionTest, PreferThreadsPicksTheDefaultThreadBackend) {
  EXPECT_EQ(resolve({.n_jobs = 2, .prefer = Prefer::threads}).backend_name, "threading");
}

TEST_F(ResolutionTest, PreferThreadsKeepsTheScopeNJobs) {
  // Deliberate departure from joblib (which resets the scope's n_jobs to 1).
  joblib::parallel_config scope({.n_jobs = 2});
  auto r = resolve({.prefer = Prefer::threads});
  EXPECT_EQ(r.backend_name, "threading");
  EXPECT_EQ(r.n_jobs, 2);
}

TEST_F(ResolutionTest, RequireSharedmemSubstitutesAThreadBackendForAProcessScope) {
  joblib::parallel_backend scope("fake_processes", {.n_jobs = 2});
  auto r = resolve({.require = Require::sharedmem});
  EXPECT_EQ(r.backend_name, "threading");
  EXPECT_EQ(r.n_jobs, 2);
}

TEST_F(ResolutionTest, RequireSharedmemKeepsAThreadScope) {
  joblib::parallel_backend scope("fake_threads", {.n_jobs = 2});
  EXPECT_EQ(resolve({.require = Require::sharedmem}).backend_name, "fake_threads");
}

TEST_F(ResolutionTest, RequireSharedmemFromTheScopeApplies) {
  joblib::parallel_backend outer("fake_processes", {.n_jobs = 2});
  joblib::parallel_config inner({.require = Require::sharedmem});
  EXPECT_EQ(resolve({}).backend_name, "threading");
}

TEST_F(ResolutionTest, ExplicitProcessBackendWithSharedmemIsAnError) {
  try {
    resolve({.n_jobs = 2, .backend = "fake_processes", .require = Require::sharedmem});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "Backend fake_processes does not support shared memory");
  }
}

TEST_F(ResolutionTest, PreferProcessesWithSharedmemIsInconsistent) {
  try {
    resolve({.prefer = Prefer::processes, .require = Require::sharedmem});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "prefer == 'processes' and require == 'sharedmem' are inconsistent settings");
  }
}

TEST_F(ResolutionTest, NJobsOneRunsSequentiallyWithoutLoadingAPlugin) {
  auto r = resolve({.n_jobs = 1, .backend = "threading"});
  EXPECT_EQ(r.backend_name, "sequential");
  EXPECT_EQ(r.backend, nullptr);
}

TEST_F(ResolutionTest, SequentialBackendForcesOneJob) {
  joblib::parallel_backend scope("sequential", {.n_jobs = 4});
  EXPECT_EQ(resolve({}).backend_name, "sequential");
  EXPECT_EQ(joblib::effective_n_jobs(std::nullopt), 1);
}

TEST_F(ResolutionTest, UnknownExplicitBackendIsABackendError) {
  EXPECT_THROW(resolve({.n_jobs = 2, .backend = "nope"}), joblib::BackendError);
  EXPECT_THROW(resolve({.n_jobs = 1, .backend = "nope"}), joblib::BackendError);  // checked even when sequential
}

TEST_F(ResolutionTest, ScopeValuesFillUnsetOptions) {
  joblib::parallel_config scope({.verbose = 7, .temp_folder = "/somewhere", .max_nbytes = "2K",
                                 .mmap_mode = joblib::MmapMode::r_plus});
  auto r = resolve({});
  EXPECT_EQ(r.verbose, 7);
  EXPECT_EQ(r.temp_folder, "/somewhere");
  EXPECT_EQ(r.max_nbytes, std::optional<std::size_t>(2048));
  EXPECT_EQ(r.mmap_mode, joblib::MmapMode::r_plus);
  auto explicit_r = resolve({.verbose = 1, .temp_folder = "/x", .max_nbytes = std::nullopt});
  EXPECT_EQ(explicit_r.verbose, 1);
  EXPECT_EQ(explicit_r.temp_folder, "/x");
  EXPECT_EQ(explicit_r.max_nbytes, std::nullopt);
}

}  // namespace

namespace {
// An option written in Parallel's options always wins over a scope, even
// when it equals the default; one left unwritten takes the scope's value.
TEST(ScopeTest, ExplicitValuesWinOverTheScopeEvenWhenTheyAreTheDefault) {
  using joblib::MmapMode;
  using joblib::Prefer;
  joblib::parallel_config scope({.backend = "threading", .n_jobs = 2, .verbose = 10, .temp_folder = "/scope/tmp",
                                 .max_nbytes = "none", .mmap_mode = MmapMode::r_plus, .prefer = Prefer::processes});
  const auto inherited = joblib::detail::resolve({});
  EXPECT_EQ(inherited.verbose, 10);
  EXPECT_EQ(inherited.max_nbytes, std::nullopt);
  EXPECT_EQ(inherited.mmap_mode, MmapMode::r_plus);
  EXPECT_EQ(inherited.temp_folder, "/scope/tmp");
  const auto explicit_defaults =
      joblib::detail::resolve({.verbose = 0, .max_nbytes = "1M", .mmap_mode = MmapMode::r});
  EXPECT_EQ(explicit_defaults.verbose, 0);
  EXPECT_EQ(explicit_defaults.max_nbytes, std::optional<std::size_t>(1024 * 1024));
  EXPECT_EQ(explicit_defaults.mmap_mode, MmapMode::r);
  // std::nullopt written explicitly means "never memmap", over a scope's value.
  joblib::parallel_config inner({.max_nbytes = "2M"});
  EXPECT_EQ(joblib::detail::resolve({.max_nbytes = std::nullopt}).max_nbytes, std::nullopt);
  EXPECT_EQ(joblib::detail::resolve({}).max_nbytes, std::optional<std::size_t>(2 * 1024 * 1024));
}

TEST(ScopeTest, AnExplicitZeroVerboseSilencesAVerboseScope) {
  joblib::parallel_config scope({.backend = "threading", .n_jobs = 2, .verbose = 10});
  ::testing::internal::CaptureStderr();
  std::vector<int> r = joblib::Parallel({.verbose = 0}).map([](int x) { return x; }, std::views::iota(0, 4));
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(r.size(), 4u);
  ::testing::internal::CaptureStderr();
  r = joblib::Parallel().map([](int x) { return x; }, std::views::iota(0, 4));
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("Using backend ThreadingBackend"), std::string::npos);
}
}  // namespace
