// A plugin built for another ABI version: the registry must refuse it.
#include <joblib/backend.hpp>

#include <boost/dll/alias.hpp>  // aliases made by Boost.DLL itself, as the SDK macro makes them

namespace {
class Nothing final : public joblib::ParallelBackendBase {
 public:
  explicit Nothing(const joblib::BackendInit& i) : ParallelBackendBase(i) {}
  std::string name() const override { return "bad_abi"; }
  joblib::BackendCapabilities capabilities() const noexcept override { return {}; }
  void submit(joblib::Batch& b) noexcept override { b.run(); }
};
std::unique_ptr<joblib::ParallelBackendBase> make(const joblib::BackendInit& i) { return std::make_unique<Nothing>(i); }
int abi() { return joblib::plugin_abi_version + 1000; }
}  // namespace
BOOST_DLL_ALIAS(make, joblib_backend_factory)
BOOST_DLL_ALIAS(abi, joblib_plugin_abi)
