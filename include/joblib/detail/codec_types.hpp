#pragma once
// Internals of the codec (include <joblib/codec.hpp>, not this file): what
// the two archives do with primitive types, with bitwise std::vectors (their
// data out of band), with unordered containers when hashing, and with
// joblib::Array. The standard types themselves come from cereal's headers.
#include <joblib/array.hpp>
#include <joblib/detail/codec_archive.hpp>
#include <joblib/detail/codec_hash.hpp>

#include <boost/pfr/core.hpp>
#include <boost/pfr/tuple_size.hpp>
#include <cereal/archives/binary.hpp>
#include <cereal/cereal.hpp>
#include <cereal/types/common.hpp>
#include <cereal/types/memory.hpp>

#include <algorithm>
#include <array>
#include <complex>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <forward_list>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace joblib {

/// Specialize as std::true_type for a trivially copyable type whose bytes
/// are its value (no pointer, no padding that matters, no serialize of its
/// own): std::vector<T> and T itself are then encoded as raw bytes, and a
/// large vector travels out of band like an Array. Arithmetic types, enums
/// and std::array / std::complex of them are bitwise already.
template <class T>
struct is_bitwise_serializable : std::false_type {};

namespace detail {

template <class T>
struct IsBitwise : std::bool_constant<(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) || std::is_enum_v<T> ||
                                      is_bitwise_serializable<T>::value> {};
template <class T, std::size_t N>
struct IsBitwise<std::array<T, N>> : IsBitwise<T> {};
template <class T>
struct IsBitwise<std::complex<T>> : std::is_arithmetic<T> {};

/// True when a std::vector<T> is encoded as one raw buffer.
template <class T>
inline constexpr bool is_bitwise_v = IsBitwise<T>::value && std::is_trivially_copyable_v<T>;

// ---- primitives, as cereal's binary archive writes them --------------------

template <class T>
  requires std::is_arithmetic_v<T>
inline void CEREAL_SAVE_FUNCTION_NAME(EncodeArchive& ar, const T& t) {
  ar.saveBinary(std::addressof(t), sizeof(t));
}
template <class T>
  requires std::is_arithmetic_v<T>
inline void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, T& t) {
  ar.loadBinary(std::addressof(t), sizeof(t));
  if constexpr (std::is_same_v<T, bool>) {
    // A bool must hold 0 or 1; any other byte is corrupted data (and reading
    // it as bool would be undefined behaviour).
    unsigned char byte;
    std::memcpy(&byte, std::addressof(t), 1);
    if (byte > 1) throw_decode_error("a bool holds the byte " + std::to_string(byte));
  }
}

template <class T>
inline void CEREAL_SERIALIZE_FUNCTION_NAME(EncodeArchive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
inline void CEREAL_SERIALIZE_FUNCTION_NAME(DecodeArchive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}

template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(EncodeArchive& ar, const cereal::SizeTag<T>& t) {
  ar.save_u64(static_cast<std::uint64_t>(t.size));
}
template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, cereal::SizeTag<T>& t) {
  t.size = static_cast<std::remove_reference_t<decltype(t.size)>>(ar.load_count());
}

template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(EncodeArchive& ar, const cereal::BinaryData<T>& bd) {
  ar.saveBinary(bd.data, static_cast<std::size_t>(bd.size));
}
template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, cereal::BinaryData<T>& bd) {
  ar.loadBinary(bd.data, static_cast<std::size_t>(bd.size));
}

// ---- user types declared bitwise --------------------------------------------

template <class T>
  requires(is_bitwise_serializable<T>::value && !std::is_arithmetic_v<T> && !std::is_enum_v<T>)
inline void CEREAL_SAVE_FUNCTION_NAME(EncodeArchive& ar, const T& t) {
  static_assert(std::is_trivially_copyable_v<T>, "joblib::is_bitwise_serializable<T>: T must be trivially copyable");
  ar.saveBinary(std::addressof(t), sizeof(T));
}
template <class T>
  requires(is_bitwise_serializable<T>::value && !std::is_arithmetic_v<T> && !std::is_enum_v<T>)
