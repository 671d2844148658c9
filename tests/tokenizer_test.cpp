// The encoder and decoder: CS336's tokenizer cases against tiktoken's ids, special tokens,
// round-trip properties on random Unicode and random bytes, pathological long input, and the
// BPE merge (both its short and its heap-based long path) against a naive reference.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <random>
#include <unordered_map>

#include "test_util.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

using namespace scratchlm;
using namespace scratchlm::test;

namespace {

using Ids = std::vector<std::uint32_t>;

constexpr std::uint32_t kEndOfText = 50256;

// GPT-2 with "<|endoftext|>" recognised (id 50256), as tiktoken's encode(allowed_special=...).
Tokenizer gpt2_with_endoftext() {
  Vocab v = gpt2_vocab();
  v.add_special("<|endoftext|>");
  return Tokenizer(std::move(v));
}

Ids concat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// FNV-1a over the ids, the same as the Python line quoted where it is used.
std::uint64_t ids_hash(const Ids& ids) {
  std::uint64_t h = kFnvStart;
  for (auto id : ids) h = fnv1a_word(h, id);
  return h;
}

// GPT-2's original bpe(): repeatedly take the adjacent pair of lowest merge rank and merge all
// its occurrences left to right, until no adjacent pair is a merge. Works on byte strings with
// plain hash maps, independent of the Tokenizer's id tables.
class NaiveBpe {
 public:
  explicit NaiveBpe(const Vocab& v) {
    for (std::size_t r = 0; r < v.merges.size(); ++r) rank_.emplace(key(v.tokens[v.merges[r].first], v.tokens[v.merges[r].second]), r);
    for (std::size_t id = 0; id < v.tokens.size(); ++id) id_.emplace(v.tokens[id], static_cast<std::uint32_t>(id));
  }

  Ids encode(std::string_view piece) const {
    std::vector<std::string> parts;
    for (char c : piece) parts.emplace_back(1, c);
    while (parts.size() > 1) {
      std::size_t best = SIZE_MAX, at = 0;
      for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
        auto it = rank_.find(key(parts[i], parts[i + 1]));
        if (it != rank_.end() && it->second < best) best = it->second, at = i;
      }
      if (best == SIZE_MAX) break;
      const std::string first = parts[at], second = parts[at + 1];
      std::vector<std::string> merged;
      for (std::size_t i = 0; i < parts.size();) {
        if (i + 1 < parts.size() && parts[i] == first && parts[i + 1] == second) {
          merged.push_back(first + second);
          i += 2;
        } else {
          merged.push_back(parts[i++]);
        }
      }
      parts = std::move(merged);
    }
    Ids ids;
    for (const auto& p : parts) ids.push_back(id_.at(p));
    return ids;
  }

