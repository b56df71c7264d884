// Scopes, n_jobs rules and backend resolution (joblib-behaviour.md §1.9).
#include "config.hpp"
#include "doc_quotes.hpp"
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

// ---- the messages docs/errors.md and docs/backends.md quote ----------------
namespace {

using joblib_test::expect_doc_quotes;
using joblib_test::replace_all;

// The std::invalid_argument message of `f` ("(no error)" if it throws none).
template <class F>
std::string invalid_argument_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no error)";
}

bool available(const std::string& name) {
  const auto names = joblib::available_backends();
  return std::find(names.begin(), names.end(), name) != names.end();
}

TEST_F(ResolutionTest, RequireSharedmemSubstitutionIsPrintedOnStdoutFromVerbose10) {
  joblib::parallel_backend scope("fake_processes", {.n_jobs = 2});
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(resolve({.verbose = 10, .require = Require::sharedmem}).backend_name, "threading");
  EXPECT_EQ(::testing::internal::GetCapturedStdout(),
            "Using ThreadingBackend as joblib backend instead of FakeProcessesBackend as the latter does not provide "
            "shared memory semantics.\n");
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(resolve({.verbose = 9, .require = Require::sharedmem}).backend_name, "threading");
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "") << "printed below verbose 10";
}

TEST(DocMessagesTest, RequireSharedmemInALokyScopeSaysWhichBackendItReplaces) {
  if (!available("loky")) GTEST_SKIP() << "the loky plugin is not built";
  joblib::parallel_backend scope("loky", {.n_jobs = 2});
  ::testing::internal::CaptureStdout();
  const auto r = resolve({.verbose = 10, .require = Require::sharedmem});
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(r.backend_name, "threading");
  const std::string expected =
      "Using ThreadingBackend as joblib backend instead of LokyBackend as the latter does not provide shared memory "
      "semantics.";
  EXPECT_EQ(out, expected + "\n");
  expect_doc_quotes("backends.md", expected);
}

TEST(DocMessagesTest, AnExplicitLokyWithSharedmemIsRefused) {
  if (!available("loky")) GTEST_SKIP() << "the loky plugin is not built";
  const std::string msg = invalid_argument_of(
      [] { resolve({.n_jobs = 2, .backend = "loky", .require = Require::sharedmem}); });
  EXPECT_EQ(msg, "Backend loky does not support shared memory");
  expect_doc_quotes("backends.md", msg);
  expect_doc_quotes("errors.md", replace_all(msg, "loky", "<name>"));
}

TEST(DocMessagesTest, ScopeOptionsAreRefusedWithTheDocumentedMessages) {
  using joblib::ConfigOptions;
  const std::string verbose = invalid_argument_of([] { joblib::parallel_config scope({.verbose = -1}); });
  EXPECT_EQ(verbose, "verbose must be >= 0, got -1");
  const std::string inner =
      invalid_argument_of([] { joblib::parallel_config scope({.backend = "threading", .inner_max_num_threads = 0}); });
  EXPECT_EQ(inner, "inner_max_num_threads must be at least 1, got 0");
  EXPECT_EQ(invalid_argument_of([] { joblib::parallel_backend scope("threading", {.inner_max_num_threads = 0}); }),
            inner);
  const std::string no_backend =
      "inner_max_num_threads and other constructor parameters backend_params are only supported when backend is not "
      "None.";
  EXPECT_EQ(invalid_argument_of([] { joblib::parallel_config scope({.inner_max_num_threads = 2}); }), no_backend);
  EXPECT_EQ(invalid_argument_of([] { joblib::parallel_config scope({.settings = {{"a", "b"}}}); }), no_backend);
  const std::string n_jobs = invalid_argument_of([] { joblib::parallel_config scope({.n_jobs = 0}); });
  EXPECT_EQ(n_jobs, "n_jobs == 0 in Parallel has no meaning");
  EXPECT_EQ(invalid_argument_of([] { (void)joblib::effective_n_jobs(0); }), n_jobs);
  const std::string max_nbytes = invalid_argument_of([] { joblib::parallel_config scope({.max_nbytes = "1Z"}); });
  EXPECT_EQ(max_nbytes,
            "max_nbytes: Invalid literal for size give: 1Z (type str) should be alike '10G', '500M', '50K'.");
  const std::string inconsistent = invalid_argument_of(
      [] { joblib::parallel_config scope({.prefer = Prefer::processes, .require = Require::sharedmem}); });
  EXPECT_EQ(inconsistent, "prefer == 'processes' and require == 'sharedmem' are inconsistent settings");
  for (const std::string& m : {verbose, inner, no_backend, n_jobs, max_nbytes, inconsistent})
    expect_doc_quotes("errors.md", m);
  expect_doc_quotes("backends.md", n_jobs);
  expect_doc_quotes("backends.md", inconsistent);
}

