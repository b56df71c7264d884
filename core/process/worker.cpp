// The worker runtime (docs/architecture.md, decisions 5 to 7) and the wire format it
// shares with core/process/worker_pool.cpp; the worker SDK's request and
// reply functions (joblib/worker_sdk.hpp).
#include "worker.hpp"

#include "config.hpp"
#include "registry.hpp"
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
#include <stdio_ext.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cmath>
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

}  // namespace

// ---- frames to and from a watched worker --------------------------------------

int open_pidfd(pid_t pid) noexcept {
#ifdef SYS_pidfd_open
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) {
    ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
    return static_cast<int>(fd);
  }
#endif
  (void)pid;
  return -1;
}

bool process_exited(pid_t pid) noexcept {
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid != 0;
}

namespace {
// Waits until `fd` is ready for `events`; false once the worker has exited
// and the socket is not ready (a grandchild that inherited the worker's end
// keeps it open: the worker's death must not wait for the grandchild's).
bool wait_ready(const WatchedChannel& ch, short events) {
  for (;;) {
    pollfd p[2] = {{ch.fd, events, 0}, {ch.pidfd, POLLIN, 0}};
    const int n = ::poll(p, ch.pidfd >= 0 ? 2 : 1, ch.pidfd >= 0 ? -1 : 100);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (p[0].revents & (events | POLLHUP | POLLERR)) return true;
    if (ch.pidfd >= 0 ? (p[1].revents != 0) : process_exited(ch.pid)) {
      // Exited: whatever it wrote before is readable now, or never.
      pollfd last{ch.fd, events, 0};
      return ::poll(&last, 1, 0) > 0 && (last.revents & events);
    }
  }
}

// Sends or receives exactly n bytes. An unwatched channel (pid 0: the
// worker's own end) blocks; a watched one gives up once the worker exits.
bool transfer(const WatchedChannel& ch, char* c, std::size_t n, bool sending) {
  const bool watched = ch.pid > 0;
  const int flags = (sending ? MSG_NOSIGNAL : 0) | (watched ? MSG_DONTWAIT : 0);
  while (n > 0) {
    if (watched && !wait_ready(ch, sending ? POLLOUT : POLLIN)) return false;
    const ssize_t k = sending ? ::send(ch.fd, c, n, flags) : ::recv(ch.fd, c, n, flags);
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return false;
    }
    if (k == 0) return false;
    c += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}
bool send_watched(const WatchedChannel& ch, const void* p, std::size_t n) {
  return transfer(ch, const_cast<char*>(static_cast<const char*>(p)), n, true);
}
bool recv_watched(const WatchedChannel& ch, void* p, std::size_t n) {
  return transfer(ch, static_cast<char*>(p), n, false);
}
}  // namespace

bool write_frame(const WatchedChannel& ch, FrameKind kind, std::span<const std::byte> a,
                 std::span<const std::byte> b) {
  FrameHeader h{kMagic, static_cast<std::uint32_t>(kind), a.size() + b.size()};
  return send_watched(ch, &h, sizeof h) && send_watched(ch, a.data(), a.size()) &&
         send_watched(ch, b.data(), b.size());
}


bool write_frame_raw(const WatchedChannel& ch, std::string_view bytes) {
  return send_watched(ch, bytes.data(), bytes.size());
}

bool write_request_frame(const WatchedChannel& ch, FrameKind kind, const worker_sdk::Request& r) {
  const std::vector<std::span<const std::byte>> pieces = r.pieces();
  std::uint64_t size = 0;
  for (std::span<const std::byte> p : pieces) size += p.size();
  FrameHeader h{kMagic, static_cast<std::uint32_t>(kind), size};
  if (!send_watched(ch, &h, sizeof h)) return false;
  for (std::span<const std::byte> p : pieces)
    if (!send_watched(ch, p.data(), p.size())) return false;
  return true;
}

FrameResult read_frame(const WatchedChannel& ch) {
  FrameResult out;
  FrameHeader h{};
  if (!recv_watched(ch, &h, sizeof h)) return out;
  if (h.magic != kMagic) {
    out.garbled = true;
    return out;
  }
  WireFrame f;
  f.kind = static_cast<FrameKind>(h.kind);
  try {
    f.payload.resize(static_cast<std::size_t>(h.size));
  } catch (const std::exception&) {
    out.garbled = true;
    return out;
  }
  if (h.size && !recv_watched(ch, f.payload.data(), f.payload.size())) return out;
  out.frame = std::move(f);
  return out;
}

}  // namespace joblib::detail

struct joblib::worker_sdk::SentBuffers::Impl {
  std::set<std::string> keys;  // content keys the worker holds
};
struct joblib::worker_sdk::KeptBuffers::Impl {
  std::map<std::string, detail::BufferDesc> kept;  // content key -> its file
  std::unique_ptr<detail::MemmapContext> folder;   // made with the first file

