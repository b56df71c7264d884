#pragma once
// The types the load fuzzer asks for, shared with the corpus generator.
// Byte 0 of a fuzz input picks the type (low 3 bits) and the mmap mode
// (bits 3-4); the rest is the file handed to joblib::load.
#include <joblib/persistence.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

namespace joblib_fuzz {

struct Record {
  std::string name;
  std::int64_t id = 0;
  std::vector<double> scores;
  joblib::Array<float> image;
  std::map<std::string, int> tags;
  std::optional<std::string> note;
  std::variant<int, std::string, std::vector<std::uint8_t>> tag;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, id, scores, image, tags, note, tag);
  }
  bool operator==(const Record&) const = default;
};

using ArrayD = joblib::Array<double>;
using Nested = std::map<std::string, std::vector<std::int32_t>>;
using Strings = std::vector<std::string>;
using Mixed = std::tuple<std::vector<bool>, std::optional<joblib::Array<std::uint8_t>>, std::pair<std::uint16_t, double>,
                         std::vector<std::vector<std::uint64_t>>>;

inline constexpr unsigned type_count = 5;

// The values of the seed corpus (tests/fuzz/corpus, written by
// make_corpus.cpp); store_test checks that those files still load as these.
inline Record seed_record() {
  Record r;
  r.name = "seed";
  r.id = 7;
  r.scores = {1.5, -2.25, 3.0};
  r.image = joblib::Array<float>({2, 3});
  for (std::size_t i = 0; i < r.image.size(); ++i) r.image[i] = static_cast<float>(i);
  r.tags = {{"a", 1}, {"bb", 2}};
  r.note = "n";
  r.tag = std::vector<std::uint8_t>{1, 2, 3};
  return r;
}

inline ArrayD seed_array() {
  ArrayD a({4, 2});
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<double>(i) * 0.5;
  return a;
}

inline Nested seed_nested() { return {{"x", {1, 2, 3}}, {"y", {}}, {"z", {-1}}}; }

inline Strings seed_strings() { return {"", "one", std::string(40, 's')}; }

inline Mixed seed_mixed() {
  return {{true, false, true}, joblib::Array<std::uint8_t>({5}), {9, 2.5}, {{1, 2}, {}, {3}}};
}

inline joblib::MmapMode mode_of(std::uint8_t selector) {
  switch ((selector >> 3) & 3) {
    case 1: return joblib::MmapMode::r;
    case 2: return joblib::MmapMode::c;
    default: return joblib::MmapMode::none;
  }
}

}  // namespace joblib_fuzz
