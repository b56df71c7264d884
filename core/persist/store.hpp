#pragma once
// The dump file format (format version 1). All integers in native byte
// order (the byte-order mark tells a file from another architecture).
//
//   offset 0   Header (64 bytes, below)
//   64         type name, type_name_size bytes (demangled, for messages)
//   ...        structure, structure_size bytes (the codec's encoding)
//   ...        buffer table, buffer_count x {u64 offset, u64 size}
//   ...        zero padding to the next multiple of 64
//   offset_0   buffer 0, then zero padding to a multiple of 64, buffer 1, ...
//
// offset_0 = align64(end of the table) and offset_i+1 = align64(offset_i +
// size_i); the file ends right after the last buffer. `checksum` is XXH3-64
// of the header's first 56 bytes, the type name, the structure and the
// table (the buffers are not covered: hashing them would cost the constant
// time of a mapped load; compressed files carry the compressor's checksum).
// A compressed file is this whole byte stream inside one standard stream.
#include <array>
#include <cstddef>
#include <cstdint>

namespace joblib::detail {

inline constexpr std::array<unsigned char, 8> store_magic{0x89, 'J', 'O', 'B', 'L', 'I', 'B', '\n'};
inline constexpr std::uint32_t store_format_version = 1;
inline constexpr std::uint32_t store_byte_order_mark = 0x01020304;
inline constexpr std::size_t store_header_size = 64;
inline constexpr std::uint64_t store_max_type_name = 64 * 1024;

struct StoreHeader {
  unsigned char magic[8];
  std::uint32_t version;
  std::uint32_t byte_order;
  std::uint64_t type_name_size;
  std::uint64_t structure_size;
  std::uint64_t buffer_count;
  unsigned char fingerprint[16];  // XXH3-128 of the stored type's mangled name
  std::uint64_t checksum;
};
static_assert(sizeof(StoreHeader) == store_header_size);

struct StoreTableEntry {
  std::uint64_t offset;
  std::uint64_t size;
};
static_assert(sizeof(StoreTableEntry) == 16);

}  // namespace joblib::detail
