// dump / load: round trips, alignment, memory maps, compression, the
// choice of method, and every kind of bad file.
#include <joblib/persistence.hpp>

#include "../fuzz/fuzz_types.hpp"  // the values of the committed seed files
#include "store.hpp"                // the header layout, to forge bad files
#include "../doc_quotes.hpp"         // docs quote the messages asserted here

#include <gtest/gtest.h>
#define XXH_INLINE_ALL  // to recompute the checksum of a forged header
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <variant>
#include <vector>

namespace store_test {

namespace fs = std::filesystem;
using joblib::Array;
using joblib::MmapMode;
using joblib::StoreError;

struct Record {
  std::string name;
  std::int64_t id = 0;
  std::vector<double> scores;
  Array<float> image;
  std::map<std::string, int> tags;
  std::optional<std::string> note;
  std::variant<int, std::string> tag;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, id, scores, image, tags, note, tag);
  }
  bool operator==(const Record&) const = default;
};

struct Oddities {
  std::vector<Array<std::uint8_t>> bytes;
  std::map<std::string, Array<double>> named;
  Array<std::int16_t> last;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(bytes, named, last);
  }
};

struct Throws {
  template <class Archive>
  void serialize(Archive&) {
    throw std::runtime_error("serialize failed");
  }
};

Record sample_record() {
  Record r;
  r.name = "sample";
  r.id = -42;
  r.scores.resize(50000);
  for (std::size_t i = 0; i < r.scores.size(); ++i) r.scores[i] = std::sin(static_cast<double>(i));
  r.image = Array<float>({64, 48});
  for (std::size_t i = 0; i < r.image.size(); ++i) r.image[i] = static_cast<float>(i % 251);
  r.tags = {{"a", 1}, {"b", 2}};
  r.note = "note";
  r.tag = std::string("variant");
  return r;
}

Array<double> ramp(std::size_t n) {
  Array<double> a({n});
  for (std::size_t i = 0; i < n; ++i) a[i] = static_cast<double>(i) * 0.25;
  return a;
}

