// Memory: hits and misses, the layout on disk, invalidation, eviction,
// robustness, and one computation per key across threads and processes.
#include "test_sync.hpp"

#include <joblib/joblib.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <csignal>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <ranges>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace memory_test {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::atomic<int> g_calls{0};

double square(double x, int /*unused*/) {
  ++g_calls;
  return x * x;
}
double cube(double x, int) {
  ++g_calls;
  return x * x * x;
}
int fails(int) {
  ++g_calls;
  throw std::runtime_error("no result");
}
joblib::Array<double> ramp(int n) {
  ++g_calls;
  joblib::Array<double> a({static_cast<std::size_t>(n)});
  for (int i = 0; i < n; ++i) a[static_cast<std::size_t>(i)] = i;
  return a;
}
std::string big_text(int n) {
  ++g_calls;
  return std::string(static_cast<std::size_t>(n), 'x');
}
// Counts its calls in a file (one line per call), so that processes can be counted.
int slow_counted(std::string count_file, int x) {
  {
    std::ofstream(count_file, std::ios::app) << ::getpid() << "\n";
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a workload that keeps the others waiting
  return x * 10;
}
std::size_t lines_of(const fs::path& p) {
  std::ifstream in(p);
  std::size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

fs::path fresh(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("joblib_memory_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

std::vector<fs::path> entries(const fs::path& root) {
  std::vector<fs::path> out;
  if (!fs::exists(root)) return out;
  for (auto& e : fs::recursive_directory_iterator(root))
    if (e.path().filename() == "output.joblib") out.push_back(e.path().parent_path());
  return out;
}

TEST(MemoryTest, ASecondCallWithTheSameArgumentsIsReadFromDisk) {
  const fs::path dir = fresh("hit");
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(square);
  g_calls = 0;
  EXPECT_EQ(cached(2.0, 0), 4.0);
  EXPECT_EQ(cached(2.0, 0), 4.0);
  EXPECT_EQ(g_calls, 1);
  EXPECT_EQ(cached(3.0, 0), 9.0);
  EXPECT_EQ(g_calls, 2);
  EXPECT_TRUE(cached.check_call_in_cache(2.0, 0));
  EXPECT_FALSE(cached.check_call_in_cache(5.0, 0));
  auto copy = cached;  // copies share the cache
  EXPECT_EQ(copy(3.0, 0), 9.0);
  EXPECT_EQ(g_calls, 2);
  fs::remove_all(dir);
}

void count_only(int) { ++g_calls; }

TEST(MemoryTest, AFunctionReturningVoidRunsOnceAndThenNotAgain) {
  const fs::path dir = fresh("void");
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(count_only);
  g_calls = 0;
  cached(1);
  cached(1);
  EXPECT_EQ(g_calls, 1);
  cached(2);
  EXPECT_EQ(g_calls, 2);
  auto through = joblib::Memory{}.cache(count_only);
  through(1);
  through(1);
  EXPECT_EQ(g_calls, 4);
  fs::remove_all(dir);
}

TEST(MemoryTest, NoLocationCallsThrough) {
  joblib::Memory memory;
  auto cached = memory.cache(square);
  g_calls = 0;
  EXPECT_EQ(cached(2.0, 0), 4.0);
  EXPECT_EQ(cached(2.0, 0), 4.0);
  EXPECT_EQ(g_calls, 2);
  EXPECT_FALSE(cached.check_call_in_cache(2.0, 0));
  auto ref = cached.call_and_shelve(3.0, 0);
  EXPECT_EQ(ref.get(), 9.0);
  ref.clear();
  EXPECT_THROW(ref.get(), joblib::StoreError);
  EXPECT_TRUE(memory.location().empty());
}

TEST(MemoryTest, IgnoredArgumentsDoNotChangeTheKey) {
  const fs::path dir = fresh("ignore");
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(square, {.ignore = {1}});
  g_calls = 0;
  EXPECT_EQ(cached(2.0, 1), 4.0);
  EXPECT_EQ(cached(2.0, 7), 4.0);
  EXPECT_EQ(g_calls, 1);
  fs::remove_all(dir);
}

TEST(MemoryTest, LayoutOnDiskIsModuleFunctionPrefixHash) {
  const fs::path dir = fresh("layout");
  fs::create_directories(dir);
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(square);
  cached(2.0, 0);
  EXPECT_EQ(memory.location(), dir / "joblib");
  std::ifstream gi(dir / ".gitignore");
  std::stringstream ss;
  ss << gi.rdbuf();
  EXPECT_EQ(ss.str(), "# Created by joblib automatically.\n*\n");
  const auto found = entries(dir / "joblib");
  ASSERT_EQ(found.size(), 1u);
  const fs::path entry = found[0];
  const std::string hash = entry.filename().string();
  EXPECT_EQ(hash.size(), 32u);
  EXPECT_EQ(entry.parent_path().filename().string(), hash.substr(0, 2));
  const fs::path function_dir = entry.parent_path().parent_path();
  EXPECT_THAT(function_dir.filename().string(), HasSubstr("square"));
  EXPECT_EQ(function_dir.parent_path().filename().string(), "joblib_tests");  // the module
  EXPECT_TRUE(fs::exists(function_dir / "func_code.txt"));
  std::ifstream meta(entry / "metadata.json");
  std::stringstream ms;
  ms << meta.rdbuf();
  EXPECT_THAT(ms.str(), HasSubstr("\"duration\": "));
  EXPECT_THAT(ms.str(), HasSubstr("\"input_args\": {\"0\": \"2.000000\", \"1\": \"0\"}"));
  EXPECT_THAT(ms.str(), HasSubstr("\"time\": "));
  // A .gitignore of the user's is never overwritten.
  { std::ofstream(dir / ".gitignore") << "mine\n"; }
  joblib::Memory again(dir, {.verbose = 0});
  std::ifstream gi2(dir / ".gitignore");
  std::string first;
  std::getline(gi2, first);
  EXPECT_EQ(first, "mine");
  fs::remove_all(dir);
}

TEST(MemoryTest, ExceptionsAreNeverCached) {
  const fs::path dir = fresh("exceptions");
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(fails);
  g_calls = 0;
  EXPECT_THROW(cached(1), std::runtime_error);
  EXPECT_THROW(cached(1), std::runtime_error);
  EXPECT_EQ(g_calls, 2);
  EXPECT_TRUE(entries(dir / "joblib").empty());
  fs::remove_all(dir);
}

TEST(MemoryTest, DifferentCodeUnderOneNameNeverSharesEntries) {
  const fs::path dir = fresh("code");
  joblib::Memory memory(dir, {.verbose = 0});
  auto a = memory.cache("f", square);
  g_calls = 0;
  EXPECT_EQ(a(2.0, 0), 4.0);
  ::testing::internal::CaptureStderr();
  auto b = memory.cache("f", cube);  // another function's code under the same name
  const std::string warned = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(warned, HasSubstr("Possible name collisions between functions cached as 'f'"));
  EXPECT_EQ(b(2.0, 0), 8.0);
  EXPECT_EQ(g_calls, 2);
  // The same code is identified the same way every time.
  const auto id1 = joblib::detail::function_identity(reinterpret_cast<const void*>(&square), "", "", std::nullopt);
  const auto id2 = joblib::detail::function_identity(reinterpret_cast<const void*>(&square), "", "", std::nullopt);
  const auto id3 = joblib::detail::function_identity(reinterpret_cast<const void*>(&cube), "", "", std::nullopt);
  EXPECT_EQ(id1.fingerprint, id2.fingerprint);
  EXPECT_NE(id1.fingerprint, id3.fingerprint);
  EXPECT_EQ(id1.fingerprint.size(), 32u);  // the code's own digest, not a build-id fallback
  EXPECT_THAT(id1.name, HasSubstr("square(double, int)"));
  fs::remove_all(dir);
}

TEST(MemoryTest, AnExplicitVersionReplacesTheFingerprint) {
  const fs::path dir = fresh("version");
  joblib::Memory memory(dir, {.verbose = 0});
  g_calls = 0;
  EXPECT_EQ(memory.cache("sq1", square, {.version = "1"})(2.0, 0), 4.0);
  EXPECT_EQ(memory.cache("sq1", square, {.version = "1"})(2.0, 0), 4.0);
  EXPECT_EQ(g_calls, 1);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(memory.cache("sq1", square, {.version = "2"})(2.0, 0), 4.0);
  ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(g_calls, 2);
  fs::remove_all(dir);
}

TEST(MemoryTest, CallAndShelveLeavesTheResultOnDisk) {
  const fs::path dir = fresh("shelve");
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(square);
  g_calls = 0;
  auto ref = cached.call_and_shelve(3.0, 0);
  EXPECT_EQ(ref.get(), 9.0);
  auto ref2 = cached.call_and_shelve(3.0, 0);
  EXPECT_EQ(g_calls, 1);
  EXPECT_EQ(ref2.path(), ref.path());
  ref.clear();
  ref.clear();  // twice is fine
  try {
    ref2.get();
    FAIL();
  } catch (const joblib::StoreError& e) {
    EXPECT_THAT(e.what(), HasSubstr("Non-existing item (may have been cleared)."));
  }
  fs::remove_all(dir);
}

TEST(MemoryTest, CallWithMetadataAlwaysComputes) {
  const fs::path dir = fresh("metadata");
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(square);
  g_calls = 0;
  auto [value, meta] = cached.call_with_metadata(4.0, 0);
  EXPECT_EQ(value, 16.0);
  EXPECT_GE(meta.duration, 0.0);
  EXPECT_GT(meta.time, 1.6e9);
  EXPECT_EQ(meta.input_args.at("0"), "4.000000");
  cached.call_with_metadata(4.0, 0);
  EXPECT_EQ(g_calls, 2);
  EXPECT_EQ(cached(4.0, 0), 16.0);  // stored by call_with_metadata
  EXPECT_EQ(g_calls, 2);
  fs::remove_all(dir);
}

TEST(MemoryTest, ValidationCallbackAndExpiry) {
  const fs::path dir = fresh("expiry");
  joblib::Memory memory(dir, {.verbose = 0});
  auto fresh_only = memory.cache(square, {.cache_validation_callback = joblib::expires_after(std::chrono::seconds(0))});
  g_calls = 0;
  fresh_only(2.0, 0);
  fresh_only(2.0, 0);
  EXPECT_EQ(g_calls, 2);  // an entry 0 s old is already expired
  auto lasting = memory.cache(cube, {.cache_validation_callback = joblib::expires_after(std::chrono::hours(1))});
  lasting(2.0, 0);
  lasting(2.0, 0);
  EXPECT_EQ(g_calls, 3);
  int seen = 0;
  auto custom = memory.cache("custom", square, {.cache_validation_callback = [&seen](const joblib::CallMetadata& m) {
                                                  ++seen;
                                                  return m.input_args.count("0") == 1;
                                                }});
  custom(5.0, 0);
  custom(5.0, 0);
  EXPECT_EQ(seen, 1);
  EXPECT_EQ(g_calls, 4);
  fs::remove_all(dir);
}

TEST(MemoryTest, ACorruptedEntryWarnsOnceAndIsComputedAgain) {
  const fs::path dir = fresh("corrupted");
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(big_text);
  g_calls = 0;
  cached(1000);
  const auto found = entries(dir / "joblib");
  ASSERT_EQ(found.size(), 1u);
  fs::resize_file(found[0] / "output.joblib", 40);  // truncated
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(cached(1000).size(), 1000u);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("cannot be read"));
  EXPECT_THAT(err, HasSubstr("computing it again"));
  EXPECT_EQ(g_calls, 2);
  EXPECT_EQ(cached(1000).size(), 1000u);
  EXPECT_EQ(g_calls, 2);
  fs::remove_all(dir);
}

TEST(MemoryTest, CompressedResultsAreReadIntoMemoryWithOneWarning) {
  const fs::path dir = fresh("compressed");
  ::testing::internal::CaptureStderr();
  joblib::Memory memory(dir, {.verbose = 0, .mmap_mode = joblib::MmapMode::r, .compress = {"zstd", 3}});
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("Compressed results cannot be memmapped"));
  auto cached = memory.cache(ramp);
  ::testing::internal::CaptureStderr();
  auto a = cached(1000);
  auto b = cached(1000);
  ::testing::internal::GetCapturedStderr();
  EXPECT_FALSE(b.is_mapped());
  EXPECT_EQ(std::as_const(b)[999], 999.0);
  fs::remove_all(dir);
}

TEST(MemoryTest, AReaderDuringAWritersRenameSeesAWholeResult) {
  const fs::path dir = fresh("rename");
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(big_text);
  const std::string expected(200000, 'x');
  EXPECT_EQ(cached(200000), expected);
  std::atomic<bool> done{false};
  std::atomic<int> rewrites{0};
  ::testing::internal::CaptureStderr();
  std::thread writer([&] {
    while (!done.load()) {  // always computes, and renames a new result over the old one
      cached.call_with_metadata(200000);
      ++rewrites;
    }
  });
  int bad = 0;
  for (int i = 0; i < 300 || rewrites.load() < 20; ++i) bad += cached(200000) == expected ? 0 : 1;
  done = true;
  writer.join();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(bad, 0);
  EXPECT_THAT(err, ::testing::Not(HasSubstr("cannot be read"))) << err;
  fs::remove_all(dir);
}

TEST(MemoryTest, AFullDiskCallsThroughAndLeavesNoPartialFile) {
  const fs::path dir = fresh("full");
  { joblib::Memory warm(dir, {.verbose = 0}); }
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit {4096, 4096};  // every file beyond 4 KiB fails to grow: a full disk
    ::setrlimit(RLIMIT_FSIZE, &limit);
    joblib::Memory memory(dir, {.verbose = 0});
    auto cached = memory.cache(big_text);
    const bool ok = cached(100000).size() == 100000 && cached(100000).size() == 100000;
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    EXPECT_NE(e.path().filename(), "output.joblib") << e.path();
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  }
  fs::remove_all(dir);
}

TEST(MemoryTest, ALocationThatIsAFileIsAnError) {
  const fs::path file = fresh("file");
  { std::ofstream(file) << "x"; }
  try {
    joblib::Memory memory(file);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), "Memory location '" + file.string() + "' is not a folder");
  }
  fs::remove(file);
}

