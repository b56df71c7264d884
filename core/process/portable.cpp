// Portable code references: (module, offset, build-id).
#include "fork_safety.hpp"

#include <joblib/detail/portable.hpp>
#include <joblib/detail/process.hpp>
#include <joblib/errors.hpp>

#include <boost/stacktrace.hpp>
#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fmt/format.h>
#include <link.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>

namespace joblib::detail {
namespace {

const std::string& self_exe() {
  static const std::string path = [] {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }();
  return path;
}

std::string real_path(const char* p) {
  char buf[PATH_MAX];
  if (p && *p && realpath(p, buf)) return buf;
  return p ? p : "";
}

// GNU build-id of the module loaded at `base`, read from its PT_NOTE segments.
std::string build_id_at(ElfW(Addr) base) {
  struct Query {
    ElfW(Addr) base;
    std::string id;
  } q{base, {}};
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) -> int {
        auto* q = static_cast<Query*>(data);
        if (info->dlpi_addr != q->base) return 0;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_NOTE) continue;
          const char* p = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
          const char* end = p + ph.p_memsz;
          while (p + sizeof(ElfW(Nhdr)) <= end) {
            auto* nh = reinterpret_cast<const ElfW(Nhdr)*>(p);
            const char* name = p + sizeof(ElfW(Nhdr));
            const char* desc = name + ((nh->n_namesz + 3) & ~3u);
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0) {
              static const char* hex = "0123456789abcdef";
              for (unsigned k = 0; k < nh->n_descsz; ++k) {
                unsigned char c = static_cast<unsigned char>(desc[k]);
                q->id += hex[c >> 4];
                q->id += hex[c & 15];
              }
              return 1;
            }
            p = desc + ((nh->n_descsz + 3) & ~3u);
          }
        }
        return 1;
      },
      &q);
  return q.id;
}

struct ModuleInfo {
  std::string path;
  std::string build_id;
  ElfW(Addr) base;
};

std::mutex& guarded_mutex() {
  static std::mutex* m = [] {
    auto* mu = new std::mutex();
    hold_across_fork(*mu);
    return mu;
  }();
  return *m;
}
std::mutex& g_mutex = guarded_mutex();
std::map<ElfW(Addr), ModuleInfo>& by_base() {
  static auto* m = new std::map<ElfW(Addr), ModuleInfo>();
  return *m;
}
std::map<std::string, std::pair<ElfW(Addr), std::string>>& by_path() {
  static auto* m = new std::map<std::string, std::pair<ElfW(Addr), std::string>>();
  return *m;
}

// The loaded module whose code holds `address`, or null. _dl_find_object
// (glibc 2.35) looks it up without a lock and without reading symbol
// tables, as dladdr1 does: code_ref() runs for every batch sent.
link_map* module_at(const void* address) noexcept {
#ifdef __GLIBC_PREREQ
#if __GLIBC_PREREQ(2, 35)
  dl_find_object found{};
  if (_dl_find_object(const_cast<void*>(address), &found) == 0) return found.dlfo_link_map;
#endif
#endif
  Dl_info info{};
  link_map* lm = nullptr;
  if (!dladdr1(address, &info, reinterpret_cast<void**>(&lm), RTLD_DL_LINKMAP)) return nullptr;
  return lm;
}

void* resolve_code_slow(const CodeRef& ref);

}  // namespace

const CodeRef& code_ref(const void* address) {
  link_map* lm = module_at(address);
  if (!lm)
    throw SerializationError(fmt::format("cannot send the code at {}: it lies in no loaded module", address));
  // The last few addresses this thread looked up, with the module they were
  // found in then (a module loaded again elsewhere is looked up again).
  struct Cached {
    const void* address = nullptr;
    const link_map* module = nullptr;
    ElfW(Addr) base = 0;
    CodeRef ref;
  };
  static thread_local std::array<Cached, 8> cache;
  static thread_local std::size_t next = 0;
  for (Cached& c : cache)
    if (c.address == address && c.module == lm && c.base == lm->l_addr) return c.ref;
  Cached& slot = cache[next++ % cache.size()];
  slot.address = nullptr;  // until filled (the lookup may throw)
  {
    std::lock_guard lock(g_mutex);
    auto it = by_base().find(lm->l_addr);
    if (it == by_base().end()) {
      ModuleInfo m;
      m.base = lm->l_addr;
      m.path = (lm->l_name && *lm->l_name) ? real_path(lm->l_name) : self_exe();
      m.build_id = build_id_at(lm->l_addr);
      it = by_base().emplace(lm->l_addr, std::move(m)).first;
    }
    slot.ref.module = it->second.path;
    slot.ref.offset = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(address) - lm->l_addr);
    slot.ref.build_id = it->second.build_id;
  }
  slot.address = address;
  slot.module = lm;
  slot.base = lm->l_addr;
  return slot.ref;
}