  detail::BufferDesc keep(const std::string& key, std::span<const std::byte> bytes, std::uint8_t mode) {
    if (auto it = kept.find(key); it != kept.end()) return it->second;
    if (mode > static_cast<std::uint8_t>(MmapMode::c)) throw SerializationError("a kept buffer names an unknown mmap_mode");
    detail::BufferDesc d;  // an empty buffer: inline
    if (!bytes.empty()) {
      if (!folder) folder = std::make_unique<detail::MemmapContext>("", std::nullopt, MmapMode::r);
      d = folder->write(bytes, static_cast<MmapMode>(mode));
    }
    return kept.emplace(key, std::move(d)).first->second;
  }
  const detail::BufferDesc& find(const std::string& key) const {
    auto it = kept.find(key);
    if (it == kept.end())
      throw SerializationError(fmt::format(
          "a request names a buffer (content {}) that this worker was not sent during the call: the sender's "
          "SentBuffers and this worker's KeptBuffers disagree (clear both when a call starts)",
          key));
    return it->second;
  }
};

namespace joblib::detail {

namespace {
// The content key of a buffer sent once per worker: XXH3-128 and size.
std::string content_key(std::span<const std::byte> bytes) {
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return fmt::format("{:016x}{:016x}-{}", h.high64, h.low64, bytes.size());
}
}  // namespace

std::optional<std::uint64_t> RequestSink::once_per_worker(std::span<const std::byte> bytes) {
  const std::optional<std::size_t> max = memmap_ ? memmap_->max_nbytes() : std::nullopt;
  if (!max || bytes.size() <= *max) return in_frame(bytes);
  std::string key = content_key(bytes);
  if (!sent_->keys.insert(key).second) {  // the worker has it (or gets it earlier in this request)
    BufferDesc d;
    d.where = 4;
    d.path = std::move(key);
    d.size = bytes.size();
    d.mode = static_cast<std::uint8_t>(memmap_->mode());
    buffers_.push_back(std::move(d));
    return buffers_.size() - 1;
  }
  return in_frame(bytes, 3, std::move(key));
}

std::optional<std::uint64_t> RequestSink::put(std::span<const std::byte> bytes, BufferKind) {
  if (sent_) return once_per_worker(bytes);
  std::optional<BufferDesc> d = memmap_ ? memmap_->describe(bytes) : std::nullopt;
  if (!d) return in_frame(bytes);
  buffers_.push_back(std::move(*d));
  return buffers_.size() - 1;
}

std::optional<std::uint64_t> RequestSink::put_array(std::span<const std::byte> bytes,
                                                    const std::shared_ptr<const void>& owner) {
  if (sent_) return once_per_worker(bytes);
  std::optional<BufferDesc> d = memmap_ ? memmap_->describe(bytes, owner) : std::nullopt;
  if (!d) return in_frame(bytes);
  buffers_.push_back(std::move(*d));
  return buffers_.size() - 1;
}

std::optional<std::uint64_t> RequestSink::in_frame(std::span<const std::byte> bytes, std::uint8_t where,
                                                   std::string key) {
  if (where == 2 && bytes.size() < in_frame_min_bytes) return std::nullopt;  // inline
  // Offered again (one Array passed to several tasks of the batch), the
  // bytes travel again: each task decodes a window of its own, as it would
  // a copy, and a task's writes never reach another's.
  BufferDesc d;
  d.where = where;
  d.path = std::move(key);
  if (memmap_ && where == 3) d.mode = static_cast<std::uint8_t>(memmap_->mode());
  d.offset = in_frame_area(in_frame_end_);
  d.size = bytes.size();
  in_frame_end_ = d.offset + d.size;
  in_frame_.push_back(bytes);
  buffers_.push_back(std::move(d));
  return buffers_.size() - 1;
}

std::vector<std::byte> make_init_request(const CodeRef& entry, std::span<const std::byte> structure) {
  return make_request(entry, {}, structure);
}

namespace {
// A MemoryOutput kept by its thread from one request to the next (a request
// is encoded for every batch sent), cleared for each use; memory over 1 MiB
// is freed after it.
class Reused {
 public:
  explicit Reused(MemoryOutput& out) : out_(out) { out_.clear(); }
  ~Reused() {
    if (out_.capacity() > (std::size_t{1} << 20)) out_.reset();
  }
  Reused(const Reused&) = delete;
  Reused& operator=(const Reused&) = delete;

