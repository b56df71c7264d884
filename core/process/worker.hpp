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
