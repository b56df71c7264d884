#pragma once
// dump / load: persist any encodable value (see <joblib/codec.hpp>) to a
// file, optionally compressed, and load it back, with large arrays mapped
// from the file in constant time (joblib.dump / joblib.load).
//
//   joblib::dump(value, "data.joblib");                              // no compression
//   joblib::dump(value, "data.joblib", {.compress = 3});             // zlib, level 3
//   joblib::dump(value, "data.joblib", {.compress = {"zstd", 3}});   // method and level
//   joblib::dump(value, "data.joblib.lz4");                          // method from the extension
//   auto v = joblib::load<MyType>("data.joblib");
//   auto a = joblib::load<joblib::Array<double>>("big.joblib", {.mmap_mode = joblib::MmapMode::r});
//
// File layout (uncompressed): a 64-byte header (magic, format version, byte
// order, a fingerprint and the name of the stored type, sizes, a checksum of
// everything before the buffers), the structure (cereal binary), a table of
// buffers, then each large buffer at a 64-byte-aligned offset, so mapped
// arrays are 64-byte aligned. A compressed file is that same byte stream
// inside one standard zlib, gzip, bz2, lzma, xz, lz4-frame or zstd stream
// (`zstd -d file` gives a loadable, mappable dump). See docs/persistence.md.
#include <joblib/array.hpp>
#include <joblib/codec.hpp>
#include <joblib/errors.hpp>
#include <joblib/export.hpp>
#include <joblib/options.hpp>

#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace joblib {

/// How dump() compresses, as joblib's `compress` argument. Validated by
/// dump(), which throws std::invalid_argument with joblib's messages for a
/// level outside 0-9 or an unknown method.
struct Compress {
  /// joblib's compress=int: 0 writes an uncompressed file unless the file
  /// name's extension names a method (then that method at its default
  /// level); 1-9 compress at that level with the extension's method, zlib
  /// when the extension names none.
  Compress(int compress_level = 0) : level(compress_level) {}  // NOLINT: implicit on purpose ({.compress = 3})
  /// joblib's compress=True: the extension's method (else zlib) at its
  /// default level. false is the same as 0.
  Compress(bool on) : level(0), default_level(on) {}  // NOLINT: implicit on purpose
  /// joblib's compress=(method, level): "zlib", "gzip", "bz2", "lzma",
  /// "xz", "lz4" or "zstd"; the extension is not looked at; level 0 writes
  /// an uncompressed file.
  Compress(std::string compress_method, int compress_level = 3)
      : method(std::move(compress_method)), level(compress_level) {}
  Compress(const char* compress_method, int compress_level = 3) : method(compress_method), level(compress_level) {}

  std::string method{};        // "" = the extension's method, else zlib
  int level = 0;               // 0-9
  bool default_level = false;  // compress=True: the method's default level
};

/// Options of dump().
struct DumpOptions {
  Compress compress{};
};

/// Options of load().
struct LoadOptions {
  /// none: everything is read into memory. r, r+, w+ (as r+: the data is
  /// kept), c: every Array in an uncompressed file is mapped from the file,
  /// read-only (r), writable with writes reaching the file (r+, w+), or copy
  /// on write (c); nothing is copied. Other values are read into memory.
  /// On a compressed file a mapping is impossible: joblib's warning is
  /// printed once on stderr and the value is read into memory.
  MmapMode mmap_mode = MmapMode::none;
};

namespace detail {

/// A dump file opened and checked by open_dump(): its structure bytes and
/// a source for its buffers.
class JOBLIB_EXPORT OpenedDump {
 public:
  virtual ~OpenedDump();
  virtual std::span<const std::byte> structure() const noexcept = 0;
  virtual BufferSource& source() noexcept = 0;
};

/// Throws std::invalid_argument (joblib's messages) when `compress` has a
/// level outside 0-9 or an unknown method.
JOBLIB_EXPORT void validate_compress(const Compress& compress);

/// Writes a dump of a value of `type` whose encoding is `structure` plus
/// `buffers` (SpanSink order) to `file`, through a temporary file in the
/// same directory renamed at the end. Returns {file}.
JOBLIB_EXPORT std::vector<std::filesystem::path> write_dump(const std::filesystem::path& file,
                                                            const Compress& compress, const std::type_info& type,
                                                            std::span<const std::byte> structure,
                                                            std::span<const std::span<const std::byte>> buffers);

/// Opens and checks a dump that must hold a value of `type`; see load().
JOBLIB_EXPORT std::unique_ptr<OpenedDump> open_dump(const std::filesystem::path& file, const LoadOptions& options,
                                                    const std::type_info& type);

/// Throws StoreError("cannot load '<file>': corrupted file: <what>").
[[noreturn]] JOBLIB_EXPORT void throw_corrupted(const std::filesystem::path& file, const std::string& what);

}  // namespace detail

/// Writes `value` to `file` (joblib.dump) and returns the paths written,
/// {file}. The file is written under a temporary name in the same directory
/// and renamed when complete: a failed dump leaves no file behind and the
/// previous file, if any, untouched (arrays mapped from it stay valid). A
/// file replaced keeps its mode, and its owner and group when the process
/// may give them (as joblib, which truncates it in place).
/// Compile-time error for a type the codec cannot encode.
/// Throws std::invalid_argument for a bad `compress` (before anything is
/// written), SerializationError when the value cannot be encoded,
/// std::filesystem::filesystem_error when the file cannot be written (a file
/// size limit, RLIMIT_FSIZE, is one with EFBIG, not a SIGXFSZ).
/// Thread-safe (concurrent dumps to one file: the last rename wins).
template <class T>
std::vector<std::filesystem::path> dump(const T& value, const std::filesystem::path& file, DumpOptions options = {}) {
  static_assert(detail::is_encodable_v<T>, JOBLIB_DETAIL_NOT_ENCODABLE_MESSAGE);
  detail::validate_compress(options.compress);
  detail::MemoryOutput structure;
  detail::SpanSink sink;
  detail::encode(value, structure, &sink);
  return detail::write_dump(file, options.compress, typeid(T), structure.bytes(), sink.buffers());
}

/// Reads back a value of type T that dump() wrote to `file` (joblib.load).
/// The compression method is detected from the file's first bytes. With an
/// mmap_mode, Arrays in an uncompressed file are mapped (see LoadOptions).
/// Throws StoreError naming the file and what is wrong: "not a joblib-cpp
/// file", "truncated file", "corrupted file", "holds a value of another
/// type" (the stored type is named), "newer joblib-cpp file format"; never
/// crashes, hangs or allocates more than the file can hold (a size read
/// from a compressed stream is taken as its data arrives), and a file that
/// needs more memory than can be had (ulimit -v) is a StoreError too, never
/// std::bad_alloc. Throws std::filesystem::filesystem_error when the file
/// cannot be opened.
/// Thread-safe.
template <class T>
T load(const std::filesystem::path& file, LoadOptions options = {}) {
  static_assert(detail::is_encodable_v<T>, JOBLIB_DETAIL_NOT_ENCODABLE_MESSAGE);
  static_assert(detail::is_constructible_on_decode_v<T>,
                "joblib::load<T>: T needs a default constructor or a cereal load_and_construct");
  const std::unique_ptr<detail::OpenedDump> opened = detail::open_dump(file, options, typeid(T));
  try {
    return detail::decode<T>(opened->structure(), &opened->source());
  } catch (const SerializationError& e) {
    detail::throw_corrupted(file, e.what());
  }
}

}  // namespace joblib
