// Resilience beyond joblib: retries of tasks whose worker died, every
// outcome of a call, workers recycled after N tasks, a memory cap per
// worker, and cancellation with std::stop_token. Built and run as the ctest
// `docs.resilience`; docs/errors.md and docs/backends.md quote it.
#include <joblib/joblib.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <ranges>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}
bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A task that crashes its worker the first time it sees an input (a marker
// file in `dir` remembers it), as a flaky native library might.
int crash_once(std::string dir, int x) {
  const std::string marker = dir + "/" + std::to_string(x);
  if (!std::filesystem::exists(marker)) {
    std::ofstream(marker) << 1;
    std::abort();
  }
  return x * x;
}

int checked_root(int x) {
  if (x < 0) throw std::domain_error("negative input: " + std::to_string(x));
  int r = 0;
  while ((r + 1) * (r + 1) <= x) ++r;
  return r;
}

int worker_pid(int) { return static_cast<int>(::getpid()); }

// Allocates and touches `mb` MiB.
int use_memory(int mb) {
  std::vector<char> block(static_cast<std::size_t>(mb) << 20);
  for (std::size_t i = 0; i < block.size(); i += 4096) block[i] = 1;
  std::this_thread::sleep_for(100ms);  // holds it a while, as real work would
  return mb;
}

// Long work that checks, between steps, whether its call is stopping.
int long_work(int x) {
  for (int step = 0; step < 10'000 && !joblib::stop_requested(); ++step) std::this_thread::sleep_for(1ms);
  return x;
}

}  // namespace

int main() {
  using joblib::Parallel;
  const std::string dir = (std::filesystem::temp_directory_path() / ("resilience_" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(dir);

  // ---- retries: a worker that dies is replaced, and its tasks run again ----
  {
    std::vector<int> squares = Parallel({.n_jobs = 2, .backend = "loky", .batch_size = 1, .retries = 2})(
        std::views::iota(0, 6) |
        std::views::transform([&](int x) { return joblib::delayed(crash_once)(dir, x); }));
    expect(squares == std::vector<int>({0, 1, 4, 9, 16, 25}), "every result, after the crashes");
  }

  // ---- every outcome: the call goes on past failing tasks ----
  {
    std::vector<joblib::Outcome<int>> outcomes =
        Parallel({.n_jobs = 2}).outcomes(std::vector<int>{4, -1, 9, -2, 16} | std::views::transform([](int x) {
                                           return joblib::delayed(checked_root)(x);
                                         }));
    int ok = 0, failed = 0;
    for (auto& o : outcomes) {
      if (o)
        ++ok;                          // o.value() is the root
      else
        ++failed;                      // o.error() holds the std::domain_error
    }
    expect(ok == 3 && failed == 2, "3 values and 2 errors");
    expect(outcomes[2].value() == 3, "the value of task 2");
    try {
      outcomes[1].value();             // rethrows the task's exception
      expect(false, "value() of a failed task rethrows");
    } catch (const std::domain_error& e) {
      expect(std::string(e.what()) == "negative input: -1", "the task's own message");
    }
  }

  // ---- max_tasks_per_child: no worker runs more than 5 tasks ----
  {
    std::vector<int> pids =
        Parallel({.n_jobs = 2, .backend = "loky", .max_tasks_per_child = 5}).map(worker_pid, std::views::iota(0, 30));
    std::map<int, int> per_worker;
    for (int pid : pids) ++per_worker[pid];
    bool capped = true;
    for (auto& [pid, n] : per_worker) capped = capped && n <= 5;
    expect(capped && per_worker.size() >= 6, "workers replaced every 5 tasks");
  }

  // ---- worker_memory_limit: a worker over it is stopped, and named ----
  {
    try {
      Parallel({.n_jobs = 2, .backend = "loky", .worker_memory_limit = "100M"})
          .map(use_memory, std::vector<int>{10, 800})
          .to_vector();
      expect(false, "the worker over the limit is stopped");
    } catch (const joblib::TerminatedWorkerError& e) {
      expect(contains(e.what(), "over worker_memory_limit = 100.0 MiB (104857600 bytes)"), "the limit is named");
      expect(contains(e.what(), "It was running task 1 of the call"), "the task is named");
    }
    // The next call works: the pool replaced the worker.
    std::vector<int> small = Parallel({.n_jobs = 2, .backend = "loky", .worker_memory_limit = "100M"})
                                 .map(use_memory, std::vector<int>{10, 10});
    expect(small == std::vector<int>({10, 10}), "the next call works");
  }

  // ---- cancellation: request_stop() ends the call with CancelledError ----
  for (const char* backend : {"threading", "loky"}) {
    std::stop_source stop;
    std::jthread canceller([&stop] {
      std::this_thread::sleep_for(200ms);  // the user clicks "cancel"
      stop.request_stop();
    });
    const auto t0 = std::chrono::steady_clock::now();
    try {
      Parallel({.n_jobs = 2, .backend = backend, .stop_token = stop.get_token()})
          .map(long_work, std::views::iota(0, 100))
          .to_vector();
      expect(false, "the call is cancelled");
    } catch (const joblib::CancelledError& e) {
      expect(contains(e.what(), "the call was cancelled: its stop_token was requested"), "CancelledError's message");
    }
    // Thread tasks see stop_requested(); process workers are killed.
    expect(std::chrono::steady_clock::now() - t0 < 5s, "the call ends soon after the request");
  }

  std::filesystem::remove_all(dir);
  if (failures == 0) std::printf("resilience: all scenarios passed\n");
  return failures == 0 ? 0 : 1;
}
