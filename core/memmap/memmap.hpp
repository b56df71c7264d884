#pragma once
// Memmapping (docs/architecture.md, the memmap part): the per-call folder
// where large buffers are written once and mapped by workers, the choice of
// temp folder and the sweep of folders left by dead processes, and the
// registry of file mappings joblib made (load with mmap_mode, workers'
// arguments), so that a mapped buffer travels as a reference to its file.
// Used by the worker runtime, the process backends and the store.
#include <joblib/export.hpp>
#include <joblib/options.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

namespace joblib::detail {

/// One out-of-band buffer of a request: bytes carried in the frame, or a
/// file (a memory map in the worker).
struct BufferDesc {
  // 0 inline, 1 file, 2 in the request's frame, 3 in the frame and kept by
  // the worker for the call under `path` (a content key), 4 kept earlier
  std::uint8_t where = 0;
  std::vector<std::byte> bytes;
  std::string path;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::uint8_t mode = 0;   // MmapMode as an integer, for files

  template <class A>
  void serialize(A& ar) {
    ar(where, bytes, path, offset, size, mode);
  }
};

/// The per-call memmapping state of a process backend (joblib's
/// MemmappingPool folder): large buffers are written once, in a private
/// folder created on first use and removed by cleanup().
class JOBLIB_EXPORT MemmapContext {
 public:
  MemmapContext(std::string temp_folder, std::optional<std::size_t> max_nbytes, MmapMode mode)
      : temp_folder_(std::move(temp_folder)), max_nbytes_(max_nbytes), mode_(mode) {}
  ~MemmapContext();
  MemmapContext(const MemmapContext&) = delete;
  MemmapContext& operator=(const MemmapContext&) = delete;

  /// Describes `bytes` for a request: a file when larger than max_nbytes
  /// (a buffer that already lies in a mapped file travels as a reference to
  /// it), else nullopt (the codec keeps it inline). Thread-safe.
  std::optional<BufferDesc> describe(std::span<const std::byte> bytes);
  /// describe() for an Array's buffer, whose owner tells distinct arrays
  /// apart: with a writable mmap_mode (r+, w+) each distinct array gets its
  /// own file, and copies of one array share it. Thread-safe.
  std::optional<BufferDesc> describe(std::span<const std::byte> bytes, const std::shared_ptr<const void>& owner);
  /// Writes `bytes` to a new file of the folder, with no look for an equal
  /// one written before (the caller knows it is new), for workers to map
  /// with `mode`. Thread-safe. Throws SerializationError when the folder or
  /// the file cannot be written.
  BufferDesc write(std::span<const std::byte> bytes, MmapMode mode);
  /// Buffers over this size are memmapped (nullopt: memmapping is off).
  std::optional<std::size_t> max_nbytes() const noexcept { return max_nbytes_; }
  /// The call's mmap_mode.
  MmapMode mode() const noexcept { return mode_; }
  /// Removes the folder and everything in it. Thread-safe; idempotent.
  void cleanup() noexcept;
  /// The folder, if it has been created.
  std::optional<std::filesystem::path> folder() const;

 private:
  std::string temp_folder_;
  std::optional<std::size_t> max_nbytes_;
  MmapMode mode_;
  mutable std::mutex m_;
  std::optional<std::filesystem::path> folder_;
  std::string write_file_locked(std::span<const std::byte> bytes);
  static BufferDesc file_desc(std::string path, std::size_t size, MmapMode mode);
  // Read-only modes (r, c): one file per content, whatever object holds it.
  std::map<std::pair<std::uint64_t, std::size_t>, std::string> written_;  // (XXH3 of the bytes, size) -> file
  // Writable modes (r+, w+): one file per Array buffer, so that workers never
  // write into each other's arrays; a dead owner's entry is never reused.
  struct OwnedFile {
    std::weak_ptr<const void> owner;
    const std::byte* data = nullptr;
    std::size_t size = 0;
    std::string path;
  };
  std::vector<OwnedFile> owned_;
  std::size_t counter_ = 0;
  int lock_fd_ = -1;  // flock held on the folder's lock file while the folder lives
};

/// Where process backends put memory-mapped buffers: temp_folder if given,
/// else JOBLIB_TEMP_FOLDER, else /dev/shm when it has 2 GB free, else the
/// system temp folder. Folders left by dead processes are removed first.
JOBLIB_EXPORT std::filesystem::path resolve_temp_root(const std::string& temp_folder);

/// Around fork() in the forking thread: holds the memmapping state's locks,
/// so that the child gets a consistent copy of it (unlock in the parent;
/// the child re-makes them with reset_memmap_state_in_fork_child()).
void lock_memmap_state_for_fork() noexcept;
void unlock_memmap_state_after_fork() noexcept;
/// In a forked child: re-makes the memmapping locks other threads may have held.
void reset_memmap_state_in_fork_child() noexcept;

/// Removes every memmapping folder this process still has (Ctrl-C, exit).
JOBLIB_EXPORT void remove_memmap_folders() noexcept;
/// Ctrl-C ending the program: removes every memmapping folder, then ends
/// the program by `sig` (its default action) with no folder made meanwhile
/// (a thread that would make one waits until the end).
[[noreturn]] void remove_memmap_folders_and_raise(int sig) noexcept;

/// Registry of file mappings made by joblib (load with mmap_mode, workers'
/// memmapped arguments), so that a mapped buffer travels as a file reference.
struct MappedRegion {
  std::string path;
  std::uint64_t file_offset = 0;  // file offset of `begin`
  const std::byte* begin = nullptr;
  std::size_t size = 0;
  MmapMode mode = MmapMode::r;    // r and c: a private (copy-on-write) mapping; r+ / w+: shared
};

/// True when this process wrote into some page of [p, p + n), a window of a
/// private file mapping (its written pages are private copies, no longer the
/// file's): such bytes must travel as themselves, not as a file reference.
/// True as well when /proc/self/pagemap cannot tell.
JOBLIB_EXPORT bool private_pages_written(const void* p, std::size_t n) noexcept;
JOBLIB_EXPORT void register_mapping(const MappedRegion& region);
JOBLIB_EXPORT void unregister_mapping(const void* begin) noexcept;
JOBLIB_EXPORT std::optional<MappedRegion> find_mapping(const void* p, std::size_t size);

}  // namespace joblib::detail
