// joblib's auto batch size, the cut of a sized input's tail, and the
// timeout watchdog's clock.
#include "batching.hpp"

#include "progress.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

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

TimeoutClock::TimeoutClock(double seconds) noexcept {
  const double ns = seconds * 1e9;
  limit_ = ns >= 9e18 ? std::numeric_limits<std::int64_t>::max() / 2 : static_cast<std::int64_t>(ns);
}

TimeoutClock::Look TimeoutClock::look(std::span<const Batch> batches, std::int64_t last_completion_ns,
                                      std::int64_t now_ns) const {
  Look out;
  out.deadline_ns = now_ns + std::min(limit_, kMaxWaitNs);
  std::int64_t earliest_start = 0;
  for (const Batch& b : batches)
    if (b.started_ns != 0 && (earliest_start == 0 || b.started_ns < earliest_start)) earliest_start = b.started_ns;
  for (int pass = 0; pass < 2; ++pass) {
    const bool waiting_pass = pass == 1;
    for (std::size_t i = 0; i < batches.size(); ++i) {
      const Batch& b = batches[i];
      const bool waiting = b.started_ns == 0;
      if (b.stopping || waiting != waiting_pass) continue;
      const std::int64_t since =
          waiting ? std::max({b.dispatched_ns, last_completion_ns, earliest_start}) : b.started_ns;
      if (now_ns - since > limit_)
        out.over.push_back({i, waiting});
      else if (limit_ < kMaxWaitNs)
        out.deadline_ns = std::min(out.deadline_ns, since + limit_ + 1);
    }
  }
  return out;
}

}  // namespace joblib::detail