bool aligned64(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

std::vector<unsigned char> read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& p, const std::vector<unsigned char>& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

bool has_tool(const std::string& name) { return std::system(("command -v " + name + " >/dev/null 2>&1").c_str()) == 0; }

// The StoreError text of loading `file` as T ("" if it loads).
template <class T>
std::string load_error(const fs::path& file, joblib::LoadOptions options = {}) {
  try {
    (void)joblib::load<T>(file, options);
  } catch (const StoreError& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& word) { return text.find(word) != std::string::npos; }

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "_" + info->name();
    for (char& c : name)
      if (c == '/') c = '_';
    dir_ = fs::temp_directory_path() / ("joblib_store_test_" + std::to_string(::getpid()) + "_" + name);
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path path(const std::string& name) const { return dir_ / name; }
  std::vector<std::string> entries() const {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(dir_)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }
  fs::path dir_;
};

// ---- round trips ---------------------------------------------------------------

TEST_F(StoreTest, DumpReturnsThePathWritten) {
  const auto written = joblib::dump(1, path("one.joblib"));
  EXPECT_EQ(written, std::vector<fs::path>{path("one.joblib")});
  EXPECT_EQ(entries(), std::vector<std::string>{"one.joblib"});
}

TEST_F(StoreTest, RoundTripsNestedValues) {
  const Record r = sample_record();
  joblib::dump(r, path("r.joblib"));
  EXPECT_EQ(joblib::load<Record>(path("r.joblib")), r);
  const std::map<std::string, std::vector<std::string>> m{{"k", {"a", "b"}}, {"e", {}}};
  joblib::dump(m, path("m.joblib"));
  EXPECT_EQ((joblib::load<std::map<std::string, std::vector<std::string>>>(path("m.joblib"))), m);
  joblib::dump(std::string("plain"), path("s.joblib"));
  EXPECT_EQ(joblib::load<std::string>(path("s.joblib")), "plain");
  joblib::dump(Array<double>{}, path("empty.joblib"));
  EXPECT_EQ(joblib::load<Array<double>>(path("empty.joblib")), Array<double>{});
}

TEST_F(StoreTest, FileStartsWithTheMagicAndFormatVersion) {
  joblib::dump(std::vector<int>{1, 2}, path("v.joblib"));
  const auto bytes = read_bytes(path("v.joblib"));
  ASSERT_GE(bytes.size(), 64u);
  EXPECT_EQ(std::memcmp(bytes.data(), "\x89JOBLIB\n", 8), 0);
  std::uint32_t version;
  std::memcpy(&version, bytes.data() + 8, 4);
  EXPECT_EQ(version, 1u);
}

TEST_F(StoreTest, LargeBuffersStartAt64ByteAlignedOffsets) {
  Oddities o;
  for (std::size_t n : {1u, 3u, 17u, 65u}) o.bytes.emplace_back(Array<std::uint8_t>({n}));
  o.named["x"] = ramp(5);
  o.named["y"] = ramp(1);
  o.last = Array<std::int16_t>({3, 3});
  for (std::size_t i = 0; i < o.last.size(); ++i) o.last[i] = static_cast<std::int16_t>(i);
  o.bytes[2][16] = 200;
  joblib::dump(o, path("odd.joblib"));
  for (MmapMode mode : {MmapMode::none, MmapMode::r}) {
    const auto back = joblib::load<Oddities>(path("odd.joblib"), {.mmap_mode = mode});
    ASSERT_EQ(back.bytes.size(), 4u);
    for (const auto& a : back.bytes) {
      EXPECT_TRUE(aligned64(a.cdata()));
      EXPECT_EQ(a.is_mapped(), mode != MmapMode::none);
    }
    EXPECT_EQ(back.bytes[2][16], 200);
    EXPECT_TRUE(aligned64(back.named.at("x").cdata()));
    EXPECT_TRUE(aligned64(back.named.at("y").cdata()));
    EXPECT_TRUE(aligned64(back.last.cdata()));
    EXPECT_EQ(back.named.at("x"), ramp(5));
    EXPECT_EQ(back.last[8], 8);
  }
}

// ---- memory maps -----------------------------------------------------------------

TEST_F(StoreTest, MmapModeRMapsReadOnlyWithoutCopy) {
  joblib::dump(ramp(100000), path("a.joblib"));
  auto a = joblib::load<Array<double>>(path("a.joblib"), {.mmap_mode = MmapMode::r});
  EXPECT_TRUE(a.is_mapped());
  EXPECT_FALSE(a.is_writable());
  EXPECT_EQ(a.filename(), path("a.joblib"));
  EXPECT_EQ(std::as_const(a)[99999], 99999 * 0.25);
  EXPECT_EQ(a, ramp(100000));
  // Every accessor reads, const or not, in place: the mapping, not a copy.
  const std::byte* file_bytes = a.buffer().data.get();
  EXPECT_EQ(reinterpret_cast<const std::byte*>(a.data()), file_bytes);
  EXPECT_EQ(a[99999], 99999 * 0.25);
  EXPECT_EQ(a.at(3), 0.75);
  double sum = 0;
  for (double& x : a) sum += x;  // a non-const range-for
  EXPECT_EQ(sum, 0.25 * (99999.0 * 100000.0 / 2));
  EXPECT_EQ(a.span().size(), 100000u);
  // A write stays in this process: the file keeps its bytes.
  a[0] = 1.0;
  EXPECT_EQ(std::as_const(a)[0], 1.0);
  EXPECT_EQ(joblib::load<Array<double>>(path("a.joblib"))[0], 0.0);
}

TEST_F(StoreTest, MmapModeRPlusWritesReachTheFile) {
  joblib::dump(ramp(1000), path("a.joblib"));
  {
    auto a = joblib::load<Array<double>>(path("a.joblib"), {.mmap_mode = MmapMode::r_plus});
    EXPECT_TRUE(a.is_mapped());
    EXPECT_TRUE(a.is_writable());
    a[10] = -1.0;
  }
  EXPECT_EQ(joblib::load<Array<double>>(path("a.joblib"))[10], -1.0);
}

TEST_F(StoreTest, MmapModeWPlusKeepsTheDataAndWritesThrough) {
  joblib::dump(ramp(1000), path("a.joblib"));
  {
    auto a = joblib::load<Array<double>>(path("a.joblib"), {.mmap_mode = MmapMode::w_plus});
    EXPECT_EQ(std::as_const(a)[999], 999 * 0.25);  // not zeroed, as joblib turns w+ into r+
    EXPECT_TRUE(a.is_writable());
    a[0] = 7.0;
  }
  EXPECT_EQ(joblib::load<Array<double>>(path("a.joblib"))[0], 7.0);
}

TEST_F(StoreTest, MmapModeCCopiesOnWriteAndLeavesTheFile) {
  joblib::dump(ramp(1000), path("a.joblib"));
  auto a = joblib::load<Array<double>>(path("a.joblib"), {.mmap_mode = MmapMode::c});
  EXPECT_TRUE(a.is_mapped());
  EXPECT_TRUE(a.is_writable());
  a[3] = 123.0;
  EXPECT_EQ(a[3], 123.0);
  EXPECT_EQ(joblib::load<Array<double>>(path("a.joblib"))[3], 0.75);
}

TEST_F(StoreTest, MappedLoadStillCopiesVectorsIntoOwnedMemory) {
  const Record r = sample_record();
  joblib::dump(r, path("r.joblib"));
  const auto back = joblib::load<Record>(path("r.joblib"), {.mmap_mode = MmapMode::r});
  EXPECT_EQ(back, r);
  EXPECT_TRUE(back.image.is_mapped());
}

TEST_F(StoreTest, MappedArraysOutliveTheirFileBeingReplaced) {
  joblib::dump(ramp(1000), path("a.joblib"));
  const auto old_map = joblib::load<Array<double>>(path("a.joblib"), {.mmap_mode = MmapMode::r});
  Array<double> other({1000});
  joblib::dump(other, path("a.joblib"));  // a new file renamed over the old one
  EXPECT_EQ(old_map, ramp(1000));
  EXPECT_EQ(joblib::load<Array<double>>(path("a.joblib")), other);
}

TEST_F(StoreTest, MmapOnACompressedFileWarnsOnceAndLoadsInMemory) {
  joblib::dump(ramp(1000), path("a.joblib.z"));
  ::testing::internal::CaptureStderr();
  auto a = joblib::load<Array<double>>(path("a.joblib.z"), {.mmap_mode = MmapMode::r_plus});
  auto b = joblib::load<Array<double>>(path("a.joblib.z"), {.mmap_mode = MmapMode::r_plus});
  const std::string err = ::testing::internal::GetCapturedStderr();
  const std::string message = "mmap_mode \"r+\" is not compatible with compressed file " + path("a.joblib.z").string() +
                              ". \"r+\" flag will be ignored.";
  EXPECT_TRUE(contains(err, "UserWarning: " + message + "\n")) << err;
  EXPECT_EQ(err.find(message), err.rfind(message)) << "warned more than once: " << err;
  joblib_test::expect_doc_quotes(
      "persistence.md", "UserWarning: mmap_mode \"r\" is not compatible with compressed file data.joblib.z. \"r\" flag "
                        "will be ignored.");
  EXPECT_FALSE(a.is_mapped());
  EXPECT_TRUE(a.is_writable());
  EXPECT_EQ(a, ramp(1000));
  EXPECT_EQ(b, ramp(1000));
}

// ---- compression -----------------------------------------------------------------

struct MethodCase {
  std::string method, extension;
  std::vector<unsigned char> magic;
  std::string decompress_command;  // reads the file name appended, writes to stdout
  std::string compress_command;
};

const std::vector<MethodCase>& method_cases() {
  static const std::vector<MethodCase> cases{
      {"zlib", ".z", {0x78},
       "python3 -c \"import sys, zlib; sys.stdout.buffer.write(zlib.decompress(open(sys.argv[1], 'rb').read()))\"",
       "python3 -c \"import sys, zlib; sys.stdout.buffer.write(zlib.compress(open(sys.argv[1], 'rb').read()))\""},
      {"gzip", ".gz", {0x1f, 0x8b}, "gzip -dc", "gzip -c"},
      {"bz2", ".bz2", {'B', 'Z', 'h'}, "bzip2 -dc", "bzip2 -c"},
      {"lzma", ".lzma", {0x5d, 0x00, 0x00}, "xz --format=lzma -dc", "xz --format=lzma -c"},
      {"xz", ".xz", {0xfd, '7', 'z', 'X', 'Z', 0x00}, "xz -dc", "xz -c"},
      {"lz4", ".lz4", {0x04, 0x22, 0x4d, 0x18}, "lz4 -q -dc", "lz4 -q -c"},
      {"zstd", ".zst", {0x28, 0xb5, 0x2f, 0xfd}, "zstd -q -dc", "zstd -q -c"},
  };
  return cases;
}

void PrintTo(const MethodCase& c, std::ostream* os) { *os << c.method; }

class CompressionTest : public StoreTest, public ::testing::WithParamInterface<MethodCase> {};

bool starts_with(const std::vector<unsigned char>& bytes, const std::vector<unsigned char>& magic) {
  return bytes.size() >= magic.size() && std::equal(magic.begin(), magic.end(), bytes.begin());
}

TEST_P(CompressionTest, RoundTripsAndIsDetectedByItsMagicBytes) {
  const auto& c = GetParam();
  const Record r = sample_record();
  joblib::dump(r, path("r.joblib"), {.compress = {c.method, 3}});
  EXPECT_TRUE(starts_with(read_bytes(path("r.joblib")), c.magic));
  EXPECT_EQ(joblib::load<Record>(path("r.joblib")), r);
  // The extension plays no part in loading.
  fs::rename(path("r.joblib"), path("renamed.bin"));
  EXPECT_EQ(joblib::load<Record>(path("renamed.bin")), r);
}

TEST_P(CompressionTest, EveryLevelRoundTrips) {
  const auto& c = GetParam();
  const Array<double> a = ramp(5000);
  for (int level = 1; level <= 9; ++level) {
    joblib::dump(a, path("a"), {.compress = {c.method, level}});
    EXPECT_EQ(joblib::load<Array<double>>(path("a")), a) << level;
  }
}

TEST_P(CompressionTest, LevelZeroWritesAnUncompressedFile) {
  joblib::dump(ramp(10), path("a" + GetParam().extension), {.compress = {GetParam().method, 0}});
  EXPECT_TRUE(starts_with(read_bytes(path("a" + GetParam().extension)), {0x89, 'J', 'O', 'B'}));
}

TEST_P(CompressionTest, TheMethodFollowsTheExtension) {
  const auto& c = GetParam();
  joblib::dump(ramp(10), path("a.joblib" + c.extension));  // compress = 0: the method's default level
  EXPECT_TRUE(starts_with(read_bytes(path("a.joblib" + c.extension)), c.magic));
  joblib::dump(ramp(10), path("b.joblib" + c.extension), {.compress = 5});
  EXPECT_TRUE(starts_with(read_bytes(path("b.joblib" + c.extension)), c.magic));
  EXPECT_EQ(joblib::load<Array<double>>(path("b.joblib" + c.extension)), ramp(10));
}

TEST_P(CompressionTest, FilesAreStandardStreams) {
  const auto& c = GetParam();
  const std::string tool = c.decompress_command.substr(0, c.decompress_command.find(' '));
  if (c.decompress_command.empty() || !has_tool(tool)) GTEST_SKIP() << "no command-line tool for " << c.method;
  const Record r = sample_record();
  joblib::dump(r, path("plain.joblib"));
  joblib::dump(r, path("packed"), {.compress = {c.method, 3}});
  // Decompressed by the standard tool: exactly the uncompressed dump.
  const std::string out = path("unpacked").string();
  ASSERT_EQ(std::system((c.decompress_command + " '" + path("packed").string() + "' > '" + out + "'").c_str()), 0);
  EXPECT_EQ(read_bytes(out), read_bytes(path("plain.joblib")));
  // Compressed by the standard tool: loadable, the method found from the bytes.
  const std::string ext = path("external").string();
  ASSERT_EQ(std::system((c.compress_command + " '" + path("plain.joblib").string() + "' > '" + ext + "'").c_str()), 0);
  EXPECT_EQ(joblib::load<Record>(ext), r);
}

TEST_P(CompressionTest, TruncatedStreamIsReportedAsTruncated) {
  joblib::dump(sample_record(), path("r"), {.compress = {GetParam().method, 3}});
  auto bytes = read_bytes(path("r"));
  for (std::size_t cut : {bytes.size() / 2, bytes.size() - 1, std::size_t{3}}) {
    write_bytes(path("cut"), std::vector<unsigned char>(bytes.begin(), bytes.begin() + static_cast<long>(cut)));
    const std::string err = load_error<Record>(path("cut"));
    EXPECT_TRUE(contains(err, "truncated file") || contains(err, "not a joblib-cpp file")) << cut << ": " << err;
    if (cut > 16) {
      EXPECT_TRUE(contains(err, "truncated file")) << cut << ": " << err;
    }
  }
}

TEST_P(CompressionTest, CorruptedStreamIsAStoreError) {
  joblib::dump(sample_record(), path("r"), {.compress = {GetParam().method, 3}});
  const auto bytes = read_bytes(path("r"));
  for (std::size_t at : {bytes.size() / 3, bytes.size() / 2, bytes.size() - 2}) {
    auto bad = bytes;
    bad[at] ^= 0x5a;
    write_bytes(path("bad"), bad);
    const std::string err = load_error<Record>(path("bad"));
    EXPECT_TRUE(contains(err, "corrupted file") || contains(err, "truncated file")) << at << ": " << err;
  }
}

TEST_P(CompressionTest, DataAfterTheStreamIsCorruption) {
  joblib::dump(ramp(100), path("r"), {.compress = {GetParam().method, 3}});
  auto bytes = read_bytes(path("r"));
  bytes.insert(bytes.end(), {1, 2, 3});
  write_bytes(path("r"), bytes);
  EXPECT_TRUE(contains(load_error<Array<double>>(path("r")), "corrupted file"));
}

INSTANTIATE_TEST_SUITE_P(Methods, CompressionTest, ::testing::ValuesIn(method_cases()),
                         [](const auto& param_info) { return param_info.param.method; });

TEST_F(StoreTest, IntegerLevelMeansZlibAsJoblib) {
  joblib::dump(ramp(10), path("a.joblib"), {.compress = 3});
  EXPECT_TRUE(starts_with(read_bytes(path("a.joblib")), {0x78}));
  joblib::dump(ramp(10), path("b.pkl"), {.compress = true});
  EXPECT_TRUE(starts_with(read_bytes(path("b.pkl")), {0x78}));
  joblib::dump(ramp(10), path("c.pkl"));
  EXPECT_TRUE(starts_with(read_bytes(path("c.pkl")), {0x89, 'J'}));
  joblib::dump(ramp(10), path("d.pkl"), {.compress = false});
  EXPECT_TRUE(starts_with(read_bytes(path("d.pkl")), {0x89, 'J'}));
}

TEST_F(StoreTest, AnExplicitMethodIgnoresTheExtension) {
  joblib::dump(ramp(10), path("a.joblib.bz2"), {.compress = {"gzip", 3}});
  EXPECT_TRUE(starts_with(read_bytes(path("a.joblib.bz2")), {0x1f, 0x8b}));
  joblib::dump(ramp(10), path("b.joblib.gz"), {.compress = "lz4"});
  EXPECT_TRUE(starts_with(read_bytes(path("b.joblib.gz")), {0x04, 0x22, 0x4d, 0x18}));
  joblib::dump(ramp(10), path("c.joblib.xz"), {.compress = {"zlib", 0}});
  EXPECT_TRUE(starts_with(read_bytes(path("c.joblib.xz")), {0x89, 'J'}));
}

TEST_F(StoreTest, InvalidLevelIsRefusedWithJoblibsMessage) {
  for (int level : {-1, 10}) {
    try {
      joblib::dump(1, path("x"), {.compress = level});
      FAIL() << level;
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()), "Non valid compress level given: \"" + std::to_string(level) +
                                           "\". Possible values are [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].");
      joblib_test::expect_doc_quotes("persistence.md",
                                     joblib_test::replace_all(e.what(), "\"" + std::to_string(level) + "\"", "\"10\""));
    }
  }
  EXPECT_THROW(joblib::dump(1, path("x"), {.compress = {"zstd", 12}}), std::invalid_argument);
  EXPECT_TRUE(entries().empty());
}

