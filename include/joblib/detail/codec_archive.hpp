#pragma once
// Internals of the codec (include <joblib/codec.hpp>, not this file): the
// byte streams, the out-of-band buffer interfaces and the two cereal
// archives every joblib-cpp encoding goes through.
#include <joblib/array.hpp>
#include <joblib/errors.hpp>
#include <joblib/export.hpp>

#include <cereal/cereal.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace joblib {

/// What a buffer offered to a BufferSink is the data of.
enum class BufferKind : std::uint8_t {
  array,   // a joblib::Array<T> (always offered, unless empty)
  vector,  // a std::vector<T> of bitwise-serializable T, offered from min_offered_vector_bytes on
};

/// std::vector buffers smaller than this always stay inline in the structure.
inline constexpr std::size_t min_offered_vector_bytes = 1024;

/// Receives the large contiguous buffers of a value while it is encoded, so
/// that they travel out of band (docs/architecture.md, decision 6), like pickle
/// protocol 5 buffers. The sink decides per buffer: keep it inline (return
/// std::nullopt) or take it and return an index that the structure records.
/// Implementations: detail::SpanSink (dump: buffers written 64-byte aligned
/// after the structure, or sent by a transport without a copy), the
/// hasher's sink (Memory: bytes hashed in place), and a temp-folder sink
/// for the process backends (buffers above max_nbytes written once to a
/// file that workers map).
class JOBLIB_EXPORT BufferSink {
 public:
  virtual ~BufferSink();
  /// Offered each Array's data and each bitwise std::vector's data of at
  /// least min_offered_vector_bytes, in encoding order. Returns the index
  /// the decoder will ask a BufferSource for, or std::nullopt to have the
  /// bytes written inline. `bytes` views the value being encoded: it stays
  /// valid and unchanged only while that value does, so a sink that must
  /// outlive it copies. May throw; the encode call then fails with it.
  virtual std::optional<std::uint64_t> put(std::span<const std::byte> bytes, BufferKind kind) = 0;
  /// put() for an Array's data, told which buffer holds it: copies of one
  /// Array share `owner`, distinct live Arrays never do. A sink that lets
  /// workers write (memmapping with r+ or w+) gives distinct Arrays distinct
  /// files even when their bytes are equal. The default ignores the owner.
  virtual std::optional<std::uint64_t> put_array(std::span<const std::byte> bytes,
                                                 const std::shared_ptr<const void>& owner) {
    (void)owner;
    return put(bytes, BufferKind::array);
  }
};

/// Gives back, while decoding, the buffers a BufferSink took.
class JOBLIB_EXPORT BufferSource {
 public:
  virtual ~BufferSource();
  /// Size in bytes of buffer `index`. Throws SerializationError when there
  /// is no such buffer.
  virtual std::size_t buffer_size(std::uint64_t index) const = 0;
  /// Buffer `index` as a shared block that an Array can adopt: a window into
  /// a mapping (no copy) or an owned allocation. Throws SerializationError
  /// when there is no such buffer, StoreError when it cannot be read.
  virtual detail::SharedBuffer get(std::uint64_t index) = 0;
  /// Copies buffer `index` into `dest`, whose size must be buffer_size(index)
  /// (SerializationError otherwise). The default calls get() and copies.
  virtual void read_into(std::uint64_t index, std::span<std::byte> dest);
};

namespace detail {

/// Throws SerializationError("cannot decode: <what>").
[[noreturn]] JOBLIB_EXPORT void throw_decode_error(const std::string& what);

/// Where the codec writes the structure of a value: a byte sink with an
/// inline fast path; subclasses say what happens when the window is full.
class JOBLIB_EXPORT OutputStream {
 public:
  OutputStream(const OutputStream&) = delete;
  OutputStream& operator=(const OutputStream&) = delete;
  virtual ~OutputStream();

  /// Appends n bytes.
  void write(const void* p, std::size_t n) {
    if (n <= static_cast<std::size_t>(end_ - cur_)) {
      if (n != 0) std::memcpy(cur_, p, n);
      cur_ += n;
    } else {
      overflow(p, n);
    }
  }

