// dump / load: the file format of store.hpp, written through a temporary
// file and checked field by field on the way back in.
#include "store.hpp"

#include "compress.hpp"
#include "store_io.hpp"

#include <joblib/persistence.hpp>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <set>
#include <utility>

namespace joblib::detail {

namespace fs = std::filesystem;

OpenedDump::~OpenedDump() = default;

void validate_compress(const Compress& compress) { check_compress(compress); }

void throw_corrupted(const fs::path& file, const std::string& what) {
  throw StoreError(fmt::format("cannot load '{}': corrupted file: {}", file.string(), what));
}

namespace {

[[noreturn]] void bad_file(const fs::path& file, const std::string& what) {
  throw StoreError(fmt::format("cannot load '{}': {}", file.string(), what));
}

using Fingerprint = std::array<unsigned char, 16>;

Fingerprint fingerprint_of(const std::type_info& type) {
  const char* name = type.name();
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(name, std::strlen(name)));
  Fingerprint f;
  std::memcpy(f.data(), c.digest, f.size());
  return f;
}

bool add(std::uint64_t a, std::uint64_t b, std::uint64_t& out) { return !__builtin_add_overflow(a, b, &out); }

bool align64(std::uint64_t x, std::uint64_t& out) {
  if (!add(x, 63, out)) return false;
  out &= ~std::uint64_t{63};
  return true;
}

std::string mode_name(MmapMode m) {
  switch (m) {
    case MmapMode::r: return "r";
    case MmapMode::r_plus: return "r+";
    case MmapMode::w_plus: return "w+";
    case MmapMode::c: return "c";
    case MmapMode::none: break;
  }
  return "None";
}

// Python's default warning filter: each distinct message once per process.
void warn_once(const std::string& message) {
  static std::mutex* mutex = new std::mutex;
  static std::set<std::string>* seen = new std::set<std::string>;
  std::lock_guard<std::mutex> lock(*mutex);
  if (!seen->insert(message).second) return;
  std::fprintf(stderr, "UserWarning: %s\n", message.c_str());
  std::fflush(stderr);
}

[[maybe_unused]] std::uint64_t checksum_of(std::span<const std::byte> header, std::span<const std::byte> rest) {
  XXH3_state_t* s = XXH3_createState();
  if (s == nullptr) throw std::bad_alloc();
  XXH3_64bits_reset(s);
  XXH3_64bits_update(s, header.data(), offsetof(StoreHeader, checksum));
  XXH3_64bits_update(s, rest.data(), rest.size());
  const std::uint64_t h = XXH3_64bits_digest(s);
  XXH3_freeState(s);
  return h;
}

bool has_magic(std::span<const std::byte> head) {
  return head.size() >= store_magic.size() && std::memcmp(head.data(), store_magic.data(), store_magic.size()) == 0;
}

bool is_magic_prefix(std::span<const std::byte> head) {
  return head.size() < store_magic.size() && std::memcmp(head.data(), store_magic.data(), head.size()) == 0;
}

std::string hex_bytes(std::span<const std::byte> bytes) {
  std::string s;
  for (std::size_t i = 0; i < bytes.size() && i < 8; ++i)
    s += fmt::format("{}{:02x}", i ? " " : "", std::to_integer<unsigned>(bytes[i]));
  return s;
}

// Checks the fixed part of the header and returns the size of header, type
// name, structure and table together.
std::uint64_t meta_size_of(const fs::path& file, const StoreHeader& h) {
  if (h.byte_order != store_byte_order_mark) {
    if (h.byte_order == __builtin_bswap32(store_byte_order_mark))
      bad_file(file, "written on a machine of the other byte order; this build cannot read it");
    throw_corrupted(file, "bad byte-order mark");
  }
  if (h.version == 0) throw_corrupted(file, "bad format version 0");
  if (h.version > store_format_version)
    bad_file(file, fmt::format("written in a newer joblib-cpp file format (version {}); this build reads "
                               "format versions up to {}",
                               h.version, store_format_version));
  if (h.type_name_size > store_max_type_name)
    throw_corrupted(file, fmt::format("a type name of {} bytes", h.type_name_size));
  std::uint64_t size = store_header_size;
  if (h.buffer_count > (UINT64_MAX / sizeof(StoreTableEntry)) || !add(size, h.type_name_size, size) ||
      !add(size, h.structure_size, size) || !add(size, h.buffer_count * sizeof(StoreTableEntry), size))
    throw_corrupted(file, "the header's sizes overflow");
  return size;
}

struct Meta {
  std::span<const std::byte> structure;
  std::vector<StoreTableEntry> table;
  std::uint64_t total_size = 0;  // end of the last buffer: the size of the whole dump
};

// Checks the checksum, the stored type and the buffer table of `bytes`
// (header, type name, structure, table).
Meta parse_meta(const fs::path& file, std::span<const std::byte> bytes, const std::type_info& type) {
  StoreHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  // (Fuzzing builds skip this so that mutated structures reach the decoder.)
  if (checksum_of(bytes.first(store_header_size), bytes.subspan(store_header_size)) != h.checksum)
    throw_corrupted(file, "the checksum of the header and structure does not match");
#endif
  const auto* p = bytes.data() + store_header_size;
  const std::string_view stored_name(reinterpret_cast<const char*>(p), h.type_name_size);
  p += h.type_name_size;
  const Fingerprint expected = fingerprint_of(type);
  if (std::memcmp(expected.data(), h.fingerprint, expected.size()) != 0)
    bad_file(file, fmt::format("the file holds a value of another type: {}, not {}", stored_name, demangle(type.name())));
  Meta m;
  m.structure = {p, static_cast<std::size_t>(h.structure_size)};
  p += h.structure_size;
  m.table.resize(static_cast<std::size_t>(h.buffer_count));
  if (!m.table.empty()) std::memcpy(m.table.data(), p, m.table.size() * sizeof(StoreTableEntry));
  std::uint64_t pos = bytes.size();
  for (std::size_t i = 0; i < m.table.size(); ++i) {
    std::uint64_t expected_offset;
    if (!align64(pos, expected_offset) || m.table[i].offset != expected_offset)
      throw_corrupted(file, fmt::format("buffer {} starts at offset {}, not at {}", i, m.table[i].offset, expected_offset));
    if (!add(m.table[i].offset, m.table[i].size, pos) || m.table[i].size > SIZE_MAX)
      throw_corrupted(file, fmt::format("buffer {} has a size of {} bytes", i, m.table[i].size));
  }
  m.total_size = pos;
  return m;
}

// ---- memory for sizes a file claims ----------------------------------------------

[[noreturn]] void out_of_memory(const fs::path& file, const std::string& what, std::uint64_t size) {
  bad_file(file, fmt::format("{} needs {} bytes, more memory than can be had (a corrupted file?)", what, size));
}

// allocate_buffer() for a size read from `file`: StoreError, not bad_alloc.
SharedBuffer allocate_claimed(const fs::path& file, const std::string& what, std::uint64_t size) {
  try {
    if (size > SIZE_MAX) throw std::bad_alloc();
    return allocate_buffer(static_cast<std::size_t>(size), /*zero=*/false);
  } catch (const std::bad_alloc&) {
    out_of_memory(file, what, size);
  }
}

// A size that a compressed stream claims is taken as its bytes arrive: at
// most this much before the first of them, then twice what has arrived, so
// that a lying size costs no more memory than the data really decompressed
// (and is found out as a truncated file when the stream ends).
constexpr std::size_t claim_step = std::size_t{64} << 20;

// Anonymous memory that grows without copying what it holds (mremap).
class GrowingBlock {
 public:
  explicit GrowingBlock(std::size_t capacity) : capacity_(capacity) {
    void* p = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    data_ = static_cast<std::byte*>(p);
  }
  GrowingBlock(const GrowingBlock&) = delete;
  GrowingBlock& operator=(const GrowingBlock&) = delete;
  ~GrowingBlock() {
    if (data_ != nullptr) ::munmap(data_, capacity_);
  }
  std::byte* data() const noexcept { return data_; }
  std::size_t capacity() const noexcept { return capacity_; }
  void grow(std::size_t capacity) {
#ifdef MREMAP_MAYMOVE
    void* p = ::mremap(data_, capacity_, capacity, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) throw std::bad_alloc();
    data_ = static_cast<std::byte*>(p);
    capacity_ = capacity;
#else
    GrowingBlock next(capacity);
    std::memcpy(next.data_, data_, capacity_);
    std::swap(data_, next.data_);
    std::swap(capacity_, next.capacity_);
#endif
  }
  // The block as a buffer that an Array can adopt (page aligned).
  SharedBuffer release() noexcept {
    SharedBuffer b;
    const std::size_t n = capacity_;
    b.data = std::shared_ptr<std::byte>(std::exchange(data_, nullptr), [n](std::byte* q) { ::munmap(q, n); });
    b.size = n;
    return b;
  }

