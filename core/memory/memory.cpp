// Memory: the disk cache's files, locks, eviction and messages
// (include/joblib/memory.hpp; docs/memory.md).
#include "expr.hpp"

#include <joblib/detail/portable.hpp>
#include <joblib/memory.hpp>

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <system_error>
#include <unordered_map>

namespace fs = std::filesystem;

namespace joblib {
namespace detail {

namespace {

std::mutex& warn_mutex() {
  static auto* m = new std::mutex();
  return *m;
}

// Prints a warning once per process per `what` (stderr, as Python's warnings).
void warn_once(const std::string& what, const std::string& text) {
  static auto* seen = new std::set<std::string>();
  std::lock_guard lock(warn_mutex());
  if (!seen->insert(what).second) return;
  std::fprintf(stderr, "joblib: %s\n", text.c_str());
  std::fflush(stderr);
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A file or folder name from any text: [A-Za-z0-9._-] kept, others '_',
// long names cut with a digest of the whole.
std::string safe_name(const std::string& text) {
  std::string out;
  for (char c : text) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_') ? c : '_';
  while (out.find("__") != std::string::npos) out.replace(out.find("__"), 2, "_");
  if (out.empty() || out == "." || out == "..") out = "_" + out;
  if (out.size() > 120) out = out.substr(0, 100) + "-" + hash_bytes(std::as_bytes(std::span(text))).substr(0, 16);
  return out;
}

std::string format_time(double t) { return fmt::format("{:.1f}s, {:.1f}min", t, t / 60); }

bool is_hex(const std::string& s, std::size_t n) {
  return s.size() == n && std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) && !std::isupper(static_cast<unsigned char>(c)); });
}

// Writes `text` to `file` through a unique temporary name renamed over it.
void write_atomically(const fs::path& file, const std::string& text) {
  static std::atomic<unsigned> counter{0};
  const fs::path tmp = file.string() + fmt::format(".{}-{}.tmp", ::getpid(), counter++);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw fs::filesystem_error("cannot write", tmp, std::make_error_code(std::errc::io_error));
    }
  }
  fs::rename(tmp, file);
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20)
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        else
          out += c;
    }
  }
  return out;
}

std::string metadata_json(const CallMetadata& m, const std::string& function, const std::string& fingerprint) {
  std::string args;
  for (const auto& [k, v] : m.input_args) args += fmt::format("{}\"{}\": \"{}\"", args.empty() ? "" : ", ", json_escape(k), json_escape(v));
  return fmt::format(
      "{{\"duration\": {}, \"input_args\": {{{}}}, \"time\": {}, \"function\": \"{}\", \"code\": \"{}\", "
      "\"key\": \"xxh3-128\"}}\n",
      m.duration, args, fmt::format("{:.6f}", m.time), json_escape(function), json_escape(fingerprint));
}

// Reads back what metadata_json wrote (duration, time, input_args).
CallMetadata parse_metadata(const std::string& text) {
  CallMetadata m;
  auto number_after = [&](const std::string& field) -> double {
    const auto at = text.find("\"" + field + "\": ");
    if (at == std::string::npos) return 0;
    return std::strtod(text.c_str() + at + field.size() + 4, nullptr);
  };
  m.duration = number_after("duration");
  m.time = number_after("time");
  const auto args = text.find("\"input_args\": {");
  if (args != std::string::npos) {
    std::size_t i = args + 15;
    auto read_string = [&](std::string& out) -> bool {
      while (i < text.size() && text[i] != '"' && text[i] != '}') ++i;
      if (i >= text.size() || text[i] != '"') return false;
      ++i;
      while (i < text.size() && text[i] != '"') {
        if (text[i] == '\\' && i + 1 < text.size()) {
          const char e = text[++i];
          out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
        } else {
          out += text[i];
        }
        ++i;
      }
      ++i;
      return true;
    };
    for (;;) {
      std::string k, v;
      if (!read_string(k)) break;
      if (!read_string(v)) break;
      m.input_args[k] = v;
    }
  }
  return m;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The process's record of which fingerprint each function folder holds.
std::mutex& code_mutex() {
  static auto* m = new std::mutex();
  return *m;
}
std::map<std::string, std::string>& checked_code() {
  static auto* m = new std::map<std::string, std::string>();
  return *m;
}

}  // namespace

