// Scopes and hints: parallel_backend, parallel_config (nested scopes merge,
// settings are thread-local), prefer, require, and nested Parallel calls.
// Built and run as the ctest `docs.scopes`; docs/api.md and docs/backends.md
// quote it.
#include <joblib/joblib.hpp>

#include <cstdio>
#include <ranges>
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

// Library code that does not choose a backend: the caller's scope decides.
std::vector<std::thread::id> library_code(joblib::ParallelOptions options = {}) {
  return joblib::Parallel(options)(std::views::iota(0, 8) | std::views::transform([](int) {
                                     return joblib::delayed([] { return std::this_thread::get_id(); })();
                                   }));
}

bool ran_in_caller(const std::vector<std::thread::id>& ids) {
  for (auto id : ids)
    if (id != std::this_thread::get_id()) return false;
  return true;
}

}  // namespace

int main() {
  // No scope: unset n_jobs is 1, so library code runs in the caller.
  expect(ran_in_caller(library_code()), "no scope: sequential");

  {
    // joblib's parallel_backend: names a backend; n_jobs defaults to -1 (all CPUs).
    joblib::parallel_backend scope("threading", {.n_jobs = 2});
    expect(joblib::effective_n_jobs(std::nullopt) == 2, "scope sets n_jobs");
    expect(!ran_in_caller(library_code()), "scope: runs on worker threads");
  }
  {
    joblib::parallel_backend scope("threading");
    expect(joblib::effective_n_jobs(std::nullopt) == joblib::cpu_count(), "parallel_backend defaults to -1");
  }

  {
    // Nested scopes merge: the inner scope overrides only what it sets.
    joblib::parallel_config outer({.backend = "threading", .n_jobs = 2});
    {
      joblib::parallel_config inner({.n_jobs = 1});
      expect(ran_in_caller(library_code()), "inner n_jobs = 1 wins");
    }
    expect(!ran_in_caller(library_code()), "outer scope back in force");

    // The setting is thread-local: a thread you start does not inherit it.
    int in_other_thread = 0;
    std::thread([&] { in_other_thread = joblib::effective_n_jobs(std::nullopt); }).join();
    expect(in_other_thread == 1, "scopes are thread-local");
  }

  {
    // prefer is a hint used when no scope names a backend. joblib-cpp keeps
    // the scope's n_jobs (joblib would reset it to 1 here).
    joblib::parallel_config scope({.n_jobs = 2});
    expect(!ran_in_caller(library_code({.prefer = joblib::Prefer::threads})), "prefer=threads keeps n_jobs 2");
  }

  {
    // require = sharedmem always ends on a thread backend: tasks may write to
    // the caller's memory.
    std::vector<int> slots(100, 0);
    joblib::Parallel({.n_jobs = 2, .require = joblib::Require::sharedmem})(
        std::views::iota(0, 100) | std::views::transform([&slots](int i) {
          return joblib::delayed([&slots](int k) { slots[k] = k; })(i);
        }));
    bool all = true;
    for (int i = 0; i < 100; ++i) all = all && slots[i] == i;
    expect(all, "require=sharedmem: tasks share the caller's memory");
  }

  {
    // Nesting: tasks run at nesting level 1 and see `threading` with n_jobs 1,
    // so a nested Parallel() runs sequentially inside the task, while an
    // explicit n_jobs gets a pool of its own. Below level 1 it is sequential.
    auto task = [] {
      const auto me = std::this_thread::get_id();
      std::vector<std::thread::id> inner = library_code();
      bool sequential = true;
      for (auto id : inner) sequential = sequential && id == me;
      std::vector<int> levels = joblib::Parallel({.n_jobs = 2})(std::views::iota(0, 4) | std::views::transform([](int) {
                                                                  return joblib::delayed(joblib::nesting_level)();
                                                                }));
      return sequential && joblib::nesting_level() == 1 && levels == std::vector<int>(4, 2);
    };
    std::vector<bool> ok = joblib::Parallel({.n_jobs = 2})(std::views::iota(0, 2) | std::views::transform([&](int) {
                                                             return joblib::delayed(task)();
                                                           }));
    expect(ok == std::vector<bool>{true, true}, "nested calls");
  }

  {
    // The sequential backend runs everything in the caller, whatever n_jobs.
    joblib::parallel_backend scope("sequential", {.n_jobs = 4});
    expect(ran_in_caller(library_code()) && joblib::effective_n_jobs(std::nullopt) == 1, "sequential scope");
  }

  std::printf("scopes: %s\n", failures == 0 ? "ok" : "FAILED");
  return failures == 0 ? 0 : 1;
}
