#pragma once
// Memory: a disk cache of function results (joblib.Memory). A call with
// arguments already seen reads its result from disk instead of computing it.
//
//   joblib::Memory memory("./cachedir", {.verbose = 0});
//   auto cached = memory.cache(f);                   // or memory.cache("name", f, {...})
//   double y = cached(2.0, 0);                       // computed once, then read from disk
//
// Keys: XXH3-128 of the arguments (after CacheOptions::ignore), hashed in
// place by the codec (an Array, a vector or a span is never copied), plus the
// function's identity: its name and a fingerprint of its own machine code, so
// that editing the function invalidates its entries. Callers that miss one
// key at once, in threads or processes (worker processes or independent
// programs sharing the folder), compute it once: one holds the entry's lock
// file, the others wait and read its result. Layout and guarantees:
// docs/memory.md.
#include <joblib/codec.hpp>
#include <joblib/detail/process.hpp>
#include <joblib/detail/throw.hpp>
#include <joblib/errors.hpp>
#include <joblib/export.hpp>
#include <joblib/options.hpp>
#include <joblib/persistence.hpp>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace joblib {

/// What a cache entry records about the call that made it (joblib's
/// metadata.json): how long the call took, when it was stored (seconds since
/// the epoch), and a short text of each argument, by position.
struct CallMetadata {
  double duration = 0;
  double time = 0;
  std::map<std::string, std::string> input_args;
};

/// Options of a Memory.
struct MemoryOptions {
  int verbose = 1;                          // joblib's verbose: 0 silent, 1 prints each computation
  MmapMode mmap_mode = MmapMode::none;      // how Arrays in results are loaded (none: into memory)
  Compress compress{};                      // as dump(); a compressed result is never mapped
  std::optional<std::string> bytes_limit{};  // "1G": evict least recently used entries after each store
};

/// Options of one cached function (unset fields inherit from the Memory).
struct CacheOptions {
  std::vector<std::size_t> ignore{};        // argument positions that do not change the result
  std::optional<int> verbose{};
  std::optional<MmapMode> mmap_mode{};
  std::optional<std::string> version{};     // replaces the code fingerprint in the key
  /// Called with an entry's metadata before it is used; false deletes the
  /// entry and computes again (joblib 1.3's cache_validation_callback).
  std::function<bool(const CallMetadata&)> cache_validation_callback{};
};

/// Limits of Memory::reduce_size (joblib's reduce_size).
struct ReduceOptions {
  std::optional<std::string> bytes_limit{};        // "1G", "500M", "2K" or a number of bytes
  std::optional<std::size_t> items_limit{};
  std::optional<std::chrono::seconds> age_limit{};  // entries not used for longer are removed
};

namespace detail {

/// A validation callback that expires_after() made: it can travel to a
/// worker process (other callbacks cannot).
struct ExpiresAfter {
  double seconds = 0;
  bool operator()(const CallMetadata& m) const;
};

/// The identity of a cached function: where its entries live, and the
/// fingerprint that is part of every key.
struct FunctionIdentity {
  std::string module;       // the executable's or library's file name
  std::string name;         // demangled name, or the name given to cache()
  std::string fingerprint;  // XXH3-128 of the function's machine code, or "v:<version>"
};

/// The identity of the function whose code starts at `code` (null: none
/// known, the name alone), named `name` when not empty.
JOBLIB_EXPORT FunctionIdentity function_identity(const void* code, const std::string& type_name,
                                                 const std::string& name, const std::optional<std::string>& version);

/// The address of a callable's code: a function pointer, or the call
/// operator of a class with exactly one (null when there is none to take).
template <class F>
const void* code_address(const F& f) {
  if constexpr (std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>) {
    return reinterpret_cast<const void*>(f);
  } else if constexpr (std::is_class_v<F> && requires { &F::operator(); }) {
    // Itanium C++ ABI: a pointer to a non-virtual member function holds the
    // function's address in its first word.
    auto pmf = &F::operator();
    const void* address = nullptr;
    static_assert(sizeof(pmf) >= sizeof(address));
    std::memcpy(&address, &pmf, sizeof(address));
    return address;
  } else {
    return nullptr;
  }
}

class CacheImpl;
class MemoryImpl;

/// One cache entry's files, and the lock that makes one caller compute it.
class JOBLIB_EXPORT CacheEntry {
 public:
  CacheEntry(std::shared_ptr<CacheImpl> cache, std::string key);
  ~CacheEntry();
  CacheEntry(const CacheEntry&) = delete;  // it may hold the entry's lock
  CacheEntry& operator=(const CacheEntry&) = delete;