class MemoryImpl;
void reduce_cache(MemoryImpl& mem, const ReduceOptions& limits);

bool ExpiresAfter::operator()(const CallMetadata& m) const { return now_seconds() - m.time < seconds; }

// ---- Memory ------------------------------------------------------------------------

class MemoryImpl {
 public:
  fs::path root;  // <location>/joblib; empty: no caching
  MemoryOptions options;
  std::optional<std::size_t> bytes_limit;
  std::chrono::steady_clock::time_point created = std::chrono::steady_clock::now();
  std::atomic<bool> degraded{false};

  void degrade(const std::string& why) {
    degraded.store(true);
    warn_once("memory-degraded:" + root.string(),
              fmt::format("the cache folder '{}' cannot be written ({}); calls go through without caching",
                          root.string(), why));
  }
};

class CacheImpl {
 public:
  std::shared_ptr<MemoryImpl> memory;
  FunctionIdentity id;
  CacheOptions options;
  std::optional<double> expires_seconds;
  fs::path func_dir;
  std::string given_name;
  std::mutex touch_mutex;
  std::unordered_map<std::string, double> last_touch;  // when this process last recorded an access

  int verbose() const { return options.verbose.value_or(memory->options.verbose); }
  MmapMode mmap_mode() const { return options.mmap_mode.value_or(memory->options.mmap_mode); }
  bool enabled() const { return !memory->root.empty() && !memory->degraded.load(); }

  // Once per process and function folder: a folder holding another code's
  // entries is cleared (the function changed), as joblib's func_code check.
  void check_code() {
    std::lock_guard lock(code_mutex());
    auto& table = checked_code();
    const std::string dir = func_dir.string();
    auto it = table.find(dir);
    if (it != table.end()) {
      if (it->second != id.fingerprint)
        warn_once("collision:" + dir + id.fingerprint,
                  fmt::format("Possible name collisions between functions cached as '{}' in {}: two functions with "
                              "different code share this name; give each its own name (Memory::cache(name, f))",
                              id.name, dir));
      return;
    }
    table.emplace(dir, id.fingerprint);
    std::error_code ec;
    const fs::path code_file = func_dir / "func_code.txt";
    const std::string wanted = id.fingerprint + "\n" + id.name + "\n";
    if (fs::exists(code_file, ec)) {
      const std::string stored = read_text(code_file);
      if (stored == wanted) return;
      // Another code: its entries can never be hit again.
      if (verbose() > 0)
        std::printf("[Memory] The code of %s changed: clearing its cache\n", id.name.c_str());
      for (auto& e : fs::directory_iterator(func_dir, ec))
        if (e.is_directory(ec) && is_hex(e.path().filename().string(), 2)) fs::remove_all(e.path(), ec);
    }
    fs::create_directories(func_dir, ec);
    try {
      write_atomically(code_file, wanted);
    } catch (const std::exception& e) {
      memory->degrade(e.what());
    }
  }
};

std::string format_arguments(const std::map<std::string, std::string>& summary) {
  // The keys are argument positions (ignored ones are absent): join the
  // texts in numeric order ("10" sorts before "2" as a string).
  std::vector<std::pair<unsigned long long, const std::string*>> args;
  for (const auto& [position, text] : summary) args.emplace_back(std::strtoull(position.c_str(), nullptr, 10), &text);
  std::sort(args.begin(), args.end());
  std::string out;
  for (const auto& [position, text] : args) {
    if (!out.empty()) out += ", ";
    out += *text;
    if (out.size() > 1500) break;
  }
  return out;
}