 private:
  static std::string key(const std::string& a, const std::string& b) { return std::to_string(a.size()) + ":" + a + b; }
  std::unordered_map<std::string, std::size_t> rank_;
  std::unordered_map<std::string, std::uint32_t> id_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// CS336 test_tokenizer.py cases. Expected ids come from tiktoken 0.14.0's gpt2 encoding:
//   enc.encode_ordinary(s)                                  (no special tokens)
//   enc.encode(s, allowed_special={"<|endoftext|>"})        (with "<|endoftext|>")
// where enc = tiktoken.Encoding("gpt2", pat_str=tiktoken_ext.openai_public.r50k_pat_str,
// mergeable_ranks=data_gym_to_mergeable_bpe_ranks(<gpt2 merges>, <gpt2 vocab.json>),
// special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257): tiktoken_ext's own gpt2()
// recipe on local copies of the GPT-2 files (it reproduces every tests/data/tiktoken-gpt2 file).

TEST(TokenizerCs336, EmptyString) {
  Tokenizer t(gpt2_vocab());
  EXPECT_TRUE(t.encode("").empty());
  EXPECT_EQ(t.decode({}), "");
  EXPECT_TRUE(gpt2_with_endoftext().encode("").empty());
}

TEST(TokenizerCs336, SingleCharacter) {
  Tokenizer t(gpt2_vocab());
  EXPECT_EQ(t.encode("s"), (Ids{82}));  // enc.encode_ordinary("s")
  EXPECT_EQ(t.decode({82}), "s");
}

TEST(TokenizerCs336, SingleUnicodeCharacter) {
  Tokenizer t(gpt2_vocab());
  Ids ids = t.encode("🙃");
  EXPECT_EQ(ids, (Ids{8582, 247, 225}));  // enc.encode_ordinary("🙃")
  EXPECT_EQ(t.decode(ids), "🙃");
  // One token alone is not valid UTF-8: decode replaces it, decode_bytes keeps it.
  EXPECT_EQ(t.decode({8582}), "\xEF\xBF\xBD");
  EXPECT_EQ(t.decode_bytes(Ids{8582}), "\xF0\x9F");
}

TEST(TokenizerCs336, UnicodeString) {
  Tokenizer t(gpt2_vocab());
  const std::string s = "Héllò hôw are ü? 🙃";
  Ids ids = t.encode(s);
  // enc.encode_ordinary("Héllò hôw are ü? 🙃")
  EXPECT_EQ(ids, (Ids{39, 2634, 297, 127, 110, 289, 27083, 86, 389, 6184, 120, 30, 12520, 247, 225}));
  EXPECT_EQ(t.decode(ids), s);
  EXPECT_EQ(t.encode("Hello, how are you?"), (Ids{15496, 11, 703, 389, 345, 30}));
}

TEST(TokenizerCs336, UnicodeStringWithSpecialTokens) {
  Tokenizer t = gpt2_with_endoftext();
  const std::string s = "Héllò hôw <|endoftext|><|endoftext|> are ü? 🙃<|endoftext|>";
  Ids ids = t.encode(s);
  // enc.encode("Héllò hôw <|endoftext|><|endoftext|> are ü? 🙃<|endoftext|>", allowed_special={"<|endoftext|>"})
  EXPECT_EQ(ids, (Ids{39, 2634, 297, 127, 110, 289, 27083, 86, 220, 50256, 50256, 389, 6184, 120, 30, 12520, 247, 225,
                      50256}));
  EXPECT_EQ(t.decode(ids), s);
}

// Overlapping special tokens: the longest match wins, so the double token comes out as one id.
// tiktoken does not know the double token; the rest must equal tiktoken on the pieces between.
TEST(TokenizerCs336, OverlappingSpecialTokensLongestMatch) {
  const Ids before = {39, 2634, 297, 127, 110, 289, 27083, 86, 220};  // enc.encode_ordinary("Héllò hôw ")
  const Ids after = {389, 6184, 120, 30, 12520, 247, 225};            // enc.encode_ordinary(" are ü? 🙃")
  const std::string s = "Héllò hôw <|endoftext|><|endoftext|> are ü? 🙃<|endoftext|>";
  for (bool double_first : {false, true}) {
    Vocab v = gpt2_vocab();
    if (double_first) v.add_special("<|endoftext|><|endoftext|>");
    v.add_special("<|endoftext|>");
    if (!double_first) v.add_special("<|endoftext|><|endoftext|>");
    ASSERT_EQ(v.tokens.size(), 50258u);
    const std::uint32_t dbl = 50257;
    ASSERT_EQ(v.tokens[dbl], "<|endoftext|><|endoftext|>");
    Tokenizer t(std::move(v));
    Ids ids = t.encode(s);
    EXPECT_EQ(ids, concat({before, {dbl}, after, {kEndOfText}})) << "double_first=" << double_first;
    EXPECT_EQ(std::count(ids.begin(), ids.end(), dbl), 1);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), kEndOfText), 1);
    EXPECT_EQ(t.decode(ids), s);

    // CS336's test_overlapping_special_tokens string.
    // enc.encode_ordinary("Hello, how ") == [15496, 11, 703, 220]; enc.encode_ordinary(" are you?") == [389, 345, 30]
    EXPECT_EQ(t.encode("Hello, how <|endoftext|><|endoftext|> are you?<|endoftext|>"),
              concat({{15496, 11, 703, 220}, {dbl}, {389, 345, 30}, {kEndOfText}}));
    // Three in a row: leftmost-longest gives the double, then the single.
    EXPECT_EQ(t.encode("<|endoftext|><|endoftext|><|endoftext|>"), (Ids{dbl, kEndOfText}));
    EXPECT_EQ(t.encode("a<|endoftext|><|endoftext|>b"), (Ids{64, dbl, 65}));
  }
}

TEST(TokenizerCs336, SpecialTokenFollowedByNewlines) {
  Tokenizer t = gpt2_with_endoftext();
  // enc.encode(s, allowed_special={"<|endoftext|>"}) for each s
  EXPECT_EQ(t.encode("<|endoftext|>\n\n"), (Ids{50256, 628}));
  EXPECT_EQ(t.encode("<|endoftext|>\n\nHi"), (Ids{50256, 198, 198, 17250}));
  EXPECT_EQ(t.encode("\n\n<|endoftext|>\n\n"), (Ids{628, 50256, 628}));
  EXPECT_EQ(t.encode("<|endoftext|>"), (Ids{50256}));
  for (const char* s : {"<|endoftext|>\n\n", "<|endoftext|>\n\nHi", "\n\n<|endoftext|>\n\n"})
    EXPECT_EQ(t.decode(t.encode(s)), s);
}