inline void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, T& t) {
  static_assert(std::is_trivially_copyable_v<T>, "joblib::is_bitwise_serializable<T>: T must be trivially copyable");
  ar.loadBinary(std::addressof(t), sizeof(T));
}

// ---- aggregates: no code from the user (Boost.PFR) -----------------------------
// A struct with public fields, no constructors, no base classes and no
// cereal function of its own is encoded field by field, in declaration
// order. A type with its own serialize/save/load keeps it.

template <class T>
struct Encodable;

/// True when T has a cereal function of its own (member or non-member,
/// for any archive: cereal's binary archives stand for "any").
template <class T>
inline constexpr bool has_own_cereal_v =
    cereal::traits::is_output_serializable<T, cereal::BinaryOutputArchive>::value ||
    cereal::traits::is_input_serializable<T, cereal::BinaryInputArchive>::value ||
    cereal::traits::has_member_serialize<T, EncodeArchive>::value ||
    cereal::traits::has_member_save<T, EncodeArchive>::value ||
    cereal::traits::has_member_versioned_serialize<T, EncodeArchive>::value ||
    cereal::traits::has_member_versioned_save<T, EncodeArchive>::value;

template <class T, std::size_t... I>
constexpr bool aggregate_fields_encodable(std::index_sequence<I...>) {
  return ((!std::is_reference_v<boost::pfr::tuple_element_t<I, T>> &&
           !std::is_const_v<boost::pfr::tuple_element_t<I, T>> &&
           Encodable<std::remove_cv_t<boost::pfr::tuple_element_t<I, T>>>::value) &&
          ...);
}

// Boost.PFR stops compilation on an aggregate with a base class and
// miscounts one with a C array field. Both are seen first, without an
// error: a probe that converts to any field type but T's bases initializes
// as many fields between parentheses (no brace elision) as between braces
// only when every initializer lands on a direct field.
template <class T>
struct FieldProbe {
  template <class U>
    requires(!std::is_same_v<std::remove_cv_t<U>, T> && !std::is_base_of_v<std::remove_cv_t<U>, T>)
  operator U&&() const;  // declared only: used in unevaluated contexts
};
template <class T, std::size_t>
using field_probe_t = FieldProbe<T>;

template <class T, bool Parenthesized, std::size_t... I>
constexpr bool initializable_from_probes(std::index_sequence<I...>) {
  if constexpr (Parenthesized)
    return requires { T(field_probe_t<T, I>{}...); };
  else
    return requires { T{field_probe_t<T, I>{}...}; };
}

/// How many initializers T takes, up to 64 (parenthesized: direct fields).
template <class T, bool Parenthesized, std::size_t N = 1>
constexpr std::size_t probe_field_count() {
  if constexpr (N > 64 || !initializable_from_probes<T, Parenthesized>(std::make_index_sequence<N>{}))
    return N - 1;
  else
    return probe_field_count<T, Parenthesized, N + 1>();
}

template <class T>
constexpr bool plain_aggregate() {
  constexpr std::size_t braced = probe_field_count<T, false>();
#if defined(__cpp_aggregate_paren_init)
  return braced >= 1 && braced == probe_field_count<T, true>();
#else
  return braced >= 1;  // (no parenthesized aggregates: PFR's own checks stand)
#endif
}

template <class T>
constexpr bool reflectable_aggregate() {
  if constexpr (std::is_class_v<T> && !std::is_union_v<T> && std::is_aggregate_v<T> && !std::is_empty_v<T> &&
                !is_bitwise_serializable<T>::value && !has_own_cereal_v<T>) {
    if constexpr (plain_aggregate<T>())
      return aggregate_fields_encodable<T>(std::make_index_sequence<boost::pfr::tuple_size_v<T>>{});
    else
      return false;
  } else {
    return false;
  }
}

