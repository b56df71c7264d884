#pragma once
// The codec: the one serialization layer of joblib-cpp (docs/architecture.md, decision
// 6). dump/load and the process backends encode
// values with it. It is cereal's binary layout (cereal is a public
// dependency: give your types a cereal `serialize`, or `save`/`load`) plus
// out-of-band buffers: the data of a joblib::Array<T> and of a large
// std::vector<T> of bitwise T goes to a BufferSink instead of the structure
// (inline when small, 64-byte aligned in a dump file, a file that workers
// map, or a hasher that reads it in place).
//
// What can be encoded: arithmetic types, enums, std::string, the standard
// containers (vector, deque, list, forward_list, array, map, multimap, set,
// multiset and the unordered ones), std::optional, std::variant,
// std::tuple, std::pair, std::complex, std::bitset, std::chrono durations
// and time points, std::unique_ptr/std::shared_ptr, joblib::Array<T>, empty
// classes (such as captureless lambdas, which encode to nothing), any type
// with a cereal serialize/save/load, and combinations of these. A type that
// cannot be encoded is a compile-time error (static_assert) where the type
// is known; encode_or_throw() turns it into SerializationError naming the
// type for callers that choose at run time.
//
//   detail::MemoryOutput out;
//   detail::SpanSink sink;                       // keeps large buffers out of band
//   detail::encode(value, out, &sink);
//   ... send out.bytes() and sink.buffers() ...
//   detail::SharedBufferSource source(received_buffers);
//   auto v = detail::decode<T>(received_structure, &source);
//
//   std::string key = detail::hash_value(args);  // 32 hex chars, XXH3-128
#include <joblib/array.hpp>
#include <joblib/detail/codec_archive.hpp>
#include <joblib/detail/codec_hash.hpp>
#include <joblib/detail/codec_types.hpp>
#include <joblib/errors.hpp>
#include <joblib/export.hpp>

#include <cereal/types/array.hpp>
#include <cereal/types/bitset.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/forward_list.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <forward_list>
#include <list>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace joblib::detail {

// ---- which types can be encoded ---------------------------------------------
// cereal says yes for a container whatever its elements, so the standard
// templates are looked into here; for other types cereal's own traits
// decide (a user type with a serialize is taken at its word).

template <class T>
struct Encodable
    : std::bool_constant<!std::is_pointer_v<T> && !std::is_member_pointer_v<T> && !std::is_reference_v<T> &&
                         !std::is_function_v<T> &&
                         ((std::is_empty_v<T> && std::is_default_constructible_v<T>) ||
                          std::conjunction_v<cereal::traits::is_output_serializable<T, EncodeArchive>,
                                             std::disjunction<cereal::traits::is_input_serializable<T, DecodeArchive>,
                                                              cereal::traits::has_load_and_construct<T, DecodeArchive>>>)> {};

template <class... Ts>
inline constexpr bool all_encodable_v = (Encodable<Ts>::value && ...);

template <class T, class A>
struct Encodable<std::vector<T, A>> : std::bool_constant<Encodable<T>::value || is_bitwise_v<T>> {};
template <class A>
struct Encodable<std::vector<bool, A>> : std::true_type {};
template <class T, class A>
struct Encodable<std::deque<T, A>> : Encodable<T> {};
template <class T, class A>
struct Encodable<std::list<T, A>> : Encodable<T> {};
template <class T, class A>
struct Encodable<std::forward_list<T, A>> : Encodable<T> {};
template <class T, std::size_t N>
struct Encodable<std::array<T, N>> : Encodable<T> {};
template <class K, class C, class A>
struct Encodable<std::set<K, C, A>> : Encodable<K> {};
template <class K, class C, class A>
struct Encodable<std::multiset<K, C, A>> : Encodable<K> {};
template <class K, class H, class E, class A>
struct Encodable<std::unordered_set<K, H, E, A>> : Encodable<K> {};
template <class K, class H, class E, class A>
struct Encodable<std::unordered_multiset<K, H, E, A>> : Encodable<K> {};
template <class K, class V, class C, class A>
struct Encodable<std::map<K, V, C, A>> : std::bool_constant<all_encodable_v<K, V>> {};
template <class K, class V, class C, class A>
struct Encodable<std::multimap<K, V, C, A>> : std::bool_constant<all_encodable_v<K, V>> {};
template <class K, class V, class H, class E, class A>
struct Encodable<std::unordered_map<K, V, H, E, A>> : std::bool_constant<all_encodable_v<K, V>> {};
template <class K, class V, class H, class E, class A>
struct Encodable<std::unordered_multimap<K, V, H, E, A>> : std::bool_constant<all_encodable_v<K, V>> {};
template <class T>
struct Encodable<std::optional<T>> : Encodable<T> {};
template <class... Ts>
struct Encodable<std::variant<Ts...>> : std::bool_constant<all_encodable_v<Ts...>> {};
template <class... Ts>
struct Encodable<std::tuple<Ts...>> : std::bool_constant<all_encodable_v<Ts...>> {};
template <class A, class B>
struct Encodable<std::pair<A, B>> : std::bool_constant<all_encodable_v<A, B>> {};
template <class T>
struct Encodable<std::shared_ptr<T>> : Encodable<std::remove_const_t<T>> {};
template <class T>
struct Encodable<std::unique_ptr<T>> : Encodable<std::remove_const_t<T>> {};
template <class T>
struct Encodable<Array<T>> : std::true_type {};
template <class C, class Tr, class A>
struct Encodable<std::basic_string<C, Tr, A>> : std::true_type {};

