// libFuzzer target for joblib::load (and joblib::load_npy, selector 5): every input is a file (after a
// selector byte) that must load or fail with StoreError, never crash, hang,
// leak or allocate beyond the limits. The same bytes are also decoded
// directly by the codec, which must load or fail with SerializationError.
// The library is built with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, which
// skips the dump checksum so that mutations reach the decoder.
#include "fuzz_types.hpp"

#include <joblib/codec.hpp>
#include <joblib/numpy.hpp>
#include <joblib/persistence.hpp>

#include <unistd.h>

#include "fuzz_io.hpp"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

const std::string& scratch_file() { return joblib_fuzz::scratch_file("load_fuzzer"); }
void write_file(const std::uint8_t* data, std::size_t size) { joblib_fuzz::write_file(scratch_file(), data, size); }

// Reads every element, so that a bad mapping or buffer shows up here.
double touch(const joblib::Array<double>& a) {
  double s = 0;
  for (double x : a.cspan()) s += x;
  return s;
}
double touch(const joblib::Array<float>& a) {
  double s = 0;
  for (float x : a.cspan()) s += x;
  return s;
}

template <class T>
void load_and_decode(const std::uint8_t* data, std::size_t size, joblib::MmapMode mode) {
  try {
    T v = joblib::load<T>(scratch_file(), {.mmap_mode = mode});
    if constexpr (std::is_same_v<T, joblib_fuzz::ArrayD>) {
      volatile double s = touch(v);
      (void)s;
    }
    if constexpr (std::is_same_v<T, joblib_fuzz::Record>) {
      volatile double s = touch(v.image);
      (void)s;
    }
  } catch (const joblib::StoreError&) {
  }
  try {
    (void)joblib::detail::decode<T>({reinterpret_cast<const std::byte*>(data), size});
  } catch (const joblib::SerializationError&) {
  }
}

// A .npy file (numpy's format, a Python dict literal for a header): loads
// or fails with StoreError, as double and as float, read or mapped.
void load_npy(joblib::MmapMode mode) {
  try {
    volatile double s = touch(joblib::load_npy<double>(scratch_file(), {.mmap_mode = mode}));
    (void)s;
  } catch (const joblib::StoreError&) {
  }
  try {
    volatile double s = touch(joblib::load_npy<float>(scratch_file(), {.mmap_mode = mode}));
    (void)s;
  } catch (const joblib::StoreError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t selector = data[0];
  write_file(data + 1, size - 1);
  const auto mode = joblib_fuzz::mode_of(selector);
  switch ((selector & 7) % (joblib_fuzz::type_count + 1)) {
    case 0: load_and_decode<joblib_fuzz::Record>(data + 1, size - 1, mode); break;
    case 1: load_and_decode<joblib_fuzz::ArrayD>(data + 1, size - 1, mode); break;
    case 2: load_and_decode<joblib_fuzz::Nested>(data + 1, size - 1, mode); break;
    case 3: load_and_decode<joblib_fuzz::Strings>(data + 1, size - 1, mode); break;
    case 4: load_and_decode<joblib_fuzz::Mixed>(data + 1, size - 1, mode); break;
    case joblib_fuzz::type_count: load_npy(mode); break;
  }
  ::unlink(scratch_file().c_str());
  return 0;
}