TEST_F(StoreTest, InvalidMethodIsRefusedWithJoblibsMessage) {
  try {
    joblib::dump(1, path("x"), {.compress = {"wrong", 3}});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()),
              "Non valid compression method given: \"wrong\". Possible values are "
              "['zlib', 'gzip', 'bz2', 'lzma', 'xz', 'lz4', 'zstd'].");
    joblib_test::expect_doc_quotes("persistence.md", joblib_test::replace_all(e.what(), "wrong", "lzo"));
  }
  EXPECT_TRUE(entries().empty());
}

// ---- bad files -------------------------------------------------------------------

TEST_F(StoreTest, MissingFileIsAFilesystemError) {
  EXPECT_THROW(joblib::load<int>(path("nope")), fs::filesystem_error);
}

TEST_F(StoreTest, DirectoryIsNotADump) {
  fs::create_directory(path("d"));
  EXPECT_TRUE(contains(load_error<int>(path("d")), "not a regular file"));
}

TEST_F(StoreTest, FifoIsRefusedWithoutWaiting) {
  ASSERT_EQ(::mkfifo(path("fifo").c_str(), 0600), 0);
  EXPECT_TRUE(contains(load_error<int>(path("fifo")), "not a regular file"));
}

TEST(StoreDocMessagesTest, TheBadFilesTableQuotesTheMessagesFragments) {
  // Each fragment is asserted where the bad file is made; here, that the table shows them as such.
  for (const char* says : {"`not a joblib-cpp file`", "`truncated file`", "`corrupted file`", "`not a regular file`"})
    joblib_test::expect_doc_quotes("persistence.md", says);
}

