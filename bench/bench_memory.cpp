// Memory's figures against same-run baselines (docs/memory.md):
//   hashing a 100 MB Array with joblib::hash   vs raw XXH3-128 and memcpy
//   a warm hit with small arguments             vs calling the function
//   a warm hit returning a 100 MB Array          mapped (mmap_mode r) and copied
//   what a miss adds over calling the function
// Build: cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DJOBLIB_BUILD_BENCH=ON
//        cmake --build build/bench --target bench_memory && ./build/bench/bin/bench_memory
#include <joblib/joblib.hpp>

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <unistd.h>
#include <vector>

namespace {

// Best of `reps` runs of f, in seconds.
double best_of(int reps, const std::function<void()>& f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

double small_work(double x, int k) { return x * k + 1; }
joblib::Array<double> big_result(int n) {
  joblib::Array<double> a({static_cast<std::size_t>(n)});
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<double>(i);
  return a;
}
volatile double sink;

}  // namespace

int main() {
  const std::size_t n = 100'000'000 / sizeof(double);
  joblib::Array<double> big({n});
  for (std::size_t i = 0; i < n; ++i) big[i] = static_cast<double>(i) * 0.5;
  std::vector<std::byte> copy(big.nbytes());
  const double mb = static_cast<double>(big.nbytes()) / 1e6;

  const double t_hash = best_of(5, [&] { sink = static_cast<double>(joblib::hash(big).size()); });
  const double t_xxh = best_of(5, [&] { sink = static_cast<double>(XXH3_128bits(big.data(), big.nbytes()).low64); });
  const double t_memcpy = best_of(5, [&] { std::memcpy(copy.data(), big.data(), big.nbytes()); sink = static_cast<double>(copy[7] == std::byte{0}); });
  std::printf("hash of a %.0f MB Array:   joblib::hash %7.2f ms (%5.1f GB/s)   raw XXH3-128 %7.2f ms (%5.1f GB/s)   memcpy %7.2f ms (%5.1f GB/s)   hash/XXH3 = %.2fx\n",
              mb, t_hash * 1e3, mb / 1e3 / t_hash, t_xxh * 1e3, mb / 1e3 / t_xxh, t_memcpy * 1e3, mb / 1e3 / t_memcpy,
              t_hash / t_xxh);

  const auto dir = std::filesystem::temp_directory_path() / ("joblib_bench_memory_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  {
    joblib::Memory memory(dir, {.verbose = 0});
    auto cached = memory.cache(small_work);
    sink = cached(2.0, 3);
    const int calls = 20000;
    const double t_hit = best_of(3, [&] { for (int i = 0; i < calls; ++i) sink = cached(2.0, 3); }) / calls;
    const double t_plain = best_of(3, [&] { for (int i = 0; i < calls; ++i) sink = small_work(2.0 + sink * 0, 3); }) / calls;
    std::printf("warm hit, small arguments: %.2f us per call (the function itself: %.3f us)\n", t_hit * 1e6, t_plain * 1e6);

    // A miss: hash, lock, compute, write metadata and result; against the call alone.
    int k = 0;
    const double t_miss = best_of(1, [&] { for (int i = 0; i < 500; ++i) sink = cached(static_cast<double>(++k), 1); }) / 500;
    std::printf("miss, small arguments: %.1f us per call over the function's own %.3f us\n", t_miss * 1e6, t_plain * 1e6);
  }
  {
    joblib::Memory mapped(dir, {.verbose = 0, .mmap_mode = joblib::MmapMode::r});
    auto cached = mapped.cache(big_result);
    sink = cached(static_cast<int>(n))[1];
    const double t_mapped = best_of(20, [&] { auto a = cached(static_cast<int>(n)); sink = std::as_const(a)[0]; });
    joblib::Memory copied(dir, {.verbose = 0});
    auto cached_copy = copied.cache(big_result);
    const double t_copied = best_of(5, [&] { auto a = cached_copy(static_cast<int>(n)); sink = std::as_const(a)[0]; });
    // Baseline for the copy: read()ing a file of that size into a fresh buffer.
    const auto raw = dir / "raw.bin";
    { std::FILE* f = std::fopen(raw.c_str(), "wb"); std::fwrite(big.data(), 1, big.nbytes(), f); std::fclose(f); }
    const double t_read = best_of(5, [&] {
      std::vector<std::byte> buf(big.nbytes());
      std::FILE* f = std::fopen(raw.c_str(), "rb");
      sink = static_cast<double>(std::fread(buf.data(), 1, buf.size(), f));
      std::fclose(f);
    });
    std::printf("warm hit returning a %.0f MB Array: mapped (mmap_mode r) %.3f ms; read into memory %.1f ms (fread of the same bytes into a fresh buffer: %.1f ms)\n",
                mb, t_mapped * 1e3, t_copied * 1e3, t_read * 1e3);
  }
  std::filesystem::remove_all(dir);
}
