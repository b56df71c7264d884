#pragma once
// Waiting in tests: on a condition, never for a duration. The bound on a wait
// only turns a broken build's hang into a failure; it is not the behaviour
// under test, so it is generous.
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>

namespace joblib_test {

/// How long a test waits for something that should happen at once before
/// calling it a hang.
inline constexpr std::chrono::seconds kHangGuard{30};

/// Polls `pred` until it holds or `limit` has passed; returns whether it held.
template <class Pred>
bool wait_until(Pred&& pred, std::chrono::milliseconds limit = kHangGuard) {
  const auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() > until) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the poll interval, not a synchronisation
  }
}

/// Whether process `pid` has ended (a zombie has ended too: it only waits to be reaped).
inline bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string s;
  std::getline(stat, s);
  const auto close = s.rfind(')');
  return close != std::string::npos && close + 2 < s.size() && s[close + 2] == 'Z';
}

}  // namespace joblib_test
