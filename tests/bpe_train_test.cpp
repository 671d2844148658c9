// BPE training: the CS336 golden merges and vocabulary, and the rules of the merge loop on small
// hand-made counts (tie-breaking, overlapping pairs, special tokens, early stop, bad options).
#include "tokenizer/bpe_train.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "test_util.h"
#include "util/error.h"

using namespace scratchlm;
using namespace scratchlm::test;

namespace {

using BytePair = std::pair<std::string, std::string>;

std::vector<BytePair> merges_as_bytes(const Vocab& v) {
  std::vector<BytePair> out;
  for (auto [a, b] : v.merges) out.emplace_back(v.tokens[a], v.tokens[b]);
  return out;
}

// Counts from a list of (piece, count), bypassing the pre-tokenizer.
PretokenCounts counts_of(std::initializer_list<std::pair<std::string, std::int64_t>> list) {
  PretokenCounts counts;
  for (const auto& [piece, n] : list) counts[piece] += n;
  return counts;
}

}  // namespace

// CS336 test_train_bpe: corpus.en, vocab 500, "<|endoftext|>" → exactly the reference merges, in
// order, and the reference vocabulary (compared as a set of byte strings: the ids differ, the
// reference puts the special token first).
TEST(BpeTrainGolden, CorpusEnMatchesReferenceMergesAndVocab) {
  const Vocab& vocab = corpus_en_vocab();

  std::istringstream lines(read_bytes(data_path("cs336/train-bpe-reference-merges.txt")));
  std::vector<BytePair> expected;
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    std::size_t space = line.find(' ');
    ASSERT_NE(space, std::string::npos) << line;
    expected.emplace_back(gpt2_bytes(line.substr(0, space)), gpt2_bytes(line.substr(space + 1)));
  }
  ASSERT_EQ(expected.size(), 500u - 256u - 1u);
  std::vector<BytePair> got = merges_as_bytes(vocab);
  ASSERT_EQ(got.size(), expected.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], expected[i]) << "merge " << i << " differs: got " << bytes_to_gpt2_text(got[i].first) << " "
                                   << bytes_to_gpt2_text(got[i].second);

  auto json = nlohmann::json::parse(read_bytes(data_path("cs336/train-bpe-reference-vocab.json")));
  std::set<std::string> expected_tokens;
  for (const auto& [key, id] : json.items())
    expected_tokens.insert(key == "<|endoftext|>" ? key : gpt2_bytes(key));
  std::set<std::string> got_tokens(vocab.tokens.begin(), vocab.tokens.end());
  EXPECT_EQ(vocab.tokens.size(), 500u);
  EXPECT_EQ(got_tokens.size(), vocab.tokens.size()) << "duplicate tokens";
  EXPECT_EQ(got_tokens, expected_tokens);

  // Layout: bytes, merges, then the special token.
  for (int b = 0; b < 256; ++b) EXPECT_EQ(vocab.tokens[b], std::string(1, static_cast<char>(b)));
  ASSERT_EQ(vocab.special_ids, (std::vector<std::int32_t>{499}));
  EXPECT_EQ(vocab.tokens[499], "<|endoftext|>");
}

TEST(BpeTrainGolden, ThreadsAndSmallChunksGiveTheSameMerges) {
  Vocab v = train_bpe({data_path("cs336/corpus.en")},
                      bpe_options(500, {"<|endoftext|>"}, 3, 4096));
  EXPECT_EQ(v.tokens, corpus_en_vocab().tokens);
  EXPECT_EQ(v.merges, corpus_en_vocab().merges);
  EXPECT_EQ(v.special_ids, corpus_en_vocab().special_ids);
}

