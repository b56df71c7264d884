// dump / load benchmarks, each beside a baseline measured in the same run:
//   - 800 MB Array<double>: dump and load against plain write(2)/read(2) of
//     the same bytes and against memcpy;
//   - mmap load of 8 MB and of 800 MB (the time must not grow with size);
//   - every compressor at level 3 on random and on smooth doubles (speed and
//     ratio), and zstd-3 against zlib-3 (joblib's default) on 800 MB;
//   - 1,000,000 small strings and ints, against a hand-written binary format.
// Files go to $JOBLIB_BENCH_DIR, else /dev/shm, else /tmp, and are deleted
// at the end. Not run by ctest. See docs/persistence.md for the figures.
//
//   cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DJOBLIB_BUILD_BENCH=ON
//   ninja -C build-bench bench_store && build-bench/bin/bench_store
#include <joblib/persistence.hpp>

#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace fs = std::filesystem;
using joblib::Array;

namespace {

constexpr std::size_t big_bytes = 800'000'000;    // 800 MB
constexpr std::size_t small_bytes = 8'000'000;    // 8 MB
constexpr std::size_t codec_bytes = 40'000'000;   // per-compressor table
constexpr std::size_t n_small_objects = 1'000'000;

const fs::path& bench_dir() {
  static const fs::path dir = [] {
    fs::path base;
    if (const char* env = std::getenv("JOBLIB_BENCH_DIR"))
      base = env;
    else if (fs::is_directory("/dev/shm"))
      base = "/dev/shm";
    else
      base = fs::temp_directory_path();
    fs::path d = base / ("joblib_bench_store_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

Array<double> random_doubles(std::size_t bytes) {
  Array<double> a({bytes / sizeof(double)});
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> u(0.0, 1.0);  // numpy.random.rand
  for (double& x : a.span()) x = u(rng);
  return a;
}

Array<double> smooth_doubles(std::size_t bytes) {
  Array<double> a({bytes / sizeof(double)});
  auto s = a.span();
  // A slow wave sampled at 3 decimals, as measured data often is.
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = std::round(1e3 * std::sin(static_cast<double>(i) * 1e-4)) * 1e-3;
  return a;
}

const Array<double>& big_array() {
  static const Array<double> a = random_doubles(big_bytes);
  return a;
}

// Writes all bytes with write(2), as the plain baseline.
void plain_write(const fs::path& p, const void* data, std::size_t n) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) std::abort();
  auto* c = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, std::min<std::size_t>(n, std::size_t{1} << 30));
    if (w <= 0) std::abort();
    c += w;
    n -= static_cast<std::size_t>(w);
  }
  ::close(fd);
}

// Reads a whole file into fresh memory with read(2), as the plain baseline.
std::unique_ptr<char[]> plain_read(const fs::path& p, std::size_t& n) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) std::abort();
  n = static_cast<std::size_t>(::lseek(fd, 0, SEEK_END));
  std::unique_ptr<char[]> buf(new char[n]);
  std::size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd, buf.get() + done, std::min<std::size_t>(n - done, std::size_t{1} << 30),
                              static_cast<off_t>(done));
    if (r <= 0) std::abort();
    done += static_cast<std::size_t>(r);
  }
  ::close(fd);
  return buf;
}

void remove_file(benchmark::State& state, const fs::path& p) {
  state.PauseTiming();
  fs::remove(p);
  state.ResumeTiming();
}

// ---- 800 MB: dump / load against write / read / memcpy -------------------------------

void BM_Dump_800MB(benchmark::State& state) {
  const auto& a = big_array();
  const fs::path p = bench_dir() / "dump.joblib";
  for (auto _ : state) {
    remove_file(state, p);
    joblib::dump(a, p);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<std::size_t>(state.iterations()) * a.nbytes()));
  fs::remove(p);
}

void BM_PlainWrite_800MB(benchmark::State& state) {
  const auto& a = big_array();
  const fs::path p = bench_dir() / "plain.bin";
  for (auto _ : state) {
    remove_file(state, p);
    plain_write(p, a.cdata(), a.nbytes());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<std::size_t>(state.iterations()) * a.nbytes()));
  fs::remove(p);
}

void BM_Load_800MB(benchmark::State& state) {
  const fs::path p = bench_dir() / "load.joblib";
  joblib::dump(big_array(), p);
  for (auto _ : state) {
    auto a = joblib::load<Array<double>>(p);
    benchmark::DoNotOptimize(a.cdata());
    state.PauseTiming();
    if (a.size() != big_array().size()) state.SkipWithError("wrong size");
    a = {};
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<std::size_t>(state.iterations()) * big_bytes));
  fs::remove(p);
}

