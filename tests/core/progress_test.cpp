// Progress (core/parallel/progress.hpp): joblib's verbose lines, the
// on_progress callback and the live bar, through Parallel and on the
// printer alone.
#include "doc_quotes.hpp"
#include "progress.hpp"

#include <joblib/joblib.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pty.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <ranges>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using joblib::delayed;
using joblib::Parallel;
using joblib::detail::ProgressPrinter;
using joblib::detail::ProgressState;

int square(int x) { return x * x; }
// ---- progress ----------------------------------------------------------------

TEST(ProgressTest, VerbosePrintsJoblibLinesOnStderr) {
  ::testing::internal::CaptureStderr();
  std::vector<int> r = Parallel({.n_jobs = 2, .verbose = 10}).map(square, std::views::iota(0, 10));
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, ::testing::HasSubstr("[Parallel(n_jobs=2)]: Using backend ThreadingBackend with 2 concurrent workers.\n"));
  EXPECT_THAT(err, ::testing::MatchesRegex("(.|\n)*\\[Parallel\\(n_jobs=2\\)\\]: Done 10 out of 10 \\| elapsed: +[0-9.]+s finished\n$"));
}

TEST(ProgressTest, VerboseFrom50PrintsOnStdout) {
  ::testing::internal::CaptureStdout();
  std::vector<int> r = Parallel({.n_jobs = 1, .verbose = 50}).map(square, std::views::iota(0, 3));
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_THAT(out, ::testing::HasSubstr("[Parallel(n_jobs=1)]: Done 3 out of 3 | elapsed:"));
}

TEST(ProgressTest, UnknownLengthUsesTheTasksForm) {
  ::testing::internal::CaptureStderr();
  auto unsized = std::views::iota(0) | std::views::take_while([](int i) { return i < 3; }) |
                 std::views::transform([](int i) { return delayed(square)(i); });
  std::vector<int> r = Parallel({.n_jobs = 1, .verbose = 20})(unsized);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, ::testing::HasSubstr("[Parallel(n_jobs=1)]: Done   1 tasks      | elapsed:"));
  EXPECT_THAT(err, ::testing::HasSubstr("Done   3 out of   3 | elapsed:"));
}

