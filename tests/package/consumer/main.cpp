// Uses only the names of API.md, as a program outside the repository would.
// argv[1]: path of the custom backend plugin (examples/custom_backend).
#include <joblib/joblib.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ranges>
#include <stdexcept>
#include <tuple>

static int failures = 0, passes = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (cond) {                                                            \
      ++passes;                                                            \
    } else {                                                               \
      ++failures;                                                          \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)

double root(int x) { return std::sqrt(x); }
int fails_on_2(int x) {
  if (x == 2) throw std::invalid_argument("two");
  return x;
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  // Parallel(n_jobs=2)(delayed(sqrt)(i**2) for i in range(10))
  std::vector<double> r = joblib::Parallel({.n_jobs = 2})(
      std::views::iota(0, 10) | std::views::transform([](int i) { return joblib::delayed(root)(i * i); }));
  CHECK(r == (std::vector<double>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  std::vector<double> s = joblib::Parallel({.n_jobs = 2}).map(root, std::vector{1, 4, 9});
  CHECK(s == (std::vector<double>{1, 2, 3}));

  auto names = joblib::available_backends();
  CHECK(std::find(names.begin(), names.end(), "threading") != names.end());
  CHECK(std::find(names.begin(), names.end(), "mine_toml") != names.end());  // from JOBLIB_PLUGINS
  CHECK(joblib::cpu_count() >= 1);
  CHECK(joblib::effective_n_jobs(std::nullopt) == 1);

  try {
    joblib::Parallel({.n_jobs = 2}).map(fails_on_2, std::views::iota(0, 5)).to_vector();
    CHECK(false);
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) == "two");
  }
  try {
    joblib::parallel_backend scope("no_such_backend");
    CHECK(false);
  } catch (const joblib::BackendError&) {
    CHECK(true);
  }

  joblib::register_parallel_backend("mine", std::filesystem::path(argv[1]));
  {
    joblib::parallel_backend scope("mine", {.n_jobs = 2});
    CHECK(joblib::effective_n_jobs(std::nullopt) == 2);
    std::vector<double> m = joblib::Parallel().map(root, std::vector{16, 25});
    CHECK(m == (std::vector<double>{4, 5}));
  }
  {
    joblib::parallel_config scope({.backend = "mine_toml", .n_jobs = 2});
    auto gen = joblib::Parallel({.return_as = joblib::ReturnAs::generator}).map(root, std::vector{36, 49});
    std::vector<double> got(gen.begin(), gen.end());
    CHECK(got == (std::vector<double>{6, 7}));
  }
  std::printf("consumer: %d passed, %d failed\n", passes, failures);
  return failures == 0 ? 0 : 1;
}
