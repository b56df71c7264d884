// .npz archives (issue 15, point 2), against Debian's numpy both ways:
// numpy.savez and savez_compressed write, load_npz reads; save_npz writes,
// numpy.load reads and checks. Broken archives are StoreErrors that name the
// archive and the member.
#include <joblib/errors.hpp>
#include <joblib/numpy.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "py_interop.hpp"

#include <sys/stat.h>

#include <complex>
#include <cstdint>
#include <fstream>
#include <iterator>

namespace {

namespace fs = std::filesystem;
using joblib_test::have_numpy;
using joblib_test::run_python;
using joblib_test::TempDir;
using ::testing::HasSubstr;

using joblib_test::store_error;

class NumpyWritesNpz : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_numpy()) GTEST_SKIP() << "python3-numpy is not installed (the test command installs it)";
    ASSERT_TRUE(run_python(R"(
import numpy as np, os
d = ")" + dir.path.string() + R"("
arrays = dict(
    x=np.arange(6, dtype="<f8").reshape(2, 3) * 0.5,
    y=np.arange(-3, 3, dtype=np.int32),
    flags=np.array([True, False, True]),
    z=(np.arange(4) + 1j * np.arange(4)).astype(np.complex64).reshape(2, 2),
    big=np.arange(5, dtype=">i2"),
    fortran=np.asfortranarray(np.arange(12, dtype="<f8").reshape(3, 4)),
    scalar=np.float32(1.25),
    empty=np.zeros((0, 2), dtype=np.uint8),
)
np.savez(os.path.join(d, "plain.npz"), **arrays)
np.savez_compressed(os.path.join(d, "compressed.npz"), **arrays)
)", dir.path));
  }
  TempDir dir{"joblib_npz"};
};

void expect_arrays(const joblib::NpzFile& f) {
  EXPECT_EQ(f.names(), (std::vector<std::string>{"x", "y", "flags", "z", "big", "fortran", "scalar", "empty"}));
  auto x = f.at<double>("x");
  ASSERT_EQ(x.shape(), (std::vector<std::size_t>{2, 3}));
  for (std::size_t i = 0; i < 6; ++i) EXPECT_EQ(x[i], 0.5 * double(i));
  auto y = f.at<std::int32_t>("y");
  EXPECT_EQ(std::vector<std::int32_t>(y.begin(), y.end()), (std::vector<std::int32_t>{-3, -2, -1, 0, 1, 2}));
  auto flags = f.at<bool>("flags");
  EXPECT_EQ(std::vector<bool>(flags.begin(), flags.end()), (std::vector<bool>{true, false, true}));
  auto z = f.at<std::complex<float>>("z");
  ASSERT_EQ(z.shape(), (std::vector<std::size_t>{2, 2}));
  EXPECT_EQ(z[3], std::complex<float>(3, 3));
  auto big = f.at<std::int16_t>("big");
  EXPECT_EQ(std::vector<std::int16_t>(big.begin(), big.end()), (std::vector<std::int16_t>{0, 1, 2, 3, 4}));
  auto fortran = f.at<double>("fortran");  // C order, same values
  ASSERT_EQ(fortran.shape(), (std::vector<std::size_t>{3, 4}));
  for (std::size_t i = 0; i < 12; ++i) EXPECT_EQ(fortran[i], double(i));
  auto scalar = f.at<float>("scalar");
  EXPECT_TRUE(scalar.shape().empty());
  EXPECT_EQ(scalar[0], 1.25f);
  EXPECT_EQ(f.shape("empty"), (std::vector<std::size_t>{0, 2}));
  EXPECT_TRUE(f.at<std::uint8_t>("empty").empty());
  EXPECT_EQ(f.dtype("z"), "complex64");
}

TEST_F(NumpyWritesNpz, StoredAndDeflatedArchivesLoad) {
  expect_arrays(joblib::load_npz(dir.path / "plain.npz"));
  expect_arrays(joblib::load_npz(dir.path / "compressed.npz"));
}

TEST_F(NumpyWritesNpz, AWrongTypeOrNameSaysWhat) {
  const joblib::NpzFile f = joblib::load_npz(dir.path / "plain.npz");
  EXPECT_EQ(store_error([&] { f.at<float>("x"); }), "the array 'x' holds float64, not float32");
  EXPECT_THROW(f.at<double>("nope"), std::out_of_range);
  EXPECT_TRUE(f.contains("x"));
  EXPECT_FALSE(f.contains("x.npy"));
  EXPECT_EQ(f.size(), 8u);
}