  const std::filesystem::path& output() const noexcept { return output_; }
  const std::filesystem::path& dir() const noexcept { return dir_; }
  const std::string& key() const noexcept { return key_; }
  /// The entry's result is on disk and the validation callback accepts it
  /// (an entry it refuses is deleted).
  bool valid();
  /// valid() when the cache has a validation callback; else true without
  /// looking at the disk (the caller's load finds out).
  bool may_hit();
  /// Takes the entry's lock, waiting while another caller (thread or
  /// process) holds it. False when the location cannot be written (the
  /// caller then calls through; warned once).
  bool lock();
  /// Releases the lock (also done by the destructor).
  void unlock() noexcept;
  /// Records an access (for least-recently-used eviction).
  void touch() noexcept;
  /// Writes metadata.json, then the result through `write(path)` (a dump to
  /// a temporary name renamed over `output()`), then evicts if the Memory
  /// has a bytes_limit. False when the location cannot be written (warned
  /// once, nothing half-written is left).
  bool store(const CallMetadata& metadata, const std::function<void(const std::filesystem::path&)>& write);
  /// A result that cannot be read (`why`): warns once and deletes it.
  void discard_corrupted(const std::string& why) noexcept;
  /// Removes the entry.
  void clear() noexcept;
  /// The Memory's verbose output for a hit: "[Memory]...: Loading name..."
  /// from verbose 2, "name cache loaded - 0.0s, 0.0min" from verbose 5.
  void print_loading(double load_seconds = 0) const;
  /// Verbose 11 and more: "UserWarning: Computing func ..." on stderr
  /// before a miss computes.
  void print_computing() const;
  /// "[Memory] Querying ..." (the caller prints it from verbose 20, and
  /// only then builds `arguments`).
  void print_querying(const std::string& arguments) const;
  /// The cache's verbosity (its own, else the Memory's).
  int verbose() const noexcept;
  /// The call banner before computing, and the duration line after.
  void print_calling(const std::string& arguments) const;
  void print_done(double seconds) const;
  /// mmap_mode for loads, and the Memory's verbosity.
  MmapMode mmap_mode() const noexcept;
  /// How results are compressed (the Memory's compress).
  const Compress& compress() const noexcept;
  /// Metadata of the stored entry ({} when none can be read).
  CallMetadata metadata() const;