TEST_F(StoreTest, EmptyOrForeignFileIsNotAJoblibFile) {
  write_bytes(path("empty"), {});
  EXPECT_TRUE(contains(load_error<int>(path("empty")), "not a joblib-cpp file"));
  write_bytes(path("text"), {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '\n'});
  const std::string err = load_error<int>(path("text"));
  EXPECT_TRUE(contains(err, "not a joblib-cpp file")) << err;
  EXPECT_TRUE(contains(err, path("text").string())) << err;
}

TEST_F(StoreTest, CompressedForeignDataIsNotAJoblibFile) {
  if (!has_tool("zstd")) GTEST_SKIP() << "no zstd command";
  write_bytes(path("text"), std::vector<unsigned char>(1000, 'a'));
  ASSERT_EQ(std::system(("zstd -q -c '" + path("text").string() + "' > '" + path("text.zst").string() + "'").c_str()), 0);
  const std::string err = load_error<int>(path("text.zst"));
  const std::string says = "not a joblib-cpp file (a zstd stream that does not hold a joblib-cpp dump)";
  EXPECT_EQ(err, "cannot load '" + path("text.zst").string() + "': " + says);
  joblib_test::expect_doc_quotes("persistence.md", "`" + says + "`");
}

TEST_F(StoreTest, EveryTruncationIsReportedAsTruncated) {
  Oddities o;
  o.bytes.emplace_back(Array<std::uint8_t>({70}));
  o.last = Array<std::int16_t>({5});
  joblib::dump(o, path("full"));
  const auto bytes = read_bytes(path("full"));
  for (std::size_t n = 1; n < bytes.size(); ++n) {
    write_bytes(path("cut"), std::vector<unsigned char>(bytes.begin(), bytes.begin() + static_cast<long>(n)));
    const std::string err = load_error<Oddities>(path("cut"));
    ASSERT_TRUE(contains(err, "truncated file")) << n << ": " << err;
  }
}

