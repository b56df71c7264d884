// The worker runtime (DESIGN.md, decisions 5 to 7) and the wire format it
// shares with core/process_pool.cpp.
#include "worker.hpp"

#include "config.hpp"
#include "fork_safety.hpp"
#include "throw_hook.hpp"

#include <joblib/detail/process.hpp>
#include <joblib/errors.hpp>
#include <joblib/worker.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <stdexcept>
#include <typeinfo>
#include <unordered_map>

namespace joblib::detail {
namespace fs = std::filesystem;

const std::type_info* abi_current_exception_type() noexcept;

// ---- frames -------------------------------------------------------------------

namespace {
constexpr std::uint32_t kMagic = 0x574c424a;  // "JBLW"
struct FrameHeader {
  std::uint32_t magic;
  std::uint32_t kind;
  std::uint64_t size;
};

bool send_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    c += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool recv_all(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = ::recv(fd, c, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (r == 0) return false;
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}
}  // namespace

bool write_frame(int fd, FrameKind kind, std::span<const std::byte> a, std::span<const std::byte> b) {
  FrameHeader h{kMagic, static_cast<std::uint32_t>(kind), a.size() + b.size()};
  return send_all(fd, &h, sizeof h) && send_all(fd, a.data(), a.size()) && send_all(fd, b.data(), b.size());
}

std::optional<WireFrame> read_frame(int fd) {
  FrameHeader h{};
  if (!recv_all(fd, &h, sizeof h) || h.magic != kMagic) return std::nullopt;
  WireFrame f;
  f.kind = static_cast<FrameKind>(h.kind);
  f.payload.resize(static_cast<std::size_t>(h.size));
  if (h.size && !recv_all(fd, f.payload.data(), f.payload.size())) return std::nullopt;
  return f;
}

// ---- mapped regions -------------------------------------------------------------

namespace {
std::mutex& make_map_mutex() {
  auto* m = new std::mutex();
  hold_across_fork(*m);
  return *m;
}
std::mutex& g_map_mutex = make_map_mutex();
std::map<const std::byte*, MappedRegion>& regions() {
  static auto* r = new std::map<const std::byte*, MappedRegion>();
  return *r;
}
}  // namespace

void register_mapping(const MappedRegion& region) {
  std::lock_guard lock(g_map_mutex);
  regions()[region.begin] = region;
}

void unregister_mapping(const void* begin) noexcept {
  std::lock_guard lock(g_map_mutex);
  regions().erase(static_cast<const std::byte*>(begin));
}

std::optional<MappedRegion> find_mapping(const void* p, std::size_t size) {
  const auto* b = static_cast<const std::byte*>(p);
  std::lock_guard lock(g_map_mutex);
  auto& r = regions();
  auto it = r.upper_bound(b);
  if (it == r.begin()) return std::nullopt;
  --it;
  const MappedRegion& m = it->second;
  if (b < m.begin || b + size > m.begin + m.size) return std::nullopt;
  MappedRegion out = m;
  out.file_offset = m.file_offset + static_cast<std::uint64_t>(b - m.begin);
  out.begin = b;
  out.size = size;
  return out;
}

// ---- temp folders and memmapping -----------------------------------------------

namespace {
constexpr const char* kFolderPrefix = "joblib_memmapping_folder_";

std::mutex g_folders_mutex;
std::set<std::string>& live_folders() {
  static auto* s = new std::set<std::string>();
  return *s;
}

void remove_live_folders_at_exit() { remove_memmap_folders(); }
}  // namespace

void remove_memmap_folders() noexcept {
  std::lock_guard lock(g_folders_mutex);
  for (const std::string& f : live_folders()) {
    std::error_code ec;
    fs::remove_all(f, ec);
  }
  live_folders().clear();
}

namespace {
// Removes folders whose creating process is gone (a crash, a kill -9).
void remove_stale_folders(const fs::path& root) {
  std::error_code ec;
  for (auto it = fs::directory_iterator(root, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(kFolderPrefix, 0) != 0) continue;
    const std::string rest = name.substr(std::strlen(kFolderPrefix));
    const long pid = std::strtol(rest.c_str(), nullptr, 10);
    if (pid <= 0 || pid == getpid()) continue;
    if (kill(static_cast<pid_t>(pid), 0) == -1 && errno == ESRCH) {
      std::error_code rm;
      fs::remove_all(it->path(), rm);
    }
  }
}

std::string random_hex(std::size_t n) {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ (std::uint64_t(getpid()) << 32));
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += hex[rng() & 15];
  return s;
}
}  // namespace

fs::path resolve_temp_root(const std::string& temp_folder) {
  fs::path root;
  if (!temp_folder.empty()) {
    root = temp_folder;
  } else if (const char* env = std::getenv("JOBLIB_TEMP_FOLDER"); env && *env) {
    root = env;
  } else {
    struct statvfs st{};
    if (statvfs("/dev/shm", &st) == 0 && double(st.f_bavail) * double(st.f_bsize) > 2e9 &&
        access("/dev/shm", W_OK) == 0)
      root = "/dev/shm";
    else
      root = fs::temp_directory_path();
  }
  std::error_code ec;
  root = fs::absolute(root, ec);
  static std::mutex m;
  static std::set<std::string> cleaned;
  std::lock_guard lock(m);
  if (cleaned.insert(root.string()).second) remove_stale_folders(root);
  return root;
}

MemmapContext::~MemmapContext() { cleanup(); }

std::optional<fs::path> MemmapContext::folder() const {
  std::lock_guard lock(m_);
  return folder_;
}

std::optional<BufferDesc> MemmapContext::describe(std::span<const std::byte> bytes) {
  if (!max_nbytes_ || bytes.size() <= *max_nbytes_) return std::nullopt;
  const MmapMode mode = mode_ == MmapMode::w_plus ? MmapMode::r_plus : mode_;
  if (auto region = find_mapping(bytes.data(), bytes.size())) {
    // Already a memory map: send a reference to its file, in its own mode.
    BufferDesc d;
    d.where = 1;
    d.path = region->path;
    d.offset = region->file_offset;
    d.size = bytes.size();
    d.mode = static_cast<std::uint8_t>(region->writable ? MmapMode::r_plus : MmapMode::r);
    return d;
  }
  // Written once per call and content: the key is a hash of the bytes, not
  // their address, which a later argument may reuse once this one is freed.
  const auto key = std::make_pair(static_cast<std::uint64_t>(XXH3_64bits(bytes.data(), bytes.size())), bytes.size());
  std::lock_guard lock(m_);
  std::string path;
  if (auto it = written_.find(key); it != written_.end()) {
    path = it->second;  // written once per call
  } else {
    if (!folder_) {
      const fs::path root = resolve_temp_root(temp_folder_);
      for (int attempt = 0;; ++attempt) {
        fs::path candidate = root / fmt::format("{}{}_{}", kFolderPrefix, getpid(), random_hex(16));
        if (::mkdir(candidate.c_str(), 0700) == 0) {
          folder_ = candidate;
          break;
        }
        if (errno != EEXIST || attempt > 16)
          throw SerializationError(fmt::format("cannot create the memmapping folder in '{}': {}", root.string(),
                                               std::strerror(errno)));
      }
      static std::once_flag at_exit;
      std::call_once(at_exit, [] { std::atexit(remove_live_folders_at_exit); });
      std::lock_guard flock(g_folders_mutex);
      live_folders().insert(folder_->string());
    }
    path = (*folder_ / fmt::format("{}-{}.bin", getpid(), counter_++)).string();
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
      throw SerializationError(fmt::format("cannot write memmapped argument '{}': {}", path, std::strerror(errno)));
    const char* p = reinterpret_cast<const char*>(bytes.data());
    std::size_t left = bytes.size();
    while (left > 0) {
      ssize_t w = ::write(fd, p, left);
      if (w < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        ::close(fd);
        throw SerializationError(fmt::format("cannot write memmapped argument '{}': {}", path, std::strerror(err)));
      }
      p += w;
      left -= static_cast<std::size_t>(w);
    }
    ::close(fd);
    written_.emplace(key, path);
  }
  BufferDesc d;
  d.where = 1;
  d.path = path;
  d.offset = 0;
  d.size = bytes.size();
  d.mode = static_cast<std::uint8_t>(mode);
  return d;
}

void MemmapContext::cleanup() noexcept {
  std::lock_guard lock(m_);
  if (!folder_) return;
  std::error_code ec;
  fs::remove_all(*folder_, ec);
  {
    std::lock_guard flock(g_folders_mutex);
    live_folders().erase(folder_->string());
  }
  folder_.reset();
  written_.clear();
}

std::optional<std::uint64_t> RequestSink::put(std::span<const std::byte> bytes, BufferKind) {
  if (!memmap_) return std::nullopt;
  std::optional<BufferDesc> d = memmap_->describe(bytes);
  if (!d) return std::nullopt;
  buffers_.push_back(std::move(*d));
  return buffers_.size() - 1;
}

std::vector<std::byte> make_init_request(const CodeRef& entry, std::span<const std::byte> structure) {
  return make_request(entry, {}, structure);
}

std::vector<std::byte> make_request(const CodeRef& entry, std::vector<BufferDesc> buffers,
                                    std::span<const std::byte> structure) {
  MemoryOutput header;
  encode(RequestHeader{entry, std::move(buffers)}, header);
  std::vector<std::byte> out(sizeof(std::uint64_t) + header.size() + structure.size());
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, sizeof n);
  std::memcpy(out.data() + sizeof n, header.bytes().data(), header.size());
  if (!structure.empty()) std::memcpy(out.data() + sizeof n + header.size(), structure.data(), structure.size());
  return out;
}

