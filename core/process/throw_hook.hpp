#pragma once
#include <string>

namespace joblib::detail {
/// Turns on (in worker processes) the recording of a stack trace at every throw.
void capture_throw_traces(bool on) noexcept;
/// The trace recorded at the last throw in this thread ("" if none), symbolised.
std::string take_throw_trace();
/// The stack of the calling thread, symbolised.
std::string current_trace();
}  // namespace joblib::detail

namespace joblib::detail {
bool throw_traces_enabled() noexcept;
void record_throw_trace() noexcept;
}  // namespace joblib::detail
