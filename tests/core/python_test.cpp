// Python's own files (issue 15, points 3-5), against the real thing:
// Debian's joblib and pickle write every kind load_python reads, in every
// compression Python joblib writes and every pickle protocol from 2 to 5,
// and C++ checks the values; C++ writes with dump_python and Python checks.
// A pickle that names any other class is refused before anything runs.
#include <joblib/errors.hpp>
#include <joblib/python.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "py_interop.hpp"

#include <complex>
#include <cstdint>
#include <limits>
#include <fstream>
#include <iterator>
#include <map>

namespace {

namespace fs = std::filesystem;
using joblib::PyKind;
using joblib::PyValue;
using joblib_test::have_joblib;
using joblib_test::run_python;
using joblib_test::TempDir;
using ::testing::HasSubstr;

using joblib_test::store_error;

// The value every Python writer below writes.
const char* const kPythonValue = R"(
import numpy as np, joblib, pickle, os, sys
d = sys.argv[1] if len(sys.argv) > 1 else DIR
base = np.arange(24).reshape(2, 3, 4)
def typed(code):
    if code == "b1": return base % 2 == 1
    if code[0] == "i": return (base * 3 - 5).astype(code)
    if code[0] == "u": return (base * 3).astype(code)
    if code[0] == "f": return (base * 0.5 - 2).astype(code)
    return (base + 1j * (base - 1)).astype(code)
arrays = {}
for code in ["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8", "c8", "c16"]:
    a = typed(code)
    arrays[code] = a
    be = a.astype(a.dtype.newbyteorder(">")) if a.dtype.itemsize > 1 else a
    arrays[code + "_f_be"] = np.asfortranarray(be)
shared = [1, 2]
value = {
    "none": None, "true": True, "false": False, "int": 42, "neg": -7, "big": 2**62, "u64": 2**64 - 1,
    "min": -2**63, "float": 1.5, "complex": 1 + 2j, "str": "h\u00e9llo \u2713", "bytes": b"\x00\xffab",
    "empty_bytes": b"", "list": [1, "a", None], "tuple": (1, 2.5), "one": (7,),
    "dict": {1: "one", (1, 2): "pair", "nested": {"x": [1, 2]}, 2.0: "two"},
    "set": {1, 2, 3}, "frozenset": frozenset({"a"}), "bytearray": bytearray(b"xy"),
    "np_float": np.float64(2.5), "np_int": np.int32(-3), "np_bool": np.bool_(True), "np_u8": np.uint64(2**64 - 2),
    "np_c8": np.complex64(1 - 1j), "empty_list": [], "empty_tuple": (), "shared": [shared, shared],
    "arrays": arrays, "zero_d": np.array(3.0), "empty_array": np.zeros((0, 3)),
}
)";

template <class T>
void expect_typed(const PyValue& a, const std::string& code) {
  joblib_test::expect_numpy_values(a.as<joblib::Array<T>>(), code);
}

void expect_arrays(const PyValue& arrays) {
  for (const std::string suffix : {"", "_f_be"}) {
    expect_typed<bool>(arrays["b1" + suffix], "b1" + suffix);
    expect_typed<std::int8_t>(arrays["i1" + suffix], "i1" + suffix);
    expect_typed<std::int16_t>(arrays["i2" + suffix], "i2" + suffix);
    expect_typed<std::int32_t>(arrays["i4" + suffix], "i4" + suffix);
    expect_typed<std::int64_t>(arrays["i8" + suffix], "i8" + suffix);
    expect_typed<std::uint8_t>(arrays["u1" + suffix], "u1" + suffix);
    expect_typed<std::uint16_t>(arrays["u2" + suffix], "u2" + suffix);
    expect_typed<std::uint32_t>(arrays["u4" + suffix], "u4" + suffix);
    expect_typed<std::uint64_t>(arrays["u8" + suffix], "u8" + suffix);
    expect_typed<float>(arrays["f4" + suffix], "f4" + suffix);
    expect_typed<double>(arrays["f8" + suffix], "f8" + suffix);
    expect_typed<std::complex<float>>(arrays["c8" + suffix], "c8" + suffix);
    expect_typed<std::complex<double>>(arrays["c16" + suffix], "c16" + suffix);
  }
}