TEST(BpeTrain, StatsCountPretokens) {
  BpeTrainStats stats;
  TempDir dir;
  write_bytes(dir.file("t.txt"), "the cat the dog<|endoftext|>the");
  train_bpe({dir.file("t.txt")}, bpe_options(260, {"<|endoftext|>"}), &stats);
  EXPECT_EQ(stats.input_bytes, 31);
  EXPECT_EQ(stats.pretokens, 5);           // the, " cat", " the", " dog", the
  EXPECT_EQ(stats.distinct_pretokens, 4);  // the, " cat", " the", " dog"
  EXPECT_EQ(stats.merges, 3);
}

TEST(BpeTrain, MostFrequentPairFirst) {
  Vocab v = train_bpe_from_counts(counts_of({{"ab", 3}, {"cd", 5}}), bpe_options(258));
  ASSERT_EQ(v.merges.size(), 2u);
  EXPECT_EQ(merges_as_bytes(v), (std::vector<BytePair>{{"c", "d"}, {"a", "b"}}));
  EXPECT_EQ(v.tokens[256], "cd");
  EXPECT_EQ(v.tokens[257], "ab");
}

// Ties go to the lexicographically greatest pair, compared as (bytes, bytes), with bytes as
// unsigned values (as Python compares bytes).
TEST(BpeTrain, TiesGoToTheGreatestPair) {
  Vocab v = train_bpe_from_counts(counts_of({{"ab", 2}, {"ba", 2}, {"az", 2}}), bpe_options(257));
  EXPECT_EQ(merges_as_bytes(v), (std::vector<BytePair>{{"b", "a"}}));

  v = train_bpe_from_counts(counts_of({{"az", 1}, {"ay", 1}}), bpe_options(257));
  EXPECT_EQ(merges_as_bytes(v), (std::vector<BytePair>{{"a", "z"}}));

  // 0xC3 > 'z' as unsigned bytes.
  v = train_bpe_from_counts(counts_of({{"\xC3\xA9", 1}, {"zz", 1}}), bpe_options(257));
  EXPECT_EQ(merges_as_bytes(v), (std::vector<BytePair>{{"\xC3", "\xA9"}}));

  // Ties between pairs that contain merged tokens compare the tokens' bytes.
  v = train_bpe_from_counts(counts_of({{"xabc", 10}}), bpe_options(259));
  // Counts: xa, ab, bc all 10 → greatest is (x, a); then (xa, b) vs (b, c) tie at 10 → (xa, b) since
  // "xa" > "b"; then (xab, c).
  EXPECT_EQ(merges_as_bytes(v), (std::vector<BytePair>{{"x", "a"}, {"xa", "b"}, {"xab", "c"}}));
}

// A pair that overlaps itself ("aaa") is counted per occurrence, and merged left to right.
TEST(BpeTrain, OverlappingPairs) {
  Vocab v = train_bpe_from_counts(counts_of({{"aaa", 1}, {"bc", 1}}), bpe_options(258));
  // (a, a) occurs twice in "aaa", so it goes first; then (aa, a) and (b, c) tie at 1, and
  // (b, c) is the greater pair since "b" > "aa".
  EXPECT_EQ(merges_as_bytes(v), (std::vector<BytePair>{{"a", "a"}, {"b", "c"}}));

  v = train_bpe_from_counts(counts_of({{"aaaa", 1}}), bpe_options(258));
  // "aaaa" → (a, a) x3 → [aa, aa] → (aa, aa).
  EXPECT_EQ(merges_as_bytes(v), (std::vector<BytePair>{{"a", "a"}, {"aa", "aa"}}));
}

// Counts are weighted by piece frequency and updated after each merge.
TEST(BpeTrain, CountsAreUpdatedAfterMerges) {
  // low x5, lower x2, newest x6, widest x3 (the Sennrich et al. example, without end-of-word).
  Vocab v = train_bpe_from_counts(counts_of({{"low", 5}, {"lower", 2}, {"newest", 6}, {"widest", 3}}),
                                  bpe_options(256 + 6));
  // The CS336 handout's worked example: s t, e st, o w, l ow, w est, n e.
  EXPECT_EQ(merges_as_bytes(v), (std::vector<BytePair>{{"s", "t"}, {"e", "st"}, {"o", "w"}, {"l", "ow"}, {"w", "est"},
                                                        {"n", "e"}}));
}

