#pragma once
// The worker side of the process backends, and the wire format shared with
// the parent (core/process_pool.cpp): frames over a Unix socket, requests
// (entry point + encoded tasks + a table of out-of-band buffers), replies
// (results, or an error envelope), memory-mapped buffers in a per-call
// private folder.
#include <joblib/codec.hpp>
#include <joblib/detail/portable.hpp>
#include <joblib/export.hpp>
#include <joblib/options.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <sys/types.h>

namespace joblib::detail {

enum class FrameKind : std::uint32_t { run = 1, reply = 2, init = 3, exit = 4, idle_exit = 5, ping = 6 };

struct WireFrame {
  FrameKind kind{};
  std::vector<std::byte> payload;
};

/// Writes one frame (header + the parts). False when the peer is gone.
bool write_frame(int fd, FrameKind kind, std::span<const std::byte> a, std::span<const std::byte> b = {});
/// Reads one frame; nullopt at end of file or on error.
std::optional<WireFrame> read_frame(int fd);

/// The parent's end of a worker's socket, with the worker's process: reads
/// and writes end when the worker exits, even while a process it started
/// (which inherited the socket) keeps the socket open.
struct WatchedChannel {
  int fd = -1;
  pid_t pid = 0;
  int pidfd = -1;  // -1 where pidfd_open is missing: the pid is polled instead
};
/// A pidfd for `pid` (close-on-exec), or -1 when the kernel has none.
int open_pidfd(pid_t pid) noexcept;
/// True once `pid` (a child) has exited; it is not reaped.
bool process_exited(pid_t pid) noexcept;
/// write_frame() that gives up (false) once the worker has exited.
bool write_frame(const WatchedChannel& ch, FrameKind kind, std::span<const std::byte> a,
                 std::span<const std::byte> b = {});
/// Sends raw bytes (the spawn handshake); false once the worker has exited.
bool write_frame_raw(const WatchedChannel& ch, std::string_view bytes);
struct FrameResult {
  std::optional<WireFrame> frame;  // nullopt: the worker is gone or the stream broke
  bool garbled = false;            // bytes came that are not a frame (a task wrote to the channel?)
};
/// read_frame() that gives up once the worker has exited.
FrameResult read_frame(const WatchedChannel& ch);

/// One out-of-band buffer of a request: bytes carried in the frame, or a
/// file (a memory map in the worker).
struct BufferDesc {
  std::uint8_t where = 0;  // 0 inline, 1 file
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

struct RequestHeader {
  CodeRef entry;
  std::vector<BufferDesc> buffers;

  template <class A>
  void serialize(A& ar) {
    ar(entry, buffers);
  }
};

/// Reply payload: [1 byte status: 0 results, 1 error][body].
enum class ReplyStatus : std::uint8_t { ok = 0, error = 1 };

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

/// In a forked child: re-makes the memmapping locks other threads may have held.
void reset_memmap_state_in_fork_child() noexcept;

/// Removes every memmapping folder this process still has (Ctrl-C, exit).
JOBLIB_EXPORT void remove_memmap_folders() noexcept;

/// A BufferSink that collects BufferDescs for a request.
class JOBLIB_EXPORT RequestSink final : public BufferSink {
 public:
  explicit RequestSink(MemmapContext* memmap) : memmap_(memmap) {}
  std::optional<std::uint64_t> put(std::span<const std::byte> bytes, BufferKind kind) override;
  std::optional<std::uint64_t> put_array(std::span<const std::byte> bytes,
                                         const std::shared_ptr<const void>& owner) override;
  std::vector<BufferDesc>& buffers() noexcept { return buffers_; }

 private:
  MemmapContext* memmap_;
  std::vector<BufferDesc> buffers_;
};

/// Encodes the request payload for a batch: header then structure.
JOBLIB_EXPORT std::vector<std::byte> make_request(const CodeRef& entry, std::vector<BufferDesc> buffers,
                                                  std::span<const std::byte> structure);

/// Moves a worker's channel to a random high descriptor, closed on exec;
/// returns the new descriptor.
JOBLIB_EXPORT int move_channel_out_of_reach(int fd) noexcept;

/// A fresh random token (32 hex digits) for the spawn handshake: the parent
/// puts it in JOBLIB_WORKER_TOKEN and writes it first on the channel.
JOBLIB_EXPORT std::string make_worker_token();

/// Runs the worker loop on socket `fd` and ends the process.
[[noreturn]] JOBLIB_EXPORT void run_worker(int fd, double idle_timeout_seconds);

/// True once worker_main_guard() ran in this process (the main wrapper
/// calls it): the loky backend refuses to spawn workers otherwise.
JOBLIB_EXPORT bool main_guard_ran() noexcept;
/// The argv recorded by worker_main_guard().
JOBLIB_EXPORT const std::vector<std::string>& saved_argv();

/// "SIGKILL(-9)" / "EXIT(3)" from a wait status, as joblib names them.
JOBLIB_EXPORT std::string describe_exit(int wait_status);

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