// What kPythonValue holds.
void expect_value(const PyValue& v, const std::string& file) {
  SCOPED_TRACE(file);
  ASSERT_EQ(v.kind(), PyKind::dict);
  EXPECT_TRUE(v["none"].is_none());
  EXPECT_TRUE(v["true"].as<bool>());
  EXPECT_FALSE(v["false"].as<bool>());
  EXPECT_EQ(v["int"].as<int>(), 42);
  EXPECT_EQ(v["neg"].as<std::int64_t>(), -7);
  EXPECT_EQ(v["big"].as<std::int64_t>(), std::int64_t{1} << 62);
  EXPECT_EQ(v["u64"].as<std::uint64_t>(), std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(v["min"].as<std::int64_t>(), std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(v["float"].as<double>(), 1.5);
  EXPECT_EQ(v["complex"].as<std::complex<double>>(), std::complex<double>(1, 2));
  EXPECT_EQ(v["str"].as<std::string>(), "h\xc3\xa9llo \xe2\x9c\x93");
  EXPECT_EQ(v["bytes"].as<std::vector<std::byte>>(),
            (std::vector<std::byte>{std::byte{0}, std::byte{0xff}, std::byte{'a'}, std::byte{'b'}}));
  EXPECT_EQ(v["empty_bytes"].kind(), PyKind::bytes);
  EXPECT_EQ(v["empty_bytes"].size(), 0u);
  ASSERT_EQ(v["list"].kind(), PyKind::list);
  EXPECT_EQ(v["list"][0].as<int>(), 1);
  EXPECT_EQ(v["list"][1].as<std::string>(), "a");
  EXPECT_TRUE(v["list"][-1].is_none());
  ASSERT_EQ(v["tuple"].kind(), PyKind::tuple);
  EXPECT_EQ(v["tuple"][std::size_t{1}].as<double>(), 2.5);
  EXPECT_EQ(v["one"].size(), 1u);
  const PyValue& d = v["dict"];
  ASSERT_EQ(d.kind(), PyKind::dict);
  ASSERT_EQ(d.size(), 4u);
  EXPECT_EQ(d.dict_items()[0].first.as<int>(), 1);
  EXPECT_EQ(d.dict_items()[0].second.as<std::string>(), "one");
  EXPECT_EQ(d.dict_items()[1].first.kind(), PyKind::tuple);
  EXPECT_EQ(d.dict_items()[1].second.as<std::string>(), "pair");
  EXPECT_EQ(d["nested"]["x"][1].as<int>(), 2);
  EXPECT_EQ(d.dict_items()[3].first.as<double>(), 2.0);
  ASSERT_EQ(v["set"].kind(), PyKind::set);
  EXPECT_EQ(v["set"].size(), 3u);
  EXPECT_EQ(v["frozenset"].kind(), PyKind::set);
  EXPECT_EQ(v["frozenset"].items()[0].as<std::string>(), "a");
  EXPECT_EQ(v["bytearray"].as<std::vector<std::byte>>(), (std::vector<std::byte>{std::byte{'x'}, std::byte{'y'}}));
  EXPECT_EQ(v["np_float"].as<double>(), 2.5);
  EXPECT_EQ(v["np_int"].as<int>(), -3);
  EXPECT_TRUE(v["np_bool"].as<bool>());
  EXPECT_EQ(v["np_u8"].as<std::uint64_t>(), std::numeric_limits<std::uint64_t>::max() - 1);
  EXPECT_EQ(v["np_c8"].as<std::complex<double>>(), std::complex<double>(1, -1));
  EXPECT_EQ(v["empty_list"].size(), 0u);
  EXPECT_EQ(v["empty_tuple"].kind(), PyKind::tuple);
  EXPECT_EQ(v["shared"][0][1].as<int>(), 2);
  EXPECT_EQ(v["shared"][1][0].as<int>(), 1);
  expect_arrays(v["arrays"]);
  const auto zero_d = v["zero_d"].as<joblib::Array<double>>();
  EXPECT_TRUE(zero_d.shape().empty());
  EXPECT_EQ(zero_d[0], 3.0);
  EXPECT_EQ(v["empty_array"].shape(), (std::vector<std::size_t>{0, 3}));
  EXPECT_TRUE(v["empty_array"].as<joblib::Array<double>>().empty());
}

class PythonWrites : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!have_joblib()) return;
    dir_ = new TempDir("joblib_python");
    const std::string script = std::string("DIR = \"") + dir_->path.string() + "\"\n" + kPythonValue + R"(
for comp in [None, "zlib", "gzip", "bz2", "xz", "lzma", "lz4"]:
    if comp == "lz4":
        try:
            import lz4
        except ImportError:
            continue
    joblib.dump(value, os.path.join(d, f"v_{comp}.joblib"), compress=(comp, 3) if comp else 0)
joblib.dump(value, os.path.join(d, "v_protocol2.joblib"), protocol=2)
for proto in [2, 3, 4, 5]:
    with open(os.path.join(d, f"p{proto}.pkl"), "wb") as f:
        pickle.dump(value, f, protocol=proto)
)";
    ok_ = run_python(script, dir_->path);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!have_joblib()) GTEST_SKIP() << "python3-joblib is not installed (the test command installs it)";
    ASSERT_TRUE(ok_) << "the Python writer failed";
  }
  static fs::path at(const std::string& name) { return dir_->path / name; }
  static inline TempDir* dir_ = nullptr;
  static inline bool ok_ = false;
};

