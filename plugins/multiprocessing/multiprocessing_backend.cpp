// The multiprocessing backend: a pool of forked worker processes per call
// (see core/process/process_pool.cpp and docs/backends.md for the fork caveats).
#include <joblib/backend.hpp>
#include <joblib/detail/process_backend.hpp>

namespace {
class MultiprocessingBackend {
 public:
  static std::unique_ptr<joblib::ParallelBackendBase> make(const joblib::BackendInit& init) {
    return joblib::detail::make_process_backend(init, /*fork=*/true);
  }
};
}  // namespace

JOBLIB_EXPORT_BACKEND_FACTORY(MultiprocessingBackend::make)
