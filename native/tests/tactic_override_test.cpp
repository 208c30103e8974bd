#include "backend/tactic_override.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace kiln::test {
namespace {

TEST(TacticOverride, ParsesEveryFormAndNothingFromBlankText) {
  EXPECT_TRUE(parse_tactic_overrides("").empty());
  EXPECT_TRUE(parse_tactic_overrides("  ; ").empty());
  const auto o = parse_tactic_overrides(
      "4096x4096:f8e4m3@1=kiln-gemv/8/unstaged; 6144x4096:f8e4m3@8=cublaslt ;128256x4096:bf16@1=kiln-gemv/4");
  ASSERT_EQ(o.size(), 3u);
  EXPECT_EQ(o[0].n, 4096);
  EXPECT_EQ(o[0].k, 4096);
  EXPECT_EQ(o[0].dtype, "f8e4m3");
  EXPECT_EQ(o[0].bucket, 1);
  EXPECT_TRUE(o[0].gemv);
  EXPECT_EQ(o[0].split, 8);
  EXPECT_FALSE(o[0].stage_input);
  EXPECT_EQ(o[1].n, 6144);
  EXPECT_EQ(o[1].bucket, 8);
  EXPECT_FALSE(o[1].gemv);
  EXPECT_EQ(o[2].n, 128256);
  EXPECT_EQ(o[2].dtype, "bf16");
  EXPECT_TRUE(o[2].gemv);
  EXPECT_EQ(o[2].split, 4);
  EXPECT_TRUE(o[2].stage_input);
}

TEST(TacticOverride, AMalformedEntryIsRefusedQuotingItAndSayingWhy) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"4096x4096:f8e4m3@1", "no '='"},
      {"4096:f8e4m3@1=cublaslt", "is not <n>x<k>:<dtype>@<bucket>"},
      {"4096x4096@1:f8e4m3=cublaslt", "is not <n>x<k>:<dtype>@<bucket>"},
      {"0x4096:f8e4m3@1=cublaslt", "n \"0\" is not a positive integer"},
      {"4096x4k:bf16@1=cublaslt", "k \"4k\" is not a positive integer"},
      {"4096x4096:fp8@1=cublaslt", "dtype \"fp8\" is neither bf16 nor f8e4m3"},
      {"4096x4096:bf16@one=cublaslt", "bucket \"one\" is not a positive integer"},
      {"4096x4096:bf16@1=cutlass", "tactic \"cutlass\" is neither cublaslt nor kiln-gemv"},
      {"4096x4096:bf16@1=kiln-gemv", "kiln-gemv takes a split"},
      {"4096x4096:bf16@1=kiln-gemv/x", "split \"x\" is not a positive integer"},
      {"4096x4096:bf16@1=kiln-gemv/8/staged", "\"staged\" after the split is not unstaged"},
      {"4096x4096:bf16@1=cublaslt/8", "neither cublaslt nor kiln-gemv"},
  };
  for (const auto& [text, why] : bad) {
    SCOPED_TRACE(text);
    try {
      parse_tactic_overrides("4096x4096:bf16@8=cublaslt;" + text);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("\"" + text + "\""), std::string::npos) << m;
      EXPECT_NE(m.find(why), std::string::npos) << m;
    }
  }
}

}  // namespace
}  // namespace kiln::test
