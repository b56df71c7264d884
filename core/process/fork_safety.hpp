#pragma once
// fork() from a threaded program (the multiprocessing backend) copies only
// the forking thread: a mutex another thread held at that moment stays
// locked in the child forever. The core's mutexes that a forked worker may
// take are registered here and held across fork().
#include <mutex>

namespace joblib::detail {
/// Holds `m` across every later fork() (pthread_atfork). `m` must live for
/// the rest of the program and be a leaf lock (no other lock taken under it).
void hold_across_fork(std::mutex& m);
}  // namespace joblib::detail