 protected:
  OutputStream() = default;
  /// Called when n bytes do not fit in [cur_, end_): must take them all.
  virtual void overflow(const void* p, std::size_t n) = 0;
  std::byte* cur_ = nullptr;
  std::byte* end_ = nullptr;
};

/// An OutputStream into a growing block of memory.
class JOBLIB_EXPORT MemoryOutput final : public OutputStream {
 public:
  MemoryOutput() = default;
  ~MemoryOutput() override;
  /// The bytes written so far.
  std::span<const std::byte> bytes() const noexcept { return {buf_.get(), size()}; }
  std::size_t size() const noexcept { return static_cast<std::size_t>(cur_ - buf_.get()); }
  /// Forgets the bytes written, keeps the memory.
  void clear() noexcept { cur_ = buf_.get(); }
  /// Bytes it can hold before it grows.
  std::size_t capacity() const noexcept { return static_cast<std::size_t>(end_ - buf_.get()); }
  /// Forgets the bytes written and frees the memory.
  void reset() noexcept {
    buf_.reset();
    cur_ = end_ = nullptr;
  }

 private:
  void overflow(const void* p, std::size_t n) override;
  std::unique_ptr<std::byte[]> buf_;
};

/// Reads the structure of a value from a block of memory; every read is
/// checked against what is left (SerializationError, never past the end).
class InputStream {
 public:
  explicit InputStream(std::span<const std::byte> bytes) noexcept
      : cur_(bytes.data()), end_(bytes.data() + bytes.size()) {}
  void read(void* p, std::size_t n) {
    if (n > remaining()) throw_short(n);
    if (n != 0) std::memcpy(p, cur_, n);
    cur_ += n;
  }
  /// The next n bytes, in place.
  std::span<const std::byte> take(std::size_t n) {
    if (n > remaining()) throw_short(n);
    std::span<const std::byte> s(cur_, n);
    cur_ += n;
    return s;
  }
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - cur_); }

 private:
  [[noreturn]] void throw_short(std::size_t n) const {
    throw_decode_error("the data ends early (" + std::to_string(n) + " bytes needed, " +
                       std::to_string(remaining()) + " left)");
  }
  const std::byte* cur_;
  const std::byte* end_;
};

/// A container count read from the structure may exceed the bytes left by
/// at most this much (elements that encode to no byte at all, such as empty
/// classes); beyond it the data is refused as corrupted before anything is
/// allocated.
inline constexpr std::uint64_t count_slack = 1 << 16;

/// cereal output archive of the codec: cereal's binary layout (native byte
/// order, 64-bit sizes) plus out-of-band buffers. In canonical mode (used
/// for hashing) unordered containers are written in an order that does not
/// depend on insertion history; such output is for hashing only.
class EncodeArchive : public cereal::OutputArchive<EncodeArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit EncodeArchive(OutputStream& out, BufferSink* sink = nullptr, bool canonical = false)
      : cereal::OutputArchive<EncodeArchive, cereal::AllowEmptyClassElision>(this),
        out_(out), sink_(sink), canonical_(canonical) {}

  void saveBinary(const void* data, std::size_t size) { out_.write(data, size); }
  void save_u64(std::uint64_t v) { out_.write(&v, sizeof v); }

  BufferSink* sink() const noexcept { return sink_; }
  bool canonical() const noexcept { return canonical_; }
  /// The code address last written as a portable reference (tasks of a
  /// batch that call the same function write it once).
  const void* last_code() const noexcept { return last_code_; }
  void set_last_code(const void* p) noexcept { last_code_ = p; }

  /// Writes a reference to a contiguous buffer: out of band when the sink
  /// takes it ([1][index][size]), else inline ([0][size][bytes]).
  /// `owner` (an Array's buffer) tells the sink which object the bytes belong to.
  void save_buffer(std::span<const std::byte> bytes, BufferKind kind,
                   const std::shared_ptr<const void>* owner = nullptr) {
    std::optional<std::uint64_t> index;
    if (sink_ != nullptr && !bytes.empty() &&
        (kind == BufferKind::array || bytes.size() >= min_offered_vector_bytes))
      index = owner ? sink_->put_array(bytes, *owner) : sink_->put(bytes, kind);
    if (index) {
      const std::uint8_t tag = 1;
      out_.write(&tag, 1);
      save_u64(*index);
      save_u64(bytes.size());
    } else {
      const std::uint8_t tag = 0;
      out_.write(&tag, 1);
      save_u64(bytes.size());
      out_.write(bytes.data(), bytes.size());
    }
  }

 private:
  OutputStream& out_;
  BufferSink* sink_;
  bool canonical_;
  const void* last_code_ = nullptr;
};

