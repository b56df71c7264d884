// The multiprocessing backend: a pool of workers forked from the caller for
// each call, built on the worker SDK (joblib/worker_sdk.hpp). The pool ends
// with the call; a fork sees the caller's memory as it was (no main guard
// needed), and only the forking thread exists in a worker. See
// docs/backends.md.
#include <joblib/backend.hpp>
#include <joblib/worker_sdk.hpp>

#include <memory>
#include <string>

namespace {

namespace sdk = joblib::worker_sdk;

class MultiprocessingBackend final : public sdk::PoolBackend {
 public:
  using PoolBackend::PoolBackend;
  static std::unique_ptr<joblib::ParallelBackendBase> make(const joblib::BackendInit& init) {
    return std::make_unique<MultiprocessingBackend>(init);
  }
  std::string name() const override { return "multiprocessing"; }

 protected:
  std::shared_ptr<sdk::WorkerPool> make_pool(const joblib::CallSettings& s) override {
    sdk::WorkerOptions options;
    options.start = sdk::StartMethod::fork;
    options.initializer = s.initializer;
    return std::make_shared<sdk::WorkerPool>(std::move(options), s.n_jobs);
  }
};

}  // namespace

JOBLIB_EXPORT_BACKEND_FACTORY(MultiprocessingBackend::make)
