// Uses only the names of API.md, as a program outside the repository would.
// argv[1]: path of the custom backend plugin (examples/custom_backend).
#include <joblib/joblib.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>
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
std::tuple<double, double> modf_(double x) {
  double whole = 0;
  double frac = std::modf(x, &whole);
  return {frac, whole};
}
int slow_first(int x) {
  if (x == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  return x;
}
int hang(int) {
  std::this_thread::sleep_for(std::chrono::seconds(30));
  return 0;
}
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
  // pre_dispatch: the producer is pulled lazily (reference/001's example).
  {
    int produced = 0, produced_before_first_result = -1;
    auto producer = std::views::iota(0, 6) | std::views::transform([&](int i) {
                      ++produced;
                      return joblib::delayed(root)(i);
                    });
    auto gen = joblib::Parallel({.n_jobs = 2, .pre_dispatch = "1.5*n_jobs", .batch_size = 1,
                                 .return_as = joblib::ReturnAs::generator})(producer);
    for (double v : gen) {
      if (produced_before_first_result < 0) produced_before_first_result = produced;
      (void)v;
    }
    CHECK(produced == 6);
    CHECK(produced_before_first_result >= 3 && produced_before_first_result <= 4);
  }
  // generators: submission order, completion order
  {
    auto ordered = joblib::Parallel({.n_jobs = 2, .batch_size = 1, .return_as = joblib::ReturnAs::generator})
                       .map(slow_first, std::views::iota(0, 4));
    std::vector<int> got(ordered.begin(), ordered.end());
    CHECK(got == (std::vector<int>{0, 1, 2, 3}));
    auto unordered = joblib::Parallel({.n_jobs = 2, .batch_size = 1, .return_as = joblib::ReturnAs::generator_unordered})
                         .map(slow_first, std::views::iota(0, 4));
    std::vector<int> any(unordered.begin(), unordered.end());
    CHECK(any.size() == 4 && any.front() != 0);
  }
  // timeout, on threads and on worker processes
  for (const char* backend : {"threading", "loky"}) {
    try {
      joblib::Parallel({.n_jobs = 2, .backend = backend, .timeout = 0.3}).map(hang, std::views::iota(0, 1)).to_vector();
      CHECK(false);
    } catch (const joblib::TimeoutError&) {
      CHECK(true);
    }
  }
  // verbose: joblib's lines on stderr
  {
    std::vector<double> v = joblib::Parallel({.n_jobs = 2, .verbose = 10}).map(root, std::vector{1, 4});
    CHECK(v.size() == 2);
  }
  // the modf example on worker processes
  {
    std::vector<std::tuple<double, double>> r = joblib::Parallel({.n_jobs = 2, .backend = "loky"})(
        std::views::iota(0, 4) | std::views::transform([](int i) { return joblib::delayed(modf_)(i / 2.0); }));
    CHECK(std::get<0>(r[1]) == 0.5 && std::get<1>(r[3]) == 1.0);
    std::vector<double> m = joblib::Parallel({.n_jobs = 2, .backend = "multiprocessing"}).map(root, std::vector{4, 9});
    CHECK(m == (std::vector<double>{2, 3}));
  }
  // dump, load, map
  {
    const auto dir = std::filesystem::temp_directory_path() / ("joblib_consumer_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    joblib::Array<double> a({1000, 3});
    a[7] = 1.5;
    joblib::dump(a, dir / "a.joblib");
    joblib::dump(std::vector<std::string>{"x", "y"}, dir / "s.joblib.zst");
    auto back = joblib::load<joblib::Array<double>>(dir / "a.joblib");
    CHECK(std::as_const(back)[7] == 1.5 && back.shape() == (std::vector<std::size_t>{1000, 3}));
    auto mapped = joblib::load<joblib::Array<double>>(dir / "a.joblib", {.mmap_mode = joblib::MmapMode::r});
    CHECK(mapped.is_mapped() && !mapped.is_writable() && std::as_const(mapped)[7] == 1.5);
    CHECK(reinterpret_cast<std::uintptr_t>(mapped.cdata()) % 64 == 0);
    CHECK((joblib::load<std::vector<std::string>>(dir / "s.joblib.zst") == std::vector<std::string>{"x", "y"}));
    try {
      (void)joblib::load<std::vector<int>>(dir / "a.joblib");
      CHECK(false);
    } catch (const joblib::StoreError&) {
      CHECK(true);
    }
    std::filesystem::remove_all(dir);
  }
  std::printf("consumer: %d passed, %d failed\n", passes, failures);
  return failures == 0 ? 0 : 1;
}
