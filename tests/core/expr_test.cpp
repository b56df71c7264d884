// pre_dispatch expressions and byte sizes, with joblib's messages.
#include "expr.hpp"

#include <gtest/gtest.h>

namespace {

using joblib::detail::eval_pre_dispatch;
using joblib::detail::parse_bytes;

std::string message_of(const std::string& expr, int n_jobs) {
  try {
    eval_pre_dispatch(expr, n_jobs);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(PreDispatchTest, EvaluatesJoblibExpressions) {
  EXPECT_EQ(eval_pre_dispatch("2 * n_jobs", 2), 4);
  EXPECT_EQ(eval_pre_dispatch("1.5*n_jobs", 2), 3);
  EXPECT_EQ(eval_pre_dispatch("n_jobs", 3), 3);
  EXPECT_EQ(eval_pre_dispatch("10", 3), 10);
  EXPECT_EQ(eval_pre_dispatch("(n_jobs + 1) // 2", 4), 2);
  EXPECT_EQ(eval_pre_dispatch("2**3 - n_jobs % 3", 4), 7);
  EXPECT_EQ(eval_pre_dispatch("-2**2 + 10", 1), 6);  // ** binds tighter than unary minus
}

TEST(PreDispatchTest, RefusesDivisionByZeroWithJoblibsMessage) {
  EXPECT_EQ(message_of("n_jobs/0", 2), "pre_dispatch: '2/0' is not a valid or supported arithmetic expression.");
}

TEST(PreDispatchTest, RefusesAnythingButArithmetic) {
  EXPECT_EQ(message_of("import os", 2), "pre_dispatch: 'import os' is not a valid or supported arithmetic expression.");
  EXPECT_EQ(message_of("auto", 2), "pre_dispatch: 'auto' is not a valid or supported arithmetic expression.");
  EXPECT_EQ(message_of("2 +", 2), "pre_dispatch: '2 +' is not a valid or supported arithmetic expression.");
}

TEST(PreDispatchTest, RefusesLongExpressions) {
  EXPECT_EQ(message_of("1+1+1+1+1+1+1+1+1+1+1+1+1+1+1+1", 2),
            "pre_dispatch: Expression '1+1+1+1+1+1+1+1+1+1+1+1+1+1+1+'... is too long. Max length is 30, got 31.");
}

TEST(PreDispatchTest, RefusesHugeNumbers) {
  EXPECT_EQ(message_of("10**7", 2), "pre_dispatch: Numeric literal 10000000 is too large, max is 1000000.");
}

TEST(BytesTest, ParsesJoblibSizes) {
  EXPECT_EQ(parse_bytes("1M", "max_nbytes"), std::optional<std::size_t>(1048576));
  EXPECT_EQ(parse_bytes("2K", "max_nbytes"), std::optional<std::size_t>(2048));
  EXPECT_EQ(parse_bytes("1.5G", "max_nbytes"), std::optional<std::size_t>(1610612736));
  EXPECT_EQ(parse_bytes("100", "max_nbytes"), std::optional<std::size_t>(100));
  EXPECT_EQ(parse_bytes("none", "max_nbytes"), std::nullopt);
}

TEST(BytesTest, RefusesGarbageNamingTheField) {
  try {
    parse_bytes("ten megs", "max_nbytes");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "max_nbytes: Invalid literal for size give: ten megs (type str) should be alike '10G', '500M', '50K'.");
  }
}

}  // namespace