TEST(BpeTrain, StopsEarlyWhenNoPairIsLeft) {
  BpeTrainStats stats;
  Vocab v = train_bpe_from_counts(counts_of({{"abc", 1}, {"x", 100}}),
                                  bpe_options(1000, {"<|endoftext|>"}), &stats);
  EXPECT_EQ(stats.merges, 2);
  EXPECT_EQ(v.merges.size(), 2u);
  EXPECT_EQ(v.tokens.size(), 256u + 2u + 1u);
  EXPECT_EQ(v.tokens.back(), "<|endoftext|>");
  EXPECT_EQ(v.special_ids, (std::vector<std::int32_t>{258}));
}

TEST(BpeTrain, SpecialTokensAreNeverCountedNorMerged) {
  PretokenCounts counts;
  count_pretokens("ab<|endoftext|>ab<|endoftext|><|endoftext|>cd", {"<|endoftext|>"}, counts);
  ASSERT_NE(counts.find("ab"), nullptr);
  EXPECT_EQ(*counts.find("ab"), 2);
  EXPECT_EQ(*counts.find("cd"), 1);
  EXPECT_EQ(counts.find("<|"), nullptr);
  EXPECT_EQ(counts.find("endoftext"), nullptr);
  EXPECT_EQ(counts.size(), 2u);

  // Text around a special token is pre-tokenized separately: "x<|endoftext|> y" gives "x" and " y".
  PretokenCounts c2;
  count_pretokens("x<|endoftext|> y", {"<|endoftext|>"}, c2);
  EXPECT_EQ(c2.size(), 2u);
  EXPECT_NE(c2.find(" y"), nullptr);

  Vocab v = train_bpe_from_counts(counts, bpe_options(259, {"<|endoftext|>"}));
  EXPECT_EQ(v.merges.size(), 2u);  // (a, b) and (c, d): nothing from the special token
  for (std::size_t id = 256; id < 256 + v.merges.size(); ++id) EXPECT_EQ(v.tokens[id].find('|'), std::string::npos);
}

TEST(BpeTrain, SeveralSpecialTokensGoLastInOrder) {
  Vocab v = train_bpe_from_counts(counts_of({{"ab", 1}}), bpe_options(259, {"<|a|>", "<|b|>"}));
  ASSERT_EQ(v.tokens.size(), 259u);
  EXPECT_EQ(v.tokens[257], "<|a|>");
  EXPECT_EQ(v.tokens[258], "<|b|>");
  EXPECT_EQ(v.special_ids, (std::vector<std::int32_t>{257, 258}));
}

TEST(BpeTrain, RejectsTooSmallVocabAndBadOptions) {
  EXPECT_THROW(train_bpe_from_counts(counts_of({{"ab", 1}}), bpe_options(255)), Error);
  EXPECT_THROW(train_bpe_from_counts(counts_of({{"ab", 1}}), bpe_options(256, {"<|e|>"})),
               Error);
  EXPECT_NO_THROW(train_bpe_from_counts(counts_of({{"ab", 1}}), bpe_options(257, {"<|e|>"})));
  EXPECT_THROW(train_bpe_from_counts(counts_of({{"ab", 1}}), bpe_options(300, {""})), Error);
  EXPECT_THROW(train_bpe({}, bpe_options(300)), Error);
  try {
    train_bpe({"/nonexistent/corpus.txt"}, bpe_options(300));
    ADD_FAILURE() << "no error for a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/corpus.txt"), std::string::npos) << e.what();
  }
}

TEST(BpeTrain, VocabSize256GivesBytesOnly) {
  Vocab v = train_bpe_from_counts(counts_of({{"ab", 1}}), bpe_options(256));
  EXPECT_EQ(v.tokens.size(), 256u);
  EXPECT_TRUE(v.merges.empty());
}
