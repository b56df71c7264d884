#include "fork_safety.hpp"

#include <pthread.h>

#include <vector>

namespace joblib::detail {
namespace {

std::mutex& list_mutex() {
  static auto* m = new std::mutex();
  return *m;
}
std::vector<std::mutex*>& held() {
  static auto* v = new std::vector<std::mutex*>();
  return *v;
}
void prepare() {
  loader_walk_mutex().lock();
  list_mutex().lock();
  for (std::mutex* m : held()) m->lock();
}
void release() {
  for (auto it = held().rbegin(); it != held().rend(); ++it) (*it)->unlock();
  list_mutex().unlock();
  loader_walk_mutex().unlock();
}
}  // namespace

std::mutex& loader_walk_mutex() {
  static auto* m = new std::mutex();
  return *m;
}

void hold_across_fork(std::mutex& m) {
  static std::once_flag once;
  std::call_once(once, [] { ::pthread_atfork(prepare, release, release); });
  std::lock_guard lock(list_mutex());
  held().push_back(&m);
}

}  // namespace joblib::detail