 private:
  std::byte* data_ = nullptr;
  std::size_t capacity_;
};

// Reads the next `size` bytes of the stream, of which `head` (already read)
// are the first, into memory of their own, taken as they arrive. Throws
// StoreError: "truncated file" when the stream ends first, "more memory
// than can be had" when the bytes that did arrive exhaust memory.
SharedBuffer read_claimed(Decompressor& in, std::span<const std::byte> head, std::uint64_t size, const fs::path& file,
                          std::string_view method, const std::string& what) {
  auto truncated = [&] {
    bad_file(file, fmt::format("truncated file: the {} stream ends before the end of the dump", method));
  };
  if (size <= claim_step) {
    SharedBuffer b = allocate_claimed(file, what, size);
    if (!head.empty()) std::memcpy(b.data.get(), head.data(), head.size());
    const std::span<std::byte> rest(b.data.get() + head.size(), b.size - head.size());
    if (in.read(rest) != rest.size()) truncated();
    return b;
  }
  if (size > SIZE_MAX) out_of_memory(file, what, size);
  const auto n = static_cast<std::size_t>(size);
  try {
    GrowingBlock block(claim_step);
    if (!head.empty()) std::memcpy(block.data(), head.data(), head.size());
    std::size_t done = head.size();
    while (true) {
      const std::span<std::byte> room(block.data() + done, block.capacity() - done);
      if (in.read(room) != room.size()) truncated();
      done = block.capacity();
      if (done == n) return block.release();
      block.grow(n - done > done ? 2 * done : n);
    }
  } catch (const std::bad_alloc&) {
    out_of_memory(file, what, size);
  }
}

// ---- sources ----------------------------------------------------------------------

const StoreTableEntry& entry_of(const std::vector<StoreTableEntry>& table, std::uint64_t index) {
  if (index >= table.size())
    throw_decode_error(fmt::format("buffer {} does not exist ({} buffers)", index, table.size()));
  return table[index];
}

// Buffers read from an uncompressed file, each straight into its own memory.
class FileSource final : public BufferSource {
 public:
  FileSource(Fd fd, std::vector<StoreTableEntry> table, fs::path file)
      : fd_(std::move(fd)), table_(std::move(table)), file_(std::move(file)) {}
  std::size_t buffer_size(std::uint64_t index) const override { return entry_of(table_, index).size; }
  SharedBuffer get(std::uint64_t index) override {
    const auto& e = entry_of(table_, index);
    SharedBuffer b = allocate_claimed(file_, fmt::format("buffer {}", index), e.size);
    read(e, {b.data.get(), b.size});
    return b;
  }
  void read_into(std::uint64_t index, std::span<std::byte> dest) override {
    const auto& e = entry_of(table_, index);
    if (dest.size() != e.size) throw_decode_error("buffer size mismatch");
    read(e, dest);
  }

