// The codec: round trips of every supported type, out-of-band buffers,
// refusal of bad input, compile-time and run-time refusal of types that
// cannot travel, and the hasher.
#include <joblib/codec.hpp>

#include <cereal/types/polymorphic.hpp>
#include <gtest/gtest.h>

#include <atomic>
#include <bitset>
#include <chrono>
#include <complex>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <forward_list>
#include <functional>
#include <list>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <variant>
#include <vector>

// ---- allocation counter: proves that hashing copies no buffer ------------------
namespace {
std::atomic<std::size_t> g_allocated{0};
}  // namespace
void* operator new(std::size_t n) {
  g_allocated.fetch_add(n, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  g_allocated.fetch_add(n, std::memory_order_relaxed);
  const std::size_t al = static_cast<std::size_t>(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) { return ::operator new(n, a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace codec_test {

struct Point {
  double x = 0, y = 0;
  std::string label;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x, y, label);
  }
  bool operator==(const Point&) const = default;
};

// save/load split, with a transformation the round trip must undo.
struct Halved {
  int value = 0;
  template <class Archive>
  void save(Archive& ar) const {
    ar(value * 2);
  }
  template <class Archive>
  void load(Archive& ar) {
    int twice;
    ar(twice);
    value = twice / 2;
  }
  bool operator==(const Halved&) const = default;
};

enum class Color : std::uint8_t { red, green, blue };

struct Pod {
  float a;
  std::int32_t b;
  bool operator==(const Pod&) const = default;
};

// Not an aggregate (a constructor), no serialize: cannot be encoded.
struct NoSerialize {
  explicit NoSerialize(int v = 0) : x(v) {}
  int x;
};

// Aggregates: encoded field by field with no code (Boost.PFR).
struct Sample {
  std::string name;
  std::vector<double> values;
  int count = 0;
  friend bool operator==(const Sample&, const Sample&) = default;
};
struct Nest {
  Sample sample;
  std::optional<int> maybe;
  std::array<float, 3> xyz{};
  std::map<std::string, Sample> by_name;
  joblib::Array<int> grid;
};
struct MoveOnlyAggregate {
  std::unique_ptr<int> p;
  int x = 0;
};
struct WithPointer {
  int x = 0;
  int* p = nullptr;
};
struct AggBase {
  int a = 0;
};
struct AggDerived : AggBase {
  int b = 0;
};
struct WithCArray {
  int a[3];
};
struct WithConst {
  const int c = 0;
};
// An aggregate that has its own serialize keeps it (writes only x).
struct OwnSerialize {
  int x = 0;
  int not_saved = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x);
  }
};
// No default constructor: decoded through cereal's load_and_construct.
struct NoDefault {
  explicit NoDefault(std::string s) : text(std::move(s)) {}
  std::string text;
  template <class Archive>
  void save(Archive& ar) const {
    ar(text);
  }
  template <class Archive>
  static void load_and_construct(Archive& ar, cereal::construct<NoDefault>& construct) {
    std::string s;
    ar(s);
    construct(std::move(s));
  }
};
struct NoDefaultNoConstruct {
  explicit NoDefaultNoConstruct(int v) : x(v) {}
  int x;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x);
  }
};

struct WithArrays {
  std::string name;
  joblib::Array<double> values;
  std::vector<joblib::Array<std::uint8_t>> masks;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, values, masks);
  }
};

struct Base {
  virtual ~Base() = default;
  int b = 1;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(b);
  }
};
struct Unregistered : Base {
  template <class Archive>
  void serialize(Archive& ar) {
    ar(cereal::base_class<Base>(this));
  }
};

struct Throws {
  template <class Archive>
  void serialize(Archive&) {
    throw std::runtime_error("no");
  }
};

}  // namespace codec_test

template <>
struct joblib::is_bitwise_serializable<codec_test::Pod> : std::true_type {};

