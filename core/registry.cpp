#include "registry.hpp"

#include "fork_safety.hpp"

#include <joblib/errors.hpp>

#include <boost/dll/shared_library.hpp>
#include <dlfcn.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

namespace joblib::detail {
namespace fs = std::filesystem;

namespace {

struct Entry {
  fs::path library;                 // plugin entries
  bool rtld_global = false;
  std::set<Hint> serves;
  bool serves_known = false;        // false for factories not asked yet
  BackendFactory factory;           // registered, or set once the plugin is loaded
  std::shared_ptr<boost::dll::shared_library> lib;
};

std::string hint_name(Hint h) {
  switch (h) {
    case Hint::threads: return "threads";
    case Hint::processes: return "processes";
    case Hint::sharedmem: return "sharedmem";
  }
  return "?";
}

fs::path core_library_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&core_library_dir), &info) && info.dli_fname) {
    std::error_code ec;
    fs::path p = fs::canonical(info.dli_fname, ec);
    if (!ec) return p.parent_path();
  }
  return {};
}

class Registry {
 public:
  static Registry& instance() {
    static Registry* r = new Registry();  // never destroyed: plugins stay loaded until exit
    return *r;
  }

  std::mutex mutex;
  std::map<std::string, Entry> entries;
  std::map<std::string, std::string> defaults{
      {"backend", "threading"}, {"threads", "threading"}, {"processes", "loky"}, {"sharedmem", "threading"}};
  std::vector<fs::path> files;
  std::vector<std::shared_ptr<boost::dll::shared_library>> graveyard;  // replaced libraries stay loaded

  void read_file_locked(const fs::path& file) {
    toml::table tbl;
    try {
      tbl = toml::parse_file(file.string());
    } catch (const toml::parse_error& e) {
      std::ostringstream os;
      os << e.description() << " (line " << e.source().begin.line << ")";
      throw BackendError(fmt::format("cannot read plugin list '{}': {}", file.string(), os.str()));
    }
    fs::path base = file.parent_path();
    if (auto* d = tbl["defaults"].as_table()) {
      for (auto&& [k, v] : *d)
        if (auto s = v.value<std::string>()) defaults[std::string(k.str())] = *s;
    }
    if (auto* p = tbl["plugins"].as_table()) {
      for (auto&& [k, v] : *p) {
        auto* t = v.as_table();
        if (!t) throw BackendError(fmt::format("plugin list '{}': [plugins.{}] must be a table", file.string(), k.str()));
        auto lib = (*t)["library"].value<std::string>();
        if (!lib)
          throw BackendError(fmt::format("plugin list '{}': [plugins.{}] has no library = \"...\"", file.string(), k.str()));
        Entry e;
        e.library = fs::path(*lib).is_absolute() ? fs::path(*lib) : base / *lib;
        e.rtld_global = (*t)["rtld_global"].value_or(false);
        e.serves_known = true;
        if (auto* arr = (*t)["serves"].as_array()) {
          for (auto&& h : *arr) {
            auto s = h.value<std::string>();
            if (s == "threads") e.serves.insert(Hint::threads);
            else if (s == "processes") e.serves.insert(Hint::processes);
            else if (s == "sharedmem") e.serves.insert(Hint::sharedmem);
            else
              throw BackendError(fmt::format("plugin list '{}': [plugins.{}] serves unknown hint '{}'", file.string(),
                                             k.str(), s.value_or("?")));
          }
        }
        std::string name(k.str());
        if (auto it = entries.find(name); it != entries.end() && it->second.lib) graveyard.push_back(it->second.lib);
        entries[name] = std::move(e);
      }
    }
    files.push_back(file);
  }

 private:
  Registry() {
    hold_across_fork(mutex);
    std::lock_guard lock(mutex);
    fs::path main;
    if (const char* env = std::getenv("JOBLIB_PLUGINS_TOML"); env && *env) {
      main = env;
      if (!fs::exists(main))
        std::fprintf(stderr, "joblib: JOBLIB_PLUGINS_TOML names '%s', which does not exist: no plugin is listed\n",
                     env);
    } else {
      fs::path dir = core_library_dir();
      for (const fs::path& candidate : {dir / "joblib" / "plugins.toml", dir.parent_path() / "lib" / "joblib" / "plugins.toml"}) {
        if (fs::exists(candidate)) {
          main = candidate;
          break;
        }
      }
    }
    if (!main.empty() && fs::exists(main)) read_file_locked(main);
    if (const char* extra = std::getenv("JOBLIB_PLUGINS"); extra && *extra) {
      std::stringstream ss(extra);
      for (std::string item; std::getline(ss, item, ':');)
        if (!item.empty()) read_file_locked(item);
    }
  }
};

