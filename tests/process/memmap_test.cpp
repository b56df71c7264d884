// Memmapped arguments of process tasks: which file each array travels in,
// in which mode, and what a task may do with it (docs/backends.md,
// "Memmapping"; API.md, "Arrays").
#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <ranges>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace {
namespace fs = std::filesystem;
using joblib::Array;
using joblib::delayed;
using joblib::MmapMode;
using joblib::Parallel;

fs::path fresh_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("joblib_memmap_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Writes its index into its own array and says which file it was given.
std::string write_index(Array<int> a, int i) {
  a[0] = i;
  return a.filename().string();
}

// Reads through the non-const accessors only, as ordinary code does.
double total(Array<double> a) {
  double s = 0;
  for (double& x : a) s += x;
  return s + a[0] * 0 + *a.data() * 0 + a.span()[0] * 0;
}

// Writes into a read-only mapping (its private pages), then reads it back.
double write_then_read(Array<double> a) {
  a[0] = 99.0;
  return a[0];
}

std::pair<std::string, double> file_and_value(Array<double> a, std::size_t i) { return {a.filename().string(), a[i]}; }

Array<double> ramp(std::size_t n) {
  Array<double> a({n});
  for (std::size_t i = 0; i < n; ++i) a[i] = double(i);
  return a;
}

class MemmapModes : public ::testing::TestWithParam<std::pair<const char*, MmapMode>> {};

TEST_P(MemmapModes, DistinctArraysWithEqualContentsGetDistinctWritableFiles) {
  const auto [backend, mode] = GetParam();
  // Ten distinct zero-filled arrays: equal bytes, distinct objects. Workers
  // may write into them (r+, w+), so no two may share a file.
  std::vector<Array<int>> arrays;
  for (int i = 0; i < 10; ++i) arrays.emplace_back(std::vector<std::size_t>{64});
  std::vector<std::string> files = Parallel({.n_jobs = 2, .backend = backend, .max_nbytes = "0", .mmap_mode = mode})(
      std::views::iota(0, 10) | std::views::transform([&](int i) { return delayed(write_index)(arrays[i], i); }));
  std::set<std::string> distinct(files.begin(), files.end());
  EXPECT_EQ(distinct.size(), 10u);
  for (const std::string& f : files) EXPECT_FALSE(f.empty());
}

TEST_P(MemmapModes, OneArrayPassedTwiceTravelsInOneFile) {
  const auto [backend, mode] = GetParam();
  Array<int> shared({64});
  std::vector<std::string> files = Parallel({.n_jobs = 2, .backend = backend, .max_nbytes = "0", .mmap_mode = mode})(
      std::views::iota(0, 2) | std::views::transform([&](int i) { return delayed(write_index)(shared, i); }));
  EXPECT_EQ(files[0], files[1]);
}

INSTANTIATE_TEST_SUITE_P(Backends, MemmapModes,
                         ::testing::Values(std::pair{"loky", MmapMode::r_plus}, std::pair{"loky", MmapMode::w_plus},
                                           std::pair{"multiprocessing", MmapMode::r_plus},
                                           std::pair{"multiprocessing", MmapMode::w_plus}));

class MemmapBackends : public ::testing::TestWithParam<const char*> {};

TEST_P(MemmapBackends, ReadOnlyMappedArraysReadThroughEveryAccessor) {
  // The same task on threads and in processes: code that only reads works
  // the same on both, through the non-const accessors.
  const Array<double> a = ramp(1000);
  const double expected = 999.0 * 1000.0 / 2;
  std::vector<double> on_threads = Parallel({.n_jobs = 2, .backend = "threading"})(
      std::views::iota(0, 2) | std::views::transform([&](int) { return delayed(total)(a); }));
  std::vector<double> in_processes = Parallel({.n_jobs = 2, .backend = GetParam(), .max_nbytes = "0"})(
      std::views::iota(0, 2) | std::views::transform([&](int) { return delayed(total)(a); }));
  EXPECT_EQ(on_threads, (std::vector<double>{expected, expected}));
  EXPECT_EQ(in_processes, (std::vector<double>{expected, expected}));
}

TEST_P(MemmapBackends, AWriteToAReadOnlyMappingNeverReachesTheFile) {
  const fs::path dir = fresh_dir(std::string("ro_") + GetParam());
  joblib::dump(ramp(1000), dir / "a.joblib");
  auto mapped = joblib::load<Array<double>>(dir / "a.joblib", {.mmap_mode = MmapMode::r});
  std::vector<double> seen = Parallel({.n_jobs = 2, .backend = GetParam(), .max_nbytes = "0"})(
      std::views::iota(0, 2) | std::views::transform([&](int) { return delayed(write_then_read)(mapped); }));
  EXPECT_EQ(seen, (std::vector<double>{99.0, 99.0}));
  EXPECT_EQ(std::as_const(mapped)[0], 0.0);
  EXPECT_EQ(joblib::load<Array<double>>(dir / "a.joblib")[0], 0.0);
  fs::remove_all(dir);
}

TEST_P(MemmapBackends, ACopyOnWriteMappingTravelsAsItsOwnFileInModeC) {
  const fs::path dir = fresh_dir(std::string("c_") + GetParam());
  joblib::dump(ramp(100000), dir / "a.joblib");
  auto cow = joblib::load<Array<double>>(dir / "a.joblib", {.mmap_mode = MmapMode::c});
  // Its own file, not a copy in the call's temp folder; writable in the task
  // (copy on write there too), and the file untouched.
  std::vector<double> seen = Parallel({.n_jobs = 2, .backend = GetParam()})(
      std::views::iota(0, 2) | std::views::transform([&](int) { return delayed(write_then_read)(cow); }));
  EXPECT_EQ(seen, (std::vector<double>{99.0, 99.0}));
  std::vector<std::pair<std::string, double>> where = Parallel({.n_jobs = 2, .backend = GetParam()})(
      std::views::iota(0, 1) | std::views::transform([&](int) { return delayed(file_and_value)(cow, std::size_t{5}); }));
  EXPECT_EQ(fs::path(where[0].first), fs::absolute(dir / "a.joblib"));
  EXPECT_EQ(where[0].second, 5.0);
  EXPECT_EQ(joblib::load<Array<double>>(dir / "a.joblib")[0], 0.0);
  fs::remove_all(dir);
}

TEST_P(MemmapBackends, AMappingWrittenByTheCallerTravelsWithItsWrites) {
  // The caller's writes to a private (c) mapping are not in the file: the
  // array then travels as its bytes, so the task sees what the caller sees.
  const fs::path dir = fresh_dir(std::string("cw_") + GetParam());
  joblib::dump(ramp(100000), dir / "a.joblib");
  auto cow = joblib::load<Array<double>>(dir / "a.joblib", {.mmap_mode = MmapMode::c});
  cow[70000] = 42.0;
  std::vector<std::pair<std::string, double>> where = Parallel({.n_jobs = 2, .backend = GetParam()})(
      std::views::iota(0, 2) | std::views::transform([&](int i) {
        return delayed(file_and_value)(cow, std::size_t(i == 0 ? 70000 : 1));
      }));
  EXPECT_EQ(where[0].second, 42.0);
  EXPECT_EQ(where[1].second, 1.0);
  EXPECT_NE(fs::path(where[0].first), fs::absolute(dir / "a.joblib"));
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Backends, MemmapBackends, ::testing::Values("loky", "multiprocessing"));

// ---- without memmapping: large buffers travel in the request frame ----------

class InFrameBackends : public ::testing::TestWithParam<const char*> {};

struct Checked {
  double big = 0, odd = 0, vec = 0, small = 0;
  bool any_mapped = false;
  auto operator<=>(const Checked&) const = default;
  template <class A>
  void serialize(A& ar) {
    ar(big, odd, vec, small, any_mapped);
  }
};

template <class R>
double weighted(const R& r) {
  double s = 0;
  std::size_t i = 0;
  for (auto x : r) s += double(x) * double(++i % 7);
  return s;
}

Checked check(Array<double> big, Array<float> odd, std::vector<double> vec, Array<int> small, int i) {
  Checked c{weighted(std::as_const(big)), weighted(std::as_const(odd)), weighted(vec), weighted(std::as_const(small)),
            big.is_mapped() || odd.is_mapped() || small.is_mapped()};
  big[0] += 1000 + i;  // a write stays in this task's copy: the next task of the batch sees the caller's values
  return c;
}

TEST_P(InFrameBackends, LargeArraysAndVectorsOfAnySizeArriveIntact) {
  // Sizes that are not multiples of 64 bytes, so that every buffer after the
  // first needs padding to its boundary; one Array shared by every task.
  Array<double> big = ramp(100'003);
  Array<float> odd({70'001});
  for (std::size_t i = 0; i < odd.size(); ++i) odd[i] = float(i % 1000) * 0.5f;
  std::vector<double> vec(20'001);
  for (std::size_t i = 0; i < vec.size(); ++i) vec[i] = double(i) * 0.25;
  Array<int> small({5});
  for (int i = 0; i < 5; ++i) small[std::size_t(i)] = i * i;
  const Checked expected{weighted(std::as_const(big)), weighted(std::as_const(odd)), weighted(vec),
                         weighted(std::as_const(small)), false};
  std::vector<Checked> got = Parallel({.n_jobs = 2, .backend = GetParam(), .batch_size = 3, .max_nbytes = std::nullopt})(
      std::views::iota(0, 12) | std::views::transform([&](int i) { return delayed(check)(big, odd, vec, small, i); }));
  ASSERT_EQ(got.size(), 12u);
  for (const Checked& c : got) EXPECT_EQ(c, expected);
  EXPECT_EQ(big[0], 0.0);  // the tasks' writes never reach the caller
}

// Keeps its array for the rest of the worker's life, with the value it
// came with; true while every array this worker kept still holds its value.
bool kept_arrays_unchanged(Array<double> a) {
  static std::vector<std::pair<Array<double>, double>> kept;
  kept.emplace_back(a, std::as_const(a)[0]);
  for (const auto& [k, v] : kept)
    if (std::as_const(k)[0] != v || std::as_const(k)[k.size() - 1] != v) return false;
  return true;
}

TEST_P(InFrameBackends, AnArrayATaskKeptIsNeverOverwrittenByALaterRequest) {
  // A worker reads each large request into a block it reuses, but never
  // while a task still holds a window into it.
  const std::size_t n = 300'000;  // 2.4 MB: a block worth reusing
  Parallel p({.n_jobs = 2, .backend = GetParam(), .batch_size = 1, .max_nbytes = std::nullopt});
  for (double value : {1.0, 2.0, 3.0, 4.0}) {
    Array<double> a({n});
    for (std::size_t i = 0; i < n; ++i) a[i] = value;
    std::vector<bool> got =
        p(std::views::iota(0, 6) | std::views::transform([&](int) { return delayed(kept_arrays_unchanged)(a); }));
    for (bool unchanged : got) EXPECT_TRUE(unchanged) << "value " << value;
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, InFrameBackends, ::testing::Values("loky", "multiprocessing"));

}  // namespace