 private:
  void read(const StoreTableEntry& e, std::span<std::byte> dest) {
    if (pread_full(fd_.get(), dest, e.offset, file_) != dest.size())
      bad_file(file_, "truncated file: it became shorter while it was read");
  }
  Fd fd_;
  std::vector<StoreTableEntry> table_;
  fs::path file_;
};

// Buffers that are windows into a mapping of the whole file.
class MappedSource final : public BufferSource {
 public:
  MappedSource(std::shared_ptr<Mapping> mapping, std::vector<StoreTableEntry> table, MmapMode mode, const fs::path& file)
      : mapping_(std::move(mapping)),
        table_(std::move(table)),
        writable_(mode != MmapMode::r),
        file_(std::make_shared<const std::string>(file.string())) {}
  std::size_t buffer_size(std::uint64_t index) const override { return entry_of(table_, index).size; }
  SharedBuffer get(std::uint64_t index) override {
    const auto& e = entry_of(table_, index);
    SharedBuffer b;
    b.data = std::shared_ptr<std::byte>(mapping_, mapping_->addr + e.offset);
    b.size = static_cast<std::size_t>(e.size);
    b.writable = writable_;
    b.mapped = true;
    b.file = file_;
    return b;
  }
  void read_into(std::uint64_t index, std::span<std::byte> dest) override {
    const auto& e = entry_of(table_, index);
    if (dest.size() != e.size) throw_decode_error("buffer size mismatch");
    if (!dest.empty()) std::memcpy(dest.data(), mapping_->addr + e.offset, dest.size());
  }