TEST_F(PythonWrites, EveryCompressionJoblibWritesLoads) {
  for (const char* comp : {"None", "zlib", "gzip", "bz2", "xz", "lzma", "lz4", "protocol2"}) {
    const std::string name = std::string("v_") + comp + ".joblib";
    if (!fs::exists(at(name)) && std::string(comp) == "lz4") {
      ADD_FAILURE() << "python3-lz4 is not installed (the test command installs it)";
      continue;
    }
    expect_value(joblib::load_python(at(name)), name);
  }
}

TEST_F(PythonWrites, EveryPickleProtocolFromTwoToFiveLoads) {
  for (int proto = 2; proto <= 5; ++proto) {
    const std::string name = "p" + std::to_string(proto) + ".pkl";
    expect_value(joblib::load_python(at(name)), name);
  }
}

TEST_F(PythonWrites, UncompressedArraysAreMappedWhenAsked) {
  for (joblib::MmapMode mode : {joblib::MmapMode::r, joblib::MmapMode::c}) {
    PyValue v = joblib::load_python(at("v_None.joblib"), {.mmap_mode = mode});
    expect_value(v, "v_None.joblib mapped");
    const auto f8 = v["arrays"]["f8"].as<joblib::Array<double>>();
    EXPECT_TRUE(f8.is_mapped());
    EXPECT_EQ(f8.is_writable(), mode == joblib::MmapMode::c);
    EXPECT_EQ(f8.filename(), fs::absolute(at("v_None.joblib")));
    // A big-endian Fortran array is read into memory (its values converted).
    EXPECT_FALSE(v["arrays"]["f8_f_be"].as<joblib::Array<double>>().is_mapped());
  }
  // Compressed files and pickled arrays are read, not mapped.
  EXPECT_FALSE(joblib::load_python(at("v_zlib.joblib"), {.mmap_mode = joblib::MmapMode::r})["arrays"]["f8"]
                   .as<joblib::Array<double>>()
                   .is_mapped());
  EXPECT_FALSE(joblib::load_python(at("p4.pkl"), {.mmap_mode = joblib::MmapMode::r})["arrays"]["f8"]
                   .as<joblib::Array<double>>()
                   .is_mapped());
  // With r+ a copy would silently lose the writes: refused.
  EXPECT_THAT(store_error([&] { joblib::load_python(at("v_None.joblib"), {.mmap_mode = joblib::MmapMode::r_plus}); }),
              HasSubstr("is in Fortran order and cannot be mapped as a C-order Array for mmap_mode r+"));
  EXPECT_THROW(joblib::load_python(at("v_None.joblib"), {.mmap_mode = joblib::MmapMode::w_plus}), std::invalid_argument);
}

