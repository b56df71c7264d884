#pragma once
// The worker side of the process backends, and the wire format shared with
// the parent (core/process/worker_pool.cpp): frames over a Unix socket, requests
// (entry point + encoded tasks + a table of out-of-band buffers), replies
// (results, or an error envelope), memory-mapped buffers in a per-call
// private folder.
#include "memmap.hpp"

#include <joblib/codec.hpp>
#include <joblib/detail/portable.hpp>
#include <joblib/export.hpp>
#include <joblib/options.hpp>
#include <joblib/worker_sdk.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
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

using worker_sdk::FrameKind;
using WireFrame = worker_sdk::Frame;

// Frames over a plain descriptor: worker_sdk::write_frame / read_frame.

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
/// Writes one frame whose payload is worker_sdk::Request `r`: its bytes,
/// then each buffer at its 64-byte boundary, sent from where it is.
bool write_request_frame(const WatchedChannel& ch, FrameKind kind, const worker_sdk::Request& r);

/// A request payload: [u64 header size][header][structure], then, from the
/// first 64-byte boundary after the structure, the buffers that travel in
/// the frame (BufferDesc::where == 2, offsets from that boundary, each a
/// multiple of 64).
struct RequestHeader {
  CodeRef entry;
  std::vector<BufferDesc> buffers;
  std::uint64_t structure_size = 0;

  template <class A>
  void serialize(A& ar) {
    ar(entry, buffers, structure_size);
  }
};

/// Where the in-frame buffers of a request start: the first multiple of 64
/// at or after `bytes` (the size of [u64][header][structure]).
constexpr std::size_t in_frame_area(std::size_t bytes) noexcept { return (bytes + 63) / 64 * 64; }

/// Buffers from this size on travel in the frame, after the structure, sent
/// from where they are (no copy); smaller ones are encoded inline.
inline constexpr std::size_t in_frame_min_bytes = 64 * 1024;

/// Reply payload: [1 byte status: 0 results, 1 error][body].
enum class ReplyStatus : std::uint8_t { ok = 0, error = 1 };

/// A BufferSink that collects BufferDescs for a request: a buffer over the
/// call's max_nbytes goes to the memmap folder; otherwise one of at least
/// in_frame_min_bytes travels in the frame (its span is kept, not copied);
/// smaller ones stay inline.
class JOBLIB_EXPORT RequestSink final : public BufferSink {
 public:
  explicit RequestSink(MemmapContext* memmap, worker_sdk::SentBuffers::Impl* sent = nullptr)
      : memmap_(memmap), sent_(sent) {}
  std::optional<std::uint64_t> put(std::span<const std::byte> bytes, BufferKind kind) override;
  std::optional<std::uint64_t> put_array(std::span<const std::byte> bytes,
                                         const std::shared_ptr<const void>& owner) override;
  std::vector<BufferDesc>& buffers() noexcept { return buffers_; }
  /// The in-frame buffers, in the order of their offsets.
  std::vector<std::span<const std::byte>>& in_frame() noexcept { return in_frame_; }

 private:
  std::optional<std::uint64_t> in_frame(std::span<const std::byte> bytes, std::uint8_t where = 2,
                                        std::string key = {});
  std::optional<std::uint64_t> once_per_worker(std::span<const std::byte> bytes);
  MemmapContext* memmap_;
  worker_sdk::SentBuffers::Impl* sent_;
  std::vector<BufferDesc> buffers_;
  std::vector<std::span<const std::byte>> in_frame_;
  std::uint64_t in_frame_end_ = 0;
};

/// Encodes the request payload for a batch: header then structure.
JOBLIB_EXPORT std::vector<std::byte> make_request(const CodeRef& entry, std::vector<BufferDesc> buffers,
                                                  std::span<const std::byte> structure, std::size_t headroom = 0);

/// Moves a worker's channel to a random high descriptor, closed on exec;
/// returns the new descriptor.
JOBLIB_EXPORT int move_channel_out_of_reach(int fd) noexcept;

/// A fresh random token (32 hex digits) for the spawn handshake: the parent
/// puts it in JOBLIB_WORKER_TOKEN and writes it first on the channel.
JOBLIB_EXPORT std::string make_worker_token();


/// The argv recorded by worker_main_guard().
const std::vector<std::string>& saved_argv();

/// The exception a worker's error envelope describes (decode_failure) for
/// an initializer, with "initializer" as its function.
std::exception_ptr initializer_failure(std::span<const std::byte> envelope);

/// In a forked worker, before it serves: the core's own process-wide
/// locks re-made, then the hooks registered with at_fork_child() run.
void reset_in_fork_child() noexcept;

/// Every live WorkerPool is registered: Ctrl-C kills its workers (and reaps
/// them when the program ends next), the program's exit kills them, and
/// pool_worker_pids() lists them. Registering installs the SIGINT watcher.
void register_pool(worker_sdk::WorkerPool* pool);
void unregister_pool(worker_sdk::WorkerPool* pool) noexcept;

}  // namespace joblib::detail
