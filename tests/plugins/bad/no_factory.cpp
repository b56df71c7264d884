// A plugin with an ABI marker but no factory: the registry must refuse it.
#include <joblib/backend.hpp>

#include <boost/dll/alias.hpp>  // aliases made by Boost.DLL itself, as the SDK macro makes them

namespace {
int abi() { return joblib::plugin_abi_version; }
}  // namespace
BOOST_DLL_ALIAS(abi, joblib_plugin_abi)
