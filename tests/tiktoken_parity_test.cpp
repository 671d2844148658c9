// Parity with tiktoken's GPT-2 encoding on real texts (tests/data/tiktoken-gpt2/*.json hold the
// ids tiktoken gave, see tests/data/README.md): "ordinary" is encode_ordinary (no special token
// recognised), "with_special_endoftext" is encode with "<|endoftext|>" allowed.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace scratchlm;
using namespace scratchlm::test;

namespace {

class TiktokenParity : public testing::TestWithParam<const char*> {};

std::string text_path(const std::string& file) {
  std::string cs336 = data_path("cs336/" + file);
  return std::filesystem::exists(cs336) ? cs336 : data_path("texts/" + file);
}

TEST_P(TiktokenParity, IdsAndRoundTrip) {
  auto ref = nlohmann::json::parse(read_bytes(data_path(std::string("tiktoken-gpt2/") + GetParam())));
  const std::string file = ref.at("file").get<std::string>();
  const std::string text = read_bytes(text_path(file));
  ASSERT_EQ(static_cast<std::int64_t>(text.size()), ref.at("bytes").get<std::int64_t>()) << file;

  Tokenizer ordinary(gpt2_vocab(), /*recognise_specials=*/false);
  std::vector<std::uint32_t> ids = ordinary.encode(text);
  auto expected = ref.at("ordinary").get<std::vector<std::uint32_t>>();
  ASSERT_EQ(ids.size(), expected.size()) << file;
  for (std::size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(ids[i], expected[i]) << file << ": first difference at token " << i;
  EXPECT_EQ(ordinary.decode(ids), text);
  EXPECT_EQ(ordinary.decode_bytes(ids), text);

  // A vocabulary with the special token listed but not recognised is encode_ordinary too.
  Vocab with_special = gpt2_vocab();
  with_special.add_special("<|endoftext|>");
  EXPECT_EQ(Tokenizer(with_special, /*recognise_specials=*/false).encode(text), expected) << file;

  Tokenizer special(with_special);
  if (ref.contains("with_special_endoftext")) {
    auto expected_special = ref.at("with_special_endoftext").get<std::vector<std::uint32_t>>();
    std::vector<std::uint32_t> got = special.encode(text);
    EXPECT_EQ(got, expected_special) << file;
    EXPECT_EQ(special.decode(got), text);
  } else {
    EXPECT_EQ(text.find("<|endoftext|>"), std::string::npos) << file;
    EXPECT_EQ(special.encode(text), expected) << file;
  }
}

INSTANTIATE_TEST_SUITE_P(Files, TiktokenParity,
                         testing::Values("address.txt.json", "corpus.en.json", "german.txt.json",
                                         "special_token_double_newlines_non_whitespace.txt.json",
                                         "special_token_trailing_newlines.txt.json", "tinystories_sample.txt.json",
                                         "de_news_200k.txt.json", "tinystories_v1_valid_300k.txt.json",
                                         "wikitext2_valid_300k.txt.json", "zh_hongloumeng_200k.txt.json"),
                         [](const testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           name = name.substr(0, name.find('.'));
                           return name;
                         });

TEST(TiktokenParityFiles, EveryReferenceFileIsTested) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(data_path("tiktoken-gpt2")))
    if (e.path().extension() == ".json") ++n;
  EXPECT_EQ(n, 10) << "a reference file was added or removed: update the list above";
}

}  // namespace