/// True for an aggregate that the codec encodes field by field.
template <class T>
concept reflectable_aggregate_c = reflectable_aggregate<T>();

// (The archive is a template parameter checked first, so that cereal's
// probes with its own archives never evaluate the aggregate test.)
template <class A, class T>
  requires std::same_as<A, EncodeArchive> && reflectable_aggregate_c<T>
inline void CEREAL_SAVE_FUNCTION_NAME(A& ar, const T& t) {
  boost::pfr::for_each_field(t, [&ar](const auto& field) { ar(field); });
}
template <class A, class T>
  requires std::same_as<A, DecodeArchive> && reflectable_aggregate_c<T>
inline void CEREAL_LOAD_FUNCTION_NAME(A& ar, T& t) {
  boost::pfr::for_each_field(t, [&ar](auto& field) { ar(field); });
}

// ---- values without a default constructor -------------------------------------

/// True when T can be decoded where no T exists yet: it is
/// default-constructible (cereal loads into an object) or has a cereal
/// load_and_construct.
template <class T>
inline constexpr bool is_constructible_on_decode_v =
    std::is_default_constructible_v<T> || cereal::traits::has_load_and_construct<T, DecodeArchive>::value;

/// Reads one T from `ar`: into a value-initialized T, or through T's
/// load_and_construct when T has no default constructor.
template <class T>
T load_value(DecodeArchive& ar) {
  if constexpr (std::is_default_constructible_v<T>) {
    T value{};
    ar(value);
    return value;
  } else {
    static_assert(cereal::traits::has_load_and_construct<T, DecodeArchive>::value,
                  "joblib: a decoded type needs a default constructor or a cereal load_and_construct");
    struct alignas(T) Storage {
      std::byte bytes[sizeof(T)];
    } storage;
    cereal::memory_detail::LoadAndConstructLoadWrapper<DecodeArchive, T> wrapper(
        reinterpret_cast<T*>(storage.bytes));
    T* constructed = nullptr;
    try {
      wrapper.CEREAL_SERIALIZE_FUNCTION_NAME(ar);
      constructed = wrapper.construct.ptr();  // throws when load_and_construct never constructed
    } catch (...) {
      try {
        std::destroy_at(wrapper.construct.ptr());
      } catch (...) {
      }
      throw;
    }
    struct Destroy {
      T* p;
      ~Destroy() { std::destroy_at(p); }
    } destroy{constructed};
    return T(std::move(*constructed));
  }
}

// ---- std::vector ------------------------------------------------------------
// Bitwise elements: [count][buffer reference]; the data may go out of band.
// Other elements: cereal's layout, [count][element]..., decoded into a
// vector reserved for the count as far as the bytes left can hold that
// many elements (a lying count reserves at most about twice the data's size
// and allocates nothing beyond), then grown as elements arrive.

template <class T>
inline constexpr bool is_basic_string_v = false;
template <class C, class Tr, class A>
inline constexpr bool is_basic_string_v<std::basic_string<C, Tr, A>> = true;

/// The fewest bytes one T takes in the structure (1 when not known): bounds
/// how many elements the bytes left can hold.
template <class T>
constexpr std::size_t min_encoded_size() noexcept {
  if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) {
    return sizeof(T);
  } else if constexpr (is_basic_string_v<T>) {
    return sizeof(std::uint64_t);  // the length
  } else if constexpr (requires { typename T::first_type; typename T::second_type; }) {
    return min_encoded_size<typename T::first_type>() + min_encoded_size<typename T::second_type>();
  } else {
    return 1;
  }
}

