#pragma once
// joblib's verbose progress lines, and the optional live progress bar.
#include <joblib/export.hpp>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>

namespace joblib::detail {

/// Counters the printer reads (a snapshot taken under the call's lock).
struct ProgressState {
  std::optional<std::size_t> n_tasks;   // known length of the input
  std::size_t completed_tasks = 0;
  std::size_t dispatched_tasks = 0;
  std::size_t dispatched_batches = 0;
  bool iterating = true;                // the input is not exhausted yet
  bool completed = false;               // every task has run and the input is exhausted
  long pre_dispatch_amount = 0;
};

/// A float as Python's repr prints it: the shortest form that reads back
/// ("3.0441e-05", "0.25", "2.0", "inf"), after rounding to 15 significant
/// digits so that the noise of float arithmetic (3.0441000000000002e-05)
/// does not show.
JOBLIB_EXPORT std::string python_float(double x);

/// "%4.1fmin" or " %5.1fs", as joblib's short_format_time.
std::string short_format_time(double seconds);

/// Prints joblib's lines "[Parallel(n_jobs=2)]: ..." (stderr below verbose
/// 50, stdout from 50) with joblib's frequency filter.
class JOBLIB_EXPORT ProgressPrinter {
 public:
  ProgressPrinter(int verbose, std::string repr, bool bar);
  /// joblib's print_progress(); returns true if it printed the final line.
  bool print_progress(const ProgressState& s);
  /// One message line.
  void message(const std::string& text) const;
  /// Redraws the live bar (if enabled and stderr is a terminal), at most 10 times a second.
  void bar(const ProgressState& s, bool force);
  double elapsed() const;

 private:
  int verbose_;
  std::string repr_;
  bool bar_;
  bool bar_finished_ = false;  // the final line is drawn once
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_bar_{};
};

}  // namespace joblib::detail
