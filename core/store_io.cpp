#include "store_io.hpp"

#include "worker.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
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

void write_all(int fd, std::span<const std::byte> bytes, const fs::path& path) {
  while (!bytes.empty()) {
    // Linux moves at most 0x7ffff000 bytes per call.
    const ssize_t n = ::write(fd, bytes.data(), std::min<std::size_t>(bytes.size(), std::size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_os_error("joblib::dump: cannot write", path, errno);
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
  int prot = PROT_READ;
  int flags = MAP_SHARED;
  if (mode == MmapMode::r_plus || mode == MmapMode::w_plus) prot |= PROT_WRITE;
  if (mode == MmapMode::c) {
    prot |= PROT_WRITE;
    flags = MAP_PRIVATE;
  }
  void* p = ::mmap(nullptr, size, prot, flags, fd, 0);
  if (p == MAP_FAILED) throw_os_error("joblib::load: cannot map", path, errno);
  auto mapping = std::make_shared<Mapping>(static_cast<std::byte*>(p), size);
  // A mapped array passed to a process backend travels as a reference to
  // this file (joblib's memmap forwarding). Only shared mappings qualify: a
  // copy-on-write map's changes are private to this process.
  if (flags == MAP_SHARED) {
    std::error_code ec;
    const fs::path abs = fs::absolute(path, ec);
    register_mapping({(ec ? path : abs).string(), 0, static_cast<const std::byte*>(p), size, (prot & PROT_WRITE) != 0});
  }
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
      return;
    }
    if (errno != EEXIST || attempt >= 100) throw_os_error("joblib::dump: cannot create a file in", dir.empty() ? fs::path(".") : dir, errno);
  }
}

TempFile::~TempFile() {
  fd_ = Fd();
  if (!committed_) ::unlink(path_.c_str());
}

void TempFile::commit() {
  if (::close(fd_.release()) != 0) throw_os_error("joblib::dump: cannot write", path_, errno);
  if (::rename(path_.c_str(), target_.c_str()) != 0) throw_os_error("joblib::dump: cannot write", target_, errno);
  committed_ = true;
}

}  // namespace joblib::detail
