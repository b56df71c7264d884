// dump_python: a PyValue as a protocol 4 pickle, arrays in Python joblib's
// layout (joblib/numpy_pickle.py: a NumpyArrayWrapper object whose BUILD is
// followed by a padding byte, padding to 16 bytes and the array's bytes), so
// that joblib.load reads it, and pickle.load too when there is no array.
#include "compress.hpp"
#include "npy_format.hpp"
#include "pynode.hpp"
#include "store_io.hpp"

#include <joblib/errors.hpp>
#include <joblib/python.hpp>

#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <unordered_map>

namespace joblib {
namespace fs = std::filesystem;

namespace {

using detail::PyNode;

constexpr std::size_t kMaxDepth = 1000;
constexpr std::size_t kBatch = 1000;      // items per APPENDS / SETITEMS, as pickle.py
constexpr std::size_t kAlignment = 16;    // joblib's NUMPY_ARRAY_ALIGNMENT_BYTES

class Writer {
 public:
  Writer(detail::ByteWriter& sink, const fs::path& path) : sink_(sink), path_(path) {}

  void dump(const PyValue& v) {
    op(0x80);
    op(4);
    save(v.node().get(), 0);
    op('.');
    flush();
  }

 private:
  void op(std::uint8_t b) {
    buf_ += static_cast<char>(b);
    if (buf_.size() >= (1 << 16)) flush();
  }
  void bytes(const void* p, std::size_t n) {
    if (n >= (1 << 16)) {
      flush();
      sink_.write(std::span<const std::byte>(static_cast<const std::byte*>(p), n));
      pos_ += n;
      return;
    }
    buf_.append(static_cast<const char*>(p), n);
    if (buf_.size() >= (1 << 16)) flush();
  }
  template <class T>
  void little(T v) {
    unsigned char b[sizeof(T)];
    for (std::size_t k = 0; k < sizeof b; ++k) b[k] = static_cast<unsigned char>((static_cast<std::uint64_t>(v) >> (8 * k)) & 0xff);
    bytes(b, sizeof b);
  }
  void flush() {
    if (buf_.empty()) return;
    sink_.write(std::as_bytes(std::span<const char>(buf_.data(), buf_.size())));
    pos_ += buf_.size();
    buf_.clear();
  }
  std::uint64_t position() const { return pos_ + buf_.size(); }

  void memoize(const PyNode* n) {
    op(0x94);  // MEMOIZE
    memo_.emplace(n, next_memo_++);
  }
  bool from_memo(const PyNode* n) {
    const auto it = memo_.find(n);
    if (it == memo_.end()) return false;
    if (it->second < 256) {
      op('h');  // BINGET
      op(static_cast<std::uint8_t>(it->second));
    } else {
      op('j');  // LONG_BINGET
      little<std::uint32_t>(static_cast<std::uint32_t>(it->second));
    }
    return true;
  }

