// The threading backend: persistent std::thread pools reused across calls.
#include <joblib/backend.hpp>

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace {

class Pool {
 public:
  explicit Pool(int n) {
    for (int i = 0; i < n; ++i) std::thread([this] { work(); }).detach();
  }
  // Pools are never destroyed (see pools()); a retired pool's threads leave
  // once its queue is empty.

  /// No later call uses this pool (a task of an abandoned call still runs on
  /// it): its threads finish what is queued, then end.
  void retire() noexcept {
    {
      std::lock_guard lock(m_);
      retired_ = true;
    }
    cv_.notify_all();
  }

  void push(joblib::Batch& b) {
    bool wake = false;
    {
      std::lock_guard lock(m_);
      queue_.push_back(&b);
      pending_.fetch_add(1, std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) cv_.notify_one();
  }

 private:
  joblib::Batch* try_pop() {
    std::lock_guard lock(m_);
    if (queue_.empty()) return nullptr;
    joblib::Batch* b = queue_.front();
    queue_.pop_front();
    pending_.fetch_sub(1, std::memory_order_relaxed);
    return b;
  }

  joblib::Batch* pop() {
    // Spin for a short while first: a batch submitted within ~50 us is
    // picked up without a futex wake-up, which costs ~30 us on its own.
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
    for (int i = 0;; ++i) {
      if (pending_.load(std::memory_order_acquire) > 0)
        if (joblib::Batch* b = try_pop()) return b;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) break;
    }
    std::unique_lock lock(m_);
    ++sleepers_;
    cv_.wait(lock, [this] { return !queue_.empty() || retired_; });
    --sleepers_;
    if (queue_.empty()) return nullptr;  // retired
    joblib::Batch* b = queue_.front();
    queue_.pop_front();
    pending_.fetch_sub(1, std::memory_order_relaxed);
    return b;
  }

  void work() {
    while (joblib::Batch* b = pop()) b->run();
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<joblib::Batch*> queue_;
  std::atomic<int> pending_{0};
  int sleepers_ = 0;
  bool retired_ = false;
};

// One pool per (nesting level, size): see joblib::EngineCache.
joblib::EngineCache<Pool>& pools() {
  static auto* cache = [] {
    auto* c = new joblib::EngineCache<Pool>();
    // A forked child (the multiprocessing backend) has none of the pools' threads.
    ::pthread_atfork(nullptr, nullptr, [] { pools().forget(); });
    return c;
  }();
  return *cache;
}

class ThreadingBackend final : public joblib::EngineBackend<Pool> {
 public:
  explicit ThreadingBackend(const joblib::BackendInit& init) : EngineBackend(init, "threading", pools) {}
};
}  // namespace

JOBLIB_EXPORT_BACKEND(ThreadingBackend)
