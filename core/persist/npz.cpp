// numpy's .npz archives (numpy.savez, numpy.savez_compressed): a zip file
// whose members "{name}.npy" are .npy files, stored or deflated. The zip
// format is libzip's business (CRCs, zip64, the central directory); this
// file only streams .npy members in and out of it.
#include "npy_format.hpp"
#include "store_io.hpp"

#include <joblib/errors.hpp>
#include <joblib/numpy.hpp>

#include <fmt/format.h>
#include <fcntl.h>
#include <zip.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <set>
#include <string>

namespace joblib {
namespace fs = std::filesystem;
using detail::AnyArray;

namespace {

std::string zip_reason(int code) {
  zip_error_t error;
  zip_error_init_with_code(&error, code);
  std::string out = zip_error_strerror(&error);
  zip_error_fini(&error);
  return out;
}

struct ZipCloser {
  void operator()(zip_t* z) const noexcept { zip_discard(z); }
};
struct ZipFileCloser {
  void operator()(zip_file_t* f) const noexcept { zip_fclose(f); }
};

// A .npy member served to libzip without copying the array: the header,
// then the array's bytes.
struct MemberSource {
  std::string header;
  const std::byte* data = nullptr;
  std::size_t data_size = 0;
  std::size_t pos = 0;
  zip_error_t error{};

  std::size_t total() const { return header.size() + data_size; }

  static zip_int64_t callback(void* user, void* out, zip_uint64_t len, zip_source_cmd_t cmd) {
    auto* self = static_cast<MemberSource*>(user);
    switch (cmd) {
      case ZIP_SOURCE_OPEN:
        self->pos = 0;
        return 0;
      case ZIP_SOURCE_READ: {
        std::size_t n = 0;
        auto* dst = static_cast<std::byte*>(out);
        while (n < len && self->pos < self->total()) {
          std::size_t take;
          if (self->pos < self->header.size()) {
            take = std::min<std::size_t>(len - n, self->header.size() - self->pos);
            std::memcpy(dst + n, self->header.data() + self->pos, take);
          } else {
            const std::size_t at = self->pos - self->header.size();
            take = std::min<std::size_t>(len - n, self->data_size - at);
            std::memcpy(dst + n, self->data + at, take);
          }
          n += take;
          self->pos += take;
        }
        return static_cast<zip_int64_t>(n);
      }
      case ZIP_SOURCE_CLOSE:
        return 0;
      case ZIP_SOURCE_STAT: {
        auto* st = static_cast<zip_stat_t*>(out);
        zip_stat_init(st);
        st->size = self->total();
        st->valid |= ZIP_STAT_SIZE;
        return sizeof(zip_stat_t);
      }
      case ZIP_SOURCE_ERROR:
        return zip_error_to_data(&self->error, out, len);
      case ZIP_SOURCE_FREE:
        zip_error_fini(&self->error);
        delete self;
        return 0;
      case ZIP_SOURCE_SUPPORTS:
        return zip_source_make_command_bitmap(ZIP_SOURCE_OPEN, ZIP_SOURCE_READ, ZIP_SOURCE_CLOSE, ZIP_SOURCE_STAT,
                                              ZIP_SOURCE_ERROR, ZIP_SOURCE_FREE, -1);
      default:
        zip_error_set(&self->error, ZIP_ER_OPNOTSUPP, 0);
        return -1;
    }
  }
};

}  // namespace

void save_npz(const fs::path& path, const std::vector<std::pair<std::string, NpzArray>>& arrays, NpzOptions options) {
  std::set<std::string> seen;
  for (const auto& [name, array] : arrays) {
    if (name.empty()) throw std::invalid_argument("joblib::save_npz: an array has an empty name");
    if (name.find('/') != std::string::npos || name.find('\0') != std::string::npos)
      throw std::invalid_argument(fmt::format("joblib::save_npz: the name '{}' has a '/' or a NUL", name));
    if (!seen.insert(name).second)
      throw std::invalid_argument(fmt::format("joblib::save_npz: the name '{}' is given twice", name));
  }
  // libzip writes a temporary file next to `path` and renames it on
  // zip_close: a reader never sees half an archive.
  int code = 0;
  std::unique_ptr<zip_t, ZipCloser> zip(zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code));
  if (!zip) throw StoreError(fmt::format("{}: cannot write the .npz archive: {}", path.string(), zip_reason(code)));
  for (const auto& [name, array] : arrays) {
    const AnyArray& a = array.any();
    auto* member = new MemberSource;
    zip_error_init(&member->error);
    member->header = detail::npy_header(a.kind, a.item_size, a.shape);
    member->data = a.buffer.data.get();
    member->data_size = a.buffer.size;
    zip_source_t* source = zip_source_function(zip.get(), &MemberSource::callback, member);
    if (!source) {
      zip_error_fini(&member->error);
      delete member;
      throw StoreError(fmt::format("{}: cannot write the .npz archive: {}", path.string(), zip_strerror(zip.get())));
    }
    const std::string member_name = name + ".npy";
    const zip_int64_t index = zip_file_add(zip.get(), member_name.c_str(), source, ZIP_FL_ENC_UTF_8);
    if (index < 0) {
      zip_source_free(source);
      throw StoreError(fmt::format("{}: cannot add {} to the .npz archive: {}", path.string(), member_name,
                                   zip_strerror(zip.get())));
    }
    if (zip_set_file_compression(zip.get(), static_cast<zip_uint64_t>(index),
                                 options.compress ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0) != 0)
      throw StoreError(fmt::format("{}: cannot set the compression of {}: {}", path.string(), member_name,
                                   zip_strerror(zip.get())));
  }
  if (zip_close(zip.get()) != 0)
    throw StoreError(fmt::format("{}: cannot write the .npz archive: {}", path.string(), zip_strerror(zip.get())));
  (void)zip.release();  // zip_close freed it
}