 private:
  std::shared_ptr<Mapping> mapping_;
  std::vector<StoreTableEntry> table_;
  bool writable_;
  std::shared_ptr<const std::string> file_;
};

class LoadedDump final : public OpenedDump {
 public:
  LoadedDump(std::shared_ptr<const void> keep, std::span<const std::byte> structure,
             std::unique_ptr<BufferSource> source)
      : keep_(std::move(keep)), structure_(structure), source_(std::move(source)) {}
  std::span<const std::byte> structure() const noexcept override { return structure_; }
  BufferSource& source() noexcept override { return *source_; }

 private:
  std::shared_ptr<const void> keep_;
  std::span<const std::byte> structure_;
  std::unique_ptr<BufferSource> source_;
};

// ---- the two ways in ------------------------------------------------------------------

std::unique_ptr<OpenedDump> open_plain(const fs::path& file, Fd fd, const struct stat& st, const StoreHeader& h,
                                       MmapMode mode, const std::type_info& type) {
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  const std::uint64_t meta_size = meta_size_of(file, h);
  if (meta_size > file_size)
    bad_file(file, fmt::format("truncated file: {} bytes, the dump needs at least {}", file_size, meta_size));
  auto check_total = [&](const Meta& m) {
    if (m.total_size > file_size)
      bad_file(file, fmt::format("truncated file: {} bytes, the dump needs {}", file_size, m.total_size));
    if (m.total_size < file_size)
      throw_corrupted(file, fmt::format("{} unexpected bytes after the end of the dump", file_size - m.total_size));
  };

  if (mode != MmapMode::none) {
    if (mode == MmapMode::r_plus || mode == MmapMode::w_plus) {
      // Writes must reach the file: map it through a read-write descriptor
      // of the very file checked so far.
      const int rw = ::open(file.c_str(), O_RDWR | O_CLOEXEC);
      if (rw < 0) throw_os_error(fmt::format("joblib::load: cannot open for mmap_mode {}", mode_name(mode)), file, errno);
      Fd rw_fd(rw);
      struct stat st2;
      if (::fstat(rw, &st2) != 0) throw_os_error("joblib::load: cannot open", file, errno);
      if (st2.st_dev != st.st_dev || st2.st_ino != st.st_ino)
        bad_file(file, "the file was replaced while it was opened");
      fd = std::move(rw_fd);
    }
    std::shared_ptr<Mapping> mapping = map_file(fd.get(), static_cast<std::size_t>(file_size), mode, file);
    Meta m = parse_meta(file, {mapping->addr, static_cast<std::size_t>(meta_size)}, type);
    check_total(m);
    const auto structure = m.structure;
    auto source = std::make_unique<MappedSource>(mapping, std::move(m.table), mode, file);
    return std::make_unique<LoadedDump>(std::move(mapping), structure, std::move(source));
  }

  // The structure is read whole and dropped once decoded: from the heap,
  // whose allocator hands the next load the memory this one freed, where a
  // fresh mapping would cost a page fault per 4 KiB (meta_size is at most
  // the file's size, checked above).
  std::shared_ptr<std::byte> meta;
  try {
    meta = std::shared_ptr<std::byte>(new std::byte[static_cast<std::size_t>(meta_size)], std::default_delete<std::byte[]>());
  } catch (const std::bad_alloc&) {
    out_of_memory(file, "the dump's structure", meta_size);
  }
  const std::span<std::byte> bytes(meta.get(), static_cast<std::size_t>(meta_size));
  if (pread_full(fd.get(), bytes, 0, file) != bytes.size())
    bad_file(file, "truncated file: it became shorter while it was read");
  Meta m = parse_meta(file, bytes, type);
  check_total(m);
  const auto structure = m.structure;
  auto source = std::make_unique<FileSource>(std::move(fd), std::move(m.table), file);
  return std::make_unique<LoadedDump>(std::move(meta), structure, std::move(source));
}

std::unique_ptr<OpenedDump> open_compressed(const fs::path& file, Fd fd, Method method, const std::type_info& type) {
  FdReader reader(fd.get(), file);
  const std::unique_ptr<Decompressor> in = make_decompressor(method, reader);
  const std::string_view name = method_name(method);
  try {
    std::array<std::byte, store_header_size> head_bytes;
    const std::size_t n = in->read(head_bytes);
    const std::span<const std::byte> head(head_bytes.data(), n);
    if (!has_magic(head) && !(n != 0 && is_magic_prefix(head))) {
      // Garbage at the start may be a corrupted stream whose check comes
      // later (bz2 checks a whole block at its end): read on a little so
      // that the decompressor can say so.
      std::vector<std::byte> scratch(std::size_t{1} << 16);
      for (std::size_t total = 0; total < (std::size_t{16} << 20);) {
        const std::size_t k = in->read(scratch);
        if (k == 0) break;
        total += k;
      }
      bad_file(file, fmt::format("not a joblib-cpp file (a {} stream that does not hold a joblib-cpp dump)", name));
    }
    if (n < store_header_size)
      bad_file(file, fmt::format("truncated file: the {} stream holds {} bytes, a dump header needs {}", name, n,
                                 store_header_size));
    StoreHeader h;
    std::memcpy(&h, head.data(), sizeof h);
    const std::uint64_t meta_size = meta_size_of(file, h);
    const SharedBuffer meta = read_claimed(*in, head, meta_size, file, name, "the dump's structure");
    Meta m = parse_meta(file, {meta.data.get(), meta.size}, type);
    std::vector<SharedBuffer> buffers;
    buffers.reserve(m.table.size());
    std::uint64_t pos = meta_size;
    for (std::size_t i = 0; i < m.table.size(); ++i) {
      std::array<std::byte, 64> pad;
      const auto pad_size = static_cast<std::size_t>(m.table[i].offset - pos);
      if (in->read({pad.data(), pad_size}) != pad_size)
        bad_file(file, fmt::format("truncated file: the {} stream ends before the end of the dump", name));
      buffers.push_back(read_claimed(*in, {}, m.table[i].size, file, name, fmt::format("buffer {}", i)));
      pos = m.table[i].offset + m.table[i].size;
    }
    std::byte extra;
    if (in->read({&extra, 1}) != 0) throw_corrupted(file, fmt::format("unexpected data after the end of the dump"));
    const auto structure = m.structure;
    return std::make_unique<LoadedDump>(meta.data, structure, std::make_unique<SharedBufferSource>(std::move(buffers)));
  } catch (const FormatError& e) {
    bad_file(file, e.what());
  }
}

std::unique_ptr<OpenedDump> open_file(const fs::path& file, const LoadOptions& options, const std::type_info& type) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
  const int raw = ::open(file.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (raw < 0) throw_os_error("joblib::load: cannot open", file, errno);
  Fd fd(raw);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw_os_error("joblib::load: cannot open", file, errno);
  if (!S_ISREG(st.st_mode)) bad_file(file, S_ISDIR(st.st_mode) ? "not a regular file (a directory)" : "not a regular file");

  std::array<std::byte, store_header_size> head_bytes;
  const std::size_t n = pread_full(fd.get(), head_bytes, 0, file);
  const std::span<const std::byte> head(head_bytes.data(), n);
  if (n == 0) bad_file(file, "not a joblib-cpp file (the file is empty)");
  if (!has_magic(head)) {
    if (is_magic_prefix(head))
      bad_file(file, fmt::format("truncated file: {} bytes, a dump header needs {}", n, store_header_size));
    const Method method = detect_method(head);
    if (method == Method::none) bad_file(file, fmt::format("not a joblib-cpp file (it starts with {})", hex_bytes(head)));
    if (options.mmap_mode != MmapMode::none) {
      const std::string m = mode_name(options.mmap_mode);
      warn_once(fmt::format("mmap_mode \"{}\" is not compatible with compressed file {}. \"{}\" flag will be ignored.",
                            m, file.string(), m));
    }
    return open_compressed(file, std::move(fd), method, type);
  }
  if (n < store_header_size)
    bad_file(file, fmt::format("truncated file: {} bytes, a dump header needs {}", n, store_header_size));
  StoreHeader h;
  std::memcpy(&h, head.data(), sizeof h);
  return open_plain(file, std::move(fd), st, h, options.mmap_mode, type);
}

}  // namespace