TEST_F(StoreTest, AlteredStructureIsCorruption) {
  joblib::dump(sample_record(), path("r"));
  auto bytes = read_bytes(path("r"));
  bytes[64 + 40] ^= 1;  // inside the type name / structure
  write_bytes(path("r"), bytes);
  const std::string err = load_error<Record>(path("r"));
  EXPECT_TRUE(contains(err, "corrupted file")) << err;
}

TEST_F(StoreTest, BytesAfterTheDumpAreCorruption) {
  joblib::dump(ramp(10), path("a"));
  auto bytes = read_bytes(path("a"));
  bytes.push_back(0);
  write_bytes(path("a"), bytes);
  EXPECT_TRUE(contains(load_error<Array<double>>(path("a")), "corrupted file"));
}

TEST_F(StoreTest, AnotherTypeIsNamed) {
  joblib::dump(std::vector<int>{1, 2, 3}, path("v"));
  const std::string err = load_error<std::vector<double>>(path("v"));
  const std::string says =
      "the file holds a value of another type: std::vector<int, std::allocator<int> >, not std::vector<double, "
      "std::allocator<double> >";
  EXPECT_EQ(err, "cannot load '" + path("v").string() + "': " + says);
  joblib_test::expect_doc_quotes("persistence.md", "`" + says + "`");
  EXPECT_TRUE(contains(load_error<Array<int>>(path("v")), "another type"));
}

template <class Field>
void patch_header(const fs::path& file, std::size_t offset, Field value) {
  auto bytes = read_bytes(file);
  std::memcpy(bytes.data() + offset, &value, sizeof value);
  write_bytes(file, bytes);
}

TEST_F(StoreTest, NewerFormatVersionIsNamed) {
  joblib::dump(1, path("a"));
  patch_header(path("a"), offsetof(joblib::detail::StoreHeader, version), std::uint32_t{7});
  const std::string err = load_error<int>(path("a"));
  EXPECT_EQ(err, "cannot load '" + path("a").string() +
                     "': written in a newer joblib-cpp file format (version 7); this build reads format versions up "
                     "to " + std::to_string(joblib::detail::store_format_version));
  joblib_test::expect_doc_quotes("persistence.md", "`written in a newer joblib-cpp file format (version 2); ...`");
}

TEST_F(StoreTest, OtherByteOrderIsNamed) {
  joblib::dump(1, path("a"));
  patch_header(path("a"), offsetof(joblib::detail::StoreHeader, byte_order), std::uint32_t{0x04030201});
  EXPECT_EQ(load_error<int>(path("a")), "cannot load '" + path("a").string() +
                                            "': written on a machine of the other byte order; this build cannot read it");
  joblib_test::expect_doc_quotes("persistence.md", "`written on a machine of the other byte order`");
}

TEST_F(StoreTest, SizesBeyondTheFileAreRefusedBeforeAllocating) {
  joblib::dump(ramp(10), path("a"));
  patch_header(path("a"), offsetof(joblib::detail::StoreHeader, structure_size), std::uint64_t{1} << 50);
  EXPECT_TRUE(contains(load_error<Array<double>>(path("a")), "truncated file"));
  joblib::dump(ramp(10), path("b"));
  patch_header(path("b"), offsetof(joblib::detail::StoreHeader, buffer_count), std::uint64_t{1} << 61);
  EXPECT_TRUE(contains(load_error<Array<double>>(path("b")), "corrupted file"));
  joblib::dump(ramp(10), path("c"));
  patch_header(path("c"), offsetof(joblib::detail::StoreHeader, type_name_size), ~std::uint64_t{0});
  EXPECT_TRUE(contains(load_error<Array<double>>(path("c")), "corrupted file"));
}

// ---- claimed sizes: taken as the data arrives, StoreError whatever they say -------

struct Claims {
  std::string name;
  std::vector<std::string> words;
  Array<double> data;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, words, data);
  }
};

using joblib::detail::StoreHeader;
using joblib::detail::StoreTableEntry;

StoreHeader header_of(const std::vector<unsigned char>& dump) {
  StoreHeader h;
  std::memcpy(&h, dump.data(), sizeof h);
  return h;
}

std::size_t structure_offset(const StoreHeader& h) { return 64 + h.type_name_size; }
std::size_t table_offset(const StoreHeader& h) { return structure_offset(h) + h.structure_size; }

