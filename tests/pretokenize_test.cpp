// The GPT-2 pre-tokenizer against the regex it stands for,
//   '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Expected pieces come from Python's `regex` module (2026.11.15) with tiktoken 0.14.0's
// r50k_pat_str: regex.findall(tiktoken_ext.openai_public.r50k_pat_str, s), unless a case says
// otherwise (ill-formed UTF-8, which a Python str cannot hold).
#include "tokenizer/pretokenize.h"

#include <gtest/gtest.h>

#include <random>

#include "test_util.h"

using namespace scratchlm;
using namespace scratchlm::test;

namespace {

using V = std::vector<std::string>;

struct Case {
  std::string text;
  V expected;
};

void expect_cases(const std::vector<Case>& cases) {
  for (const auto& c : cases) EXPECT_EQ(pieces(c.text), c.expected) << testing::PrintToString(c.text);
}

}  // namespace

TEST(Pretokenize, Basic) {
  EXPECT_EQ(pieces("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(pieces("it's 2024!"), (V{"it", "'s", " 2024", "!"}));
  EXPECT_EQ(pieces("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(pieces("a\n\nb"), (V{"a", "\n", "\n", "b"}));
  EXPECT_EQ(pieces("end  "), (V{"end", "  "}));
  EXPECT_TRUE(pieces("").empty());
}

TEST(Pretokenize, Contractions) {
  expect_cases({
      {"it's I'll we've they're I'm he'd don't",
       {"it", "'s", " I", "'ll", " we", "'ve", " they", "'re", " I", "'m", " he", "'d", " don", "'t"}},
      {"IT'S", {"IT", "'", "S"}},  // upper case is not a contraction
      {"'S'D", {"'", "S", "'", "D"}},
      {"''s", {"''", "s"}},
      {"'s", {"'s"}},
      {"x 's", {"x", " '", "s"}},
      {" 'hello", {" '", "hello"}},
      {"' s", {"'", " s"}},
      {"'ll'", {"'ll", "'"}},
      {"'l", {"'", "l"}},
  });
}

TEST(Pretokenize, Whitespace) {
  expect_cases({
      {"a   b", {"a", "  ", " b"}},
      {"end   ", {"end", "   "}},
      {"\t\n x", {"\t\n", " x"}},
      {"   leading", {"  ", " leading"}},
      {"a\r\nb", {"a", "\r", "\n", "b"}},
      {"\r\n\r\n", {"\r\n\r\n"}},
      {"\n\n\nx", {"\n\n", "\n", "x"}},
      {"x  \n  y", {"x", "  \n ", " y"}},
      {" ", {" "}},
      {"  ", {"  "}},
      {"?!  ", {"?!", "  "}},
      {"a \tb", {"a", " ", "\t", "b"}},
      {"a \n", {"a", " \n"}},
      {"\x0B\x0C x", {"\x0B\x0C", " x"}},
  });
}

TEST(Pretokenize, UnicodeWhitespace) {
  expect_cases({
      {"a\xC2\xA0" "b", {"a", "\xC2\xA0", "b"}},                                  // U+00A0
      {"a\xC2\xA0 b", {"a", "\xC2\xA0", " b"}},
      {"\xE3\x80\x80word", {"\xE3\x80\x80", "word"}},                             // U+3000
      {"a \xE3\x80\x80" "b", {"a", " ", "\xE3\x80\x80", "b"}},
      {"a\xE3\x80\x80\xE3\x80\x80" "b", {"a", "\xE3\x80\x80", "\xE3\x80\x80", "b"}},
      {"a\xC2\x85" "b", {"a", "\xC2\x85", "b"}},                                  // U+0085
      {"\xE2\x80\xA8x", {"\xE2\x80\xA8", "x"}},                                   // U+2028
      {"a\xE2\x80\x8B" "b", {"a", "\xE2\x80\x8B", "b"}},                          // U+200B is not whitespace
  });
}

TEST(Pretokenize, NumbersLettersAndOthers) {
  expect_cases({
      {"123 456", {"123", " 456"}},
      {"abc123", {"abc", "123"}},
      {"x1 2", {"x", "1", " 2"}},
      {" 123abc", {" 123", "abc"}},
      {"$100.00", {"$", "100", ".", "00"}},
      {"\xD9\xA1\xD9\xA2\xD9\xA3 \xC2\xBD \xE2\x85\xAB", {"\xD9\xA1\xD9\xA2\xD9\xA3", " \xC2\xBD", " \xE2\x85\xAB"}},  // ١٢٣ ½ Ⅻ
      {"hello, world!!! ...", {"hello", ",", " world", "!!!", " ..."}},
      {"e-mail: a@b.c", {"e", "-", "mail", ":", " a", "@", "b", ".", "c"}},
      {"日本語のテキスト", {"日本語のテキスト"}},
      {"cafe\xCC\x81 ok", {"cafe", "\xCC\x81", " ok"}},  // a combining mark is not a letter
      {"👍🏽!", {"👍🏽!"}},
  });
}

// Not from the regex (a Python str cannot hold ill-formed UTF-8): by the documented rule, each
// byte that is not part of a well-formed sequence is one character of class "other", so it joins
// runs of punctuation and takes a leading space like punctuation does.
TEST(Pretokenize, IllFormedBytesAreOthers) {
  expect_cases({
      {"a\xFF!b", {"a", "\xFF!", "b"}},
      {" \xFF", {" \xFF"}},
      {"\xC3(", {"\xC3("}},
      {"x \xE2\x82 y", {"x", " \xE2\x82", " y"}},
      {"\xFF\xFE's", {"\xFF\xFE'", "s"}},  // like "!!'s"
      {"\xC3\xA9\xA9", {"\xC3\xA9", "\xA9"}},
      {"ab\xC3", {"ab", "\xC3"}},
      {"\xED\xA0\x80" "abc", {"\xED\xA0\x80", "abc"}},
      {"1\x80" "2", {"1", "\x80", "2"}},
      {"a  \xFF", {"a", " ", " \xFF"}},
  });
}

// 400 pseudo-random strings of mixed scripts, whitespace and apostrophes (lcg_unicode in
// test_util.h) against the regex:
//   h = 0xcbf29ce484222325; n = 0
//   for s in lcg_unicode_strings(7, 400):
//       ps = regex.findall(r50k_pat_str, s); n += len(ps)
//       for p in ps: h = fnv(h, p.encode() + b"\x00")
//       h = fnv(h, b"\x01")
// gives n = 8,235 and h = 0xe45cc89c2eee96c0.
TEST(Pretokenize, MatchesRegexOnPseudoRandomUnicode) {
  std::uint64_t h = kFnvStart;
  std::size_t n = 0;
  for (const auto& s : lcg_unicode_strings(7, 400)) {
    for (const auto& p : pieces(s)) {
      h = fnv1a(h, p);
      h = fnv1a(h, std::string_view("\0", 1));
      ++n;
    }
    h = fnv1a(h, "\x01");
  }
  EXPECT_EQ(n, 8235u);
  EXPECT_EQ(h, 0xe45cc89c2eee96c0ull);
}

// On any bytes: the pieces are non-empty and concatenate to the input.
TEST(Pretokenize, PiecesCoverAnyBytes) {
  std::mt19937 rng(11);
  for (int i = 0; i < 500; ++i) {
    std::string s = i % 2 ? random_bytes(rng, rng() % 64) : random_unicode(rng, rng() % 40);
    std::string joined;
    for (const auto& p : pieces(s)) {
      ASSERT_FALSE(p.empty());
      joined += p;
    }
    ASSERT_EQ(joined, s);
  }
}