std::unique_ptr<OpenedDump> open_dump(const fs::path& file, const LoadOptions& options, const std::type_info& type) {
  try {
    return open_file(file, options, type);
  } catch (const std::bad_alloc&) {
    // The sizes a file claims are met with StoreError where they are taken;
    // what a decoder's state needs for it (a bz2 block, an lzma dictionary)
    // is the file's claim too.
    bad_file(file, "reading it needs more memory than can be had (a corrupted file?)");
  }
}

std::vector<fs::path> write_dump(const fs::path& file, const Compress& compress, const std::type_info& type,
                                 std::span<const std::byte> structure,
                                 std::span<const std::span<const std::byte>> buffers) {
  const CompressionSettings settings = resolve_compression(file, compress);
  const std::string name = demangle(type.name());

  StoreHeader h{};
  std::memcpy(h.magic, store_magic.data(), store_magic.size());
  h.version = store_format_version;
  h.byte_order = store_byte_order_mark;
  h.type_name_size = name.size();
  h.structure_size = structure.size();
  h.buffer_count = buffers.size();
  const Fingerprint f = fingerprint_of(type);
  std::memcpy(h.fingerprint, f.data(), f.size());

  std::vector<StoreTableEntry> table(buffers.size());
  const std::uint64_t meta_size =
      store_header_size + name.size() + structure.size() + buffers.size() * sizeof(StoreTableEntry);
  std::uint64_t pos = meta_size;
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    align64(pos, pos);
    table[i] = {pos, buffers[i].size()};
    pos += buffers[i].size();
  }

  XXH3_state_t* s = XXH3_createState();
  if (s == nullptr) throw std::bad_alloc();
  XXH3_64bits_reset(s);
  XXH3_64bits_update(s, &h, offsetof(StoreHeader, checksum));
  XXH3_64bits_update(s, name.data(), name.size());
  XXH3_64bits_update(s, structure.data(), structure.size());
  XXH3_64bits_update(s, table.data(), table.size() * sizeof(StoreTableEntry));
  h.checksum = XXH3_64bits_digest(s);
  XXH3_freeState(s);

  TempFile tmp(file);
  FdWriter raw(tmp.fd(), tmp.path());
  std::unique_ptr<Compressor> compressor;
  if (settings.method != Method::none) compressor = make_compressor(settings, raw);
  ByteWriter& out = compressor ? static_cast<ByteWriter&>(*compressor) : raw;

  static constexpr std::array<std::byte, 64> zeros{};
  out.write(std::as_bytes(std::span(&h, 1)));
  out.write(std::as_bytes(std::span(name)));
  out.write(structure);
  out.write(std::as_bytes(std::span(table)));
  pos = meta_size;
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    if (table[i].offset != pos) out.write(std::span(zeros).first(static_cast<std::size_t>(table[i].offset - pos)));
    out.write(buffers[i]);
    pos = table[i].offset + table[i].size;
  }
  if (compressor) compressor->finish();
  tmp.commit();
  return {file};
}

}  // namespace joblib::detail