 private:
  std::shared_ptr<CacheImpl> cache_;
  std::string key_;
  std::filesystem::path dir_, output_;
  int lock_fd_ = -1;
};

/// A short text of a value for metadata and verbose lines (joblib's repr).
template <class T>
std::string short_repr(const T& v) {
  if constexpr (std::is_same_v<T, bool>)
    return v ? "true" : "false";
  else if constexpr (std::is_arithmetic_v<T>)
    return std::to_string(v);
  else if constexpr (std::is_convertible_v<const T&, std::string_view>)
    return "'" + std::string(std::string_view(v)) + "'";
  else if constexpr (requires { v.shape(); v.size(); })
    return type_name<T>() + " of " + std::to_string(v.size()) + " elements";
  else if constexpr (requires { v.size(); })
    return type_name<T>() + " of size " + std::to_string(v.size());
  else
    return type_name<T>();
}

JOBLIB_EXPORT std::shared_ptr<CacheImpl> make_cache(std::shared_ptr<MemoryImpl> memory, FunctionIdentity id,
                                                   const CacheOptions& options, const std::string& given_name);
JOBLIB_EXPORT void clear_cache(const std::shared_ptr<CacheImpl>& cache) noexcept;
JOBLIB_EXPORT bool cache_enabled(const std::shared_ptr<CacheImpl>& cache) noexcept;
/// What a MemorizedFunc sends to a worker process to rebuild its cache there.
struct CacheDescription {
  std::string location;
  int memory_verbose = 1;
  int mmap_mode = 0;
  std::string compress_method;
  int compress_level = 0;
  bool compress_default = false;
  std::optional<std::string> bytes_limit;
  std::vector<std::size_t> ignore;
  std::optional<int> verbose;
  std::optional<int> cache_mmap_mode;
  std::optional<std::string> version;
  std::optional<double> expires_after_seconds;
  std::string name;  // given to cache(), else ""
  template <class Archive>
  void serialize(Archive& ar) {
    ar(location, memory_verbose, mmap_mode, compress_method, compress_level, compress_default, bytes_limit, ignore,
       verbose, cache_mmap_mode, version, expires_after_seconds, name);
  }
};
JOBLIB_EXPORT CacheDescription describe_cache(const std::shared_ptr<CacheImpl>& cache);
JOBLIB_EXPORT std::shared_ptr<CacheImpl> rebuild_cache(const CacheDescription& d, const void* code,
                                                      const std::string& type_name);
JOBLIB_EXPORT const std::vector<std::size_t>& ignored_arguments(const std::shared_ptr<CacheImpl>& cache) noexcept;

/// Hashes the arguments that are not ignored into an entry key.
template <class... A>
std::string call_key(const std::vector<std::size_t>& ignore, const A&... args) {
  Hasher h;
  static constexpr char algorithm[] = "joblib-cpp memory key v1: xxh3-128";
  h.update_bytes(std::as_bytes(std::span(algorithm)));
  std::size_t i = 0;
  auto add = [&](const auto& a) {
    bool skip = false;
    for (std::size_t k : ignore) skip = skip || k == i;
    if (!skip) h.update(a);
    ++i;
  };
  (add(args), ...);
  return h.hexdigest();
}

template <class... A>
std::map<std::string, std::string> input_summary(const std::vector<std::size_t>& ignore, const A&... args) {
  std::map<std::string, std::string> out;
  std::size_t i = 0;
  auto add = [&](const auto& a) {
    bool skip = false;
    for (std::size_t k : ignore) skip = skip || k == i;
    if (!skip) {
      std::string text = short_repr(a);
      if (text.size() > 1500) text = text.substr(0, 700) + "...";
      out[std::to_string(i)] = std::move(text);
    }
    ++i;
  };
  (add(args), ...);
  return out;
}

JOBLIB_EXPORT std::string format_arguments(const std::map<std::string, std::string>& summary);

}  // namespace detail

/// joblib.expires_after: a cache_validation_callback that accepts entries
/// stored less than `age` ago. Such a callback can travel to worker
/// processes with its cached function.
JOBLIB_EXPORT std::function<bool(const CallMetadata&)> expires_after(std::chrono::seconds age);

/// The hex digest (32 characters, XXH3-128) of `args` that Memory uses as
/// an entry key, for arguments that are all used. Large buffers (Array,
/// bitwise vectors) are hashed in place. Throws SerializationError as
/// encode() does.
template <class... A>
std::string hash(const A&... args) {
  return detail::call_key({}, args...);
}

/// A result left on disk by call_and_shelve (joblib's MemorizedResult).
template <class R>
class MemorizedResult {
 public:
  MemorizedResult() = default;
  /// Loads the result (mapped with the cache's mmap_mode). Throws StoreError
  /// when the entry was cleared or cannot be read.
  R get() const {
    if (!value_ && !entry_) detail::throw_store_error("No value stored.");
    if (value_) return *value_;
    if (!std::filesystem::exists(entry_->output()))
      detail::throw_store_error("Non-existing item (may have been cleared).\nFile " + entry_->output().string() +
                                " does not exist");
    return joblib::load<R>(entry_->output(), {.mmap_mode = entry_->mmap_mode()});
  }
  /// Deletes the entry (may be called twice).
  void clear() {
    if (entry_) entry_->clear();
    value_.reset();
  }
  /// The entry's folder (empty when the Memory has no location).
  std::filesystem::path path() const { return entry_ ? entry_->dir() : std::filesystem::path{}; }

 private:
  template <class F>
  friend class MemorizedFunc;
  std::shared_ptr<detail::CacheEntry> entry_;
  std::shared_ptr<R> value_;  // a Memory without location keeps the value itself
};

/// A function whose results are cached on disk, made by Memory::cache. Copyable;
/// copies share the cache. Passed to delayed(), it runs in worker processes
/// on the same cache (when F can travel: a function or a lambda without
/// captures).
template <class F>
class MemorizedFunc {
 public:
  MemorizedFunc() = default;
  MemorizedFunc(F f, std::shared_ptr<detail::CacheImpl> cache) : f_(std::move(f)), cache_(std::move(cache)) {}

