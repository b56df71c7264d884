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
    threads_.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
  }
  // Pools live until the process exits (see pool_for): never joined.

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
    cv_.wait(lock, [this] { return !queue_.empty(); });
    --sleepers_;
    joblib::Batch* b = queue_.front();
    queue_.pop_front();
    pending_.fetch_sub(1, std::memory_order_relaxed);
    return b;
  }

  void work() {
    for (;;) pop()->run();
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<joblib::Batch*> queue_;
  std::atomic<int> pending_{0};
  int sleepers_ = 0;
  std::vector<std::thread> threads_;
};

// One pool per (nesting level, size), made on first use and never destroyed:
// the threads are blocked on an empty queue at exit, which is harmless, while
// joining them from a static destructor could wait on a task abandoned after
// a timeout.
using PoolMap = std::map<std::pair<int, int>, std::unique_ptr<Pool>>;
std::mutex* g_pools_mutex = new std::mutex();
PoolMap* g_pools = new PoolMap();

// A forked child (the multiprocessing backend) has none of the pools'
// threads: it starts with no pools (the parent's are leaked, not run).
void forget_pools_in_child() {
  g_pools_mutex = new std::mutex();
  g_pools = new PoolMap();
}

Pool& pool_for(int level, int n) {
  static std::once_flag atfork;
  std::call_once(atfork, [] { ::pthread_atfork(nullptr, nullptr, forget_pools_in_child); });
  std::lock_guard lock(*g_pools_mutex);
  auto& slot = (*g_pools)[{level, n}];
  if (!slot) slot = std::make_unique<Pool>(n);
  return *slot;
}

class ThreadingBackend final : public joblib::ParallelBackendBase {
 public:
  explicit ThreadingBackend(const joblib::BackendInit& init) : ParallelBackendBase(init) {}

  std::string name() const override { return "threading"; }

  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c;
    c.uses_threads = true;
    c.supports_sharedmem = true;
    c.supports_timeout = true;
    c.supports_return_generator = true;
    c.supports_inner_max_num_threads = true;
    return c;
  }

  std::exception_ptr start_call(const joblib::CallSettings& s) noexcept override {
    try {
      pool_ = &pool_for(nesting_level(), s.n_jobs);
    } catch (...) {
      return std::current_exception();
    }
    return {};
  }

  void submit(joblib::Batch& batch) noexcept override {
    try {
      pool_->push(batch);
    } catch (...) {
      batch.fail(std::current_exception());
    }
  }

 private:
  Pool* pool_ = nullptr;
};

}  // namespace

JOBLIB_EXPORT_BACKEND(ThreadingBackend)