/// How many elements of T to reserve for a count of `n` with `remaining`
/// bytes of data left.
template <class T>
std::size_t reserve_for(std::uint64_t n, std::size_t remaining) noexcept {
  const std::uint64_t fit = remaining / min_encoded_size<T>();
  const std::uint64_t cap = std::max<std::uint64_t>(std::uint64_t{1} << 20, 2 * std::uint64_t(remaining)) / sizeof(T) + 1;
  return static_cast<std::size_t>(std::min({n, fit, cap}));
}

template <class T, class A>
  requires(!std::is_same_v<T, bool>)
inline void CEREAL_SAVE_FUNCTION_NAME(EncodeArchive& ar, const std::vector<T, A>& v) {
  if constexpr (is_bitwise_v<T>) {
    ar.save_u64(v.size());
    ar.save_buffer(std::as_bytes(std::span<const T>(v.data(), v.size())), BufferKind::vector);
  } else {
    ar(cereal::make_size_tag(static_cast<cereal::size_type>(v.size())));
    for (const auto& x : v) ar(x);
  }
}

template <class T, class A>
  requires(!std::is_same_v<T, bool>)
inline void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, std::vector<T, A>& v) {
  if constexpr (is_bitwise_v<T>) {
    const std::uint64_t n = ar.load_u64();
    const auto ref = ar.load_buffer_ref();
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T) || n * sizeof(T) != ref.size)
      throw_decode_error("a vector of " + std::to_string(n) + " elements of " + std::to_string(sizeof(T)) +
                         " bytes with a buffer of " + std::to_string(ref.size) + " bytes");
    v.clear();
    v.resize(static_cast<std::size_t>(n));
    ar.copy_buffer(ref, std::as_writable_bytes(std::span<T>(v.data(), v.size())));
  } else {
    cereal::size_type n;
    ar(cereal::make_size_tag(n));
    v.clear();
    v.reserve(reserve_for<T>(n, ar.remaining()));
    for (cereal::size_type i = 0; i < n; ++i) {
      if constexpr (std::is_default_constructible_v<T>) {
        v.emplace_back();
        ar(v.back());
      } else {
        v.push_back(load_value<T>(ar));
      }
    }
  }
}

// ---- deque, list, forward_list: grow as elements arrive ----------------------
// (cereal resizes to the stored count first: a lying count would allocate
// count * sizeof(T) before the data runs out.)

template <class C>
void load_sequence(DecodeArchive& ar, C& c) {
  cereal::size_type n;
  ar(cereal::make_size_tag(n));
  c.clear();
  if constexpr (requires { c.push_front(std::declval<typename C::value_type>()); } &&
                !requires { c.push_back(std::declval<typename C::value_type>()); }) {
    auto last = c.before_begin();  // forward_list
    for (cereal::size_type i = 0; i < n; ++i) {
      last = c.emplace_after(last);
      ar(*last);
    }
  } else if constexpr (std::is_default_constructible_v<typename C::value_type>) {
    for (cereal::size_type i = 0; i < n; ++i) {
      c.emplace_back();
      ar(c.back());
    }
  } else {
    for (cereal::size_type i = 0; i < n; ++i) c.push_back(load_value<typename C::value_type>(ar));
  }
}

template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, std::deque<T, A>& c) {
  load_sequence(ar, c);
}
template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, std::list<T, A>& c) {
  load_sequence(ar, c);
}
template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, std::forward_list<T, A>& c) {
  load_sequence(ar, c);
}

// ---- unordered containers: canonical order when hashing ---------------------

template <class C, class Element>
void save_unordered(EncodeArchive& ar, const C& c, Element&& element) {
  ar(cereal::make_size_tag(static_cast<cereal::size_type>(c.size())));
  if (!ar.canonical()) {
    for (const auto& e : c) element(ar, e);
    return;
  }
  // Hash each element on its own, then write the sorted digests: equal
  // containers give equal bytes whatever their bucket order.
  std::vector<Digest> digests;
  digests.reserve(c.size());
  Hasher h;
  for (const auto& e : c) {
    h.reset();
    EncodeArchive inner(h.stream(), &h.sink(), /*canonical=*/true);
    element(inner, e);
    digests.push_back(h.digest());
  }
  std::sort(digests.begin(), digests.end());
  for (const auto& d : digests) ar.saveBinary(d.data(), d.size());
}

