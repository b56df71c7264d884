// The threading backend: persistent std::thread pools reused across calls.
#include <joblib/backend.hpp>

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
    {
      std::lock_guard lock(m_);
      queue_.push_back(&b);
    }
    cv_.notify_one();
  }

 private:
  void work() {
    for (;;) {
      joblib::Batch* b = nullptr;
      {
        std::unique_lock lock(m_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        b = queue_.front();
        queue_.pop_front();
      }
      b->run();
    }
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<joblib::Batch*> queue_;
  std::vector<std::thread> threads_;
};

// One pool per (nesting level, size), made on first use and never destroyed:
// the threads are blocked on an empty queue at exit, which is harmless, while
// joining them from a static destructor could wait on a task abandoned after
// a timeout.
Pool& pool_for(int level, int n) {
  static std::mutex m;
  static auto* pools = new std::map<std::pair<int, int>, std::unique_ptr<Pool>>();
  std::lock_guard lock(m);
  auto& slot = (*pools)[{level, n}];
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
