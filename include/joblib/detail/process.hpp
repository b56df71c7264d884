#pragma once
// Internal: how a batch of tasks travels to a worker process and back
// (docs/architecture.md, decisions 4 to 7). A batch is sent as the portable reference
// of one entry point, batch_entry<Task, R>, plus its encoded tasks; the
// worker (core/worker.cpp) resolves the entry, which decodes, runs the tasks
// in one monomorphic loop, and encodes the results or a failure.
#include <joblib/codec.hpp>
#include <joblib/delayed.hpp>
#include <joblib/detail/portable.hpp>
#include <joblib/export.hpp>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace joblib::detail {

/// What an entry point sees in the worker.
class JOBLIB_EXPORT WorkerCall {
 public:
  WorkerCall(std::span<const std::byte> input, BufferSource* source, OutputStream& output, BufferSink* sink)
      : input_(input), source_(source), output_(output), sink_(sink) {}
  std::span<const std::byte> input() const noexcept { return input_; }
  BufferSource* source() const noexcept { return source_; }
  OutputStream& output() noexcept { return output_; }
  BufferSink* sink() const noexcept { return sink_; }
  /// Records that task `index` of the batch threw `error` (the results are
  /// dropped); called from a catch block, where the throw's stack trace is
  /// still at hand.
  void fail(std::size_t index, std::exception_ptr error) noexcept;
  bool failed() const noexcept { return failed_; }
  std::size_t failed_index() const noexcept { return failed_index_; }
  std::exception_ptr error() const noexcept { return error_; }

 private:
  std::span<const std::byte> input_;
  BufferSource* source_;
  OutputStream& output_;
  BufferSink* sink_;
  bool failed_ = false;
  std::size_t failed_index_ = 0;
  std::exception_ptr error_;
};

using WorkerEntry = void (*)(WorkerCall&);

// ---- what can travel -------------------------------------------------------

/// A callable travels as a function reference, as its type alone (an empty
/// class such as a captureless lambda), or through its cereal serialize.
template <class F>
inline constexpr bool is_portable_callable_v =
    (std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>) ||
    (std::is_empty_v<F> && std::is_default_constructible_v<F>) ||
    (!std::is_empty_v<F> && std::is_class_v<F> && std::is_default_constructible_v<F> && is_encodable_v<F>);

template <class T>
inline constexpr bool is_portable_value_v = is_encodable_v<T> && std::is_default_constructible_v<T>;

template <class TaskT, class R>
struct PortableTask : std::false_type {
  static std::string why() {
    return "only joblib::delayed(f)(args...) tasks travel to other processes (a type-erased Task or another "
           "callable has no portable form)";
  }
};
template <class F, class... Args, class R>
struct PortableTask<Delayed<F, Args...>, R>
    : std::bool_constant<is_portable_callable_v<F> && (is_portable_value_v<Args> && ...) &&
                         (std::is_void_v<R> || is_portable_value_v<R>)> {
  static std::string why() {
    if (!is_portable_callable_v<F>)
      return "its callable is neither a function, nor a lambda without captures, nor a functor with a cereal "
             "serialize (captures never travel: they may be references)";
    if (!(is_portable_value_v<Args> && ...))
      return "an argument type cannot be encoded (or is not default-constructible)";
    return "its result type cannot be encoded (or is not default-constructible)";
  }
};

template <class F>
void save_callable(EncodeArchive& ar, const F& f) {
  if constexpr (std::is_pointer_v<F>) {
    ar(code_ref(reinterpret_cast<const void*>(f)));
  } else if constexpr (!std::is_empty_v<F>) {
    ar(f);
  }
}

template <class F>
F load_callable(DecodeArchive& ar) {
  if constexpr (std::is_pointer_v<F>) {
    CodeRef ref;
    ar(ref);
    return reinterpret_cast<F>(resolve_code(ref));
  } else if constexpr (std::is_empty_v<F>) {
    return F{};
  } else {
    F f{};
    ar(f);
    return f;
  }
}

template <class F, class... Args>
void save_task(EncodeArchive& ar, const Delayed<F, Args...>& task) {
  save_callable(ar, task.function());
  ar(task.arguments());
}

/// Reads back one task that save_task() wrote.
template <class TaskT>
TaskT load_task(DecodeArchive& ar) {
  using Args = std::remove_cvref_t<decltype(std::declval<TaskT&>().arguments())>;
  using F = std::remove_cvref_t<decltype(std::declval<TaskT&>().function())>;
  F f = load_callable<F>(ar);
  Args args{};
  ar(args);
  return std::apply(
      [&f](auto&&... a) { return TaskT(std::in_place, std::move(f), std::forward<decltype(a)>(a)...); },
      std::move(args));
}

/// The entry point a worker runs for a batch of Delayed<F, Args...> tasks.
template <class TaskT, class R>
void batch_entry(WorkerCall& call) {
  std::size_t index = 0;
  try {
    if constexpr (PortableTask<TaskT, R>::value) {
      InputStream in(call.input());
      DecodeArchive ar(in, call.source());
      const std::uint64_t n = ar.load_count();
      std::conditional_t<std::is_void_v<R>, std::uint64_t,
                         std::conditional_t<std::is_same_v<R, bool>, std::deque<bool>, std::vector<R>>>
          results{};
      if constexpr (!std::is_void_v<R> && !std::is_same_v<R, bool>) results.reserve(static_cast<std::size_t>(n));
      for (; index < n; ++index) {
        TaskT task = load_task<TaskT>(ar);
        if constexpr (std::is_void_v<R>) {
          task();
          ++results;
        } else {
          results.push_back(task());
        }
      }
      EncodeArchive out(call.output(), call.sink());
      out(results);
    }
  } catch (...) {
    call.fail(index, std::current_exception());
  }
}

/// The entry point of a worker initializer (joblib::initializer).
template <class TaskT>
void init_entry(WorkerCall& call) {
  try {
    InputStream in(call.input());
    DecodeArchive ar(in, call.source());
    load_task<TaskT>(ar)();
  } catch (...) {
    call.fail(0, std::current_exception());
  }
}

/// A request payload (core/worker.cpp's format) for `entry` with `structure`.
JOBLIB_EXPORT std::vector<std::byte> make_init_request(const CodeRef& entry, std::span<const std::byte> structure);

/// Rebuilds, in the caller, the exception a worker reported: the same
/// standard or joblib type, a registered user type, or TaskError.
[[noreturn]] JOBLIB_EXPORT void rethrow_remote(std::span<const std::byte> envelope, std::size_t first_index,
                                                const std::string& function);

}  // namespace joblib::detail
