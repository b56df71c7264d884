// Writes the seed corpus of the load fuzzer: small dumps of each fuzzed
// type, uncompressed and with every compressor, each prefixed with its
// selector byte. Usage: joblib_fuzz_corpus <directory>.
#include "fuzz_types.hpp"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

template <class T>
void seed(const fs::path& dir, const std::string& name, unsigned type, const T& value) {
  const std::vector<std::pair<std::string, joblib::Compress>> methods{
      {"plain", 0}, {"zlib", {"zlib", 1}}, {"gzip", {"gzip", 1}}, {"bz2", {"bz2", 1}}, {"lzma", {"lzma", 1}},
      {"xz", {"xz", 1}}, {"lz4", {"lz4", 1}}, {"zstd", {"zstd", 1}}};
  const fs::path tmp = dir / ".seed.tmp";
  for (const auto& [method, compress] : methods) {
    joblib::dump(value, tmp, {.compress = compress});
    std::ifstream in(tmp, std::ios::binary);
    std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    // Uncompressed seeds also go in with mmap modes r and c.
    for (unsigned mode : method == "plain" ? std::vector<unsigned>{0, 1, 2} : std::vector<unsigned>{0}) {
      std::ofstream out(dir / (name + "-" + method + (mode ? "-mmap" + std::to_string(mode) : "")), std::ios::binary);
      out.put(static_cast<char>(type | (mode << 3)));
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
  }
  fs::remove(tmp);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: joblib_fuzz_corpus <directory>\n";
    return 2;
  }
  const fs::path dir = argv[1];
  fs::create_directories(dir);

  seed(dir, "record", 0, joblib_fuzz::seed_record());
  seed(dir, "array", 1, joblib_fuzz::seed_array());
  seed(dir, "nested", 2, joblib_fuzz::seed_nested());
  seed(dir, "strings", 3, joblib_fuzz::seed_strings());
  seed(dir, "mixed", 4, joblib_fuzz::seed_mixed());
  return 0;
}