// ---- errors across the boundary -----------------------------------------------

namespace {

struct Envelope {
  std::uint64_t index = 0;
  std::string mangled;
  std::string type_name;
  std::string what;
  std::string traceback;
  template <class A>
  void serialize(A& ar) {
    ar(index, mangled, type_name, what, traceback);
  }
};

std::mutex g_rethrow_mutex;
std::unordered_map<std::string, std::function<void(const std::string&)>>& user_rethrowers() {
  static auto* m = new std::unordered_map<std::string, std::function<void(const std::string&)>>();
  return *m;
}

template <class E>
void add_known(std::unordered_map<std::string, std::function<void(const std::string&)>>& m) {
  m[typeid(E).name()] = [](const std::string& what) { throw E(what); };
}

const std::unordered_map<std::string, std::function<void(const std::string&)>>& known_rethrowers() {
  static const auto* m = [] {
    auto* k = new std::unordered_map<std::string, std::function<void(const std::string&)>>();
    add_known<std::logic_error>(*k);
    add_known<std::invalid_argument>(*k);
    add_known<std::domain_error>(*k);
    add_known<std::length_error>(*k);
    add_known<std::out_of_range>(*k);
    add_known<std::runtime_error>(*k);
    add_known<std::range_error>(*k);
    add_known<std::overflow_error>(*k);
    add_known<std::underflow_error>(*k);
    add_known<joblib::Error>(*k);
    add_known<joblib::TimeoutError>(*k);
    add_known<joblib::TerminatedWorkerError>(*k);
    add_known<joblib::SerializationError>(*k);
    add_known<joblib::BackendError>(*k);
    add_known<joblib::StoreError>(*k);
    (*k)[typeid(std::bad_alloc).name()] = [](const std::string&) { throw std::bad_alloc(); };
    return k;
  }();
  return *m;
}

}  // namespace

