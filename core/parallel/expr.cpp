#include "expr.hpp"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <stdexcept>

namespace joblib::detail {
namespace {

struct Value {
  double v = 0;
  bool is_int = true;
};

std::string py_repr(const std::string& s) { return "'" + s + "'"; }

std::string number_text(const Value& x) {
  if (x.is_int) return fmt::format("{:.0f}", x.v);
  if (x.v == std::floor(x.v) && std::fabs(x.v) < 1e16) return fmt::format("{:.1f}", x.v);
  return fmt::format("{}", x.v);
}

struct Invalid {};

// Recursive descent over Python's arithmetic grammar.
class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}
  Value parse() {
    Value v = expr();
    skip();
    if (i_ != s_.size()) throw Invalid{};
    return v;
  }

 private:
  void skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool eat(const char* tok) {
    skip();
    std::size_t n = std::char_traits<char>::length(tok);
    if (s_.compare(i_, n, tok) != 0) return false;
    // '*' must not eat the first half of '**', '/' not the first half of '//'
    if (n == 1 && (tok[0] == '*' || tok[0] == '/') && i_ + 1 < s_.size() && s_[i_ + 1] == tok[0]) return false;
    i_ += n;
    return true;
  }
  static Value check(Value v) {
    if (!std::isfinite(v.v)) throw Invalid{};
    if (std::fabs(v.v) > 1e6)
      throw std::invalid_argument(fmt::format("Numeric literal {} is too large, max is 1000000.", number_text(v)));
    return v;
  }
  Value expr() {
    Value a = term();
    for (;;) {
      if (eat("+")) {
        Value b = term();
        a = check({a.v + b.v, a.is_int && b.is_int});
      } else if (eat("-")) {
        Value b = term();
        a = check({a.v - b.v, a.is_int && b.is_int});
      } else {
        return a;
      }
    }
  }
  Value term() {
    Value a = unary();
    for (;;) {
      if (eat("//")) {
        Value b = unary();
        if (b.v == 0) throw Invalid{};
        a = check({std::floor(a.v / b.v), a.is_int && b.is_int});
      } else if (eat("/")) {
        Value b = unary();
        if (b.v == 0) throw Invalid{};
        a = check({a.v / b.v, false});
      } else if (eat("%")) {
        Value b = unary();
        if (b.v == 0) throw Invalid{};
        double r = std::fmod(a.v, b.v);
        if (r != 0 && ((r < 0) != (b.v < 0))) r += b.v;  // Python's sign rule
        a = check({r, a.is_int && b.is_int});
      } else if (eat("*")) {
        Value b = unary();
        a = check({a.v * b.v, a.is_int && b.is_int});
      } else {
        return a;
      }
    }
  }
  Value unary() {
    if (eat("-")) {
      Value v = unary();
      return check({-v.v, v.is_int});
    }
    return power();
  }
  Value power() {
    Value a = atom();
    if (eat("**")) {
      Value b = unary();
      if (a.v == 0 && b.v < 0) throw Invalid{};
      return check({std::pow(a.v, b.v), a.is_int && b.is_int && b.v >= 0});
    }
    return a;
  }
  Value atom() {
    skip();
    if (eat("(")) {
      Value v = expr();
      if (!eat(")")) throw Invalid{};
      return v;
    }
    std::size_t start = i_;
    bool dot = false, digits = false;
    while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) || (s_[i_] == '.' && !dot))) {
      if (s_[i_] == '.') dot = true;
      else digits = true;
      ++i_;
    }
    if (!digits) throw Invalid{};
    return check({std::stod(s_.substr(start, i_ - start)), !dot});
  }

  const std::string& s_;
  std::size_t i_ = 0;
};

}  // namespace

long eval_pre_dispatch(const std::string& expression, int n_jobs) {
  std::string e = expression;
  for (std::size_t p; (p = e.find("n_jobs")) != std::string::npos;) e.replace(p, 6, std::to_string(n_jobs));
  if (e.size() > 30)
    throw std::invalid_argument(fmt::format("pre_dispatch: Expression {}... is too long. Max length is 30, got {}.",
                                            py_repr(e.substr(0, 30)), e.size()));
  try {
    return static_cast<long>(Parser(e).parse().v);
  } catch (const Invalid&) {
    throw std::invalid_argument(
        fmt::format("pre_dispatch: {} is not a valid or supported arithmetic expression.", py_repr(e)));
  } catch (const std::invalid_argument& err) {
    throw std::invalid_argument(std::string("pre_dispatch: ") + err.what());
  }
}

std::optional<std::size_t> parse_bytes(const std::string& text, const char* field) {
  if (text == "none" || text == "None") return std::nullopt;
  auto bad = [&] {
    return std::invalid_argument(fmt::format(
        "{}: Invalid literal for size give: {} (type str) should be alike '10G', '500M', '50K'.", field, text));
  };
  if (text.empty()) throw bad();
  double unit = 1;
  std::string number = text;
  switch (text.back()) {
    case 'K': unit = 1024.0; number.pop_back(); break;
    case 'M': unit = 1024.0 * 1024; number.pop_back(); break;
    case 'G': unit = 1024.0 * 1024 * 1024; number.pop_back(); break;
    default: break;
  }
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(number, &used);
  } catch (const std::exception&) {
    throw bad();
  }
  if (used != number.size() || value < 0 || !std::isfinite(value)) throw bad();
  return static_cast<std::size_t>(unit * value);
}

}  // namespace joblib::detail