inline constexpr auto save_map_item = [](EncodeArchive& ar, const auto& kv) {
  ar(cereal::make_map_item(kv.first, kv.second));
};
inline constexpr auto save_set_item = [](EncodeArchive& ar, const auto& k) { ar(k); };

template <class K, class V, class H, class E, class A>
void CEREAL_SAVE_FUNCTION_NAME(EncodeArchive& ar, const std::unordered_map<K, V, H, E, A>& m) {
  save_unordered(ar, m, save_map_item);
}
template <class K, class V, class H, class E, class A>
void CEREAL_SAVE_FUNCTION_NAME(EncodeArchive& ar, const std::unordered_multimap<K, V, H, E, A>& m) {
  save_unordered(ar, m, save_map_item);
}
template <class K, class H, class E, class A>
void CEREAL_SAVE_FUNCTION_NAME(EncodeArchive& ar, const std::unordered_set<K, H, E, A>& s) {
  save_unordered(ar, s, save_set_item);
}
template <class K, class H, class E, class A>
void CEREAL_SAVE_FUNCTION_NAME(EncodeArchive& ar, const std::unordered_multiset<K, H, E, A>& s) {
  save_unordered(ar, s, save_set_item);
}

// ---- multimap / multiset: keep the order of equal keys ------------------------
// (cereal inserts each element before the previous one, which reverses runs
// of equal keys; inserting at the end keeps them, in O(1) for sorted input.)

template <class C, class Element>
void load_multi(DecodeArchive& ar, C& c, Element&& element) {
  cereal::size_type n;
  ar(cereal::make_size_tag(n));
  c.clear();
  for (cereal::size_type i = 0; i < n; ++i) element(c);
}

template <class K, class V, class Cmp, class A>
void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, std::multimap<K, V, Cmp, A>& m) {
  load_multi(ar, m, [&](auto& c) {
    K key{};
    V value{};
    ar(cereal::make_map_item(key, value));
    c.emplace_hint(c.end(), std::move(key), std::move(value));
  });
}
template <class K, class Cmp, class A>
void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, std::multiset<K, Cmp, A>& s) {
  load_multi(ar, s, [&](auto& c) {
    K key{};
    ar(key);
    c.emplace_hint(c.end(), std::move(key));
  });
}

// ---- strings, unordered sets: nothing taken before the data is there ----------
// (cereal resizes a string to its stored length, sizeof(CharT) bytes per
// character, and reserves buckets for every element an unordered set claims:
// a lying length would take several times the bytes the data holds.)

template <class C, class Tr, class A>
void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, std::basic_string<C, Tr, A>& s) {
  const std::uint64_t n = ar.load_u64();
  if (n > ar.remaining() / sizeof(C))
    throw_decode_error("a string claims " + std::to_string(n) + " characters of " + std::to_string(sizeof(C)) +
                       " bytes but only " + std::to_string(ar.remaining()) + " bytes are left");
  s.resize(static_cast<std::size_t>(n));
  ar.loadBinary(s.data(), static_cast<std::size_t>(n) * sizeof(C));
}

template <class C>
void load_unordered_set(DecodeArchive& ar, C& c) {
  cereal::size_type n;
  ar(cereal::make_size_tag(n));
  c.clear();
  // At most 1 MiB of buckets up front; the set grows as its elements arrive.
  c.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(n, (std::uint64_t{1} << 20) / sizeof(void*))));
  for (cereal::size_type i = 0; i < n; ++i) {
    typename C::key_type key{};
    ar(key);
    c.emplace(std::move(key));
  }
}