TEST(TokenizerCs336, AdjacentSpecialTokens) {
  Tokenizer t = gpt2_with_endoftext();
  // enc.encode("a<|endoftext|><|endoftext|>b", allowed_special={"<|endoftext|>"})
  EXPECT_EQ(t.encode("a<|endoftext|><|endoftext|>b"), (Ids{64, 50256, 50256, 65}));
  // enc.encode("Hello, how <|endoftext|><|endoftext|> are you?<|endoftext|>", allowed_special={"<|endoftext|>"})
  EXPECT_EQ(t.encode("Hello, how <|endoftext|><|endoftext|> are you?<|endoftext|>"),
            (Ids{15496, 11, 703, 220, 50256, 50256, 389, 345, 30, 50256}));
}

// ---------------------------------------------------------------------------------------------
// Special tokens and encoding rules.

TEST(Tokenizer, SpecialTokensOnlyWhenRecognised) {
  Vocab v = gpt2_vocab();
  v.add_special("<|endoftext|>");
  Tokenizer ordinary(v, /*recognise_specials=*/false);
  EXPECT_TRUE(ordinary.special_texts().empty());
  Ids ids = ordinary.encode("<|endoftext|>");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kEndOfText), 0);
  EXPECT_EQ(ordinary.decode(ids), "<|endoftext|>");
  // A broken special token is ordinary text.
  Tokenizer special(v);
  EXPECT_EQ(special.special_texts(), (std::vector<std::string>{"<|endoftext|>"}));
  Ids partial = special.encode("<|endoftext|<|endoftext");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), kEndOfText), 0);
  EXPECT_EQ(special.decode(partial), "<|endoftext|<|endoftext");
}

// Text around special tokens is encoded as if the special tokens were document boundaries.
TEST(Tokenizer, SpecialTokensSplitTheTextProperty) {
  Tokenizer t = gpt2_with_endoftext();
  std::mt19937 rng(7);
  for (int i = 0; i < 100; ++i) {
    std::string a = random_unicode(rng, rng() % 20), b = random_unicode(rng, rng() % 20);
    Ids expected = concat({t.encode(a), {kEndOfText}, t.encode(b)});
    std::string s = a + "<|endoftext|>" + b;
    EXPECT_EQ(t.encode(s), expected) << s;
    EXPECT_EQ(t.decode(t.encode(s)), s);
  }
}

// A piece that is itself a token is that token, even where BPE would split it (tiktoken's rule).
TEST(Tokenizer, WholePieceTokenShortcut) {
  Vocab v;
  for (int b = 0; b < 256; ++b) v.tokens.emplace_back(1, static_cast<char>(b));
  v.tokens.push_back("ab");   // 256: a b, rank 0
  v.tokens.push_back("bc");   // 257: b c, rank 1
  v.tokens.push_back("abc");  // 258: a bc, rank 2
  v.merges = {{'a', 'b'}, {'b', 'c'}, {'a', 257}};
  Tokenizer t(v);
  Ids merged;
  t.bpe_merge("abc", merged);
  EXPECT_EQ(merged, (Ids{256, 'c'}));  // (a, b) first, then no merge (ab, c)
  EXPECT_EQ(t.encode("abc"), (Ids{258}));
  // "abcabc" is not a token: BPE merges (a, b) twice and stops.
  EXPECT_EQ(t.encode("abcabc"), (Ids{256, 'c', 256, 'c'}));
}

