// joblib::Array<T>: shape, ownership, sharing, alignment, read-only buffers.
#include <joblib/array.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using joblib::Array;

bool aligned64(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

// A buffer that is not writable, as a read-only mapping of `file` gives.
joblib::detail::SharedBuffer read_only_buffer(std::size_t bytes, const std::string& file) {
  auto b = joblib::detail::allocate_buffer(bytes, /*zero=*/true);
  b.writable = false;
  b.mapped = true;
  b.file = std::make_shared<const std::string>(file);
  return b;
}

TEST(ArrayTest, DefaultIsEmpty) {
  Array<double> a;
  EXPECT_EQ(a.size(), 0u);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(a.shape(), std::vector<std::size_t>{0});
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.begin(), a.end());
  EXPECT_FALSE(a.is_mapped());
  EXPECT_TRUE(a.is_writable());
}

TEST(ArrayTest, ShapeConstructorZeroFillsAnOwnedArray) {
  Array<double> a({1000, 3});
  EXPECT_EQ(a.shape(), (std::vector<std::size_t>{1000, 3}));
  EXPECT_EQ(a.ndim(), 2u);
  EXPECT_EQ(a.size(), 3000u);
  EXPECT_EQ(a.nbytes(), 3000u * sizeof(double));
  EXPECT_FALSE(a.is_mapped());
  EXPECT_TRUE(a.is_writable());
  EXPECT_TRUE(a.filename().empty());
  for (double x : a.cspan()) ASSERT_EQ(x, 0.0);
}

TEST(ArrayTest, LargeArraysAreZeroFilledToo) {
  Array<std::int64_t> a({3u << 20});  // 24 MiB: the page-mapping allocation path
  EXPECT_EQ(a.cspan().front(), 0);
  EXPECT_EQ(a.cspan()[a.size() / 2], 0);
  EXPECT_EQ(a.cspan().back(), 0);
  a[a.size() - 1] = 7;
  EXPECT_EQ(a.at(a.size() - 1), 7);
}

TEST(ArrayTest, ZeroDimensionalArrayHoldsOneElement) {
  Array<int> a(std::vector<std::size_t>{});
  EXPECT_EQ(a.ndim(), 0u);
  EXPECT_EQ(a.size(), 1u);
  a[0] = 42;
  EXPECT_EQ(std::as_const(a)[0], 42);
}

TEST(ArrayTest, ZeroExtentMakesAnEmptyArray) {
  Array<float> a({4, 0, 3});
  EXPECT_EQ(a.size(), 0u);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(a.ndim(), 3u);
}

TEST(ArrayTest, FlatIndexIsCOrder) {
  Array<int> a({2, 3}, std::vector<int>{0, 1, 2, 10, 11, 12});
  // element (i, j) is at i * 3 + j
  EXPECT_EQ(a[1 * 3 + 2], 12);
  EXPECT_EQ(a[0 * 3 + 1], 1);
  a[1 * 3 + 0] = 99;
  EXPECT_EQ(a.cspan()[3], 99);
}

TEST(ArrayTest, ValuesConstructorCopiesAndChecksTheCount) {
  std::vector<double> v{1.5, 2.5, 3.5};
  Array<double> a({3}, v);
  v[0] = 0;
  EXPECT_EQ(a[0], 1.5);
  EXPECT_THROW((Array<double>({4}, v)), std::invalid_argument);
}

TEST(ArrayTest, CopiesShareTheBuffer) {
  Array<int> a({4});
  Array<int> b = a;
  b[2] = 5;
  EXPECT_EQ(a[2], 5);
  EXPECT_EQ(a.cdata(), b.cdata());
  Array<int> c;
  c = a;
  c[3] = 6;
  EXPECT_EQ(a[3], 6);
}

TEST(ArrayTest, CopyOwnsItsData) {
  Array<int> a({4}, std::vector<int>{1, 2, 3, 4});
  Array<int> b = a.copy();
  b[0] = 100;
  EXPECT_EQ(a[0], 1);
  EXPECT_NE(a.cdata(), b.cdata());
  EXPECT_TRUE(b.is_writable());
  EXPECT_EQ(b.shape(), a.shape());
}