void WorkerCall::fail(std::size_t index, std::exception_ptr error) noexcept {
  failed_ = true;
  failed_index_ = index;
  error_ = error;
}

[[noreturn]] void rethrow_remote(std::span<const std::byte> envelope, std::size_t first_index,
                                 const std::string& function) {
  Envelope env = decode<Envelope>(envelope);
  const std::size_t index = first_index + static_cast<std::size_t>(env.index);
  {
    std::function<void(const std::string&)> user;
    {
      std::lock_guard lock(g_rethrow_mutex);
      auto it = user_rethrowers().find(env.mangled);
      if (it != user_rethrowers().end()) user = it->second;
    }
    if (user) user(env.what);
  }
  auto& known = known_rethrowers();
  if (auto it = known.find(env.mangled); it != known.end()) it->second(env.what);
  throw TaskError(env.type_name, env.what, env.traceback, index, function);
}

void register_exception_rethrower(const std::type_info& type, std::function<void(const std::string&)> rethrow) {
  std::lock_guard lock(g_rethrow_mutex);
  user_rethrowers()[type.name()] = std::move(rethrow);
}

namespace {
std::vector<std::byte> envelope_of(std::size_t index, std::exception_ptr e, std::string traceback) {
  Envelope env;
  env.index = index;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    env.mangled = typeid(x).name();
    env.what = x.what();
  } catch (...) {
    const std::type_info* t = abi_current_exception_type();
    env.mangled = t ? t->name() : "unknown exception";
  }
  env.type_name = demangle(env.mangled.c_str());
  env.traceback = std::move(traceback);
  MemoryOutput out;
  encode(env, out);
  return {out.bytes().begin(), out.bytes().end()};
}
}  // namespace

