// Recording and formatting of stack traces (Boost.Stacktrace over GCC's
// libbacktrace when available: function names and file:line).
#include "throw_hook.hpp"

#include <boost/stacktrace.hpp>

#include <atomic>

namespace joblib::detail {
namespace {
std::atomic<bool> g_capture{false};
thread_local boost::stacktrace::stacktrace* t_trace = nullptr;
thread_local bool t_inside = false;  // a throw from the recording itself is not traced
}  // namespace

void capture_throw_traces(bool on) noexcept { g_capture.store(on); }

bool throw_traces_enabled() noexcept { return g_capture.load(std::memory_order_relaxed) && !t_inside; }

void record_throw_trace() noexcept {
  t_inside = true;
  try {
    delete t_trace;
    t_trace = nullptr;
    t_trace = new boost::stacktrace::stacktrace(2, 64);
  } catch (...) {
    t_trace = nullptr;
  }
  t_inside = false;
}

std::string take_throw_trace() {
  if (!t_trace) return {};
  std::string text = boost::stacktrace::to_string(*t_trace);
  delete t_trace;
  t_trace = nullptr;
  return text;
}

std::string current_trace() { return boost::stacktrace::to_string(boost::stacktrace::stacktrace(1, 64)); }

}  // namespace joblib::detail