TEST(MemoryTest, AnUnwritableLocationCallsThroughWithOneWarning) {
  ::testing::internal::CaptureStderr();
  joblib::Memory memory("/proc/joblib-cannot-write-here", {.verbose = 0});
  auto cached = memory.cache(square);
  g_calls = 0;
  EXPECT_EQ(cached(2.0, 0), 4.0);
  EXPECT_EQ(cached(2.0, 0), 4.0);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(g_calls, 2);
  EXPECT_THAT(err, HasSubstr("cannot be written"));
  EXPECT_THAT(err, HasSubstr("calls go through without caching"));
}

TEST(MemoryTest, MmapModeReturnsMappedArraysFromTheFirstCall) {
  const fs::path dir = fresh("mmap");
  joblib::Memory memory(dir, {.verbose = 0, .mmap_mode = joblib::MmapMode::r});
  auto cached = memory.cache(ramp);
  g_calls = 0;
  auto a = cached(100000);
  EXPECT_TRUE(a.is_mapped());
  EXPECT_EQ(std::as_const(a)[99999], 99999.0);
  auto b = cached(100000);
  EXPECT_TRUE(b.is_mapped());
  EXPECT_EQ(g_calls, 1);
  fs::remove_all(dir);
}

TEST(MemoryTest, ReduceSizeEvictsLeastRecentlyUsedFirst) {
  const fs::path dir = fresh("reduce");
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(big_text);
  cached(10000);
  cached(20000);
  cached(30000);
  ASSERT_EQ(entries(dir / "joblib").size(), 3u);
  // Entries' access times are the cache's own: use the oldest entry now.
  std::this_thread::sleep_for(std::chrono::milliseconds(150));  // distinct access times (recorded every 0.1 s at most), not a synchronisation
  cached(10000);
  memory.reduce_size({.items_limit = 1});
  g_calls = 0;
  ASSERT_EQ(entries(dir / "joblib").size(), 1u);
  cached(10000);
  EXPECT_EQ(g_calls, 0);  // the most recently used survived
  memory.reduce_size({.bytes_limit = "1K"});
  EXPECT_TRUE(entries(dir / "joblib").empty());
  cached(10000);
  memory.reduce_size({.age_limit = std::chrono::seconds(3600)});
  EXPECT_EQ(entries(dir / "joblib").size(), 1u);
  EXPECT_THROW(memory.reduce_size({.age_limit = std::chrono::seconds(-1)}), std::invalid_argument);
  EXPECT_THROW(memory.reduce_size({.bytes_limit = "lots"}), std::invalid_argument);
  fs::remove_all(dir);
}

