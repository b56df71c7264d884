// load_python: a pickle reader (protocols 2-5) that builds PyValues and
// never runs anything. It is Python's pickle virtual machine (Lib/pickle.py,
// _Unpickler) restricted to building values: the only globals it takes are
// the handful in PyGlobal, each turned into a value by code here, and
// joblib's NumpyArrayWrapper, whose array bytes follow its BUILD opcode in
// the stream (joblib/numpy_pickle.py, NumpyArrayWrapper.read_array).
#include "compress.hpp"
#include "npy_format.hpp"
#include "pynode.hpp"
#include "store_io.hpp"

#include <joblib/errors.hpp>
#include <joblib/python.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <optional>
#include <unordered_map>
#include <unordered_set>

namespace joblib {
namespace fs = std::filesystem;

namespace {

using detail::AnyArray;
using detail::NpyDescr;
using detail::PyGlobal;
using detail::PyNode;
using detail::PySpecial;
using NodePtr = std::shared_ptr<PyNode>;

constexpr std::size_t kBuffer = 1 << 16;
constexpr std::size_t kMaxDepth = 1000;  // Python cannot pickle deeper than its recursion limit

// The stream the pickle is read from: the file itself, or its
// decompression. Tracks the position in the (decompressed) stream.
class Input {
 public:
  Input(int fd, const fs::path& path, std::uint64_t file_size, detail::Method method)
      : fd_(fd), path_(path), file_size_(file_size), fd_reader_(fd, path) {
    if (method != detail::Method::none) decompressor_ = detail::make_decompressor(method, fd_reader_);
  }

  bool compressed() const { return decompressor_ != nullptr; }
  std::uint64_t position() const { return pos_; }

  [[noreturn]] void truncated(std::string_view what) const {
    throw StoreError(fmt::format("{}: not a valid pickle: truncated in {} (at byte {})", path_.string(), what, pos_));
  }

  void read(void* dest, std::size_t n, std::string_view what) {
    auto* out = static_cast<std::byte*>(dest);
    while (n > 0) {
      if (begin_ == end_) {
        if (n >= kBuffer) {  // big reads go straight to the destination
          const std::size_t got = raw_read(std::span<std::byte>(out, n));
          if (got == 0) truncated(what);
          out += got;
          n -= got;
          pos_ += got;
          continue;
        }
        fill();
        if (begin_ == end_) truncated(what);
      }
      const std::size_t take = std::min(n, end_ - begin_);
      std::memcpy(out, buf_.data() + begin_, take);
      begin_ += take;
      out += take;
      n -= take;
      pos_ += take;
    }
  }

  std::uint8_t byte(std::string_view what) {
    std::uint8_t b;
    read(&b, 1, what);
    return b;
  }

  template <class T>
  T little(std::string_view what) {
    unsigned char b[sizeof(T)];
    read(b, sizeof b, what);
    T v = 0;
    for (std::size_t k = sizeof b; k-- > 0;) v = static_cast<T>((v << 8) | b[k]);
    return v;
  }

  // A string of `n` bytes that the stream must hold: memory grows only as
  // bytes arrive, so a hostile length costs nothing.
  std::string string(std::uint64_t n, std::string_view what) {
    if (!compressed() && n > left_in_file()) truncated(what);
    std::string out;
    while (out.size() < n) {
      const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n - out.size(), 1 << 20));
      const std::size_t at = out.size();
      out.resize(at + take);
      read(out.data() + at, take, what);
    }
    return out;
  }

  // A text line (GLOBAL's operands), without its '\n'.
  std::string line(std::string_view what) {
    std::string out;
    for (;;) {
      const char c = static_cast<char>(byte(what));
      if (c == '\n') return out;
      out += c;
      if (out.size() > 4096)
        throw StoreError(fmt::format("{}: not a valid pickle: a line of {} is over 4096 bytes", path_.string(), what));
    }
  }

  // Skips `n` bytes of an uncompressed file (a mapped array's data).
  void skip(std::uint64_t n, std::string_view what) {
    if (n > left_in_file()) truncated(what);
    const std::uint64_t buffered = end_ - begin_;
    if (n <= buffered) {
      begin_ += static_cast<std::size_t>(n);
    } else {
      file_offset_ += n - buffered;
      begin_ = end_ = 0;
    }
    pos_ += n;
  }

  // Bytes an uncompressed file has after the position.
  std::uint64_t left_in_file() const { return file_size_ - std::min(file_size_, pos_); }

 private:
  std::size_t raw_read(std::span<std::byte> dest) {
    try {
      if (decompressor_) return decompressor_->read(dest);
      const std::size_t n = detail::pread_full(fd_, dest, file_offset_, path_);
      file_offset_ += n;
      return n;
    } catch (const detail::FormatError& e) {
      throw StoreError(fmt::format("{}: {}", path_.string(), e.what()));
    }
  }

  void fill() {
    begin_ = 0;
    end_ = raw_read(std::span<std::byte>(buf_.data(), buf_.size()));
  }

  int fd_;
  const fs::path& path_;
  std::uint64_t file_size_;
  detail::FdReader fd_reader_;  // the decompressor's source
  std::unique_ptr<detail::Decompressor> decompressor_;
  std::vector<std::byte> buf_ = std::vector<std::byte>(kBuffer);
  std::size_t begin_ = 0, end_ = 0;
  std::uint64_t pos_ = 0;          // in the (decompressed) stream
  std::uint64_t file_offset_ = 0;  // next byte of an uncompressed file to read
};