// Recomputes the checksum of the header, type name, structure and table, so
// that a forged size passes it and reaches the code that takes it.
void fix_checksum(std::vector<unsigned char>& dump) {
  StoreHeader h = header_of(dump);
  std::vector<unsigned char> covered(dump.begin(), dump.begin() + offsetof(StoreHeader, checksum));
  covered.insert(covered.end(), dump.begin() + 64,
                 dump.begin() + static_cast<long>(table_offset(h) + h.buffer_count * sizeof(StoreTableEntry)));
  h.checksum = XXH3_64bits(covered.data(), covered.size());
  std::memcpy(dump.data(), &h, sizeof h);
}

template <class Field>
void patch(std::vector<unsigned char>& bytes, std::size_t offset, Field value) {
  std::memcpy(bytes.data() + offset, &value, sizeof value);
}

// An uncompressed dump of a small Claims: name "claims", two words, buffer 0
// (the array's data).
std::vector<unsigned char> claims_dump(const fs::path& scratch) {
  Claims c;
  c.name = "claims";
  c.words = {"alpha", "beta"};
  c.data = ramp(100);
  joblib::dump(c, scratch);
  auto bytes = read_bytes(scratch);
  fs::remove(scratch);
  return bytes;
}

struct Lie {
  std::string what;
  std::vector<unsigned char> bytes;  // an uncompressed dump
  std::string says;                  // what the StoreError must say
};

// Small valid dumps with one length patched to a huge value (the checksum
// fixed when the length lies behind it).
std::vector<Lie> lies(const std::vector<unsigned char>& dump) {
  constexpr std::uint64_t two_gib = std::uint64_t{2} << 30;
  const StoreHeader h = header_of(dump);
  std::vector<Lie> v;
  auto add = [&](std::string what, std::size_t offset, std::uint64_t value, std::string says) {
    Lie lie{std::move(what), dump, std::move(says)};
    patch(lie.bytes, offset, value);
    if (offset >= 64) fix_checksum(lie.bytes);
    v.push_back(std::move(lie));
  };
  add("a 2 GiB structure", offsetof(StoreHeader, structure_size), two_gib, "truncated file");
  add("a 2 GiB buffer", table_offset(h) + offsetof(StoreTableEntry, size), two_gib, "truncated file");
  add("a 1 TiB buffer", table_offset(h) + offsetof(StoreTableEntry, size), std::uint64_t{1} << 40, "truncated file");
  add("a 2 GiB string", structure_offset(h), two_gib, "corrupted file");
  add("2^40 strings", structure_offset(h) + 8 + 6, std::uint64_t{1} << 40, "corrupted file");
  return v;
}

TEST_F(StoreTest, LyingSizesInAnUncompressedFileAreStoreErrors) {
  for (const Lie& lie : lies(claims_dump(path("d")))) {
    write_bytes(path("lie"), lie.bytes);
    for (MmapMode mode : {MmapMode::none, MmapMode::r}) {
      const std::string err = load_error<Claims>(path("lie"), {.mmap_mode = mode});
      EXPECT_TRUE(contains(err, lie.says)) << lie.what << ": " << err;
      EXPECT_TRUE(contains(err, path("lie").string())) << lie.what << ": " << err;
    }
  }
}

// A lying length inside a compressed stream is found out when the stream
// ends: the file is "truncated file" (or "corrupted file"), not too big for memory.
TEST_P(CompressionTest, LyingSizesAreFoundOutWhenTheStreamEnds) {
  const auto& c = GetParam();
  const std::string tool = c.compress_command.substr(0, c.compress_command.find(' '));
  if (!has_tool(tool)) GTEST_SKIP() << "no command-line tool for " << c.method;
  for (const Lie& lie : lies(claims_dump(path("d")))) {
    write_bytes(path("plain"), lie.bytes);
    const std::string packed = path("lie" + c.extension).string();
    ASSERT_EQ(std::system((c.compress_command + " '" + path("plain").string() + "' > '" + packed + "'").c_str()), 0);
    const std::string err = load_error<Claims>(packed);
    EXPECT_TRUE(contains(err, lie.says)) << lie.what << ": " << err;
    EXPECT_TRUE(contains(err, packed)) << lie.what << ": " << err;
  }
}

// A zstd frame of `bytes` (raw blocks) followed by `zeros` zero bytes (RLE
// blocks: 4 bytes of file per 128 KiB): a 67 KB file that holds 2 GiB.
std::vector<unsigned char> zstd_frame(const std::vector<unsigned char>& bytes, std::uint64_t zeros) {
  constexpr std::uint32_t block = 128 << 10;
  std::vector<unsigned char> out{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38};  // no size, no checksum; 128 KiB window
  auto block_header = [&](bool last, unsigned type, std::uint32_t size) {
    const std::uint32_t v = (last ? 1u : 0u) | (type << 1) | (size << 3);
    out.insert(out.end(), {static_cast<unsigned char>(v), static_cast<unsigned char>(v >> 8),
                           static_cast<unsigned char>(v >> 16)});
  };
  for (std::size_t at = 0; at < bytes.size(); at += block) {
    const auto n = static_cast<std::uint32_t>(std::min<std::size_t>(block, bytes.size() - at));
    block_header(zeros == 0 && at + n == bytes.size(), 0, n);
    out.insert(out.end(), bytes.begin() + static_cast<long>(at), bytes.begin() + static_cast<long>(at + n));
  }
  for (std::uint64_t left = zeros; left != 0;) {
    const auto n = static_cast<std::uint32_t>(std::min<std::uint64_t>(block, left));
    left -= n;
    block_header(left == 0, 1, n);
    out.push_back(0);
  }
  return out;
}

