// Error handling: a task's exception reaches the caller with its own type,
// the first failure in submission order wins, errors of the input range,
// generators, timeouts with cooperative tasks, bad options and unknown
// backends. Built and run as the ctest `docs.errors`; docs/errors.md quotes it.
#include <joblib/joblib.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ranges>
#include <stdexcept>
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
bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

int checked_sqrt(int x) {
  if (x < 0) throw std::domain_error("negative input: " + std::to_string(x));
  int r = 0;
  while ((r + 1) * (r + 1) <= x) ++r;
  return r;
}

// A long task that gives up as soon as its call is stopping.
int patient(int x) {
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (!joblib::stop_requested() && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(1ms);
  return x;
}

}  // namespace

int main() {
  // 1. A task throws: the same exception type and message reach the caller.
  try {
    std::vector<int> roots = joblib::Parallel({.n_jobs = 2}).map(checked_sqrt, std::vector{4, 9, -1, 16});
    (void)roots;
    expect(false, "scenario 1 should throw");
  } catch (const std::domain_error& e) {
    expect(std::string(e.what()) == "negative input: -1", "scenario 1: type and message kept");
  }

  // 2. Two tasks fail: the caller sees the first one in submission order,
  //    even when it fails later in time. Task 0 fails only once the call is
  //    stopping (after task 1 failed); the call waits for it.
  std::atomic<bool> zero_started{false};
  auto two_failures = [&zero_started](int i) -> int {
    if (i == 0) {
      zero_started = true;
      patient(0);  // returns once the call is stopping
      throw std::invalid_argument("task 0 failed");
    }
    while (!zero_started) std::this_thread::yield();
    throw std::runtime_error("task 1 failed");
  };
  try {
    joblib::Parallel({.n_jobs = 2, .batch_size = 1}).map(two_failures, std::views::iota(0, 2)).to_vector();
    expect(false, "scenario 2 should throw");
  } catch (const std::invalid_argument& e) {
    expect(std::string(e.what()) == "task 0 failed", "scenario 2: first in submission order");
  }

  // 4. The input range throws while producing task 7.
  auto producer = std::views::iota(0, 100) | std::views::transform([](int i) {
                    if (i == 7) throw std::logic_error("cannot make task 7");
                    return joblib::delayed(checked_sqrt)(i);
                  });
  try {
    joblib::Parallel({.n_jobs = 2})(producer).to_vector();
    expect(false, "scenario 4 should throw");
  } catch (const std::logic_error& e) {
    expect(std::string(e.what()) == "cannot make task 7", "scenario 4: input range error");
  }

  // 5. A sequential generator delivers the results before the failing task,
  //    then throws on the next step.
  std::vector<int> before;
  try {
    auto results = joblib::Parallel({.n_jobs = 1, .return_as = joblib::ReturnAs::generator})
                       .map(checked_sqrt, std::vector{0, 1, 4, -9, 16});
    for (int r : results) before.push_back(r);
    expect(false, "scenario 5 should throw");
  } catch (const std::domain_error& e) {
    expect(before == std::vector<int>{0, 1, 2}, "scenario 5: results before the error");
  }

  // 7. Timeout: TimeoutError is raised promptly. A thread cannot be killed, so
  //    the task is left running; it sees stop_requested() and returns early.
  const auto t0 = std::chrono::steady_clock::now();
  try {
    joblib::Parallel({.n_jobs = 2, .timeout = 0.2}).map(patient, std::views::iota(0, 4)).to_vector();
    expect(false, "scenario 7 should throw");
  } catch (const joblib::TimeoutError& e) {
    expect(starts_with(e.what(), "a task ran longer than the timeout of 0.2 s"), "scenario 7: message");
  }
  expect(std::chrono::steady_clock::now() - t0 < 5s, "scenario 7: prompt");

  // 8. Bad options: std::invalid_argument naming the field, from the constructor.
  try {
    joblib::Parallel({.batch_size = 0});
    expect(false, "scenario 8 should throw");
  } catch (const std::invalid_argument& e) {
    expect(std::string(e.what()) == "batch_size must be 'auto' or a positive integer, got: 0", "scenario 8");
  }

  // 9. Unknown backend: joblib::BackendError listing the available names.
  try {
    joblib::Parallel({.n_jobs = 2, .backend = "no_such_backend"}).map(checked_sqrt, std::vector{1}).to_vector();
    expect(false, "scenario 9 should throw");
  } catch (const joblib::BackendError& e) {
    expect(starts_with(e.what(), "Invalid backend: 'no_such_backend', expected one of ["), "scenario 9");
  }

  // The library is usable again after any of the above.
  std::vector<int> ok = joblib::Parallel({.n_jobs = 2}).map(checked_sqrt, std::vector{1, 4, 9});
  expect(ok == std::vector<int>{1, 2, 3}, "usable after errors");

  std::printf("errors: %s\n", failures == 0 ? "ok" : "FAILED");
  return failures == 0 ? 0 : 1;
}
