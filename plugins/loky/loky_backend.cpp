// The loky backend: a reusable pool of worker processes started by running
// this program again (see core/process/process_pool.cpp and docs/backends.md).
#include <joblib/backend.hpp>
#include <joblib/detail/process_backend.hpp>

namespace {
class LokyBackend {
 public:
  static std::unique_ptr<joblib::ParallelBackendBase> make(const joblib::BackendInit& init) {
    return joblib::detail::make_process_backend(init, /*fork=*/false);
  }
};
}  // namespace

JOBLIB_EXPORT_BACKEND_FACTORY(LokyBackend::make)
