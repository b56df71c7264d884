// A backend defined in the program itself and registered with a factory:
// no shared object, no plugins.toml entry. Built and run as the ctest
// `docs.custom_backend_usage`; docs/plugins.md and docs/api.md quote it.
#include <joblib/joblib.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <ranges>
#include <string>
#include <thread>
#include <vector>

namespace {

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

std::atomic<int> batches_run{0};

// Runs every batch on a thread of its own and counts the batches.
class CountingBackend final : public joblib::ParallelBackendBase {
 public:
  explicit CountingBackend(const joblib::BackendInit& init) : ParallelBackendBase(init) {}

  std::string name() const override { return "counting"; }

  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c;
    c.uses_threads = true;        // serves prefer = threads
    c.supports_sharedmem = true;  // serves require = sharedmem
    return c;
  }

  void submit(joblib::Batch& batch) noexcept override {
    try {
      std::thread([&batch] {
        ++batches_run;
        batch.run();  // the last use of `batch`: it may be gone once run() returns
      }).detach();
    } catch (...) {
      batch.fail(std::current_exception());  // could not start a thread
    }
  }
};

int triple(int x) { return 3 * x; }

}  // namespace

int main() {
  // The factory is called once per Parallel call that runs in parallel.
  joblib::register_parallel_backend("counting", [](const joblib::BackendInit& init) {
    return std::make_unique<CountingBackend>(init);
  });
  auto names = joblib::available_backends();
  expect(std::find(names.begin(), names.end(), "counting") != names.end(), "listed in available_backends()");

  // By name, explicitly...
  std::vector<int> a = joblib::Parallel({.n_jobs = 2, .backend = "counting"}).map(triple, std::views::iota(0, 10));
  expect(a[9] == 27 && batches_run > 0, "explicit backend");

  // ...or from a scope, for library code that does not name a backend.
  const int before = batches_run;
  {
    joblib::parallel_backend scope("counting", {.n_jobs = 2});
    std::vector<int> b = joblib::Parallel().map(triple, std::vector{1, 2, 3});
    expect(b == std::vector<int>{3, 6, 9} && batches_run > before, "backend from a scope");
  }

  // n_jobs = 1 never creates the backend: the call runs in the caller.
  const int before_sequential = batches_run;
  std::vector<int> c = joblib::Parallel({.n_jobs = 1, .backend = "counting"}).map(triple, std::vector{5});
  expect(c == std::vector<int>{15} && batches_run == before_sequential, "n_jobs = 1 is sequential");

  // make_default: the backend used when nothing names one.
  joblib::register_parallel_backend(
      "counting", [](const joblib::BackendInit& init) { return std::make_unique<CountingBackend>(init); },
      /*make_default=*/true);
  const int before_default = batches_run;
  std::vector<int> d = joblib::Parallel({.n_jobs = 2}).map(triple, std::vector{7});
  expect(d == std::vector<int>{21} && batches_run > before_default, "make_default");

  std::printf("custom backend: %d batches run\n", batches_run.load());
  return failures == 0 ? 0 : 1;
}
