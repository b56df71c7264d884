#include "registry.hpp"

#include "fork_safety.hpp"

#include <joblib/errors.hpp>

#include <boost/dll/shared_library.hpp>
#include <dlfcn.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string_view>

namespace joblib::detail {
namespace fs = std::filesystem;

namespace {

struct Entry {
  fs::path library;                 // plugin entries
  bool rtld_global = false;
  std::string takes_over_when;      // an environment variable: when set, the plugin's worker takeover runs
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

fs::path absolute_or_same(const fs::path& p) {
  std::error_code ec;
  fs::path a = fs::absolute(p, ec);
  return ec ? p : a;
}

// ---- which files are trusted ----------------------------------------------
//
// As ssh's StrictModes treats keys: a plugin library or plugin list is used
// only if it and every folder above it, up to /, is owned by this user
// (euid) or root and is not writable by group or others. A folder with the
// sticky bit (/tmp) is accepted although others may write to it: nobody but
// a file's owner can replace that file there.

bool unsafe_plugins_allowed() {
  const char* v = std::getenv("JOBLIB_ALLOW_UNSAFE_PLUGINS");
  return v && *v && std::string_view(v) != "0";
}

// Why `file` (which exists) is not trusted, or "" if it is.
std::string why_untrusted(const fs::path& file) {
  if (unsafe_plugins_allowed()) return {};
  std::error_code ec;
  fs::path p = fs::canonical(file, ec);  // the file the loader reads, and the folders it really lies in
  if (ec) return fmt::format("cannot check '{}': {}", file.string(), ec.message());
  const uid_t me = ::geteuid();
  for (;;) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return fmt::format("cannot check '{}': {}", p.string(), std::strerror(errno));
    if (st.st_uid != me && st.st_uid != 0) return fmt::format("'{}' is owned by uid {}", p.string(), st.st_uid);
    const unsigned mode = st.st_mode & 07777;
    const bool sticky_dir = S_ISDIR(st.st_mode) && (st.st_mode & S_ISVTX);
    if (!sticky_dir && (st.st_mode & S_IWOTH))
      return fmt::format("'{}' is writable by others (mode {:04o})", p.string(), mode);
    if (!sticky_dir && (st.st_mode & S_IWGRP))
      return fmt::format("'{}' is writable by its group (mode {:04o})", p.string(), mode);
    fs::path parent = p.parent_path();
    if (parent.empty() || parent == p) break;
    p = std::move(parent);
  }
  return {};
}

std::string refusal(const std::string& why) {
  return fmt::format(
      "refused: {}; make it owned by you or root and not writable by group or others (chmod go-w), or set "
      "JOBLIB_ALLOW_UNSAFE_PLUGINS=1 to trust it anyway",
      why);
}

// What a file that is not a regular file is, for messages.
std::string not_regular(const struct stat& st) {
  if (S_ISDIR(st.st_mode)) return "is a directory, not a regular file";
  if (S_ISFIFO(st.st_mode)) return "is a FIFO, not a regular file";
  if (S_ISSOCK(st.st_mode)) return "is a socket, not a regular file";
  if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) return "is a device, not a regular file";
  return "is not a regular file";
}

// ---- plugin lists -------------------------------------------------------------

// Why a plugin list cannot be used. `reason` names no file; `brief` is the
// reason without the advice.
struct ListProblem {
  std::string reason;
  bool content = false;  // the file was read, an entry is wrong
  std::string brief;
};

ListProblem problem(std::string reason, bool content = false) {
  ListProblem p{std::move(reason), content, {}};
  p.brief = p.reason;
  return p;
}

// The text of a plugin list. Never opens anything but a trusted regular
// file, and never blocks on one (a FIFO, a device).
std::string read_list_text(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) throw problem(errno == ENOENT ? "no such file" : std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw problem(not_regular(st));
  if (std::string why = why_untrusted(file); !why.empty()) {
    ListProblem p = problem(refusal(why));
    p.brief = "refused: " + why;
    throw p;
  }
  const int fd = ::open(file.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) throw problem(std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat opened {};
  if (::fstat(fd, &opened) != 0) throw problem(std::strerror(errno));
  if (opened.st_dev != st.st_dev || opened.st_ino != st.st_ino) throw problem("was replaced while being opened");
  std::string text;
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw problem(std::strerror(errno));
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  return text;
}

// A plugin list, read and checked whole before anything of it is used.
struct PluginList {
  fs::path file;
  std::map<std::string, std::string> defaults;
  std::vector<std::pair<std::string, Entry>> entries;
};

// Reads `file` (an absolute path). Throws ListProblem.
PluginList parse_list(const fs::path& file) {
  const std::string text = read_list_text(file);
  toml::table tbl;
  try {
    tbl = toml::parse(text, file.string());
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << e.description() << " (line " << e.source().begin.line << ")";
    throw problem(os.str());
  }
  PluginList list;
  list.file = file;
  const fs::path base = file.parent_path();
  if (auto* d = tbl["defaults"].as_table()) {
    for (auto&& [k, v] : *d)
      if (auto s = v.value<std::string>()) list.defaults[std::string(k.str())] = *s;
  }
  if (auto* p = tbl["plugins"].as_table()) {
    for (auto&& [k, v] : *p) {
      auto* t = v.as_table();
      if (!t) throw problem(fmt::format("[plugins.{}] must be a table", k.str()), true);
      auto lib = (*t)["library"].value<std::string>();
      if (!lib) throw problem(fmt::format("[plugins.{}] has no library = \"...\"", k.str()), true);
      Entry e;
      e.library = fs::path(*lib).is_absolute() ? fs::path(*lib) : base / *lib;
      e.rtld_global = (*t)["rtld_global"].value_or(false);
      e.takes_over_when = (*t)["takes_over_when"].value_or(std::string());
      e.serves_known = true;
      if (auto* arr = (*t)["serves"].as_array()) {
        for (auto&& h : *arr) {
          auto s = h.value<std::string>();
          if (s == "threads") e.serves.insert(Hint::threads);
          else if (s == "processes") e.serves.insert(Hint::processes);
          else if (s == "sharedmem") e.serves.insert(Hint::sharedmem);
          else throw problem(fmt::format("[plugins.{}] serves unknown hint '{}'", k.str(), s.value_or("?")), true);
        }
      }
      list.entries.emplace_back(std::string(k.str()), std::move(e));
    }
  }
  return list;
}

// The main list: JOBLIB_PLUGINS_TOML, else (or if that one cannot be used)
// joblib/plugins.toml beside libjoblib.so; each with whether
// JOBLIB_PLUGINS_TOML named it.
std::vector<std::pair<fs::path, bool>> main_list_candidates() {
  std::vector<std::pair<fs::path, bool>> candidates;
  if (const char* env = std::getenv("JOBLIB_PLUGINS_TOML"); env && *env)
    candidates.emplace_back(absolute_or_same(env), true);
  if (const fs::path dir = core_library_dir(); !dir.empty()) {
    for (fs::path c : {dir / "joblib" / "plugins.toml", dir.parent_path() / "lib" / "joblib" / "plugins.toml"}) {
      c = c.lexically_normal();
      if (std::none_of(candidates.begin(), candidates.end(), [&](auto& x) { return x.first == c; }))
        candidates.emplace_back(c, false);
    }
  }
  return candidates;
}

// The extra lists JOBLIB_PLUGINS names (colon-separated).
std::vector<fs::path> extra_lists() {
  std::vector<fs::path> out;
  if (const char* extra = std::getenv("JOBLIB_PLUGINS"); extra && *extra) {
    std::stringstream ss(extra);
    for (std::string item; std::getline(ss, item, ':');)
      if (!item.empty()) out.push_back(absolute_or_same(item));
  }
  return out;
}

// Whether a variable that some start-up list names in `takes_over_when` is
// set: a look at the lists' text, so that a program started by no launcher
// never builds the registry before main (that costs a few milliseconds).
bool takeover_variable_set() {
  std::vector<fs::path> files = extra_lists();
  for (auto& [file, named] : main_list_candidates()) files.push_back(file);
  for (const fs::path& file : files) {
    // Regular files only (a FIFO named by JOBLIB_PLUGINS must not block
    // the start of the program), read without an ifstream's locale set-up.
    std::string text;
    const int fd = ::open(file.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
      char buf[4096];
      for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    std::stringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
      const auto key = line.find("takes_over_when");
      const auto open = line.find('"', key);
      const auto close = open == std::string::npos ? open : line.find('"', open + 1);
      if (key == std::string::npos || close == std::string::npos) continue;
      const std::string var = line.substr(open + 1, close - open - 1);
      if (const char* v = std::getenv(var.c_str()); v && *v) return true;
    }
  }
  return false;
}

class Registry {
 public:
  static Registry& instance() {
    // Never destroyed: plugins stay loaded until exit. Its mutex is held
    // across fork() only once the registry exists (the constructor never
    // throws, and the mutex must outlive every later fork()).
    static Registry* r = [] {
      auto* made = new Registry();
      hold_across_fork(made->mutex);
      return made;
    }();
    return *r;
  }

  std::mutex mutex;
  std::map<std::string, Entry> entries;
  std::map<std::string, std::string> defaults{
      {"backend", "threading"}, {"threads", "threading"}, {"processes", "loky"}, {"sharedmem", "threading"}};
  std::vector<fs::path> files;
  std::vector<std::shared_ptr<boost::dll::shared_library>> graveyard;  // replaced libraries stay loaded
  bool main_found = false;               // the main plugins.toml was read
  std::vector<std::string> looked_for;   // where it was looked for, when it was not

  void add_locked(PluginList&& list) {
    for (auto& [k, v] : list.defaults) defaults[k] = v;
    for (auto& [name, e] : list.entries) {
      if (auto it = entries.find(name); it != entries.end() && it->second.lib) graveyard.push_back(it->second.lib);
      entries[name] = std::move(e);
    }
    files.push_back(std::move(list.file));
  }

  // Why no backend is listed, when the main plugins.toml was not found.
  std::string no_main_list_locked() const {
    std::string where;
    for (const std::string& w : looked_for) where += (where.empty() ? "" : ", ") + w;
    if (where.empty()) where = "nowhere: the folder of libjoblib is unknown";
    return fmt::format(
        "{} (looked for {}); set JOBLIB_PLUGINS_TOML to the plugins.toml installed with joblib-cpp",
        files.empty() ? "no plugin list was found" : "the main plugin list was not found", where);
  }

 private:
  Registry() {
    // Never throws: a plugin list that cannot be used is reported and
    // ignored, and the registry goes on with the others.
    try {
      read_start_up_lists();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "joblib: error while reading the plugin lists: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "joblib: error while reading the plugin lists\n");
    }
  }

  // Reads one list the environment or the installation names. A problem is
  // reported on stderr (once per file; a missing installed candidate
  // silently) and the file is ignored.
  bool try_read(const fs::path& file, bool report_missing, std::string* brief = nullptr) {
    try {
      add_locked(parse_list(file));
      return true;
    } catch (const ListProblem& p) {
      if (brief) *brief = p.brief;
      const bool missing = p.reason == "no such file";
      if ((report_missing || !missing) && reported_.insert(file.string()).second)
        std::fprintf(stderr, "joblib: ignoring plugin list '%s': %s\n", file.c_str(), p.reason.c_str());
      return false;
    }
  }

  void read_start_up_lists() {
    for (const auto& [file, named] : main_list_candidates()) {
      std::string brief;
      if (try_read(file, named, &brief)) {
        main_found = true;
        break;
      }
      looked_for.push_back(brief == "no such file" ? fmt::format("'{}'", file.string())
                                                   : fmt::format("'{}' ({})", file.string(), brief));
    }
    for (const fs::path& file : extra_lists()) try_read(file, true);
  }

  std::set<std::string> reported_;
};

// Loads the plugin of `name` (registry lock held) and sets entry.factory.
void load_plugin_locked(Registry& /*r*/, const std::string& name, Entry& e) {
  namespace dll = boost::dll;
  const std::string path = e.library.string();
  // Never hand the loader a file it could block on (a FIFO) or one that
  // others could have written.
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      throw BackendError(fmt::format("cannot load backend '{}': plugin library '{}' does not exist", name, path));
    throw BackendError(fmt::format("cannot load backend '{}' from '{}': {}", name, path, std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode))
    throw BackendError(fmt::format("cannot load backend '{}' from '{}': {}", name, path, not_regular(st)));
  if (std::string why = why_untrusted(e.library); !why.empty())
    throw BackendError(fmt::format("cannot load backend '{}' from '{}': {}", name, path, refusal(why)));
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
  std::error_code ec;
  for (auto& [name, e] : r.entries)
    if (e.factory || fs::exists(e.library, ec)) names.push_back(name);
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

// The message for a name that is not a backend here.
std::string unknown_backend_message_locked(Registry& r, const std::string& name) {
  std::string msg = fmt::format("Invalid backend: '{}', expected one of {}", name, available_locked(r));
  if (!r.main_found) msg += "; " + r.no_main_list_locked();
  return msg;
}

}  // namespace

void run_worker_takeovers(int argc, char** argv) {
  if (!takeover_variable_set()) return;
  using Takeover = void(int, char**);
  std::vector<std::pair<std::string, Takeover*>> todo;
  {
    auto& r = Registry::instance();
    std::lock_guard lock(r.mutex);
    for (auto& [name, e] : r.entries) {
      if (e.takes_over_when.empty()) continue;
      const char* v = std::getenv(e.takes_over_when.c_str());
      if (!v || !*v) continue;
      std::error_code ec;
      if (!e.factory && !fs::exists(e.library, ec)) continue;  // not built here: as available_backends() says
      try {
        if (!e.factory) load_plugin_locked(r, name, e);
        if (e.lib && e.lib->has("joblib_worker_takeover"))
          todo.emplace_back(name, &e.lib->get_alias<Takeover>("joblib_worker_takeover"));
      } catch (const std::exception& err) {
        std::fprintf(stderr, "joblib: %s is set, and the '%s' backend that takes over then cannot load: %s\n",
                     e.takes_over_when.c_str(), name.c_str(), err.what());
        std::fflush(stderr);
        std::_Exit(1);
      }
    }
  }
  for (auto& [name, fn] : todo) fn(argc, argv);
}

bool backend_known(const std::string& name) {
  if (name == "sequential") return true;
  auto& r = Registry::instance();
  std::lock_guard lock(r.mutex);
  return r.entries.count(name) > 0;
}

void throw_unknown_backend(const std::string& name) {
  auto& r = Registry::instance();
  std::string msg;
  {
    std::lock_guard lock(r.mutex);
    msg = unknown_backend_message_locked(r, name);
  }
  throw BackendError(msg);
}

void throw_default_backend_unavailable(const std::string& name) {
  auto& r = Registry::instance();
  std::string msg;
  {
    std::lock_guard lock(r.mutex);
    if (!r.main_found)
      msg = fmt::format("the default backend '{}' is not available: {}", name, r.no_main_list_locked());
    else
      msg = fmt::format("the default backend '{}' is not available, expected one of {}", name, available_locked(r));
  }
  throw BackendError(msg);
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
    if (it == r.entries.end()) throw BackendError(unknown_backend_message_locked(r, name));
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
  const std::filesystem::path file = detail::absolute_or_same(toml_file);
  detail::PluginList list;
  try {
    list = detail::parse_list(file);  // a direct request: a file that cannot be used is an error
  } catch (const detail::ListProblem& p) {
    throw BackendError(p.content ? fmt::format("plugin list '{}': {}", file.string(), p.reason)
                                 : fmt::format("cannot read plugin list '{}': {}", file.string(), p.reason));
  }
  std::lock_guard lock(r.mutex);
  r.add_locked(std::move(list));
}

std::vector<std::string> available_backends() {
  auto& r = detail::Registry::instance();
  std::lock_guard lock(r.mutex);
  return detail::available_locked(r);
}

}  // namespace joblib
