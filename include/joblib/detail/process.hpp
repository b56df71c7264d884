#pragma once
// Internal: how a batch of tasks travels to a worker process and back
// (docs/architecture.md, decisions 4 to 7). A batch is sent as the portable reference
// of one entry point, batch_entry<Task, R>, plus its encoded tasks; the
// worker (core/process/worker.cpp) resolves the entry, which decodes, runs the tasks
// in one monomorphic loop, and encodes the results or a failure.
#include <joblib/codec.hpp>
#include <joblib/delayed.hpp>
#include <joblib/detail/portable.hpp>
#include <joblib/export.hpp>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <optional>
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
inline constexpr bool is_portable_value_v = is_encodable_v<T> && is_constructible_on_decode_v<T>;

/// Why a value of type T cannot travel, and the fix ("" when it can);
/// `what` names it ("argument 2", "its result").
template <class T>
std::string value_problem(const std::string& what) {
  if constexpr (!is_encodable_v<T>)
    return what + " of type " + type_name<T>() + " cannot be encoded: " + not_encodable_reason<T>();
  else if constexpr (!is_constructible_on_decode_v<T>)
    return what + " of type " + type_name<T>() +
           " has no default constructor: give it one, or a cereal load_and_construct";
  else
    return {};
}

/// Why a callable of type F cannot travel, and the portable rewrite.
template <class F>
std::string callable_problem() {
  const std::string name = type_name<F>();
  std::string what;
  if (name.find("lambda") != std::string::npos)
    what = "its callable " + name + " is a lambda that captures, and captures never travel to another process "
           "(they may be references)";
  else if (!std::is_default_constructible_v<F>)
    what = "its callable " + name + " has no default constructor";
  else
    what = "its callable " + name + " carries state and has no cereal serialize function";
  return what +
         ". Rewrite it as a free function or a lambda without captures that takes the captured values as "
         "arguments: instead of delayed([&data, k](int i) { ... })(i), write "
         "delayed([](const Data& data, int k, int i) { ... })(data, k, i)";
}

template <class TaskT, class R>
struct PortableTask : std::false_type {
  static std::string why() {
    return "only joblib::delayed(f)(args...) tasks travel to other processes (a type-erased joblib::Task or "
           "another callable has no portable form)";
  }
};
template <class F, class... Args, class R>
struct PortableTask<Delayed<F, Args...>, R>
    : std::bool_constant<is_portable_callable_v<F> && (is_portable_value_v<Args> && ...) &&
                         (std::is_void_v<R> || is_portable_value_v<R>)> {
  static std::string why() {
    if (!is_portable_callable_v<F>) return callable_problem<F>();
    std::string problem;
    std::size_t i = 0;
    ((problem.empty() ? (void)(problem = value_problem<Args>("argument " + std::to_string(++i))) : (void)0), ...);
    if (!problem.empty()) return problem;
    if constexpr (!std::is_void_v<R>) return value_problem<R>("its result");
    return {};
  }
};

/// Writes the portable reference of the code at `address`, the bytes
/// ar(code_ref(address)) writes, from this thread's copy of the last ones
/// it wrote (a process backend writes the same function for every batch).
/// Throws SerializationError when the address lies in no loaded module.
JOBLIB_EXPORT void save_code_at(EncodeArchive& ar, const void* address);

// A function pointer travels as a portable reference ([0][CodeRef]), or as
// [1] when it is the one the archive wrote last: the tasks of a batch
// mostly call one function, which is then looked up once per batch.
template <class F>
void save_callable(EncodeArchive& ar, const F& f) {
  if constexpr (std::is_pointer_v<F>) {
    const void* p = reinterpret_cast<const void*>(f);
    const std::uint8_t same = p != nullptr && p == ar.last_code() ? 1 : 0;
    ar(same);
    if (!same) {
      save_code_at(ar, p);
      ar.set_last_code(p);
    }
  } else if constexpr (!std::is_empty_v<F>) {
    ar(f);
  }
}