  /// f(args...), read from the cache when these arguments (those not
  /// ignored) were seen by this function's code, else computed and stored.
  /// Exceptions of f propagate and are never cached. A result that cannot
  /// be read is computed again (warned once). Throws what f throws, and
  /// SerializationError when an argument cannot be hashed.
  template <class... A>
    requires std::is_invocable_v<const F&, const std::decay_t<A>&...>
  auto operator()(const A&... args) const {
    using R = std::invoke_result_t<const F&, const std::decay_t<A>&...>;
    if constexpr (std::is_void_v<R>) {
      (void)cached_call<std::tuple<>>(args...);
    } else {
      return cached_call<std::remove_cvref_t<R>>(args...);
    }
  }

  /// Always computes, stores, and returns {value, metadata} (joblib's
  /// MemorizedFunc.call).
  template <class... A>
  auto call_with_metadata(const A&... args) const {
    using R = std::remove_cvref_t<std::invoke_result_t<const F&, const std::decay_t<A>&...>>;
    struct Output {
      R value;
      CallMetadata metadata;
    };
    CallMetadata meta;
    R value = compute<R>(nullptr, meta, args...);
    if (cache_enabled(cache_)) {
      detail::CacheEntry entry(cache_, key(args...));
      if (entry.lock()) store(entry, value, meta);
    }
    return Output{std::move(value), std::move(meta)};
  }

  /// True when a call with these arguments would be read from the cache
  /// (the validation callback is asked; an entry it refuses is deleted).
  /// Never calls f.
  template <class... A>
  bool check_call_in_cache(const A&... args) const {
    if (!cache_enabled(cache_)) return false;
    detail::CacheEntry entry(cache_, key(args...));
    return entry.valid();
  }

  /// As operator(), but leaves the result on disk and returns a reference
  /// to it; a hit does not read the result.
  template <class... A>
  auto call_and_shelve(const A&... args) const {
    using R = std::remove_cvref_t<std::invoke_result_t<const F&, const std::decay_t<A>&...>>;
    MemorizedResult<R> out;
    if (!cache_enabled(cache_)) {
      out.value_ = std::make_shared<R>(std::invoke(f_, args...));
      return out;
    }
    auto entry = std::make_shared<detail::CacheEntry>(cache_, key(args...));
    if (!entry->valid()) {
      (void)cached_call<R>(args...);
    }
    out.entry_ = std::move(entry);
    return out;
  }

  /// Removes every entry of this function.
  void clear() const { detail::clear_cache(cache_); }

  /// The function itself.
  const F& function() const noexcept { return f_; }

  // cereal: the cache's description and the function travel to workers.
  template <class Archive>
  void save(Archive& ar) const {
    ar(detail::describe_cache(cache_));
    detail::save_callable(ar, f_);
  }
  template <class Archive>
  void load(Archive& ar) {
    detail::CacheDescription d;
    ar(d);
    f_ = detail::load_callable<F>(ar);
    cache_ = detail::rebuild_cache(d, detail::code_address(f_), detail::type_name<F>());
  }

 private:
  template <class... A>
  std::string key(const A&... args) const {
    return detail::call_key(detail::ignored_arguments(cache_), args...);
  }

  // f(args...); a function returning void gives the empty tuple stored for it.
  template <class R, class... A>
  R call_function(const A&... args) const {
    if constexpr (std::is_same_v<R, std::tuple<>>) {
      std::invoke(f_, args...);
      return {};
    } else {
      return std::invoke(f_, args...);
    }
  }

  // f(args...) with what the cache records of it (metadata, verbose lines).
  template <class R, class... A>
  R compute(const detail::CacheEntry* entry, CallMetadata& meta, const A&... args) const {
    meta.input_args = detail::input_summary(detail::ignored_arguments(cache_), args...);
    if (entry) entry->print_calling(detail::format_arguments(meta.input_args));
    const auto t0 = std::chrono::steady_clock::now();
    R value = call_function<R>(args...);
    meta.duration = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    meta.time = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    if (entry) entry->print_done(meta.duration);
    return value;
  }

  template <class R>
  void store(detail::CacheEntry& entry, const R& value, const CallMetadata& meta) const {
    entry.store(meta, [&value, &entry](const std::filesystem::path& p) {
      joblib::dump(value, p, {.compress = entry.compress()});
    });
  }

