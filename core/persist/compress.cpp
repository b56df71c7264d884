#include "compress.hpp"

#include <bzlib.h>
#include <fmt/format.h>
#include <lz4frame.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <new>

namespace joblib::detail {

namespace {

struct MethodInfo {
  Method method;
  std::string_view name;
  std::string_view extension;
  int default_level;  // the library's usual default, as joblib's compressor defaults
};

// joblib's _COMPRESSORS order (extension inference: the last match wins), plus zstd.
constexpr std::array<MethodInfo, 7> methods{{
    {Method::zlib, "zlib", ".z", 3},
    {Method::gzip, "gzip", ".gz", 3},
    {Method::bz2, "bz2", ".bz2", 9},
    {Method::lzma, "lzma", ".lzma", 6},
    {Method::xz, "xz", ".xz", 6},
    {Method::lz4, "lz4", ".lz4", 1},
    {Method::zstd, "zstd", ".zst", 3},
}};

const MethodInfo* find_method(std::string_view name) {
  for (const auto& m : methods)
    if (m.name == name) return &m;
  return nullptr;
}

int default_level(Method m) {
  for (const auto& i : methods)
    if (i.method == m) return i.default_level;
  return 3;
}

constexpr std::size_t chunk_size = std::size_t{1} << 20;  // compressed-side I/O granularity

// ---- compressors ----------------------------------------------------------

class ZlibCompressor final : public Compressor {
 public:
  ZlibCompressor(int level, bool gzip, ByteWriter& out) : out_(out), buf_(new std::byte[chunk_size]) {
    if (deflateInit2(&z_, level, Z_DEFLATED, gzip ? 15 + 16 : 15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
      throw std::bad_alloc();
  }
  ~ZlibCompressor() override { deflateEnd(&z_); }
  void write(std::span<const std::byte> in) override {
    while (!in.empty()) {
      const auto n = static_cast<uInt>(std::min<std::size_t>(in.size(), UINT_MAX));
      z_.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
      z_.avail_in = n;
      while (z_.avail_in != 0) run(Z_NO_FLUSH);
      in = in.subspan(n);
    }
  }
  void finish() override {
    z_.next_in = nullptr;
    z_.avail_in = 0;
    while (run(Z_FINISH) != Z_STREAM_END) {
    }
  }

 private:
  int run(int flush) {
    z_.next_out = reinterpret_cast<Bytef*>(buf_.get());
    z_.avail_out = static_cast<uInt>(chunk_size);
    const int r = deflate(&z_, flush);
    if (r == Z_STREAM_ERROR) throw std::runtime_error("zlib: deflate failed");
    out_.write({buf_.get(), chunk_size - z_.avail_out});
    return r;
  }
  ByteWriter& out_;
  std::unique_ptr<std::byte[]> buf_;
  z_stream z_{};
};

class Bz2Compressor final : public Compressor {
 public:
  Bz2Compressor(int level, ByteWriter& out) : out_(out), buf_(new std::byte[chunk_size]) {
    if (BZ2_bzCompressInit(&s_, level, 0, 0) != BZ_OK) throw std::bad_alloc();
  }
  ~Bz2Compressor() override { BZ2_bzCompressEnd(&s_); }
  void write(std::span<const std::byte> in) override {
    while (!in.empty()) {
      const auto n = static_cast<unsigned>(std::min<std::size_t>(in.size(), UINT_MAX));
      s_.next_in = reinterpret_cast<char*>(const_cast<std::byte*>(in.data()));
      s_.avail_in = n;
      while (s_.avail_in != 0) run(BZ_RUN);
      in = in.subspan(n);
    }
  }
  void finish() override {
    s_.next_in = nullptr;
    s_.avail_in = 0;
    while (run(BZ_FINISH) != BZ_STREAM_END) {
    }
  }

 private:
  int run(int action) {
    s_.next_out = reinterpret_cast<char*>(buf_.get());
    s_.avail_out = static_cast<unsigned>(chunk_size);
    const int r = BZ2_bzCompress(&s_, action);
    if (r < 0) throw std::runtime_error(fmt::format("bz2: compression failed ({})", r));
    out_.write({buf_.get(), chunk_size - s_.avail_out});
    return r;
  }
  ByteWriter& out_;
  std::unique_ptr<std::byte[]> buf_;
  bz_stream s_{};
};

class LzmaCompressor final : public Compressor {
 public:
  LzmaCompressor(int level, bool xz, ByteWriter& out) : out_(out), buf_(new std::byte[chunk_size]) {
    lzma_ret r;
    if (xz) {
      r = lzma_easy_encoder(&s_, static_cast<std::uint32_t>(level), LZMA_CHECK_CRC64);
    } else {
      lzma_options_lzma options;
      if (lzma_lzma_preset(&options, static_cast<std::uint32_t>(level))) throw std::runtime_error("lzma: bad preset");
      r = lzma_alone_encoder(&s_, &options);
    }
    if (r != LZMA_OK) throw std::bad_alloc();
  }
  ~LzmaCompressor() override { lzma_end(&s_); }
  void write(std::span<const std::byte> in) override {
    s_.next_in = reinterpret_cast<const std::uint8_t*>(in.data());
    s_.avail_in = in.size();
    while (s_.avail_in != 0) run(LZMA_RUN);
  }
  void finish() override {
    s_.next_in = nullptr;
    s_.avail_in = 0;
    while (run(LZMA_FINISH) != LZMA_STREAM_END) {
    }
  }

 private:
  lzma_ret run(lzma_action action) {
    s_.next_out = reinterpret_cast<std::uint8_t*>(buf_.get());
    s_.avail_out = chunk_size;
    const lzma_ret r = lzma_code(&s_, action);
    if (r != LZMA_OK && r != LZMA_STREAM_END) throw std::runtime_error(fmt::format("lzma: compression failed ({})", static_cast<int>(r)));
    out_.write({buf_.get(), chunk_size - s_.avail_out});
    return r;
  }
  ByteWriter& out_;
  std::unique_ptr<std::byte[]> buf_;
  lzma_stream s_ = LZMA_STREAM_INIT;
};

class Lz4Compressor final : public Compressor {
 public:
  Lz4Compressor(int level, ByteWriter& out) : out_(out) {
    prefs_.compressionLevel = level;
    prefs_.frameInfo.blockSizeID = LZ4F_max4MB;
    prefs_.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
    if (LZ4F_isError(LZ4F_createCompressionContext(&ctx_, LZ4F_VERSION))) throw std::bad_alloc();
    cap_ = LZ4F_compressBound(chunk_size, &prefs_);
    buf_.reset(new std::byte[cap_]);
    check(LZ4F_compressBegin(ctx_, buf_.get(), cap_, &prefs_), true);
  }
  ~Lz4Compressor() override { LZ4F_freeCompressionContext(ctx_); }
  void write(std::span<const std::byte> in) override {
    while (!in.empty()) {
      const std::size_t n = std::min(in.size(), chunk_size);
      check(LZ4F_compressUpdate(ctx_, buf_.get(), cap_, in.data(), n, nullptr), true);
      in = in.subspan(n);
    }
  }
  void finish() override { check(LZ4F_compressEnd(ctx_, buf_.get(), cap_, nullptr), true); }

 private:
  void check(std::size_t r, bool emit) {
    if (LZ4F_isError(r)) throw std::runtime_error(std::string("lz4: ") + LZ4F_getErrorName(r));
    if (emit) out_.write({buf_.get(), r});
  }
  ByteWriter& out_;
  LZ4F_preferences_t prefs_{};
  LZ4F_cctx* ctx_ = nullptr;
  std::size_t cap_ = 0;
  std::unique_ptr<std::byte[]> buf_;
};

class ZstdCompressor final : public Compressor {
 public:
  ZstdCompressor(int level, ByteWriter& out) : out_(out), ctx_(ZSTD_createCCtx()), buf_(new std::byte[chunk_size]) {
    if (ctx_ == nullptr) throw std::bad_alloc();
    ZSTD_CCtx_setParameter(ctx_, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(ctx_, ZSTD_c_checksumFlag, 1);
  }
  ~ZstdCompressor() override { ZSTD_freeCCtx(ctx_); }
  void write(std::span<const std::byte> data) override {
    ZSTD_inBuffer in{data.data(), data.size(), 0};
    while (in.pos < in.size) run(in, ZSTD_e_continue);
  }
  void finish() override {
    ZSTD_inBuffer in{nullptr, 0, 0};
    while (run(in, ZSTD_e_end) != 0) {
    }
  }

 private:
  std::size_t run(ZSTD_inBuffer& in, ZSTD_EndDirective mode) {
    ZSTD_outBuffer o{buf_.get(), chunk_size, 0};
    const std::size_t r = ZSTD_compressStream2(ctx_, &o, &in, mode);
    if (ZSTD_isError(r)) throw std::runtime_error(std::string("zstd: ") + ZSTD_getErrorName(r));
    out_.write({buf_.get(), o.pos});
    return r;
  }
  ByteWriter& out_;
  ZSTD_CCtx* ctx_;
  std::unique_ptr<std::byte[]> buf_;
};

// ---- decompressors ----------------------------------------------------------

// The compressed input not yet consumed.
class InputWindow {
 public:
  explicit InputWindow(ByteReader& in) : in_(in), buf_(new std::byte[chunk_size]) {}
  std::span<const std::byte> bytes() const noexcept { return {buf_.get() + pos_, len_ - pos_}; }
  void consume(std::size_t n) noexcept { pos_ += n; }
  // Moves what is left to the front and reads more after it; false when
  // nothing more could be read (end of the file, or the window is full).
  bool more() {
    if (eof_) return false;
    if (pos_ != 0) {
      std::memmove(buf_.get(), buf_.get() + pos_, len_ - pos_);
      len_ -= pos_;
      pos_ = 0;
    }
    if (len_ == chunk_size) return false;
    const std::size_t n = in_.read({buf_.get() + len_, chunk_size - len_});
    if (n == 0) eof_ = true;
    len_ += n;
    return n != 0;
  }
  // True when no byte is left, in the window or in the file.
  bool at_end() { return bytes().empty() && !more(); }
  // True once the file has no more bytes.
  bool eof() const noexcept { return eof_; }

 private:
  ByteReader& in_;
  std::unique_ptr<std::byte[]> buf_;
  std::size_t pos_ = 0, len_ = 0;
  bool eof_ = false;
};

struct Step {
  std::size_t consumed = 0;
  std::size_t produced = 0;
  bool ended = false;
};

// The loop every stream decoder shares: step, feed input when it stalls,
// tell truncation (input ends first) from corruption (the library says so,
// or bytes follow the end of the stream).
class StreamDecompressor : public Decompressor {
 public:
  StreamDecompressor(std::string_view name, ByteReader& in) : name_(name), window_(in) {}
  std::size_t read(std::span<std::byte> dest) final {
    std::size_t produced = 0;
    while (produced < dest.size() && !done_) {
      const Step s = step(window_.bytes(), dest.subspan(produced));
      window_.consume(s.consumed);
      produced += s.produced;
      if (s.ended) {
        done_ = true;
        if (!window_.at_end())
          throw FormatError(fmt::format("corrupted file: unexpected bytes after the end of the {} stream", name_));
        break;
      }
      if (s.consumed == 0 && s.produced == 0 && !window_.more()) {
        if (window_.eof()) throw FormatError(fmt::format("truncated file: the {} stream ends early", name_));
        throw FormatError(fmt::format("corrupted file: the {} stream cannot be decoded", name_));
      }
    }
    return produced;
  }

 protected:
  virtual Step step(std::span<const std::byte> in, std::span<std::byte> out) = 0;
  [[noreturn]] void corrupted(std::string_view why) const {
    throw FormatError(fmt::format("corrupted file: {}: {}", name_, why));
  }

 private:
  std::string_view name_;
  InputWindow window_;
  bool done_ = false;
};

class ZlibDecompressor final : public StreamDecompressor {
 public:
  ZlibDecompressor(bool gzip, ByteReader& in) : StreamDecompressor(gzip ? "gzip" : "zlib", in) {
    if (inflateInit2(&z_, gzip ? 15 + 16 : 15) != Z_OK) throw std::bad_alloc();
  }
  ~ZlibDecompressor() override { inflateEnd(&z_); }

 private:
  Step step(std::span<const std::byte> in, std::span<std::byte> out) override {
    const auto n_in = static_cast<uInt>(std::min<std::size_t>(in.size(), UINT_MAX));
    const auto n_out = static_cast<uInt>(std::min<std::size_t>(out.size(), UINT_MAX));
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
    z_.avail_in = n_in;
    z_.next_out = reinterpret_cast<Bytef*>(out.data());
    z_.avail_out = n_out;
    const int r = inflate(&z_, Z_NO_FLUSH);
    if (r == Z_MEM_ERROR) throw std::bad_alloc();
    if (r == Z_DATA_ERROR || r == Z_NEED_DICT || r == Z_STREAM_ERROR) corrupted(z_.msg ? z_.msg : "invalid data");
    return {n_in - z_.avail_in, n_out - z_.avail_out, r == Z_STREAM_END};
  }
  z_stream z_{};
};

class Bz2Decompressor final : public StreamDecompressor {
 public:
  explicit Bz2Decompressor(ByteReader& in) : StreamDecompressor("bz2", in) {
    if (BZ2_bzDecompressInit(&s_, 0, 0) != BZ_OK) throw std::bad_alloc();
  }
  ~Bz2Decompressor() override { BZ2_bzDecompressEnd(&s_); }

 private:
  Step step(std::span<const std::byte> in, std::span<std::byte> out) override {
    const auto n_in = static_cast<unsigned>(std::min<std::size_t>(in.size(), UINT_MAX));
    const auto n_out = static_cast<unsigned>(std::min<std::size_t>(out.size(), UINT_MAX));
    s_.next_in = reinterpret_cast<char*>(const_cast<std::byte*>(in.data()));
    s_.avail_in = n_in;
    s_.next_out = reinterpret_cast<char*>(out.data());
    s_.avail_out = n_out;
    const int r = BZ2_bzDecompress(&s_);
    if (r == BZ_MEM_ERROR) throw std::bad_alloc();
    if (r != BZ_OK && r != BZ_STREAM_END) corrupted(r == BZ_DATA_ERROR_MAGIC ? "bad magic" : "invalid data");
    return {n_in - s_.avail_in, n_out - s_.avail_out, r == BZ_STREAM_END};
  }
  bz_stream s_{};
};

class LzmaDecompressor final : public StreamDecompressor {
 public:
  // A dictionary larger than this is refused before it is allocated: xz -9
  // (and every preset of Python's lzma module) needs 64 MiB, and a 100-byte
  // file must not take gigabytes.
  static constexpr std::uint64_t memory_limit = std::uint64_t{256} << 20;
  LzmaDecompressor(bool xz, ByteReader& in) : StreamDecompressor(xz ? "xz" : "lzma", in) {
    const lzma_ret r = xz ? lzma_stream_decoder(&s_, memory_limit, 0) : lzma_alone_decoder(&s_, memory_limit);
    if (r != LZMA_OK) throw std::bad_alloc();
  }
  ~LzmaDecompressor() override { lzma_end(&s_); }

 private:
  Step step(std::span<const std::byte> in, std::span<std::byte> out) override {
    s_.next_in = reinterpret_cast<const std::uint8_t*>(in.data());
    s_.avail_in = in.size();
    s_.next_out = reinterpret_cast<std::uint8_t*>(out.data());
    s_.avail_out = out.size();
    const lzma_ret r = lzma_code(&s_, LZMA_RUN);
    switch (r) {
      case LZMA_OK:
      case LZMA_STREAM_END:
      case LZMA_BUF_ERROR:
        break;
      case LZMA_MEM_ERROR:
        corrupted("the stream asks for more decoder memory than can be had");
      case LZMA_MEMLIMIT_ERROR:
        corrupted(fmt::format("the stream asks for more than {} MiB of decoder memory", memory_limit >> 20));
      default:
        corrupted(fmt::format("invalid data (error {})", static_cast<int>(r)));
    }
    return {in.size() - s_.avail_in, out.size() - s_.avail_out, r == LZMA_STREAM_END};
  }
  lzma_stream s_ = LZMA_STREAM_INIT;
};

class Lz4Decompressor final : public StreamDecompressor {
 public:
  explicit Lz4Decompressor(ByteReader& in) : StreamDecompressor("lz4", in) {
    if (LZ4F_isError(LZ4F_createDecompressionContext(&ctx_, LZ4F_VERSION))) throw std::bad_alloc();
  }
  ~Lz4Decompressor() override { LZ4F_freeDecompressionContext(ctx_); }

 private:
  Step step(std::span<const std::byte> in, std::span<std::byte> out) override {
    std::size_t n_in = in.size(), n_out = out.size();
    const std::size_t r = LZ4F_decompress(ctx_, out.data(), &n_out, in.data(), &n_in, nullptr);
    if (LZ4F_isError(r)) corrupted(LZ4F_getErrorName(r));
    return {n_in, n_out, r == 0};
  }
  LZ4F_dctx* ctx_ = nullptr;
};

class ZstdDecompressor final : public StreamDecompressor {
 public:
  explicit ZstdDecompressor(ByteReader& in) : StreamDecompressor("zstd", in), ctx_(ZSTD_createDCtx()) {
    if (ctx_ == nullptr) throw std::bad_alloc();
  }
  ~ZstdDecompressor() override { ZSTD_freeDCtx(ctx_); }

 private:
  Step step(std::span<const std::byte> in, std::span<std::byte> out) override {
    ZSTD_inBuffer i{in.data(), in.size(), 0};
    ZSTD_outBuffer o{out.data(), out.size(), 0};
    const std::size_t r = ZSTD_decompressStream(ctx_, &o, &i);
    if (ZSTD_isError(r)) corrupted(ZSTD_getErrorName(r));
    return {i.pos, o.pos, r == 0};
  }
  ZSTD_DCtx* ctx_;
};

}  // namespace

std::string_view method_name(Method m) noexcept {
  for (const auto& i : methods)
    if (i.method == m) return i.name;
  return "none";
}

void check_compress(const Compress& c) {
  if (!c.default_level && (c.level < 0 || c.level > 9))
    throw std::invalid_argument(fmt::format(
        "Non valid compress level given: \"{}\". Possible values are [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].", c.level));
  if (!c.method.empty() && find_method(c.method) == nullptr)
    throw std::invalid_argument(
        fmt::format("Non valid compression method given: \"{}\". Possible values are "
                    "['zlib', 'gzip', 'bz2', 'lzma', 'xz', 'lz4', 'zstd'].",
                    c.method));
}

CompressionSettings resolve_compression(const std::filesystem::path& file, const Compress& c) {
  check_compress(c);
  if (!c.method.empty()) {  // joblib's (method, level) tuple: no extension inference
    if (c.level == 0) return {};
    return {find_method(c.method)->method, c.level};
  }
  Method method = Method::none;
  const std::string& name = file.native();
  for (const auto& m : methods)
    if (name.size() >= m.extension.size() && name.ends_with(m.extension)) method = m.method;
  int level = c.level;
  if (c.default_level || (method != Method::none && level == 0))
    level = default_level(method == Method::none ? Method::zlib : method);
  if (level == 0) return {};
  return {method == Method::none ? Method::zlib : method, level};
}

Method detect_method(std::span<const std::byte> head) noexcept {
  auto starts = [&](std::initializer_list<unsigned> magic) {
    if (head.size() < magic.size()) return false;
    std::size_t i = 0;
    for (unsigned b : magic)
      if (std::to_integer<unsigned>(head[i++]) != b) return false;
    return true;
  };
  if (starts({0x28, 0xb5, 0x2f, 0xfd})) return Method::zstd;
  if (starts({0x04, 0x22, 0x4d, 0x18})) return Method::lz4;
  if (starts({0xfd, '7', 'z', 'X', 'Z', 0x00})) return Method::xz;
  if (starts({0x1f, 0x8b})) return Method::gzip;
  if (starts({'B', 'Z', 'h'})) return Method::bz2;
  if (starts({0x5d, 0x00, 0x00})) return Method::lzma;
  if (head.size() >= 2 && std::to_integer<unsigned>(head[0]) == 0x78 &&
      ((std::to_integer<unsigned>(head[0]) << 8) | std::to_integer<unsigned>(head[1])) % 31 == 0)
    return Method::zlib;
  return Method::none;
}

std::unique_ptr<Compressor> make_compressor(CompressionSettings s, ByteWriter& out) {
  switch (s.method) {
    case Method::zlib: return std::make_unique<ZlibCompressor>(s.level, false, out);
    case Method::gzip: return std::make_unique<ZlibCompressor>(s.level, true, out);
    case Method::bz2: return std::make_unique<Bz2Compressor>(s.level, out);
    case Method::lzma: return std::make_unique<LzmaCompressor>(s.level, false, out);
    case Method::xz: return std::make_unique<LzmaCompressor>(s.level, true, out);
    case Method::lz4: return std::make_unique<Lz4Compressor>(s.level, out);
    case Method::zstd: return std::make_unique<ZstdCompressor>(s.level, out);
    case Method::none: break;
  }
  throw std::logic_error("make_compressor: no method");
}

std::unique_ptr<Decompressor> make_decompressor(Method method, ByteReader& in) {
  switch (method) {
    case Method::zlib: return std::make_unique<ZlibDecompressor>(false, in);
    case Method::gzip: return std::make_unique<ZlibDecompressor>(true, in);
    case Method::bz2: return std::make_unique<Bz2Decompressor>(in);
    case Method::lzma: return std::make_unique<LzmaDecompressor>(false, in);
    case Method::xz: return std::make_unique<LzmaDecompressor>(true, in);
    case Method::lz4: return std::make_unique<Lz4Decompressor>(in);
    case Method::zstd: return std::make_unique<ZstdDecompressor>(in);
    case Method::none: break;
  }
  throw std::logic_error("make_decompressor: no method");
}

}  // namespace joblib::detail