void BM_PlainRead_800MB(benchmark::State& state) {
  const fs::path p = bench_dir() / "plain_read.bin";
  plain_write(p, big_array().cdata(), big_array().nbytes());
  for (auto _ : state) {
    std::size_t n = 0;
    auto buf = plain_read(p, n);
    benchmark::DoNotOptimize(buf.get());
    state.PauseTiming();
    buf.reset();
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<std::size_t>(state.iterations()) * big_bytes));
  fs::remove(p);
}

// memcpy into fresh memory (what any copy of 800 MB costs, page faults included).
void BM_MemcpyFresh_800MB(benchmark::State& state) {
  const auto& a = big_array();
  for (auto _ : state) {
    std::unique_ptr<char[]> buf(new char[a.nbytes()]);
    std::memcpy(buf.get(), a.cdata(), a.nbytes());
    benchmark::DoNotOptimize(buf.get());
    benchmark::ClobberMemory();
    state.PauseTiming();
    buf.reset();
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<std::size_t>(state.iterations()) * a.nbytes()));
}

// memcpy into memory already touched (memory bandwidth alone).
void BM_MemcpyWarm_800MB(benchmark::State& state) {
  const auto& a = big_array();
  std::unique_ptr<char[]> buf(new char[a.nbytes()]);
  std::memset(buf.get(), 1, a.nbytes());
  for (auto _ : state) {
    std::memcpy(buf.get(), a.cdata(), a.nbytes());
    benchmark::DoNotOptimize(buf.get());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<std::size_t>(state.iterations()) * a.nbytes()));
}

// ---- mmap load: constant time -----------------------------------------------------------

void BM_MmapLoad(benchmark::State& state) {
  const std::size_t bytes = static_cast<std::size_t>(state.range(0));
  const fs::path p = bench_dir() / ("mmap_" + std::to_string(bytes) + ".joblib");
  joblib::dump(bytes == big_bytes ? big_array() : random_doubles(bytes), p);
  for (auto _ : state) {
    auto a = joblib::load<Array<double>>(p, {.mmap_mode = joblib::MmapMode::r});
    benchmark::DoNotOptimize(a.cdata());
    if (!a.is_mapped()) state.SkipWithError("not mapped");
  }
  state.counters["file_MB"] = static_cast<double>(bytes) / 1e6;
  fs::remove(p);
}

// ---- compressors: speed and ratio ----------------------------------------------------------

const Array<double>& codec_data(bool smooth) {
  static const Array<double> random = random_doubles(codec_bytes);
  static const Array<double> wave = smooth_doubles(codec_bytes);
  return smooth ? wave : random;
}

const char* const methods[] = {"zlib", "gzip", "bz2", "lzma", "xz", "lz4", "zstd"};

void compressor_dump(benchmark::State& state, const Array<double>& a, const char* method, int level) {
  const fs::path p = bench_dir() / (std::string("c_") + method + ".joblib");
  for (auto _ : state) {
    remove_file(state, p);
    joblib::dump(a, p, {.compress = {method, level}});
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<std::size_t>(state.iterations()) * a.nbytes()));
  state.counters["ratio"] = static_cast<double>(a.nbytes()) / static_cast<double>(fs::file_size(p));
  fs::remove(p);
}

void compressor_load(benchmark::State& state, const Array<double>& a, const char* method, int level) {
  const fs::path p = bench_dir() / (std::string("cl_") + method + ".joblib");
  joblib::dump(a, p, {.compress = {method, level}});
  for (auto _ : state) {
    auto back = joblib::load<Array<double>>(p);
    benchmark::DoNotOptimize(back.cdata());
    state.PauseTiming();
    if (back.size() != a.size()) state.SkipWithError("wrong size");
    back = {};
    state.ResumeTiming();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<std::size_t>(state.iterations()) * a.nbytes()));
  fs::remove(p);
}

// Arguments: method index, data (0 random, 1 smooth), level.
std::string label(const benchmark::State& state) {
  return std::string(methods[state.range(0)]) + "-" + std::to_string(state.range(2)) + " " +
         (state.range(1) ? "smooth" : "random");
}

void BM_CompressDump(benchmark::State& state) {
  compressor_dump(state, codec_data(state.range(1) != 0), methods[state.range(0)], static_cast<int>(state.range(2)));
  state.SetLabel(label(state));
}

void BM_CompressLoad(benchmark::State& state) {
  compressor_load(state, codec_data(state.range(1) != 0), methods[state.range(0)], static_cast<int>(state.range(2)));
  state.SetLabel(label(state));
}

// Baseline of the table: the same data written uncompressed.
void BM_CompressDumpBaselineNone(benchmark::State& state) {
  const auto& a = codec_data(state.range(0) != 0);
  const fs::path p = bench_dir() / "c_none.joblib";
  for (auto _ : state) {
    remove_file(state, p);
    joblib::dump(a, p);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<std::size_t>(state.iterations()) * a.nbytes()));
  state.counters["ratio"] = static_cast<double>(a.nbytes()) / static_cast<double>(fs::file_size(p));
  state.SetLabel(std::string("none ") + (state.range(0) ? "smooth" : "random"));
  fs::remove(p);
}

