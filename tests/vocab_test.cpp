// Vocabulary files: what save_tokenizer_dir writes loads back to the same vocabulary (from
// vocab.json + merges.txt, and from tokenizer.json alone); the GPT-2 files load as GPT-2.
#include "tokenizer/vocab.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

using namespace scratchlm;
using namespace scratchlm::test;

namespace {

void expect_same_vocab(const Vocab& got, const Vocab& expected) {
  EXPECT_EQ(got.tokens, expected.tokens);
  EXPECT_EQ(got.merges, expected.merges);
  EXPECT_EQ(got.special_ids, expected.special_ids);
  EXPECT_EQ(vocab_fingerprint(got), vocab_fingerprint(expected));
}

}  // namespace

TEST(Vocab, Gpt2FilesLoad) {
  const Vocab& v = gpt2_vocab();
  ASSERT_EQ(v.tokens.size(), 50257u);
  EXPECT_EQ(v.merges.size(), 50000u);
  EXPECT_TRUE(v.special_ids.empty());
  EXPECT_EQ(v.tokens[50256], "<|endoftext|>");
  EXPECT_EQ(v.tokens[220], " ");
  EXPECT_EQ(v.tokens[198], "\n");
  EXPECT_EQ(v.tokens[262], " the");
  // The first merge of GPT-2 is "Ġ t".
  EXPECT_EQ(v.tokens[v.merges[0].first], " ");
  EXPECT_EQ(v.tokens[v.merges[0].second], "t");
}

TEST(Vocab, AddSpecial) {
  Vocab v = gpt2_vocab();
  v.add_special("<|endoftext|>");  // already a token: no new id
  EXPECT_EQ(v.tokens.size(), 50257u);
  EXPECT_EQ(v.special_ids, (std::vector<std::int32_t>{50256}));
  v.add_special("<|endoftext|>");  // twice: listed once
  EXPECT_EQ(v.special_ids, (std::vector<std::int32_t>{50256}));
  v.add_special("<|pad|>");
  EXPECT_EQ(v.tokens.size(), 50258u);
  EXPECT_EQ(v.special_ids, (std::vector<std::int32_t>{50256, 50257}));
  EXPECT_THROW(v.add_special(""), Error);
}

TEST(Vocab, SaveThenLoadGivesTheSameVocab) {
  TempDir dir;
  const Vocab& trained = corpus_en_vocab();
  save_tokenizer_dir(dir.file("tok"), trained);
  for (const char* f : {"vocab.json", "merges.txt", "special_tokens.json", "tokenizer.json"})
    EXPECT_TRUE(std::filesystem::exists(dir.file(std::string("tok/") + f))) << f;
  expect_same_vocab(load_tokenizer_dir(dir.file("tok")), trained);

  // Several special tokens, one of which is also an ordinary token's bytes.
  Vocab v = trained;
  v.add_special("<|pad|>");
  v.add_special("e");
  save_tokenizer_dir(dir.file("tok2"), v);
  expect_same_vocab(load_tokenizer_dir(dir.file("tok2")), v);

  // GPT-2 itself, with its special token.
  Vocab g = gpt2_vocab();
  g.add_special("<|endoftext|>");
  save_tokenizer_dir(dir.file("gpt2"), g);
  expect_same_vocab(load_tokenizer_dir(dir.file("gpt2")), g);
  EXPECT_EQ(read_bytes(dir.file("gpt2/merges.txt")), read_bytes(data_path("gpt2/merges.txt")));
}

TEST(Vocab, TokenizerJsonIsHuggingFaceBpe) {
  TempDir dir;
  const Vocab& trained = corpus_en_vocab();
  save_tokenizer_dir(dir.path(), trained);
  auto j = nlohmann::json::parse(read_bytes(dir.file("tokenizer.json")));
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["merges"].size(), trained.merges.size());
  EXPECT_EQ(j["model"]["vocab"].size(), trained.tokens.size());
  EXPECT_EQ(j["pre_tokenizer"]["type"], "ByteLevel");
  ASSERT_EQ(j["added_tokens"].size(), 1u);
  EXPECT_EQ(j["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(j["added_tokens"][0]["id"], 499);
  EXPECT_EQ(j["added_tokens"][0]["special"], true);
  // Its vocab is vocab.json's.
  EXPECT_EQ(j["model"]["vocab"], nlohmann::json::parse(read_bytes(dir.file("vocab.json"))));

  // A directory with only tokenizer.json loads from it, to the same vocabulary.
  std::filesystem::remove(dir.file("vocab.json"));
  std::filesystem::remove(dir.file("merges.txt"));
  std::filesystem::remove(dir.file("special_tokens.json"));
  expect_same_vocab(load_tokenizer_dir(dir.path()), trained);
}

TEST(Vocab, FingerprintTellsVocabulariesApart) {
  const Vocab& a = corpus_en_vocab();
  Vocab b = a;
  EXPECT_EQ(vocab_fingerprint(a), vocab_fingerprint(b));
  EXPECT_EQ(vocab_fingerprint(a).size(), 16u);
  std::swap(b.merges[0], b.merges[1]);
  EXPECT_NE(vocab_fingerprint(a), vocab_fingerprint(b));
  Vocab c = a;
  c.special_ids.clear();
  EXPECT_NE(vocab_fingerprint(a), vocab_fingerprint(c));
}

TEST(Vocab, NotADirectory) {
  TempDir dir;
  try {
    load_tokenizer_dir(dir.file("nope"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.file("nope")), std::string::npos) << e.what();
  }
}