NodePtr make(PyKind kind) {
  auto n = std::make_shared<PyNode>();
  n->kind = kind;
  return n;
}

std::optional<PyGlobal> known_global(std::string_view module, std::string_view name) {
  const bool builtins = module == "builtins" || module == "__builtin__";
  const bool numpy_core = module == "numpy.core.multiarray" || module == "numpy._core.multiarray";
  if (module == "joblib.numpy_pickle" && name == "NumpyArrayWrapper") return PyGlobal::wrapper;
  if ((module == "numpy" && (name == "ndarray" || name == "memmap")) ||
      ((module == "numpy.core.memmap" || module == "numpy._core.memmap") && name == "memmap"))
    return PyGlobal::ndarray;
  if (module == "numpy" && name == "dtype") return PyGlobal::dtype;
  if (numpy_core && name == "_reconstruct") return PyGlobal::reconstruct;
  if (numpy_core && name == "scalar") return PyGlobal::scalar;
  if ((module == "numpy.core.numeric" || module == "numpy._core.numeric") && name == "_frombuffer")
    return PyGlobal::frombuffer;
  if (builtins && name == "complex") return PyGlobal::complex;
  if (builtins && name == "set") return PyGlobal::set;
  if (builtins && name == "frozenset") return PyGlobal::frozenset;
  if (builtins && name == "bytearray") return PyGlobal::bytearray;
  if (builtins && name == "bytes") return PyGlobal::bytes;
  if (module == "_codecs" && name == "encode") return PyGlobal::encode;
  return std::nullopt;
}

// The pickle virtual machine.
class Reader {
 public:
  Reader(Input& in, const fs::path& path, MmapMode mode, int fd, std::uint64_t file_size)
      : in_(in), path_(path), name_(path.string()), mode_(mode), fd_(fd), file_size_(file_size) {}

  // Empties the containers that are not in a returned result (all of them
  // on failure): a cycle a hostile file made, kept or dropped, would
  // otherwise leak. (Deep trees need no help: ~PyNode frees them without
  // recursion.)
  ~Reader() {
    // Hold every container first, so that emptying one frees no other.
    std::vector<NodePtr> alive;
    alive.reserve(made_.size());
    for (const auto& weak : made_)
      if (auto n = weak.lock())
        if (n->c && !(done_ && reachable_.count(n.get()))) alive.push_back(std::move(n));
    for (const NodePtr& n : alive) {
      n->c->items.clear();
      n->c->dict.clear();
    }
  }

  PyValue run() {
    const std::uint8_t first = in_.byte("the protocol");
    if (first != 0x80)
      throw StoreError(fmt::format("{}: not a pickle of protocol 2 to 5 (it starts with byte 0x{:02x}, not the PROTO opcode 0x80){}",
                                   name_, first, in_.compressed() ? " after decompression" : ""));
    const std::uint8_t proto = in_.byte("the protocol");
    if (proto < 2 || proto > 5) bad(fmt::format("its protocol {} is not 2 to 5", proto));
    for (;;) {
      const std::uint8_t op = in_.byte("an opcode");
      if (op == '.') break;
      step(op);
    }
    if (stack_.empty()) bad("STOP with an empty stack");
    result_ = pop();
    check_result(result_);
    done_ = true;
    return PyValue(std::move(result_));
  }

 private:
  [[noreturn]] void bad(const std::string& why) const {
    throw StoreError(fmt::format("{}: not a valid pickle: {} (at byte {})", name_, why, in_.position()));
  }

  NodePtr track(NodePtr n) {
    made_.push_back(n);
    return n;
  }
  NodePtr container(PyKind kind) {
    auto n = make(kind);
    n->container();
    return track(std::move(n));
  }