// Backends whose factory or nested_backend() fail, or that refuse generators.
class NoGeneratorsBackend final : public joblib::ParallelBackendBase {
 public:
  using ParallelBackendBase::ParallelBackendBase;
  std::string name() const override { return "no_generators"; }
  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c;
    c.uses_threads = true;
    c.supports_sharedmem = true;
    c.supports_return_generator = false;
    return c;
  }
  void submit(joblib::Batch& b) noexcept override { b.run(); }
};

class BadNestedBackend final : public joblib::ParallelBackendBase {
 public:
  using ParallelBackendBase::ParallelBackendBase;
  std::string name() const override { return "bad_nested"; }
  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c;
    c.uses_threads = true;
    return c;
  }
  void submit(joblib::Batch& b) noexcept override { b.run(); }
  joblib::NestedBackend nested_backend() const override { throw std::runtime_error("no nesting here"); }
};

int plus_one(int x) { return x + 1; }

template <class Error>
std::string error_of_call(const joblib::ParallelOptions& options) {
  try {
    joblib::Parallel(options).map(plus_one, std::vector{1, 2}).to_vector();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(DocMessagesTest, BackendsThatFailAtRunTimeAreNamed) {
  joblib::register_parallel_backend("no_backend_made", [](const joblib::BackendInit&) {
    return std::unique_ptr<joblib::ParallelBackendBase>();
  });
  joblib::register_parallel_backend("unreachable", [](const joblib::BackendInit&) -> std::unique_ptr<joblib::ParallelBackendBase> {
    throw std::runtime_error("cannot reach the cluster");
  });
  joblib::register_parallel_backend("bad_nested", [](const joblib::BackendInit& i) {
    return std::make_unique<BadNestedBackend>(i);
  });
  joblib::register_parallel_backend("no_generators", [](const joblib::BackendInit& i) {
    return std::make_unique<NoGeneratorsBackend>(i);
  });

  const std::string none = error_of_call<joblib::BackendError>({.n_jobs = 2, .backend = "no_backend_made"});
  EXPECT_EQ(none, "backend 'no_backend_made': its factory returned no backend");
  expect_doc_quotes("errors.md", replace_all(none, "no_backend_made", "<name>"));

  const std::string unreachable = error_of_call<joblib::BackendError>({.n_jobs = 2, .backend = "unreachable"});
  EXPECT_EQ(unreachable, "backend 'unreachable' failed to start: cannot reach the cluster");
  expect_doc_quotes("errors.md", replace_all(unreachable, "unreachable", "throws"));

  const std::string nested = error_of_call<joblib::BackendError>({.n_jobs = 2, .backend = "bad_nested"});
  EXPECT_EQ(nested, "backend 'bad_nested': nested_backend() failed: no nesting here");
  expect_doc_quotes("errors.md",
                    replace_all(replace_all(nested, "bad_nested", "<name>"), "no nesting here", "<what>"));

  const std::string generator = error_of_call<std::invalid_argument>(
      {.n_jobs = 2, .backend = "no_generators", .return_as = joblib::ReturnAs::generator});
  EXPECT_EQ(generator, "Backend no_generators does not support return_as=generator");
  expect_doc_quotes("errors.md", replace_all(generator, "no_generators", "<name>"));
  EXPECT_EQ(error_of_call<std::invalid_argument>(
                {.n_jobs = 2, .backend = "no_generators", .return_as = joblib::ReturnAs::generator_unordered}),
            "Backend no_generators does not support return_as=generator_unordered");
  // In list mode the same backend runs the call.
  std::vector<int> r = joblib::Parallel({.n_jobs = 2, .backend = "no_generators"}).map(plus_one, std::vector{1, 2});
  EXPECT_EQ(r, (std::vector<int>{2, 3}));
}

}  // namespace