// The target: zstd-3 against joblib's default zlib-3 on 800 MB of doubles.
void BM_Dump800MB_Zlib3(benchmark::State& state) { compressor_dump(state, big_array(), "zlib", 3); }
void BM_Dump800MB_Zstd3(benchmark::State& state) { compressor_dump(state, big_array(), "zstd", 3); }

// ---- 1,000,000 small strings and ints ------------------------------------------------------

using Small = std::vector<std::pair<std::string, std::int64_t>>;

const Small& small_objects() {
  static const Small v = [] {
    Small s;
    s.reserve(n_small_objects);
    for (std::size_t i = 0; i < n_small_objects; ++i)
      s.emplace_back("item-" + std::to_string(i), static_cast<std::int64_t>(i) * 7 - 3);
    return s;
  }();
  return v;
}

void BM_SmallObjects_Dump(benchmark::State& state) {
  const fs::path p = bench_dir() / "small.joblib";
  for (auto _ : state) {
    remove_file(state, p);
    joblib::dump(small_objects(), p);
  }
  state.counters["file_MB"] = static_cast<double>(fs::file_size(p)) / 1e6;
  fs::remove(p);
}

void BM_SmallObjects_Load(benchmark::State& state) {
  const fs::path p = bench_dir() / "small_load.joblib";
  joblib::dump(small_objects(), p);
  for (auto _ : state) {
    auto v = joblib::load<Small>(p);
    benchmark::DoNotOptimize(v.data());
    state.PauseTiming();
    if (v.size() != n_small_objects) state.SkipWithError("wrong size");
    v = {};
    state.ResumeTiming();
  }
  fs::remove(p);
}

// Baseline: a hand-written binary format of the same data ([len][chars][int]).
std::string hand_written_bytes() {
  std::string buf;
  const std::uint64_t n = small_objects().size();
  buf.append(reinterpret_cast<const char*>(&n), 8);
  for (const auto& [s, i] : small_objects()) {
    const std::uint64_t len = s.size();
    buf.append(reinterpret_cast<const char*>(&len), 8);
    buf.append(s);
    buf.append(reinterpret_cast<const char*>(&i), 8);
  }
  return buf;
}

void BM_SmallObjects_HandWrittenDump(benchmark::State& state) {
  const fs::path p = bench_dir() / "small_hand.bin";
  for (auto _ : state) {
    remove_file(state, p);
    const std::string buf = hand_written_bytes();
    plain_write(p, buf.data(), buf.size());
  }
  fs::remove(p);
}

void BM_SmallObjects_HandWrittenLoad(benchmark::State& state) {
  const fs::path p = bench_dir() / "small_hand_load.bin";
  {
    const std::string buf = hand_written_bytes();
    plain_write(p, buf.data(), buf.size());
  }
  for (auto _ : state) {
    std::size_t size = 0;
    auto buf = plain_read(p, size);
    const char* c = buf.get();
    std::uint64_t n;
    std::memcpy(&n, c, 8);
    c += 8;
    Small v;
    v.reserve(n);
    for (std::uint64_t k = 0; k < n; ++k) {
      std::uint64_t len;
      std::memcpy(&len, c, 8);
      c += 8;
      std::string s(c, len);
      c += len;
      std::int64_t i;
      std::memcpy(&i, c, 8);
      c += 8;
      v.emplace_back(std::move(s), i);
    }
    benchmark::DoNotOptimize(v.data());
    state.PauseTiming();
    v = {};
    state.ResumeTiming();
  }
  fs::remove(p);
}

}  // namespace

BENCHMARK(BM_MemcpyWarm_800MB)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_MemcpyFresh_800MB)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_PlainWrite_800MB)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_Dump_800MB)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_PlainRead_800MB)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_Load_800MB)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_MmapLoad)->Arg(static_cast<std::int64_t>(small_bytes))->Arg(static_cast<std::int64_t>(big_bytes))
    ->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_CompressDumpBaselineNone)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_CompressDump)->ArgsProduct({{0, 1, 2, 3, 4, 5, 6}, {0, 1}, {3}})
    ->ArgsProduct({{5, 6}, {0, 1}, {1}})  // lz4's fast mode, zstd's fastest level
    ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_CompressLoad)->ArgsProduct({{0, 1, 2, 3, 4, 5, 6}, {0, 1}, {3}})
    ->ArgsProduct({{5, 6}, {0, 1}, {1}})
    ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_Dump800MB_Zlib3)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_Dump800MB_Zstd3)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_SmallObjects_HandWrittenDump)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_SmallObjects_Dump)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_SmallObjects_HandWrittenLoad)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_SmallObjects_Load)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::error_code ec;
  fs::remove_all(bench_dir(), ec);
  return 0;
}
