// A program built without the main wrapper (JOBLIB_NO_MAIN_WRAP): with
// JOBLIB_TEST_CALL_GUARD it calls joblib::worker_main_guard() itself, as a
// program of another build system would; without it, the loky backend must
// refuse with a BackendError that says what to do.
#include <joblib/joblib.hpp>
#include <joblib/worker.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {
int twice(int x) { return 2 * x; }

// The message docs/errors.md quotes for a loky call in a program without the guard.
const std::string kNoGuard =
    "the loky backend starts workers by running this program again, and this program did not start through "
    "joblib's main guard: link it with CMake's joblib::joblib target (which wraps main), or call "
    "joblib::worker_main_guard(argc, argv) first thing in main()";

bool errors_md_quotes(const std::string& message) {
  const auto doc = std::filesystem::path(__FILE__).lexically_normal().parent_path().parent_path().parent_path() /
                   "docs" / "errors.md";
  std::ifstream in(doc);
  std::stringstream text;
  text << in.rdbuf();
  return text.str().find("`" + message + "`") != std::string::npos;
}
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
    // ctest's process.no_main_guard_message matches "BackendError: the loky backend ...": anything
    // but the documented message, quoted by docs/errors.md, is printed otherwise and fails it.
    if (e.what() == kNoGuard && errors_md_quotes(kNoGuard)) std::printf("BackendError: %s\n", e.what());
    else std::printf("BackendError, not the message docs/errors.md quotes: %s\n", e.what());
    return 3;
  }
}