TEST(CppWritesNpz, NumpyReadsStoredAndDeflatedArchives) {
  if (!have_numpy()) GTEST_SKIP() << "python3-numpy is not installed (the test command installs it)";
  TempDir dir{"joblib_npz"};
  joblib::Array<double> x({2, 3});
  for (std::size_t i = 0; i < 6; ++i) x[i] = double(i) * 1.5;
  joblib::Array<std::int64_t> n({4});
  for (std::size_t i = 0; i < 4; ++i) n[i] = -std::int64_t(i) * 1000000000000;
  joblib::Array<std::complex<double>> c({1});
  c[0] = {1, -2};
  joblib::Array<bool> t({2});
  t[1] = true;
  joblib::save_npz(dir.path / "plain.npz", {{"x", x}, {"n", n}, {"c", c}, {"t", t}, {"e", joblib::Array<float>({0})}});
  joblib::save_npz(dir.path / "packed.npz", {{"x", x}, {"n", n}}, {.compress = true});
  ASSERT_TRUE(run_python(R"(
import numpy as np, os, zipfile
d = ")" + dir.path.string() + R"("
f = np.load(os.path.join(d, "plain.npz"))
assert list(f.files) == ["x", "n", "c", "t", "e"], f.files
assert f["x"].dtype == np.float64 and (f["x"] == np.arange(6).reshape(2, 3) * 1.5).all(), f["x"]
assert f["n"].dtype == np.int64 and list(f["n"]) == [0, -10**12, -2 * 10**12, -3 * 10**12], f["n"]
assert f["c"].dtype == np.complex128 and f["c"][0] == 1 - 2j
assert f["t"].dtype == np.bool_ and list(f["t"]) == [False, True]
assert f["e"].dtype == np.float32 and f["e"].shape == (0,)
with zipfile.ZipFile(os.path.join(d, "plain.npz")) as z:
    assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    assert z.testzip() is None
with zipfile.ZipFile(os.path.join(d, "packed.npz")) as z:
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
g = np.load(os.path.join(d, "packed.npz"))
assert (g["x"] == f["x"]).all() and (g["n"] == f["n"]).all()
)", dir.path));
  // And back; the file takes the umask's mode, as numpy's would.
  const joblib::NpzFile back = joblib::load_npz(dir.path / "packed.npz");
  EXPECT_EQ(back.at<double>("x"), x);
  EXPECT_EQ(back.at<std::int64_t>("n"), n);
  struct stat st {};
  ASSERT_EQ(::stat((dir.path / "plain.npz").c_str(), &st), 0);
  const mode_t mask = ::umask(0);
  ::umask(mask);
  EXPECT_EQ(st.st_mode & 0777, 0666 & ~mask);
}

TEST(NpzBadInput, NamesAndFilesAreChecked) {
  TempDir dir{"joblib_npz"};
  joblib::Array<double> x({2});
  EXPECT_THROW(joblib::save_npz(dir.path / "a.npz", {{"x", x}, {"x", x}}), std::invalid_argument);
  EXPECT_THROW(joblib::save_npz(dir.path / "a.npz", {{"", x}}), std::invalid_argument);
  EXPECT_THROW(joblib::save_npz(dir.path / "a.npz", {{"a/b", x}}), std::invalid_argument);
  EXPECT_FALSE(fs::exists(dir.path / "a.npz"));
  EXPECT_THROW(joblib::load_npz(dir.path / "missing.npz"), fs::filesystem_error);

  joblib_test::write_bytes(dir.path / "not.npz", "this is not a zip archive at all");
  EXPECT_THAT(store_error([&] { joblib::load_npz(dir.path / "not.npz"); }), HasSubstr("not a valid .npz file"));

  // A stored member whose data byte is flipped fails its CRC.
  joblib::save_npz(dir.path / "ok.npz", {{"x", x}});
  std::string bytes;
  {
    std::ifstream in(dir.path / "ok.npz", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::size_t header = bytes.find("\x93NUMPY");
  ASSERT_NE(header, std::string::npos);
  std::string flipped = bytes;
  flipped[header + 128 + 3] ^= 0x40;  // inside x's data (the .npy header is 128 bytes)
  joblib_test::write_bytes(dir.path / "crc.npz", flipped);
  EXPECT_THAT(store_error([&] { joblib::load_npz(dir.path / "crc.npz"); }), HasSubstr("crc.npz[x.npy]"));
  // A truncated archive.
  joblib_test::write_bytes(dir.path / "cut.npz", bytes.substr(0, bytes.size() / 2));
  EXPECT_THAT(store_error([&] { joblib::load_npz(dir.path / "cut.npz"); }), HasSubstr("not a valid .npz file"));
  // A member that is not a .npy file.
  std::string fake = bytes;
  fake.replace(header, 6, "NOTNPY");
  joblib_test::write_bytes(dir.path / "fake.npz", fake);
  EXPECT_THAT(store_error([&] { joblib::load_npz(dir.path / "fake.npz"); }), HasSubstr("fake.npz[x.npy]"));
}

}  // namespace