template <class K, class H, class E, class A>
void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, std::unordered_set<K, H, E, A>& s) {
  load_unordered_set(ar, s);
}
template <class K, class H, class E, class A>
void CEREAL_LOAD_FUNCTION_NAME(DecodeArchive& ar, std::unordered_multiset<K, H, E, A>& s) {
  load_unordered_set(ar, s);
}

/// Upper bound on the number of dimensions an encoded Array may claim.
inline constexpr std::uint64_t max_array_ndim = 64;

}  // namespace detail

// ---- joblib::Array ------------------------------------------------------------
// Codec layout: [item size u32][ndim u64][extent u64]...[buffer reference];
// the data always goes to the sink when there is one (dump maps it back).

template <class T>
void CEREAL_SAVE_FUNCTION_NAME(detail::EncodeArchive& ar, const Array<T>& a) {
  const std::uint32_t item = sizeof(T);
  ar.saveBinary(&item, sizeof item);
  ar.save_u64(a.ndim());
  for (std::size_t d : a.shape()) ar.save_u64(d);
  const std::shared_ptr<const void> owner = a.buffer().data;
  ar.save_buffer(std::as_bytes(a.cspan()), BufferKind::array, &owner);
}

template <class T>
void CEREAL_LOAD_FUNCTION_NAME(detail::DecodeArchive& ar, Array<T>& a) {
  std::uint32_t item;
  ar.loadBinary(&item, sizeof item);
  if (item != sizeof(T))
    detail::throw_decode_error("an array of " + std::to_string(item) + "-byte elements where " +
                               std::to_string(sizeof(T)) + "-byte elements were expected");
  const std::uint64_t ndim = ar.load_u64();
  if (ndim > detail::max_array_ndim) detail::throw_decode_error("an array of " + std::to_string(ndim) + " dimensions");
  std::vector<std::size_t> shape(static_cast<std::size_t>(ndim));
  for (auto& d : shape) d = static_cast<std::size_t>(ar.load_u64());
  std::size_t count = 0;
  try {
    count = detail::shape_size(shape, sizeof(T));
  } catch (const std::invalid_argument&) {
    detail::throw_decode_error("an array shape whose size overflows");
  }
  const auto ref = ar.load_buffer_ref();
  if (ref.size != count * sizeof(T))
    detail::throw_decode_error("an array of " + std::to_string(count) + " elements with a buffer of " +
                               std::to_string(ref.size) + " bytes");
  try {
    a = Array<T>(std::move(shape), ar.shared_buffer(ref));
  } catch (const std::invalid_argument& e) {
    detail::throw_decode_error(e.what());
  }
}

// Any other cereal archive (JSON, XML, cereal's binary): the shape, then the
// data as one binary block where the archive supports it, else element-wise.
template <class Archive, class T>
  requires(!std::is_same_v<Archive, detail::EncodeArchive>)
void CEREAL_SAVE_FUNCTION_NAME(Archive& ar, const Array<T>& a) {
  ar(cereal::make_nvp("shape", a.shape()));
  if constexpr (cereal::traits::is_output_serializable<cereal::BinaryData<T>, Archive>::value) {
    ar(cereal::binary_data(a.data(), a.nbytes()));
  } else {
    for (const T& x : a.cspan()) ar(x);
  }
}
template <class Archive, class T>
  requires(!std::is_same_v<Archive, detail::DecodeArchive>)
void CEREAL_LOAD_FUNCTION_NAME(Archive& ar, Array<T>& a) {
  std::vector<std::size_t> shape;
  ar(cereal::make_nvp("shape", shape));
  Array<T> r(std::move(shape));
  if constexpr (cereal::traits::is_input_serializable<cereal::BinaryData<T>, Archive>::value) {
    ar(cereal::binary_data(r.data(), r.nbytes()));
  } else {
    for (T& x : r.span()) ar(x);
  }
  a = std::move(r);
}

}  // namespace joblib
