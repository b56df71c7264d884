// Progress: joblib's verbose messages, the on_progress callback and the live
// progress bar. Built and run as the ctest `docs.progress`; docs/api.md and
// docs/backends.md quote it.
#include <joblib/joblib.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <optional>
#include <ranges>
#include <vector>

namespace {

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

double root(int x) { return std::sqrt(x); }

}  // namespace

int main() {
  // verbose: joblib's messages, on stderr below 50 and on stdout from 50.
  std::vector<double> r = joblib::Parallel({.n_jobs = 2, .verbose = 10}).map(root, std::views::iota(0, 100));
  expect(r.size() == 100 && r[81] == 9.0, "verbose run");

  // on_progress: called after every finished batch, with the number of tasks
  // done and the total when it is known. It works in sequential mode too.
  std::vector<std::size_t> seen;
  std::optional<std::size_t> total;
  std::vector<double> s = joblib::Parallel({.n_jobs = 1, .batch_size = 1,
                                            .on_progress = [&](std::size_t done, std::optional<std::size_t> n) {
                                              seen.push_back(done);
                                              total = n;
                                            }})
                              .map(root, std::views::iota(0, 5));
  expect(seen == std::vector<std::size_t>{1, 2, 3, 4, 5} && total == 5u, "on_progress, sequential");

  // In parallel the callback runs on worker threads, one call at a time for
  // a given Parallel call; keep it short and do not throw from it.
  std::mutex m;
  std::vector<std::size_t> parallel_seen;
  std::vector<double> p = joblib::Parallel({.n_jobs = 2, .on_progress = [&](std::size_t done, std::optional<std::size_t>) {
                                              std::lock_guard lock(m);
                                              parallel_seen.push_back(done);
                                            }})
                              .map(root, std::views::iota(0, 1000));
  expect(std::is_sorted(parallel_seen.begin(), parallel_seen.end()) && parallel_seen.back() == 1000,
         "on_progress, parallel");

  // progress_bar: a live bar with rate and ETA on stderr, drawn only when
  // stderr is a terminal (so not under ctest).
  std::vector<double> b = joblib::Parallel({.n_jobs = 2, .progress_bar = true}).map(root, std::views::iota(0, 1000));
  expect(b.size() == 1000, "progress bar run");

  std::printf("progress: %zu callbacks in sequential mode, %zu in parallel\n", seen.size(), parallel_seen.size());
  return failures == 0 ? 0 : 1;
}
