// Fork safety (core/process/fork_safety.hpp): a mutex registered with
// hold_across_fork() is never copied into a forked child in its locked
// state, even when another thread holds it at the moment of the fork.
#include "fork_safety.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

namespace {

using namespace std::chrono_literals;

// Forks while another thread holds `m` for 200 ms; returns the child's exit
// code: 0 when the child could take `m`, 1 when it found it locked.
int fork_while_another_thread_holds(std::mutex& m) {
  std::atomic<bool> held{false};
  std::thread holder([&] {
    std::lock_guard lock(m);
    held = true;
    std::this_thread::sleep_for(200ms);
  });
  while (!held) std::this_thread::yield();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const bool free = m.try_lock();
    ::_exit(free ? 0 : 1);
  }
  holder.join();
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

TEST(ForkSafetyTest, AnUnregisteredMutexHeldByAnotherThreadStaysLockedInTheChild) {
  static std::mutex m;  // the failure the registration prevents
  EXPECT_EQ(fork_while_another_thread_holds(m), 1);
}

TEST(ForkSafetyTest, ARegisteredMutexIsFreeInTheChild) {
  static std::mutex m;
  joblib::detail::hold_across_fork(m);
  EXPECT_EQ(fork_while_another_thread_holds(m), 0);
}

TEST(ForkSafetyTest, TheLoaderWalkMutexIsOneMutexAndIsFreeInTheChild) {
  std::mutex& m = joblib::detail::loader_walk_mutex();
  EXPECT_EQ(&m, &joblib::detail::loader_walk_mutex());
  EXPECT_EQ(fork_while_another_thread_holds(m), 0);
}

}  // namespace
