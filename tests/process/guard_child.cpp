// A program built without the main wrapper (JOBLIB_NO_MAIN_WRAP): with
// JOBLIB_TEST_CALL_GUARD it calls joblib::worker_main_guard() itself, as a
// program of another build system would; without it, the loky backend must
// refuse with a BackendError that says what to do.
#include <joblib/joblib.hpp>
#include <joblib/worker.hpp>

#include <cstdio>
#include <vector>

namespace {
int twice(int x) { return 2 * x; }
}  // namespace

int main(int argc, char** argv) {
#ifdef JOBLIB_TEST_CALL_GUARD
  joblib::worker_main_guard(argc, argv);
#else
  (void)argc;
  (void)argv;
#endif
  try {
    std::vector<int> r = joblib::Parallel({.n_jobs = 2, .backend = "loky"}).map(twice, std::vector{1, 2, 3});
    std::printf("OK %d %d %d\n", r[0], r[1], r[2]);
    return 0;
  } catch (const joblib::BackendError& e) {
    std::printf("BackendError: %s\n", e.what());
    return 3;
  }
}
