#pragma once
// Internals of the codec (include <joblib/codec.hpp>, not this file): the
// hasher that Memory uses to key calls. It encodes values with the codec
// into an XXH3-128 digest; every large buffer goes to a sink that feeds its
// bytes to the digest in place, so gigabytes are hashed at memory speed and
// nothing is copied.
#include <joblib/detail/codec_archive.hpp>
#include <joblib/export.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <typeinfo>

namespace joblib::detail {

/// A 128-bit digest, most significant byte first.
using Digest = std::array<std::uint8_t, 16>;

/// Accumulates values into one XXH3-128 digest. The digest covers the
/// codec's canonical encoding: the structure with each buffer's bytes in
/// place, unordered containers in a canonical order (so insertion history
/// does not matter) and, with update(), the value's type. Not thread-safe;
/// one Hasher per thread.
class JOBLIB_EXPORT Hasher {
 public:
  Hasher();
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;

  /// Adds `value` and its type. Compile-time error for a type the codec
  /// cannot encode; SerializationError naming the type when cereal refuses
  /// it at run time (an unregistered polymorphic type).
  template <class T>
  Hasher& update(const T& value);
  /// Adds `value` without its type.
  template <class T>
  Hasher& update_value(const T& value);
  /// Adds raw bytes.
  Hasher& update_bytes(std::span<const std::byte> bytes);
  /// Adds the identity of a type (its mangled name).
  Hasher& update_type(const std::type_info& type);

  /// Digest of everything added so far (the hasher can go on).
  Digest digest();
  /// digest() as 32 lowercase hexadecimal characters.
  std::string hexdigest();
  /// Starts again from an empty digest.
  void reset();

  /// The stream and sink an EncodeArchive writes to (used by update()).
  OutputStream& stream() noexcept;
  BufferSink& sink() noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Demangled name of a type, for messages ("std::vector<double, ...>").
JOBLIB_EXPORT std::string demangle(const char* mangled);

template <class T>
std::string type_name() {
  return demangle(typeid(T).name());
}

/// XXH3-128 of `bytes` as 32 lowercase hex characters.
JOBLIB_EXPORT std::string hash_bytes(std::span<const std::byte> bytes);

}  // namespace joblib::detail