TEST(ProgressTest, CallbackWorksInSequentialMode) {
  std::vector<std::size_t> seen;
  std::optional<std::size_t> total;
  std::vector<int> r = Parallel({.n_jobs = 1, .batch_size = 1,
                                 .on_progress = [&](std::size_t done, std::optional<std::size_t> t) {
                                   seen.push_back(done);
                                   total = t;
                                 }}).map(square, std::views::iota(0, 5));
  EXPECT_EQ(seen, (std::vector<std::size_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(total, std::optional<std::size_t>(5));
}

TEST(ProgressTest, CallbackCountsAutoBatchesInSequentialMode) {
  std::vector<std::size_t> seen;
  std::vector<int> r = Parallel({.n_jobs = 1, .on_progress = [&](std::size_t done, std::optional<std::size_t>) {
                                   seen.push_back(done);
                                 }}).map(square, std::views::iota(0, 1000));
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.front(), 1u);  // auto batching starts at one task
  EXPECT_EQ(seen.back(), 1000u);
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  EXPECT_LT(seen.size(), 1000u);  // tiny tasks are batched
}

TEST(ProgressTest, CallbackReachesTheTotalInParallelMode) {
  std::atomic<std::size_t> last{0};
  std::vector<int> r = Parallel({.n_jobs = 2, .on_progress = [&](std::size_t done, std::optional<std::size_t>) {
                                   last = done;
                                 }}).map(square, std::views::iota(0, 500));
  EXPECT_EQ(last.load(), 500u);
}

TEST(ProgressTest, ThrowingCallbackStopsTheCallWithItsError) {
  EXPECT_THROW(joblib::Parallel({.n_jobs = 2, .on_progress = [](std::size_t, std::optional<std::size_t>) {
                 throw std::runtime_error("progress sink failed");
               }}).map([](int x) { return x; }, std::views::iota(0, 100)).to_vector(),
               std::runtime_error);
}

TEST(ProgressTest, UnknownTotalIsGivenAtTheEnd) {
  std::optional<std::size_t> last_total;
  auto unsized = std::views::iota(0) | std::views::take_while([](int i) { return i < 5; }) |
                 std::views::transform([](int i) { return joblib::delayed([](int x) { return x; })(i); });
  std::vector<int> r = joblib::Parallel({.n_jobs = 1, .on_progress = [&](std::size_t, std::optional<std::size_t> t) {
                                           last_total = t;
                                         }})(unsized);
  EXPECT_EQ(last_total, std::optional<std::size_t>(5));
}


// Runs `call` with stderr on a terminal (a pty) and returns all it drew.
template <class F>
std::string stderr_on_a_terminal(F call) {
  int master = -1, slave = -1;
  if (::openpty(&master, &slave, nullptr, nullptr, nullptr) != 0) return "openpty failed";
  std::fflush(stderr);
  const int saved = ::dup(2);
  ::dup2(slave, 2);
  call();
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  ::close(slave);
  std::string seen;
  char buf[4096];
  for (ssize_t n; (n = ::read(master, buf, sizeof buf)) > 0;) seen.append(buf, static_cast<std::size_t>(n));
  ::close(master);  // (read ends with EIO once every copy of the slave is closed)
  return seen;
}

TEST(ProgressTest, BarShowsRateAndEtaWhenStderrIsATerminal) {
  const std::string seen = stderr_on_a_terminal([] {
    std::vector<int> r = joblib::Parallel({.n_jobs = 2, .batch_size = 1, .progress_bar = true})
                             .map([](int x) { return x; }, std::views::iota(0, 50));
  });
  EXPECT_THAT(seen, ::testing::HasSubstr("50/50"));
  EXPECT_THAT(seen, ::testing::HasSubstr("tasks/s"));
  EXPECT_THAT(seen, ::testing::HasSubstr("ETA"));
  // The line docs/backends.md shows: a 30-cell bar, done/total, the rate, the ETA.
  EXPECT_TRUE(std::regex_search(seen, std::regex(R"(\r\[#{30}\] 50/50 [0-9]+\.[0-9] tasks/s ETA +[0-9]+\.[0-9](s|min))")))
      << seen;
  joblib_test::expect_doc_quotes("backends.md", "`[#########.....................] 312/1000 1520.3 tasks/s ETA    0.5s`");
}

TEST(ProgressTest, TheBarDrawsItsLastLineOnce) {
  const std::string seen = stderr_on_a_terminal([] {
    std::vector<int> r = joblib::Parallel({.n_jobs = 2, .batch_size = 1, .progress_bar = true})
                             .map([](int x) { return x; }, std::views::iota(0, 7));
  });
  std::size_t finals = 0;
  for (auto at = seen.find("7/7"); at != std::string::npos; at = seen.find("7/7", at + 1)) ++finals;
  EXPECT_EQ(finals, 1u) << seen;
}

TEST(ProgressTest, VerboseFloatsArePrintedAsPythonPrintsThem) {
  using joblib::detail::python_float;
  EXPECT_EQ(python_float(3.0441000000000002e-05), "3.0441e-05");
  EXPECT_EQ(python_float(0.001032689), "0.001032689");
  EXPECT_EQ(python_float(0.1 + 0.2), "0.3");
  EXPECT_EQ(python_float(2.0), "2.0");
  EXPECT_EQ(python_float(1e-06), "1e-06");
  EXPECT_EQ(python_float(1e16), "1e+16");
  EXPECT_EQ(python_float(std::numeric_limits<double>::infinity()), "inf");
}

TEST(ProgressTest, AutoBatchingLinesShowShortFloats) {
  ::testing::internal::CaptureStderr();
  std::vector<int> r = joblib::Parallel({.n_jobs = 2, .verbose = 10})
                           .map([](int x) { return x; }, std::views::iota(0, 20000));
  const std::string err = ::testing::internal::GetCapturedStderr();
  const std::regex line(R"(Batch computation too fast \(([0-9.e+-]+)s\.\) Setting batch_size=\d+\.)");
  std::size_t lines = 0;
  for (std::sregex_iterator it(err.begin(), err.end(), line), end; it != end; ++it) {
    ++lines;
    const std::string number = (*it)[1];
    std::size_t digits = 0;
    for (char c : number.substr(0, number.find('e'))) digits += std::isdigit(static_cast<unsigned char>(c)) ? 1 : 0;
    EXPECT_LE(digits, 16u) << number;  // at most 15 significant digits (plus a leading 0)
  }
  EXPECT_GE(lines, 1u) << err;
}

TEST(ProgressTest, NoBarWhenStderrIsNotATerminal) {
  ::testing::internal::CaptureStderr();
  std::vector<int> r = joblib::Parallel({.n_jobs = 2, .progress_bar = true}).map([](int x) { return x; }, std::views::iota(0, 50));
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
}

// ---- the printer alone ---------------------------------------------------------

TEST(ProgressPrinterTest, TheFinalLineHasJoblibsFormat) {
  ProgressPrinter p(10, "Parallel(n_jobs=2)", false);
  ProgressState s;
  s.n_tasks = 100;
  s.completed_tasks = s.dispatched_tasks = 100;
  s.iterating = false;
  s.completed = true;
  ::testing::internal::CaptureStderr();
  EXPECT_TRUE(p.print_progress(s));
  EXPECT_THAT(::testing::internal::GetCapturedStderr(),
              ::testing::MatchesRegex(R"(\[Parallel\(n_jobs=2\)\]: Done 100 out of 100 \| elapsed: +[0-9.]+s finished)" "\n"));
}

TEST(ProgressPrinterTest, WhileIteratingTheFilterThinsTheLinesAsJoblibs) {
  // verbose = 1: joblib prints at dispatched batch counts where
  // floor(sqrt(i / 50)) changes: 0, 49, 199, 449 (of 0..499).
  ProgressPrinter p(1, "Parallel(n_jobs=2)", false);
  ProgressState s;
  s.n_tasks = 1000;
  std::vector<std::size_t> printed;
  for (std::size_t i = 0; i < 500; ++i) {
    s.dispatched_batches = i;
    ::testing::internal::CaptureStderr();
    p.print_progress(s);
    if (!::testing::internal::GetCapturedStderr().empty()) printed.push_back(i);
  }
  EXPECT_EQ(printed, (std::vector<std::size_t>{0, 49, 199, 449}));
}

TEST(ProgressPrinterTest, AfterTheInputIsPulledItShowsTheRemainingTime) {
  ProgressPrinter p(100, "Parallel(n_jobs=2)", false);
  ProgressState s;
  s.n_tasks = 10;
  s.dispatched_tasks = 10;
  s.completed_tasks = 4;
  s.iterating = false;
  ::testing::internal::CaptureStdout();  // verbose >= 50 prints on stdout
  p.print_progress(s);
  EXPECT_THAT(::testing::internal::GetCapturedStdout(),
              ::testing::MatchesRegex(R"(\[Parallel\(n_jobs=2\)\]: Done  4 out of 10 \| elapsed: +[0-9.]+s remaining: +[0-9.]+s)" "\n"));
}

TEST(ProgressPrinterTest, VerboseZeroPrintsNothing) {
  ProgressPrinter p(0, "Parallel(n_jobs=2)", true);
  ProgressState s;
  s.completed = true;
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(p.print_progress(s));
  p.message("hello");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
}

}  // namespace