TEST(Tokenizer, DecodeRejectsIdsOutOfRange) {
  Tokenizer t(corpus_en_vocab());
  try {
    t.decode_bytes(Ids{1, 2, 500});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("500"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t.decode({0xFFFFFFFFu}), Error);
  EXPECT_NO_THROW(t.decode({499}));
}

TEST(Tokenizer, DecodeReplacesInvalidUtf8LikePython) {
  Tokenizer t(gpt2_vocab());
  // Byte tokens: GPT-2 ids of the single bytes 0xC3 and 0xFF.
  auto index = gpt2_vocab().index();
  std::uint32_t c3 = index.at("\xC3"), ff = index.at("\xFF"), a = index.at("a");
  EXPECT_EQ(t.decode({c3, a}), "\xEF\xBF\xBD" "a");
  EXPECT_EQ(t.decode({ff, ff}), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(t.decode_bytes(Ids{ff, c3}), "\xFF\xC3");
}

TEST(Tokenizer, CopiesEncodeTheSame) {
  Tokenizer t(gpt2_vocab());
  const std::string s = "The quick brown fox jumps over the lazy dog, isn't it? 12345 — ok.";
  Ids first = t.encode(s);
  Tokenizer copy = t;
  EXPECT_EQ(copy.encode(s), first);
  EXPECT_EQ(t.encode(s), first);  // from the cache
  Ids appended = {7};
  t.encode(s, appended);
  EXPECT_EQ(appended, concat({{7}, first}));
}

TEST(Tokenizer, RejectsVocabularyWithoutAllBytes) {
  Vocab v;
  for (int b = 0; b < 255; ++b) v.tokens.emplace_back(1, static_cast<char>(b));
  v.tokens.push_back("xy");
  EXPECT_THROW(Tokenizer{v}, Error);
}

// ---------------------------------------------------------------------------------------------
// Properties.

TEST(TokenizerProperty, RoundTripRandomUnicode) {
  std::mt19937 rng(1234);
  Tokenizer gpt2(gpt2_vocab());
  Tokenizer small(corpus_en_vocab());
  for (int i = 0; i < 300; ++i) {
    std::string s = random_unicode(rng, 1 + rng() % 60);
    ASSERT_TRUE(is_valid_utf8(s));
    Ids ids = gpt2.encode(s);
    ASSERT_EQ(gpt2.decode(ids), s) << "GPT-2, case " << i;
    Ids small_ids = small.encode(s);
    ASSERT_EQ(small.decode(small_ids), s) << "corpus.en BPE, case " << i;
    for (auto id : small_ids) ASSERT_LT(id, 500u);
  }
}

TEST(TokenizerProperty, RoundTripRandomBytes) {
  std::mt19937 rng(99);
  Tokenizer gpt2 = gpt2_with_endoftext();
  Tokenizer small(corpus_en_vocab());
  for (int i = 0; i < 300; ++i) {
    std::string s = random_bytes(rng, rng() % 80);
    if (i % 10 == 0) s += "<|endoftext|>" + random_bytes(rng, 10);
    ASSERT_EQ(gpt2.decode_bytes(gpt2.encode(s)), s) << "GPT-2, case " << i;
    ASSERT_EQ(small.decode_bytes(small.encode(s)), s) << "corpus.en BPE, case " << i;
  }
}

// tiktoken on 400 pseudo-random strings of mixed scripts, whitespace and apostrophes:
//   h = 0xcbf29ce484222325
//   for s in lcg_unicode_strings(7, 400):
//       ids = enc.encode_ordinary(s)
//       for t in ids + [0xFFFFFFFF]: h = ((h ^ t) * 0x100000001b3) % 2**64
// gives 20,223 ids in all and h = 0x4fda62fd5df6eb57 (tiktoken 0.14.0; lcg_unicode in test_util.h).
TEST(TokenizerProperty, MatchesTiktokenOnPseudoRandomUnicode) {
  Tokenizer t(gpt2_vocab());
  std::uint64_t h = kFnvStart;
  std::size_t n = 0;
  for (const auto& s : lcg_unicode_strings(7, 400)) {
    Ids ids = t.encode(s);
    ASSERT_EQ(t.decode(ids), s);
    n += ids.size();
    for (auto id : ids) h = fnv1a_word(h, id);
    h = fnv1a_word(h, 0xFFFFFFFFu);
  }
  EXPECT_EQ(n, 20223u);
  EXPECT_EQ(h, 0x4fda62fd5df6eb57ull);
}

// Pathological repetition. The GPT-2 ids are checked against tiktoken 0.14.0 (count, first and
// last id, and h = FNV-1a: h = 0xcbf29ce484222325; for i in ids: h = ((h ^ i) * 0x100000001b3) % 2**64),
// from enc.encode_ordinary(s) with the s named in each case.
TEST(TokenizerProperty, LongRepetitiveInput) {
  Tokenizer gpt2(gpt2_vocab());
  Tokenizer small(corpus_en_vocab());
  struct Case {
    std::string name, text;
    std::size_t count;
    std::uint64_t hash;
    std::uint32_t first, last;
  };
  // The 100 KB line: s = lcg_letters(100000): x = 12345; each char: x = (x * 1103515245 + 12345) % 2**31,
  // "abcdefghijklmnopqrstuvwxyz"[(x >> 16) % 26].
  std::string letters;
  std::uint64_t x = 12345;
  for (int i = 0; i < 100000; ++i) {
    x = (x * 1103515245u + 12345u) % (1ull << 31);
    letters += static_cast<char>('a' + (x >> 16) % 26);
  }
  std::string ab;
  for (int i = 0; i < 50000; ++i) ab += "ab ";
  const Case cases[] = {
      {"' ' * 200000", std::string(200000, ' '), 200000, 0xb0217dd7efca0325ull, 220, 220},
      {"'a' * 100000", std::string(100000, 'a'), 25000, 0x8d3e0cc45d4a0ce5ull, 24794, 24794},
      {"'ab ' * 50000", ab, 50001, 0xc6b70529c14942a2ull, 397, 220},
      {"lcg_letters(100000)", letters, 59539, 0xa104cf9259996333ull, 2655, 65},
  };
  for (const auto& c : cases) {
    Ids ids = gpt2.encode(c.text);
    ASSERT_EQ(ids.size(), c.count) << c.name;
    EXPECT_EQ(ids.front(), c.first) << c.name;
    EXPECT_EQ(ids.back(), c.last) << c.name;
    EXPECT_EQ(ids_hash(ids), c.hash) << c.name;
    EXPECT_EQ(gpt2.decode_bytes(ids), c.text) << c.name;
    Ids small_ids = small.encode(c.text);
    EXPECT_EQ(small.decode_bytes(small_ids), c.text) << c.name;
  }
  // Mixed: a long run of newlines, tabs and non-breaking spaces between words.
  std::string mixed;
  for (int i = 0; i < 20000; ++i) mixed += (i % 3 == 0) ? "\n" : (i % 3 == 1) ? "\t" : "\xC2\xA0";
  mixed = "start" + mixed + "end";
  EXPECT_EQ(gpt2.decode_bytes(gpt2.encode(mixed)), mixed);
  EXPECT_EQ(small.decode_bytes(small.encode(mixed)), mixed);
}

// bpe_merge against the naive reference, for pieces of every length up to 400 bytes: the short
// path (≤ 64 bytes) and the heap-based long path.
TEST(TokenizerProperty, BpeMergeMatchesNaiveReference) {
  const std::string corpus = read_bytes(data_path("cs336/corpus.en"));
  std::mt19937 rng(2024);
  for (const Vocab* vocab : {&gpt2_vocab(), &corpus_en_vocab()}) {
    Tokenizer t(*vocab);
    NaiveBpe naive(*vocab);
    auto check = [&](const std::string& piece) {
      Ids got;
      t.bpe_merge(piece, got);
      ASSERT_EQ(got, naive.encode(piece)) << "piece of " << piece.size() << " bytes: " << piece;
      ASSERT_EQ(t.decode_bytes(got), piece);
    };
    for (int i = 0; i < 200; ++i) {
      std::size_t len = i < 100 ? 1 + rng() % 64 : 65 + rng() % 336;
      // Real text (many merges), a small alphabet (long repeated merges), or any bytes.
      std::string piece;
      switch (i % 3) {
        case 0:
          piece = corpus.substr(rng() % (corpus.size() - len), len);
          break;
        case 1:
          for (std::size_t k = 0; k < len; ++k) piece += " aeinst"[rng() % 7];
          break;
        default:
          piece = random_bytes(rng, len);
      }
      check(piece);
    }
    // Around the 64-byte boundary between the two paths.
    for (std::size_t len : {63, 64, 65, 66, 128}) {
      check(std::string(len, 'a'));
      check(std::string(len, ' '));
      std::string abab;
      while (abab.size() < len) abab += "ab";
      check(abab.substr(0, len));
      check(corpus.substr(1000, len));
    }
  }
}

// encode_piece (with its whole-token shortcut and cache) is bpe_merge for pieces that are not
// tokens, and the token itself for pieces that are.
TEST(TokenizerProperty, EncodePieceAgreesWithBpeMerge) {
  Tokenizer t(gpt2_vocab());
  auto index = gpt2_vocab().index();
  std::mt19937 rng(5);
  const std::string corpus = read_bytes(data_path("cs336/corpus.en"));
  for (int i = 0; i < 300; ++i) {
    std::size_t len = 1 + rng() % 100;
    std::string piece = corpus.substr(rng() % (corpus.size() - len), len);
    Ids by_piece, by_merge;
    t.encode_piece(piece, by_piece);
    t.bpe_merge(piece, by_merge);
    auto it = index.find(piece);
    if (it != index.end()) {
      EXPECT_EQ(by_piece, (Ids{static_cast<std::uint32_t>(it->second)}));
    } else {
      EXPECT_EQ(by_piece, by_merge) << piece;
    }
    Ids again;
    t.encode_piece(piece, again);  // cached
    EXPECT_EQ(again, by_piece);
  }
}
