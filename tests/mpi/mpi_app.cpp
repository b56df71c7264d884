// Scenarios of the mpi backend, run under mpirun by ctest (tests/CMakeLists.txt):
//   mpi_app basic       results, order, every worker rank used, errors with their type
//   mpi_app fail        main returns 3: every rank ends non-zero
//   mpi_app hosts       prints "rank R on HOST" for the ranks that ran tasks
// Each prints "OK <scenario>" when its checks hold, and returns non-zero otherwise.
#include <joblib/joblib.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace {
int failures = 0;
void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

double root(int x) { return std::sqrt(double(x)); }
int rank_of(int) {
  const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
  return r ? std::atoi(r) : -1;
}
// The host (and network namespace: the multi-host test's two "hosts" share
// one machine) and rank a task ran on.
std::string where(int) {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  char ns[128] = {};
  const ssize_t n = ::readlink("/proc/self/ns/net", ns, sizeof ns - 1);
  return std::string(host) + " netns " + (n > 0 ? std::string(ns, static_cast<std::size_t>(n)) : "?") + " rank " +
         std::to_string(rank_of(0));
}
// Runs until its call is stopped (20 s at most).
int hang_until_stopped(int x) {
  for (int i = 0; i < 20000 && !joblib::stop_requested(); ++i) ::usleep(1000);
  return x;
}
// Ignores stops: holds its rank for 6 s.
int ignore_stop(int x) {
  ::usleep(6000000);
  return x;
}
int die_at_1(int x) {
  if (x == 1) ::_exit(7);
  ::usleep(200000);
  return x;
}
int fail_at_3(int x) {
  if (x == 3) throw std::invalid_argument("bad input: 3");
  return x;
}
}  // namespace

int run(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "basic";
  if (scenario == "basic") {
    std::vector<double> r = joblib::Parallel({.n_jobs = -1, .backend = "mpi"}).map(root, std::vector{0, 1, 4, 9, 16});
    expect(r == std::vector<double>{0, 1, 2, 3, 4}, "sqrt example");
    std::vector<int> ranks =
        joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(rank_of, std::vector<int>(200, 0));
    std::set<int> used(ranks.begin(), ranks.end());
    expect(!used.count(0), "rank 0 runs no task");
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi"}).map(fail_at_3, std::vector{1, 2, 3, 4});
      expect(false, "the task's exception reaches rank 0");
    } catch (const std::invalid_argument& e) {
      expect(std::string(e.what()) == "bad input: 3", std::string("message: ") + e.what());
    }
    std::printf("ranks used:");
    for (int r : used) std::printf(" %d", r);
    std::printf("\n");
  } else if (scenario == "fail") {
    std::vector<double> r = joblib::Parallel({.n_jobs = -1, .backend = "mpi"}).map(root, std::vector{4});
    expect(r == std::vector<double>{2}, "one task");
    std::printf("OK fail (returning 3)\n");
    return 3;
  } else if (scenario == "timeout") {
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi", .timeout = 0.5}).map(hang_until_stopped, std::vector{1});
      expect(false, "a TimeoutError");
    } catch (const joblib::TimeoutError& e) {
      expect(std::string(e.what()).find("timeout of 0.5 s") != std::string::npos, e.what());
    }
    // The stopped task freed its rank: a later call runs on every worker rank.
    std::vector<int> ranks =
        joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(rank_of, std::vector<int>(200, 0));
    expect(std::set<int>(ranks.begin(), ranks.end()) == std::set<int>{1, 2}, "both ranks serve after a timeout");
  } else if (scenario == "held") {
    // Both ranks held by tasks that ignore the stop of their timed-out call:
    // a later call fails with a message naming them (after the 2 s grace),
    // and rank 0's exit, finding a rank still busy, ends the job with MPI_Abort.
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi", .timeout = 0.3, .batch_size = 1})
          .map(ignore_stop, std::vector{0, 1});
      expect(false, "a TimeoutError");
    } catch (const joblib::TimeoutError&) {
    }
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi"}).map(root, std::vector{4});
      expect(false, "a BackendError");
    } catch (const joblib::BackendError& e) {
      std::printf("BackendError: %s\n", e.what());
    }
  } else if (scenario == "rank_death") {
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(die_at_1, std::vector{0, 1, 2, 3});
      expect(false, "a TerminatedWorkerError");
    } catch (const joblib::TerminatedWorkerError& e) {
      std::printf("TerminatedWorkerError: %s\n", e.what());
    }
  } else if (scenario == "hosts") {
    std::vector<std::string> w =
        joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(where, std::vector<int>(64, 0));
    for (const std::string& s : std::set<std::string>(w.begin(), w.end())) std::printf("ran on %s\n", s.c_str());
  }
  if (failures == 0) std::printf("OK %s\n", scenario.c_str());
  return failures ? 1 : 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
