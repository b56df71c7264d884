// PyValue: constructors, accessors and Python's hashing rules for keys.
#include "pynode.hpp"

#include <joblib/errors.hpp>

#include <fmt/format.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

namespace joblib {
namespace detail {

namespace {

std::shared_ptr<PyNode> make(PyKind kind) {
  auto n = std::make_shared<PyNode>();
  n->kind = kind;
  return n;
}

PyDigest hash_bytes(const void* p, std::size_t n, std::uint64_t seed) {
  const XXH128_hash_t h = XXH3_128bits_withSeed(p, n, seed);
  return {h.low64, h.high64};
}

// The canonical encoding of a key, hashed in one shot: a tag and a few
// words (a str's or bytes' own bytes are hashed in place: text_digest).
struct KeyHasher {
  std::string buf;
  void tag(char t) { buf += t; }
  template <class T>
  void word(T v) {
    buf.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void digest(const PyDigest& d) {
    word(d.lo);
    word(d.hi);
  }
  PyDigest done() const { return hash_bytes(buf.data(), buf.size(), 0); }
};

// A str's or bytes' digest: its bytes in place; the kind and the length in
// the seed (never 0, the seed of every other key).
PyDigest text_digest(char tag, std::string_view s) {
  return hash_bytes(s.data(), s.size(), (std::uint64_t{static_cast<unsigned char>(tag)} << 56) ^ s.size());
}

// Python: a float equal to an int is the same key as the int; a complex
// with no imaginary part the same as its real part.
void number(KeyHasher& h, double v) {
  if (std::isfinite(v) && v == std::trunc(v) && v >= -9.2e18 && v <= 9.2e18) {
    h.tag('i');
    h.word(static_cast<std::int64_t>(v));
    return;
  }
  h.tag('f');
  h.word(std::bit_cast<std::uint64_t>(v));
}

// A set's digest: its members' digests in a fixed order.
PyDigest set_digest(const PyNode* node) {
  std::vector<PyDigest> members;
  if (node->c)
    for (const auto& [d, pos] : node->c->index) members.push_back(d);
  std::sort(members.begin(), members.end(),
            [](const PyDigest& a, const PyDigest& b) { return a.hi != b.hi ? a.hi < b.hi : a.lo < b.lo; });
  KeyHasher h;
  h.tag('S');
  h.word(members.size());
  for (const PyDigest& d : members) h.digest(d);
  return h.done();
}

}  // namespace

PyNode::~PyNode() {
  if (!c) return;
  std::vector<std::shared_ptr<PyNode>> work;
  // Moves out the children no one else holds; the others stay with their
  // other owners.
  auto take = [&work](PyContainer& pc) {
    auto grab = [&work](PyValue& v) {
      if (v.node_ && v.node_->c && v.node_.use_count() == 1) work.push_back(std::move(v.node_));
    };
    for (PyValue& v : pc.items) grab(v);
    for (auto& [k, v] : pc.dict) {
      grab(k);
      grab(v);
    }
    pc.items.clear();
    pc.dict.clear();
  };
  take(*c);
  while (!work.empty()) {
    std::shared_ptr<PyNode> n = std::move(work.back());
    work.pop_back();
    take(*n->c);
  }  // n goes with an empty container: no recursion
}

PyDigest py_str_digest(std::string_view key) { return text_digest('s', key); }

void py_finish_tuple(const PyNode& t) {
  KeyHasher h;
  h.tag('t');
  const std::size_t n = t.c ? t.c->items.size() : 0;
  h.word(n);
  for (std::size_t k = 0; k < n; ++k) {
    PyDigest d;
    if (!py_digest(t.c->items[k].node().get(), d)) {
      t.unhashable = true;
      t.has_digest = true;
      return;
    }
    h.digest(d);
  }
  t.digest = h.done();
  t.has_digest = true;
}

bool py_digest(const PyNode* node, PyDigest& out) {
  KeyHasher h;
  if (!node) {
    h.tag('N');
    out = h.done();
    return true;
  }
  if (node->special != PySpecial::none) return false;
  if (node->has_digest) {
    out = node->digest;
    return !node->unhashable;
  }
  switch (node->kind) {
    case PyKind::none: h.tag('N'); break;
    case PyKind::boolean:
      h.tag('i');
      h.word(node->i);
      break;
    case PyKind::integer:
      if (node->big) {
        h.tag('u');
        h.word(node->u);
      } else {
        h.tag('i');
        h.word(node->i);
      }
      break;
    case PyKind::floating: number(h, node->f); break;
    case PyKind::complex:
      if (node->im == 0.0) {
        number(h, node->f);
      } else {
        h.tag('c');
        h.word(std::bit_cast<std::uint64_t>(node->f));
        h.word(std::bit_cast<std::uint64_t>(node->im));
      }
      break;
    case PyKind::string:
    case PyKind::bytes:
      node->digest = text_digest(node->kind == PyKind::string ? 's' : 'b', node->s);
      node->has_digest = true;
      out = node->digest;
      return true;
    case PyKind::tuple:
      // Finished when made; a tuple built by hand without it is finished now.
      py_finish_tuple(*node);
      out = node->digest;
      return !node->unhashable;
    case PyKind::set: out = set_digest(node); return true;  // a frozenset
    default: return false;
  }
  out = h.done();
  return true;
}

std::string py_type_name(const PyNode* node) {
  if (!node) return "NoneType";
  switch (node->special) {
    case PySpecial::global: return "a class or function";
    case PySpecial::dtype: return "numpy.dtype";
    case PySpecial::wrapper: return "joblib.numpy_pickle.NumpyArrayWrapper";
    case PySpecial::ndarray: return "numpy.ndarray (unfinished)";
    case PySpecial::none: break;
  }
  return std::string(kind_name(node->kind));
}

void py_dict_set(PyNode& d, PyValue key, PyValue value, const char* where) {
  PyDigest k;
  if (!py_digest(key.node().get(), k))
    throw StoreError(fmt::format("{}: a dict key of type {} cannot be hashed", where, py_type_name(key.node().get())));
  PyContainer& c = d.container();
  const auto [it, fresh] = c.index.try_emplace(k, c.dict.size());
  if (fresh)
    c.dict.emplace_back(std::move(key), std::move(value));
  else
    c.dict[it->second].second = std::move(value);
}

void py_set_add(PyNode& s, PyValue item, const char* where) {
  PyDigest k;
  if (!py_digest(item.node().get(), k))
    throw StoreError(fmt::format("{}: a set item of type {} cannot be hashed", where, py_type_name(item.node().get())));
  PyContainer& c = s.container();
  if (c.index.try_emplace(k, c.items.size()).second) c.items.push_back(std::move(item));
}

}  // namespace detail

using detail::PyNode;

std::string_view kind_name(PyKind kind) noexcept {
  switch (kind) {
    case PyKind::none: return "NoneType";
    case PyKind::boolean: return "bool";
    case PyKind::integer: return "int";
    case PyKind::floating: return "float";
    case PyKind::complex: return "complex";
    case PyKind::string: return "str";
    case PyKind::bytes: return "bytes";
    case PyKind::list: return "list";
    case PyKind::tuple: return "tuple";
    case PyKind::dict: return "dict";
    case PyKind::set: return "set";
    case PyKind::array: return "numpy.ndarray";
  }
  return "?";
}

PyValue::PyValue() noexcept = default;
PyValue::PyValue(std::nullptr_t) noexcept {}
PyValue::PyValue(std::shared_ptr<PyNode> node) noexcept : node_(std::move(node)) {}

PyValue::PyValue(bool value) : node_(detail::make(PyKind::boolean)) { node_->i = value ? 1 : 0; }
PyValue PyValue::from_int(std::int64_t v) {
  PyValue out(detail::make(PyKind::integer));
  out.node_->i = v;
  return out;
}
PyValue PyValue::from_uint(std::uint64_t v) {
  if (v <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    return from_int(static_cast<std::int64_t>(v));
  PyValue out(detail::make(PyKind::integer));
  out.node_->big = true;
  out.node_->u = v;
  return out;
}
PyValue::PyValue(double value) : node_(detail::make(PyKind::floating)) { node_->f = value; }
PyValue::PyValue(std::complex<double> value) : node_(detail::make(PyKind::complex)) {
  node_->f = value.real();
  node_->im = value.imag();
}
PyValue::PyValue(std::string value) : node_(detail::make(PyKind::string)) { node_->s = std::move(value); }
PyValue::PyValue(std::vector<std::byte> value) : node_(detail::make(PyKind::bytes)) {
  node_->s.assign(reinterpret_cast<const char*>(value.data()), value.size());
}
PyValue::PyValue(const std::map<std::string, PyValue>& dict) : node_(detail::make(PyKind::dict)) {
  for (const auto& [k, v] : dict) detail::py_dict_set(*node_, PyValue(k), v, "joblib::PyValue");
}
PyValue::PyValue(std::vector<PyValue> list) : node_(detail::make(PyKind::list)) {
  node_->container().items = std::move(list);
}
PyValue PyValue::tuple(std::vector<PyValue> items) {
  PyValue out(detail::make(PyKind::tuple));
  out.node_->container().items = std::move(items);
  detail::py_finish_tuple(*out.node_);
  return out;
}
PyValue PyValue::set(std::vector<PyValue> items) {
  PyValue out(detail::make(PyKind::set));
  out.node_->container();
  for (PyValue& v : items) detail::py_set_add(*out.node_, std::move(v), "joblib::PyValue::set");
  return out;
}
PyValue PyValue::dict(std::vector<std::pair<PyValue, PyValue>> items) {
  PyValue out(detail::make(PyKind::dict));
  out.node_->container();
  for (auto& [k, v] : items) detail::py_dict_set(*out.node_, std::move(k), std::move(v), "joblib::PyValue::dict");
  return out;
}
PyValue PyValue::from_array(detail::AnyArray array) {
  if (detail::dtype_name(array.kind, array.item_size).front() == '\'')
    throw std::invalid_argument("joblib::PyValue: an array of an unknown dtype");
  PyValue out(detail::make(PyKind::array));
  out.node_->array = std::make_unique<detail::AnyArray>(std::move(array));
  return out;
}

PyKind PyValue::kind() const noexcept { return node_ ? node_->kind : PyKind::none; }

namespace {
[[noreturn]] void wrong(const PyNode* n, std::string_view wanted) {
  throw StoreError(fmt::format("joblib::PyValue: the value is a {}, not a {}", detail::py_type_name(n), wanted));
}
const std::vector<PyValue> kNoItems;
const std::vector<std::pair<PyValue, PyValue>> kNoDict;
}  // namespace

std::size_t PyValue::size() const {
  switch (kind()) {
    case PyKind::list:
    case PyKind::tuple:
    case PyKind::set: return node_->c ? node_->c->items.size() : 0;
    case PyKind::dict: return node_->c ? node_->c->dict.size() : 0;
    case PyKind::string:
    case PyKind::bytes: return node_->s.size();
    case PyKind::array: {
      std::size_t n = 1;
      for (std::size_t d : node_->array->shape) n *= d;
      return n;
    }
    default: wrong(node_.get(), "container, str, bytes or array (it has no size)");
  }
}

const PyValue& PyValue::operator[](std::string_view key) const {
  if (kind() != PyKind::dict) wrong(node_.get(), "dict");
  if (node_->c) {
    const auto it = node_->c->index.find(detail::py_str_digest(key));
    if (it != node_->c->index.end()) return node_->c->dict[it->second].second;
  }
  throw std::out_of_range(fmt::format("joblib::PyValue: the dict has no key '{}'", key));
}

bool PyValue::contains(std::string_view key) const noexcept {
  if (kind() != PyKind::dict || !node_->c) return false;
  return node_->c->index.count(detail::py_str_digest(key)) != 0;
}

const PyValue& PyValue::item(std::int64_t index) const {
  if (kind() != PyKind::list && kind() != PyKind::tuple) wrong(node_.get(), "list or tuple");
  const auto& items = node_->c ? node_->c->items : kNoItems;
  const auto n = static_cast<std::int64_t>(items.size());
  const std::int64_t at = index < 0 ? index + n : index;
  if (at < 0 || at >= n)
    throw std::out_of_range(fmt::format("joblib::PyValue: index {} out of range for a {} of {} items", index,
                                        kind_name(kind()), n));
  return items[static_cast<std::size_t>(at)];
}

const PyValue& PyValue::item_unsigned(std::uint64_t index) const {
  if (kind() != PyKind::list && kind() != PyKind::tuple) wrong(node_.get(), "list or tuple");
  const auto& items = node_->c ? node_->c->items : kNoItems;
  if (index >= items.size())
    throw std::out_of_range(fmt::format("joblib::PyValue: index {} out of range for a {} of {} items", index,
                                        kind_name(kind()), items.size()));
  return items[index];
}

const std::vector<PyValue>& PyValue::items() const {
  const PyKind k = kind();
  if (k != PyKind::list && k != PyKind::tuple && k != PyKind::set) wrong(node_.get(), "list, tuple or set");
  return node_->c ? node_->c->items : kNoItems;
}

const std::vector<std::pair<PyValue, PyValue>>& PyValue::dict_items() const {
  if (kind() != PyKind::dict) wrong(node_.get(), "dict");
  return node_->c ? node_->c->dict : kNoDict;
}

std::string PyValue::dtype() const {
  if (kind() != PyKind::array) wrong(node_.get(), "numpy.ndarray");
  return detail::dtype_name(node_->array->kind, node_->array->item_size);
}

const std::vector<std::size_t>& PyValue::shape() const {
  if (kind() != PyKind::array) wrong(node_.get(), "numpy.ndarray");
  return node_->array->shape;
}

bool PyValue::as_bool() const {
  if (kind() != PyKind::boolean) wrong(node_.get(), "bool");
  return node_->i != 0;
}

namespace {
std::string int_type_name(std::size_t bytes, bool is_signed) {
  return fmt::format("{}int{}_t", is_signed ? "" : "u", bytes * 8);
}
}  // namespace

std::int64_t PyValue::as_int64(std::size_t bytes, bool is_signed) const {
  if (kind() != PyKind::integer) wrong(node_.get(), "int");
  if (node_->big) throw_int_range(bytes, is_signed);
  return node_->i;
}

std::uint64_t PyValue::as_uint64(std::size_t bytes) const {
  if (kind() != PyKind::integer) wrong(node_.get(), "int");
  if (node_->big) return node_->u;
  if (node_->i < 0) throw_int_range(bytes, false);
  return static_cast<std::uint64_t>(node_->i);
}

void PyValue::throw_int_range(std::size_t bytes, bool is_signed) const {
  const std::string value = node_->big ? std::to_string(node_->u) : std::to_string(node_->i);
  throw StoreError(fmt::format("joblib::PyValue: the int {} does not fit {}", value, int_type_name(bytes, is_signed)));
}

double PyValue::as_double() const {
  switch (kind()) {
    case PyKind::floating: return node_->f;
    case PyKind::integer: return node_->big ? static_cast<double>(node_->u) : static_cast<double>(node_->i);
    default: wrong(node_.get(), "float");
  }
}

std::complex<double> PyValue::as_complex() const {
  if (kind() == PyKind::complex) return {node_->f, node_->im};
  if (kind() == PyKind::floating || kind() == PyKind::integer) return {as_double(), 0.0};
  wrong(node_.get(), "complex");
}

std::string PyValue::as_string() const {
  if (kind() != PyKind::string) wrong(node_.get(), "str");
  return node_->s;
}

std::vector<std::byte> PyValue::as_bytes() const {
  if (kind() != PyKind::bytes) wrong(node_.get(), "bytes");
  const auto* p = reinterpret_cast<const std::byte*>(node_->s.data());
  return {p, p + node_->s.size()};
}

const detail::AnyArray& PyValue::as_any_array() const {
  if (kind() != PyKind::array) wrong(node_.get(), "numpy.ndarray");
  return *node_->array;
}

namespace {

void repr_into(const PyValue& v, std::string& out, int depth) {
  constexpr std::size_t kMaxItems = 8, kMaxText = 40;
  if (out.size() > 400) {
    out += "...";
    return;
  }
  const PyNode* n = v.node().get();
  auto text = [&](const std::string& s, const char* prefix) {
    out += prefix;
    out += '\'';
    out += s.size() > kMaxText ? s.substr(0, kMaxText) + "..." : s;
    out += '\'';
  };
  auto seq = [&](const char* open, const char* close) {
    out += open;
    if (depth > 4) {
      out += "...";
    } else {
      const auto& items = v.items();
      for (std::size_t i = 0; i < items.size(); ++i) {
        if (i) out += ", ";
        if (i == kMaxItems) {
          out += "...";
          break;
        }
        repr_into(items[i], out, depth + 1);
      }
      if (items.size() == 1 && v.kind() == PyKind::tuple) out += ',';
    }
    out += close;
  };
  switch (v.kind()) {
    case PyKind::none: out += "None"; break;
    case PyKind::boolean: out += n->i ? "True" : "False"; break;
    case PyKind::integer: out += n->big ? std::to_string(n->u) : std::to_string(n->i); break;
    case PyKind::floating: out += fmt::format("{}", n->f); break;
    case PyKind::complex: out += fmt::format("({}{:+}j)", n->f, n->im); break;
    case PyKind::string: text(n->s, ""); break;
    case PyKind::bytes: text(n->s, "b"); break;
    case PyKind::list: seq("[", "]"); break;
    case PyKind::tuple: seq("(", ")"); break;
    case PyKind::set: seq("{", "}"); break;
    case PyKind::dict: {
      out += '{';
      if (depth > 4) {
        out += "...";
      } else {
        const auto& items = v.dict_items();
        for (std::size_t i = 0; i < items.size(); ++i) {
          if (i) out += ", ";
          if (i == kMaxItems) {
            out += "...";
            break;
          }
          repr_into(items[i].first, out, depth + 1);
          out += ": ";
          repr_into(items[i].second, out, depth + 1);
        }
      }
      out += '}';
      break;
    }
    case PyKind::array: {
      std::string dims;
      for (std::size_t k = 0; k < n->array->shape.size(); ++k) dims += fmt::format("{}{}", k ? ", " : "", n->array->shape[k]);
      if (n->array->shape.size() == 1) dims += ",";
      out += fmt::format("array({}, shape=({}))", v.dtype(), dims);
      break;
    }
  }
}

}  // namespace

std::string PyValue::repr() const {
  std::string out;
  repr_into(*this, out, 0);
  return out;
}

}  // namespace joblib
