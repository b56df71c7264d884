// Process backends, each figure beside a baseline measured in the same run:
// the threading backend, a bare socket round trip between two processes, and
// memcpy.
//
//   cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DJOBLIB_BUILD_BENCH=ON -DJOBLIB_BUILD_TESTS=OFF
//   cmake --build build/bench -j2 && ./build/bench/bin/bench_process
#include <joblib/worker_sdk.hpp>

#include <joblib/joblib.hpp>

#include <benchmark/benchmark.h>
#include <csignal>
#include <malloc.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <ranges>
#include <string>
#include <vector>

namespace {

double trivial(int i) { return std::sqrt(double(i)); }

// ---- pool start -----------------------------------------------------------------
void BM_Loky_PoolStart2Workers(benchmark::State& state) {
  for (auto _ : state) {
    auto pool = std::make_unique<joblib::worker_sdk::WorkerPool>(joblib::worker_sdk::WorkerOptions{}, 2);
    pool->start_all();  // both spawned and answering
    state.PauseTiming();
    pool.reset();
    state.ResumeTiming();
  }
}
BENCHMARK(BM_Loky_PoolStart2Workers)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- a worker that dies ----------------------------------------------------------
// A call of 8 tasks (batch_size = 1) whose task 3 kills its worker, until its
// TerminatedWorkerError, beside the same call where no worker dies.
int kill_at(int i, int victim) {
  if (i == victim) ::kill(::getpid(), SIGKILL);
  return i;
}
void run_death(benchmark::State& state, const char* backend, int victim) {
  for (auto _ : state) {
    try {
      (void)joblib::Parallel({.n_jobs = 2, .backend = backend, .batch_size = 1})(
          std::views::iota(0, 8) | std::views::transform([victim](int i) { return joblib::delayed(kill_at)(i, victim); }));
    } catch (const joblib::TerminatedWorkerError&) {
    }
  }
}
void BM_WorkerDies_Loky(benchmark::State& s) { run_death(s, "loky", 3); }
void BM_WorkerDies_Multiprocessing(benchmark::State& s) { run_death(s, "multiprocessing", 3); }
void BM_NoWorkerDies_Loky(benchmark::State& s) { run_death(s, "loky", -1); }
void BM_NoWorkerDies_Multiprocessing(benchmark::State& s) { run_death(s, "multiprocessing", -1); }
BENCHMARK(BM_WorkerDies_Loky)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_NoWorkerDies_Loky)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_WorkerDies_Multiprocessing)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_NoWorkerDies_Multiprocessing)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- per-task cost --------------------------------------------------------------
void run_trivial(benchmark::State& state, const char* backend, std::optional<int> batch, int n) {
  std::vector<double> warm = joblib::Parallel({.n_jobs = 2, .backend = backend}).map(trivial, std::views::iota(0, 10));
  for (auto _ : state) {
    std::vector<double> r =
        joblib::Parallel({.n_jobs = 2, .backend = backend, .batch_size = batch}).map(trivial, std::views::iota(0, n));
    benchmark::DoNotOptimize(r.data());
  }
  state.counters["ns_per_task"] = benchmark::Counter(double(state.iterations()) * n,
                                                     benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
// The same call consumed as a generator, or as a list with pre_dispatch = "all".
void run_trivial_mode(benchmark::State& state, joblib::ReturnAs mode, std::string pre_dispatch, int n) {
  std::vector<double> warm = joblib::Parallel({.n_jobs = 2, .backend = "loky"}).map(trivial, std::views::iota(0, 10));
  for (auto _ : state) {
    double sum = 0;
    for (double x : joblib::Parallel({.n_jobs = 2, .backend = "loky", .pre_dispatch = pre_dispatch, .return_as = mode})
                        .map(trivial, std::views::iota(0, n)))
      sum += x;
    benchmark::DoNotOptimize(sum);
  }
  state.counters["ns_per_task"] = benchmark::Counter(double(state.iterations()) * n,
                                                     benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
void BM_AutoBatch_Loky(benchmark::State& s) { run_trivial(s, "loky", std::nullopt, 1'000'000); }
void BM_AutoBatch_Loky_Generator(benchmark::State& s) {
  run_trivial_mode(s, joblib::ReturnAs::generator, "2*n_jobs", 1'000'000);
}
void BM_AutoBatch_Loky_GeneratorUnordered(benchmark::State& s) {
  run_trivial_mode(s, joblib::ReturnAs::generator_unordered, "2*n_jobs", 1'000'000);
}
void BM_AutoBatch_Loky_PreDispatchAll(benchmark::State& s) { run_trivial_mode(s, joblib::ReturnAs::list, "all", 1'000'000); }
void BM_AutoBatch_Threading(benchmark::State& s) { run_trivial(s, "threading", std::nullopt, 1'000'000); }
void BM_BatchSize1_Loky(benchmark::State& s) { run_trivial(s, "loky", 1, 20'000); }
void BM_BatchSize1_Multiprocessing(benchmark::State& s) { run_trivial(s, "multiprocessing", 1, 20'000); }
void BM_BatchSize1_Threading(benchmark::State& s) { run_trivial(s, "threading", 1, 20'000); }
BENCHMARK(BM_AutoBatch_Loky)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AutoBatch_Loky_Generator)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AutoBatch_Loky_GeneratorUnordered)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AutoBatch_Loky_PreDispatchAll)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AutoBatch_Threading)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BatchSize1_Loky)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BatchSize1_Multiprocessing)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BatchSize1_Threading)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- memory of a long list call -------------------------------------------------
// Peak resident memory a batch_size = 1 list call of 200,000 trivial tasks
// adds, beside its baseline: the results themselves (200,000 doubles, 1.6 MB).
// The peak is reset before the call (writing 5 to /proc/self/clear_refs),
// after giving freed memory back (malloc_trim).
long status_kb(const char* field) {
  std::ifstream s("/proc/self/status");
  for (std::string line; std::getline(s, line);)
    if (line.rfind(field, 0) == 0) return std::stol(line.substr(std::strlen(field)));
  return 0;
}
void run_list_memory(benchmark::State& state, const char* backend) {
  const int n = 200'000;
  std::vector<double> warm = joblib::Parallel({.n_jobs = 2, .backend = backend}).map(trivial, std::views::iota(0, 10));
  double peak_mb = 0;
  for (auto _ : state) {
    ::malloc_trim(0);  // the memory freed by the last call goes back: this call's shows
    std::ofstream("/proc/self/clear_refs") << "5";
    const long before = status_kb("VmRSS:");
    std::vector<double> r =
        joblib::Parallel({.n_jobs = 2, .backend = backend, .batch_size = 1}).map(trivial, std::views::iota(0, n));
    benchmark::DoNotOptimize(r.data());
    peak_mb = std::max(peak_mb, double(status_kb("VmHWM:") - before) / 1024);
  }
  state.counters["peak_MB"] = peak_mb;
  state.counters["results_MB"] = double(n * sizeof(double)) / (1 << 20);
}
void BM_ListMemory_BatchSize1_Loky(benchmark::State& s) { run_list_memory(s, "loky"); }
void BM_ListMemory_BatchSize1_Sequential(benchmark::State& s) { run_list_memory(s, "sequential"); }
BENCHMARK(BM_ListMemory_BatchSize1_Loky)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK(BM_ListMemory_BatchSize1_Sequential)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

// Baseline: one request/reply of 64 bytes between two processes over a socket.
void BM_BareSocketRoundTrip(benchmark::State& state) {
  int sv[2];
  ::socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    char buf[64];
    while (::recv(sv[1], buf, sizeof buf, MSG_WAITALL) == sizeof buf) ::send(sv[1], buf, sizeof buf, 0);
    ::_exit(0);
  }
  ::close(sv[1]);
  char buf[64] = {};
  for (auto _ : state) {
    ::send(sv[0], buf, sizeof buf, 0);
    ::recv(sv[0], buf, sizeof buf, MSG_WAITALL);
  }
  ::close(sv[0]);
  ::waitpid(pid, nullptr, 0);
}
BENCHMARK(BM_BareSocketRoundTrip)->Unit(benchmark::kMicrosecond)->UseRealTime();

// ---- warm small call ------------------------------------------------------------
void BM_Warm10Tasks_Loky(benchmark::State& state) {
  joblib::Parallel p({.n_jobs = 2, .backend = "loky"});
  std::vector<double> warm = p.map(trivial, std::views::iota(0, 10));
  for (auto _ : state) {
    std::vector<double> r = p.map(trivial, std::views::iota(0, 10));
    benchmark::DoNotOptimize(r.data());
  }
}
BENCHMARK(BM_Warm10Tasks_Loky)->Unit(benchmark::kMicrosecond)->UseRealTime();

// ---- a 400 MB array passed to 8 tasks -------------------------------------------------
double first_and_last(joblib::Array<double> a, int) { return std::as_const(a)[0] + std::as_const(a)[a.size() - 1]; }

void run_big(benchmark::State& state, std::optional<std::string> max_nbytes) {
  joblib::Array<double> big({50'000'000});  // 400 MB
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = double(i);  // touched, as the raw baseline's buffers
  auto call = [&] {
    return joblib::Parallel({.n_jobs = 2, .backend = "loky", .max_nbytes = max_nbytes})(
        std::views::iota(0, 8) | std::views::transform([&](int i) { return joblib::delayed(first_and_last)(big, i); }));
  };
  // A first call outside the timing: the workers start and, without
  // memmapping, touch the memory they read requests into (the raw baseline
  // touches its buffer before timing too). Its time is reported alone.
  const auto t0 = std::chrono::steady_clock::now();
  (void)call();
  state.counters["first_call_ms"] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (auto _ : state) {
    std::vector<double> r = call();
    benchmark::DoNotOptimize(r.data());
  }
}
void BM_400MBTo8Tasks_Memmap(benchmark::State& s) { run_big(s, "1M"); }
void BM_400MBTo8Tasks_NoMemmap(benchmark::State& s) { run_big(s, std::nullopt); }
BENCHMARK(BM_400MBTo8Tasks_Memmap)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_400MBTo8Tasks_NoMemmap)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

// Baseline: the same bytes (8 x 400 MB) sent raw over a socket pair to
// another process, which reads each into one buffer it touched beforehand.
void BM_RawSocketPair8x400MB(benchmark::State& state) {
  constexpr std::size_t n = 400'000'000;
  int sv[2];
  ::socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    std::vector<char> in(n, 1);
    char ack = 0;
    ::send(sv[1], &ack, 1, 0);  // ready
    while (::recv(sv[1], in.data(), n, MSG_WAITALL) == static_cast<ssize_t>(n)) ::send(sv[1], &ack, 1, 0);
    ::_exit(0);
  }
  ::close(sv[1]);
  std::vector<char> out(n, 2);
  char ack = 0;
  ::recv(sv[0], &ack, 1, MSG_WAITALL);
  for (auto _ : state) {
    for (int task = 0; task < 8; ++task) {
      for (std::size_t at = 0; at < n;) {
        const ssize_t k = ::send(sv[0], out.data() + at, n - at, 0);
        if (k <= 0) break;
        at += static_cast<std::size_t>(k);
      }
      ::recv(sv[0], &ack, 1, MSG_WAITALL);
    }
  }
  ::close(sv[0]);
  ::waitpid(pid, nullptr, 0);
}
BENCHMARK(BM_RawSocketPair8x400MB)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

void BM_Memcpy400MB(benchmark::State& state) {
  std::vector<char> a(400'000'000, 1), b(400'000'000);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), a.size());
    benchmark::DoNotOptimize(b.data());
  }
}
BENCHMARK(BM_Memcpy400MB)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);

}  // namespace

BENCHMARK_MAIN();