 private:
  MemoryOutput& out_;
};
}  // namespace

std::vector<std::byte> make_request(const CodeRef& entry, std::vector<BufferDesc> buffers,
                                    std::span<const std::byte> structure, std::size_t headroom) {
  // This thread's, reused: they keep their memory from one request to the next.
  static thread_local MemoryOutput header;
  const Reused using_header(header);
  static thread_local RequestHeader fields;
  // The header of a request without buffers, as this thread last encoded it
  // for `entry` (a process backend sends the same entry point for every
  // batch of a call): only its last field, structure_size, differs.
  struct Plain {
    CodeRef entry;
    MemoryOutput bytes;  // ends with structure_size, as it is encoded
    bool valid = false;
  };
  static thread_local Plain plain;
  std::span<const std::byte> head;
  const bool is_plain = buffers.empty();
  if (is_plain && plain.valid && plain.entry == entry) {
    head = plain.bytes.bytes();
  } else {
    fields.entry = entry;
    fields.buffers = std::move(buffers);
    fields.structure_size = structure.size();
    encode(fields, header);
    fields.buffers.clear();
    head = header.bytes();
    if (is_plain) {
      // Kept only if structure_size is indeed its last 8 bytes.
      const std::uint64_t size = structure.size();
      plain.valid = head.size() >= sizeof size && std::memcmp(head.data() + head.size() - sizeof size, &size, sizeof size) == 0;
      if (plain.valid) {
        plain.bytes.clear();
        plain.bytes.write(head.data(), head.size());
        plain.entry = entry;
      }
    }
  }
  std::vector<std::byte> out(headroom + sizeof(std::uint64_t) + head.size() + structure.size());
  std::byte* p = out.data() + headroom;
  const std::uint64_t n = head.size();
  std::memcpy(p, &n, sizeof n);
  std::memcpy(p + sizeof n, head.data(), head.size());
  if (is_plain) {
    const std::uint64_t size = structure.size();
    std::memcpy(p + sizeof n + head.size() - sizeof size, &size, sizeof size);
  }
  if (!structure.empty()) std::memcpy(p + sizeof n + head.size(), structure.data(), structure.size());
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

using ErrorFactory = std::function<std::exception_ptr(const std::string&)>;

std::mutex g_rethrow_mutex;
std::unordered_map<std::string, ErrorFactory>& user_factories() {
  static auto* m = new std::unordered_map<std::string, ErrorFactory>();
  return *m;
}

template <class E>
void add_known(std::unordered_map<std::string, ErrorFactory>& m) {
  m[typeid(E).name()] = [](const std::string& what) { return std::make_exception_ptr(E(what)); };
}

const std::unordered_map<std::string, ErrorFactory>& known_factories() {
  static const auto* m = [] {
    auto* k = new std::unordered_map<std::string, ErrorFactory>();
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
    add_known<joblib::CancelledError>(*k);
    (*k)[typeid(std::bad_alloc).name()] = [](const std::string&) { return std::make_exception_ptr(std::bad_alloc()); };
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

RemoteFailure decode_failure(std::span<const std::byte> envelope, std::size_t first_index,
                             const std::function<std::string(std::size_t)>& function_of) {
  Envelope env = decode<Envelope>(envelope);
  RemoteFailure out;
  out.index = static_cast<std::size_t>(env.index);
  ErrorFactory make;
  {
    std::lock_guard lock(g_rethrow_mutex);
    if (auto it = user_factories().find(env.mangled); it != user_factories().end()) make = it->second;
  }
  if (!make) {
    auto& known = known_factories();
    if (auto it = known.find(env.mangled); it != known.end()) make = it->second;
  }
  if (make) {
    out.error = make(env.what);
  } else {
    out.error = std::make_exception_ptr(TaskError(env.type_name, env.what, env.traceback, first_index + out.index,
                                                  function_of ? function_of(out.index) : std::string{}));
  }
  return out;
}

void register_exception_factory(const std::type_info& type,
                                std::function<std::exception_ptr(const std::string&)> make) {
  std::lock_guard lock(g_rethrow_mutex);
  user_factories()[type.name()] = std::move(make);
}

void register_exception_rethrower(const std::type_info& type, std::function<void(const std::string&)> rethrow) {
  // (Kept for programs built against the throwing form.)
  register_exception_factory(type, [rethrow = std::move(rethrow)](const std::string& what) -> std::exception_ptr {
    try {
      rethrow(what);
    } catch (...) {
      return std::current_exception();
    }
    return std::make_exception_ptr(Error(what));
  });
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

std::string task_error_envelope(std::size_t index, std::exception_ptr error) noexcept {
  try {
    std::vector<std::byte> env = envelope_of(index, std::move(error), take_throw_trace());
    return {reinterpret_cast<const char*>(env.data()), env.size()};
  } catch (...) {
    try {
      std::vector<std::byte> env =
          envelope_of(index, std::make_exception_ptr(Error("a task failed and its error could not be encoded")), {});
      return {reinterpret_cast<const char*>(env.data()), env.size()};
    } catch (...) {
      return {};
    }
  }
}

// ---- the worker loop ------------------------------------------------------------

namespace {

std::atomic<bool> g_guard_ran{false};

std::vector<std::string>& argv_store() {
  static auto* v = new std::vector<std::string>();
  return *v;
}

// Buffers of a request, as the entry point reads them. An in-frame buffer
// becomes a window into the frame (no copy) when the frame's block is given
// and the buffer is aligned in it, else a copy.
class RequestSource final : public BufferSource {
 public:
  RequestSource(std::vector<BufferDesc>& descs, std::span<const std::byte> area,
                const std::shared_ptr<std::byte>& frame)
      : descs_(descs), area_(area), frame_(frame) {}
  std::size_t buffer_size(std::uint64_t i) const override { return static_cast<std::size_t>(at(i).size); }
  SharedBuffer get(std::uint64_t i) override {
    BufferDesc& d = const_cast<BufferDesc&>(at(i));
    if (d.where == 0) {
      SharedBuffer b = allocate_buffer(d.bytes.size(), false);
      if (!d.bytes.empty()) std::memcpy(b.data.get(), d.bytes.data(), d.bytes.size());
      return b;
    }
    if (d.where == 2) {
      const std::byte* p = in_frame(d);
      if (frame_ && reinterpret_cast<std::uintptr_t>(p) % buffer_alignment == 0) {
        SharedBuffer b;
        b.data = std::shared_ptr<std::byte>(frame_, const_cast<std::byte*>(p));
        b.size = static_cast<std::size_t>(d.size);
        return b;
      }
      SharedBuffer b = allocate_buffer(static_cast<std::size_t>(d.size), false);
      if (d.size) std::memcpy(b.data.get(), p, static_cast<std::size_t>(d.size));
      return b;
    }
    return map_file(d);
  }
  void read_into(std::uint64_t i, std::span<std::byte> dest) override {
    const BufferDesc& d = at(i);
    if (d.where != 2) return BufferSource::read_into(i, dest);
    if (dest.size() != d.size) throw_decode_error("a buffer's size does not match its destination");
    if (d.size) std::memcpy(dest.data(), in_frame(d), dest.size());
  }

 private:
  const BufferDesc& at(std::uint64_t i) const {
    if (i >= descs_.size()) throw_decode_error("no buffer " + std::to_string(i) + " in the request");
    return descs_[static_cast<std::size_t>(i)];
  }
  const std::byte* in_frame(const BufferDesc& d) const {
    if (d.offset > area_.size() || d.size > area_.size() - d.offset)
      throw_decode_error("a buffer lies outside its request frame");
    return area_.data() + d.offset;
  }
  static SharedBuffer map_file(const BufferDesc& d) {
    auto mode = static_cast<MmapMode>(d.mode);
    if (mode == MmapMode::w_plus) mode = MmapMode::r_plus;  // never truncate what the parent wrote
    // r: a private mapping, read in place through every accessor, whose
    // writes stay in this worker; c: the same, writable by intent; r+: shared.
    const bool shared = mode == MmapMode::r_plus;
    int fd = ::open(d.path.c_str(), (shared ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) throw SerializationError(fmt::format("cannot open memmapped argument '{}': {}", d.path, strerror(errno)));
    const long page = sysconf(_SC_PAGESIZE);
    const std::uint64_t aligned = d.offset - d.offset % static_cast<std::uint64_t>(page);
    const std::size_t delta = static_cast<std::size_t>(d.offset - aligned);
    const std::size_t length = static_cast<std::size_t>(d.size) + delta;
    void* base = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, shared ? MAP_SHARED : MAP_PRIVATE, fd,
                        static_cast<off_t>(aligned));
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
    b.writable = mode != MmapMode::r;
    b.mapped = true;
    b.file = std::make_shared<const std::string>(d.path);
    register_mapping({d.path, aligned, static_cast<const std::byte*>(base), length, mode});
    return b;
  }
  std::vector<BufferDesc>& descs_;
  std::span<const std::byte> area_;          // the in-frame buffers
  const std::shared_ptr<std::byte>& frame_;  // the block holding the frame (may be null)
};

using ReplyFn = std::function<void(std::span<const std::byte>, std::span<const std::byte>)>;

void reply_error(const ReplyFn& reply, std::size_t index, std::exception_ptr e, std::string trace) {
  std::vector<std::byte> env = envelope_of(index, e, std::move(trace));
  const std::byte status{static_cast<std::uint8_t>(ReplyStatus::error)};
  reply(std::span<const std::byte>(&status, 1), env);
}

// Buffers sent once per worker (where 3: in this frame, kept now; where 4:
// kept earlier) become references to the files `kept` wrote; without
// `kept`, one in the frame is read as any in-frame buffer.
void resolve_kept(std::vector<BufferDesc>& buffers, std::span<const std::byte> area,
                  worker_sdk::KeptBuffers::Impl* kept) {
  for (BufferDesc& d : buffers) {
    if (d.where == 3) {
      if (!kept) {
        d.where = 2;
        continue;
      }
      if (d.offset > area.size() || d.size > area.size() - d.offset)
        throw SerializationError("a buffer lies outside its request frame");
      d = kept->keep(d.path, area.subspan(static_cast<std::size_t>(d.offset), static_cast<std::size_t>(d.size)),
                     d.mode);
    } else if (d.where == 4) {
      if (!kept)
        throw SerializationError("a request names a buffer kept by its worker, and this worker keeps none "
                                 "(serve it with a KeptBuffers)");
      d = kept->find(d.path);
    }
  }
}

void handle_request(std::span<const std::byte> all, MemoryOutput& out, const ReplyFn& reply,
                    const std::atomic<bool>* stop = nullptr, const std::shared_ptr<std::byte>& frame = nullptr,
                    worker_sdk::KeptBuffers::Impl* kept = nullptr) {
  try {
    std::uint64_t hn = 0;
    if (all.size() < sizeof hn) throw SerializationError("a request frame is too short");
    std::memcpy(&hn, all.data(), sizeof hn);
    if (hn > all.size() - sizeof hn) throw SerializationError("a request header is longer than its frame");
    // Reused: its strings keep their memory from one request to the next.
    // (A thread serves one request at a time: a task never serves another.)
    static thread_local RequestHeader header;
    // The bytes of the last header without buffers this thread decoded, but
    // for their last 8 (structure_size), and the entry point they named: the
    // batches of a call mostly repeat them, and are then neither decoded
    // nor looked up again.
    static thread_local std::vector<std::byte> last_head;
    static thread_local WorkerEntry last_entry = nullptr;
    const std::span<const std::byte> head = all.subspan(sizeof hn, static_cast<std::size_t>(hn));
    constexpr std::size_t kSize = sizeof header.structure_size;
    WorkerEntry entry = nullptr;
    if (last_entry && head.size() == last_head.size() + kSize &&
        std::memcmp(head.data(), last_head.data(), last_head.size()) == 0) {
      std::memcpy(&header.structure_size, head.data() + last_head.size(), kSize);
      entry = last_entry;
    } else {
      last_entry = nullptr;
      decode_into(header, head);
      entry = reinterpret_cast<WorkerEntry>(resolve_code(header.entry));
      // Kept for a header without buffers (resolve_kept rewrites those),
      // and only if structure_size is indeed what its last 8 bytes hold.
      if (header.buffers.empty() && head.size() >= kSize &&
          std::memcmp(head.data() + head.size() - kSize, &header.structure_size, kSize) == 0) {
        last_head.assign(head.begin(), head.end() - kSize);
        last_entry = entry;
      }
    }
    const std::size_t body = sizeof hn + static_cast<std::size_t>(hn);
    if (header.structure_size > all.size() - body) throw SerializationError("a request's tasks are longer than its frame");
    std::span<const std::byte> structure = all.subspan(body, static_cast<std::size_t>(header.structure_size));
    const std::size_t area = std::min(in_frame_area(body + structure.size()), all.size());
    resolve_kept(header.buffers, all.subspan(area), kept);
    RequestSource source(header.buffers, all.subspan(area), frame);
    (void)take_throw_trace();  // forget throws of earlier requests
    out.clear();
    WorkerCall call(structure, &source, out, nullptr);
    {
      // Tasks in a worker see joblib's nested backend: threads, one level down.
      static const NestedBackend threads{"threading", std::nullopt};
      TaskScope scope(threads, 1, stop);
      entry(call);
    }
    if (call.failed()) {
      std::string trace = take_throw_trace();
      reply_error(reply, call.failed_index(), call.error(), std::move(trace));
    } else {
      const std::byte status{static_cast<std::uint8_t>(ReplyStatus::ok)};
      reply(std::span<const std::byte>(&status, 1), out.bytes());
    }
  } catch (...) {
    reply_error(reply, 0, std::current_exception(), take_throw_trace());
  }
  // What the tasks printed reaches the parent's terminal now (a stream with
  // nothing pending is left alone: fflush would still take its lock).
  if (__fpending(stdout) != 0) std::fflush(stdout);
  if (__fpending(stderr) != 0) std::fflush(stderr);
}

}  // namespace

}  // namespace joblib::detail

namespace joblib::worker_sdk {
using namespace joblib::detail;

void serve_channel(int fd, double idle_timeout_seconds) {
  capture_throw_traces(true);
  ::signal(SIGINT, SIG_IGN);  // Ctrl-C is the parent's to handle: it stops us
  MemoryOutput out;
  // Large frames are read into a block reused while no task holds a window
  // into it, let go of after 3 s without a request.
  ReceiveBlock block;
  constexpr int kKeepBlockMs = 3000;
  // Idle time counts from the end of the last request: a worker never leaves
  // before it has served once (its first request is already on its way).
  bool served = false;
  auto last_served = std::chrono::steady_clock::now();
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int ms = -1;
    if (idle_timeout_seconds > 0 && served) {
      const double left = idle_timeout_seconds * 1000 -
                          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - last_served).count();
      ms = static_cast<int>(std::clamp(std::ceil(left), 0.0, 2147483647.0));
    }
    if (block.holds()) ms = ms < 0 ? kKeepBlockMs : std::min(ms, kKeepBlockMs);
    const int r = ::poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      const bool idle_over =
          idle_timeout_seconds > 0 && served &&
          std::chrono::steady_clock::now() - last_served >= std::chrono::duration<double>(idle_timeout_seconds);
      if (!idle_over) {
        block.release();
        continue;
      }
      // Idle for too long: say so (the parent resends anything it sent
      // meanwhile) and leave.
      write_frame(fd, FrameKind::idle_exit, {});
      std::fflush(nullptr);
      ::_exit(0);
    }
    FrameHeader h{};
    std::size_t size = 0;
    std::shared_ptr<std::byte> payload;
    const WatchedChannel ch{fd, 0, -1};
    bool ok = recv_watched(ch, &h, sizeof h) && h.magic == kMagic;
    if (ok) {
      size = static_cast<std::size_t>(h.size);
      try {
        payload = block.get(size);
      } catch (const std::bad_alloc&) {
        ok = false;
      }
      ok = ok && (size == 0 || recv_watched(ch, payload.get(), size));
    }
    const auto kind = static_cast<FrameKind>(h.kind);
    if (!ok || kind == FrameKind::exit) {
      std::fflush(nullptr);
      ::_exit(0);
    }
    if (kind == FrameKind::run || kind == FrameKind::init)
      handle_request(
          std::span<const std::byte>(payload.get(), size), out,
          [fd](std::span<const std::byte> head, std::span<const std::byte> body) {
            write_frame(fd, FrameKind::reply, head, body);
          },
          nullptr, payload);
    if (kind == FrameKind::ping) write_frame(fd, FrameKind::reply, {});
    payload.reset();
    served = true;
    last_served = std::chrono::steady_clock::now();
  }
}

void serve_request(
    std::span<const std::byte> request,
    const std::function<void(std::span<const std::byte>, std::span<const std::byte>)>& reply,
    const std::atomic<bool>* stop) noexcept {
  serve_request(request, reply, stop, nullptr);
}

void serve_request(
    std::span<const std::byte> request,
    const std::function<void(std::span<const std::byte>, std::span<const std::byte>)>& reply,
    const std::atomic<bool>* stop, std::shared_ptr<std::byte> block) noexcept {
  serve_request(request, reply, stop, std::move(block), nullptr);
}

void serve_request(
    std::span<const std::byte> request,
    const std::function<void(std::span<const std::byte>, std::span<const std::byte>)>& reply,
    const std::atomic<bool>* stop, std::shared_ptr<std::byte> block, KeptBuffers* kept) noexcept {
  capture_throw_traces(true);
  static thread_local MemoryOutput out;
  handle_request(request, out, reply, stop, block, kept ? kept->impl() : nullptr);
}

SentBuffers::SentBuffers() : impl_(std::make_unique<Impl>()) {}
SentBuffers::~SentBuffers() = default;
SentBuffers::SentBuffers(SentBuffers&&) noexcept = default;
SentBuffers& SentBuffers::operator=(SentBuffers&&) noexcept = default;
void SentBuffers::clear() noexcept {
  if (impl_) impl_->keys.clear();
}
std::size_t SentBuffers::size() const noexcept { return impl_ ? impl_->keys.size() : 0; }

KeptBuffers::KeptBuffers() : impl_(std::make_unique<Impl>()) {}
KeptBuffers::~KeptBuffers() { clear(); }
void KeptBuffers::clear() noexcept {
  impl_->kept.clear();
  impl_->folder.reset();  // removes the folder
}
std::size_t KeptBuffers::size() const noexcept { return impl_->kept.size(); }

bool write_frame(int fd, FrameKind kind, std::span<const std::byte> a, std::span<const std::byte> b) noexcept {
  return detail::write_frame(WatchedChannel{fd, 0, -1}, kind, a, b);
}

std::optional<Frame> read_frame(int fd) noexcept {
  return detail::read_frame(WatchedChannel{fd, 0, -1}).frame;
}

Request encode_request_parts(Batch& batch, CallMemmap* memmap, std::size_t headroom) {
  return encode_request_parts(batch, memmap, headroom, nullptr);
}

Request encode_request_parts(Batch& batch, CallMemmap* memmap, std::size_t headroom, SentBuffers* sent) {
  // This thread's, reused: they keep their memory. (Encoding a batch never
  // encodes another request on the same thread.)
  static thread_local CodeRef entry;
  static thread_local MemoryOutput structure;
  const Reused using_structure(structure);
  RequestSink sink(memmap ? memmap->context() : nullptr, sent ? sent->impl() : nullptr);
  if (std::exception_ptr e = batch.encode(entry, structure, &sink)) std::rethrow_exception(e);
  Request r;
  r.bytes = make_request(entry, std::move(sink.buffers()), structure.bytes(), headroom);
  r.buffers = std::move(sink.in_frame());
  r.headroom = headroom;
  return r;
}

std::vector<std::byte> encode_request(Batch& batch, CallMemmap* memmap, std::size_t headroom) {
  Request r = encode_request_parts(batch, memmap, headroom);
  if (r.buffers.empty()) return std::move(r.bytes);
  return r.flatten();
}

std::vector<std::span<const std::byte>> Request::pieces() const {
  static constexpr std::byte zeros[64] = {};
  std::vector<std::span<const std::byte>> out{bytes};
  std::size_t at = bytes.size() - headroom;  // from the request's start
  for (std::span<const std::byte> b : buffers) {
    const std::size_t pad = in_frame_area(at) - at;
    if (pad) out.emplace_back(zeros, pad);
    out.push_back(b);
    at += pad + b.size();
  }
  return out;
}

std::size_t Request::size() const noexcept {
  std::size_t at = bytes.size() - headroom;
  for (std::span<const std::byte> b : buffers) at = in_frame_area(at) + b.size();
  return headroom + at;
}

std::vector<std::byte> Request::flatten() const {
  std::vector<std::byte> out;
  out.reserve(size());
  for (std::span<const std::byte> p : pieces()) out.insert(out.end(), p.begin(), p.end());
  return out;
}

std::shared_ptr<std::byte> ReceiveBlock::get(std::size_t n) {
  constexpr std::size_t kReuseBytes = std::size_t{1} << 20;
  constexpr std::size_t kSmallest = std::size_t{64} << 10;
  if (kept_ && kept_.use_count() == 1 && size_ >= n) return kept_;
  // A large block gets 1 MiB to spare: the next request of the same arrays
  // differs by a few bytes of tasks. The new block is kept unless a larger
  // one is (held by a task now, and reused once it lets go).
  SharedBuffer b = allocate_buffer(n >= kReuseBytes ? n + kReuseBytes : std::max(n, kSmallest), false);
  if (!kept_ || b.size >= size_) {
    kept_ = b.data;
    size_ = b.size;
  }
  return b.data;
}

bool write_request_frame(int fd, FrameKind kind, const Request& request) noexcept {
  try {
    return detail::write_request_frame(WatchedChannel{fd, 0, -1}, kind, request);
  } catch (...) {
    return false;
  }
}

void complete_batch(Batch& batch, std::span<const std::byte> payload) noexcept {
  // The reply: [status][results] or [status][error envelope]. The batch
  // gets decoded results or the failed task's exception, never bytes of
  // the wire format.
  if (payload.empty()) {
    batch.fail(std::make_exception_ptr(SerializationError("a worker sent an empty reply")));
  } else if (payload[0] == std::byte{static_cast<std::uint8_t>(ReplyStatus::ok)}) {
    batch.complete(payload.subspan(1), nullptr);
  } else {
    RemoteFailure failure;
    try {
      failure = decode_failure(payload.subspan(1), batch.first_task_index(),
                               [&batch](std::size_t i) { return batch.task_function_name(i); });
    } catch (...) {
      batch.fail(std::current_exception());
      return;
    }
    batch.fail_task(failure.index, failure.error);
  }
}

bool main_guard_ran() noexcept { return g_guard_ran.load(); }

}  // namespace joblib::worker_sdk

namespace joblib::detail {

std::exception_ptr initializer_failure(std::span<const std::byte> envelope) {
  return decode_failure(envelope, 0, [](std::size_t) { return std::string("initializer"); }).error;
}

int move_channel_out_of_reach(int fd) noexcept {
  // A task should not stumble on the channel (a guessable fd 3, inherited by
  // the programs it starts): move it to a random high descriptor, closed on exec.
  struct rlimit lim {};
  long top = 1024;
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
    top = static_cast<long>(std::min<rlim_t>(lim.rlim_cur, 65536));
  const long low = std::min(256L, top / 2);
  std::random_device rd;
  const long want = top - 1 > low ? low + static_cast<long>(rd() % static_cast<unsigned>(top - 1 - low)) : low;
  const int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, static_cast<int>(want));
  if (moved < 0) {
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
  }
  ::close(fd);
  return moved;
}

const std::vector<std::string>& saved_argv() { return argv_store(); }

}  // namespace joblib::detail