FunctionIdentity function_identity(const void* code, const std::string& type_name, const std::string& name,
                                   const std::optional<std::string>& version) {
  FunctionIdentity id;
  id.name = name;
  if (code != nullptr) {
    try {
      const std::string module = code_ref(code).module;
      id.module = fs::path(module).filename().string();
    } catch (const std::exception&) {
    }
    if (id.name.empty()) {
      std::string fn = function_name(code);
      // A lambda's call operator: name it by its type, which says where it is.
      id.name = (fn.empty() || fn.find("lambda") != std::string::npos || fn.find("operator()") != std::string::npos)
                    ? type_name
                    : fn;
    }
  }
  if (id.name.empty()) id.name = type_name;
  if (id.module.empty()) id.module = "unknown";
  if (version) {
    id.fingerprint = "v:" + *version;
  } else {
    const auto bytes = function_code(code);
    if (!bytes.empty()) {
      id.fingerprint = hash_bytes(bytes);
    } else {
      // No symbol gives the code's extent (a stripped module, or a callable
      // with no single call operator): the module's build-id stands for it,
      // so that any rebuild invalidates.
      try {
        id.fingerprint = code ? "build:" + code_ref(code).build_id : "type:" + type_name;
      } catch (const std::exception&) {
        id.fingerprint = "type:" + type_name;
      }
    }
  }
  return id;
}

std::shared_ptr<MemoryImpl> open_memory(const fs::path& location, const MemoryOptions& options);

std::shared_ptr<CacheImpl> make_cache(std::shared_ptr<MemoryImpl> memory, FunctionIdentity id,
                                      const CacheOptions& options, const std::string& given_name) {
  auto c = std::make_shared<CacheImpl>();
  c->given_name = given_name;
  c->memory = std::move(memory);
  c->id = std::move(id);
  c->options = options;
  if (options.cache_validation_callback) {
    if (const auto* e = options.cache_validation_callback.target<ExpiresAfter>()) c->expires_seconds = e->seconds;
  }
  if (!c->memory->root.empty()) {
    c->func_dir = c->memory->root / safe_name(c->id.module) / safe_name(c->id.name);
    if (!c->memory->degraded.load()) c->check_code();
  }
  return c;
}

void clear_cache(const std::shared_ptr<CacheImpl>& cache) noexcept {
  if (!cache || cache->memory->root.empty()) return;
  if (cache->verbose() > 0) std::printf("[Memory] Clearing function cache identified by %s\n", cache->id.name.c_str());
  std::error_code ec;
  for (auto& e : fs::directory_iterator(cache->func_dir, ec))
    if (e.is_directory(ec)) fs::remove_all(e.path(), ec);
}

bool cache_enabled(const std::shared_ptr<CacheImpl>& cache) noexcept { return cache && cache->enabled(); }

const std::vector<std::size_t>& ignored_arguments(const std::shared_ptr<CacheImpl>& cache) noexcept {
  static const std::vector<std::size_t> none;
  return cache ? cache->options.ignore : none;
}

CacheDescription describe_cache(const std::shared_ptr<CacheImpl>& c) {
  CacheDescription d;
  if (!c) return d;
  if (c->options.cache_validation_callback && !c->expires_seconds)
    throw SerializationError(
        "a cached function with a cache_validation_callback other than joblib::expires_after cannot travel to a "
        "worker process");
  d.location = c->memory->root.empty() ? std::string{} : c->memory->root.parent_path().string();
  d.memory_verbose = c->memory->options.verbose;
  d.mmap_mode = static_cast<int>(c->memory->options.mmap_mode);
  d.compress_method = c->memory->options.compress.method;
  d.compress_level = c->memory->options.compress.level;
  d.compress_default = c->memory->options.compress.default_level;
  d.bytes_limit = c->memory->options.bytes_limit;
  d.ignore = c->options.ignore;
  d.verbose = c->options.verbose;
  if (c->options.mmap_mode) d.cache_mmap_mode = static_cast<int>(*c->options.mmap_mode);
  d.version = c->options.version;
  d.expires_after_seconds = c->expires_seconds;
  d.name = c->given_name;
  return d;
}

std::shared_ptr<CacheImpl> rebuild_cache(const CacheDescription& d, const void* code, const std::string& type_name) {
  MemoryOptions mo;
  mo.verbose = d.memory_verbose;
  mo.mmap_mode = static_cast<MmapMode>(d.mmap_mode);
  mo.compress = Compress(d.compress_method, d.compress_level);
  mo.compress.default_level = d.compress_default;
  mo.bytes_limit = d.bytes_limit;
  CacheOptions co;
  co.ignore = d.ignore;
  co.verbose = d.verbose;
  if (d.cache_mmap_mode) co.mmap_mode = static_cast<MmapMode>(*d.cache_mmap_mode);
  co.version = d.version;
  if (d.expires_after_seconds) co.cache_validation_callback = ExpiresAfter{*d.expires_after_seconds};
  return make_cache(open_memory(d.location, mo), function_identity(code, type_name, d.name, d.version), co, d.name);
}

