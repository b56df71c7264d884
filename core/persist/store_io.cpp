#include "store_io.hpp"

#include "memmap.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <ctime>
#include <optional>
#include <random>
#include <system_error>

namespace joblib::detail {

namespace fs = std::filesystem;

void throw_os_error(const std::string& what, const fs::path& path, int error) {
  throw fs::filesystem_error(what, path, std::error_code(error, std::generic_category()));
}

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

// SIGXFSZ blocked in the calling thread while it writes, so that a file size
// limit (RLIMIT_FSIZE) makes write() fail with EFBIG instead of killing the
// process. The process-wide disposition is left alone (the program's, or a
// library's); the signal our own write raised is consumed before the mask is
// restored, so that it is not delivered later.
class FileSizeSignalBlock {
 public:
  FileSizeSignalBlock() noexcept {
    sigemptyset(&set_);
    sigaddset(&set_, SIGXFSZ);
    blocked_ = ::pthread_sigmask(SIG_BLOCK, &set_, &old_) == 0;
    sigset_t pending;
    was_pending_ = ::sigpending(&pending) == 0 && sigismember(&pending, SIGXFSZ) == 1;
  }
  FileSizeSignalBlock(const FileSizeSignalBlock&) = delete;
  FileSizeSignalBlock& operator=(const FileSizeSignalBlock&) = delete;
  ~FileSizeSignalBlock() {
    if (!blocked_) return;
    const int saved_errno = errno;
    sigset_t pending;
    // Only a signal that this thread's failed write raised: one pending
    // before (sent by someone else) is left for its handler.
    if (hit_limit_ && !was_pending_ && ::sigpending(&pending) == 0 && sigismember(&pending, SIGXFSZ) == 1) {
      const timespec zero{};
      while (::sigtimedwait(&set_, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    errno = saved_errno;
  }
  void hit_limit() noexcept { hit_limit_ = true; }

 private:
  sigset_t set_, old_;
  bool blocked_ = false, was_pending_ = false, hit_limit_ = false;
};

}  // namespace

void write_all(int fd, std::span<const std::byte> bytes, const fs::path& path) {
  FileSizeSignalBlock block;
  while (!bytes.empty()) {
    // Linux moves at most 0x7ffff000 bytes per call.
    const ssize_t n = ::write(fd, bytes.data(), std::min<std::size_t>(bytes.size(), std::size_t{1} << 30));
    if (n < 0) {
      const int error = errno;
      if (error == EINTR) continue;
      if (error == EFBIG) block.hit_limit();
      throw_os_error("joblib::dump: cannot write", path, error);
    }
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
}

std::size_t pread_full(int fd, std::span<std::byte> dest, std::uint64_t offset, const fs::path& path) {
  std::size_t done = 0;
  while (done < dest.size()) {
    const ssize_t n = ::pread(fd, dest.data() + done, std::min<std::size_t>(dest.size() - done, std::size_t{1} << 30),
                              static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_os_error("joblib::load: cannot read", path, errno);
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

std::size_t FdReader::read(std::span<std::byte> dest) {
  const std::size_t n = pread_full(fd_, dest, offset_, path_);
  offset_ += n;
  return n;
}

Mapping::~Mapping() {
  if (addr != nullptr) {
    unregister_mapping(addr);
    ::munmap(addr, size);
  }
}

std::shared_ptr<Mapping> map_file(int fd, std::size_t size, MmapMode mode, const fs::path& path) {
  // r: a private mapping, so that every accessor reads in place and a write
  // stays in this process's pages, never the file's; c: the same, writable
  // by intent; r+ / w+: shared, writes reach the file.
  const bool shared = mode == MmapMode::r_plus || mode == MmapMode::w_plus;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, shared ? MAP_SHARED : MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) throw_os_error("joblib::load: cannot map", path, errno);
  auto mapping = std::make_shared<Mapping>(static_cast<std::byte*>(p), size);
  // A mapped array passed to a process backend travels as a reference to
  // this file, in its own mode (joblib's memmap forwarding); one whose
  // private pages were written travels as its bytes instead.
  std::error_code ec;
  const fs::path abs = fs::absolute(path, ec);
  register_mapping({(ec ? path : abs).string(), 0, static_cast<const std::byte*>(p), size,
                    mode == MmapMode::w_plus ? MmapMode::r_plus : mode});
  return mapping;
}

namespace {
std::uint64_t temp_salt() {
  static const std::uint64_t salt = [] {
    std::random_device rd;
    return (std::uint64_t{rd()} << 32) ^ rd();
  }();
  return salt;
}
std::atomic<std::uint64_t> temp_counter{0};

// The regular file a dump replaces, if any.
std::optional<struct stat> existing_file(const fs::path& target) {
  struct stat st;
  if (::stat(target.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  return st;
}

}  // namespace

TempFile::TempFile(const fs::path& target) : target_(target) {
  const fs::path dir = target.parent_path();
  for (int attempt = 0;; ++attempt) {
    const std::uint64_t n = temp_counter.fetch_add(1);
    // Hidden, unique across threads, processes and hosts sharing the directory.
    std::string name = fmt::format(".{}.{}-{}-{:x}.tmp", target.filename().string(), ::getpid(), n, temp_salt());
    if (name.size() > 200) name = fmt::format(".joblib-dump.{}-{}-{:x}.tmp", ::getpid(), n, temp_salt());
    path_ = dir / name;
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      fd_ = Fd(fd);
      break;
    }
    if (errno != EEXIST || attempt >= 100) throw_os_error("joblib::dump: cannot create a file in", dir.empty() ? fs::path(".") : dir, errno);
  }
  // The data of a file that others may not read must not be readable by
  // them in the temporary file either, while it is written (best effort:
  // commit() sets the final mode and fails if it cannot).
  struct stat st;
  if (const auto old = existing_file(target_); old && ::fstat(fd_.get(), &st) == 0) {
    const mode_t both = st.st_mode & old->st_mode & 0777;
    if (both != (st.st_mode & 0777)) ::fchmod(fd_.get(), both);
  }
}

TempFile::~TempFile() {
  fd_ = Fd();
  if (!committed_) ::unlink(path_.c_str());
}

void TempFile::commit() {
  // The file replaced keeps its mode, owner and group, as joblib's dump,
  // which truncates it in place, does. Writing (and chown) clears the set-ID
  // bits, so the mode comes last. Only root (or a member of the group, for
  // the group) may give a file away: otherwise the new file is ours.
  if (const auto old = existing_file(target_)) {
    struct stat st;
    if (::fstat(fd_.get(), &st) != 0) throw_os_error("joblib::dump: cannot write", path_, errno);
    if ((st.st_uid != old->st_uid || st.st_gid != old->st_gid) && ::fchown(fd_.get(), old->st_uid, old->st_gid) != 0) {
      if (errno != EPERM) throw_os_error("joblib::dump: cannot set the owner of", path_, errno);
      if (st.st_gid != old->st_gid && ::fchown(fd_.get(), static_cast<uid_t>(-1), old->st_gid) != 0 && errno != EPERM)
        throw_os_error("joblib::dump: cannot set the group of", path_, errno);
    }
    // (A file system without modes fails any fchmod; it gives both files the same one.)
    if (::fstat(fd_.get(), &st) != 0) throw_os_error("joblib::dump: cannot write", path_, errno);
    if ((st.st_mode & 07777) != (old->st_mode & 07777) && ::fchmod(fd_.get(), old->st_mode & 07777) != 0)
      throw_os_error("joblib::dump: cannot set the mode of", path_, errno);
  }
  if (::close(fd_.release()) != 0) throw_os_error("joblib::dump: cannot write", path_, errno);
  if (::rename(path_.c_str(), target_.c_str()) != 0) throw_os_error("joblib::dump: cannot write", target_, errno);
  committed_ = true;
}

}  // namespace joblib::detail