namespace joblib::worker_sdk {
std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* abbrev = sigabbrev_np(sig);
    return fmt::format("SIG{}(-{})", abbrev ? abbrev : std::to_string(sig).c_str(), sig);
  }
  if (WIFEXITED(status)) return fmt::format("EXIT({})", WEXITSTATUS(status));
  return "UNKNOWN";
}
}  // namespace joblib::worker_sdk

#include <cxxabi.h>

namespace joblib::detail {
const std::type_info* abi_current_exception_type() noexcept { return abi::__cxa_current_exception_type(); }
}  // namespace joblib::detail

namespace joblib::detail {

namespace {
// Why the environment's worker settings do not come from a joblib parent
// that spawned this process (empty: they do). The channel must be a Unix
// socket whose peer is our parent, the parent named in the environment, and
// the first bytes on it must be the token the environment holds.
std::string worker_channel_problem(const char* fdv, const char* parent, const char* token, int& fd) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(fdv, &end, 10);
  if (errno != 0 || end == fdv || *end != '\0' || v < 3 || v > 1 << 20)
    return fmt::format("JOBLIB_WORKER_FD='{}' is not a descriptor number", fdv);
  fd = static_cast<int>(v);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return fmt::format("descriptor {} is not a socket", fd);
  const long parent_pid = parent ? std::strtol(parent, nullptr, 10) : 0;
  if (parent_pid <= 0) return "JOBLIB_WORKER_PARENT names no process";
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid != static_cast<pid_t>(parent_pid))
    return fmt::format("descriptor {} is not connected to the process JOBLIB_WORKER_PARENT names", fd);
  // The channel was made by the named process: a worker it spawned. If it is
  // no longer our parent, it died before we started: end quietly.
  if (::getppid() != static_cast<pid_t>(parent_pid)) ::_exit(0);
  if (!token || std::strlen(token) != 32) return "JOBLIB_WORKER_TOKEN is missing";
  return {};
}

