// Quick start: joblib's own Parallel examples (sqrt, modf) in C++, then map,
// Task<R> and tasks returning void. Built and run as the ctest `docs.quickstart`;
// docs/index.md and docs/api.md quote it.
#include <joblib/joblib.hpp>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <ranges>
#include <tuple>
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

std::tuple<double, double> modf_pair(double x) {
  double whole = 0;
  double frac = std::modf(x, &whole);
  return {frac, whole};
}

int square(int x) { return x * x; }

double score(joblib::Array<double> data, int i) { return data[static_cast<std::size_t>(i)] * 2; }

}  // namespace

int main() {
  // Parallel(n_jobs=2)(delayed(sqrt)(i**2) for i in range(10))
  std::vector<double> roots = joblib::Parallel({.n_jobs = 2})(
      std::views::iota(0, 10) |
      std::views::transform([](int i) { return joblib::delayed(root)(i * i); }));
  expect(roots == std::vector<double>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, "sqrt example");

  // r = Parallel(n_jobs=2)(delayed(modf)(i/2.) for i in range(10)); res, i = zip(*r)
  std::vector<std::tuple<double, double>> r = joblib::Parallel({.n_jobs = 2})(
      std::views::iota(0, 10) |
      std::views::transform([](int i) { return joblib::delayed(modf_pair)(i / 2.0); }));
  expect(r[3] == std::tuple{0.5, 1.0} && r[4] == std::tuple{0.0, 2.0}, "modf example");

  // map(f, inputs) is sugar for delayed(f)(x) for x in inputs.
  std::vector<double> s = joblib::Parallel({.n_jobs = 2}).map(root, std::vector{1, 4, 9});
  expect(s == std::vector<double>{1, 2, 3}, "map");

  // Task<R> mixes callables that return the same type in one input range.
  std::vector<joblib::Task<int>> tasks;
  tasks.push_back(joblib::delayed(square)(3));
  tasks.push_back(joblib::delayed([](int a, int b) { return a + b; })(1, 2));
  tasks.push_back([] { return 42; });  // any callable taking no argument is a task
  std::vector<int> mixed = joblib::Parallel({.n_jobs = 2})(std::move(tasks));
  expect(mixed == std::vector<int>{9, 3, 42}, "Task<int>");

  // Tasks returning void: in list mode every task has run when the call returns.
  std::atomic<int> total{0};
  joblib::Parallel({.n_jobs = 2}).map([&total](int x) { total += x; }, std::views::iota(1, 101));
  expect(total == 5050, "void tasks");

  // Big inputs: an Array's copies share one buffer; as_array adopts a vector.
  std::vector<double> samples(1000, 0.5);
  const double* before = samples.data();
  joblib::Array<double> data = joblib::as_array(std::move(samples));   // no copy
  std::vector<double> scored = joblib::Parallel({.n_jobs = 4})(
      std::views::iota(0, 40) | std::views::transform([&](int i) { return joblib::delayed(score)(data, i); }));
  expect(data.cdata() == before && scored.size() == 40 && scored[39] == 1.0, "as_array");

  // With no n_jobs and no scope, Parallel runs sequentially in the caller.
  expect(joblib::effective_n_jobs(std::nullopt) == 1, "unset n_jobs is 1");

  std::printf("sqrt: %g ... %g, modf: %zu pairs, map: %g %g %g, mixed: %d %d %d, total %d\n", roots[0], roots[9],
              r.size(), s[0], s[1], s[2], mixed[0], mixed[1], mixed[2], total.load());
  return failures == 0 ? 0 : 1;
}
