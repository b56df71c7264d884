// Structs without boilerplate, and portability known at compile time.
// Built and run as the ctest `docs.structs`; docs/persistence.md and
// docs/backends.md quote it.
#include <joblib/joblib.hpp>

#include <cereal/access.hpp>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

namespace {

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

// An aggregate (public fields, no constructors, no base class): dump,
// load and the process backends encode it field by field, with no code.
struct Result {
  std::string label;
  std::vector<double> values;
  int iterations = 0;
};

Result fit(std::string label, int n) {
  Result r{std::move(label), {}, n};
  for (int i = 0; i < n; ++i) r.values.push_back(i * 0.5);
  return r;
}

// A type without a default constructor: cereal's load_and_construct builds it.
class Seed {
 public:
  explicit Seed(unsigned v) : value_(v) {}
  unsigned value() const { return value_; }
  template <class Archive>
  void save(Archive& ar) const { ar(value_); }
  template <class Archive>
  static void load_and_construct(Archive& ar, cereal::construct<Seed>& construct) {
    unsigned v = 0;
    ar(v);
    construct(v);
  }

 private:
  unsigned value_;
};

Seed next(Seed s) { return Seed(s.value() * 1664525u + 1013904223u); }

// A library that parallelises a loop for its caller, whatever backend the
// caller picks, checks at compile time that its tasks can travel.
template <class F, class... Args>
auto library_task(F f, Args... args) {
  auto task = joblib::delayed(f)(args...);
  static_assert(joblib::portable_task<decltype(task)>,
                "this task must run on process backends too: pass a function or a lambda without captures");
  return task;
}

}  // namespace

int main() {
  // dump / load
  const auto file = std::filesystem::temp_directory_path() / "joblib_doc_structs.joblib";
  joblib::dump(fit("a", 3), file);
  Result back = joblib::load<Result>(file);
  std::filesystem::remove(file);
  expect(back.label == "a" && back.values.size() == 3 && back.iterations == 3, "aggregate dump/load");

  // results from worker processes
  std::vector<Result> results = joblib::Parallel({.n_jobs = 2, .backend = "loky"})(
      std::views::iota(1, 5) | std::views::transform([](int n) { return library_task(fit, std::string("r"), n); }));
  expect(results.size() == 4 && results[3].values.size() == 4 && results[3].iterations == 4, "aggregate from loky");

  std::vector<Seed> seeds = joblib::Parallel({.n_jobs = 2, .backend = "loky"})(
      std::vector{joblib::delayed(next)(Seed(1)), joblib::delayed(next)(Seed(2))});
  expect(seeds.size() == 2 && seeds[0].value() == 1664525u + 1013904223u, "load_and_construct from loky");

  // what can travel, known at compile time
  const int k = 3;
  static_assert(joblib::encodable<Result>);
  static_assert(!joblib::portable_task<decltype(joblib::delayed([k](int x) { return x * k; })(1))>);
  static_assert(joblib::portable_task<decltype(joblib::delayed([](int x, int k) { return x * k; })(1, k))>);

  if (failures == 0) std::printf("structs: ok\n");
  return failures == 0 ? 0 : 1;
}