TEST(PythonMapped, WritesThroughRPlusReachTheFile) {
  if (!have_joblib()) GTEST_SKIP() << "python3-joblib is not installed (the test command installs it)";
  TempDir dir("joblib_python");
  ASSERT_TRUE(run_python(R"(
import numpy as np, joblib, os
d = ")" + dir.path.string() + R"("
joblib.dump({"w": np.arange(1000, dtype=np.float64), "n": np.arange(7, dtype=np.int16)}, os.path.join(d, "m.joblib"))
)", dir.path));
  {
    PyValue v = joblib::load_python(dir.path / "m.joblib", {.mmap_mode = joblib::MmapMode::r_plus});
    auto w = v["w"].as<joblib::Array<double>>();
    ASSERT_TRUE(w.is_mapped());
    ASSERT_TRUE(w.is_writable());
    EXPECT_EQ(w[999], 999.0);
    w[3] = -1.5;
    auto n = v["n"].as<joblib::Array<std::int16_t>>();
    EXPECT_EQ(n[6], 6);
  }
  ASSERT_TRUE(run_python(R"(
import joblib, os
v = joblib.load(os.path.join(")" + dir.path.string() + R"(", "m.joblib"))
assert v["w"][3] == -1.5 and v["w"][4] == 4.0, v["w"][:5]
)", dir.path));
}

// ---- C++ writes, Python reads ---------------------------------------------------------

PyValue cpp_value() {
  joblib::Array<float> w({2, 2});
  for (std::size_t i = 0; i < 4; ++i) w[i] = float(i) + 0.5f;
  joblib::Array<std::uint64_t> u({3});
  u[2] = std::numeric_limits<std::uint64_t>::max();
  joblib::Array<std::complex<double>> c({1});
  c[0] = {1, -1};
  joblib::Array<bool> b({2});
  b[0] = true;
  std::map<std::string, PyValue> params{{"alpha", 0.25}, {"name", "ridge"}, {"iters", 100}};
  PyValue shared = std::vector<PyValue>{1, 2};
  return std::map<std::string, PyValue>{
      {"params", params},
      {"w", w},
      {"u", u},
      {"c", c},
      {"b", b},
      {"empty", joblib::Array<double>({0, 4})},
      {"none", nullptr},
      {"flags", std::vector<PyValue>{true, false}},
      {"big", std::numeric_limits<std::uint64_t>::max()},
      {"min", std::numeric_limits<std::int64_t>::min()},
      {"mid", std::int64_t{1} << 40},
      {"z", std::complex<double>(0.5, 2)},
      {"raw", std::vector<std::byte>{std::byte{0}, std::byte{200}}},
      {"tuple", PyValue::tuple({1, "x"})},
      {"set", PyValue::set({1, 2, 2})},
      {"keys", PyValue::dict({{PyValue::tuple({1, 2}), "pair"}, {3, "three"}})},
      {"shared", std::vector<PyValue>{shared, shared}},
      {"long", std::string(300, 'q')},
  };
}

const char* const kPythonChecks = R"(
import numpy as np
assert v["params"] == {"alpha": 0.25, "name": "ridge", "iters": 100}, v["params"]
assert v["w"].dtype == np.float32 and v["w"].shape == (2, 2) and (v["w"] == np.arange(4).reshape(2, 2) + 0.5).all()
assert v["u"].dtype == np.uint64 and v["u"][2] == 2**64 - 1
assert v["c"].dtype == np.complex128 and v["c"][0] == 1 - 1j
assert v["b"].dtype == np.bool_ and list(v["b"]) == [True, False]
assert v["empty"].shape == (0, 4) and v["empty"].dtype == np.float64
assert v["none"] is None and v["flags"] == [True, False]
assert v["big"] == 2**64 - 1 and v["min"] == -2**63 and v["mid"] == 2**40
assert v["z"] == 0.5 + 2j and v["raw"] == b"\x00\xc8"
assert v["tuple"] == (1, "x") and v["set"] == {1, 2} and v["keys"] == {(1, 2): "pair", 3: "three"}
assert v["shared"] == [[1, 2], [1, 2]] and v["shared"][0] is v["shared"][1]
assert v["long"] == "q" * 300
)";

TEST(CppWritesPython, JoblibLoadReadsEveryCompression) {
  if (!have_joblib()) GTEST_SKIP() << "python3-joblib is not installed (the test command installs it)";
  TempDir dir("joblib_python");
  const PyValue v = cpp_value();
  const std::vector<std::pair<std::string, joblib::PythonDumpOptions>> cases = {
      {"plain.joblib", {}},
      {"zlib.joblib", {.compress = 3}},
      {"gzip.joblib", {.compress = {"gzip", 3}}},
      {"bz2.joblib", {.compress = {"bz2", 3}}},
      {"xz.joblib", {.compress = {"xz", 3}}},
      {"lzma.joblib", {.compress = {"lzma", 3}}},
      {"lz4.joblib", {.compress = {"lz4", 3}}},
      {"by_extension.pkl.gz", {.compress = true}},
  };
  std::string script = "import joblib, os\nfor name in [";
  for (const auto& [name, options] : cases) {
    joblib::dump_python(v, dir.path / name, options);
    script += "\"" + name + "\", ";
    // C++ reads back what it wrote.
    const PyValue back = joblib::load_python(dir.path / name);
    EXPECT_EQ(back["params"]["alpha"].as<double>(), 0.25) << name;
    EXPECT_EQ(back["w"].as<joblib::Array<float>>(), v["w"].as<joblib::Array<float>>()) << name;
    EXPECT_EQ(back["big"].as<std::uint64_t>(), std::numeric_limits<std::uint64_t>::max()) << name;
  }
  script += "]:\n    v = joblib.load(os.path.join(\"" + dir.path.string() + "\", name))\n";
  std::string checks = kPythonChecks;
  for (std::size_t at = 0; (at = checks.find('\n', at)) != std::string::npos; at += 5) checks.replace(at, 1, "\n    ");
  script += "    " + checks + "\n";
  EXPECT_TRUE(run_python(script, dir.path));
  // Uncompressed arrays start at a multiple of 16 bytes and are mapped back.
  const auto w = joblib::load_python(dir.path / "plain.joblib", {.mmap_mode = joblib::MmapMode::r})["w"]
                     .as<joblib::Array<float>>();
  EXPECT_TRUE(w.is_mapped());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(w.data()) % 16, 0u);
  EXPECT_THROW(joblib::dump_python(v, dir.path / "z.joblib", {.compress = {"zstd", 3}}), std::invalid_argument);
}