// Reads the token the spawning parent writes first on the channel.
std::string worker_token_problem(int fd, const char* token) {
  char got[32];
  std::size_t have = 0;
  while (have < sizeof got) {
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, 10000);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return "the parent sent no handshake";
    const ssize_t n = ::recv(fd, got + have, sizeof got - have, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) ::_exit(0);  // our spawning parent went away (or gave up) before the handshake: end quietly
    have += static_cast<std::size_t>(n);
  }
  if (std::memcmp(got, token, sizeof got) != 0) return "the handshake does not match";
  return {};
}
}  // namespace

std::string make_worker_token() {
  std::random_device rd;
  std::string t;
  static const char* hex = "0123456789abcdef";
  for (int i = 0; i < 32; ++i) t += hex[rd() & 15];
  return t;
}

}  // namespace joblib::detail

namespace joblib {

void worker_main_guard(int argc, char** argv) {
  using namespace detail;
  if (!g_guard_ran.exchange(true)) {
    auto& store = argv_store();
    for (int i = 0; i < argc && argv && argv[i]; ++i) store.emplace_back(argv[i]);
  }
  const char* fdv = std::getenv("JOBLIB_WORKER_FD");
  if (!fdv || !*fdv) {
    // Launchers of other kinds (mpirun): the plugin that serves them may
    // take this process over as a worker.
    run_worker_takeovers(argc, argv);
    return;
  }
  const std::string fd_text = fdv;
  const char* idle = std::getenv("JOBLIB_WORKER_IDLE");
  const double idle_s = idle ? std::atof(idle) : 0.0;
  const char* parent = std::getenv("JOBLIB_WORKER_PARENT");
  const char* token_env = std::getenv("JOBLIB_WORKER_TOKEN");
  const std::string token = token_env ? token_env : "";
  // Grandchildren started by tasks are ordinary processes again, and so is
  // this one if the handshake fails.
  ::unsetenv("JOBLIB_WORKER_FD");
  ::unsetenv("JOBLIB_WORKER_IDLE");
  ::unsetenv("JOBLIB_WORKER_PARENT");
  ::unsetenv("JOBLIB_WORKER_TOKEN");
  int fd = -1;
  const char* tok = token.empty() ? nullptr : token.c_str();
  std::string problem = worker_channel_problem(fd_text.c_str(), parent, tok, fd);
  if (problem.empty()) {
    // The channel comes from our parent: a worker whose parent dies ends too,
    // from now on (it may die during the handshake).
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != static_cast<pid_t>(std::strtol(parent, nullptr, 10))) ::_exit(0);
    problem = worker_token_problem(fd, tok);
    if (!problem.empty()) ::prctl(PR_SET_PDEATHSIG, 0);
  }
  if (!problem.empty()) {
    // Only a worker this library spawned takes over; anything else runs main.
    std::fprintf(stderr, "joblib: ignoring JOBLIB_WORKER_FD: %s; running the program normally\n", problem.c_str());
    return;
  }
  worker_sdk::serve_channel(move_channel_out_of_reach(fd), idle_s);
}

}  // namespace joblib