  template <class R>
  std::optional<R> try_load(detail::CacheEntry& entry) const {
    try {
      R r = joblib::load<R>(entry.output(), {.mmap_mode = entry.mmap_mode()});
      entry.touch();
      return r;
    } catch (const StoreError& e) {
      entry.discard_corrupted(e.what());
    } catch (const SerializationError& e) {
      entry.discard_corrupted(e.what());
    } catch (const std::filesystem::filesystem_error&) {
      // removed between the check and the read (cleared, evicted): compute
    }
    return std::nullopt;
  }

  template <class R, class... A>
  R cached_call(const A&... args) const {
    static_assert(encodable<R>, "joblib::Memory: the function's result type must be encodable (see <joblib/codec.hpp>)");
    if (!cache_enabled(cache_)) return call_function<R>(args...);
    detail::CacheEntry entry(cache_, key(args...));
    if (entry.verbose() >= 20)  // (a hit must not pay for argument texts it does not print)
      entry.print_querying(detail::format_arguments(detail::input_summary(detail::ignored_arguments(cache_), args...)));
    // A hit is one open of the result (a missing file is a miss): no other
    // look at the disk unless a validation callback asks for the metadata.
    auto t0 = std::chrono::steady_clock::now();
    auto since = [&t0] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    if (entry.may_hit()) {
      if (auto r = try_load<R>(entry)) {
        entry.print_loading(since());
        return std::move(*r);
      }
    }
    if (!entry.lock()) return call_function<R>(args...);  // the location cannot be written
    if (entry.valid()) {  // computed by another caller while this one waited
      t0 = std::chrono::steady_clock::now();
      if (auto r = try_load<R>(entry)) {
        entry.print_loading(since());
        return std::move(*r);
      }
    }
    entry.print_computing();
    CallMetadata meta;
    R value = compute<R>(&entry, meta, args...);
    store(entry, value, meta);
    entry.unlock();
    if (entry.mmap_mode() != MmapMode::none && std::filesystem::exists(entry.output())) {
      if (auto r = try_load<R>(entry)) return std::move(*r);  // even the first call returns mapped arrays
    }
    return value;
  }

  F f_{};
  std::shared_ptr<detail::CacheImpl> cache_;
};

/// joblib.Memory: a folder of cached function results. Memory{} (no
/// location) calls through without caching. Thread-safe; several processes
/// may share one location.
class JOBLIB_EXPORT Memory {
 public:
  /// No location: cache() returns functions that always call through.
  Memory();
  /// Caches under `<location>/joblib`, creating the folder and a
  /// .gitignore in `location` (never overwritten). Throws
  /// std::invalid_argument when `location` exists and is not a folder, or
  /// an option is invalid (bytes_limit, compress). A location that cannot
  /// be written is not an error: calls go through, with one warning.
  explicit Memory(std::filesystem::path location, MemoryOptions options = {});

  /// A cached version of f, named after f (its demangled symbol, or its
  /// type for a lambda). Throws std::invalid_argument for a bad option.
  template <class F>
  MemorizedFunc<std::decay_t<F>> cache(F&& f, const CacheOptions& options = {}) const {
    return cache(std::string{}, std::forward<F>(f), options);
  }
  /// As cache(f, options), with its entries under `name`.
  template <class F>
  MemorizedFunc<std::decay_t<F>> cache(const std::string& name, F&& f, const CacheOptions& options = {}) const {
    using D = std::decay_t<F>;
    D fn(std::forward<F>(f));
    auto id = detail::function_identity(detail::code_address(fn), detail::type_name<D>(), name, options.version);
    return MemorizedFunc<D>(std::move(fn), detail::make_cache(impl_, std::move(id), options, name));
  }

  /// Removes every cached entry (the location itself stays).
  void clear() const;
  /// Removes least recently used entries until the cache is within every
  /// limit given, and entries unused for longer than age_limit. Throws
  /// std::invalid_argument for an unparsable bytes_limit or a negative age.
  void reduce_size(const ReduceOptions& limits) const;
  /// `<location>/joblib`, or empty without location.
  std::filesystem::path location() const;

 private:
  std::shared_ptr<detail::MemoryImpl> impl_;
};

}  // namespace joblib