// Runs `body` in a forked child; returns its exit code, or minus the signal
// that killed it.
int in_child(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
      code = 98;
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return -1000;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

// AddressSanitizer and ThreadSanitizer reserve terabytes of shadow memory:
// no address-space limit there.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STORE_TEST_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define STORE_TEST_SANITIZER 1
#endif
#endif

// Under an address-space limit (ulimit -v), a file whose sizes ask for more
// memory than the limit allows is a StoreError: std::bad_alloc never escapes
// load, and a lying size is found out as the file's fault, not memory's.
TEST_F(StoreTest, ClaimedSizesAreStoreErrorsUnderAMemoryLimit) {
#ifdef STORE_TEST_SANITIZER
  GTEST_SKIP() << "RLIMIT_AS cannot be combined with a sanitizer's shadow memory";
#else
  constexpr std::uint64_t two_gib = std::uint64_t{2} << 30;
  const auto dump = claims_dump(path("d"));
  const StoreHeader h = header_of(dump);
  struct Case {
    std::string what;
    fs::path file;
    std::string says;  // "" for any StoreError
  };
  std::vector<Case> cases;

  // The tester's bomb: a 67 KB zstd file whose header claims a 2 GiB
  // structure, followed by 2 GiB of zeros.
  auto bomb = dump;
  patch(bomb, offsetof(StoreHeader, structure_size), two_gib);
  bomb.resize(structure_offset(h));
  write_bytes(path("bomb.zst"), zstd_frame(bomb, two_gib + h.buffer_count * sizeof(StoreTableEntry)));
  cases.push_back({"a zstd bomb claiming a 2 GiB structure", path("bomb.zst"), ""});

  // A 2 GiB buffer claimed by a 2 KB stream.
  for (const Lie& lie : lies(dump)) {
    if (lie.what != "a 2 GiB buffer") continue;
    write_bytes(path("buffer.zst"), zstd_frame(lie.bytes, 0));
    cases.push_back({"a zstd stream claiming a 2 GiB buffer", path("buffer.zst"), "truncated file"});
  }

  // An lzma stream whose header asks for a dictionary of 1 GiB - 1 MiB.
  std::vector<unsigned char> lzma{0x5d, 0x00, 0x00, 0xf0, 0x3f};
  lzma.insert(lzma.end(), 8, 0xff);  // unknown uncompressed size
  lzma.insert(lzma.end(), 64, 0x00);
  write_bytes(path("dict.lzma"), lzma);
  cases.push_back({"an lzma stream asking for a 1 GiB dictionary", path("dict.lzma"), ""});

  // An uncompressed (sparse) file that really is 1.5 GiB long, its structure
  // claiming all of it.
  auto sparse = dump;
  const std::uint64_t big = std::uint64_t{3} << 29;
  patch(sparse, offsetof(StoreHeader, structure_size), big);
  write_bytes(path("sparse"), sparse);
  fs::resize_file(path("sparse"), structure_offset(h) + big + h.buffer_count * sizeof(StoreTableEntry));
  cases.push_back({"a 1.5 GiB uncompressed structure", path("sparse"), ""});

  const int code = in_child([&] {
    // Room for 768 MiB more than the process has now.
    std::ifstream statm("/proc/self/statm");
    std::uint64_t pages = 0;
    statm >> pages;
    struct rlimit limit;
    ::getrlimit(RLIMIT_AS, &limit);
    limit.rlim_cur = pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)) + (std::uint64_t{768} << 20);
    if (::setrlimit(RLIMIT_AS, &limit) != 0) return 97;
    int first_failure = 0;
    for (std::size_t i = 0; i < cases.size(); ++i) {
      int failure = 0;
      std::string outcome = "loaded";
      try {
        (void)joblib::load<Claims>(cases[i].file);
        failure = 3;
      } catch (const StoreError& e) {
        if (!contains(e.what(), cases[i].says) || !contains(e.what(), cases[i].file.string())) failure = 4;
        outcome = e.what();
      } catch (const std::bad_alloc&) {
        failure = 1;
        outcome = "std::bad_alloc";
      } catch (const std::exception& e) {
        failure = 2;
        outcome = e.what();
      }
      if (failure == 0) continue;
      std::fprintf(stderr, "%s: %s\n", cases[i].what.c_str(), outcome.c_str());
      if (first_failure == 0) first_failure = 10 * static_cast<int>(i + 1) + failure;
    }
    return first_failure;
  });
  // 10 * (case + 1) + 1: bad_alloc escaped, 2: another exception, 3: it
  // loaded, 4: a StoreError that does not say why (each case is on stderr).
  EXPECT_EQ(code, 0);
#endif
}

// ---- failed dumps leave nothing behind ----------------------------------------------

TEST_F(StoreTest, FailedSerializeLeavesNoFile) {
  EXPECT_THROW(joblib::dump(Throws{}, path("t.joblib")), std::runtime_error);
  EXPECT_TRUE(entries().empty());
}

TEST_F(StoreTest, MissingDirectoryIsAFilesystemErrorAndLeavesNoFile) {
  EXPECT_THROW(joblib::dump(1, path("no/such/dir/x.joblib")), fs::filesystem_error);
  EXPECT_TRUE(entries().empty());
}

TEST_F(StoreTest, WriteErrorLeavesNoTemporaryFileAndKeepsThePreviousOne) {
  joblib::dump(ramp(10), path("a.joblib"));
  Array<std::uint8_t> noise({4u << 20});  // incompressible, so that even zstd output exceeds the limit
  std::uint64_t x = 88172645463325252u;
  for (auto& b : noise.span()) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b = static_cast<std::uint8_t>(x >> 56);
  }
  // A file size limit makes write() fail with EFBIG halfway through.
  struct rlimit old_limit;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old_limit;
  small.rlim_cur = 1 << 20;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  for (const char* method : {"", "zstd"}) {
    joblib::DumpOptions options;
    if (*method) options.compress = {method, 1};
    EXPECT_THROW(joblib::dump(noise, path("a.joblib"), options), fs::filesystem_error) << method;
  }
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(entries(), std::vector<std::string>{"a.joblib"});
  EXPECT_EQ(joblib::load<Array<double>>(path("a.joblib")), ramp(10));
}