void save_code_at(EncodeArchive& ar, const void* address) {
  const CodeRef& ref = code_ref(address);
  // The bytes of the reference this thread wrote last, encoded again only
  // when the reference differs (compared whole: another module may have
  // been loaded at the same address since).
  struct Written {
    CodeRef ref;
    MemoryOutput bytes;
    bool valid = false;
  };
  static thread_local Written last;
  if (!last.valid || !(last.ref == ref)) {
    last.valid = false;
    last.bytes.clear();
    EncodeArchive fresh(last.bytes);
    fresh(ref);
    last.ref = ref;
    last.valid = true;
  }
  ar.saveBinary(last.bytes.bytes().data(), last.bytes.size());
}

const std::string& module_on_the_wire(const std::string& module, const std::string& build_id) noexcept {
  // Without a build-id, only the path tells the receiver's program from another.
  static const std::string program;
  return !build_id.empty() && module == self_exe() ? program : module;
}

void* resolve_code(const CodeRef& ref) {
  // The last few modules this thread resolved (a worker resolves the same
  // one or two for every request): their base, without the lock or the map.
  struct Cached {
    std::string module, build_id;
    ElfW(Addr) base = 0;
    bool valid = false;
  };
  static thread_local std::array<Cached, 4> cache;
  static thread_local std::size_t next = 0;
  for (const Cached& c : cache)
    if (c.valid && c.module == ref.module && c.build_id == ref.build_id)
      return reinterpret_cast<void*>(c.base + ref.offset);
  void* address = resolve_code_slow(ref);
  Cached& slot = cache[next++ % cache.size()];
  slot.valid = true;
  slot.module = ref.module;
  slot.build_id = ref.build_id;
  slot.base = reinterpret_cast<ElfW(Addr)>(address) - ref.offset;
  return address;
}

namespace {
void* resolve_code_slow(const CodeRef& ref) {
  std::lock_guard lock(g_mutex);
  // (Module "" is the program this process runs, which may lie elsewhere
  // than the sender's: its build-id tells whether it is the same build.)
  const std::string where = ref.module.empty() ? "this program (" + self_exe() + ")" : "module '" + ref.module + "'";
  if (ref.module.empty() && ref.build_id.empty())
    throw SerializationError(fmt::format(
        "cannot resolve code from {}: the sender named no module and no build-id (a malformed reference)", where));
  auto it = by_path().find(ref.module);
  if (it == by_path().end()) {
    void* handle = nullptr;
    if (ref.module.empty() || ref.module == self_exe()) {
      handle = dlopen(nullptr, RTLD_NOW);
    } else {
      handle = dlopen(ref.module.c_str(), RTLD_NOW | RTLD_NOLOAD);
      if (!handle) handle = dlopen(ref.module.c_str(), RTLD_NOW);
    }
    if (!handle) {
      const char* why = dlerror();
      throw SerializationError(fmt::format("cannot resolve code from {}: {}", where, why ? why : "?"));
    }
    link_map* lm = nullptr;
    if (dlinfo(handle, RTLD_DI_LINKMAP, &lm) != 0 || !lm)
      throw SerializationError(fmt::format("cannot resolve code from {}: no link map", where));
    it = by_path().emplace(ref.module, std::make_pair(lm->l_addr, build_id_at(lm->l_addr))).first;
  }
  if (it->second.second != ref.build_id)
    throw SerializationError(fmt::format(
        "cannot resolve code from {}: its build-id is {} here but {} in the sender (another build)",
        where, it->second.second.empty() ? "(none)" : it->second.second,
        ref.build_id.empty() ? "(none)" : ref.build_id));
  return reinterpret_cast<void*>(it->second.first + ref.offset);
}
}  // namespace


