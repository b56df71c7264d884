// Memory: cache a function's results on disk. Built and run as the ctest
// `docs.memory`; docs/memory.md quotes it.
#include <joblib/joblib.hpp>

#include <cstdio>
#include <filesystem>
#include <unistd.h>

namespace {

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

int calls = 0;
double f(double x, int /*verbosity: does not change the result*/) {
  ++calls;
  return x * x;
}

joblib::Array<double> grid(int n) {
  joblib::Array<double> a({static_cast<std::size_t>(n)});
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<double>(i);
  return a;
}

}  // namespace

int main() {
  const auto dir = std::filesystem::temp_directory_path() / ("joblib_doc_memory_" + std::to_string(::getpid()));

  joblib::Memory memory(dir, {.verbose = 0});
  auto cached = memory.cache(f, {.ignore = {1}});   // argument 1 does not change the result
  double y = cached(2.0, 0);                         // computed
  double z = cached(2.0, 1);                         // read from disk
  expect(y == 4.0 && z == 4.0 && calls == 1, "computed once");
  expect(cached.check_call_in_cache(2.0, 0), "in cache");

  auto ref = cached.call_and_shelve(3.0, 0);         // the result stays on disk
  expect(ref.get() == 9.0, "shelved");

  auto [value, metadata] = cached.call_with_metadata(5.0, 0);   // always computes
  expect(value == 25.0 && metadata.duration >= 0, "metadata");

  // Large results come back mapped from the cache, in constant time.
  joblib::Memory mapped(dir, {.verbose = 0, .mmap_mode = joblib::MmapMode::r});
  auto a = mapped.cache(grid)(1'000'000);
  expect(a.is_mapped() && std::as_const(a)[999'999] == 999'999.0, "mapped result");

  memory.reduce_size({.items_limit = 2});            // least recently used first
  cached.clear();
  memory.clear();
  std::filesystem::remove_all(dir);
  if (failures == 0) std::printf("memory: ok\n");
  return failures == 0 ? 0 : 1;
}