// ---- entries -------------------------------------------------------------------------

CacheEntry::CacheEntry(std::shared_ptr<CacheImpl> cache, std::string key) : cache_(std::move(cache)) {
  const std::string full = cache_->id.fingerprint + "/" + key;
  key_ = hash_bytes(std::as_bytes(std::span(full)));
  dir_ = cache_->func_dir / key_.substr(0, 2) / key_;
  output_ = dir_ / "output.joblib";
}

CacheEntry::~CacheEntry() { unlock(); }
MmapMode CacheEntry::mmap_mode() const noexcept { return cache_->mmap_mode(); }
const Compress& CacheEntry::compress() const noexcept { return cache_->memory->options.compress; }

CallMetadata CacheEntry::metadata() const {
  std::error_code ec;
  if (!fs::exists(dir_ / "metadata.json", ec)) return {};
  return parse_metadata(read_text(dir_ / "metadata.json"));
}

bool CacheEntry::valid() {
  if (::access(output_.c_str(), F_OK) != 0) return false;
  if (cache_->options.cache_validation_callback) {
    bool ok = false;
    try {
      ok = cache_->options.cache_validation_callback(metadata());
    } catch (...) {
      ok = false;
    }
    if (!ok) {
      clear();
      return false;
    }
  }
  return true;
}

bool CacheEntry::may_hit() { return cache_->options.cache_validation_callback ? valid() : true; }

bool CacheEntry::lock() {
  if (lock_fd_ >= 0) return true;
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) {
    cache_->memory->degrade(ec.message());
    return false;
  }
  const fs::path lock_file = dir_ / "lock";
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::open(lock_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      if (errno == ENOENT) {  // the entry was removed meanwhile (clear, eviction): make it again
        fs::create_directories(dir_, ec);
        continue;
      }
      cache_->memory->degrade(std::error_code(errno, std::generic_category()).message());
      return false;
    }
    while (::flock(fd, LOCK_EX) != 0 && errno == EINTR) {
    }
    // The lock file may have been removed while this caller waited (the
    // entry was cleared): then the lock guards nothing; take the new one.
    struct stat held {}, now {};
    if (::fstat(fd, &held) == 0 && ::stat(lock_file.c_str(), &now) == 0 && held.st_ino == now.st_ino &&
        held.st_dev == now.st_dev) {
      char host[256] = {};
      ::gethostname(host, sizeof host - 1);
      const std::string owner = fmt::format("pid {} host {} since {:.3f}\n", ::getpid(), host, now_seconds());
      if (::ftruncate(fd, 0) == 0) (void)!::pwrite(fd, owner.data(), owner.size(), 0);
      lock_fd_ = fd;
      return true;
    }
    ::close(fd);
    fs::create_directories(dir_, ec);
  }
  return false;
}

void CacheEntry::unlock() noexcept {
  if (lock_fd_ < 0) return;
  ::flock(lock_fd_, LOCK_UN);
  ::close(lock_fd_);
  lock_fd_ = -1;
}