  void integer(std::int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      op(static_cast<std::uint8_t>(v));
    } else if (v >= 0 && v < 65536) {
      op('M');
      little<std::uint16_t>(static_cast<std::uint16_t>(v));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      little<std::uint32_t>(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)));
    } else {
      // LONG1: the shortest little-endian two's complement.
      std::string b;
      auto u = static_cast<std::uint64_t>(v);
      for (int k = 0; k < 8; ++k) b += static_cast<char>((u >> (8 * k)) & 0xff);
      while (b.size() > 1) {
        const auto last = static_cast<unsigned char>(b.back());
        const auto prev = static_cast<unsigned char>(b[b.size() - 2]);
        if ((last == 0x00 && !(prev & 0x80)) || (last == 0xff && (prev & 0x80)))
          b.pop_back();
        else
          break;
      }
      op(0x8a);
      op(static_cast<std::uint8_t>(b.size()));
      bytes(b.data(), b.size());
    }
  }
  void big_unsigned(std::uint64_t u) {
    op(0x8a);
    op(9);
    for (int k = 0; k < 8; ++k) op(static_cast<std::uint8_t>((u >> (8 * k)) & 0xff));
    op(0);
  }
  void floating(double f) {
    op('G');
    const auto bits = std::bit_cast<std::uint64_t>(f);
    for (int k = 7; k >= 0; --k) op(static_cast<std::uint8_t>((bits >> (8 * k)) & 0xff));
  }
  // A length-prefixed string: the 1-byte, 4-byte or 8-byte length opcode.
  void sized(std::uint8_t op1, std::uint8_t op4, std::uint8_t op8, std::string_view s) {
    if (s.size() < 256) {
      op(op1);
      op(static_cast<std::uint8_t>(s.size()));
    } else if (s.size() <= UINT32_MAX) {
      op(op4);
      little<std::uint32_t>(static_cast<std::uint32_t>(s.size()));
    } else {
      op(op8);
      little<std::uint64_t>(s.size());
    }
    bytes(s.data(), s.size());
  }
  void str(std::string_view s) { sized(0x8c, 'X', 0x8d, s); }        // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
  void raw_bytes(std::string_view s) { sized('C', 'B', 0x8e, s); }  // SHORT_BINBYTES, BINBYTES, BINBYTES8
  void global(std::string_view module, std::string_view name) {
    str(module);
    str(name);
    op(0x93);  // STACK_GLOBAL
  }

  void save(const PyNode* n, std::size_t depth) {
    if (depth > kMaxDepth)
      throw StoreError(fmt::format("joblib::dump_python: {}: the value is nested deeper than {} levels", path_.string(), kMaxDepth));
    if (!n) {
      op('N');
      return;
    }
    switch (n->kind) {
      case PyKind::none: op('N'); return;
      case PyKind::boolean: op(n->i ? 0x88 : 0x89); return;
      case PyKind::integer: n->big ? big_unsigned(n->u) : integer(n->i); return;
      case PyKind::floating: floating(n->f); return;
      case PyKind::complex:
        global("builtins", "complex");
        floating(n->f);
        floating(n->im);
        op(0x86);  // TUPLE2
        op('R');
        return;
      case PyKind::string:
      case PyKind::bytes:
        if (from_memo(n)) return;
        n->kind == PyKind::string ? str(n->s) : raw_bytes(n->s);
        memoize(n);
        return;
      case PyKind::list:
      case PyKind::set: {
        if (from_memo(n)) return;
        op(n->kind == PyKind::list ? ']' : 0x8f);
        memoize(n);
        const auto& items = n->c ? n->c->items : std::vector<PyValue>{};
        for (std::size_t at = 0; at < items.size(); at += kBatch) {
          op('(');
          for (std::size_t k = at; k < std::min(items.size(), at + kBatch); ++k) save(items[k].node().get(), depth + 1);
          op(n->kind == PyKind::list ? 'e' : 0x90);  // APPENDS / ADDITEMS
        }
        return;
      }
      case PyKind::tuple: {
        if (from_memo(n)) return;
        const auto& items = n->c ? n->c->items : std::vector<PyValue>{};
        if (items.empty()) {
          op(')');
          return;
        }
        if (items.size() > 3) op('(');
        for (const PyValue& v : items) save(v.node().get(), depth + 1);
        op(items.size() > 3 ? 't' : static_cast<std::uint8_t>(0x84 + items.size()));
        memoize(n);
        return;
      }
      case PyKind::dict: {
        if (from_memo(n)) return;
        op('}');
        memoize(n);
        const auto& items = n->c ? n->c->dict : std::vector<std::pair<PyValue, PyValue>>{};
        for (std::size_t at = 0; at < items.size(); at += kBatch) {
          op('(');
          for (std::size_t k = at; k < std::min(items.size(), at + kBatch); ++k) {
            save(items[k].first.node().get(), depth + 1);
            save(items[k].second.node().get(), depth + 1);
          }
          op('u');  // SETITEMS
        }
        return;
      }
      case PyKind::array: array(*n->array); return;
    }
  }

  // numpy.dtype('f8') as numpy pickles it: dtype('f8', False, True) then
  // BUILD (3, '<', None, None, None, -1, -1, 0).
  void dtype(const detail::AnyArray& a) {
    global("numpy", "dtype");
    str(fmt::format("{}{}", a.kind, a.item_size));
    op(0x89);
    op(0x88);
    op(0x87);  // TUPLE3
    op('R');
    op('(');
    integer(3);
    constexpr bool little_endian = std::endian::native == std::endian::little;
    str(a.item_size == 1 ? "|" : (little_endian ? "<" : ">"));
    op('N');
    op('N');
    op('N');
    integer(-1);
    integer(-1);
    integer(0);
    op('t');
    op('b');
  }

  void array(const detail::AnyArray& a) {
    global("joblib.numpy_pickle", "NumpyArrayWrapper");
    op(')');
    op(0x81);  // NEWOBJ
    op('}');
    op('(');
    str("subclass");
    global("numpy", "ndarray");
    str("shape");
    if (a.shape.size() > 3) op('(');
    for (std::size_t d : a.shape) integer(static_cast<std::int64_t>(d));
    op(a.shape.empty() ? ')' : a.shape.size() > 3 ? 't' : static_cast<std::uint8_t>(0x84 + a.shape.size()));
    str("order");
    str("C");
    str("dtype");
    dtype(a);
    str("allow_mmap");
    op(0x88);
    str("numpy_array_alignment_bytes");
    integer(static_cast<std::int64_t>(kAlignment));
    op('u');
    op('b');
    // joblib's write_array: a byte with the padding length, the padding
    // (0xff), then the data, so that the data starts at a multiple of 16.
    const std::uint64_t after = position() + 1;
    const auto pad = static_cast<std::uint8_t>(kAlignment - after % kAlignment);
    op(pad);
    for (std::uint8_t k = 0; k < pad; ++k) op(0xff);
    if (a.buffer.size != 0) bytes(a.buffer.data.get(), a.buffer.size);
  }

  detail::ByteWriter& sink_;
  const fs::path& path_;
  std::string buf_;
  std::uint64_t pos_ = 0;
  std::unordered_map<const PyNode*, std::uint32_t> memo_;
  std::uint32_t next_memo_ = 0;
};

}  // namespace

void dump_python(const PyValue& value, const fs::path& path, PythonDumpOptions options) {
  const detail::CompressionSettings settings = detail::resolve_compression(path, options.compress);
  if (settings.method == detail::Method::zstd)
    throw std::invalid_argument("joblib::dump_python: Python joblib does not read zstd; use zlib, gzip, bz2, lzma, xz or lz4");
  detail::TempFile tmp(path);
  detail::FdWriter file(tmp.fd(), tmp.path());
  if (settings.method == detail::Method::none) {
    Writer(file, path).dump(value);
  } else {
    std::unique_ptr<detail::Compressor> compressor = detail::make_compressor(settings, file);
    Writer(*compressor, path).dump(value);
    compressor->finish();
  }
  tmp.commit();
}

}  // namespace joblib
