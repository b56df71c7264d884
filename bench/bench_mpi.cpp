// The mpi backend beside raw MPI, measured in the same run (bench/run_mpi_bench.sh
// runs both halves under mpirun and prints the ratios):
//   bench_mpi raw      plain MPI between rank 0 and rank 1 (JOBLIB_MPI_TAKEOVER=0:
//                      no rank is taken over): 1-byte round trip, 400 MB transfer
//   bench_mpi joblib   Parallel over the mpi backend: per-task cost batched and with
//                      batch_size = 1, strong scaling of 1 ms tasks, a 400 MB array
//                      to 8 tasks
//   bench_mpi batch1   only the batch_size = 1 case of `joblib`
//   bench_mpi sweep    bench_scaling's cases over the job's worker ranks (run once
//                      per -np): "mpi_scaling <workers> <seconds>" for 400 tasks of
//                      1 ms, and with 2 workers "mpi_cost <task us> <us added per task>"
// Each line is "name value unit". Best of several repetitions.
#define OMPI_SKIP_MPICXX 1
#include <joblib/joblib.hpp>

#include "spin.hpp"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <ranges>
#include <string>
#include <vector>

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

template <class F>
double best_of(int reps, F&& f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t = Clock::now();
    f();
    best = std::min(best, seconds_since(t));
  }
  return best;
}

int raw(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int me = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int rounds = 100000;
  char byte = 0;
  if (me == 0) {
    const double t = best_of(3, [&] {
      for (int i = 0; i < rounds; ++i) {
        MPI_Send(&byte, 1, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
        MPI_Recv(&byte, 1, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      }
    });
    std::printf("raw_round_trip %.3f us\n", t / rounds * 1e6);
    std::vector<char> big(400u << 20, 1);
    const double tb = best_of(3, [&] {
      MPI_Send(big.data(), static_cast<int>(big.size()), MPI_BYTE, 1, 1, MPI_COMM_WORLD);
      MPI_Recv(&byte, 1, MPI_BYTE, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    });
    std::printf("raw_400MB_transfer %.1f ms\n", tb * 1e3);
  } else if (me == 1) {
    for (int r = 0; r < 3; ++r)
      for (int i = 0; i < rounds; ++i) {
        MPI_Recv(&byte, 1, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(&byte, 1, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
      }
    std::vector<char> big(400u << 20);
    for (int r = 0; r < 3; ++r) {
      MPI_Recv(big.data(), static_cast<int>(big.size()), MPI_BYTE, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      MPI_Send(&byte, 1, MPI_BYTE, 0, 1, MPI_COMM_WORLD);
    }
  }
  MPI_Finalize();
  return 0;
}

double trivial(int i) { return std::sqrt(double(i)); }
double one_ms(int i) {
  const auto until = Clock::now() + std::chrono::milliseconds(1);
  double acc = i;
  while (Clock::now() < until) acc = std::sqrt(acc + 1.0);
  return acc;
}
double first_of(joblib::Array<double> a, int i) { return std::as_const(a)[static_cast<std::size_t>(i)]; }

// Prints the per-task cost of 20,000 trivial tasks with batch_size = 1 (best of `reps`).
void print_batch_size_1(int reps) {
  const int n1 = 20'000;
  const double single = best_of(reps, [&] {
    (void)joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(trivial, std::views::iota(0, n1));
  });
  std::printf("batch_size_1_per_task %.3f us\n", single / n1 * 1e6);
}

int with_joblib() {
  const int workers = std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")) - 1;
  using joblib::Parallel;
  // Start-up (MPI_Init, hello) is paid once, not measured.
  (void)Parallel({.n_jobs = -1, .backend = "mpi"}).map(trivial, std::views::iota(0, 10));
  const int n = 1'000'000;
  const double batched = best_of(5, [&] {
    (void)Parallel({.n_jobs = -1, .backend = "mpi"}).map(trivial, std::views::iota(0, n));
  });
  std::printf("batched_per_task %.3f us\n", batched / n * 1e6);
  print_batch_size_1(3);
  // Strong scaling: 400 tasks of 1 ms over the worker ranks.
  const double seq = 400 * 1e-3;
  const double t = best_of(3, [&] {
    (void)Parallel({.n_jobs = -1, .backend = "mpi"}).map(one_ms, std::views::iota(0, 400));
  });
  std::printf("scaling_1ms_tasks_%d_workers %.1f ms efficiency %.2f\n", workers, t * 1e3, seq / t / workers);
  // 400 MB to 8 tasks, without and with memmapping.
  joblib::Array<double> big({50'000'000});
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = double(i);
  for (const char* mode : {"none", "1M"}) {
    const double tb = best_of(3, [&] {
      (void)Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1, .max_nbytes = std::string(mode)})(
          std::views::iota(0, 8) | std::views::transform([&](int i) { return joblib::delayed(first_of)(big, i); }));
    });
    std::printf("array_400MB_to_8_tasks_max_nbytes_%s %.1f ms\n", mode, tb * 1e3);
  }
  return 0;
}
}  // namespace

using bench::spin;

// Only the batch_size = 1 case (run_mpi_bench.sh launches it several times).
int batch1() {
  (void)joblib::Parallel({.n_jobs = -1, .backend = "mpi"}).map(trivial, std::views::iota(0, 10));  // start-up
  print_batch_size_1(5);
  return 0;
}

// bench_scaling's cases, on every worker rank of the job.
int sweep() {
  const int workers = std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")) - 1;
  joblib::Parallel p({.n_jobs = -1, .backend = "mpi"});
  (void)std::vector<double>(p.map(spin, std::vector<int>(std::size_t(workers), 1)));  // warm: every rank answered
  auto wall = [&](int n, int us) {
    return best_of(3, [&] { (void)std::vector<double>(p.map(spin, std::vector<int>(std::size_t(n), us))); });
  };
  std::printf("mpi_scaling %d %.6f\n", workers, wall(400, 1000));
  if (workers == 2)
    for (int us : {1, 10, 100, 1000, 10000}) {
      const int n = std::clamp(400000 / us, 40, 20000);
      const double t = wall(n, us);
      std::printf("mpi_cost %d %.4f\n", us, std::max(0.0, (t - double(n) * us * 1e-6 / 2) / n) * 1e6);
    }
  return 0;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "joblib";
  if (mode == "sweep") return sweep();
  if (mode == "batch1") return batch1();
  return mode == "raw" ? raw(argc, argv) : with_joblib();
}