void CacheEntry::touch() noexcept {
  // Access times kept by the cache itself: an explicit atime is written
  // even on noatime mounts, at most every 0.1 s per entry and process
  // (eviction needs no finer order, and a hot loop of hits stays off the disk).
  const double now = now_seconds();
  {
    std::lock_guard lock(cache_->touch_mutex);
    double& last = cache_->last_touch[key_];
    if (now - last < 0.1) return;
    last = now;
    if (cache_->last_touch.size() > 100000) cache_->last_touch.clear();
  }
  const struct timespec times[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
  ::utimensat(AT_FDCWD, output_.c_str(), times, 0);
}

bool CacheEntry::store(const CallMetadata& metadata, const std::function<void(const fs::path&)>& write) {
  MemoryImpl& mem = *cache_->memory;
  try {
    fs::create_directories(dir_);
    if (cache_->verbose() > 10) std::printf("Persisting in %s\n", dir_.c_str());
    write_atomically(dir_ / "metadata.json", metadata_json(metadata, cache_->id.name, cache_->id.fingerprint));
    write(output_);
  } catch (const SerializationError&) {
    throw;  // a result that cannot be encoded is the caller's error
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove(output_, ec);
    mem.degrade(e.what());
    return false;
  }
  touch();
  if (mem.bytes_limit) {
    try {
      reduce_cache(mem, ReduceOptions{.bytes_limit = mem.options.bytes_limit});
    } catch (const std::exception&) {
    }
  }
  return true;
}

void CacheEntry::discard_corrupted(const std::string& why) noexcept {
  warn_once("corrupted:" + output_.string(),
            fmt::format("the cached result {} cannot be read ({}); computing it again", output_.string(), why));
  std::error_code ec;
  fs::remove(output_, ec);
}

void CacheEntry::clear() noexcept {
  std::error_code ec;
  fs::remove(output_, ec);
  fs::remove(dir_ / "metadata.json", ec);
}

void CacheEntry::print_computing() const {
  if (cache_->verbose() <= 10) return;
  std::fprintf(stderr, "UserWarning: Computing func %s, argument hash %s in location %s\n", cache_->id.name.c_str(),
               key_.c_str(), cache_->func_dir.c_str());
  std::fflush(stderr);
}

int CacheEntry::verbose() const noexcept { return cache_->verbose(); }

void CacheEntry::print_querying(const std::string& arguments) const {
  std::printf("[Memory] Querying %s with signature %s(%s)\n", cache_->id.name.c_str(), cache_->id.name.c_str(),
              arguments.c_str());
  std::fflush(stdout);
}

void CacheEntry::print_loading(double load_seconds) const {
  const int v = cache_->verbose();
  if (v > 4) {
    std::printf("%s cache loaded - %s\n", cache_->id.name.c_str(), format_time(load_seconds).c_str());
    std::fflush(stdout);
  }
  if (v <= 1) return;
  const double t =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - cache_->memory->created).count();
  if (v < 10)
    std::printf("[Memory]%16s: Loading %s...\n", format_time(t).c_str(), cache_->id.name.c_str());
  else
    std::printf("[Memory]%16s: Loading %s from %s\n", format_time(t).c_str(), cache_->id.name.c_str(),
                dir_.c_str());
  std::fflush(stdout);
}

void CacheEntry::print_calling(const std::string& arguments) const {
  if (cache_->verbose() <= 0) return;
  std::printf("%s\n[Memory] Calling %s...\n%s(%s)\n", std::string(80, '_').c_str(),
              (cache_->id.module + "." + cache_->id.name).c_str(), cache_->id.name.c_str(), arguments.c_str());
  std::fflush(stdout);
}

void CacheEntry::print_done(double seconds) const {
  if (cache_->verbose() <= 0) return;
  const std::string msg = cache_->id.name + " - " + format_time(seconds);
  const std::size_t pad = msg.size() < 80 ? 80 - msg.size() : 0;
  std::printf("%s%s\n", std::string(pad, '_').c_str(), msg.c_str());
  std::fflush(stdout);
}

}  // namespace detail

// ---- Memory's public face ------------------------------------------------------------------

std::function<bool(const CallMetadata&)> expires_after(std::chrono::seconds age) {
  if (age.count() < 0) throw std::invalid_argument("expires_after: the age must not be negative");
  return detail::ExpiresAfter{static_cast<double>(age.count())};
}

namespace detail {
std::shared_ptr<MemoryImpl> open_memory(const fs::path& location, const MemoryOptions& options) {
  auto impl = std::make_shared<MemoryImpl>();
  validate_compress(options.compress);
  impl->options = options;
  if (options.bytes_limit) impl->bytes_limit = parse_bytes(*options.bytes_limit, "bytes_limit");
  if (location.empty()) return impl;
  std::error_code ec;
  if (fs::exists(location, ec) && !fs::is_directory(location, ec))
    throw std::invalid_argument(fmt::format("Memory location '{}' is not a folder", location.string()));
  const bool compressed = options.compress.level > 0 || options.compress.default_level;
  if (compressed && options.mmap_mode != MmapMode::none) warn_once("compressed-mmap", "Compressed results cannot be memmapped");
  impl->root = location / "joblib";
  fs::create_directories(impl->root, ec);
  if (ec) {
    impl->degrade(ec.message());
    return impl;
  }
  const fs::path gitignore = location / ".gitignore";
  if (!fs::exists(gitignore, ec)) {
    try {
      write_atomically(gitignore, "# Created by joblib automatically.\n*\n");
    } catch (const std::exception& e) {
      warn_once("gitignore:" + gitignore.string(),
                fmt::format("Unable to write {}. Exception: {}.", gitignore.string(), e.what()));
    }
  }
  return impl;
}
}  // namespace detail

