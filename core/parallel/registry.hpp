#pragma once
// Backend registry: names -> factories, from plugins.toml and
// register_parallel_backend. Plugins load lazily, once, with Boost.DLL.
#include <joblib/backend.hpp>
#include <joblib/config.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace joblib::detail {

/// Hints a backend can serve, as written in plugins.toml's `serves` lists.
enum class Hint { threads, processes, sharedmem };

/// Is `name` a known backend (sequential, a plugins.toml entry, or registered)?
bool backend_known(const std::string& name);

/// Throws BackendError naming `name` and listing the available backends.
[[noreturn]] void throw_unknown_backend(const std::string& name);

/// Throws BackendError saying that the default backend `name` (nobody named
/// one) is not available, and why (no plugin list found, with where it was
/// looked for).
[[noreturn]] void throw_default_backend_unavailable(const std::string& name);

/// Does backend `name` serve `hint`? Plugins answer from plugins.toml without
/// being loaded; registered factories are asked once.
bool backend_serves(const std::string& name, Hint hint);

/// Default backend for a hint (plugins.toml [defaults]), or for no hint.
JOBLIB_EXPORT std::string default_backend();
JOBLIB_EXPORT std::string default_backend_for(Hint hint);

/// Creates an instance of backend `name` (loading its plugin on first use).
/// The instance keeps its plugin library loaded. Throws BackendError.
std::shared_ptr<ParallelBackendBase> create_backend(const std::string& name, const BackendInit& init);

/// In worker_main_guard(): for each plugin whose plugins.toml entry says
/// `takes_over_when = "VAR"` and VAR is set, loads it and calls its
/// exported joblib_worker_takeover(argc, argv) (which returns in a process
/// that runs main, and never returns in a worker). A plugin that cannot
/// load then ends the process with a message (exit status 1).
void run_worker_takeovers(int argc, char** argv);

/// The plugins.toml files read at start-up (for messages and tests).
JOBLIB_EXPORT std::vector<std::filesystem::path> plugin_files();

}  // namespace joblib::detail
