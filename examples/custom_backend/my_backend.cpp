// A user-written backend: every batch runs on a thread of its own, made for
// it. Small on purpose: it shows the whole plugin contract.
//
//   1. derive from joblib::ParallelBackendBase, take a BackendInit;
//   2. say what you can do in capabilities();
//   3. in submit(), arrange for batch.run() (or batch.fail()) to be called
//      exactly once, and never touch the batch after that;
//   4. never let an exception escape (every entry point is noexcept);
//   5. export the class with JOBLIB_EXPORT_BACKEND.
#include <joblib/backend.hpp>

#include <thread>

namespace {

class ThreadPerBatchBackend final : public joblib::ParallelBackendBase {
 public:
  explicit ThreadPerBatchBackend(const joblib::BackendInit& init) : ParallelBackendBase(init) {}

  std::string name() const override { return "thread_per_batch"; }

  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c;
    c.uses_threads = true;
    c.supports_sharedmem = true;
    return c;
  }

  void submit(joblib::Batch& batch) noexcept override {
    try {
      std::thread([&batch] { batch.run(); }).detach();
    } catch (...) {
      batch.fail(std::current_exception());  // could not start a thread
    }
  }
};

}  // namespace

JOBLIB_EXPORT_BACKEND(ThreadPerBatchBackend)