Memory::Memory() : impl_(std::make_shared<detail::MemoryImpl>()) {}

Memory::Memory(fs::path location, MemoryOptions options) : impl_(detail::open_memory(location, options)) {}

fs::path Memory::location() const { return impl_->root; }

void Memory::clear() const {
  if (impl_->root.empty()) return;
  if (impl_->options.verbose > 0) std::printf("[Memory] Flushing completely the cache\n");
  std::error_code ec;
  for (auto& e : fs::directory_iterator(impl_->root, ec))
    if (e.is_directory(ec)) fs::remove_all(e.path(), ec);
  std::lock_guard lock(detail::code_mutex());
  detail::checked_code().clear();
}

void Memory::reduce_size(const ReduceOptions& limits) const { detail::reduce_cache(*impl_, limits); }

namespace detail {
void reduce_cache(MemoryImpl& mem, const ReduceOptions& limits) {
  if (limits.age_limit && limits.age_limit->count() < 0)
    throw std::invalid_argument("age_limit has to be a positive timedelta");
  std::optional<std::size_t> bytes_limit;
  if (limits.bytes_limit) bytes_limit = detail::parse_bytes(*limits.bytes_limit, "bytes_limit");
  if (mem.root.empty() || (!bytes_limit && !limits.items_limit && !limits.age_limit)) return;
  struct Item {
    fs::path dir;
    std::uintmax_t size = 0;
    double last_access = 0;
  };
  std::vector<Item> items;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(mem.root, fs::directory_options::skip_permission_denied, ec);
       it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const fs::path& p = it->path();
    if (!it->is_directory(ec) || !is_hex(p.filename().string(), 32) ||
        !is_hex(p.parent_path().filename().string(), 2))
      continue;
    it.disable_recursion_pending();
    Item item{p};
    for (auto& f : fs::directory_iterator(p, ec))
      if (f.is_regular_file(ec)) item.size += f.file_size(ec);
    struct stat st {};
    if (::stat((p / "output.joblib").c_str(), &st) == 0 || ::stat(p.c_str(), &st) == 0)
      item.last_access = static_cast<double>(st.st_atim.tv_sec) + st.st_atim.tv_nsec * 1e-9;
    items.push_back(std::move(item));
  }
  std::uintmax_t total = 0;
  for (const auto& i : items) total += i.size;
  const double now = now_seconds();
  const double oldest_allowed = limits.age_limit ? now - static_cast<double>(limits.age_limit->count()) : 0;
  const bool over_bytes = bytes_limit && total > *bytes_limit;
  const bool over_items = limits.items_limit && items.size() > *limits.items_limit;
  const bool too_old = limits.age_limit && std::any_of(items.begin(), items.end(), [&](const Item& i) {
                         return i.last_access < oldest_allowed;
                       });
  if (!over_bytes && !over_items && !too_old) return;
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.last_access < b.last_access; });
  const std::uintmax_t bytes_to_delete = over_bytes ? total - *bytes_limit : 0;
  const std::size_t items_to_delete = over_items ? items.size() - *limits.items_limit : 0;
  std::uintmax_t deleted_bytes = 0;
  std::size_t deleted = 0;
  for (const auto& i : items) {
    if (deleted_bytes >= bytes_to_delete && deleted >= items_to_delete &&
        (!limits.age_limit || i.last_access >= oldest_allowed))
      break;
    fs::remove_all(i.dir, ec);
    deleted_bytes += i.size;
    ++deleted;
  }
}
}  // namespace detail

}  // namespace joblib
