// numpy's .npy format (numpy/lib/format.py): the magic "\x93NUMPY", a
// version (1.0: a 2-byte header length; 2.0: 4 bytes; 3.0: 4 bytes and a
// UTF-8 header), then a Python dict literal {'descr': '<f8',
// 'fortran_order': False, 'shape': (3, 4), } padded with spaces to a
// multiple of 64 bytes and ended by '\n', then the data.
#include "npy_format.hpp"
#include "store_io.hpp"

#include <joblib/errors.hpp>
#include <joblib/numpy.hpp>

#include <fmt/format.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

namespace joblib::detail {
namespace fs = std::filesystem;

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;
// numpy refuses headers over 10000 bytes unless told otherwise; a header of
// ours for 32 dimensions is far shorter. A cap keeps a hostile length cheap.
constexpr std::size_t kMaxHeader = 1 << 20;

[[noreturn]] void bad(const std::string& name, const std::string& why) {
  throw StoreError(fmt::format("{}: not a valid .npy file: {}", name, why));
}

// The header dict: a small parser for the literal numpy writes (and any
// equivalent spacing or quoting).
struct Header {
  std::string descr;
  bool fortran = false;
  std::vector<std::size_t> shape;
};

class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& path) : s_(text), path_(path) {}

  Header parse() {
    Header h;
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    for (;;) {
      skip();
      if (peek() == '}') break;
      const std::string key = string();
      expect(':');
      if (key == "descr") {
        skip();
        if (peek() != '\'' && peek() != '"')
          bad(path_, "its dtype is structured or not a plain numeric type (only numeric dtypes are read)");
        h.descr = string();
        have_descr = true;
      } else if (key == "fortran_order") {
        h.fortran = boolean();
        have_order = true;
      } else if (key == "shape") {
        h.shape = tuple();
        have_shape = true;
      } else {
        bad(path_, fmt::format("its header has an unknown key '{}'", key));
      }
      skip();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      skip();
      if (peek() != '}') bad(path_, "its header is not a dict literal");
    }
    expect('}');
    skip();
    if (i_ != s_.size()) bad(path_, "its header has text after the dict");
    if (!have_descr || !have_order || !have_shape)
      bad(path_, "its header lacks one of 'descr', 'fortran_order', 'shape'");
    return h;
  }

 private:
  void skip() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void expect(char c) {
    skip();
    if (peek() != c) bad(path_, fmt::format("its header is not a dict literal (expected '{}' at byte {})", c, i_));
    ++i_;
  }
  std::string string() {
    skip();
    const char q = peek();
    if (q != '\'' && q != '"') bad(path_, fmt::format("its header is not a dict literal (a string expected at byte {})", i_));
    ++i_;
    const std::size_t start = i_;
    while (i_ < s_.size() && s_[i_] != q) {
      if (s_[i_] == '\\') bad(path_, "its header has an escaped string");
      ++i_;
    }
    if (i_ >= s_.size()) bad(path_, "its header has an unterminated string");
    return std::string(s_.substr(start, i_++ - start));
  }
  bool boolean() {
    skip();
    if (s_.substr(i_, 4) == "True") {
      i_ += 4;
      return true;
    }
    if (s_.substr(i_, 5) == "False") {
      i_ += 5;
      return false;
    }
    bad(path_, "its 'fortran_order' is not True or False");
  }
  std::vector<std::size_t> tuple() {
    std::vector<std::size_t> out;
    expect('(');
    for (;;) {
      skip();
      if (peek() == ')') break;
      std::size_t v = 0;
      std::size_t digits = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const std::size_t d = static_cast<std::size_t>(peek() - '0');
        if (v > (std::numeric_limits<std::size_t>::max() - d) / 10) bad(path_, "its shape has a dimension too large");
        v = v * 10 + d;
        ++i_;
        ++digits;
      }
      skip();
      if (peek() == 'L') ++i_;  // Python 2's long
      if (digits == 0) bad(path_, "its shape is not a tuple of non-negative integers");
      out.push_back(v);
      if (out.size() > 64) bad(path_, "its shape has more than 64 dimensions");
      skip();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != ')') bad(path_, "its shape is not a tuple of non-negative integers");
    }
    expect(')');
    return out;
  }

  std::string_view s_;
  const std::string& path_;
  std::size_t i_ = 0;
};

