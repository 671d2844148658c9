#include "tokenizer/pretokenize.h"

#include <gtest/gtest.h>

using namespace scratchlm;

static std::vector<std::string> pieces(std::string_view s) {
  std::vector<std::string> out;
  pretokenize(s, [&](std::string_view p) { out.emplace_back(p); });
  return out;
}

TEST(Pretokenize, Basic) {
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pieces("it's 2024!"), (V{"it", "'s", " 2024", "!"}));
  EXPECT_EQ(pieces("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(pieces("a\n\nb"), (V{"a", "\n", "\n", "b"}));
  EXPECT_EQ(pieces("end  "), (V{"end", "  "}));
}