TEST(ArrayTest, MoveLeavesTheSourceEmpty) {
  Array<int> a({8});
  const int* p = a.cdata();
  Array<int> b = std::move(a);
  EXPECT_EQ(b.cdata(), p);
  EXPECT_EQ(b.size(), 8u);
  EXPECT_EQ(a.size(), 0u);  // NOLINT: checking the moved-from state on purpose
  EXPECT_EQ(a.shape(), std::vector<std::size_t>{0});
  Array<int> c({2});
  c = std::move(b);
  EXPECT_EQ(c.size(), 8u);
  EXPECT_EQ(b.size(), 0u);  // NOLINT
}

TEST(ArrayTest, AtChecksBounds) {
  Array<int> a({3});
  EXPECT_NO_THROW(a.at(2));
  EXPECT_THROW(a.at(3), std::out_of_range);
  EXPECT_THROW(std::as_const(a).at(7), std::out_of_range);
}

TEST(ArrayTest, ReshapeViewsTheSameBuffer) {
  Array<int> a({6}, std::vector<int>{0, 1, 2, 3, 4, 5});
  Array<int> b = a.reshape({2, 3});
  EXPECT_EQ(b.shape(), (std::vector<std::size_t>{2, 3}));
  EXPECT_EQ(b.cdata(), a.cdata());
  EXPECT_THROW(a.reshape({4, 2}), std::invalid_argument);
}

TEST(ArrayTest, DataIs64ByteAligned) {
  for (std::size_t n : {1u, 3u, 17u, 1000u, 300000u}) {
    Array<std::uint8_t> a({n});
    EXPECT_TRUE(aligned64(a.cdata())) << n;
  }
}

TEST(ArrayTest, OverflowingShapeIsRefused) {
  const std::size_t big = std::numeric_limits<std::size_t>::max() / 2;
  EXPECT_THROW((Array<double>({big, 4})), std::invalid_argument);
  EXPECT_THROW((Array<double>({big})), std::invalid_argument);  // the byte count overflows
}

TEST(ArrayTest, EqualityComparesShapeAndElements) {
  Array<int> a({2, 2}, std::vector<int>{1, 2, 3, 4});
  EXPECT_EQ(a, a.copy());
  EXPECT_NE(a, a.reshape({4}));
  Array<int> b = a.copy();
  b[3] = 0;
  EXPECT_NE(a, b);
}

TEST(ArrayTest, ReadOnlyBufferReadsThroughEveryAccessor) {
  Array<double> a({4}, read_only_buffer(4 * sizeof(double), "/data/big.joblib"));
  EXPECT_FALSE(a.is_writable());
  EXPECT_TRUE(a.is_mapped());
  EXPECT_EQ(a.filename(), "/data/big.joblib");
  // Code that only reads behaves as it does on an owned array: no throw.
  EXPECT_EQ(a[0], 0.0);
  EXPECT_EQ(a.at(1), 0.0);
  EXPECT_EQ(a.data(), std::as_const(a).data());
  EXPECT_EQ(a.span().size(), 4u);
  double sum = 0;
  for (double& x : a) sum += x;
  EXPECT_EQ(sum, 0.0);
  EXPECT_THROW(a.at(4), std::out_of_range);
  Array<double> b = a;
  EXPECT_FALSE(b.is_writable());
  Array<double> c = a.copy();
  EXPECT_TRUE(c.is_writable());
  c[1] = 2.0;
  EXPECT_EQ(c[1], 2.0);
}

TEST(ArrayTest, AdoptingABufferChecksItsSize) {
  auto b = joblib::detail::allocate_buffer(24, true);
  EXPECT_THROW((Array<double>({4}, b)), std::invalid_argument);
  EXPECT_NO_THROW((Array<double>({3}, b)));
}

}  // namespace

TEST(ArrayTest, AsArrayAdoptsAVectorWithoutACopy) {
  std::vector<double> v(1000, 2.5);
  const double* where = v.data();
  Array<double> a = joblib::as_array(std::move(v));
  EXPECT_EQ(a.shape(), (std::vector<std::size_t>{1000}));
  EXPECT_EQ(a.cdata(), where);  // the vector's own memory
  EXPECT_TRUE(a.is_writable());
  EXPECT_FALSE(a.is_mapped());
  Array<double> b = a;  // copies share it
  b[0] = 7;
  EXPECT_EQ(a[0], 7);
  Array<double> m = joblib::as_array(std::vector<double>(6, 1.0), {2, 3});
  EXPECT_EQ(m.shape(), (std::vector<std::size_t>{2, 3}));
  EXPECT_THROW(joblib::as_array(std::vector<double>(5), {2, 3}), std::invalid_argument);
  EXPECT_TRUE(joblib::as_array(std::vector<int>{}).empty());
}