TEST(CppWritesPython, PickleLoadReadsAValueWithoutArrays) {
  if (!joblib_test::have_numpy()) GTEST_SKIP() << "python3 is not installed";
  TempDir dir("joblib_python");
  const PyValue v = std::map<std::string, PyValue>{
      {"a", std::vector<PyValue>{1, 2.5, "x", nullptr}}, {"z", std::complex<double>(1, 2)}, {"s", PyValue::set({"k"})}};
  joblib::dump_python(v, dir.path / "plain.pkl");
  EXPECT_TRUE(run_python(R"(
import pickle
with open(")" + (dir.path / "plain.pkl").string() + R"(", "rb") as f:
    v = pickle.load(f)
assert v == {"a": [1, 2.5, "x", None], "z": 1 + 2j, "s": {"k"}}, v
)", dir.path));
}

// ---- the PyValue API --------------------------------------------------------------------

TEST(PyValueApi, AccessorsSayWhatIsWrong) {
  const PyValue v = std::map<std::string, PyValue>{{"n", 300}, {"s", "x"}, {"l", std::vector<PyValue>{1}},
                                                   {"a", joblib::Array<double>({3})}};
  EXPECT_EQ(store_error([&] { v["s"].as<double>(); }), "joblib::PyValue: the value is a str, not a float");
  EXPECT_EQ(store_error([&] { v["n"].as<std::int8_t>(); }), "joblib::PyValue: the int 300 does not fit int8_t");
  EXPECT_EQ(store_error([&] { v["a"].as<joblib::Array<float>>(); }), "the Python array holds float64, not float32");
  EXPECT_EQ(store_error([&] { v["l"]["k"]; }), "joblib::PyValue: the value is a list, not a dict");
  EXPECT_THROW(v["missing"], std::out_of_range);
  EXPECT_THROW(v["l"][1], std::out_of_range);
  EXPECT_THROW(v["l"][-2], std::out_of_range);
  EXPECT_EQ(v["n"].as<double>(), 300.0);
  EXPECT_EQ(v["a"].dtype(), "float64");
  EXPECT_EQ(v["a"].size(), 3u);
  EXPECT_EQ(v.repr(), "{'a': array(float64, shape=(3,)), 'l': [1], 'n': 300, 's': 'x'}");
  EXPECT_THAT(store_error([] { PyValue::set({std::vector<PyValue>{1}}); }), HasSubstr("cannot be hashed"));
  // Python's key equality: 1, 1.0 and True are one key.
  const PyValue d = PyValue::dict({{1, "a"}, {1.0, "b"}, {true, "c"}});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d.dict_items()[0].second.as<std::string>(), "c");
}

