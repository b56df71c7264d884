// numpy's .npy format (numpy/lib/format.py): the magic "\x93NUMPY", a
// version (1.0: a 2-byte header length; 2.0: 4 bytes; 3.0: 4 bytes and a
// UTF-8 header), then a Python dict literal {'descr': '<f8',
// 'fortran_order': False, 'shape': (3, 4), } padded with spaces to a
// multiple of 64 bytes and ended by '\n', then the data.
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

[[noreturn]] void bad(const fs::path& path, const std::string& why) {
  throw StoreError(fmt::format("{}: not a valid .npy file: {}", path.string(), why));
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

// The header dict: a small parser for the literal numpy writes (and any
// equivalent spacing or quoting).
struct Header {
  std::string descr;
  bool fortran = false;
  std::vector<std::size_t> shape;
};

class HeaderParser {
 public:
  HeaderParser(std::string_view text, const fs::path& path) : s_(text), path_(path) {}

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
  const fs::path& path_;
  std::size_t i_ = 0;
};

// "<f8" -> kind 'f', size 8, swapped (on this little-endian machine) when '>'.
struct Descr {
  char kind = 0;
  std::size_t size = 0;
  bool swapped = false;
};
Descr parse_descr(const std::string& d, const fs::path& path) {
  if (d.size() < 3) bad(path, fmt::format("its dtype '{}' is not a numeric dtype", d));
  Descr out;
  const char order = d[0];
  if (order != '<' && order != '>' && order != '|' && order != '=')
    bad(path, fmt::format("its dtype '{}' is not a numeric dtype", d));
  out.kind = d[1];
  std::size_t size = 0;
  for (std::size_t k = 2; k < d.size(); ++k) {
    if (!std::isdigit(static_cast<unsigned char>(d[k])) || size > 1000)
      bad(path, fmt::format("its dtype '{}' is not a numeric dtype", d));
    size = size * 10 + static_cast<std::size_t>(d[k] - '0');
  }
  out.size = size;
  const bool known = (out.kind == 'b' && size == 1) ||
                     ((out.kind == 'i' || out.kind == 'u') && (size == 1 || size == 2 || size == 4 || size == 8)) ||
                     (out.kind == 'f' && (size == 4 || size == 8)) || (out.kind == 'c' && (size == 8 || size == 16));
  if (!known) bad(path, fmt::format("its dtype '{}' is not one of b1, i1-i8, u1-u8, f4, f8, c8, c16", d));
  constexpr bool little = std::endian::native == std::endian::little;
  out.swapped = size > 1 && ((order == '>' && little) || (order == '<' && !little));
  return out;
}

std::size_t element_count(const std::vector<std::size_t>& shape, std::size_t item, const fs::path& path) {
  std::size_t n = 1;
  for (std::size_t d : shape) {
    if (d != 0 && n > std::numeric_limits<std::size_t>::max() / d) bad(path, "its shape's size overflows");
    n *= d;
  }
  if (item != 0 && n > std::numeric_limits<std::size_t>::max() / item) bad(path, "its shape's size overflows");
  return n;
}

// Swaps each item of `size` bytes (complex: each half on its own).
void byteswap(std::byte* p, std::size_t n_items, std::size_t size, char kind) {
  const std::size_t part = kind == 'c' ? size / 2 : size;
  const std::size_t parts = n_items * (size / part);
  for (std::size_t i = 0; i < parts; ++i) std::reverse(p + i * part, p + (i + 1) * part);
}

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

}  // namespace