NpzFile load_npz(const fs::path& path) {
  {
    // libzip says "No such file" without the errno; a missing or unreadable
    // file is a filesystem_error, as for every other loader.
    detail::Fd probe(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (probe.get() < 0) detail::throw_os_error("joblib::load_npz: cannot open", path, errno);
  }
  int code = 0;
  std::unique_ptr<zip_t, ZipCloser> zip(zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code));
  if (!zip) throw StoreError(fmt::format("{}: not a valid .npz file: {}", path.string(), zip_reason(code)));
  const zip_int64_t entries = zip_get_num_entries(zip.get(), 0);
  std::vector<std::pair<std::string, AnyArray>> arrays;
  std::set<std::string> seen;
  for (zip_int64_t i = 0; i < entries; ++i) {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(zip.get(), static_cast<zip_uint64_t>(i), 0, &st) != 0 || !(st.valid & ZIP_STAT_NAME))
      throw StoreError(fmt::format("{}: not a valid .npz file: {}", path.string(), zip_strerror(zip.get())));
    const std::string member = st.name;
    if (member.size() < 4 || member.compare(member.size() - 4, 4, ".npy") != 0) continue;
    const std::string array_name = member.substr(0, member.size() - 4);
    const std::string where = fmt::format("{}[{}]", path.string(), member);
    if (!seen.insert(array_name).second)
      throw StoreError(fmt::format("{}: not a valid .npz file: it holds two members named {}", path.string(), member));
    std::unique_ptr<zip_file_t, ZipFileCloser> file(zip_fopen_index(zip.get(), static_cast<zip_uint64_t>(i), 0));
    if (!file) throw StoreError(fmt::format("{}: cannot be read: {}", where, zip_strerror(zip.get())));
    auto read = [&](std::span<std::byte> dest) -> std::size_t {
      std::size_t n = 0;
      while (n < dest.size()) {
        const zip_int64_t got = zip_fread(file.get(), dest.data() + n, dest.size() - n);
        if (got < 0) throw StoreError(fmt::format("{}: cannot be read: {}", where, zip_file_strerror(file.get())));
        if (got == 0) break;
        n += static_cast<std::size_t>(got);
      }
      return n;
    };
    const detail::NpyLayout h = detail::read_npy_header(read, where);
    if ((st.valid & ZIP_STAT_SIZE) && st.size != h.data_offset + h.bytes)
      throw StoreError(fmt::format("{}: not a valid .npy file: it holds {} bytes, its header says {}", where,
                                   st.size, h.data_offset + h.bytes));
    AnyArray a{h.descr.kind, h.descr.size, h.shape, {}};
    if (h.bytes != 0) {
      detail::SharedBuffer raw = detail::npy_allocate(h.bytes, where);
      if (read(std::span<std::byte>(raw.data.get(), h.bytes)) != h.bytes)
        throw StoreError(fmt::format("{}: not a valid .npy file: its data is truncated", where));
      a.buffer = detail::npy_to_native(std::move(raw), h.descr, h.fortran, h.shape, h.count);
    }
    std::byte extra;
    if (read(std::span<std::byte>(&extra, 1)) != 0)  // also has libzip check the CRC
      throw StoreError(fmt::format("{}: not a valid .npy file: bytes follow its data", where));
    arrays.emplace_back(array_name, std::move(a));
  }
  return NpzFile(std::move(arrays));
}

}  // namespace joblib