namespace codec_test {
namespace {

namespace d = joblib::detail;
using joblib::Array;
using joblib::SerializationError;

template <class T>
T round_trip(const T& v) {
  d::MemoryOutput out;
  d::encode(v, out);
  return d::decode<T>(out.bytes());
}

std::vector<std::byte> encoded(const auto& v, joblib::BufferSink* sink = nullptr) {
  d::MemoryOutput out;
  d::encode(v, out, sink);
  return {out.bytes().begin(), out.bytes().end()};
}

// Owned copies of what a SpanSink took, as a receiving process would hold them.
std::vector<d::SharedBuffer> copies(const d::SpanSink& sink) {
  std::vector<d::SharedBuffer> v;
  for (auto s : sink.buffers()) {
    auto b = d::allocate_buffer(s.size(), false);
    std::memcpy(b.data.get(), s.data(), s.size());
    v.push_back(b);
  }
  return v;
}

template <class T>
T round_trip_out_of_band(const T& v, std::size_t* n_buffers = nullptr) {
  d::MemoryOutput out;
  d::SpanSink sink(0);
  d::encode(v, out, &sink);
  if (n_buffers) *n_buffers = sink.buffers().size();
  d::SharedBufferSource source(copies(sink));
  return d::decode<T>(out.bytes(), &source);
}

// ---- what can be encoded: decided at compile time -----------------------------

static_assert(d::is_encodable_v<int>);
static_assert(d::is_encodable_v<std::string>);
static_assert(d::is_encodable_v<std::map<std::string, std::vector<Point>>>);
static_assert(d::is_encodable_v<std::variant<std::monostate, int, std::string>>);
static_assert(d::is_encodable_v<std::tuple<int, Array<float>, std::optional<Halved>>>);
static_assert(d::is_encodable_v<std::vector<Pod>>);
static_assert(d::is_encodable_v<std::unique_ptr<Point>>);
static_assert(!d::is_encodable_v<NoSerialize>);
static_assert(!d::is_encodable_v<std::vector<NoSerialize>>);
static_assert(!d::is_encodable_v<std::map<int, NoSerialize>>);
static_assert(!d::is_encodable_v<std::optional<std::tuple<int, NoSerialize>>>);
static_assert(!d::is_encodable_v<int*>);
// Aggregates need no code; what they hold decides.
static_assert(joblib::encodable<Sample>);
static_assert(joblib::encodable<Nest>);
static_assert(joblib::encodable<std::vector<Sample>>);
static_assert(joblib::encodable<MoveOnlyAggregate>);
static_assert(joblib::encodable<OwnSerialize>);
static_assert(!joblib::encodable<WithPointer>);
static_assert(!joblib::encodable<AggDerived>);  // a base class: PFR cannot see its fields
static_assert(!joblib::encodable<WithCArray>);  // PFR would miscount a C array
static_assert(!joblib::encodable<WithConst>);   // cannot be read back
static_assert(!joblib::encodable<NoSerialize>);
// No default constructor: fine with load_and_construct, refused without.
static_assert(joblib::encodable<NoDefault>);
static_assert(!joblib::encodable<NoDefaultNoConstruct>);
static_assert(d::is_encodable_v<NoDefaultNoConstruct>);  // it encodes; it cannot be built back
static_assert(!d::is_encodable_v<std::function<int()>>);
static_assert(d::is_bitwise_v<double> && d::is_bitwise_v<Color> && d::is_bitwise_v<std::array<float, 3>>);
static_assert(!d::is_bitwise_v<bool> && !d::is_bitwise_v<Point>);

// ---- round trips ---------------------------------------------------------------------

TEST(CodecTest, RoundTripsArithmeticTypes) {
  EXPECT_EQ(round_trip(std::int8_t{-5}), -5);
  EXPECT_EQ(round_trip(std::uint16_t{65535}), 65535);
  EXPECT_EQ(round_trip(std::int64_t{-1234567890123}), -1234567890123);
  EXPECT_EQ(round_trip(std::uint64_t{18446744073709551615u}), 18446744073709551615u);
  EXPECT_EQ(round_trip(3.25f), 3.25f);
  EXPECT_EQ(round_trip(-0.1), -0.1);
  EXPECT_EQ(round_trip(true), true);
  EXPECT_EQ(round_trip(false), false);
  EXPECT_EQ(round_trip('x'), 'x');
  EXPECT_EQ(round_trip(Color::blue), Color::blue);
}

TEST(CodecTest, RoundTripsStrings) {
  EXPECT_EQ(round_trip(std::string()), "");
  EXPECT_EQ(round_trip(std::string("short")), "short");
  const std::string with_nul("a\0b\0c", 5);
  EXPECT_EQ(round_trip(with_nul), with_nul);
  const std::string long_one(100000, 'q');
  EXPECT_EQ(round_trip(long_one), long_one);
}

TEST(CodecTest, RoundTripsStandardContainers) {
  const std::vector<int> vi{1, -2, 3};
  EXPECT_EQ(round_trip(vi), vi);
  std::vector<double> big(300000);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = 0.5 * static_cast<double>(i);
  EXPECT_EQ(round_trip(big), big);
  const std::vector<bool> vb{true, false, true, true};
  EXPECT_EQ(round_trip(vb), vb);
  const std::vector<std::string> vs{"a", "", "ccc"};
  EXPECT_EQ(round_trip(vs), vs);
  const std::deque<int> dq{4, 5};
  EXPECT_EQ(round_trip(dq), dq);
  const std::list<std::string> li{"x", "y"};
  EXPECT_EQ(round_trip(li), li);
  const std::forward_list<int> fl{7, 8, 9};
  EXPECT_EQ(round_trip(fl), fl);
  const std::array<std::int16_t, 4> ar{1, 2, 3, 4};
  EXPECT_EQ(round_trip(ar), ar);
  const std::map<std::string, int> m{{"one", 1}, {"two", 2}};
  EXPECT_EQ(round_trip(m), m);
  const std::multimap<int, int> mm{{1, 1}, {1, 2}, {0, 5}, {1, 3}};
  EXPECT_EQ(round_trip(mm), mm);  // equal keys keep their order
  const std::multiset<std::string> ms{"b", "a", "b"};
  EXPECT_EQ(round_trip(ms), ms);
  const std::set<double> s{1.5, -3.0};
  EXPECT_EQ(round_trip(s), s);
  const std::unordered_map<std::string, std::vector<int>> um{{"a", {1}}, {"b", {2, 3}}};
  EXPECT_EQ(round_trip(um), um);
  const std::unordered_set<int> us{5, 6, 7};
  EXPECT_EQ(round_trip(us), us);
  const std::map<int, std::map<std::string, std::vector<std::string>>> nested{{1, {{"k", {"v", "w"}}}}};
  EXPECT_EQ(round_trip(nested), nested);
  EXPECT_EQ(round_trip(std::vector<int>{}), std::vector<int>{});
}

TEST(CodecTest, RoundTripsVocabularyTypes) {
  EXPECT_EQ(round_trip(std::optional<int>{}), std::nullopt);
  EXPECT_EQ(round_trip(std::optional<std::string>{"here"}), "here");
  using V = std::variant<std::monostate, int, std::string, std::vector<double>>;
  EXPECT_EQ(round_trip(V{}), V{});
  EXPECT_EQ(round_trip(V{42}), V{42});
  EXPECT_EQ(round_trip(V{std::string("s")}), V{std::string("s")});
  EXPECT_EQ(round_trip(V{std::vector<double>{1, 2}}), V{std::vector<double>({1, 2})});
  const auto t = std::make_tuple(1, std::string("two"), 3.0, std::vector<int>{4});
  EXPECT_EQ(round_trip(t), t);
  const std::pair<std::string, std::int64_t> p{"k", 9};
  EXPECT_EQ(round_trip(p), p);
  EXPECT_EQ(round_trip(std::complex<double>(1, -2)), std::complex<double>(1, -2));
  EXPECT_EQ(round_trip(std::chrono::milliseconds(1500)), std::chrono::milliseconds(1500));
  EXPECT_EQ(round_trip(std::bitset<10>("1010010001")), std::bitset<10>("1010010001"));
  EXPECT_EQ(round_trip(std::tuple<>{}), std::tuple<>{});
}

TEST(CodecTest, RoundTripsSmartPointersKeepingSharing) {
  auto up = round_trip(std::make_unique<Point>(Point{1, 2, "p"}));
  ASSERT_TRUE(up);
  EXPECT_EQ(*up, (Point{1, 2, "p"}));
  EXPECT_EQ(round_trip(std::unique_ptr<int>{}), nullptr);
  auto shared = std::make_shared<std::string>("same");
  auto back = round_trip(std::make_pair(shared, shared));
  EXPECT_EQ(*back.first, "same");
  EXPECT_EQ(back.first.get(), back.second.get());
}

TEST(CodecTest, RoundTripsUserTypes) {
  const Point p{1.5, -2.5, "label"};
  EXPECT_EQ(round_trip(p), p);
  const std::vector<Point> ps{p, {0, 0, ""}};
  EXPECT_EQ(round_trip(ps), ps);
  EXPECT_EQ(round_trip(Halved{21}).value, 21);
  EXPECT_EQ(round_trip(Pod{1.5f, -7}), (Pod{1.5f, -7}));
  std::vector<Pod> pods(5000, Pod{2.5f, 3});
  pods[17] = Pod{-1.f, 99};
  EXPECT_EQ(round_trip(pods), pods);
  EXPECT_EQ(round_trip_out_of_band(pods), pods);
}

TEST(CodecTest, RoundTripsArrays) {
  Array<double> a({3, 4});
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<double>(i) / 3;
  EXPECT_EQ(round_trip(a), a);
  EXPECT_EQ(round_trip_out_of_band(a), a);
  Array<std::uint8_t> odd({7}, std::vector<std::uint8_t>{1, 2, 3, 4, 5, 6, 7});
  EXPECT_EQ(round_trip(odd), odd);
  EXPECT_EQ(round_trip(Array<int>{}), Array<int>{});
  Array<int> zero_d(std::vector<std::size_t>{});
  zero_d[0] = 5;
  EXPECT_EQ(round_trip(zero_d), zero_d);

  WithArrays w{"w", a, {odd, odd.copy()}};
  std::size_t n = 0;
  WithArrays back = round_trip_out_of_band(w, &n);
  EXPECT_EQ(n, 3u);
  EXPECT_EQ(back.name, "w");
  EXPECT_EQ(back.values, a);
  ASSERT_EQ(back.masks.size(), 2u);
  EXPECT_EQ(back.masks[1], odd);
}

TEST(CodecTest, DecodedArrayIsWritableAndOwned) {
  Array<float> a({10});
  auto back = round_trip(a);
  EXPECT_TRUE(back.is_writable());
  EXPECT_FALSE(back.is_mapped());
  back[0] = 1.f;
  EXPECT_EQ(a[0], 0.f);
}

TEST(CodecTest, EmptyClassesEncodeToNothing) {
  auto lambda = [](int x) { return x + 1; };
  using L = decltype(lambda);
  static_assert(d::is_encodable_v<L>);
  EXPECT_TRUE(encoded(lambda).empty());
  L back = round_trip(lambda);
  EXPECT_EQ(back(1), 2);
}

// ---- out-of-band buffers ---------------------------------------------------------------

TEST(CodecTest, LargeBuffersGoToTheSink) {
  std::vector<double> big(100000, 1.0);
  std::vector<double> small(10, 2.0);
  Array<std::uint8_t> tiny({3});
  d::SpanSink sink;  // default: every array, vectors from 64 KiB
  const auto value = std::make_tuple(big, small, tiny);
  auto bytes = encoded(value, &sink);
  ASSERT_EQ(sink.buffers().size(), 2u);
  // The sink gets views of the value's own memory: no copy.
  EXPECT_EQ(sink.buffers()[0].data(), reinterpret_cast<const std::byte*>(std::get<0>(value).data()));
  EXPECT_EQ(sink.buffers()[0].size(), big.size() * sizeof(double));
  EXPECT_EQ(sink.buffers()[1].data(), reinterpret_cast<const std::byte*>(tiny.cdata()));
  EXPECT_EQ(sink.buffers()[1].size(), 3u);
  EXPECT_LT(bytes.size(), 200u);  // the structure holds the small vector and references only
}

TEST(CodecTest, ASinkMayKeepBuffersInline) {
  struct Refusing : joblib::BufferSink {
    int offered = 0;
    std::optional<std::uint64_t> put(std::span<const std::byte>, joblib::BufferKind) override {
      ++offered;
      return std::nullopt;
    }
  } sink;
  std::vector<double> big(100000, 3.0);
  auto bytes = encoded(big, &sink);
  EXPECT_EQ(sink.offered, 1);
  EXPECT_GT(bytes.size(), big.size() * sizeof(double));
  EXPECT_EQ(d::decode<std::vector<double>>(bytes), big);  // no source needed
}

TEST(CodecTest, DecodedArrayAdoptsTheSourceBufferWithoutCopy) {
  Array<double> a({1000});
  d::MemoryOutput out;
  d::SpanSink sink;
  d::encode(a, out, &sink);
  auto bufs = copies(sink);
  const std::byte* where = bufs[0].data.get();
  d::SharedBufferSource source(bufs);
  auto back = d::decode<Array<double>>(out.bytes(), &source);
  EXPECT_EQ(reinterpret_cast<const std::byte*>(back.cdata()), where);
}

TEST(CodecTest, OutOfBandBufferWithoutSourceIsAnError) {
  Array<double> a({10});
  d::SpanSink sink;
  auto bytes = encoded(a, &sink);
  EXPECT_THROW(d::decode<Array<double>>(bytes), SerializationError);
  d::SharedBufferSource empty({});
  EXPECT_THROW(d::decode<Array<double>>(bytes, &empty), SerializationError);
}

TEST(CodecTest, SourceBufferOfTheWrongSizeIsAnError) {
  std::vector<double> v(20000, 1.0);
  d::SpanSink sink(0);
  auto bytes = encoded(v, &sink);
  std::vector<d::SharedBuffer> wrong{d::allocate_buffer(8, true)};
  d::SharedBufferSource source(wrong);
  EXPECT_THROW(d::decode<std::vector<double>>(bytes, &source), SerializationError);
}

// ---- bad input ---------------------------------------------------------------------------

TEST(CodecTest, EveryTruncationIsRefused) {
  const std::map<std::string, std::vector<std::int32_t>> v{{"alpha", {1, 2, 3}}, {"beta", {}}};
  const auto bytes = encoded(v);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_THROW((d::decode<std::map<std::string, std::vector<std::int32_t>>>(std::span(bytes).first(n))),
                 SerializationError)
        << n;
  }
}

TEST(CodecTest, TrailingBytesAreRefused) {
  auto bytes = encoded(std::int32_t{5});
  bytes.push_back(std::byte{0});
  try {
    d::decode<std::int32_t>(bytes);
    FAIL();
  } catch (const SerializationError& e) {
    EXPECT_NE(std::string(e.what()).find("unexpected bytes"), std::string::npos) << e.what();
  }
}

TEST(CodecTest, HugeCountIsRefusedBeforeAnyAllocation) {
  std::vector<std::byte> bytes(8);
  const std::uint64_t count = std::uint64_t{1} << 60;
  std::memcpy(bytes.data(), &count, 8);
  for (int i = 0; i < 4; ++i) bytes.push_back(std::byte{0});
  try {
    d::decode<std::vector<std::string>>(bytes);
    FAIL();
  } catch (const SerializationError& e) {
    EXPECT_NE(std::string(e.what()).find("claims"), std::string::npos) << e.what();
  }
  EXPECT_THROW(d::decode<std::string>(bytes), SerializationError);
  EXPECT_THROW((d::decode<std::map<int, int>>(bytes)), SerializationError);
}

TEST(CodecTest, LyingCountOfLargeElementsAllocatesOnlyWhatTheDataHolds) {
  // 60000 elements of 800 KB each pass the count check (they could be
  // empty), but the data holds none: at most one element may be allocated.
  using Big = std::array<double, 100000>;
  std::vector<std::byte> bytes(8 + 100);
  const std::uint64_t count = 60000;
  std::memcpy(bytes.data(), &count, 8);
  const std::size_t before = g_allocated.load();
  EXPECT_THROW(d::decode<std::deque<Big>>(bytes), SerializationError);
  EXPECT_THROW(d::decode<std::list<Big>>(bytes), SerializationError);
  EXPECT_THROW(d::decode<std::forward_list<Big>>(bytes), SerializationError);
  EXPECT_THROW(d::decode<std::vector<std::optional<Big>>>(bytes), SerializationError);
  EXPECT_LT(g_allocated.load() - before, std::size_t{64} << 20);
}

TEST(CodecTest, LyingLengthsOfSetsAndStringsAllocateOnlyWhatTheDataHolds) {
  // 1 MiB of zeros after a count that passes the count check: a set must
  // not reserve buckets for every claimed element (8 MiB), nor a string of
  // 4-byte characters take 4 bytes per claimed character, before the data
  // is there.
  const std::size_t data = std::size_t{1} << 20;
  std::vector<std::byte> bytes(8 + data);
  const std::uint64_t count = data + 1000;
  std::memcpy(bytes.data(), &count, 8);
  std::size_t before = g_allocated.load();
  EXPECT_THROW(d::decode<std::unordered_set<std::int64_t>>(bytes), SerializationError);
  EXPECT_LT(g_allocated.load() - before, std::size_t{4} << 20);
  EXPECT_THROW(d::decode<std::unordered_multiset<std::int64_t>>(bytes), SerializationError);
  before = g_allocated.load();
  EXPECT_THROW(d::decode<std::u32string>(bytes), SerializationError);
  EXPECT_THROW(d::decode<std::string>(bytes), SerializationError);
  EXPECT_LT(g_allocated.load() - before, data / 2);
  // The same lengths with their data decode.
  const std::u32string s(1000, U'x');
  EXPECT_EQ(d::decode<std::u32string>(encoded(s)), s);
  const std::unordered_set<std::int64_t> set{1, 2, 3};
  EXPECT_EQ(d::decode<std::unordered_set<std::int64_t>>(encoded(set)), set);
}

TEST(CodecTest, HugeArrayShapeIsRefused) {
  d::MemoryOutput out;
  const std::uint32_t item = 8;
  out.write(&item, 4);
  const std::uint64_t ndim = 2, big = std::uint64_t{1} << 40;
  out.write(&ndim, 8);
  out.write(&big, 8);
  out.write(&big, 8);
  EXPECT_THROW(d::decode<Array<double>>(out.bytes()), SerializationError);
}

TEST(CodecTest, ArrayOfAnotherElementSizeIsRefused) {
  auto bytes = encoded(Array<float>({4}));
  EXPECT_THROW(d::decode<Array<double>>(bytes), SerializationError);
}

TEST(CodecTest, BadBoolByteIsRefused) {
  std::vector<std::byte> bytes{std::byte{7}};
  EXPECT_THROW(d::decode<bool>(bytes), SerializationError);
}

TEST(CodecTest, BadVariantIndexIsRefused) {
  auto bytes = encoded(std::variant<int, float>{1});
  bytes[0] = std::byte{9};  // the index
  EXPECT_THROW((d::decode<std::variant<int, float>>(bytes)), SerializationError);
}

// ---- types that cannot travel ---------------------------------------------------------------

TEST(CodecTest, EncodeOrThrowNamesATypeThatCannotBeEncoded) {
  d::MemoryOutput out;
  try {
    d::encode_or_throw(NoSerialize{1}, out);
    FAIL();
  } catch (const SerializationError& e) {
    EXPECT_NE(std::string(e.what()).find("codec_test::NoSerialize"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("make it an aggregate"), std::string::npos) << e.what();
  }
}

TEST(CodecTest, EncodeOrThrowNamesTheFieldOfAnAggregateThatCannotBeEncoded) {
  d::MemoryOutput out;
  try {
    d::encode_or_throw(WithPointer{}, out);
    FAIL();
  } catch (const SerializationError& e) {
    EXPECT_STREQ(e.what(),
                 "cannot encode a value of type codec_test::WithPointer: its field 2 of type int* cannot be encoded "
                 "(raw pointers never travel: store the value, a std::unique_ptr or an index)");
  }
  try {
    d::encode_or_throw(AggDerived{}, out);
    FAIL();
  } catch (const SerializationError& e) {
    EXPECT_NE(std::string(e.what()).find("an aggregate with a base class or a C array field"), std::string::npos)
        << e.what();
  }
}

// ---- aggregates and types without a default constructor ---------------------------

TEST(CodecTest, AggregatesRoundTripFieldByFieldWithNoCode) {
  const Sample s{"alpha", {1.5, 2.5}, 7};
  EXPECT_EQ(round_trip(s), s);
  Nest n{s, 4, {1, 2, 3}, {{"b", Sample{"beta", {}, 2}}}, Array<int>({2, 2})};
  n.grid[3] = 9;
  const Nest back = round_trip_out_of_band(n);
  EXPECT_EQ(back.sample, s);
  EXPECT_EQ(back.maybe, 4);
  EXPECT_EQ(back.xyz, (std::array<float, 3>{1, 2, 3}));
  EXPECT_EQ(back.by_name.at("b").name, "beta");
  EXPECT_EQ(back.grid[3], 9);
  MoveOnlyAggregate m{std::make_unique<int>(5), 6};
  const MoveOnlyAggregate mb = round_trip(m);
  ASSERT_TRUE(mb.p);
  EXPECT_EQ(*mb.p, 5);
  EXPECT_EQ(mb.x, 6);
}

TEST(CodecTest, AnAggregateWithItsOwnSerializeKeepsIt) {
  // Field by field it would take 8 bytes; its serialize writes 4.
  EXPECT_EQ(encoded(OwnSerialize{1, 2}).size(), sizeof(int));
  EXPECT_EQ(round_trip(OwnSerialize{1, 2}).not_saved, 0);
}

TEST(CodecTest, AggregatesHashByTheirFields) {
  EXPECT_EQ(d::hash_value(Sample{"a", {1}, 1}), d::hash_value(Sample{"a", {1}, 1}));
  EXPECT_NE(d::hash_value(Sample{"a", {1}, 1}), d::hash_value(Sample{"a", {1}, 2}));
}

TEST(CodecTest, ATypeWithoutDefaultConstructorIsBuiltByItsLoadAndConstruct) {
  EXPECT_EQ(round_trip(NoDefault("hello")).text, "hello");
  const std::vector<NoDefault> v{NoDefault("a"), NoDefault("b")};
  const auto back = round_trip(v);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[1].text, "b");
}

TEST(CodecTest, UnregisteredPolymorphicTypeIsRefusedNamingTheType) {
  std::shared_ptr<Base> p = std::make_shared<Unregistered>();
  d::MemoryOutput out;
  try {
    d::encode(p, out);
    FAIL();
  } catch (const SerializationError& e) {
    EXPECT_NE(std::string(e.what()).find("std::shared_ptr<codec_test::Base>"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Unregistered"), std::string::npos) << e.what();
  }
}

TEST(CodecTest, AUserSerializeThatThrowsPropagates) {
  d::MemoryOutput out;
  EXPECT_THROW(d::encode(Throws{}, out), std::runtime_error);
}

// ---- hashing -------------------------------------------------------------------------------

bool is_hex32(const std::string& s) {
  return s.size() == 32 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

TEST(HashTest, DigestIs32LowercaseHexCharacters) {
  EXPECT_TRUE(is_hex32(d::hash_value(42)));
  EXPECT_TRUE(is_hex32(d::hash_bytes({})));
}

TEST(HashTest, EqualValuesHaveEqualDigestsAndOthersDiffer) {
  const std::map<std::string, std::vector<double>> a{{"x", {1, 2}}, {"y", {}}};
  auto b = a;
  EXPECT_EQ(d::hash_value(a), d::hash_value(b));
  b["y"].push_back(0.0);
  EXPECT_NE(d::hash_value(a), d::hash_value(b));
  EXPECT_NE(d::hash_value(std::string("ab")), d::hash_value(std::string("ba")));
  EXPECT_NE(d::hash_value(std::make_pair(std::string("a"), std::string("bc"))),
            d::hash_value(std::make_pair(std::string("ab"), std::string("c"))));
}

TEST(HashTest, TheTypeIsPartOfTheDigest) {
  EXPECT_NE(d::hash_value(std::int32_t{1}), d::hash_value(std::uint32_t{1}));
  EXPECT_NE(d::hash_value(std::vector<float>{1.f}), d::hash_value(Array<float>({1}, std::vector<float>{1.f})));
}

TEST(HashTest, UnorderedContainersHashTheSameWhateverTheirOrder) {
  std::unordered_map<std::string, int> a, b;
  std::unordered_set<int> s1, s2;
  for (int i = 0; i < 1000; ++i) {
    a[std::to_string(i)] = i;
    s1.insert(i);
  }
  b.reserve(5000);  // another bucket count: another iteration order
  s2.reserve(5000);
  for (int i = 999; i >= 0; --i) {
    b[std::to_string(i)] = i;
    s2.insert(i);
  }
  ASSERT_NE(a.begin()->first, b.begin()->first);  // the orders do differ
  EXPECT_EQ(d::hash_value(a), d::hash_value(b));
  EXPECT_EQ(d::hash_value(s1), d::hash_value(s2));
  b["0"] = -1;
  EXPECT_NE(d::hash_value(a), d::hash_value(b));
}

TEST(HashTest, ArraysHashByShapeAndContent) {
  Array<double> a({4, 2});
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<double>(i);
  EXPECT_EQ(d::hash_value(a), d::hash_value(a.copy()));
  EXPECT_NE(d::hash_value(a), d::hash_value(a.reshape({8})));
  Array<double> b = a.copy();
  b[7] = -1;
  EXPECT_NE(d::hash_value(a), d::hash_value(b));
}

TEST(HashTest, LargeBuffersAreHashedInPlace) {
  std::vector<double> v(8u << 20, 1.0);  // 64 MiB
  Array<std::uint8_t> a({32u << 20});     // 32 MiB
  const std::size_t before = g_allocated.load();
  d::Hasher hasher;
  hasher.update(v).update(a);
  const std::string h = hasher.hexdigest();
  const std::string h2 = d::hash_value(v);
  const std::size_t allocated = g_allocated.load() - before;
  EXPECT_LT(allocated, std::size_t{1} << 20) << "hashing copied a buffer";
  EXPECT_NE(h, h2);
}

TEST(HashTest, ReadOnlyArraysCanBeHashed) {
  auto b = d::allocate_buffer(4096, true);
  b.writable = false;
  Array<std::uint32_t> ro({1024}, b);
  EXPECT_EQ(d::hash_value(ro), d::hash_value(Array<std::uint32_t>({1024})));
}

TEST(HashTest, HasherAccumulatesSeveralValues) {
  d::Hasher h1, h2;
  h1.update(1).update(std::string("two"));
  h2.update(1).update(std::string("two"));
  EXPECT_EQ(h1.hexdigest(), h2.hexdigest());
  h2.update(3);
  EXPECT_NE(h1.hexdigest(), h2.hexdigest());
  h2.reset();
  d::Hasher empty;
  EXPECT_EQ(h2.hexdigest(), empty.hexdigest());
}

}  // namespace
}  // namespace codec_test

// A vector of non-bitwise elements is reserved for its count as far as the
// bytes left can hold that many elements: one allocation for an honest
// count, little for a lying one.
TEST(CodecReserveTest, AnHonestCountIsReservedAtOnceALyingOneIsBoundedByTheData) {
  using Item = std::pair<std::string, std::int64_t>;  // at least 8 + 8 bytes each
  using joblib::detail::reserve_for;
  EXPECT_EQ(reserve_for<Item>(1'000'000, 27'000'000), 1'000'000u);
  EXPECT_EQ(reserve_for<Item>(1'000'000'000, 16'000), 1'000u);  // 16,000 bytes hold at most 1,000 items
  EXPECT_EQ(reserve_for<std::string>(10, 0), 0u);
  struct Opaque {
    std::string a, b;
  };
  // One byte each at least: the count is bounded by the bytes left, and the
  // reservation by about twice the data's size.
  EXPECT_LE(reserve_for<Opaque>(1'000'000'000, 10'000'000) * sizeof(Opaque), 2 * 10'000'000 + sizeof(Opaque));

  // Round trip of such a vector (decoded into the reserved vector).
  std::vector<Item> v;
  for (int i = 0; i < 10'000; ++i) v.emplace_back("item-" + std::to_string(i), i * 7 - 3);
  EXPECT_EQ(codec_test::round_trip(v), v);
}