// ---- hostile files --------------------------------------------------------------------

TEST(PythonHostileFiles, OtherClassesAreRefusedAndNothingRuns) {
  if (!have_joblib()) GTEST_SKIP() << "python3-joblib is not installed (the test command installs it)";
  TempDir dir("joblib_python");
  const fs::path marker = dir.path / "ran";
  ASSERT_TRUE(run_python(R"(
import os, pickle, joblib, collections
d = ")" + dir.path.string() + R"("
class Exploit:
    def __reduce__(self):
        return (os.system, ("touch " + os.path.join(d, "ran"),))
class Model:
    pass
with open(os.path.join(d, "exploit.pkl"), "wb") as f:
    pickle.dump({"ok": 1, "x": Exploit()}, f, protocol=4)
joblib.dump({"model": Model()}, os.path.join(d, "model.joblib"))
joblib.dump(collections.OrderedDict(a=1), os.path.join(d, "ordered.joblib"), compress=3)
)", dir.path));
  EXPECT_THAT(store_error([&] { joblib::load_python(dir.path / "exploit.pkl"); }),
              HasSubstr("refused: the pickle names posix.system, which load_python does not read"));
  EXPECT_FALSE(fs::exists(marker));
  EXPECT_THAT(store_error([&] { joblib::load_python(dir.path / "model.joblib"); }), HasSubstr("names __main__.Model"));
  EXPECT_THAT(store_error([&] { joblib::load_python(dir.path / "ordered.joblib"); }),
              HasSubstr("names collections.OrderedDict"));
}

TEST(PythonHostileFiles, BrokenStreamsAreStoreErrorsNamingTheProblem) {
  TempDir dir("joblib_python");
  const fs::path p = dir.path / "bad.pkl";
  auto refused = [&](const std::string& bytes, const std::string& why) {
    joblib_test::write_bytes(p, bytes);
    EXPECT_THAT(store_error([&] { joblib::load_python(p); }), HasSubstr(why)) << why;
  };
  using namespace std::string_literals;
  refused("", "the file is empty");
  refused("hello world", "not a pickle of protocol 2 to 5");
  refused("\x80\x01N."s, "its protocol 1 is not 2 to 5");
  refused("\x80\x04]"s, "truncated in an opcode");
  refused("\x80\x04\xff."s, "an unknown opcode 0xff");
  refused("\x80\x04."s, "STOP with an empty stack");
  refused("\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f"s, "truncated in a str");
  refused("\x80\x04\x8a\x0a\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a."s, "an int of 10 bytes does not fit 64 bits");
  refused("\x80\x04]\x94h\x00" "a."s, "the value holds itself (a recursive list)");
  refused("\x80\x04}](K\x01\x8c\x01xu."s, "SETITEMS on a non-dict");
  refused("\x80\x04}]\x8c\x01xs."s, "a dict key of type list cannot be hashed");
  refused("\x80\x04\x8c\x08" "builtins\x8c\x04" "eval\x93."s, "names builtins.eval");
  refused("\x80\x04\x63os\nsystem\n."s, "names os.system");
  refused("\x80\x04\x8c\x05numpy\x8c\x07ndarray\x93."s, "leaves a numpy.ndarray in its value");
  refused("\x80\x04h\x05."s, "a memo key 5 that was never stored");
  refused("\x80\x04\x8c\x05numpy\x8c\x05" "dtype\x93\x8c\x02O8\x89\x88\x87R."s, "the numpy dtype 'O8' is not one of");
  std::string deep = "\x80\x04"s;
  for (int i = 0; i < 1500; ++i) deep += "]";
  for (int i = 0; i < 1499; ++i) deep += "a";
  deep += ".";
  refused(deep, "nested deeper than 1000 levels");
  // A tuple chain 200000 deep as a dict key (hashing and freeing it must
  // not recurse), and a list chain built and dropped.
  std::string chain = "\x80\x04}"s;
  chain += ")";
  for (int i = 0; i < 200000; ++i) chain += "\x85";
  chain += "K\x01s.";
  refused(chain, "nested deeper than 1000 levels");
  std::string dropped = "\x80\x04"s;
  for (int i = 0; i < 200000; ++i) dropped += "]";
  for (int i = 0; i < 199999; ++i) dropped += "a";
  dropped += "0N.";
  joblib_test::write_bytes(p, dropped);
  EXPECT_TRUE(joblib::load_python(p).is_none());
  // A chain popped with an error on its way (freed while the error unwinds).
  std::string unwound = "\x80\x04"s;
  for (int i = 0; i < 200000; ++i) unwound += "]";
  for (int i = 0; i < 199999; ++i) unwound += "a";
  unwound += "Ns";
  refused(unwound, "an opcode reads an empty stack");
  // A 1 MB str used 100000 times as a key costs its length once.
  std::string keys = "\x80\x04}\x8d"s;
  const std::uint64_t len = 1 << 20;
  for (int k = 0; k < 8; ++k) keys += static_cast<char>((len >> (8 * k)) & 0xff);
  keys += std::string(len, 'k') + "\x94" "0";
  for (int i = 0; i < 100000; ++i) keys += "h\x00K\x01s"s;
  keys += ".";
  joblib_test::write_bytes(p, keys);
  const PyValue d = joblib::load_python(p);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[std::string(len, 'k')].as<int>(), 1);
  // A zlib header followed by junk.
  refused("\x78\x9c\x01\x02\x03\x04\x05"s, "bad.pkl: ");
  EXPECT_THROW(joblib::load_python(dir.path / "missing.pkl"), fs::filesystem_error);
}

}  // namespace

