#pragma once
// Outcome<R>: what one task of Parallel::outcomes() gave, its value or its
// exception. See docs/errors.md ("Every outcome").
#include <exception>
#include <optional>
#include <type_traits>
#include <utility>

namespace joblib {

/// The value a task returned, or the exception it ended with (its own type,
/// as Parallel's errors: across processes too). Copies share the exception.
template <class R>
class Outcome {
 public:
  /// A task's value.
  template <class... A>
  explicit Outcome(std::in_place_t, A&&... args) : value_(std::in_place, std::forward<A>(args)...) {}
  /// A task's exception (null is taken as an unknown error: std::bad_exception).
  explicit Outcome(std::exception_ptr error) : error_(error ? std::move(error) : std::make_exception_ptr(std::bad_exception())) {}

  /// True when the task returned a value.
  bool has_value() const noexcept { return value_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }
  /// The value; rethrows the task's exception when it has none.
  R& value() & {
    if (!value_) std::rethrow_exception(error_);
    return *value_;
  }
  const R& value() const& {
    if (!value_) std::rethrow_exception(error_);
    return *value_;
  }
  R&& value() && {
    if (!value_) std::rethrow_exception(error_);
    return std::move(*value_);
  }
  /// The task's exception; null when it returned a value.
  std::exception_ptr error() const noexcept { return error_; }

 private:
  std::optional<R> value_;
  std::exception_ptr error_;
};

/// The outcome of a task returning void: done, or its exception.
template <>
class Outcome<void> {
 public:
  /// A task that returned.
  Outcome() = default;
  explicit Outcome(std::in_place_t) {}
  /// A task's exception (null is taken as an unknown error: std::bad_exception).
  explicit Outcome(std::exception_ptr error) : error_(error ? std::move(error) : std::make_exception_ptr(std::bad_exception())) {}

  bool has_value() const noexcept { return !error_; }
  explicit operator bool() const noexcept { return has_value(); }
  /// Returns if the task returned; rethrows its exception otherwise.
  void value() const {
    if (error_) std::rethrow_exception(error_);
  }
  /// The task's exception; null when it returned.
  std::exception_ptr error() const noexcept { return error_; }

 private:
  std::exception_ptr error_;
};

}  // namespace joblib
