// libFuzzer target for joblib::load_python and joblib::load_npz: every
// input is a file (after a selector byte) that must load or fail with
// StoreError, never crash, hang, leak or allocate beyond the limits.
// Selector bits 0-1: mmap_mode (none, r, c, none); bit 2: the file is read
// as a .npz archive instead of a pickle. Seeds: tests/fuzz/python_corpus
// (files Debian's joblib, pickle and numpy wrote; make_python_corpus.py).
#include <joblib/errors.hpp>
#include <joblib/numpy.hpp>
#include <joblib/python.hpp>

#include <unistd.h>

#include "fuzz_io.hpp"

#include <complex>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

const std::string& scratch_file() { return joblib_fuzz::scratch_file("python_fuzzer"); }
void write_file(const std::uint8_t* data, std::size_t size) { joblib_fuzz::write_file(scratch_file(), data, size); }

template <class T>
std::uint64_t touch(const joblib::PyValue& v) {
  const auto a = v.as<joblib::Array<T>>();
  const auto* p = reinterpret_cast<const unsigned char*>(a.data());
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < a.nbytes(); ++i) sum += p[i];
  return sum;
}

std::uint64_t touch_array(const joblib::PyValue& v) {
  const std::string d = v.dtype();
  if (d == "bool") return touch<bool>(v);
  if (d == "int8") return touch<std::int8_t>(v);
  if (d == "int16") return touch<std::int16_t>(v);
  if (d == "int32") return touch<std::int32_t>(v);
  if (d == "int64") return touch<std::int64_t>(v);
  if (d == "uint8") return touch<std::uint8_t>(v);
  if (d == "uint16") return touch<std::uint16_t>(v);
  if (d == "uint32") return touch<std::uint32_t>(v);
  if (d == "uint64") return touch<std::uint64_t>(v);
  if (d == "float32") return touch<float>(v);
  if (d == "float64") return touch<double>(v);
  if (d == "complex64") return touch<std::complex<float>>(v);
  if (d == "complex128") return touch<std::complex<double>>(v);
  std::abort();  // a dtype the reader should never produce
}

// Reads every byte of every array and walks every container, so that a bad
// buffer or node shows up here; dumps and reloads small values.
std::uint64_t walk(const joblib::PyValue& v, int depth) {
  std::uint64_t sum = static_cast<std::uint64_t>(v.kind());
  switch (v.kind()) {
    case joblib::PyKind::list:
    case joblib::PyKind::tuple:
    case joblib::PyKind::set:
      for (const joblib::PyValue& x : v.items()) sum += walk(x, depth + 1);
      break;
    case joblib::PyKind::dict:
      for (const auto& [k, x] : v.dict_items()) sum += walk(k, depth + 1) + walk(x, depth + 1);
      break;
    case joblib::PyKind::array: sum += touch_array(v); break;
    default: break;
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t selector = data[0];
  write_file(data + 1, size - 1);
  static const joblib::MmapMode modes[] = {joblib::MmapMode::none, joblib::MmapMode::r, joblib::MmapMode::c,
                                           joblib::MmapMode::none};
  try {
    if (selector & 4) {
      const joblib::NpzFile f = joblib::load_npz(scratch_file());
      volatile std::size_t n = 0;
      for (const std::string& name : f.names()) n = n + f.shape(name).size() + f.dtype(name).size();
    } else {
      const joblib::PyValue v = joblib::load_python(scratch_file(), {.mmap_mode = modes[selector & 3]});
      volatile std::uint64_t s = walk(v, 0);
      (void)s;
      (void)v.repr();
    }
  } catch (const joblib::StoreError&) {
  }
  ::unlink(scratch_file().c_str());
  return 0;
}
