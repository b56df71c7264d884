// .npy files (issue 15, point 1), against the real thing: Debian's numpy
// writes files in every dtype, byte order, memory order and format version,
// C++ reads them; C++ writes, numpy reads and checks. Hostile headers are
// refused with StoreError naming what is wrong.
#include <joblib/errors.hpp>
#include <joblib/numpy.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "py_interop.hpp"

#include <unistd.h>

#include <complex>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

using joblib_test::have_numpy;
using joblib_test::run_python;
using joblib_test::write_bytes;
struct TempDir : joblib_test::TempDir {
  TempDir() : joblib_test::TempDir("joblib_npy") {}
};

class NumpyWrites : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_numpy()) GTEST_SKIP() << "python3-numpy is not installed (the test command installs it)";
    // Every numeric dtype, both byte orders, C and Fortran order, 0-d and
    // empty shapes, and each format version.
    ASSERT_TRUE(run_python(R"(
import numpy as np, numpy.lib.format as f, os
d = ")" + dir.path.string() + R"("
def save(name, a, version=None):
    with open(os.path.join(d, name), "wb") as out:
        f.write_array(out, a, version=version)
base = np.arange(24).reshape(2, 3, 4)
for code in ["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8", "c8", "c16"]:
    for order in "<>":
        a = (base % 2 == 1) if code == "b1" else (base * 3 - 5 if code[0] == "i" else base * 3)
        if code[0] == "c": a = base + 1j * (base - 1)
        if code[0] == "f": a = base * 0.5 - 2
        dt = np.dtype(order + code) if code not in ("b1", "i1", "u1") else np.dtype(code)
        a = a.astype(dt)
        save(f"{code}_{order == '<' and 'le' or 'be'}.npy", a)
        save(f"{code}_{order == '<' and 'le' or 'be'}_fortran.npy", np.asfortranarray(a))
np.save(os.path.join(d, "scalar.npy"), np.float64(2.5))
np.save(os.path.join(d, "empty.npy"), np.zeros((0, 3)))
for v in [(1, 0), (2, 0), (3, 0)]:
    save(f"v{v[0]}.npy", np.arange(6, dtype="<f8").reshape(2, 3), version=v)
np.save(os.path.join(d, "big_header.npy"), np.zeros((1,) * 30))
)", dir.path));
  }
  TempDir dir;
  fs::path at(const std::string& name) const { return dir.path / name; }
};

template <class T>
void check_code(const NumpyWrites& t, const std::string& code, const std::function<fs::path(const std::string&)>& at) {
  (void)t;
  for (const char* order : {"le", "be"})
    for (const char* layout : {"", "_fortran"}) {
      const std::string name = code + "_" + order + layout + ".npy";
      joblib_test::expect_numpy_values(joblib::load_npy<T>(at(name)), name);
    }
}

TEST_F(NumpyWrites, EveryDtypeByteOrderAndMemoryOrderLoads) {
  auto at_fn = [this](const std::string& n) { return at(n); };
  check_code<bool>(*this, "b1", at_fn);
  check_code<std::int8_t>(*this, "i1", at_fn);
  check_code<std::int16_t>(*this, "i2", at_fn);
  check_code<std::int32_t>(*this, "i4", at_fn);
  check_code<std::int64_t>(*this, "i8", at_fn);
  check_code<std::uint8_t>(*this, "u1", at_fn);
  check_code<std::uint16_t>(*this, "u2", at_fn);
  check_code<std::uint32_t>(*this, "u4", at_fn);
  check_code<std::uint64_t>(*this, "u8", at_fn);
  check_code<float>(*this, "f4", at_fn);
  check_code<double>(*this, "f8", at_fn);
  check_code<std::complex<float>>(*this, "c8", at_fn);
  check_code<std::complex<double>>(*this, "c16", at_fn);
}

TEST_F(NumpyWrites, VersionsZeroDimensionalAndEmptyArrays) {
  for (const char* v : {"v1.npy", "v2.npy", "v3.npy"}) {
    joblib::Array<double> a = joblib::load_npy<double>(at(v));
    ASSERT_EQ(a.shape(), (std::vector<std::size_t>{2, 3})) << v;
    for (std::size_t i = 0; i < 6; ++i) EXPECT_EQ(a[i], double(i)) << v;
  }
  joblib::Array<double> s = joblib::load_npy<double>(at("scalar.npy"));
  EXPECT_TRUE(s.shape().empty());
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0], 2.5);
  joblib::Array<double> e = joblib::load_npy<double>(at("empty.npy"));
  EXPECT_EQ(e.shape(), (std::vector<std::size_t>{0, 3}));
  EXPECT_EQ(e.size(), 0u);
  EXPECT_EQ(joblib::load_npy<double>(at("big_header.npy")).shape().size(), 30u);
}

TEST_F(NumpyWrites, MappedLoadsViewTheFileAndRefuseWhatCannotBeMapped) {
  joblib::Array<double> m = joblib::load_npy<double>(at("f8_le.npy"), {.mmap_mode = joblib::MmapMode::r});
  EXPECT_TRUE(m.is_mapped());
  EXPECT_FALSE(m.is_writable());
  joblib_test::expect_numpy_values(m, "f8_le.npy mapped");
  // r+: writes reach the file.
  {
    joblib::Array<double> w = joblib::load_npy<double>(at("f8_le.npy"), {.mmap_mode = joblib::MmapMode::r_plus});
    w[5] = 1234.5;
  }
  EXPECT_EQ(joblib::load_npy<double>(at("f8_le.npy"))[5], 1234.5);
  try {
    joblib::load_npy<double>(at("f8_le_fortran.npy"), {.mmap_mode = joblib::MmapMode::r});
    FAIL();
  } catch (const joblib::StoreError& e) {
    EXPECT_THAT(e.what(), HasSubstr("Fortran order and cannot be mapped as a C-order Array: load it without mmap_mode"));
  }
  EXPECT_THROW(joblib::load_npy<double>(at("f8_be.npy"), {.mmap_mode = joblib::MmapMode::r}), joblib::StoreError);
  EXPECT_THROW(joblib::load_npy<double>(at("f8_le.npy"), {.mmap_mode = joblib::MmapMode::w_plus}),
               std::invalid_argument);
}