/// True when the codec can encode and decode T.
template <class T>
inline constexpr bool is_encodable_v = Encodable<std::remove_cv_t<T>>::value;

#define JOBLIB_DETAIL_NOT_ENCODABLE_MESSAGE                                                               \
  "joblib: this type cannot be encoded (dump, load, Memory, process backends). Make it an aggregate "    \
  "(public fields, no constructors, no base class) of encodable fields, which needs no code, or give "   \
  "it a cereal serialize function (or save/load). Arithmetic types, enums, std::string, standard "       \
  "containers, std::optional/variant/tuple/pair and joblib::Array encode; raw pointers never travel"

/// The fix a message names for a type that cannot be encoded.
inline constexpr const char* encode_fix =
    "make it an aggregate (public fields, no constructors, no base class) of encodable fields, which needs no "
    "code, or give it a cereal serialize function (or save/load); raw pointers and references never travel";

/// Why T cannot be encoded, and the fix.
template <class T>
std::string not_encodable_reason();

template <class T, std::size_t... I>
std::string first_bad_field(std::index_sequence<I...>) {
  std::string problem;
  auto check = [&problem]<std::size_t K>(std::integral_constant<std::size_t, K>) {
    using F = boost::pfr::tuple_element_t<K, T>;
    if (!problem.empty()) return;
    if constexpr (std::is_reference_v<F>)
      problem = "its field " + std::to_string(K + 1) + " is a reference, and references never travel";
    else if constexpr (std::is_const_v<F>)
      problem = "its field " + std::to_string(K + 1) + " is const, so it cannot be read back";
    else if constexpr (!Encodable<std::remove_cv_t<F>>::value)
      problem = "its field " + std::to_string(K + 1) + " of type " + type_name<F>() + " cannot be encoded (" +
                not_encodable_reason<std::remove_cv_t<F>>() + ")";
  };
  (check(std::integral_constant<std::size_t, I>{}), ...);
  return problem;
}

template <class T>
std::string not_encodable_reason() {
  if constexpr (std::is_pointer_v<T> || std::is_member_pointer_v<T>) {
    return "raw pointers never travel: store the value, a std::unique_ptr or an index";
  } else if constexpr (std::is_class_v<T> && !std::is_union_v<T> && std::is_aggregate_v<T> &&
                       !std::is_empty_v<T> && !is_bitwise_serializable<T>::value && !has_own_cereal_v<T>) {
    if constexpr (!plain_aggregate<T>())
      return "an aggregate with a base class or a C array field is not encoded field by field: give it a cereal "
             "serialize function (or save/load), or use std::array for the array";
    else
      return first_bad_field<T>(std::make_index_sequence<boost::pfr::tuple_size_v<T>>{});
  } else {
    return encode_fix;
  }
}

/// Throws SerializationError("cannot encode a value of type <type>: <why>").
[[noreturn]] JOBLIB_EXPORT void throw_encode_error(const std::string& type, const std::string& why);
/// Throws SerializationError("cannot decode a value of type <type>: <why>").
[[noreturn]] JOBLIB_EXPORT void throw_decode_type_error(const std::string& type, const std::string& why);

// ---- encode / decode -----------------------------------------------------------

/// Encodes `value` into `out`. Its large buffers are offered to `sink`
/// (null: everything inline). Compile-time error when T cannot be encoded;
/// throws SerializationError naming T when cereal refuses the value at run
/// time (an unregistered polymorphic type), and whatever the sink or a
/// user's serialize throws.
template <class T>
void encode(const T& value, OutputStream& out, BufferSink* sink = nullptr) {
  static_assert(is_encodable_v<T>, JOBLIB_DETAIL_NOT_ENCODABLE_MESSAGE);
  EncodeArchive ar(out, sink);
  try {
    ar(value);
  } catch (const cereal::Exception& e) {
    throw_encode_error(type_name<T>(), e.what());
  }
}

/// As encode(), but a type the codec cannot encode throws
/// SerializationError naming it instead of failing to compile: for callers
/// (the dispatcher) that learn only at run time that a value must travel.
template <class T>
void encode_or_throw(const T& value, OutputStream& out, BufferSink* sink = nullptr) {
  if constexpr (is_encodable_v<T>)
    encode(value, out, sink);
  else
    throw_encode_error(type_name<T>(), not_encodable_reason<T>());
}

