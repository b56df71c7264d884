// Compile-time portability (joblib::encodable, joblib::portable_task,
// joblib::delayable): what a library can static_assert or overload on
// before it knows which backend its caller picks. Every check here is a
// static_assert; the test bodies show the overloads a library writes.
#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace concepts_test {
namespace {

struct Params {
  std::string name;
  std::vector<double> grid;
  int seed = 0;
};
struct Opaque {
  explicit Opaque(int) {}
};

double simulate(Params p) { return static_cast<double>(p.seed) + static_cast<double>(p.grid.size()); }
int add(int a, int b) { return a + b; }

int captured = 2;
auto capturing_task() {
  const int k = captured;
  return joblib::delayed([k](int x) { return x * k; })(1);
}
auto captureless_task() { return joblib::delayed([](int x, int k) { return x * k; })(1, 2); }

static_assert(joblib::encodable<Params>);
static_assert(!joblib::encodable<Opaque>);
static_assert(!joblib::encodable<int*>);

static_assert(joblib::portable_task<decltype(joblib::delayed(simulate)(Params{}))>);
static_assert(joblib::portable_task<decltype(captureless_task())>);
static_assert(!joblib::portable_task<decltype(capturing_task())>);
static_assert(!joblib::portable_task<decltype(joblib::delayed([](Opaque) { return 0; })(Opaque(1)))>);
static_assert(!joblib::portable_task<joblib::Task<int>>);  // type-erased: runs on threads only
static_assert(!joblib::portable_task<int>);

// A wrong call does not build a task: delayed and map are constrained, so
// the check is a plain `false`, not a cascade of errors.
static_assert(joblib::delayable<decltype(add), int, int>);
static_assert(!joblib::delayable<decltype(add), int>);
static_assert(!std::is_invocable_v<decltype(joblib::delayed(add)), int>);
static_assert(std::is_invocable_v<decltype(joblib::delayed(add)), int, long>);
template <class F, class Inputs>
constexpr bool can_map = requires(const joblib::Parallel& p, F&& f, Inputs&& in) {
  p.map(std::forward<F>(f), std::forward<Inputs>(in));
};
static_assert(!can_map<decltype(add)&, std::vector<int>&>);
static_assert(can_map<decltype(simulate)&, std::vector<Params>>);

// What a library writes: any backend for portable tasks, threads otherwise.
template <class T>
std::string backend_for(const T&) {
  if constexpr (joblib::portable_task<T>)
    return "loky";
  else
    return "threading";
}

TEST(ConceptsTest, ALibraryPicksABackendFromPortability) {
  EXPECT_EQ(backend_for(captureless_task()), "loky");
  EXPECT_EQ(backend_for(capturing_task()), "threading");
}

}  // namespace
}  // namespace concepts_test