// ---- the worker loop ------------------------------------------------------------

namespace {

std::atomic<bool> g_guard_ran{false};

std::vector<std::string>& argv_store() {
  static auto* v = new std::vector<std::string>();
  return *v;
}

// Buffers of a request, as the entry point reads them.
class RequestSource final : public BufferSource {
 public:
  explicit RequestSource(std::vector<BufferDesc>& descs) : descs_(descs) {}
  std::size_t buffer_size(std::uint64_t i) const override { return static_cast<std::size_t>(at(i).size); }
  SharedBuffer get(std::uint64_t i) override {
    BufferDesc& d = const_cast<BufferDesc&>(at(i));
    if (d.where == 0) {
      SharedBuffer b = allocate_buffer(d.bytes.size(), false);
      if (!d.bytes.empty()) std::memcpy(b.data.get(), d.bytes.data(), d.bytes.size());
      return b;
    }
    return map_file(d);
  }

 private:
  const BufferDesc& at(std::uint64_t i) const {
    if (i >= descs_.size()) throw_decode_error("no buffer " + std::to_string(i) + " in the request");
    return descs_[static_cast<std::size_t>(i)];
  }
  static SharedBuffer map_file(const BufferDesc& d) {
    const auto mode = static_cast<MmapMode>(d.mode);
    const bool writable = mode == MmapMode::r_plus || mode == MmapMode::w_plus || mode == MmapMode::c;
    const bool shared = mode != MmapMode::c;
    int fd = ::open(d.path.c_str(), (mode == MmapMode::r_plus || mode == MmapMode::w_plus) ? O_RDWR : O_RDONLY);
    if (fd < 0) throw SerializationError(fmt::format("cannot open memmapped argument '{}': {}", d.path, strerror(errno)));
    const long page = sysconf(_SC_PAGESIZE);
    const std::uint64_t aligned = d.offset - d.offset % static_cast<std::uint64_t>(page);
    const std::size_t delta = static_cast<std::size_t>(d.offset - aligned);
    const std::size_t length = static_cast<std::size_t>(d.size) + delta;
    void* base = ::mmap(nullptr, length, PROT_READ | (writable ? PROT_WRITE : 0), shared ? MAP_SHARED : MAP_PRIVATE,
                        fd, static_cast<off_t>(aligned));
    ::close(fd);
    if (base == MAP_FAILED)
      throw SerializationError(fmt::format("cannot map memmapped argument '{}': {}", d.path, strerror(errno)));
    std::shared_ptr<std::byte> mapping(static_cast<std::byte*>(base), [length](std::byte* p) {
      unregister_mapping(p);
      ::munmap(p, length);
    });
    SharedBuffer b;
    b.data = std::shared_ptr<std::byte>(mapping, static_cast<std::byte*>(base) + delta);
    b.size = static_cast<std::size_t>(d.size);
    b.writable = writable;
    b.mapped = true;
    b.file = std::make_shared<const std::string>(d.path);
    register_mapping({d.path, aligned, static_cast<const std::byte*>(base), length, writable && shared});
    return b;
  }
  std::vector<BufferDesc>& descs_;
};

void reply_error(int fd, std::size_t index, std::exception_ptr e, std::string trace) {
  std::vector<std::byte> env = envelope_of(index, e, std::move(trace));
  const std::byte status{static_cast<std::uint8_t>(ReplyStatus::error)};
  write_frame(fd, FrameKind::reply, std::span<const std::byte>(&status, 1), env);
}

void handle_request(int fd, const WireFrame& frame, MemoryOutput& out) {
  std::unordered_map<std::string, WorkerEntry>* cache = nullptr;
  static std::unordered_map<std::string, WorkerEntry> entries;
  cache = &entries;
  try {
    const auto& p = frame.payload;
    std::uint64_t hn = 0;
    if (p.size() < sizeof hn) throw SerializationError("a request frame is too short");
    std::memcpy(&hn, p.data(), sizeof hn);
    if (hn > p.size() - sizeof hn) throw SerializationError("a request header is longer than its frame");
    std::span<const std::byte> all(p.data(), p.size());
    RequestHeader header = decode<RequestHeader>(all.subspan(sizeof hn, static_cast<std::size_t>(hn)));
    std::span<const std::byte> structure = all.subspan(sizeof hn + static_cast<std::size_t>(hn));
    const std::string key = header.entry.module + "#" + std::to_string(header.entry.offset);
    WorkerEntry entry = nullptr;
    if (auto it = cache->find(key); it != cache->end()) {
      entry = it->second;
    } else {
      entry = reinterpret_cast<WorkerEntry>(resolve_code(header.entry));
      cache->emplace(key, entry);
    }
    RequestSource source(header.buffers);
    (void)take_throw_trace();  // forget throws of earlier requests
    out.clear();
    WorkerCall call(structure, &source, out, nullptr);
    {
      // Tasks in a worker see joblib's nested backend: threads, one level down.
      TaskScope scope(NestedBackend{"threading", std::nullopt}, 1, nullptr);
      entry(call);
    }
    if (call.failed()) {
      std::string trace = take_throw_trace();
      reply_error(fd, call.failed_index(), call.error(), std::move(trace));
    } else {
      const std::byte status{static_cast<std::uint8_t>(ReplyStatus::ok)};
      write_frame(fd, FrameKind::reply, std::span<const std::byte>(&status, 1), out.bytes());
    }
  } catch (...) {
    reply_error(fd, 0, std::current_exception(), take_throw_trace());
  }
  std::fflush(stdout);
  std::fflush(stderr);
}

}  // namespace

