// A program for the Ctrl-C and parent-death tests: runs a long loky call
// with a memmapped argument and prints "READY <worker pids>" once the
// workers are busy. Modes:
//   sigint <temp_root>          Ctrl-C must end it as SIGINT would
//   sigint_handled <temp_root>  it has its own SIGINT handler: the call fails, it exits 0
//   orphan <temp_root>          the test kills it with SIGKILL: its workers must end too
#include <joblib/worker_sdk.hpp>

#include <joblib/joblib.hpp>

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <ranges>
#include <string>
#include <thread>

namespace {
std::atomic<bool> g_flag{false};
void on_sigint(int) { g_flag = true; }

int hang(joblib::Array<double> a, int) {
  std::this_thread::sleep_for(std::chrono::seconds(60));
  return static_cast<int>(a.size());
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string mode = argv[1];
  const std::string root = argv[2];
  if (mode == "sigint_handled") ::signal(SIGINT, on_sigint);
  std::thread reporter([&] {
    for (int i = 0; i < 500; ++i) {
      auto pids = joblib::worker_sdk::pool_worker_pids();
      bool folder = false;
      for (auto& e : std::filesystem::directory_iterator(root))
        folder = folder || e.path().filename().string().rfind("joblib_memmapping_folder_", 0) == 0;
      if (pids.size() == 2 && folder) {
        std::string line = "READY";
        for (pid_t p : pids) line += " " + std::to_string(p);
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::printf("NOT READY\n");
    std::fflush(stdout);
  });
  joblib::Array<double> big({300000});
  try {
    auto r = joblib::Parallel({.n_jobs = 2, .backend = "loky", .batch_size = 1, .temp_folder = root})(
        std::views::iota(0, 4) | std::views::transform([&](int i) { return joblib::delayed(hang)(big, i); }));
    std::printf("FINISHED\n");
  } catch (const std::exception& e) {
    std::printf("INTERRUPTED: %s (handler ran: %d)\n", e.what(), g_flag.load() ? 1 : 0);
  }
  std::fflush(stdout);
  reporter.join();
  return 0;
}