/// cereal input archive of the codec, reading what EncodeArchive wrote.
/// Every count and size is checked against the bytes left (or against the
/// BufferSource) before anything is allocated.
class DecodeArchive : public cereal::InputArchive<DecodeArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit DecodeArchive(InputStream& in, BufferSource* source = nullptr)
      : cereal::InputArchive<DecodeArchive, cereal::AllowEmptyClassElision>(this), in_(in), source_(source) {}

  void loadBinary(void* data, std::size_t size) { in_.read(data, size); }
  std::uint64_t load_u64() {
    std::uint64_t v;
    in_.read(&v, sizeof v);
    return v;
  }
  std::size_t remaining() const noexcept { return in_.remaining(); }
  /// The code address last read as a portable reference (see EncodeArchive::last_code).
  void* last_code() const noexcept { return last_code_; }
  void set_last_code(void* p) noexcept { last_code_ = p; }

  /// Reads a container count and refuses one that the rest of the data
  /// cannot hold.
  std::uint64_t load_count() {
    const std::uint64_t n = load_u64();
    if (n > in_.remaining() + count_slack)
      throw_decode_error("a container claims " + std::to_string(n) + " elements but only " +
                         std::to_string(in_.remaining()) + " bytes are left");
    return n;
  }

  /// A buffer reference read from the structure: inline bytes or an index.
  struct BufferRef {
    bool out_of_band = false;
    std::uint64_t index = 0;
    std::size_t size = 0;
    std::span<const std::byte> bytes;  // the inline bytes
  };

  /// Reads a buffer reference and checks its size against the data left
  /// (inline) or the source (out of band).
  BufferRef load_buffer_ref() {
    std::uint8_t tag;
    in_.read(&tag, 1);
    BufferRef r;
    if (tag == 0) {
      const std::uint64_t size = load_u64();
      if (size > in_.remaining())
        throw_decode_error("an inline buffer of " + std::to_string(size) + " bytes but only " +
                           std::to_string(in_.remaining()) + " bytes are left");
      r.size = static_cast<std::size_t>(size);
      r.bytes = in_.take(r.size);
    } else if (tag == 1) {
      r.out_of_band = true;
      r.index = load_u64();
      const std::uint64_t size = load_u64();
      if (source_ == nullptr) throw_decode_error("an out-of-band buffer but no buffer source");
      if (source_->buffer_size(r.index) != size)
        throw_decode_error("buffer " + std::to_string(r.index) + " has " +
                           std::to_string(source_->buffer_size(r.index)) + " bytes, the structure says " +
                           std::to_string(size));
      r.size = static_cast<std::size_t>(size);
    } else {
      throw_decode_error("bad buffer tag " + std::to_string(tag));
    }
    return r;
  }

  /// Copies the buffer `r` into dest (dest.size() == r.size).
  void copy_buffer(const BufferRef& r, std::span<std::byte> dest) {
    if (dest.size() != r.size) throw_decode_error("buffer size mismatch");
    if (!r.out_of_band) {
      if (r.size != 0) std::memcpy(dest.data(), r.bytes.data(), r.size);
    } else {
      source_->read_into(r.index, dest);
    }
  }

  /// The buffer `r` as a shared block: the source's (possibly a mapping) or
  /// a fresh owned copy of inline bytes.
  SharedBuffer shared_buffer(const BufferRef& r) {
    if (r.out_of_band) {
      SharedBuffer b = source_->get(r.index);
      if (b.size != r.size) throw_decode_error("buffer size mismatch");
      return b;
    }
    SharedBuffer b = allocate_buffer(r.size, /*zero=*/false);
    if (r.size != 0) std::memcpy(b.data.get(), r.bytes.data(), r.size);
    return b;
  }

 private:
  InputStream& in_;
  BufferSource* source_;
  void* last_code_ = nullptr;
};

}  // namespace detail
}  // namespace joblib

CEREAL_REGISTER_ARCHIVE(joblib::detail::EncodeArchive)
CEREAL_REGISTER_ARCHIVE(joblib::detail::DecodeArchive)
CEREAL_SETUP_ARCHIVE_TRAITS(joblib::detail::DecodeArchive, joblib::detail::EncodeArchive)