  void push(NodePtr n) { stack_.push_back(std::move(n)); }
  NodePtr pop() {
    if (stack_.size() <= floor()) bad("an opcode pops an empty stack");
    NodePtr n = std::move(stack_.back());
    stack_.pop_back();
    return n;
  }
  NodePtr& top() {
    if (stack_.size() <= floor()) bad("an opcode reads an empty stack");
    return stack_.back();
  }
  std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<NodePtr> pop_mark() {
    if (marks_.empty()) bad("an opcode needs a MARK that is not there");
    const std::size_t at = marks_.back();
    marks_.pop_back();
    std::vector<NodePtr> out(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(at)),
                             std::make_move_iterator(stack_.end()));
    stack_.resize(at);
    return out;
  }

  NodePtr integer(std::int64_t v) {
    auto n = make(PyKind::integer);
    n->i = v;
    return n;
  }
  NodePtr text(std::string s, PyKind kind = PyKind::string) {
    auto n = make(kind);
    n->s = std::move(s);
    return n;
  }

  // LONG1 / LONG4: little-endian two's complement.
  NodePtr long_int(std::uint64_t n) {
    std::string b = in_.string(n, "a LONG");
    if (b.empty()) return integer(0);
    const bool negative = static_cast<unsigned char>(b.back()) & 0x80;
    // Drop the sign-extension bytes above the 8th.
    while (b.size() > 8 && static_cast<unsigned char>(b.back()) == (negative ? 0xff : 0x00)) b.pop_back();
    if (b.size() > 8) bad(fmt::format("an int of {} bytes does not fit 64 bits", b.size()));
    std::uint64_t u = 0;
    for (std::size_t k = b.size(); k-- > 0;) u = (u << 8) | static_cast<unsigned char>(b[k]);
    if (negative) {
      if (b.size() < 8) u |= ~std::uint64_t{0} << (8 * b.size());  // sign-extend
      return integer(static_cast<std::int64_t>(u));
    }
    // Positive with the top bit set: a ninth 0x00 byte was dropped above (a
    // value over INT64_MAX).
    if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      auto out = make(PyKind::integer);
      out->big = true;
      out->u = u;
      return out;
    }
    return integer(static_cast<std::int64_t>(u));
  }

  void memo_put(std::uint64_t key) { memo_[key] = top(); }
  NodePtr memo_get(std::uint64_t key) {
    const auto it = memo_.find(key);
    if (it == memo_.end()) bad(fmt::format("a memo key {} that was never stored", key));
    return it->second;
  }

  void global(std::string module, std::string name) {
    const std::optional<PyGlobal> g = known_global(module, name);
    if (!g)
      throw StoreError(fmt::format(
          "{}: refused: the pickle names {}.{}, which load_python does not read (it runs no code; it reads None, bool, "
          "int, float, complex, str, bytes, list, tuple, dict, set and numpy arrays)",
          name_, module, name));
    auto n = make(PyKind::none);
    n->special = PySpecial::global;
    n->global = *g;
    n->s = module + "." + name;
    push(std::move(n));
  }

  static bool is_global(const NodePtr& n, PyGlobal g) {
    return n && n->special == PySpecial::global && n->global == g;
  }

  const std::vector<PyValue>& tuple_items(const NodePtr& n, std::string_view what) {
    if (!n || n->kind != PyKind::tuple || n->special != PySpecial::none) bad(fmt::format("{} is not a tuple", what));
    return n->c->items;
  }

  // bytes from a bytes, bytearray or (protocol 2) latin-1 str.
  std::string byte_string(const NodePtr& n, std::string_view what) {
    if (n && n->special == PySpecial::none && n->kind == PyKind::bytes) return n->s;
    bad(fmt::format("{} is not bytes", what));
  }

  std::string latin1(const std::string& utf8) {
    std::string out;
    out.reserve(utf8.size());
    for (std::size_t i = 0; i < utf8.size(); ++i) {
      const auto c = static_cast<unsigned char>(utf8[i]);
      if (c < 0x80) {
        out += static_cast<char>(c);
      } else if ((c == 0xc2 || c == 0xc3) && i + 1 < utf8.size()) {
        out += static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(utf8[++i]) & 0x3f));
      } else {
        bad("a latin-1 encoded str holds a character above U+00FF");
      }
    }
    return out;
  }

  std::string latin1_to_utf8(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
      if (c < 0x80) {
        out += static_cast<char>(c);
      } else {
        out += static_cast<char>(0xc0 | (c >> 6));
        out += static_cast<char>(0x80 | (c & 0x3f));
      }
    }
    return out;
  }

  static bool is_int(const PyValue& v) { return v.kind() == PyKind::integer || v.kind() == PyKind::boolean; }

  std::vector<std::size_t> shape_of(const PyValue& v, std::string_view what) {
    std::vector<std::size_t> shape;
    if (v.kind() == PyKind::integer) {  // numpy accepts an int for a 1-d shape
      if (v.node()->big || v.node()->i < 0) bad(fmt::format("{} has a negative dimension", what));
      return {static_cast<std::size_t>(v.node()->i)};
    }
    if (v.kind() != PyKind::tuple && v.kind() != PyKind::list) bad(fmt::format("{} is not a tuple", what));
    for (const PyValue& d : v.items()) {
      if (!is_int(d) || d.node()->big || d.node()->i < 0)
        bad(fmt::format("{} is not a tuple of non-negative ints", what));
      shape.push_back(static_cast<std::size_t>(d.node()->i));
    }
    if (shape.size() > 64) bad(fmt::format("{} has more than 64 dimensions", what));
    return shape;
  }

  const NpyDescr& dtype_of(const PyValue& v, std::string_view what) {
    if (!v.node() || v.node()->special != PySpecial::dtype) bad(fmt::format("{} is not a numpy dtype", what));
    return v.node()->dtype;
  }

  // An array from raw bytes as numpy lays them out.
  NodePtr array_from_bytes(const std::string& raw, const NpyDescr& d, std::vector<std::size_t> shape, bool fortran,
                           std::string_view what) {
    const std::size_t bytes = detail::npy_checked_bytes(shape, d.size, name_, what);
    if (raw.size() != bytes)
      bad(fmt::format("{} has {} bytes of data for {} bytes of shape and dtype", what, raw.size(), bytes));
    detail::SharedBuffer buf;
    if (bytes != 0) {
      buf = detail::npy_allocate(bytes, name_);
      std::memcpy(buf.data.get(), raw.data(), bytes);
      buf = detail::npy_to_native(std::move(buf), d, fortran, shape, bytes / d.size);
    }
    auto n = make(PyKind::array);
    n->array = std::make_unique<AnyArray>(AnyArray{d.kind, d.size, std::move(shape), std::move(buf)});
    return n;
  }

  // Turns `n` into a value of `from` (in place: memo references see it).
  static void become(PyNode& n, NodePtr&& from) {
    n.kind = from->kind;
    n.special = from->special;
    n.big = from->big;
    n.i = from->i;
    n.u = from->u;
    n.f = from->f;
    n.im = from->im;
    n.s = std::move(from->s);
    n.c = std::move(from->c);
    n.array = std::move(from->array);
    n.dtype = from->dtype;
  }

  void reduce() {
    NodePtr args_node = pop();
    NodePtr callable = pop();
    if (!callable || callable->special != PySpecial::global)
      bad(fmt::format("REDUCE calls a {}, not a known class or function", detail::py_type_name(callable.get())));
    const auto& args = tuple_items(args_node, fmt::format("the arguments of {}", callable->s));
    const std::string who = callable->s;
    auto argc = [&](std::size_t lo, std::size_t hi) {
      if (args.size() < lo || args.size() > hi) bad(fmt::format("{} takes {} to {} arguments, not {}", who, lo, hi, args.size()));
    };
    switch (callable->global) {
      case PyGlobal::dtype: {
        argc(1, 3);
        if (args[0].kind() != PyKind::string) bad("numpy.dtype's argument is not a str");
        auto n = make(PyKind::none);
        n->special = PySpecial::dtype;
        if (!detail::parse_npy_descr(args[0].node()->s, n->dtype))
          throw StoreError(fmt::format("{}: the numpy dtype '{}' is not one of b1, i1-i8, u1-u8, f4, f8, c8, c16 "
                                       "(load_python reads numeric arrays only)",
                                       name_, args[0].node()->s));
        push(std::move(n));
        return;
      }
      case PyGlobal::reconstruct: {
        argc(3, 3);
        if (!is_global(args[0].node(), PyGlobal::ndarray)) bad(fmt::format("{} builds a {}, not an ndarray", who, args[0].repr()));
        auto n = make(PyKind::none);
        n->special = PySpecial::ndarray;
        push(std::move(n));
        return;
      }
      case PyGlobal::frombuffer: {
        argc(4, 4);
        const std::string raw = byte_string(args[0].node(), "numpy's _frombuffer data");
        const NpyDescr& d = dtype_of(args[1], "numpy's _frombuffer dtype");
        std::vector<std::size_t> shape = shape_of(args[2], "numpy's _frombuffer shape");
        if (args[3].kind() != PyKind::string || (args[3].node()->s != "C" && args[3].node()->s != "F"))
          bad("numpy's _frombuffer order is not 'C' or 'F'");
        push(array_from_bytes(raw, d, std::move(shape), args[3].node()->s == "F", "a numpy array"));
        return;
      }
      case PyGlobal::scalar: {
        argc(1, 2);
        const NpyDescr& d = dtype_of(args[0], "a numpy scalar's dtype");
        if (args.size() < 2) bad("a numpy scalar without data");
        std::string raw = byte_string(args[1].node(), "a numpy scalar's data");
        if (raw.size() != d.size) bad(fmt::format("a numpy scalar has {} bytes for a dtype of {}", raw.size(), d.size));
        if (d.swapped) {
          const std::size_t part = d.kind == 'c' ? d.size / 2 : d.size;
          for (std::size_t k = 0; k < d.size; k += part) std::reverse(raw.begin() + static_cast<std::ptrdiff_t>(k), raw.begin() + static_cast<std::ptrdiff_t>(k + part));
        }
        push(scalar(d, raw.data()));
        return;
      }
      case PyGlobal::complex: {
        argc(0, 2);
        auto n = make(PyKind::complex);
        for (std::size_t k = 0; k < args.size(); ++k) {
          const PyValue& a = args[k];
          if (a.kind() != PyKind::floating && a.kind() != PyKind::integer && a.kind() != PyKind::boolean)
            bad("complex() takes numbers here");
          const double v = a.kind() == PyKind::floating ? a.node()->f : (a.node()->big ? double(a.node()->u) : double(a.node()->i));
          (k == 0 ? n->f : n->im) = v;
        }
        push(std::move(n));
        return;
      }
      case PyGlobal::set:
      case PyGlobal::frozenset: {
        argc(0, 1);
        NodePtr s = container(PyKind::set);
        if (args.size() == 1) {
          const PyValue& a = args[0];
          if (a.kind() != PyKind::list && a.kind() != PyKind::tuple && a.kind() != PyKind::set)
            bad(fmt::format("{} takes a list here", who));
          for (const PyValue& v : a.items()) detail::py_set_add(*s, v, name_.c_str());
        }
        push(std::move(s));
        return;
      }
      case PyGlobal::bytearray:
      case PyGlobal::bytes: {
        argc(0, 3);
        std::string out;
        if (!args.empty()) {
          if (args[0].kind() == PyKind::bytes) {
            out = args[0].node()->s;
          } else if (args[0].kind() == PyKind::string && args.size() >= 2) {
            out = latin1(args[0].node()->s);
          } else if (args[0].kind() == PyKind::list) {
            for (const PyValue& v : args[0].items()) {
              if (v.kind() != PyKind::integer || v.node()->big || v.node()->i < 0 || v.node()->i > 255) bad("a byte is not 0-255");
              out += static_cast<char>(v.node()->i);
            }
          } else {
            bad(fmt::format("{} takes bytes here", who));
          }
        }
        push(text(std::move(out), PyKind::bytes));
        return;
      }
      case PyGlobal::encode: {
        argc(1, 2);
        if (args[0].kind() != PyKind::string) bad("_codecs.encode takes a str here");
        const std::string enc = args.size() > 1 && args[1].kind() == PyKind::string ? args[1].node()->s : "utf-8";
        if (enc == "latin1" || enc == "latin-1" || enc == "iso-8859-1")
          push(text(latin1(args[0].node()->s), PyKind::bytes));
        else if (enc == "utf-8" || enc == "utf8")
          push(text(args[0].node()->s, PyKind::bytes));
        else
          bad(fmt::format("_codecs.encode with the encoding '{}'", enc));
        return;
      }
      case PyGlobal::wrapper:
      case PyGlobal::ndarray: bad(fmt::format("REDUCE calls {}", who));
    }
  }

  NodePtr scalar(const NpyDescr& d, const char* p) {
    auto load = [&](auto tag) {
      decltype(tag) v;
      std::memcpy(&v, p, sizeof v);
      return v;
    };
    switch (d.kind) {
      case 'b': {
        auto n = make(PyKind::boolean);
        n->i = p[0] != 0;
        return n;
      }
      case 'i':
        switch (d.size) {
          case 1: return integer(load(std::int8_t{}));
          case 2: return integer(load(std::int16_t{}));
          case 4: return integer(load(std::int32_t{}));
          default: return integer(load(std::int64_t{}));
        }
      case 'u': {
        std::uint64_t u = 0;
        switch (d.size) {
          case 1: u = load(std::uint8_t{}); break;
          case 2: u = load(std::uint16_t{}); break;
          case 4: u = load(std::uint32_t{}); break;
          default: u = load(std::uint64_t{}); break;
        }
        return PyValue(u).node();
      }
      case 'f': {
        auto n = make(PyKind::floating);
        n->f = d.size == 4 ? double(load(float{})) : load(double{});
        return n;
      }
      default: {
        auto n = make(PyKind::complex);
        if (d.size == 8) {
          float re, im;
          std::memcpy(&re, p, 4);
          std::memcpy(&im, p + 4, 4);
          n->f = re;
          n->im = im;
        } else {
          std::memcpy(&n->f, p, 8);
          std::memcpy(&n->im, p + 8, 8);
        }
        return n;
      }
    }
  }

  void newobj(NodePtr cls, const NodePtr& args) {
    if (!is_global(cls, PyGlobal::wrapper))
      bad(fmt::format("NEWOBJ makes a {} ({}), not a NumpyArrayWrapper", detail::py_type_name(cls.get()), cls ? cls->s : "None"));
    if (!tuple_items(args, "NumpyArrayWrapper's arguments").empty()) bad("NumpyArrayWrapper is made with arguments");
    auto n = make(PyKind::none);
    n->special = PySpecial::wrapper;
    push(std::move(n));
  }

  void build() {
    NodePtr state = pop();
    NodePtr& obj = top();
    if (!obj) bad("BUILD on None");
    switch (obj->special) {
      case PySpecial::dtype: return build_dtype(*obj, state);
      case PySpecial::ndarray: return build_ndarray(*obj, state);
      case PySpecial::wrapper: return build_wrapper(*obj, state);
      default: bad(fmt::format("BUILD sets the state of a {}", detail::py_type_name(obj.get())));
    }
  }

  // numpy's dtype state: (version, byteorder, subdescr, names, fields,
  // elsize, alignment, flags[, metadata]).
  void build_dtype(PyNode& obj, const NodePtr& state) {
    const auto& s = tuple_items(state, "a numpy dtype's state");
    if (s.size() < 8) bad("a numpy dtype's state is too short");
    if (!s[3].is_none() || !s[4].is_none() || !s[2].is_none())
      throw StoreError(fmt::format("{}: a structured or sub-array numpy dtype is not read (numeric dtypes only)", name_));
    if (s[1].kind() != PyKind::string || s[1].node()->s.size() != 1) bad("a numpy dtype's byte order is not a character");
    const char order = s[1].node()->s[0];
    if (!std::strchr("<>|=", order)) bad(fmt::format("a numpy dtype's byte order '{}'", order));
    constexpr bool little = std::endian::native == std::endian::little;
    obj.dtype.swapped = obj.dtype.size > 1 && ((order == '>' && little) || (order == '<' && !little));
  }

  // numpy's ndarray state: ([version,] shape, dtype, is_fortran, rawdata).
  void build_ndarray(PyNode& obj, const NodePtr& state) {
    const auto& s = tuple_items(state, "a numpy array's state");
    if (s.size() != 4 && s.size() != 5) bad("a numpy array's state has neither 4 nor 5 items");
    const std::size_t o = s.size() == 5 ? 1 : 0;
    std::vector<std::size_t> shape = shape_of(s[o], "a numpy array's shape");
    const NpyDescr& d = dtype_of(s[o + 1], "a numpy array's dtype");
    if (s[o + 2].kind() != PyKind::boolean && s[o + 2].kind() != PyKind::integer) bad("a numpy array's is_fortran is not a bool");
    const bool fortran = s[o + 2].node()->i != 0;
    std::string raw;
    if (s[o + 3].kind() == PyKind::bytes)
      raw = s[o + 3].node()->s;
    else if (s[o + 3].kind() == PyKind::string)  // Python 2's str
      raw = latin1(s[o + 3].node()->s);
    else
      bad("a numpy array's data is not bytes");
    become(obj, array_from_bytes(raw, d, std::move(shape), fortran, "a numpy array"));
  }

  // joblib's NumpyArrayWrapper: its state says the array's shape, order and
  // dtype; the data follows in the stream.
  void build_wrapper(PyNode& obj, const NodePtr& state) {
    if (!state || state->kind != PyKind::dict || state->special != PySpecial::none)
      bad("a NumpyArrayWrapper's state is not a dict");
    const PyValue st(state);
    for (const char* key : {"shape", "order", "dtype"})
      if (!st.contains(key)) bad(fmt::format("a NumpyArrayWrapper's state has no '{}'", key));
    if (st.contains("subclass") && !is_global(st["subclass"].node(), PyGlobal::ndarray))
      bad("a NumpyArrayWrapper's subclass is not numpy.ndarray or numpy.memmap");
    std::vector<std::size_t> shape = shape_of(st["shape"], "a NumpyArrayWrapper's shape");
    const NpyDescr d = dtype_of(st["dtype"], "a NumpyArrayWrapper's dtype");
    const PyValue& order = st["order"];
    if (order.kind() != PyKind::string || (order.node()->s != "C" && order.node()->s != "F"))
      bad("a NumpyArrayWrapper's order is not 'C' or 'F'");
    const bool fortran = order.node()->s == "F";
    const bool allow_mmap = st.contains("allow_mmap") && st["allow_mmap"].kind() == PyKind::boolean && st["allow_mmap"].node()->i;
    const std::string what = fmt::format("the data of array {}", ++arrays_);
    if (st.contains("numpy_array_alignment_bytes") && !st["numpy_array_alignment_bytes"].is_none()) {
      const std::uint8_t pad = in_.byte(what);
      if (pad != 0) (void)in_.string(pad, what);
    }
    const std::size_t bytes = detail::npy_checked_bytes(shape, d.size, name_, what);
    const std::size_t count = bytes / d.size;
    detail::SharedBuffer buf;
    bool map = mode_ != MmapMode::none && allow_mmap && !in_.compressed() && bytes != 0;
    if (map) {
      // An array that is not a C-order, native, aligned block is read into
      // memory for r and c (neither lets writes reach the file); r+ promises
      // that writes do, so it is refused.
      const std::uint64_t offset = in_.position();
      const char* why = d.swapped                                             ? "is in the other byte order"
                        : (fortran && detail::npy_fortran_differs(shape))     ? "is in Fortran order"
                        : offset % d.size != 0                                ? "is not aligned (written by joblib < 1.2?)"
                                                                              : nullptr;
      if (why && mode_ == MmapMode::r_plus)
        throw StoreError(fmt::format("{}: array {} ({}, shape ({})) {} and cannot be mapped as a C-order Array for "
                                     "mmap_mode r+: load the file with r, c or without mmap_mode",
                                     name_, arrays_, detail::dtype_name(d.kind, d.size), fmt::join(shape, ", "), why));
      map = why == nullptr;
    }
    if (map) {
      const std::uint64_t offset = in_.position();
      if (bytes > in_.left_in_file()) in_.truncated(what);
      if (!mapping_) mapping_ = detail::map_file(fd_, file_size_, mode_, path_);
      buf.data = std::shared_ptr<std::byte>(mapping_, mapping_->addr + offset);
      buf.size = bytes;
      buf.writable = mode_ != MmapMode::r;
      buf.mapped = true;
      if (!file_) file_ = std::make_shared<const std::string>(fs::absolute(path_).string());
      buf.file = file_;
      in_.skip(bytes, what);
    } else if (bytes != 0) {
      if (!in_.compressed() && bytes > in_.left_in_file()) in_.truncated(what);
      buf = detail::npy_allocate(bytes, name_);
      in_.read(buf.data.get(), bytes, what);
      buf = detail::npy_to_native(std::move(buf), d, fortran, shape, count);
    }
    obj.special = PySpecial::none;
    obj.kind = PyKind::array;
    obj.array = std::make_unique<AnyArray>(AnyArray{d.kind, d.size, std::move(shape), std::move(buf)});
  }

  void step(std::uint8_t op) {
    switch (op) {
      case 0x95: (void)in_.little<std::uint64_t>("a FRAME"); return;  // FRAME: the opcodes follow as usual
      case 0x80: bad("a second PROTO opcode");
      case '(': marks_.push_back(stack_.size()); return;
      case '0': (void)pop(); return;
      case '1': (void)pop_mark(); return;
      case '2': push(top()); return;
      case 'N': push(nullptr); return;
      case 0x88:
      case 0x89: {
        auto n = make(PyKind::boolean);
        n->i = op == 0x88;
        push(std::move(n));
        return;
      }
      case 'J': push(integer(static_cast<std::int32_t>(in_.little<std::uint32_t>("a BININT")))); return;
      case 'K': push(integer(in_.byte("a BININT1"))); return;
      case 'M': push(integer(in_.little<std::uint16_t>("a BININT2"))); return;
      case 0x8a: push(long_int(in_.byte("a LONG1"))); return;
      case 0x8b: {
        const auto n = static_cast<std::int32_t>(in_.little<std::uint32_t>("a LONG4"));
        if (n < 0) bad("a LONG4 of negative length");
        push(long_int(static_cast<std::uint64_t>(n)));
        return;
      }
      case 'G': {
        std::uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | in_.byte("a BINFLOAT");
        auto n = make(PyKind::floating);
        n->f = std::bit_cast<double>(bits);
        push(std::move(n));
        return;
      }
      case 'X': push(text(in_.string(in_.little<std::uint32_t>("a BINUNICODE"), "a str"))); return;
      case 0x8c: push(text(in_.string(in_.byte("a SHORT_BINUNICODE"), "a str"))); return;
      case 0x8d: push(text(in_.string(in_.little<std::uint64_t>("a BINUNICODE8"), "a str"))); return;
      case 'B': push(text(in_.string(in_.little<std::uint32_t>("a BINBYTES"), "a bytes"), PyKind::bytes)); return;
      case 'C': push(text(in_.string(in_.byte("a SHORT_BINBYTES"), "a bytes"), PyKind::bytes)); return;
      case 0x8e: push(text(in_.string(in_.little<std::uint64_t>("a BINBYTES8"), "a bytes"), PyKind::bytes)); return;
      case 0x96: push(text(in_.string(in_.little<std::uint64_t>("a BYTEARRAY8"), "a bytearray"), PyKind::bytes)); return;
      case 'T': {  // Python 2's str, read as Python 3 reads it here: latin-1 text
        const auto n = static_cast<std::int32_t>(in_.little<std::uint32_t>("a BINSTRING"));
        if (n < 0) bad("a BINSTRING of negative length");
        push(text(latin1_to_utf8(in_.string(static_cast<std::uint64_t>(n), "a str"))));
        return;
      }
      case 'U': push(text(latin1_to_utf8(in_.string(in_.byte("a SHORT_BINSTRING"), "a str")))); return;
      case ']': push(container(PyKind::list)); return;
      case ')': {
        NodePtr n = container(PyKind::tuple);
        detail::py_finish_tuple(*n);
        push(std::move(n));
        return;
      }
      case '}': push(container(PyKind::dict)); return;
      case 0x8f: push(container(PyKind::set)); return;
      case 'l':
      case 't':
      case 0x91: {
        std::vector<NodePtr> items = pop_mark();
        NodePtr n = container(op == 'l' ? PyKind::list : op == 't' ? PyKind::tuple : PyKind::set);
        for (NodePtr& v : items) {
          if (op == 0x91)
            detail::py_set_add(*n, PyValue(std::move(v)), name_.c_str());
          else
            n->c->items.emplace_back(std::move(v));
        }
        if (op == 't') detail::py_finish_tuple(*n);
        push(std::move(n));
        return;
      }
      case 0x85:
      case 0x86:
      case 0x87: {
        const std::size_t k = op - 0x84u;
        if (stack_.size() < floor() + k) bad("a TUPLE opcode pops an empty stack");
        NodePtr n = container(PyKind::tuple);
        for (std::size_t j = stack_.size() - k; j < stack_.size(); ++j) n->c->items.emplace_back(std::move(stack_[j]));
        stack_.resize(stack_.size() - k);
        detail::py_finish_tuple(*n);
        push(std::move(n));
        return;
      }
      case 'd': {
        std::vector<NodePtr> items = pop_mark();
        if (items.size() % 2) bad("DICT with an odd number of items");
        NodePtr n = container(PyKind::dict);
        for (std::size_t k = 0; k < items.size(); k += 2)
          detail::py_dict_set(*n, PyValue(std::move(items[k])), PyValue(std::move(items[k + 1])), name_.c_str());
        push(std::move(n));
        return;
      }
      case 'a': {
        NodePtr v = pop();
        NodePtr& list = top();
        if (!list || list->kind != PyKind::list || list->special != PySpecial::none) bad("APPEND to a non-list");
        list->c->items.emplace_back(std::move(v));
        return;
      }
      case 'e': {
        std::vector<NodePtr> items = pop_mark();
        NodePtr& list = top();
        if (!list || list->kind != PyKind::list || list->special != PySpecial::none) bad("APPENDS to a non-list");
        for (NodePtr& v : items) list->c->items.emplace_back(std::move(v));
        return;
      }
      case 's': {
        NodePtr v = pop();
        NodePtr k = pop();
        NodePtr& d = top();
        if (!d || d->kind != PyKind::dict || d->special != PySpecial::none) bad("SETITEM on a non-dict");
        detail::py_dict_set(*d, PyValue(std::move(k)), PyValue(std::move(v)), name_.c_str());
        return;
      }
      case 'u': {
        std::vector<NodePtr> items = pop_mark();
        if (items.size() % 2) bad("SETITEMS with an odd number of items");
        NodePtr& d = top();
        if (!d || d->kind != PyKind::dict || d->special != PySpecial::none) bad("SETITEMS on a non-dict");
        for (std::size_t k = 0; k < items.size(); k += 2)
          detail::py_dict_set(*d, PyValue(std::move(items[k])), PyValue(std::move(items[k + 1])), name_.c_str());
        return;
      }
      case 0x90: {
        std::vector<NodePtr> items = pop_mark();
        NodePtr& s = top();
        if (!s || s->kind != PyKind::set || s->special != PySpecial::none) bad("ADDITEMS on a non-set");
        for (NodePtr& v : items) detail::py_set_add(*s, PyValue(std::move(v)), name_.c_str());
        return;
      }
      case 'c': {
        std::string module = in_.line("a GLOBAL");
        std::string name = in_.line("a GLOBAL");
        global(std::move(module), std::move(name));
        return;
      }
      case 0x93: {
        NodePtr name = pop();
        NodePtr module = pop();
        if (!module || module->kind != PyKind::string || !name || name->kind != PyKind::string)
          bad("STACK_GLOBAL's module and name are not str");
        global(module->s, name->s);
        return;
      }
      case 'R': reduce(); return;
      case 0x81: {
        NodePtr args = pop();
        NodePtr cls = pop();
        newobj(std::move(cls), args);
        return;
      }
      case 0x92: {
        NodePtr kwargs = pop();
        NodePtr args = pop();
        NodePtr cls = pop();
        if (!kwargs || kwargs->kind != PyKind::dict || (kwargs->c && !kwargs->c->dict.empty()))
          bad("NEWOBJ_EX with keyword arguments");
        newobj(std::move(cls), args);
        return;
      }
      case 'b': build(); return;
      case 'p': {
        const std::string digits = in_.line("a PUT");
        memo_put(std::strtoull(digits.c_str(), nullptr, 10));
        return;
      }
      case 'g': {
        const std::string digits = in_.line("a GET");
        push(memo_get(std::strtoull(digits.c_str(), nullptr, 10)));
        return;
      }
      case 'q': memo_put(in_.byte("a BINPUT")); return;
      case 'r': memo_put(in_.little<std::uint32_t>("a LONG_BINPUT")); return;
      case 0x94: memo_put(memo_.size()); return;
      case 'h': push(memo_get(in_.byte("a BINGET"))); return;
      case 'j': push(memo_get(in_.little<std::uint32_t>("a LONG_BINGET"))); return;
      case 'P':
      case 'Q': bad("a persistent id (PERSID), which load_python does not resolve");
      case 0x82:
      case 0x83:
      case 0x84: bad("an extension code (EXT1/2/4), which load_python does not resolve");
      case 'i':
      case 'o': bad("an INST or OBJ opcode (protocol 0/1 object construction)");
      case 0x97:
      case 0x98: bad("an out-of-band buffer (NEXT_BUFFER), which a file cannot carry");
      case 'I':
      case 'L':
      case 'F':
      case 'S':
      case 'V': bad(fmt::format("the protocol 0 text opcode '{}' (protocols 2-5 are read)", static_cast<char>(op)));
      default: bad(fmt::format("an unknown opcode 0x{:02x}", op));
    }
  }

  // The result: no reader-only node, no cycle, at most kMaxDepth levels.
  void check_result(const NodePtr& root) {
    // What is left on the stack is ignored, as Python does.
    std::unordered_set<const PyNode*>& finished = reachable_;
    std::unordered_set<const PyNode*> open;
    struct Frame {
      const PyNode* node;
      std::size_t next;
    };
    std::vector<Frame> path;
    auto children = [](const PyNode* n, std::size_t k) -> const PyNode* {
      // Child k of n, or a sentinel past the end.
      if (!n->c) return reinterpret_cast<const PyNode*>(1);
      if (n->kind == PyKind::dict) {
        if (k >= 2 * n->c->dict.size()) return reinterpret_cast<const PyNode*>(1);
        const auto& kv = n->c->dict[k / 2];
        return (k % 2 ? kv.second : kv.first).node().get();
      }
      if (k >= n->c->items.size()) return reinterpret_cast<const PyNode*>(1);
      return n->c->items[k].node().get();
    };
    auto visit = [&](const PyNode* n) {
      if (!n) return;
      if (n->special != PySpecial::none)
        throw StoreError(fmt::format("{}: the pickle leaves a {} in its value, which load_python does not read", name_,
                                     n->special == PySpecial::global ? n->s : detail::py_type_name(n)));
      if (!n->c || finished.count(n)) return;
      if (open.count(n)) throw StoreError(fmt::format("{}: the value holds itself (a recursive {}), which a PyValue cannot", name_, kind_name(n->kind)));
      if (path.size() >= kMaxDepth) throw StoreError(fmt::format("{}: the value is nested deeper than {} levels", name_, kMaxDepth));
      open.insert(n);
      path.push_back({n, 0});
    };
    visit(root.get());
    while (!path.empty()) {
      Frame& f = path.back();
      const PyNode* child = children(f.node, f.next++);
      if (child == reinterpret_cast<const PyNode*>(1)) {
        open.erase(f.node);
        finished.insert(f.node);
        path.pop_back();
        continue;
      }
      visit(child);
    }
  }

  Input& in_;
  const fs::path& path_;
  std::string name_;
  MmapMode mode_;
  int fd_;
  std::uint64_t file_size_;
  std::vector<NodePtr> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, NodePtr> memo_;
  std::vector<std::weak_ptr<PyNode>> made_;
  std::shared_ptr<detail::Mapping> mapping_;
  std::shared_ptr<const std::string> file_;
  NodePtr result_;
  std::unordered_set<const PyNode*> reachable_;  // the result's containers
  std::size_t arrays_ = 0;
  bool done_ = false;
};

}  // namespace

PyValue load_python(const fs::path& path, PythonLoadOptions options) {
  if (options.mmap_mode == MmapMode::w_plus)
    throw std::invalid_argument("joblib::load_python: mmap_mode w+ would create a new file; use r, r+ or c");
  const int raw = ::open(path.c_str(), (options.mmap_mode == MmapMode::r_plus ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (raw < 0) detail::throw_os_error("joblib::load_python: cannot open", path, errno);
  detail::Fd fd(raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) detail::throw_os_error("joblib::load_python: cannot open", path, errno);
  if (!S_ISREG(st.st_mode)) throw StoreError(fmt::format("{}: not a regular file", path.string()));
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  std::byte head[8] = {};
  const std::size_t got = detail::pread_full(fd.get(), std::span<std::byte>(head, 8), 0, path);
  if (got == 0) throw StoreError(fmt::format("{}: not a pickle: the file is empty", path.string()));
  const detail::Method method = detail::detect_method(std::span<const std::byte>(head, got));
  Input in(fd.get(), path, file_size, method);
  Reader reader(in, path, options.mmap_mode, fd.get(), file_size);
  return reader.run();
}

}  // namespace joblib
