// Memmapping: per-call folders of write-once buffer files, temp folder
// choice and the sweep of stale folders, and the registry of mappings
// (core/memmap/memmap.hpp).
#include "memmap.hpp"

#include "fork_safety.hpp"

#include <joblib/errors.hpp>

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>

namespace joblib::detail {
namespace fs = std::filesystem;

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
std::mutex g_sweep_mutex;  // one sweep of stale folders per temp root
std::set<std::string>& live_folders() {
  static auto* s = new std::set<std::string>();
  return *s;
}

void remove_live_folders_at_exit() { remove_memmap_folders(); }
}  // namespace

namespace {
void remove_live_folders_locked() noexcept {
  for (const std::string& f : live_folders()) {
    std::error_code ec;
    fs::remove_all(f, ec);
  }
  live_folders().clear();
}
}  // namespace

void remove_memmap_folders() noexcept {
  std::lock_guard lock(g_folders_mutex);
  remove_live_folders_locked();
}

void remove_memmap_folders_and_raise(int sig) noexcept {
  g_folders_mutex.lock();  // kept: no folder is made from now on
  remove_live_folders_locked();
  ::signal(sig, SIG_DFL);
  ::kill(::getpid(), sig);
  for (;;) ::pause();  // (the signal ends the program)
}

namespace {
constexpr const char* kLockName = ".lock";

// Removes folders whose owner is gone (a crash, a kill -9). The owner holds
// an flock on the folder's lock file for as long as the folder lives; a lock
// that can be taken means no process holds it any more. This holds across
// PID namespaces sharing the folder (/dev/shm), where a pid says nothing.
void remove_stale_folders(const fs::path& root) {
  std::set<std::string> mine;
  {
    std::lock_guard lock(g_folders_mutex);
    mine = live_folders();
  }
  std::error_code ec;
  for (auto it = fs::directory_iterator(root, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(kFolderPrefix, 0) != 0 || mine.count(it->path().string())) continue;
    const int fd = ::open((it->path() / kLockName).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) continue;  // no lock file: not a folder we can judge
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      std::error_code rm;
      fs::remove_all(it->path(), rm);
    }
    ::close(fd);
  }
}

std::string random_hex(std::size_t n) {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ (std::uint64_t(getpid()) << 32));
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += hex[rng() & 15];
  return s;
}

// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
constexpr std::uint64_t kPagePresent = std::uint64_t{1} << 63;
constexpr std::uint64_t kPageSwapped = std::uint64_t{1} << 62;
constexpr std::uint64_t kPageFileOrShared = std::uint64_t{1} << 61;
}  // namespace

bool private_pages_written(const void* p, std::size_t n) noexcept {
  if (n == 0) return false;
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p) / page;
  const std::uintptr_t last = (reinterpret_cast<std::uintptr_t>(p) + n - 1) / page;
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;
  std::uint64_t entries[512];
  bool written = false;
  for (std::uintptr_t pg = first; pg <= last && !written;) {
    const std::size_t count = std::min<std::uintptr_t>(std::size(entries), last - pg + 1);
    const ssize_t r = ::pread(fd, entries, count * sizeof(std::uint64_t), static_cast<off_t>(pg * sizeof(std::uint64_t)));
    if (r != static_cast<ssize_t>(count * sizeof(std::uint64_t))) {
      written = true;  // cannot tell: assume the worst
      break;
    }
    for (std::size_t i = 0; i < count; ++i) {
      const std::uint64_t e = entries[i];
      // A written page of a private file mapping is an anonymous copy: present
      // but not a file page, or swapped out. An untouched page is absent or
      // the file's own page.
      if ((e & kPageSwapped) || ((e & kPagePresent) && !(e & kPageFileOrShared))) {
        written = true;
        break;
      }
    }
    pg += count;
  }
  ::close(fd);
  return written;
}

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
  static std::set<std::string> cleaned;
  std::lock_guard lock(g_sweep_mutex);
  if (cleaned.insert(root.string()).second) remove_stale_folders(root);
  return root;
}

void lock_memmap_state_for_fork() noexcept {
  g_sweep_mutex.lock();  // the order remove_stale_folders() takes them in
  g_folders_mutex.lock();
}

void unlock_memmap_state_after_fork() noexcept {
  g_folders_mutex.unlock();
  g_sweep_mutex.unlock();
}

void reset_memmap_state_in_fork_child() noexcept {
  new (&g_sweep_mutex) std::mutex();
  new (&g_folders_mutex) std::mutex();
}

MemmapContext::~MemmapContext() { cleanup(); }

std::optional<fs::path> MemmapContext::folder() const {
  std::lock_guard lock(m_);
  return folder_;
}

std::optional<BufferDesc> MemmapContext::describe(std::span<const std::byte> bytes) {
  return describe(bytes, nullptr);
}