/// Runs `read(archive)` over `bytes`, turning what goes wrong into
/// SerializationError naming T, and refusing bytes left over.
template <class T, class Read>
void decode_with(std::span<const std::byte> bytes, BufferSource* source, Read&& read) {
  InputStream in(bytes);
  DecodeArchive ar(in, source);
  try {
    read(ar);
  } catch (const cereal::Exception& e) {
    throw_decode_type_error(type_name<T>(), e.what());
  } catch (const std::bad_alloc&) {
    throw_decode_type_error(type_name<T>(), "the data asks for more memory than there is");
  } catch (const std::length_error& e) {
    throw_decode_type_error(type_name<T>(), std::string("a length is out of range (") + e.what() + ")");
  }
  if (in.remaining() != 0)
    throw_decode_type_error(type_name<T>(), std::to_string(in.remaining()) + " unexpected bytes after the value");
}

/// Decodes into `value` what encode() wrote as `bytes`, asking `source` for
/// the out-of-band buffers. Throws SerializationError when the bytes are not
/// a valid encoding of T (truncated, corrupted, a count larger than the data,
/// trailing bytes); nothing is allocated beyond what the data can hold.
template <class T>
void decode_into(T& value, std::span<const std::byte> bytes, BufferSource* source = nullptr) {
  static_assert(is_encodable_v<T>, JOBLIB_DETAIL_NOT_ENCODABLE_MESSAGE);
  decode_with<T>(bytes, source, [&value](DecodeArchive& ar) { ar(value); });
}

/// Decodes a T as decode_into() does: into a value-initialized T, or
/// through T's cereal load_and_construct when T has no default constructor.
template <class T>
T decode(std::span<const std::byte> bytes, BufferSource* source = nullptr) {
  static_assert(is_encodable_v<T>, JOBLIB_DETAIL_NOT_ENCODABLE_MESSAGE);
  static_assert(is_constructible_on_decode_v<T>,
                "joblib: a decoded type needs a default constructor or a cereal load_and_construct");
  if constexpr (std::is_default_constructible_v<T>) {
    T value{};
    decode_into(value, bytes, source);
    return value;
  } else {
    std::optional<T> value;
    decode_with<T>(bytes, source, [&value](DecodeArchive& ar) { value.emplace(load_value<T>(ar)); });
    return std::move(*value);
  }
}

// ---- hashing ------------------------------------------------------------------

template <class T>
Hasher& Hasher::update_value(const T& value) {
  static_assert(is_encodable_v<T>, JOBLIB_DETAIL_NOT_ENCODABLE_MESSAGE);
  EncodeArchive ar(stream(), &sink(), /*canonical=*/true);
  try {
    ar(value);
  } catch (const cereal::Exception& e) {
    throw_encode_error(type_name<T>(), e.what());
  }
  return *this;
}

template <class T>
Hasher& Hasher::update(const T& value) {
  update_type(typeid(T));
  return update_value(value);
}

/// XXH3-128 digest of `value` and its type, as 32 lowercase hex characters:
/// equal values of one type give equal digests (in one build of the
/// program), unordered containers whatever their insertion order. Large
/// buffers are hashed in place, without a copy. Throws as Hasher::update.
template <class T>
std::string hash_value(const T& value) {
  Hasher h;
  h.update(value);
  return h.hexdigest();
}

// ---- ready-made sinks and sources ---------------------------------------------

/// A BufferSink that keeps the spans it takes (no copy): every Array
/// buffer, and vector buffers from `min_vector_bytes` on. The spans view the
/// encoded value, which must outlive their use (dump writes them before it
/// returns; a transport sends them before the call's arguments go away).
class JOBLIB_EXPORT SpanSink : public BufferSink {
 public:
  explicit SpanSink(std::size_t min_vector_bytes = 64 * 1024) : min_vector_bytes_(min_vector_bytes) {}
  ~SpanSink() override;
  std::optional<std::uint64_t> put(std::span<const std::byte> bytes, BufferKind kind) override;
  /// The buffers taken, in index order.
  const std::vector<std::span<const std::byte>>& buffers() const noexcept { return buffers_; }

 private:
  std::size_t min_vector_bytes_;
  std::vector<std::span<const std::byte>> buffers_;
};

/// A BufferSource over buffers held in memory (for instance what a
/// SpanSink took, received by another process, or decompressed from a file).
class JOBLIB_EXPORT SharedBufferSource : public BufferSource {
 public:
  explicit SharedBufferSource(std::vector<SharedBuffer> buffers) : buffers_(std::move(buffers)) {}
  ~SharedBufferSource() override;
  std::size_t buffer_size(std::uint64_t index) const override;
  SharedBuffer get(std::uint64_t index) override;
  void read_into(std::uint64_t index, std::span<std::byte> dest) override;

 private:
  std::vector<SharedBuffer> buffers_;
};

}  // namespace joblib::detail

namespace joblib {

/// True when a value of type T can be written by dump, read back by load,
/// cached by Memory and sent to a worker process: the codec encodes it and
/// can build a T from its encoding (T has a default constructor or a cereal
/// load_and_construct). Aggregates of encodable fields qualify with no code
/// from the user.
template <class T>
concept encodable = detail::is_encodable_v<T> && detail::is_constructible_on_decode_v<std::remove_cv_t<T>>;

}  // namespace joblib
