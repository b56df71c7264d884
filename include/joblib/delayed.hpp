#pragma once
// delayed(f)(args...): capture a call to run later, as joblib's delayed.
// Task<R>: a type-erased task, for mixing callables with one result type.
#include <joblib/detail/throw.hpp>

#include <functional>
#include <memory>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

namespace joblib {

/// A captured call: a callable and its arguments, stored by value. Calling it
/// (once) runs f(args...), moving the stored arguments in when f accepts
/// rvalues. Made by delayed(f)(args...).
template <class F, class... Args>
class Delayed {
 public:
  using function_type = F;
  using arguments_type = std::tuple<Args...>;

  template <class G, class... A>
  Delayed(std::in_place_t, G&& f, A&&... args)
      : fn_(std::forward<G>(f)), args_(std::forward<A>(args)...) {}

  /// Runs the call.
  decltype(auto) operator()() {
    if constexpr (std::is_invocable_v<F&, Args&&...>)
      return std::apply(fn_, std::move(args_));
    else
      return std::apply(fn_, args_);
  }

  const F& function() const noexcept { return fn_; }
  const std::tuple<Args...>& arguments() const noexcept { return args_; }
  std::tuple<Args...>& arguments() noexcept { return args_; }

 private:
  F fn_;
  std::tuple<Args...> args_;
};

/// True when delayed(f)(args...) can be built: f can be called with the
/// stored copies of args (as lvalues or as rvalues).
template <class F, class... A>
concept delayable = std::is_invocable_v<std::decay_t<F>&, std::decay_t<A>&...> ||
                    std::is_invocable_v<std::decay_t<F>&, std::decay_t<A>&&...>;

namespace detail {
template <class F>
class DelayedMaker {
 public:
  explicit DelayedMaker(F f) : f_(std::move(f)) {}
  /// The task f(args...); does not compile when f cannot be called so.
  template <class... A>
    requires delayable<F, A...>
  auto operator()(A&&... args) const& {
    return Delayed<F, std::decay_t<A>...>(std::in_place, f_, std::forward<A>(args)...);
  }
  template <class... A>
    requires delayable<F, A...>
  auto operator()(A&&... args) && {
    return Delayed<F, std::decay_t<A>...>(std::in_place, std::move(f_), std::forward<A>(args)...);
  }

 private:
  F f_;
};
}  // namespace detail

/// delayed(f)(args...) captures f and copies of args and returns a task (a
/// Delayed) that Parallel runs. f may be a function, a function pointer, a
/// lambda or a functor. A call that cannot compile (wrong argument types) is
/// a compile-time error at the point where the task is built. Never throws
/// except from copying f or the arguments.
template <class F>
auto delayed(F&& f) {
  return detail::DelayedMaker<std::decay_t<F>>(std::forward<F>(f));
}

/// A task whose result is R, whatever its callable: lets one input range mix
/// tasks of different functions. Copyable (copies the captured call).
template <class R>
class Task {
 public:
  using result_type = R;

  Task() = default;
  template <class D>
    requires(!std::is_same_v<std::decay_t<D>, Task> && std::is_invocable_v<std::decay_t<D>&> &&
             (std::is_void_v<R> || std::is_convertible_v<std::invoke_result_t<std::decay_t<D>&>, R>))
  Task(D&& d) : impl_(std::make_unique<Model<std::decay_t<D>>>(std::forward<D>(d))) {}  // NOLINT: implicit on purpose

  Task(const Task& o) : impl_(o.impl_ ? o.impl_->clone() : nullptr) {}
  Task(Task&&) noexcept = default;
  Task& operator=(const Task& o) {
    if (this != &o) impl_ = o.impl_ ? o.impl_->clone() : nullptr;
    return *this;
  }
  Task& operator=(Task&&) noexcept = default;

  /// Runs the task. Throws std::bad_function_call on an empty task.
  R operator()() {
    if (!impl_) throw std::bad_function_call();
    return impl_->call();
  }
  explicit operator bool() const noexcept { return static_cast<bool>(impl_); }

 private:
  struct Concept {
    virtual ~Concept() = default;
    virtual R call() = 0;
    virtual std::unique_ptr<Concept> clone() const = 0;
  };
  template <class D>
  struct Model final : Concept {
    template <class X>
    explicit Model(X&& x) : d(std::forward<X>(x)) {}
    R call() override {
      if constexpr (std::is_void_v<R>)
        d();
      else
        return d();
    }
    std::unique_ptr<Concept> clone() const override {
      if constexpr (std::is_copy_constructible_v<D>)
        return std::make_unique<Model>(d);
      else
        detail::throw_not_copyable();
    }
    D d;
  };
  std::unique_ptr<Concept> impl_;
};

}  // namespace joblib