NpyData load_npy_data(const fs::path& path, char kind, std::size_t item_size, MmapMode mode) {
  if (mode == MmapMode::w_plus)
    throw std::invalid_argument("joblib::load_npy: mmap_mode w+ would create a new file; use r, r+ or c");
  const int raw = ::open(path.c_str(), (mode == MmapMode::r_plus ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (raw < 0) throw fs::filesystem_error("joblib::load_npy: cannot open", path, std::error_code(errno, std::generic_category()));
  Fd fd(raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    throw fs::filesystem_error("joblib::load_npy: cannot open", path, std::error_code(errno, std::generic_category()));
  if (!S_ISREG(st.st_mode)) bad(path, "it is not a regular file");
  const std::size_t file_size = static_cast<std::size_t>(st.st_size);

  std::byte pre[12] = {};
  const std::size_t got = pread_full(fd.get(), std::span<std::byte>(pre, std::min<std::size_t>(12, file_size)), 0, path);
  if (got < 10 || std::memcmp(pre, kMagic, kMagicLen) != 0) bad(path, "it does not start with numpy's magic \\x93NUMPY");
  const int major = static_cast<int>(pre[6]), minor = static_cast<int>(pre[7]);
  std::size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = static_cast<std::size_t>(pre[8]) | (static_cast<std::size_t>(pre[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (got < 12) bad(path, "it is truncated in its header");
    header_len = 0;
    for (int k = 3; k >= 0; --k) header_len = (header_len << 8) | static_cast<std::size_t>(pre[8 + k]);
    header_start = 12;
  } else {
    bad(path, fmt::format("its format version {}.{} is not 1.0, 2.0 or 3.0", major, minor));
  }
  if (minor != 0) bad(path, fmt::format("its format version {}.{} is not 1.0, 2.0 or 3.0", major, minor));
  if (header_len > kMaxHeader) bad(path, fmt::format("its header claims {} bytes (at most {} are read)", header_len, kMaxHeader));
  if (header_start + header_len > file_size) bad(path, "it is truncated in its header");
  std::string header(header_len, '\0');
  pread_full(fd.get(), std::as_writable_bytes(std::span<char>(header.data(), header.size())), header_start, path);
  if (major < 3)
    for (char c : header)
      if (static_cast<unsigned char>(c) >= 0x80) bad(path, "its header is not latin-1 text");
  const Header h = HeaderParser(header, path).parse();
  const Descr d = parse_descr(h.descr, path);
  if (d.kind != kind || d.size != item_size)
    throw StoreError(fmt::format("{}: the .npy file holds {} ('{}'), not {}", path.string(), dtype_name(d.kind, d.size),
                                 h.descr, dtype_name(kind, item_size)));
  const std::size_t n = element_count(h.shape, item_size, path);
  const std::size_t offset = header_start + header_len;
  const std::size_t bytes = n * item_size;
  if (file_size - offset < bytes)
    bad(path, fmt::format("its data is truncated: {} bytes for a shape of {} elements of {} bytes", file_size - offset, n,
                          item_size));

  NpyData out;
  out.shape = h.shape;
  if (bytes == 0) return out;
  const bool fortran_layout = h.fortran && std::count_if(h.shape.begin(), h.shape.end(), [](std::size_t s) { return s > 1; }) > 1;

  if (mode != MmapMode::none) {
    if (d.swapped)
      bad(path, "its data is in the other byte order and cannot be mapped: load it without mmap_mode");
    if (fortran_layout)
      bad(path, "its data is in Fortran order and cannot be mapped as a C-order Array: load it without mmap_mode");
    if (offset % item_size != 0)  // item sizes are powers of two up to 16: their alignment
      bad(path, "its data is not aligned for mapping: load it without mmap_mode");
    std::shared_ptr<Mapping> mapping = map_file(fd.get(), file_size, mode, path);
    out.buffer.data = std::shared_ptr<std::byte>(mapping, mapping->addr + offset);
    out.buffer.size = bytes;
    out.buffer.writable = mode != MmapMode::r;
    out.buffer.mapped = true;
    out.buffer.file = std::make_shared<const std::string>(fs::absolute(path).string());
    return out;
  }

  SharedBuffer raw_data = allocate_buffer(bytes, /*zero=*/false);
  if (pread_full(fd.get(), std::span<std::byte>(raw_data.data.get(), bytes), offset, path) != bytes)
    bad(path, "its data is truncated (the file shrank while it was read)");
  if (d.swapped) byteswap(raw_data.data.get(), n, item_size, d.kind);
  if (fortran_layout) {
    SharedBuffer c_order = allocate_buffer(bytes, /*zero=*/false);
    fortran_to_c(raw_data.data.get(), c_order.data.get(), h.shape, item_size);
    raw_data = std::move(c_order);
  }
  if (kind == 'b')
    for (std::size_t i = 0; i < n; ++i)  // a bool must be 0 or 1
      if (std::to_integer<unsigned>(raw_data.data.get()[i]) > 1) raw_data.data.get()[i] = std::byte{1};
  out.buffer = std::move(raw_data);
  return out;
}

void save_npy_data(const fs::path& path, char kind, std::size_t item_size, const std::vector<std::size_t>& shape,
                   const std::byte* bytes) {
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

  std::size_t n = 1;
  for (std::size_t dim : shape) n *= dim;
  TempFile tmp(path);
  write_all(tmp.fd(), std::as_bytes(std::span<const char>(head.data(), head.size())), tmp.path());
  if (n != 0) write_all(tmp.fd(), std::span<const std::byte>(bytes, n * item_size), tmp.path());
  tmp.commit();
}

}  // namespace joblib::detail
