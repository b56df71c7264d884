// The compiled half of the codec and of Array: buffer allocation, streams,
// error texts, the XXH3 hasher, the ready-made sinks and sources.
#include <joblib/codec.hpp>

#include <cxxabi.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace joblib {

BufferSink::~BufferSink() = default;
BufferSource::~BufferSource() = default;

void BufferSource::read_into(std::uint64_t index, std::span<std::byte> dest) {
  const detail::SharedBuffer b = get(index);
  if (b.size != dest.size())
    detail::throw_decode_error(fmt::format("buffer {} has {} bytes, {} expected", index, b.size, dest.size()));
  if (b.size != 0) std::memcpy(dest.data(), b.data.get(), b.size);
}

namespace detail {

// ---- Array support ------------------------------------------------------------

namespace {
// From this size on an owned buffer is its own anonymous mapping: zero pages
// for free, page aligned, returned to the system on release.
constexpr std::size_t mapped_allocation_threshold = std::size_t{1} << 20;
}  // namespace

SharedBuffer allocate_buffer(std::size_t bytes, bool zero) {
  SharedBuffer b;
  if (bytes == 0) return b;
  if (bytes >= mapped_allocation_threshold) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    // No MADV_HUGEPAGE: huge-page faults made an 800 MB load take 0.23 to
    // 2 s (compaction) against a steady 0.33 s with normal pages.
    b.data = std::shared_ptr<std::byte>(static_cast<std::byte*>(p), [bytes](std::byte* q) { ::munmap(q, bytes); });
  } else {
    void* p = ::operator new(bytes, std::align_val_t{buffer_alignment});
    if (zero) std::memset(p, 0, bytes);
    b.data = std::shared_ptr<std::byte>(static_cast<std::byte*>(p), [](std::byte* q) {
      ::operator delete(q, std::align_val_t{buffer_alignment});
    });
  }
  b.size = bytes;
  return b;
}

void throw_bad_shape(const std::string& what) { throw std::invalid_argument(what); }

std::size_t shape_size(std::span<const std::size_t> shape, std::size_t item_size) {
  if (std::find(shape.begin(), shape.end(), std::size_t{0}) != shape.end()) return 0;
  std::size_t n = 1;
  for (std::size_t d : shape) {
    if (n > std::numeric_limits<std::size_t>::max() / d)
      throw std::invalid_argument("joblib::Array: the shape's size overflows");
    n *= d;
  }
  if (item_size != 0 && n > std::numeric_limits<std::size_t>::max() / item_size)
    throw std::invalid_argument("joblib::Array: the shape's size in bytes overflows");
  return n;
}

// ---- errors ---------------------------------------------------------------------

void throw_decode_error(const std::string& what) { throw SerializationError("cannot decode: " + what); }

void throw_encode_error(const std::string& type, const std::string& why) {
  throw SerializationError(fmt::format("cannot encode a value of type {}: {}", type, why));
}

void throw_decode_type_error(const std::string& type, const std::string& why) {
  throw SerializationError(fmt::format("cannot decode a value of type {}: {}", type, why));
}

std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  return status == 0 && p ? std::string(p.get()) : std::string(mangled);
}

// ---- streams --------------------------------------------------------------------

OutputStream::~OutputStream() = default;
MemoryOutput::~MemoryOutput() = default;

void MemoryOutput::overflow(const void* p, std::size_t n) {
  const std::size_t used = size();
  const std::size_t capacity = static_cast<std::size_t>(end_ - buf_.get());
  std::size_t grown = std::max<std::size_t>(capacity * 2, 4096);
  if (grown - used < n) grown = used + n;
  std::unique_ptr<std::byte[]> next(new std::byte[grown]);
  if (used != 0) std::memcpy(next.get(), buf_.get(), used);
  buf_ = std::move(next);
  cur_ = buf_.get() + used;
  end_ = buf_.get() + grown;
  std::memcpy(cur_, p, n);
  cur_ += n;
}

// ---- hashing --------------------------------------------------------------------

namespace {

class HashStream final : public OutputStream {
 public:
  explicit HashStream(XXH3_state_t* state) : state_(state) { rewind(); }
  void flush() {
    if (cur_ != buf_) XXH3_128bits_update(state_, buf_, static_cast<std::size_t>(cur_ - buf_));
    rewind();
  }
  void rewind() noexcept {
    cur_ = buf_;
    end_ = buf_ + sizeof buf_;
  }