void run_worker(int fd, double idle_timeout_seconds) {
  capture_throw_traces(true);
  ::signal(SIGINT, SIG_IGN);  // Ctrl-C is the parent's to handle: it stops us
  MemoryOutput out;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const int ms = idle_timeout_seconds > 0 ? static_cast<int>(idle_timeout_seconds * 1000) : -1;
    const int r = ::poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      // Idle for too long: say so (the parent resends anything it sent
      // meanwhile) and leave.
      write_frame(fd, FrameKind::idle_exit, {});
      std::fflush(nullptr);
      ::_exit(0);
    }
    std::optional<WireFrame> frame = read_frame(fd);
    if (!frame || frame->kind == FrameKind::exit) {
      std::fflush(nullptr);
      ::_exit(0);
    }
    if (frame->kind == FrameKind::run || frame->kind == FrameKind::init) handle_request(fd, *frame, out);
    if (frame->kind == FrameKind::ping) write_frame(fd, FrameKind::reply, {});
  }
}

bool main_guard_ran() noexcept { return g_guard_ran.load(); }
const std::vector<std::string>& saved_argv() { return argv_store(); }

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* abbrev = sigabbrev_np(sig);
    return fmt::format("SIG{}(-{})", abbrev ? abbrev : std::to_string(sig).c_str(), sig);
  }
  if (WIFEXITED(status)) return fmt::format("EXIT({})", WEXITSTATUS(status));
  return "UNKNOWN";
}

}  // namespace joblib::detail

#include <cxxabi.h>

namespace joblib::detail {
const std::type_info* abi_current_exception_type() noexcept { return abi::__cxa_current_exception_type(); }
}  // namespace joblib::detail

namespace joblib {

void worker_main_guard(int argc, char** argv) {
  using namespace detail;
  if (!g_guard_ran.exchange(true)) {
    auto& store = argv_store();
    for (int i = 0; i < argc && argv && argv[i]; ++i) store.emplace_back(argv[i]);
  }
  const char* fdv = std::getenv("JOBLIB_WORKER_FD");
  if (!fdv || !*fdv) return;
  const int fd = std::atoi(fdv);
  const char* idle = std::getenv("JOBLIB_WORKER_IDLE");
  const double idle_s = idle ? std::atof(idle) : 0.0;
  const char* parent = std::getenv("JOBLIB_WORKER_PARENT");
  const pid_t parent_pid = parent ? static_cast<pid_t>(std::atol(parent)) : 0;
  // Grandchildren started by tasks are ordinary processes again.
  ::unsetenv("JOBLIB_WORKER_FD");
  ::unsetenv("JOBLIB_WORKER_IDLE");
  ::unsetenv("JOBLIB_WORKER_PARENT");
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // a worker whose parent dies ends too
  if (parent_pid && ::getppid() != parent_pid) ::_exit(0);
  run_worker(fd, idle_s);
}

}  // namespace joblib