namespace {

// The fuzzer's seeds (tests/fuzz/python_corpus) are files that load, as
// make_python_corpus.py wrote them.
TEST(PythonFuzzSeeds, EverySeedLoads) {
  const fs::path corpus = fs::path(JOBLIB_FUZZ_CORPUS_DIR).parent_path() / "python_corpus";
  TempDir dir("joblib_python");
  int seeds = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), {});
    ASSERT_FALSE(bytes.empty());
    const fs::path file = dir.path / "seed";
    joblib_test::write_bytes(file, bytes.substr(1));
    const auto selector = static_cast<unsigned char>(bytes[0]);
    SCOPED_TRACE(entry.path().filename().string());
    if (selector & 4) {
      const joblib::NpzFile f = joblib::load_npz(file);
      EXPECT_EQ(f.at<std::int16_t>("x")[3], 3);
    } else {
      const joblib::MmapMode modes[] = {joblib::MmapMode::none, joblib::MmapMode::r, joblib::MmapMode::c,
                                        joblib::MmapMode::none};
      const PyValue v = joblib::load_python(file, {.mmap_mode = modes[selector & 3]});
      EXPECT_EQ(v["n"].as<int>(), 7);
      EXPECT_EQ(v["a"].as<joblib::Array<double>>()[5], 5.0);
      EXPECT_EQ(v["f"].as<joblib::Array<std::int32_t>>()[3], 1);
      EXPECT_EQ(v["big"].as<std::uint64_t>(), std::uint64_t{1} << 63);
    }
    ++seeds;
  }
  EXPECT_GE(seeds, 15);
}

}  // namespace
