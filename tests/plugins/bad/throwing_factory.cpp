// A plugin whose backend constructor throws: the registry reports it as BackendError.
#include <joblib/backend.hpp>

#include <stdexcept>

namespace {
class Throws final : public joblib::ParallelBackendBase {
 public:
  explicit Throws(const joblib::BackendInit& i) : ParallelBackendBase(i) {
    throw std::runtime_error("cannot reach the cluster");
  }
  std::string name() const override { return "throws"; }
  joblib::BackendCapabilities capabilities() const noexcept override { return {}; }
  void submit(joblib::Batch& b) noexcept override { b.run(); }
};
}  // namespace
JOBLIB_EXPORT_BACKEND(Throws)