 private:
  void overflow(const void* p, std::size_t n) override {
    flush();
    if (n >= sizeof buf_) {
      XXH3_128bits_update(state_, p, n);
    } else {
      std::memcpy(cur_, p, n);
      cur_ += n;
    }
  }
  XXH3_state_t* state_;
  alignas(64) std::byte buf_[4096];
};

// Takes every buffer and feeds it to the digest in place, right after the
// structure bytes that precede it, so the digest covers the structure with
// each buffer's bytes at its reference: an unambiguous encoding.
class HashSink final : public BufferSink {
 public:
  HashSink(XXH3_state_t* state, HashStream& stream) : state_(state), stream_(stream) {}
  std::optional<std::uint64_t> put(std::span<const std::byte> bytes, BufferKind) override {
    stream_.flush();
    XXH3_128bits_update(state_, bytes.data(), bytes.size());
    return next_++;
  }
  void reset() noexcept { next_ = 0; }

 private:
  XXH3_state_t* state_;
  HashStream& stream_;
  std::uint64_t next_ = 0;
};

struct StateDeleter {
  void operator()(XXH3_state_t* s) const noexcept { XXH3_freeState(s); }
};

}  // namespace

struct Hasher::Impl {
  Impl() : state(XXH3_createState()), stream(state.get()), sink(state.get(), stream) {
    if (!state) throw std::bad_alloc();
    XXH3_128bits_reset(state.get());
  }
  std::unique_ptr<XXH3_state_t, StateDeleter> state;
  HashStream stream;
  HashSink sink;
};

Hasher::Hasher() : impl_(std::make_unique<Impl>()) {}
Hasher::~Hasher() = default;

Hasher& Hasher::update_bytes(std::span<const std::byte> bytes) {
  impl_->stream.flush();
  XXH3_128bits_update(impl_->state.get(), bytes.data(), bytes.size());
  return *this;
}

Hasher& Hasher::update_type(const std::type_info& type) {
  const char* name = type.name();
  const std::uint64_t n = std::strlen(name);
  impl_->stream.write(&n, sizeof n);
  impl_->stream.write(name, n);
  return *this;
}

Digest Hasher::digest() {
  impl_->stream.flush();
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(impl_->state.get()));
  Digest d;
  std::memcpy(d.data(), c.digest, d.size());
  return d;
}

std::string Hasher::hexdigest() {
  const Digest d = digest();
  std::string s;
  s.reserve(32);
  for (std::uint8_t b : d) s += fmt::format("{:02x}", b);
  return s;
}

void Hasher::reset() {
  impl_->stream.rewind();
  impl_->sink.reset();
  XXH3_128bits_reset(impl_->state.get());
}

OutputStream& Hasher::stream() noexcept { return impl_->stream; }
BufferSink& Hasher::sink() noexcept { return impl_->sink; }

std::string hash_bytes(std::span<const std::byte> bytes) {
  Hasher h;
  h.update_bytes(bytes);
  return h.hexdigest();
}

// ---- ready-made sinks and sources ---------------------------------------------------

SpanSink::~SpanSink() = default;

std::optional<std::uint64_t> SpanSink::put(std::span<const std::byte> bytes, BufferKind kind) {
  if (kind == BufferKind::vector && bytes.size() < min_vector_bytes_) return std::nullopt;
  buffers_.push_back(bytes);
  return buffers_.size() - 1;
}

SharedBufferSource::~SharedBufferSource() = default;

std::size_t SharedBufferSource::buffer_size(std::uint64_t index) const {
  if (index >= buffers_.size())
    throw_decode_error(fmt::format("buffer {} does not exist ({} buffers)", index, buffers_.size()));
  return buffers_[index].size;
}

SharedBuffer SharedBufferSource::get(std::uint64_t index) {
  buffer_size(index);
  return buffers_[index];
}

void SharedBufferSource::read_into(std::uint64_t index, std::span<std::byte> dest) {
  if (buffer_size(index) != dest.size())
    throw_decode_error(fmt::format("buffer {} has {} bytes, {} expected", index, buffers_[index].size, dest.size()));
  if (!dest.empty()) std::memcpy(dest.data(), buffers_[index].data.get(), dest.size());
}

}  // namespace detail
}  // namespace joblib