// Loads the plugin of `name` (registry lock held) and sets entry.factory.
void load_plugin_locked(Registry& /*r*/, const std::string& name, Entry& e) {
  namespace dll = boost::dll;
  const std::string path = e.library.string();
  if (!fs::exists(e.library))
    throw BackendError(fmt::format("cannot load backend '{}': plugin library '{}' does not exist", name, path));
  auto mode = dll::load_mode::rtld_lazy | dll::load_mode::rtld_local;
  if (e.rtld_global) mode = dll::load_mode::rtld_lazy | dll::load_mode::rtld_global;
  std::shared_ptr<dll::shared_library> lib;
  try {
    lib = std::make_shared<dll::shared_library>(e.library, mode);
  } catch (const std::exception& err) {
    const char* why = dlerror();
    throw BackendError(fmt::format("cannot load backend '{}' from '{}': {}", name, path, why ? why : err.what()));
  }
  if (!lib->has("joblib_plugin_abi"))
    throw BackendError(fmt::format(
        "cannot load backend '{}' from '{}': no joblib_plugin_abi symbol (not a joblib-cpp plugin; export the "
        "backend with JOBLIB_EXPORT_BACKEND)",
        name, path));
  const int abi = lib->get_alias<int()>("joblib_plugin_abi")();
  if (abi != plugin_abi_version)
    throw BackendError(fmt::format(
        "cannot load backend '{}' from '{}': plugin ABI version {} does not match this joblib-cpp's {}; rebuild "
        "the plugin",
        name, path, abi, plugin_abi_version));
  if (!lib->has("joblib_backend_factory"))
    throw BackendError(fmt::format(
        "cannot load backend '{}' from '{}': no joblib_backend_factory symbol (export the backend with "
        "JOBLIB_EXPORT_BACKEND)",
        name, path));
  auto* fn = &lib->get_alias<BackendFactoryFn>("joblib_backend_factory");
  e.factory = [fn](const BackendInit& init) { return fn(init); };
  e.lib = std::move(lib);
}

std::vector<std::string> available_locked(Registry& r) {
  std::vector<std::string> names{"sequential"};
  for (auto& [name, e] : r.entries)
    if (e.factory || fs::exists(e.library)) names.push_back(name);
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

}  // namespace

bool backend_known(const std::string& name) {
  if (name == "sequential") return true;
  auto& r = Registry::instance();
  std::lock_guard lock(r.mutex);
  return r.entries.count(name) > 0;
}

void throw_unknown_backend(const std::string& name) {
  auto& r = Registry::instance();
  std::vector<std::string> names;
  {
    std::lock_guard lock(r.mutex);
    names = available_locked(r);
  }
  throw BackendError(fmt::format("Invalid backend: '{}', expected one of {}", name, names));
}

bool backend_serves(const std::string& name, Hint hint) {
  if (name == "sequential") return hint != Hint::processes;
  auto& r = Registry::instance();
  BackendFactory factory;
  {
    std::lock_guard lock(r.mutex);
    auto it = r.entries.find(name);
    if (it == r.entries.end()) return false;
    if (it->second.serves_known) return it->second.serves.count(hint) > 0;
    factory = it->second.factory;
  }
  // A registered factory: ask an instance once.
  std::unique_ptr<ParallelBackendBase> probe;
  try {
    probe = factory(BackendInit{});
  } catch (const std::exception& e) {
    throw BackendError(fmt::format("backend '{}' failed to start: {}", name, e.what()));
  }
  if (!probe) throw BackendError(fmt::format("backend '{}': its factory returned no backend", name));
  const BackendCapabilities caps = probe->capabilities();
  std::set<Hint> serves;
  if (caps.uses_threads) serves.insert(Hint::threads);
  else serves.insert(Hint::processes);
  if (caps.supports_sharedmem) serves.insert(Hint::sharedmem);
  std::lock_guard lock(r.mutex);
  auto it = r.entries.find(name);
  if (it != r.entries.end()) {
    it->second.serves = serves;
    it->second.serves_known = true;
  }
  return serves.count(hint) > 0;
}

