// Dispatch cost, each joblib-cpp figure beside a baseline measured in the
// same run: raw tbb::parallel_for (grain 1 with simple_partitioner, and the
// default auto_partitioner) and `omp parallel for`.
//
//   cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DJOBLIB_BUILD_BENCH=ON
//   cmake --build build/bench -j2 && ./build/bench/bin/bench_dispatch
#include <joblib/joblib.hpp>

#include <benchmark/benchmark.h>
#include <omp.h>
#include <tbb/blocked_range.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include <chrono>
#include <cmath>
#include <ranges>
#include <thread>
#include <vector>

namespace {

constexpr int kTrivial = 1'000'000;

double trivial(int i) { return std::sqrt(double(i)); }

// ---- baselines -----------------------------------------------------------

void BM_RawTbbGrain1(benchmark::State& state) {
  std::vector<double> out(kTrivial);
  tbb::task_arena arena(2);
  for (auto _ : state) {
    arena.execute([&] {
      tbb::parallel_for(tbb::blocked_range<int>(0, kTrivial, 1),
                        [&](const tbb::blocked_range<int>& r) {
                          for (int i = r.begin(); i < r.end(); ++i) out[static_cast<std::size_t>(i)] = trivial(i);
                        },
                        tbb::simple_partitioner());
    });
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kTrivial);
}
BENCHMARK(BM_RawTbbGrain1)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_RawTbbAuto(benchmark::State& state) {
  std::vector<double> out(kTrivial);
  tbb::task_arena arena(2);
  for (auto _ : state) {
    arena.execute([&] {
      tbb::parallel_for(0, kTrivial, [&](int i) { out[static_cast<std::size_t>(i)] = trivial(i); });
    });
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kTrivial);
}
BENCHMARK(BM_RawTbbAuto)->Unit(benchmark::kMillisecond)->UseRealTime();

// The same loop returning a fresh vector, as a function that gives its
// results back (and as Parallel does) must allocate one.
void BM_RawTbbAutoAlloc(benchmark::State& state) {
  tbb::task_arena arena(2);
  for (auto _ : state) {
    std::vector<double> out(kTrivial);
    arena.execute([&] {
      tbb::parallel_for(0, kTrivial, [&](int i) { out[static_cast<std::size_t>(i)] = trivial(i); });
    });
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kTrivial);
}
BENCHMARK(BM_RawTbbAutoAlloc)->Unit(benchmark::kMillisecond)->UseRealTime();

// The same loop calling the task's function through a pointer the compiler
// cannot see through, as Parallel calls a task: whether inlining matters.
double (*volatile g_trivial)(int) = trivial;
void BM_RawTbbAutoAllocFnPtr(benchmark::State& state) {
  tbb::task_arena arena(2);
  for (auto _ : state) {
    std::vector<double> out(kTrivial);
    double (*f)(int) = g_trivial;
    arena.execute([&] {
      tbb::parallel_for(0, kTrivial, [&](int i) { out[static_cast<std::size_t>(i)] = f(i); });
    });
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kTrivial);
}
BENCHMARK(BM_RawTbbAutoAllocFnPtr)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_RawOmpFor(benchmark::State& state) {
  std::vector<double> out(kTrivial);
  for (auto _ : state) {
#pragma omp parallel for num_threads(2)
    for (int i = 0; i < kTrivial; ++i) out[static_cast<std::size_t>(i)] = trivial(i);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kTrivial);
}
BENCHMARK(BM_RawOmpFor)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- joblib-cpp ------------------------------------------------------------

void run_trivial(benchmark::State& state, const char* backend, int n_jobs = 2) {
  for (auto _ : state) {
    std::vector<double> r =
        joblib::Parallel({.n_jobs = n_jobs, .backend = backend}).map(trivial, std::views::iota(0, kTrivial));
    benchmark::DoNotOptimize(r.data());
  }
  state.SetItemsProcessed(state.iterations() * kTrivial);
}
void BM_AutoBatch_Threading(benchmark::State& s) { run_trivial(s, "threading"); }
void BM_AutoBatch_Tbb(benchmark::State& s) { run_trivial(s, "tbb"); }
void BM_AutoBatch_Openmp(benchmark::State& s) { run_trivial(s, "openmp"); }
void BM_AutoBatch_Sequential(benchmark::State& s) { run_trivial(s, "sequential"); }
// n_jobs = 1 against 2 on the same backend: two threads must win.
void BM_AutoBatch_Threading_1Job(benchmark::State& s) { run_trivial(s, "threading", 1); }
void BM_AutoBatch_Tbb_1Job(benchmark::State& s) { run_trivial(s, "tbb", 1); }
BENCHMARK(BM_AutoBatch_Threading_1Job)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AutoBatch_Tbb_1Job)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AutoBatch_Threading)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AutoBatch_Tbb)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AutoBatch_Openmp)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AutoBatch_Sequential)->Unit(benchmark::kMillisecond)->UseRealTime();

// batch_size=1: the per-task cost of the dispatcher itself.
void BM_BatchSize1_Threading(benchmark::State& state) {
  const int n = 100'000;
  for (auto _ : state) {
    std::vector<double> r =
        joblib::Parallel({.n_jobs = 2, .backend = "threading", .batch_size = 1}).map(trivial, std::views::iota(0, n));
    benchmark::DoNotOptimize(r.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["us_per_task"] =
      benchmark::Counter(double(state.iterations()) * n, benchmark::Counter::kIsRate | benchmark::Counter::kInvert,
                         benchmark::Counter::kIs1000);
}
BENCHMARK(BM_BatchSize1_Threading)->Unit(benchmark::kMillisecond)->UseRealTime();

// Latency of a warm 10-task call (the pool already exists).
void BM_Warm10Tasks_Threading(benchmark::State& state) {
  joblib::Parallel p({.n_jobs = 2, .backend = "threading"});
  std::vector<double> warm = p.map(trivial, std::views::iota(0, 10));
  for (auto _ : state) {
    std::vector<double> r = p.map(trivial, std::views::iota(0, 10));
    benchmark::DoNotOptimize(r.data());
  }
}
BENCHMARK(BM_Warm10Tasks_Threading)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Baseline for the warm call: one round trip to a parked thread.
void BM_Warm10Tasks_RawTbb(benchmark::State& state) {
  tbb::task_arena arena(2);
  std::vector<double> out(10);
  for (auto _ : state) {
    arena.execute([&] {
      tbb::parallel_for(0, 10, [&](int i) { out[static_cast<std::size_t>(i)] = trivial(i); });
    });
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_Warm10Tasks_RawTbb)->Unit(benchmark::kMicrosecond)->UseRealTime();

// ~1 ms tasks, scaling with n_jobs.
double one_ms(int i) {
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
  double acc = i;
  while (std::chrono::steady_clock::now() < until) acc = std::sqrt(acc + 1.0);
  return acc;
}
void BM_OneMsTasks(benchmark::State& state) {
  const int jobs = static_cast<int>(state.range(0));
  for (auto _ : state) {
    std::vector<double> r = joblib::Parallel({.n_jobs = jobs, .backend = "threading"}).map(one_ms, std::views::iota(0, 200));
    benchmark::DoNotOptimize(r.data());
  }
  state.SetItemsProcessed(state.iterations() * 200);
}
BENCHMARK(BM_OneMsTasks)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
