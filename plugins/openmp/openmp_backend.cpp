// The openmp backend: batches run on the threads of an OpenMP team of
// `num_threads(n_jobs)`. A driver thread per (nesting level, n_jobs) opens a
// `#pragma omp parallel` region while calls are active; the team's threads
// take batches from a queue until no call is left. The driver is reused by
// later calls, so libgomp keeps its threads warm.
#include <joblib/backend.hpp>

#include <omp.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

namespace {

class Team {
 public:
  explicit Team(int n) : n_(n), driver_([this] { drive(); }) { driver_.detach(); }

  void begin_call() {
    std::lock_guard lock(m_);
    ++active_calls_;
    cv_.notify_all();
  }
  void end_call() {
    std::lock_guard lock(m_);
    --active_calls_;
    cv_.notify_all();
  }
  /// No later call uses this team (a task of an abandoned call still runs
  /// on it, and its other threads wait for it at the region's end): the
  /// driver leaves once the region is over and no call is left.
  void retire() noexcept {
    std::lock_guard lock(m_);
    retired_ = true;
    cv_.notify_all();
  }
  void push(joblib::Batch& b) {
    std::lock_guard lock(m_);
    queue_.push_back(&b);
    cv_.notify_one();
  }

 private:
  // Next batch, or nullptr once the queue is empty and no call is active:
  // then every thread of the region leaves it, and takes no batch of a call
  // that starts meanwhile. That call waits for the next region, with the
  // whole team: a thread still in this one would run it alone while the
  // others wait for it at the region's end.
  joblib::Batch* next() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [this] { return closing_ || !queue_.empty() || active_calls_ == 0; });
    if (closing_) return nullptr;
    if (queue_.empty()) {
      closing_ = true;
      cv_.notify_all();
      return nullptr;
    }
    joblib::Batch* b = queue_.front();
    queue_.pop_front();
    return b;
  }

  void drive() {
    for (;;) {
      {
        std::unique_lock lock(m_);
        cv_.wait(lock, [this] { return active_calls_ > 0 || !queue_.empty() || retired_; });
        if (retired_ && active_calls_ == 0 && queue_.empty()) return;
        closing_ = false;  // no thread is in a region now
      }
#pragma omp parallel num_threads(n_)
      {
        while (joblib::Batch* b = next()) b->run();
      }
    }
  }

  int n_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<joblib::Batch*> queue_;
  int active_calls_ = 0;
  bool retired_ = false;
  bool closing_ = false;  // the region is ending: its threads take no batch
  std::thread driver_;
};

joblib::EngineCache<Team>& teams() {
  static auto* cache = new joblib::EngineCache<Team>();
  return *cache;
}

class OpenmpBackend final : public joblib::EngineBackend<Team> {
 public:
  explicit OpenmpBackend(const joblib::BackendInit& init) : EngineBackend(init, "openmp", teams) {}
};
}  // namespace

JOBLIB_EXPORT_BACKEND(OpenmpBackend)
