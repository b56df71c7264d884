#pragma once
// Internal: the process backends live in the core (they share its worker
// runtime with the MPI backend); their plugins only export them.
#include <joblib/backend.hpp>
#include <joblib/export.hpp>

#include <memory>

namespace joblib::detail {
/// A process backend: spawned reusable workers (loky) or a fork pool per call (multiprocessing).
JOBLIB_EXPORT std::unique_ptr<ParallelBackendBase> make_process_backend(const BackendInit& init, bool fork);
}  // namespace joblib::detail
