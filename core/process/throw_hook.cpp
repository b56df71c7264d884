// Stack traces "taken where it was thrown" (docs/architecture.md, decision 7): in a
// worker process, every C++ throw records the stack before unwinding, so the
// error envelope sent to the caller shows where the task failed. In other
// processes the hook only forwards to the C++ runtime. This file includes
// nothing that declares __cxa_throw; the recording is in stack_trace.cpp.
#include <dlfcn.h>

#include <cstdlib>

namespace std {
class type_info;
}

namespace joblib::detail {
bool throw_traces_enabled() noexcept;
void record_throw_trace() noexcept;
}  // namespace joblib::detail

extern "C" {
using CxaThrow = void (*)(void*, std::type_info*, void (*)(void*));

__attribute__((visibility("default"), noreturn)) void __cxa_throw(void* obj, std::type_info* tinfo,
                                                                   void (*dest)(void*)) {
  static const CxaThrow real = reinterpret_cast<CxaThrow>(dlsym(RTLD_NEXT, "__cxa_throw"));
  if (joblib::detail::throw_traces_enabled()) joblib::detail::record_throw_trace();
  if (!real) std::abort();
  real(obj, tinfo, dest);
  __builtin_unreachable();
}
}