template <class F>
F load_callable(DecodeArchive& ar) {
  if constexpr (std::is_pointer_v<F>) {
    std::uint8_t same = 0;
    ar(same);
    if (same == 1) {
      if (!ar.last_code()) throw_decode_error("a task repeats a function before any was sent");
      return reinterpret_cast<F>(ar.last_code());
    }
    if (same != 0) throw_decode_error("a function reference has a bad tag");
    static thread_local CodeRef ref;  // reused: its strings keep their memory
    ar(ref);
    void* p = resolve_code(ref);
    ar.set_last_code(p);
    return reinterpret_cast<F>(p);
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

/// Reads back a tuple of arguments in order (a braced list is evaluated left
/// to right), each through load_value: no default constructor needed.
template <class... A>
std::tuple<A...> load_arguments(DecodeArchive& ar, std::type_identity<std::tuple<A...>>) {
  return std::tuple<A...>{load_value<A>(ar)...};
}

/// Reads back one task that save_task() wrote.
template <class TaskT>
TaskT load_task(DecodeArchive& ar) {
  using Args = std::remove_cvref_t<decltype(std::declval<TaskT&>().arguments())>;
  using F = std::remove_cvref_t<decltype(std::declval<TaskT&>().function())>;
  F f = load_callable<F>(ar);
  Args args = load_arguments(ar, std::type_identity<Args>{});
  return std::apply(
      [&f](auto&&... a) { return TaskT(std::in_place, std::move(f), std::forward<decltype(a)>(a)...); },
      std::move(args));
}

/// The error envelope of a task's exception (Parallel::outcomes), with the
/// stack trace of its throw: call it from the catch block. Never throws
/// (an envelope that cannot be made says so in its message).
JOBLIB_EXPORT std::string task_error_envelope(std::size_t index, std::exception_ptr error) noexcept;

/// The entry point a worker runs for a batch of Parallel::outcomes(): every
/// task runs; each writes [u8 1][its result] or [u8 0][its error envelope],
/// after the task count.
template <class TaskT, class R>
void outcome_entry(WorkerCall& call) {
  std::size_t index = 0;
  try {
    if constexpr (PortableTask<TaskT, R>::value) {
      InputStream in(call.input());
      DecodeArchive ar(in, call.source());
      const std::uint64_t n = ar.load_count();
      EncodeArchive out(call.output(), call.sink());
      out.save_u64(n);
      for (; index < n; ++index) {
        TaskT task = load_task<TaskT>(ar);
        std::optional<std::conditional_t<std::is_void_v<R>, char, R>> value;
        std::string envelope;
        try {
          if constexpr (std::is_void_v<R>) {
            task();
            value.emplace('\0');
          } else {
            value.emplace(task());
          }
        } catch (...) {
          envelope = task_error_envelope(index, std::current_exception());
        }
        const std::uint8_t ok = value ? 1 : 0;
        out(ok);
        if (!value)
          out(envelope);
        else if constexpr (!std::is_void_v<R>)
          out(*value);
      }
    }
  } catch (...) {
    call.fail(index, std::current_exception());
  }
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

/// A request payload (core/process/worker.cpp's format) for `entry` with `structure`.
JOBLIB_EXPORT std::vector<std::byte> make_init_request(const CodeRef& entry, std::span<const std::byte> structure);

/// What a worker's error envelope says: which task of the batch failed
/// (0-based), and the exception to fail the call with: the same standard or
/// joblib type, a registered user type, or TaskError naming the task's
/// input index (first_index + index) and `function_of(index)`. Made without
/// throwing. Throws SerializationError when the envelope is garbled.
struct RemoteFailure {
  std::size_t index = 0;
  std::exception_ptr error;
};
JOBLIB_EXPORT RemoteFailure decode_failure(std::span<const std::byte> envelope, std::size_t first_index,
                                           const std::function<std::string(std::size_t)>& function_of);

/// Rebuilds, in the caller, the exception a worker reported: the same
/// standard or joblib type, a registered user type, or TaskError.
[[noreturn]] JOBLIB_EXPORT void rethrow_remote(std::span<const std::byte> envelope, std::size_t first_index,
                                                const std::string& function);

}  // namespace joblib::detail