TEST(MemoryTest, ABytesLimitEvictsAfterEachStore) {
  const fs::path dir = fresh("auto");
  joblib::Memory memory(dir, {.verbose = 0, .bytes_limit = "30K"});
  auto cached = memory.cache(big_text);
  cached(20000);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));  // distinct access times (recorded every 0.1 s at most)
  cached(20001);
  const auto left = entries(dir / "joblib");
  ASSERT_EQ(left.size(), 1u);
  g_calls = 0;
  cached(20001);
  EXPECT_EQ(g_calls, 0);
  fs::remove_all(dir);
}

TEST(MemoryTest, ClearRemovesEntries) {
  const fs::path dir = fresh("clear");
  joblib::Memory memory(dir, {.verbose = 0});
  auto a = memory.cache(square);
  auto b = memory.cache(cube);
  a(2.0, 0);
  b(2.0, 0);
  a.clear();
  EXPECT_FALSE(a.check_call_in_cache(2.0, 0));
  EXPECT_TRUE(b.check_call_in_cache(2.0, 0));
  memory.clear();
  EXPECT_FALSE(b.check_call_in_cache(2.0, 0));
  EXPECT_TRUE(fs::is_directory(dir / "joblib"));
  fs::remove_all(dir);
}

TEST(MemoryTest, VerboseLinesAsJoblibPrintsThem) {
  const fs::path dir = fresh("verbose");
  joblib::Memory memory(dir, {.verbose = 2});
  auto cached = memory.cache("sq", square);
  ::testing::internal::CaptureStdout();
  cached(2.0, 0);
  cached(2.0, 0);
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_THAT(out, HasSubstr(std::string(80, '_') + "\n[Memory] Calling joblib_tests.sq...\nsq(2.000000, 0)\n"));
  EXPECT_THAT(out, HasSubstr("sq - 0.0s, 0.0min\n"));
  EXPECT_THAT(out, HasSubstr(": Loading sq...\n"));
  EXPECT_THAT(out, HasSubstr("[Memory]"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("cache loaded")));  // from verbose 5
  fs::remove_all(dir);
}