// Fortran order (first index fastest) to C order (last index fastest).
void fortran_to_c(const std::byte* src, std::byte* dst, const std::vector<std::size_t>& shape, std::size_t item) {
  const std::size_t nd = shape.size();
  std::vector<std::size_t> fstride(nd), idx(nd, 0);
  std::size_t total = 1;
  for (std::size_t k = 0; k < nd; ++k) {
    fstride[k] = total;
    total *= shape[k];
  }
  std::size_t f = 0;
  for (std::size_t c = 0; c < total; ++c) {
    std::memcpy(dst + c * item, src + f * item, item);
    // next C-order index: the last dimension moves fastest
    for (std::size_t k = nd; k-- > 0;) {
      if (++idx[k] < shape[k]) {
        f += fstride[k];
        break;
      }
      f -= fstride[k] * (shape[k] - 1);
      idx[k] = 0;
    }
  }
}

// Swaps each item of `size` bytes (complex: each half on its own).
void byteswap(std::byte* p, std::size_t n_items, std::size_t size, char kind) {
  const std::size_t part = kind == 'c' ? size / 2 : size;
  const std::size_t parts = n_items * (size / part);
  for (std::size_t i = 0; i < parts; ++i) std::reverse(p + i * part, p + (i + 1) * part);
}

}  // namespace

void check_dtype(const AnyArray& a, char kind, std::size_t item_size, std::string_view what) {
  if (a.kind != kind || a.item_size != item_size)
    throw StoreError(fmt::format("{} holds {}, not {}", what, dtype_name(a.kind, a.item_size),
                                 dtype_name(kind, item_size)));
}

std::string dtype_name(char kind, std::size_t size) {
  switch (kind) {
    case 'b': return "bool";
    case 'i': return fmt::format("int{}", size * 8);
    case 'u': return fmt::format("uint{}", size * 8);
    case 'f': return fmt::format("float{}", size * 8);
    case 'c': return fmt::format("complex{}", size * 8);
    default: return fmt::format("'{}{}'", kind, size);
  }
}

bool parse_npy_descr(std::string_view d, NpyDescr& out, char order) {
  if (!d.empty() && (d[0] == '<' || d[0] == '>' || d[0] == '|' || d[0] == '=')) {
    order = d[0];
    d.remove_prefix(1);
  }
  if (d.size() < 2 || d.size() > 4) return false;
  out.kind = d[0];
  std::size_t size = 0;
  for (std::size_t k = 1; k < d.size(); ++k) {
    if (!std::isdigit(static_cast<unsigned char>(d[k]))) return false;
    size = size * 10 + static_cast<std::size_t>(d[k] - '0');
  }
  out.size = size;
  const bool known = (out.kind == 'b' && size == 1) ||
                     ((out.kind == 'i' || out.kind == 'u') && (size == 1 || size == 2 || size == 4 || size == 8)) ||
                     (out.kind == 'f' && (size == 4 || size == 8)) || (out.kind == 'c' && (size == 8 || size == 16));
  if (!known) return false;
  constexpr bool little = std::endian::native == std::endian::little;
  out.swapped = size > 1 && ((order == '>' && little) || (order == '<' && !little));
  return true;
}

std::size_t npy_checked_bytes(const std::vector<std::size_t>& shape, std::size_t item, const std::string& name,
                              std::string_view what) {
  std::size_t n = 1;
  for (std::size_t d : shape) {
    if (d != 0 && n > std::numeric_limits<std::size_t>::max() / d)
      throw StoreError(fmt::format("{}: {} has a shape whose size overflows", name, what));
    n *= d;
  }
  if (item != 0 && n > std::numeric_limits<std::size_t>::max() / item)
    throw StoreError(fmt::format("{}: {} has a shape whose size overflows", name, what));
  return n * item;
}

bool npy_fortran_differs(const std::vector<std::size_t>& shape) {
  return std::count_if(shape.begin(), shape.end(), [](std::size_t s) { return s > 1; }) > 1;
}

