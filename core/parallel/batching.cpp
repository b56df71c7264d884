// joblib's auto batch size and the cut of a sized input's tail.
#include "batching.hpp"

#include "progress.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace joblib::detail {

AutoBatchSize::AutoBatchSize(std::optional<double> timeout) noexcept
    : min_ideal_(timeout ? std::min(kMinIdealBatchDuration, *timeout / 10) : kMinIdealBatchDuration),
      max_ideal_(timeout ? std::min(kMaxIdealBatchDuration, *timeout / 4) : kMaxIdealBatchDuration) {}

void AutoBatchSize::completed(std::size_t batch_size, double seconds) noexcept {
  if (batch_size != size_) return;
  smoothed_ = smoothed_ == 0.0 ? seconds : 0.8 * smoothed_ + 0.2 * seconds;
}

std::size_t AutoBatchSize::next(std::string* message) {
  const std::size_t old = size_;
  const double d = smoothed_;
  std::size_t next = old;
  if (d > 0 && d < min_ideal_) {
    const double ideal = std::floor(double(old) * min_ideal_ / d) * 2;
    next = static_cast<std::size_t>(std::max(std::min(2.0 * double(old), ideal), 1.0));
    if (next != old && message)
      *message = fmt::format("Batch computation too fast ({}s.) Setting batch_size={}.", python_float(d), next);
  } else if (d > max_ideal_ && old >= 2) {
    const double ideal = std::floor(double(old) * min_ideal_ / d);
    next = static_cast<std::size_t>(std::max(2 * ideal, 1.0));
    if (next != old && message)
      *message = fmt::format("Batch computation too slow ({}s.) Setting batch_size={}.", python_float(d), next);
  }
  if (next != old) {
    size_ = next;
    smoothed_ = 0.0;
  }
  return size_;
}

std::size_t cut_tail(std::size_t batch_size, std::size_t remaining, int n_jobs) noexcept {
  const std::size_t jobs = static_cast<std::size_t>(std::max(n_jobs, 1));
  if (remaining < batch_size * jobs) batch_size = std::max<std::size_t>(1, remaining / (10 * jobs));
  return std::max<std::size_t>(batch_size, 1);
}

}  // namespace joblib::detail