std::string default_backend() {
  auto& r = Registry::instance();
  std::lock_guard lock(r.mutex);
  return r.defaults["backend"];
}

std::string default_backend_for(Hint hint) {
  auto& r = Registry::instance();
  std::lock_guard lock(r.mutex);
  return r.defaults[hint_name(hint)];
}

std::shared_ptr<ParallelBackendBase> create_backend(const std::string& name, const BackendInit& init) {
  auto& r = Registry::instance();
  BackendFactory factory;
  std::shared_ptr<boost::dll::shared_library> lib;
  {
    std::lock_guard lock(r.mutex);
    auto it = r.entries.find(name);
    if (it == r.entries.end()) {
      std::vector<std::string> names = available_locked(r);
      throw BackendError(fmt::format("Invalid backend: '{}', expected one of {}", name, names));
    }
    if (!it->second.factory) load_plugin_locked(r, name, it->second);
    factory = it->second.factory;
    lib = it->second.lib;
  }
  std::unique_ptr<ParallelBackendBase> made;
  try {
    made = factory(init);
  } catch (const std::exception& e) {
    throw BackendError(fmt::format("backend '{}' failed to start: {}", name, e.what()));
  }
  if (!made) throw BackendError(fmt::format("backend '{}': its factory returned no backend", name));
  // The deleter keeps the plugin library loaded for as long as the instance lives.
  return std::shared_ptr<ParallelBackendBase>(made.release(), [lib](ParallelBackendBase* p) { delete p; });
}

std::vector<fs::path> plugin_files() {
  auto& r = Registry::instance();
  std::lock_guard lock(r.mutex);
  return r.files;
}

}  // namespace joblib::detail

namespace joblib {

void register_parallel_backend(const std::string& name, BackendFactory factory, bool make_default) {
  if (name.empty()) throw std::invalid_argument("register_parallel_backend: name is empty");
  if (name == "sequential") throw std::invalid_argument("register_parallel_backend: 'sequential' is built in");
  if (!factory) throw std::invalid_argument("register_parallel_backend: factory for '" + name + "' is empty");
  auto& r = detail::Registry::instance();
  std::lock_guard lock(r.mutex);
  detail::Entry e;
  e.factory = std::move(factory);
  if (auto it = r.entries.find(name); it != r.entries.end() && it->second.lib) r.graveyard.push_back(it->second.lib);
  r.entries[name] = std::move(e);
  if (make_default) r.defaults["backend"] = name;
}

void register_parallel_backend(const std::string& name, const std::filesystem::path& library, bool make_default) {
  if (name.empty()) throw std::invalid_argument("register_parallel_backend: name is empty");
  if (name == "sequential") throw std::invalid_argument("register_parallel_backend: 'sequential' is built in");
  auto& r = detail::Registry::instance();
  std::lock_guard lock(r.mutex);
  detail::Entry e;
  std::error_code ec;
  e.library = std::filesystem::absolute(library, ec);
  if (ec) e.library = library;
  detail::load_plugin_locked(r, name, e);  // throws before anything is replaced
  // Capabilities of a loaded plugin: ask an instance.
  if (auto it = r.entries.find(name); it != r.entries.end() && it->second.lib) r.graveyard.push_back(it->second.lib);
  r.entries[name] = std::move(e);
  if (make_default) r.defaults["backend"] = name;
}

void load_plugins_file(const std::filesystem::path& toml_file) {
  auto& r = detail::Registry::instance();
  std::lock_guard lock(r.mutex);
  if (!std::filesystem::exists(toml_file))
    throw BackendError(fmt::format("cannot read plugin list '{}': no such file", toml_file.string()));
  r.read_file_locked(std::filesystem::absolute(toml_file));
}

std::vector<std::string> available_backends() {
  auto& r = detail::Registry::instance();
  std::lock_guard lock(r.mutex);
  return detail::available_locked(r);
}

}  // namespace joblib