SharedBuffer npy_to_native(SharedBuffer raw, const NpyDescr& d, bool fortran, const std::vector<std::size_t>& shape,
                           std::size_t count) {
  if (count == 0) return raw;
  if (d.swapped) byteswap(raw.data.get(), count, d.size, d.kind);
  if (fortran && npy_fortran_differs(shape)) {
    SharedBuffer c_order = allocate_buffer(count * d.size, /*zero=*/false);
    fortran_to_c(raw.data.get(), c_order.data.get(), shape, d.size);
    raw = std::move(c_order);
  }
  if (d.kind == 'b')
    for (std::size_t i = 0; i < count; ++i)  // a bool must be 0 or 1
      if (std::to_integer<unsigned>(raw.data.get()[i]) > 1) raw.data.get()[i] = std::byte{1};
  return raw;
}

SharedBuffer npy_allocate(std::size_t bytes, const std::string& name) {
  try {
    return allocate_buffer(bytes, /*zero=*/false);
  } catch (const std::bad_alloc&) {
    throw StoreError(fmt::format("{}: it declares an array of {} bytes, more than can be allocated", name, bytes));
  }
}

NpyLayout read_npy_header(const NpyRead& read, const std::string& name) {
  std::byte pre[12] = {};
  std::size_t got = read(std::span<std::byte>(pre, 10));
  if (got < 10 || std::memcmp(pre, kMagic, kMagicLen) != 0) bad(name, "it does not start with numpy's magic \\x93NUMPY");
  const int major = static_cast<int>(pre[6]), minor = static_cast<int>(pre[7]);
  std::size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = static_cast<std::size_t>(pre[8]) | (static_cast<std::size_t>(pre[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (read(std::span<std::byte>(pre + 10, 2)) < 2) bad(name, "it is truncated in its header");
    for (int k = 3; k >= 0; --k) header_len = (header_len << 8) | static_cast<std::size_t>(pre[8 + k]);
    header_start = 12;
  } else {
    bad(name, fmt::format("its format version {}.{} is not 1.0, 2.0 or 3.0", major, minor));
  }
  if (minor != 0) bad(name, fmt::format("its format version {}.{} is not 1.0, 2.0 or 3.0", major, minor));
  if (header_len > kMaxHeader) bad(name, fmt::format("its header claims {} bytes (at most {} are read)", header_len, kMaxHeader));
  std::string header(header_len, '\0');
  if (read(std::as_writable_bytes(std::span<char>(header.data(), header.size()))) < header_len)
    bad(name, "it is truncated in its header");
  if (major < 3)
    for (char c : header)
      if (static_cast<unsigned char>(c) >= 0x80) bad(name, "its header is not latin-1 text");
  const Header h = HeaderParser(header, name).parse();
  NpyLayout out;
  if (h.descr.size() < 2 || !std::strchr("<>|=", h.descr[0]) || !parse_npy_descr(h.descr, out.descr))
    bad(name, fmt::format("its dtype '{}' is not one of b1, i1-i8, u1-u8, f4, f8, c8, c16", h.descr));
  out.descr_text = h.descr;
  out.fortran = h.fortran;
  out.shape = h.shape;
  out.bytes = npy_checked_bytes(h.shape, out.descr.size, name, "its array");
  out.count = out.bytes / out.descr.size;
  if (out.bytes == 0) out.count = 0;
  out.data_offset = header_start + header_len;
  return out;
}

std::string npy_header(char kind, std::size_t item_size, const std::vector<std::size_t>& shape) {
  constexpr bool little = std::endian::native == std::endian::little;
  const char order = item_size == 1 ? '|' : (little ? '<' : '>');
  // numpy's spelling: (), (3,) and (3, 4).
  std::string dims;
  for (std::size_t k = 0; k < shape.size(); ++k) dims += fmt::format("{}{}", k ? ", " : "", shape[k]);
  if (shape.size() == 1) dims += ",";
  const std::string dict =
      fmt::format("{{'descr': '{}{}{}', 'fortran_order': False, 'shape': ({}), }}", order, kind, item_size, dims);
  // Version 1.0 while the header length fits 2 bytes, else 2.0; the data
  // starts at a multiple of 64 bytes.
  int version = 1;
  std::size_t prefix = kMagicLen + 2 + 2;
  std::size_t total = (prefix + dict.size() + 1 + 63) / 64 * 64;
  if (total - prefix > 0xffff) {
    version = 2;
    prefix = kMagicLen + 2 + 4;
    total = (prefix + dict.size() + 1 + 63) / 64 * 64;
  }
  const std::size_t header_len = total - prefix;
  std::string head(kMagic, kMagicLen);
  head += static_cast<char>(version);
  head += '\0';
  for (int k = 0; k < (version == 1 ? 2 : 4); ++k) head += static_cast<char>((header_len >> (8 * k)) & 0xff);
  head += dict;
  head.append(total - head.size() - 1, ' ');
  head += '\n';
  return head;
}

NpyData load_npy_data(const fs::path& path, char kind, std::size_t item_size, MmapMode mode) {
  if (mode == MmapMode::w_plus)
    throw std::invalid_argument("joblib::load_npy: mmap_mode w+ would create a new file; use r, r+ or c");
  const int raw = ::open(path.c_str(), (mode == MmapMode::r_plus ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (raw < 0) throw fs::filesystem_error("joblib::load_npy: cannot open", path, std::error_code(errno, std::generic_category()));
  Fd fd(raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    throw fs::filesystem_error("joblib::load_npy: cannot open", path, std::error_code(errno, std::generic_category()));
  const std::string name = path.string();
  if (!S_ISREG(st.st_mode)) bad(name, "it is not a regular file");
  const std::size_t file_size = static_cast<std::size_t>(st.st_size);

  std::uint64_t pos = 0;
  const NpyLayout h = read_npy_header(
      [&](std::span<std::byte> dest) {
        const std::size_t n = pread_full(fd.get(), dest, pos, path);
        pos += n;
        return n;
      },
      name);
  const NpyDescr& d = h.descr;
  if (d.kind != kind || d.size != item_size)
    throw StoreError(fmt::format("{}: the .npy file holds {} ('{}'), not {}", name, dtype_name(d.kind, d.size),
                                 h.descr_text, dtype_name(kind, item_size)));
  const std::size_t offset = h.data_offset;
  const std::size_t bytes = h.bytes;
  if (file_size - offset < bytes)
    bad(name, fmt::format("its data is truncated: {} bytes for a shape of {} elements of {} bytes", file_size - offset,
                          h.count, item_size));

  NpyData out;
  out.shape = h.shape;
  if (bytes == 0) return out;

  if (mode != MmapMode::none) {
    if (d.swapped) bad(name, "its data is in the other byte order and cannot be mapped: load it without mmap_mode");
    if (h.fortran && npy_fortran_differs(h.shape))
      bad(name, "its data is in Fortran order and cannot be mapped as a C-order Array: load it without mmap_mode");
    if (offset % item_size != 0)  // item sizes are powers of two up to 16: their alignment
      bad(name, "its data is not aligned for mapping: load it without mmap_mode");
    std::shared_ptr<Mapping> mapping = map_file(fd.get(), file_size, mode, path);
    out.buffer.data = std::shared_ptr<std::byte>(mapping, mapping->addr + offset);
    out.buffer.size = bytes;
    out.buffer.writable = mode != MmapMode::r;
    out.buffer.mapped = true;
    out.buffer.file = std::make_shared<const std::string>(fs::absolute(path).string());
    return out;
  }

  SharedBuffer raw_data = npy_allocate(bytes, name);
  if (pread_full(fd.get(), std::span<std::byte>(raw_data.data.get(), bytes), offset, path) != bytes)
    bad(name, "its data is truncated (the file shrank while it was read)");
  out.buffer = npy_to_native(std::move(raw_data), d, h.fortran, h.shape, h.count);
  return out;
}

void save_npy_data(const fs::path& path, char kind, std::size_t item_size, const std::vector<std::size_t>& shape,
                   const std::byte* bytes) {
  const std::string head = npy_header(kind, item_size, shape);
  std::size_t n = 1;
  for (std::size_t dim : shape) n *= dim;
  TempFile tmp(path);
  write_all(tmp.fd(), std::as_bytes(std::span<const char>(head.data(), head.size())), tmp.path());
  if (n != 0) write_all(tmp.fd(), std::span<const std::byte>(bytes, n * item_size), tmp.path());
  tmp.commit();
}

}  // namespace joblib::detail
