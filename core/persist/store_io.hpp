#pragma once
// POSIX file plumbing of dump/load: descriptors, full reads and writes,
// whole-file mappings and the temporary file a dump is written to.
#include "compress.hpp"

#include <joblib/options.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

namespace joblib::detail {

/// Throws std::filesystem::filesystem_error(what, path, errno).
[[noreturn]] void throw_os_error(const std::string& what, const std::filesystem::path& path, int error);

/// An open file descriptor, closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  ~Fd();
  int get() const noexcept { return fd_; }
  int release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

/// Writes all of `bytes` at the current position (retrying short writes
/// and EINTR). Throws filesystem_error; a file size limit (RLIMIT_FSIZE) is
/// one (EFBIG), not a SIGXFSZ that kills the process: the signal is blocked
/// in the calling thread meanwhile, the disposition left alone.
void write_all(int fd, std::span<const std::byte> bytes, const std::filesystem::path& path);

/// Reads at `offset` until `dest` is full or the file ends; returns the
/// number of bytes read. Throws filesystem_error.
std::size_t pread_full(int fd, std::span<std::byte> dest, std::uint64_t offset, const std::filesystem::path& path);

/// ByteWriter over a descriptor.
class FdWriter final : public ByteWriter {
 public:
  FdWriter(int fd, const std::filesystem::path& path) : fd_(fd), path_(path) {}
  void write(std::span<const std::byte> bytes) override { write_all(fd_, bytes, path_); }

 private:
  int fd_;
  const std::filesystem::path& path_;
};

/// ByteReader over a descriptor, from `offset` on.
class FdReader final : public ByteReader {
 public:
  FdReader(int fd, const std::filesystem::path& path, std::uint64_t offset = 0)
      : fd_(fd), path_(path), offset_(offset) {}
  std::size_t read(std::span<std::byte> dest) override;

 private:
  int fd_;
  const std::filesystem::path& path_;
  std::uint64_t offset_;
};

/// A mapping of a whole file, unmapped when the last user lets go.
struct Mapping {
  Mapping(std::byte* a, std::size_t n) noexcept : addr(a), size(n) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();
  std::byte* addr;
  std::size_t size;
};

/// Maps `size` bytes of `fd` as `mode` asks: r read-only shared, r+ / w+
/// read-write shared (fd must be open read-write), c copy on write.
/// Throws filesystem_error.
std::shared_ptr<Mapping> map_file(int fd, std::size_t size, MmapMode mode, const std::filesystem::path& path);

/// A new file next to `target` (hidden, unique name) that is removed on
/// destruction unless commit() renamed it onto the target. When the target
/// exists, the new file is never readable by more users than the target is
/// while it is written, and it takes the target's mode, owner and group.
class TempFile {
 public:
  /// Throws filesystem_error when the file cannot be created.
  explicit TempFile(const std::filesystem::path& target);
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile();
  int fd() const noexcept { return fd_.get(); }
  const std::filesystem::path& path() const noexcept { return path_; }
  /// Gives the file the mode (st_mode & 07777) of the target it replaces, if
  /// any, and its owner and group as far as the process may (EPERM is not an
  /// error), closes it and renames it onto the target. Throws
  /// filesystem_error.
  void commit();

 private:
  std::filesystem::path target_, path_;
  Fd fd_;
  bool committed_ = false;
};

}  // namespace joblib::detail
