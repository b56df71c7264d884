// The demo: joblib's own Parallel doc examples (sqrt, modf), on every
// available backend, with verbose progress on.
//
//   >>> Parallel(n_jobs=2, verbose=10)(delayed(sqrt)(i**2) for i in range(10))
//   >>> r = Parallel(n_jobs=2)(delayed(modf)(i/2.) for i in range(10)); res, i = zip(*r)
#include <joblib/joblib.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ranges>
#include <tuple>
#include <vector>

namespace {

double root(int x) { return std::sqrt(x); }

std::tuple<double, double> modf_(double x) {
  double whole = 0;
  double frac = std::modf(x, &whole);
  return {frac, whole};
}

void print(const char* label, const std::vector<double>& v) {
  std::printf("%s [", label);
  for (std::size_t i = 0; i < v.size(); ++i) std::printf("%s%.1f", i ? ", " : "", v[i]);
  std::printf("]\n");
}

}  // namespace

int main() {
  for (const std::string& backend : joblib::available_backends()) {
    // mpi: under `mpirun -np 3 joblib_demo` its workers are ranks 1-2;
    // started alone, the first call spawns them (MPI_Comm_spawn).
    std::printf("=== backend %s ===\n", backend.c_str());
    std::fflush(stdout);
    const int n_jobs = backend == "sequential" ? 1 : 2;

    // Parallel(n_jobs=2, verbose=10)(delayed(sqrt)(i**2) for i in range(10))
    std::vector<double> roots;
    try {
      roots = joblib::Parallel({.n_jobs = n_jobs, .backend = backend, .verbose = 10})(
          std::views::iota(0, 10) | std::views::transform([](int i) { return joblib::delayed(root)(i * i); }));
    } catch (const joblib::BackendError& e) {  // mpi where MPI cannot start workers
      std::printf("backend %s cannot run here: %s\n", backend.c_str(), e.what());
      continue;
    }
    print("sqrt:", roots);

    // r = Parallel(n_jobs=2)(delayed(modf)(i/2.) for i in range(10)); res, i = zip(*r)
    std::vector<std::tuple<double, double>> r = joblib::Parallel({.n_jobs = n_jobs, .backend = backend, .verbose = 5})(
        std::views::iota(0, 10) | std::views::transform([](int i) { return joblib::delayed(modf_)(i / 2.0); }));
    std::vector<double> res, whole;
    for (auto& [f, w] : r) {
      res.push_back(f);
      whole.push_back(w);
    }
    print("modf res:", res);
    print("modf i:  ", whole);
  }
  return 0;
}