TEST_F(NumpyWrites, AnotherDtypeIsRefusedNamingBoth) {
  try {
    joblib::load_npy<float>(at("f8_le.npy"));
    FAIL();
  } catch (const joblib::StoreError& e) {
    EXPECT_THAT(e.what(), HasSubstr("the .npy file holds float64 ('<f8'), not float32"));
  }
  EXPECT_THROW(joblib::load_npy<std::int64_t>(at("u8_le.npy")), joblib::StoreError);
}

TEST(NumpyReads, WhatSaveNpyWritesNumpyLoads) {
  if (!have_numpy()) GTEST_SKIP() << "python3-numpy is not installed (the test command installs it)";
  TempDir dir;
  joblib::Array<double> a({2, 3});
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = double(i) * 1.5;
  joblib::save_npy(dir.path / "a.npy", a);
  joblib::Array<std::int16_t> b({5});
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::int16_t>(-int(i));
  joblib::save_npy(dir.path / "b.npy", b);
  joblib::Array<std::complex<float>> c({2, 2});
  c[3] = {1.5f, -2.0f};
  joblib::save_npy(dir.path / "c.npy", c);
  joblib::Array<bool> t({3});
  t[1] = true;
  joblib::save_npy(dir.path / "t.npy", t);
  joblib::Array<double> s(std::vector<std::size_t>{});
  s[0] = 7.0;
  joblib::save_npy(dir.path / "s.npy", s);
  joblib::save_npy(dir.path / "e.npy", joblib::Array<float>({0, 4}));
  EXPECT_TRUE(run_python(R"(
import numpy as np, os
d = ")" + dir.path.string() + R"("
a = np.load(os.path.join(d, "a.npy")); assert a.dtype == np.float64 and a.shape == (2, 3) and (a.ravel() == np.arange(6) * 1.5).all(), a
b = np.load(os.path.join(d, "b.npy")); assert b.dtype == np.int16 and (b == -np.arange(5)).all(), b
c = np.load(os.path.join(d, "c.npy")); assert c.dtype == np.complex64 and c[1, 1] == 1.5 - 2j and c[0, 0] == 0, c
t = np.load(os.path.join(d, "t.npy")); assert t.dtype == np.bool_ and list(t) == [False, True, False], t
s = np.load(os.path.join(d, "s.npy")); assert s.shape == () and s == 7.0, s
e = np.load(os.path.join(d, "e.npy")); assert e.shape == (0, 4) and e.dtype == np.float32, e
with open(os.path.join(d, "a.npy"), "rb") as f:
    import numpy.lib.format as fm
    assert fm.read_magic(f) == (1, 0)
    fm.read_array_header_1_0(f)
    assert f.tell() % 64 == 0, f.tell()
)",
                         dir.path));
  // And back.
  joblib::Array<double> back = joblib::load_npy<double>(dir.path / "a.npy");
  EXPECT_EQ(back.shape(), a.shape());
  EXPECT_EQ(back[5], 7.5);
}

// ---- hostile files ------------------------------------------------------------------

std::string npy_v1(const std::string& dict, const std::string& data = "") {
  std::string head = "\x93NUMPY";
  head += '\x01';
  head += '\x00';
  std::string body = dict;
  while ((10 + body.size() + 1) % 64) body += ' ';
  body += '\n';
  head += static_cast<char>(body.size() & 0xff);
  head += static_cast<char>(body.size() >> 8);
  return head + body + data;
}

TEST(NpyHostileFiles, AreRefusedWithStoreErrorNamingTheProblem) {
  TempDir dir;
  const fs::path p = dir.path / "bad.npy";
  auto refused = [&](const std::string& bytes, const std::string& why) {
    write_bytes(p, bytes);
    try {
      joblib::load_npy<double>(p);
      ADD_FAILURE() << "accepted: " << why;
    } catch (const joblib::StoreError& e) {
      EXPECT_THAT(e.what(), HasSubstr(why));
    }
  };
  refused("not numpy at all", "does not start with numpy's magic");
  refused(std::string("\x93NUMPY\x04\x00\x10\x00", 10), "format version 4.0 is not 1.0, 2.0 or 3.0");
  refused(std::string("\x93NUMPY\x01\x00\xff\xff", 10) + "{", "truncated in its header");
  refused(npy_v1("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", std::string(16, '\0')),
          "its data is truncated");
  refused(npy_v1("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }"), "structured");
  refused(npy_v1("{'descr': '<O', 'fortran_order': False, 'shape': (1,), }"), "its dtype '<O' is not one of b1, i1-i8, u1-u8, f4, f8, c8, c16");
  refused(npy_v1("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999), }"),
          "overflows");
  refused(npy_v1("{'descr': '<f8', 'fortran_order': 1, 'shape': (1,), }"), "not True or False");
  refused(npy_v1("{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }"), "non-negative integers");
  refused(npy_v1("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'x': 1}"), "unknown key 'x'");
  refused(npy_v1("{'descr': '<f8', 'shape': (1,), }"), "lacks one of");
  refused(npy_v1("__import__('os').system('true')"), "not a dict literal");
  EXPECT_THROW(joblib::load_npy<double>(dir.path / "missing.npy"), std::filesystem::filesystem_error);
}

}  // namespace