// Python's joblib truncates the file in place, which keeps its mode; the
// temporary file that replaces it must take the same mode.
TEST_F(StoreTest, DumpOverAFileKeepsItsMode) {
  for (const mode_t mode : {0600, 0640, 0755, 0444}) {
    for (const char* method : {"", "zstd"}) {
      joblib::dump(ramp(10), path("a.joblib"));
      ASSERT_EQ(::chmod(path("a.joblib").c_str(), mode), 0);
      joblib::DumpOptions options;
      if (*method) options.compress = {method, 1};
      joblib::dump(ramp(20), path("a.joblib"), options);
      struct stat st;
      ASSERT_EQ(::stat(path("a.joblib").c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 07777, mode) << std::oct << mode << " " << method;
      EXPECT_EQ(st.st_uid, ::getuid());
      EXPECT_EQ(joblib::load<Array<double>>(path("a.joblib")), ramp(20));
      fs::remove(path("a.joblib"));
    }
  }
  // A new file gets the usual mode.
  const mode_t mask = ::umask(022);
  joblib::dump(1, path("new"));
  ::umask(mask);
  struct stat st;
  ASSERT_EQ(::stat(path("new").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  EXPECT_EQ(entries(), std::vector<std::string>{"new"});
}

// A file size limit (ulimit -f) is a filesystem_error (EFBIG) that leaves no
// temporary file, not a SIGXFSZ that kills the process, and the signal's
// process-wide disposition, the thread's mask and its pending set are as
// they were.
TEST_F(StoreTest, AFileSizeLimitIsAFilesystemErrorNotADeadlySignal) {
  joblib::dump(ramp(10), path("a.joblib"));
  Array<std::uint8_t> noise({4u << 20});  // incompressible
  std::uint64_t x = 88172645463325252u;
  for (auto& b : noise.span()) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b = static_cast<std::uint8_t>(x >> 56);
  }
  const int code = in_child([&] {
    std::signal(SIGXFSZ, SIG_DFL);
    struct rlimit small;
    ::getrlimit(RLIMIT_FSIZE, &small);
    small.rlim_cur = 1 << 20;
    if (::setrlimit(RLIMIT_FSIZE, &small) != 0) return 97;
    for (const char* method : {"", "zstd"}) {
      joblib::DumpOptions options;
      if (*method) options.compress = {method, 1};
      try {
        joblib::dump(noise, path("a.joblib"), options);
        return 3;
      } catch (const fs::filesystem_error& e) {
        if (e.code() != std::errc::file_too_large) {
          std::fprintf(stderr, "%s\n", e.what());
          return 4;
        }
      }
    }
    struct sigaction action;
    ::sigaction(SIGXFSZ, nullptr, &action);
    if (action.sa_handler != SIG_DFL) return 5;
    sigset_t set;
    ::pthread_sigmask(SIG_BLOCK, nullptr, &set);
    if (::sigismember(&set, SIGXFSZ)) return 6;
    ::sigpending(&set);
    if (::sigismember(&set, SIGXFSZ)) return 7;
    return 0;
  });
  // -25: killed by SIGXFSZ; 3: no error; 4: another error; 5-7: the signal
  // state changed.
  EXPECT_EQ(code, 0);
  EXPECT_EQ(entries(), std::vector<std::string>{"a.joblib"});
  EXPECT_EQ(joblib::load<Array<double>>(path("a.joblib")), ramp(10));
}

// ---- format stability --------------------------------------------------------------

template <class T>
T load_seed(const fs::path& seed, const fs::path& scratch, joblib::MmapMode mode = MmapMode::none) {
  auto bytes = read_bytes(seed);
  bytes.erase(bytes.begin());  // the fuzzer's selector byte
  write_bytes(scratch, bytes);
  return joblib::load<T>(scratch, {.mmap_mode = mode});
}

// tests/fuzz/corpus holds dumps written by the build that made them (format
// version 1, every compressor): this build must still read them.
TEST_F(StoreTest, FilesWrittenByAnEarlierBuildStillLoad) {
  const fs::path corpus = JOBLIB_FUZZ_CORPUS_DIR;
  int checked = 0;
  for (const char* method : {"plain", "zlib", "gzip", "bz2", "lzma", "xz", "lz4", "zstd"}) {
    const std::string m = method;
    EXPECT_EQ(load_seed<joblib_fuzz::Record>(corpus / ("record-" + m), path("f")), joblib_fuzz::seed_record()) << m;
    EXPECT_EQ(load_seed<joblib_fuzz::ArrayD>(corpus / ("array-" + m), path("f")), joblib_fuzz::seed_array()) << m;
    EXPECT_EQ(load_seed<joblib_fuzz::Nested>(corpus / ("nested-" + m), path("f")), joblib_fuzz::seed_nested()) << m;
    EXPECT_EQ(load_seed<joblib_fuzz::Strings>(corpus / ("strings-" + m), path("f")), joblib_fuzz::seed_strings()) << m;
    const auto mixed = load_seed<joblib_fuzz::Mixed>(corpus / ("mixed-" + m), path("f"));
    EXPECT_EQ(std::get<0>(mixed), std::get<0>(joblib_fuzz::seed_mixed())) << m;
    EXPECT_EQ(std::get<1>(mixed), std::get<1>(joblib_fuzz::seed_mixed())) << m;
    EXPECT_EQ(std::get<3>(mixed), std::get<3>(joblib_fuzz::seed_mixed())) << m;
    checked += 5;
  }
  const auto mapped = load_seed<joblib_fuzz::ArrayD>(corpus / "array-plain", path("g"), MmapMode::r);
  EXPECT_TRUE(mapped.is_mapped());
  EXPECT_EQ(mapped, joblib_fuzz::seed_array());
  EXPECT_EQ(checked, 40);
}

}  // namespace store_test
