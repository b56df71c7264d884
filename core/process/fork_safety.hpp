#pragma once
// fork() from a threaded program (the multiprocessing backend) copies only
// the forking thread: a mutex another thread held at that moment stays
// locked in the child forever. The core's mutexes that a forked worker may
// take are registered here and held across fork().
#include <joblib/export.hpp>

#include <mutex>

namespace joblib::detail {
/// Holds `m` across every later fork() (pthread_atfork). `m` must live for
/// the rest of the program and be a leaf lock (no other lock taken under it).
JOBLIB_EXPORT void hold_across_fork(std::mutex& m);

/// Held across every fork() (taken first) and, with a lock_guard, around
/// the core's code that walks the loaded modules on threads that run beside
/// a fork (rethrowing an exception to learn its type, naming a function
/// with libbacktrace): both take the dynamic loader's lock
/// (dl_iterate_phdr), which glibc does not reset in a forked child, so a
/// fork in the middle of one would leave the child blocked at its first
/// throw or function lookup. Not recursive (a forked child could not release
/// a recursive one); take no registered mutex under it.
JOBLIB_EXPORT std::mutex& loader_walk_mutex();
}  // namespace joblib::detail
