#pragma once
// The compressors of dump/load: standard zlib, gzip, bz2, lzma (alone), xz,
// lz4-frame and zstd streams over plain byte readers and writers, joblib's
// rules for choosing one, and detection from a file's first bytes.
#include <joblib/export.hpp>
#include <joblib/persistence.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

namespace joblib::detail {

enum class Method : std::uint8_t { none, zlib, gzip, bz2, lzma, xz, lz4, zstd };

struct CompressionSettings {
  Method method = Method::none;  // none: an uncompressed file
  int level = 0;                 // 1-9 when method != none
};

/// "zlib", "gzip", ... ("none" for Method::none).
JOBLIB_EXPORT std::string_view method_name(Method m) noexcept;

/// joblib's dump() rules: throws std::invalid_argument for a level outside
/// 0-9 ('Non valid compress level given: "10". Possible values are [0, ...,
/// 9].') or an unknown method ('Non valid compression method given: "x".
/// Possible values are [...].'), checked in that order.
JOBLIB_EXPORT void check_compress(const Compress& c);

/// Method and level dump() uses for `file`: an explicit method is taken as
/// is (level 0 = uncompressed); otherwise the last compressor whose
/// extension ends the file name wins (.z .gz .bz2 .lzma .xz .lz4 .zst), at
/// the given level or, for level 0 or compress=true, its default level;
/// with no matching extension a level 1-9 (or true) means zlib.
/// Throws as check_compress().
JOBLIB_EXPORT CompressionSettings resolve_compression(const std::filesystem::path& file, const Compress& c);

/// The method whose magic bytes start `head` (Method::none when none does):
/// zlib 78 (with a valid header check), gzip 1f 8b, bz2 "BZh", xz fd "7zXZ"
/// 00, lzma 5d 00 00, lz4 04 22 4d 18, zstd 28 b5 2f fd.
JOBLIB_EXPORT Method detect_method(std::span<const std::byte> head) noexcept;

/// A bad compressed stream; what() starts with "truncated file" or
/// "corrupted file". store.cpp adds the file name.
class JOBLIB_EXPORT FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Where compressed (or plain) bytes go.
class JOBLIB_EXPORT ByteWriter {
 public:
  virtual ~ByteWriter() = default;
  virtual void write(std::span<const std::byte> bytes) = 0;
};

/// Where compressed bytes come from: read() returns 0 only at the end.
class JOBLIB_EXPORT ByteReader {
 public:
  virtual ~ByteReader() = default;
  virtual std::size_t read(std::span<std::byte> dest) = 0;
};

/// Compresses what is written to it into `out` (a ByteWriter itself).
class JOBLIB_EXPORT Compressor : public ByteWriter {
 public:
  /// Ends the stream; nothing may be written after.
  virtual void finish() = 0;
};

/// A Compressor of method s.method at level s.level writing to `out`.
JOBLIB_EXPORT std::unique_ptr<Compressor> make_compressor(CompressionSettings s, ByteWriter& out);

/// Decompresses one stream read from `in`.
class JOBLIB_EXPORT Decompressor {
 public:
  virtual ~Decompressor() = default;
  /// Fills `dest`, or stops short at the end of the stream; returns the
  /// number of bytes written. At the end it checks that nothing follows the
  /// stream. Throws FormatError when the stream is truncated or corrupted.
  virtual std::size_t read(std::span<std::byte> dest) = 0;
};

/// A Decompressor of `method` (not Method::none) reading from `in`.
JOBLIB_EXPORT std::unique_ptr<Decompressor> make_decompressor(Method method, ByteReader& in);

}  // namespace joblib::detail
