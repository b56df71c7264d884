// Portable code references (include/joblib/detail/portable.hpp,
// core/process/portable.cpp): a function travels as (module, offset,
// build-id) and resolves to the same address here; its name and its code
// (Memory's fingerprint) come from the module's symbol table.
#include <joblib/codec.hpp>
#include <joblib/detail/portable.hpp>
#include <joblib/errors.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace portable_test {
namespace {

using joblib::detail::code_ref;
using joblib::detail::function_code;
using joblib::detail::function_name;
using joblib::detail::resolve_code;
using ::testing::HasSubstr;

int twice(int x) { return 2 * x; }
static int thrice(int x) { return 3 * x; }  // internal linkage: only the .symtab knows it

TEST(PortableTest, AReferenceResolvesToTheSameFunction) {
  const auto ref = code_ref(reinterpret_cast<const void*>(&twice));
  EXPECT_FALSE(ref.module.empty());
  EXPECT_EQ(ref.module.front(), '/');  // an absolute path
  EXPECT_FALSE(ref.build_id.empty());
  auto* back = reinterpret_cast<int (*)(int)>(resolve_code(ref));
  EXPECT_EQ(back, &twice);
  EXPECT_EQ(back(21), 42);
}

TEST(PortableTest, AnotherBuildIsRefusedNamingBothBuildIds) {
  auto ref = code_ref(reinterpret_cast<const void*>(&twice));
  ref.build_id = "0000";
  try {
    resolve_code(ref);
    FAIL();
  } catch (const joblib::SerializationError& e) {
    EXPECT_THAT(e.what(), HasSubstr("but 0000 in the sender (another build)"));
  }
}

// The program's own functions travel without its path ("": the program the
// receiver runs, wherever its file lies there): a request stays small
// enough to be sent inline, and the build-id still tells another build.
TEST(PortableTest, TheProgramsOwnFunctionsTravelWithoutItsPath) {
  const auto ref = code_ref(reinterpret_cast<const void*>(&twice));
  joblib::detail::MemoryOutput out;
  joblib::detail::encode(ref, out);
  const std::string bytes(reinterpret_cast<const char*>(out.bytes().data()), out.size());
  EXPECT_EQ(bytes.find(ref.module), std::string::npos);
  EXPECT_NE(bytes.find(ref.build_id), std::string::npos);
  auto back = joblib::detail::decode<joblib::detail::CodeRef>(out.bytes());
  EXPECT_EQ(back.module, "");
  EXPECT_EQ(back.offset, ref.offset);
  EXPECT_EQ(reinterpret_cast<int (*)(int)>(resolve_code(back)), &twice);
  back.build_id = "0000";
  try {
    resolve_code(back);
    FAIL();
  } catch (const joblib::SerializationError& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot resolve code from this program (" + ref.module + "): its build-id is " +
                                    ref.build_id + " here but 0000 in the sender (another build)"));
  }
}

// A program without a build-id would have nothing left to tell another
// program by: its references keep its path, and one naming neither is refused.
TEST(PortableTest, WithoutABuildIdTheProgramsPathTravels) {
  auto ref = code_ref(reinterpret_cast<const void*>(&twice));
  ref.build_id.clear();
  joblib::detail::MemoryOutput out;
  joblib::detail::encode(ref, out);
  const std::string bytes(reinterpret_cast<const char*>(out.bytes().data()), out.size());
  EXPECT_NE(bytes.find(ref.module), std::string::npos);
  joblib::detail::CodeRef nothing;
  nothing.offset = ref.offset;
  try {
    resolve_code(nothing);
    FAIL();
  } catch (const joblib::SerializationError& e) {
    EXPECT_THAT(e.what(), HasSubstr("the sender named no module and no build-id (a malformed reference)"));
  }
}

TEST(PortableTest, AnAddressInNoModuleIsRefused) {
  EXPECT_THROW(code_ref(reinterpret_cast<const void*>(std::uintptr_t{16})), joblib::SerializationError);
}

TEST(PortableTest, FunctionsAreNamedStaticOnesIncluded) {
  EXPECT_THAT(function_name(reinterpret_cast<const void*>(&twice)), HasSubstr("twice(int)"));
  EXPECT_THAT(function_name(reinterpret_cast<const void*>(&thrice)), HasSubstr("thrice(int)"));
}

TEST(PortableTest, AFunctionsCodeIsItsOwnBytes) {
  const auto a = function_code(reinterpret_cast<const void*>(&twice));
  const auto b = function_code(reinterpret_cast<const void*>(&thrice));
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(static_cast<const void*>(a.data()), reinterpret_cast<const void*>(&twice));
  EXPECT_LT(a.size(), 4096u);  // one small function, not the whole text section
  EXPECT_FALSE(a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0);
  // An address inside a function (not its start) names no function's code.
  EXPECT_TRUE(function_code(reinterpret_cast<const char*>(a.data()) + 1).empty());
  EXPECT_TRUE(function_code(nullptr).empty());
}

}  // namespace
}  // namespace portable_test
