// Generators: results in submission order or in completion order, and the
// back-pressure that bounds memory with a slow consumer. Built and run as the
// ctest `docs.generators`; docs/api.md and docs/backends.md quote it.
#include <joblib/joblib.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <ranges>
#include <set>
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

std::vector<double> big_result(int i) { return std::vector<double>(1000, double(i)); }

}  // namespace

int main() {
  // ---- generator: submission order, with back-pressure ----------------------
  // The producer counts the tasks the dispatcher pulls. While the consumer is
  // behind, no task is dispatched beyond the pre_dispatch window (4 tasks here).
  std::atomic<int> produced{0};
  auto producer = std::views::iota(0, 200) | std::views::transform([&produced](int i) {
                    ++produced;
                    return joblib::delayed(big_result)(i);
                  });
  auto results = joblib::Parallel({.n_jobs = 2, .pre_dispatch = "2 * n_jobs",
                                   .return_as = joblib::ReturnAs::generator})(producer);
  int seen = 0;
  bool bounded = true;
  for (std::vector<double>& v : results) {   // results arrive in submission order
    expect(v[0] == double(seen), "generator keeps submission order");
    bounded = bounded && produced <= seen + 4;  // never more than 4 tasks ahead of the consumer
    ++seen;
    std::this_thread::sleep_for(1ms);           // a slow consumer
  }
  expect(seen == 200, "every result delivered");
  expect(bounded, "back-pressure bounds the tasks in flight");

  // ---- generator_unordered: completion order --------------------------------
  // Task 0 waits until the consumer has received three other results, so only
  // completion order can deliver them first.
  std::atomic<int> received{0};
  auto slow_first = [&received](int i) {
    if (i == 0) {
      const auto give_up = std::chrono::steady_clock::now() + 5s;
      while (received < 3 && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(1ms);
    }
    return i;
  };
  auto unordered = joblib::Parallel({.n_jobs = 2, .batch_size = 1,
                                     .return_as = joblib::ReturnAs::generator_unordered})
                       .map(slow_first, std::views::iota(0, 10));
  std::vector<int> order;
  for (int i : unordered) {
    order.push_back(i);
    ++received;
  }
  expect(order.size() == 10 && order.front() != 0, "generator_unordered yields in completion order");
  expect(std::set<int>(order.begin(), order.end()).size() == 10, "each result exactly once");

  // ---- taking a few results, then the rest as a vector ------------------------
  auto squares = joblib::Parallel({.n_jobs = 2, .return_as = joblib::ReturnAs::generator})
                     .map([](int x) { return x * x; }, std::views::iota(0, 100));
  auto it = squares.begin();
  const int first = *it;                        // 0
  ++it;
  std::vector<int> rest = squares.to_vector();  // the 99 results not yet taken
  expect(first == 0 && rest.size() == 99 && rest.front() == 1 && rest.back() == 99 * 99, "to_vector takes the rest");

  // ---- void tasks in a generator: the indices of finished tasks ---------------
  std::vector<int> out(50);
  auto done = joblib::Parallel({.n_jobs = 2, .return_as = joblib::ReturnAs::generator_unordered})(
      std::views::iota(0, 50) | std::views::transform([&out](int i) {
        return joblib::delayed([&out](int k) { out[k] = k + 1; })(i);
      }));
  std::size_t finished = 0;
  for (std::size_t index : done) finished += (out[index] == int(index) + 1);
  expect(finished == 50, "Results<void> yields the index of each finished task");

  // ---- lifetime: an lvalue range is referenced, an rvalue range is moved in ----
  std::vector<joblib::Task<int>> tasks;
  for (int i = 0; i < 5; ++i) tasks.push_back(joblib::delayed([](int x) { return x + 1; })(i));
  auto from_lvalue = joblib::Parallel({.n_jobs = 2, .return_as = joblib::ReturnAs::generator})(tasks);
  // `tasks` must outlive `from_lvalue`: the call reads it while you iterate.
  std::vector<int> a = from_lvalue.to_vector();
  auto from_rvalue = joblib::Parallel({.n_jobs = 2, .return_as = joblib::ReturnAs::generator})(std::move(tasks));
  // The call owns the moved vector now; nothing else needs to stay alive.
  std::vector<int> b = from_rvalue.to_vector();
  expect(a == std::vector<int>{1, 2, 3, 4, 5} && a == b, "lvalue and rvalue ranges");

  std::printf("generator: %d results, unordered first: %d, rest: %zu, void: %zu, lifetime: ok\n", seen, order.front(),
              rest.size(), finished);
  return failures == 0 ? 0 : 1;
}
