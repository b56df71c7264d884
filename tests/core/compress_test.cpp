// The compressors of dump/load (core/persist/compress.hpp) on their own:
// every method's stream round-trips and is recognised by its first bytes,
// joblib's rules choose the method and level, and bad streams are refused
// with FormatError.
#include "compress.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using joblib::Compress;
using joblib::detail::ByteReader;
using joblib::detail::ByteWriter;
using joblib::detail::CompressionSettings;
using joblib::detail::detect_method;
using joblib::detail::FormatError;
using joblib::detail::make_compressor;
using joblib::detail::make_decompressor;
using joblib::detail::Method;
using joblib::detail::method_name;
using joblib::detail::resolve_compression;

constexpr Method kMethods[] = {Method::zlib, Method::gzip, Method::bz2, Method::lzma,
                               Method::xz,   Method::lz4,  Method::zstd};

struct VectorWriter : ByteWriter {
  std::vector<std::byte> bytes;
  void write(std::span<const std::byte> b) override { bytes.insert(bytes.end(), b.begin(), b.end()); }
};

// Reads `bytes` in pieces of at most `piece` bytes (a short read is allowed).
struct VectorReader : ByteReader {
  explicit VectorReader(std::vector<std::byte> b, std::size_t piece = 4096) : bytes(std::move(b)), piece(piece) {}
  std::size_t read(std::span<std::byte> dest) override {
    const std::size_t n = std::min({dest.size(), bytes.size() - pos, piece});
    std::memcpy(dest.data(), bytes.data() + pos, n);
    pos += n;
    return n;
  }
  std::vector<std::byte> bytes;
  std::size_t piece, pos = 0;
};

std::vector<std::byte> sample(std::size_t n) {
  std::vector<std::byte> v(n);
  std::uint32_t x = 12345;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    v[i] = std::byte((i % 61 == 0) ? (x >> 24) : (i & 0x3f));  // compressible, not trivial
  }
  return v;
}

std::vector<std::byte> compress(Method m, int level, const std::vector<std::byte>& data) {
  VectorWriter out;
  auto c = make_compressor(CompressionSettings{m, level}, out);
  // Written in uneven pieces, as the store writes them.
  for (std::size_t pos = 0; pos < data.size();) {
    const std::size_t n = std::min<std::size_t>(data.size() - pos, 1000 + pos % 3333);
    c->write({data.data() + pos, n});
    pos += n;
  }
  c->finish();
  return out.bytes;
}

std::vector<std::byte> decompress(Method m, std::vector<std::byte> stream, std::size_t piece = 4096) {
  VectorReader in(std::move(stream), piece);
  auto d = make_decompressor(m, in);
  std::vector<std::byte> out;
  std::byte buf[5000];
  for (std::size_t n; (n = d->read(buf)) > 0;) out.insert(out.end(), buf, buf + n);
  return out;
}

std::string what_of_decompressing(Method m, std::vector<std::byte> stream) {
  try {
    decompress(m, std::move(stream));
  } catch (const FormatError& e) {
    return e.what();
  }
  return "no error";
}

TEST(CompressTest, EveryMethodRoundTripsAndIsRecognisedByItsFirstBytes) {
  const auto data = sample(1 << 20);
  for (Method m : kMethods) {
    SCOPED_TRACE(std::string(method_name(m)));
    const auto stream = compress(m, 1, data);
    EXPECT_LT(stream.size(), data.size() / 2);
    EXPECT_EQ(detect_method(std::span(stream).first(std::min<std::size_t>(stream.size(), 16))), m);
    EXPECT_EQ(decompress(m, stream), data);
    EXPECT_EQ(decompress(m, stream, 1), data);  // a reader that gives a byte at a time
  }
}

TEST(CompressTest, AnEmptyInputRoundTrips) {
  for (Method m : kMethods) {
    SCOPED_TRACE(std::string(method_name(m)));
    EXPECT_TRUE(decompress(m, compress(m, 3, {})).empty());
  }
}

TEST(CompressTest, PlainBytesAreNotTakenForACompressedStream) {
  EXPECT_EQ(detect_method(sample(64)), Method::none);
  const std::byte pickle[] = {std::byte{0x80}, std::byte{0x04}, std::byte{0x95}};
  EXPECT_EQ(detect_method(pickle), Method::none);
  EXPECT_EQ(detect_method({}), Method::none);
  // 0x78 starts a zlib stream only with a valid header check.
  const std::byte not_zlib[] = {std::byte{0x78}, std::byte{0x00}};
  EXPECT_EQ(detect_method(not_zlib), Method::none);
}

TEST(CompressTest, ATruncatedStreamIsAFormatErrorOfEveryMethod) {
  const auto data = sample(200000);
  for (Method m : kMethods) {
    SCOPED_TRACE(std::string(method_name(m)));
    auto stream = compress(m, 1, data);
    stream.resize(stream.size() / 2);
    EXPECT_EQ(what_of_decompressing(m, stream).rfind("truncated file", 0), 0u) << what_of_decompressing(m, stream);
  }
}

TEST(CompressTest, ACorruptedOrTrailedStreamIsAFormatErrorOfEveryMethod) {
  const auto data = sample(200000);
  for (Method m : kMethods) {
    SCOPED_TRACE(std::string(method_name(m)));
    auto stream = compress(m, 1, data);
    auto trailed = stream;
    trailed.push_back(std::byte{0x42});
    EXPECT_EQ(what_of_decompressing(m, trailed).rfind("corrupted file", 0), 0u) << what_of_decompressing(m, trailed);
    for (std::size_t i = stream.size() / 3; i < stream.size() / 3 + 64; ++i) stream[i] ^= std::byte{0x5a};
    const std::string what = what_of_decompressing(m, stream);
    EXPECT_TRUE(what.rfind("corrupted file", 0) == 0 || what.rfind("truncated file", 0) == 0) << what;
  }
}

TEST(CompressTest, TheExtensionChoosesTheMethodAsJoblibs) {
  auto r = resolve_compression("a.pkl.gz", Compress(0));
  EXPECT_EQ(r.method, Method::gzip);
  EXPECT_EQ(r.level, 3);  // the method's default level
  r = resolve_compression("a.pkl.xz", Compress(true));
  EXPECT_EQ(r.method, Method::xz);
  EXPECT_EQ(r.level, 6);
  r = resolve_compression("a.pkl", Compress(5));  // no extension named: zlib
  EXPECT_EQ(r.method, Method::zlib);
  EXPECT_EQ(r.level, 5);
  r = resolve_compression("a.pkl", Compress(0));
  EXPECT_EQ(r.method, Method::none);
  r = resolve_compression("a.pkl.gz", Compress("lz4", 2));  // an explicit method: the extension is not looked at
  EXPECT_EQ(r.method, Method::lz4);
  EXPECT_EQ(r.level, 2);
  r = resolve_compression("a.pkl.gz", Compress("zstd", 0));
  EXPECT_EQ(r.method, Method::none);
}

TEST(CompressTest, BadSettingsAreRefusedWithJoblibsMessages) {
  try {
    resolve_compression("a.pkl", Compress(10));
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "Non valid compress level given: \"10\". Possible values are [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].");
  }
  try {
    resolve_compression("a.pkl", Compress("snappy", 3));
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("Non valid compression method given: \"snappy\".", 0), 0u) << e.what();
  }
}

}  // namespace
