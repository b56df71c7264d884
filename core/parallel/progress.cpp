#include "progress.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace joblib::detail {

std::string python_float(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  const double rounded = std::strtod(fmt::format("{:.15g}", x).c_str(), nullptr);
  std::string s = fmt::format("{}", rounded);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";  // Python prints 2.0, not 2
  return s;
}

std::string short_format_time(double t) {
  if (t > 60) return fmt::format("{:4.1f}min", t / 60);
  return fmt::format(" {:5.1f}s", t);
}

namespace {
// joblib's _verbosity_filter: true means "skip this message".
bool verbosity_filter(std::size_t index, int verbose) {
  if (!verbose) return true;
  if (verbose > 10) return false;
  if (index == 0) return false;
  const double v = 0.5 * (11 - verbose) * (11 - verbose);
  const double scale = std::sqrt(double(index) / v);
  const double next_scale = std::sqrt(double(index + 1) / v);
  return static_cast<long>(next_scale) == static_cast<long>(scale);
}
}  // namespace

ProgressPrinter::ProgressPrinter(int verbose, std::string repr, bool bar)
    : verbose_(verbose), repr_(std::move(repr)), bar_(bar && isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()) {}

double ProgressPrinter::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void ProgressPrinter::message(const std::string& text) const {
  if (!verbose_) return;
  std::string line = fmt::format("[{}]: {}\n", repr_, text);
  FILE* out = verbose_ < 50 ? stderr : stdout;
  std::fwrite(line.data(), 1, line.size(), out);
  std::fflush(out);
}

bool ProgressPrinter::print_progress(const ProgressState& s) {
  if (!verbose_) return false;
  const int width = (s.n_tasks && *s.n_tasks > 0) ? static_cast<int>(std::floor(std::log10(double(*s.n_tasks)))) + 1 : 3;
  const double elapsed_time = elapsed();
  if (s.completed) {
    message(fmt::format("Done {:{}d} out of {:{}d} | elapsed: {} finished", s.completed_tasks, width,
                        s.completed_tasks, width, short_format_time(elapsed_time)));
    return true;
  }
  if (s.iterating) {
    if (verbosity_filter(s.dispatched_batches, verbose_)) return false;
    const std::string fmt_time = "| elapsed: " + short_format_time(elapsed_time);
    if (s.n_tasks) {
      message(fmt::format("Done {:{}d} out of {:{}d} {}", s.completed_tasks, width, *s.n_tasks, width, fmt_time));
    } else {
      const std::string pad(std::string("out of ").size() + width - std::string("tasks").size(), ' ');
      message(fmt::format("Done {:{}d} tasks {}{}", s.completed_tasks, width, pad, fmt_time));
    }
    return false;
  }
  const std::size_t index = s.completed_tasks;
  const std::size_t total = s.dispatched_tasks;
  if (index != 0) {
    const long cursor = static_cast<long>(total) - static_cast<long>(index) + 1 - s.pre_dispatch_amount;
    const long frequency = static_cast<long>(total) / verbose_ + 1;
    const bool is_last_item = index + 1 == total;
    if (is_last_item || (cursor % frequency) != 0) return false;
  }
  const double remaining = elapsed_time / double(std::max<std::size_t>(index, 1)) * double(total - index);
  message(fmt::format("Done {:{}d} out of {:{}d} | elapsed: {} remaining: {}", index, width, total, width,
                      short_format_time(elapsed_time), short_format_time(remaining)));
  return false;
}

void ProgressPrinter::bar(const ProgressState& s, bool force) {
  if (!bar_ || bar_finished_) return;
  if (s.completed) bar_finished_ = true;
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_bar_ < std::chrono::milliseconds(100)) return;
  last_bar_ = now;
  const double t = elapsed();
  const double rate = t > 0 ? double(s.completed_tasks) / t : 0.0;
  std::optional<std::size_t> total = s.n_tasks;
  if (!total && !s.iterating) total = s.dispatched_tasks;
  std::string line;
  if (total && *total > 0) {
    const int cells = 30;
    const int filled = static_cast<int>(double(cells) * double(s.completed_tasks) / double(*total));
    const double eta = rate > 0 ? double(*total - s.completed_tasks) / rate : 0.0;
    line = fmt::format("\r[{}{}] {}/{} {:.1f} tasks/s ETA {}", std::string(filled, '#'), std::string(cells - filled, '.'),
                       s.completed_tasks, *total, rate, short_format_time(eta));
  } else {
    line = fmt::format("\r{} tasks {:.1f} tasks/s elapsed {}", s.completed_tasks, rate, short_format_time(t));
  }
  if (s.completed) line += "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace joblib::detail