TEST(MemoryTest, HigherVerbosityAddsJoblibsOtherLines) {
  const fs::path dir = fresh("verbose20");
  joblib::Memory memory(dir, {.verbose = 20});
  auto cached = memory.cache("sq", square);
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  cached(3.0, 1);
  cached(3.0, 1);
  const std::string err = ::testing::internal::GetCapturedStderr();
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_THAT(err, HasSubstr("UserWarning: Computing func sq, argument hash "));
  EXPECT_THAT(out, HasSubstr("[Memory] Querying sq with signature sq(3.000000, 1)\n"));
  EXPECT_THAT(out, HasSubstr("sq cache loaded - 0.0s, 0.0min\n"));
  EXPECT_THAT(out, HasSubstr(": Loading sq from " + (dir / "joblib").string()));
  // Arguments are listed in their order, whatever their number.
  auto many = memory.cache("many", +[](int a, int, int, int, int, int, int, int, int, int, int b) { return a + b; });
  ::testing::internal::CaptureStdout();
  many(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
  EXPECT_THAT(::testing::internal::GetCapturedStdout(), HasSubstr("many(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)\n"));
  fs::remove_all(dir);
}

TEST(MemoryTest, HashIsInPlaceAndByValue) {
  joblib::Array<double> a({1000});
  joblib::Array<double> b({1000});
  EXPECT_EQ(joblib::hash(a), joblib::hash(b));
  b[3] = 1;
  EXPECT_NE(joblib::hash(a), joblib::hash(b));
  EXPECT_EQ(joblib::hash(1, std::string("x")).size(), 32u);
  EXPECT_NE(joblib::hash(1, std::string("x")), joblib::hash(2, std::string("x")));
}

// ---- one computation per key ------------------------------------------------------

TEST(MemoryTest, ThreadsMissingOneKeyComputeItOnce) {
  const fs::path dir = fresh("threads");
  const fs::path count = dir.string() + ".count";
  fs::remove(count);
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(slow_counted, {.ignore = {0}});
  std::vector<std::thread> threads;
  std::vector<int> results(4);
  for (int i = 0; i < 4; ++i) threads.emplace_back([&, i] { results[static_cast<std::size_t>(i)] = cached(count.string(), 7); });
  for (auto& t : threads) t.join();
  EXPECT_EQ(lines_of(count), 1u);
  EXPECT_EQ(results, (std::vector<int>{70, 70, 70, 70}));
  fs::remove_all(dir);
  fs::remove(count);
}

TEST(MemoryTest, WorkerProcessesShareTheCacheAndComputeOnce) {
  const fs::path dir = fresh("workers");
  const fs::path count = dir.string() + ".count";
  fs::remove(count);
  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(slow_counted, {.ignore = {0}});
  for (const char* backend : {"loky", "multiprocessing"}) {
    std::vector<int> r = joblib::Parallel({.n_jobs = 2, .backend = backend, .batch_size = 1})(
        std::views::iota(0, 4) | std::views::transform([&](int) { return joblib::delayed(cached)(count.string(), 3); }));
    EXPECT_EQ(r, (std::vector<int>{30, 30, 30, 30})) << backend;
  }
  EXPECT_EQ(lines_of(count), 1u);
  EXPECT_TRUE(cached.check_call_in_cache(count.string(), 3));
  fs::remove_all(dir);
  fs::remove(count);
}

TEST(MemoryTest, IndependentProcessesRacingOnOneKeyComputeOnce) {
  const fs::path dir = fresh("race");
  const fs::path count = dir.string() + ".count";
  fs::remove(count);
  std::vector<pid_t> children;
  for (int i = 0; i < 3; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      joblib::Memory memory(dir, {.verbose = 0});
      const int r = memory.cache(slow_counted, {.ignore = {0}})(count.string(), 5);
      ::_exit(r == 50 ? 0 : 1);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  EXPECT_EQ(lines_of(count), 1u);
  fs::remove_all(dir);
  fs::remove(count);
}

int die_while_computing(std::string marker, int) {
  { std::ofstream(marker) << "started\n"; }
  ::_exit(9);
}

TEST(MemoryTest, ALockWhoseOwnerDiedIsTakenOver) {
  const fs::path dir = fresh("takeover");
  const fs::path marker = dir.string() + ".marker";
  fs::remove(marker);
  const pid_t pid = ::fork();
  if (pid == 0) {
    joblib::Memory memory(dir, {.verbose = 0});
    memory.cache("work", die_while_computing, {.ignore = {0}, .version = "w"})(marker.string(), 1);
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 9);
  ASSERT_TRUE(fs::exists(marker));
  // The dead owner's lock is gone with it: this caller computes.
  joblib::Memory memory(dir, {.verbose = 0});
  auto same_name = memory.cache("work", +[](std::string, int x) { return x + 100; }, {.ignore = {0}, .version = "w"});
  EXPECT_EQ(same_name(marker.string(), 1), 101);
  fs::remove_all(dir);
  fs::remove(marker);
}

}  // namespace
}  // namespace memory_test