namespace {

// Calls visit(value, size, name) for each FUNC symbol of one module file
// (value: its link-time address), from its .symtab (static functions
// included) or else its .dynsym, until visit returns true; true if it did.
// A file that is no 64-bit ELF, or cannot be read, has none.
template <class Visit>
bool for_each_function_symbol(const std::string& path, Visit&& visit) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < static_cast<off_t>(sizeof(ElfW(Ehdr)))) {
    ::close(fd);
    return false;
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return false;
  const auto* base = static_cast<const unsigned char*>(map);
  const auto* eh = reinterpret_cast<const ElfW(Ehdr)*>(base);
  auto in_file = [size](std::uint64_t off, std::uint64_t len) { return off <= size && len <= size - off; };
  bool stopped = false;
  if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64 &&
      eh->e_shentsize == sizeof(ElfW(Shdr)) && in_file(eh->e_shoff, std::uint64_t{eh->e_shnum} * sizeof(ElfW(Shdr)))) {
    const auto* sh = reinterpret_cast<const ElfW(Shdr)*>(base + eh->e_shoff);
    for (unsigned wanted : {unsigned{SHT_SYMTAB}, unsigned{SHT_DYNSYM}}) {
      bool any = false;
      for (unsigned i = 0; i < eh->e_shnum && !stopped; ++i) {
        if (sh[i].sh_type != wanted || sh[i].sh_entsize != sizeof(ElfW(Sym)) || !in_file(sh[i].sh_offset, sh[i].sh_size))
          continue;
        // Its names, in the string table it links to (checked: a name never
        // reads past the table).
        const char* names = nullptr;
        std::uint64_t names_size = 0;
        if (sh[i].sh_link < eh->e_shnum && in_file(sh[sh[i].sh_link].sh_offset, sh[sh[i].sh_link].sh_size)) {
          names = reinterpret_cast<const char*>(base + sh[sh[i].sh_link].sh_offset);
          names_size = sh[sh[i].sh_link].sh_size;
        }
        const auto* sym = reinterpret_cast<const ElfW(Sym)*>(base + sh[i].sh_offset);
        const std::size_t n = sh[i].sh_size / sizeof(ElfW(Sym));
        for (std::size_t k = 0; k < n; ++k) {
          if (ELF64_ST_TYPE(sym[k].st_info) != STT_FUNC || sym[k].st_value == 0 || sym[k].st_size == 0) continue;
          any = true;
          std::string_view name;
          if (names && sym[k].st_name < names_size) {
            const char* p = names + sym[k].st_name;
            name = std::string_view(p, ::strnlen(p, static_cast<std::size_t>(names_size - sym[k].st_name)));
          }
          if (visit(sym[k].st_value, sym[k].st_size, name)) {
            stopped = true;
            break;
          }
        }
      }
      if (any || stopped) break;
    }
  }
  ::munmap(map, size);
  return stopped;
}

// The file of the module `address` lies in, and the address's offset from
// the module's load base (its link-time address); nullopt when it lies in none.
struct ModuleSpot {
  std::string path;
  std::uint64_t offset = 0;
};
std::optional<ModuleSpot> module_spot(const void* address) {
  Dl_info info{};
  link_map* lm = nullptr;
  if (address == nullptr || !dladdr1(address, &info, reinterpret_cast<void**>(&lm), RTLD_DL_LINKMAP) || !lm)
    return std::nullopt;
  return ModuleSpot{(lm->l_name && *lm->l_name) ? real_path(lm->l_name) : self_exe(),
                    static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(address) - lm->l_addr)};
}

// The demangled name of the function of the symbol table that starts at
// `address`, or "" when none does.
std::string symbol_table_name(const void* address) {
  const std::optional<ModuleSpot> spot = module_spot(address);
  if (!spot) return {};
  // Several symbols may start there (aliases, a clone's local name such as
  // f.constprop.0): a name without a '.' suffix is preferred.
  std::string mangled;
  for_each_function_symbol(spot->path, [&](std::uint64_t value, std::uint64_t, std::string_view name) {
    if (value != spot->offset || name.empty()) return false;
    const bool plain = name.find('.') == std::string_view::npos;
    if (mangled.empty() || plain) mangled = name;
    return plain;
  });
  return mangled.empty() ? std::string() : demangle(mangled.c_str());
}

}  // namespace

std::string function_name(const void* address) {
  std::lock_guard walk(loader_walk_mutex());  // dladdr and libbacktrace walk the loaded modules
  Dl_info info{};
  if (dladdr(address, &info) && info.dli_sname && info.dli_saddr == address) return demangle(info.dli_sname);
  // Static functions have no dynamic symbol: the module's symbol table has
  // them. (Read from the file at each call: libbacktrace, asked first before,
  // read and decompressed a module's debug information for every new
  // thread, which took a pool 100 ms and more to name the task of a dead
  // worker.)
  if (std::string name = symbol_table_name(address); !name.empty()) return name;
  // No symbol table (a stripped module): its debug information, if any.
  std::string name = boost::stacktrace::frame(reinterpret_cast<boost::stacktrace::frame::native_frame_ptr_t>(
                                                  const_cast<void*>(address)))
                         .name();
  return name;
}

namespace {

// Sizes of the FUNC symbols of one module file, by link-time address.
using SymbolSizes = std::map<std::uint64_t, std::uint64_t>;

SymbolSizes read_symbol_sizes(const std::string& path) {
  SymbolSizes out;
  for_each_function_symbol(path, [&](std::uint64_t value, std::uint64_t size, std::string_view) {
    out.emplace(value, size);
    return false;
  });
  return out;
}

}  // namespace

std::span<const std::byte> function_code(const void* address) {
  const std::optional<ModuleSpot> spot = module_spot(address);
  if (!spot) return {};
  static std::mutex mutex;
  static auto* modules = new std::map<std::string, SymbolSizes>();  // never destroyed: used until exit
  std::lock_guard lock(mutex);
  auto it = modules->find(spot->path);
  if (it == modules->end()) it = modules->emplace(spot->path, read_symbol_sizes(spot->path)).first;
  auto sym = it->second.find(spot->offset);
  if (sym == it->second.end() || sym->second > (std::uint64_t{1} << 26)) return {};
  return {static_cast<const std::byte*>(address), static_cast<std::size_t>(sym->second)};
}

}  // namespace joblib::detail