std::optional<BufferDesc> MemmapContext::describe(std::span<const std::byte> bytes,
                                                  const std::shared_ptr<const void>& owner) {
  if (!max_nbytes_) return std::nullopt;  // memmapping is off
  const MmapMode mode = mode_ == MmapMode::w_plus ? MmapMode::r_plus : mode_;
  if (auto region = find_mapping(bytes.data(), bytes.size())) {
    // Already a memory map, whatever its size (as joblib forwards memmaps):
    // send a reference to its file, in its own mode, unless this process
    // wrote into its private pages (r, c), which the file does not hold:
    // those bytes travel as themselves.
    const bool is_private = region->mode == MmapMode::r || region->mode == MmapMode::c;
    if (!is_private || !private_pages_written(bytes.data(), bytes.size())) {
      BufferDesc d;
      d.where = 1;
      d.path = region->path;
      d.offset = region->file_offset;
      d.size = bytes.size();
      d.mode = static_cast<std::uint8_t>(region->mode == MmapMode::w_plus ? MmapMode::r_plus : region->mode);
      return d;
    }
  }
  if (bytes.size() <= *max_nbytes_) return std::nullopt;
  std::lock_guard lock(m_);
  std::string path;
  if (mode == MmapMode::r || mode == MmapMode::c) {
    // Workers cannot change these files: one per content, written once per
    // call. The key is a hash of the bytes, not their address, which a later
    // argument may reuse once this one is freed.
    const auto key = std::make_pair(static_cast<std::uint64_t>(XXH3_64bits(bytes.data(), bytes.size())), bytes.size());
    if (auto it = written_.find(key); it != written_.end()) {
      path = it->second;
    } else {
      path = write_file_locked(bytes);
      written_.emplace(key, path);
    }
  } else {
    // Workers write into these: equal contents must not share a file. Copies
    // of one live Array do (a task sees another task's writes, as threads do).
    if (owner) {
      for (const OwnedFile& f : owned_)
        if (f.data == bytes.data() && f.size == bytes.size() && !f.owner.expired() &&
            !f.owner.owner_before(owner) && !owner.owner_before(f.owner)) {
          path = f.path;
          break;
        }
    }
    if (path.empty()) {
      path = write_file_locked(bytes);
      if (owner) {
        std::erase_if(owned_, [](const OwnedFile& f) { return f.owner.expired(); });
        owned_.push_back({owner, bytes.data(), bytes.size(), path});
      }
    }
  }
  return file_desc(std::move(path), bytes.size(), mode);
}

BufferDesc MemmapContext::write(std::span<const std::byte> bytes, MmapMode mode) {
  std::string path;
  {
    std::lock_guard lock(m_);
    path = write_file_locked(bytes);
  }
  return file_desc(std::move(path), bytes.size(), mode == MmapMode::w_plus ? MmapMode::r_plus : mode);
}

BufferDesc MemmapContext::file_desc(std::string path, std::size_t size, MmapMode mode) {
  BufferDesc d;
  d.where = 1;
  d.path = std::move(path);
  d.offset = 0;
  d.size = size;
  d.mode = static_cast<std::uint8_t>(mode);
  return d;
}

std::string MemmapContext::write_file_locked(std::span<const std::byte> bytes) {
  if (!folder_) {
    const fs::path root = resolve_temp_root(temp_folder_);
    // Made under a name the sweep ignores, locked, then renamed into place:
    // a folder with the sweep's prefix always has its owner's lock held. All
    // of it, up to the folder being live, at once for remove_memmap_folders()
    // (Ctrl-C): it removes the folder, or runs before the folder exists.
    std::unique_lock live(g_folders_mutex);
    fs::path building, candidate;
    for (int attempt = 0;; ++attempt) {
      const std::string tag = fmt::format("{}_{}", getpid(), random_hex(16));
      building = root / fmt::format(".joblib_creating_{}", tag);
      candidate = root / fmt::format("{}{}", kFolderPrefix, tag);
      if (::mkdir(building.c_str(), 0700) == 0) break;
      if (errno != EEXIST || attempt > 16)
        throw SerializationError(fmt::format("cannot create the memmapping folder in '{}': {}", root.string(),
                                             std::strerror(errno)));
    }
    const int lock_fd = ::open((building / kLockName).c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (lock_fd < 0 || ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0 || ::rename(building.c_str(), candidate.c_str()) != 0) {
      const int err = errno;
      if (lock_fd >= 0) ::close(lock_fd);
      std::error_code rm;
      fs::remove_all(building, rm);
      throw SerializationError(fmt::format("cannot create the memmapping folder in '{}': {}", root.string(),
                                           std::strerror(err)));
    }
    lock_fd_ = lock_fd;
    folder_ = candidate;
    live_folders().insert(folder_->string());
    live.unlock();
    static std::once_flag at_exit;
    std::call_once(at_exit, [] { std::atexit(remove_live_folders_at_exit); });
  }
  std::string path = (*folder_ / fmt::format("{}-{}.bin", getpid(), counter_++)).string();
  int fd = -1;
  {
    // A file is made only in a folder still live: once remove_memmap_folders()
    // (Ctrl-C) removed it, none can appear in it again and keep it on disk.
    std::lock_guard live(g_folders_mutex);
    if (!live_folders().count(folder_->string()))
      throw SerializationError(fmt::format("cannot write memmapped argument '{}': its folder was removed (Ctrl-C)",
                                           path));
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  }
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
      ::unlink(path.c_str());
      throw SerializationError(fmt::format("cannot write memmapped argument '{}': {}", path, std::strerror(err)));
    }
    p += w;
    left -= static_cast<std::size_t>(w);
  }
  ::close(fd);
  return path;
}

void MemmapContext::cleanup() noexcept {
  std::lock_guard lock(m_);
  if (!folder_) return;
  {
    // Removed here unless remove_memmap_folders() (Ctrl-C) did: two removals
    // at once could each stop at a file the other removed, leaving the folder.
    std::lock_guard flock(g_folders_mutex);
    std::error_code ec;
    if (live_folders().erase(folder_->string())) fs::remove_all(*folder_, ec);
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
  folder_.reset();
  written_.clear();
  owned_.clear();
}

}  // namespace joblib::detail
