#pragma once
// The task of the scaling benchmarks (bench_scaling, bench_mpi sweep).
#include <chrono>
#include <cmath>

namespace bench {

/// Spins for `us` microseconds of wall time, CPU-bound like a numeric
/// kernel; returns a value so that nothing is optimised away.
inline double spin(int us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  double x = 0;
  while (std::chrono::steady_clock::now() < until)
    for (int k = 0; k < 64; ++k) x += std::sqrt(double(k));
  return x;
}

}  // namespace bench
