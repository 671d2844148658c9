// UTF-8 decoding and repair (against Python's bytes.decode("utf-8", "replace")), character
// classes, and GPT-2's byte ↔ printable-character map.
#include "tokenizer/unicode.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "test_util.h"
#include "tokenizer/vocab.h"

using namespace scratchlm;
using namespace scratchlm::test;

namespace {

const std::string R = "\xEF\xBF\xBD";  // U+FFFD

std::string rep(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += R;
  return out;
}

}  // namespace

// Expected values: b.decode("utf-8", "replace").encode("utf-8") in Python 3.11.7 for each b.
TEST(Utf8Replace, MatchesPythonOnTrickyBytes) {
  struct Case {
    std::string in, out;
  };
  const Case cases[] = {
      // Truncated sequences: one U+FFFD for the maximal valid prefix.
      {"\xC3", R},
      {"\xC3(", R + "("},
      {"\xE2\x82", R},
      {"\xE2\x82" "A", R + "A"},
      {"\xF0\x9F\x98", R},
      {"\xF0\x9F\x98!", R + "!"},
      {"\xF1\x80\x80", R},
      {"\xF1\x80\x80\xC3\xA9", R + "\xC3\xA9"},
      {"\xEE\x80", R},
      {"\xDF", R},
      {"\xE2\x82\xE2\x82\xAC", R + "\xE2\x82\xAC"},
      // Overlong forms: every byte is replaced.
      {"\xC0\x80", rep(2)},
      {"\xC1\xBF", rep(2)},
      {"\xE0\x80\x80", rep(3)},
      {"\xE0\x9F\xBF", rep(3)},
      {"\xF0\x80\x80\x80", rep(4)},
      {"\xF0\x8F\xBF\xBF", rep(4)},
      // Surrogates and values above U+10FFFF.
      {"\xED\xA0\x80", rep(3)},
      {"\xED\xBF\xBF", rep(3)},
      {"\xF4\x90\x80\x80", rep(4)},
      // Lone continuation bytes, bytes that never appear in UTF-8.
      {"\x80", R},
      {"\xBF\x80" "a", rep(2) + "a"},
      {"\xF5\x80", rep(2)},
      {"\xF8\x88\x80\x80\x80", rep(5)},
      {"\xFE\xFF", rep(2)},
      {"\xFF", R},
      {"\xF0\x9F\x98\x80\x80", "\xF0\x9F\x98\x80" + R},
      // Valid edges stay as they are.
      {"\xED\x9F\xBF", "\xED\x9F\xBF"},
      {"\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF"},
      {"a\xE2\x82\xAC" "b", "a\xE2\x82\xAC" "b"},
      {"\xC2\x80\xDF\xBF", "\xC2\x80\xDF\xBF"},
      {"", ""},
      {std::string("a\0b", 3), std::string("a\0b", 3)},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(utf8_replace_invalid(c.in), c.out) << testing::PrintToString(c.in);
    EXPECT_EQ(is_valid_utf8(c.in), c.in == c.out) << testing::PrintToString(c.in);
  }
}

// 500 pseudo-random byte strings, made by the same generator in Python:
//   M = 2**64; x = 42
//   def nxt(): global x; x = (x * 6364136223846793005 + 1442695040888963407) % M; return x
//   tricky = [0x80, 0xBF, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xA0, 0x9F, 0x8F, 0x90, ord('a')]
//   for i in range(500):
//       n = nxt() >> 59
//       bs = bytes(tricky[(nxt() >> 33) % 15] if (nxt() >> 63) else (nxt() >> 56) for _ in range(n))
//       out = bs.decode('utf-8', 'replace').encode('utf-8')
// Python 3.11.7 gives 16,700 output bytes in all, 4,515 U+FFFD, and FNV-1a 0x6fba978a88018644 over
// each output followed by b"\n" (h = 0xcbf29ce484222325; h = ((h ^ c) * 0x100000001b3) % M).
TEST(Utf8Replace, MatchesPythonOnPseudoRandomBytes) {
  Lcg g{42};
  auto next = [&g] { return g.next(); };
  const unsigned char tricky[] = {0x80, 0xBF, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xA0, 0x9F, 0x8F, 0x90, 'a'};
  std::uint64_t h = kFnvStart;
  std::size_t total = 0, replacements = 0;
  for (int i = 0; i < 500; ++i) {
    std::uint64_t n = next() >> 59;
    std::string bytes;
    for (std::uint64_t k = 0; k < n; ++k) {
      bool pick_tricky = next() >> 63;
      bytes += static_cast<char>(pick_tricky ? tricky[(next() >> 33) % 15] : next() >> 56);
    }
    std::string out = utf8_replace_invalid(bytes);
    ASSERT_TRUE(is_valid_utf8(out));
    total += out.size();
    for (std::size_t p = out.find(R); p != std::string::npos; p = out.find(R, p + 3)) ++replacements;
    h = fnv1a(h, out + "\n");
  }
  EXPECT_EQ(total, 16700u);
  EXPECT_EQ(replacements, 4515u);
  EXPECT_EQ(h, 0x6fba978a88018644ull);
}

TEST(Utf8Replace, ValidTextIsUnchanged) {
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    std::string s = random_unicode(rng, rng() % 50);
    EXPECT_TRUE(is_valid_utf8(s));
    EXPECT_EQ(utf8_replace_invalid(s), s);
  }
  for (int i = 0; i < 200; ++i) EXPECT_TRUE(is_valid_utf8(utf8_replace_invalid(random_bytes(rng, rng() % 50))));
}

TEST(Utf8, EncodeAndDecodeBoundaries) {
  struct Case {
    char32_t cp;
    std::string utf8;
  };
  const Case cases[] = {{0x0, std::string(1, '\0')}, {0x7F, "\x7F"},        {0x80, "\xC2\x80"},
                        {0x7FF, "\xDF\xBF"},         {0x800, "\xE0\xA0\x80"}, {0xD7FF, "\xED\x9F\xBF"},
                        {0xE000, "\xEE\x80\x80"},     {0xFFFF, "\xEF\xBF\xBF"}, {0x10000, "\xF0\x90\x80\x80"},
                        {0x1F643, "\xF0\x9F\x99\x83"}, {0x10FFFF, "\xF4\x8F\xBF\xBF"}};
  for (const auto& c : cases) {
    std::string s;
    append_utf8(s, c.cp);
    const auto code = static_cast<std::uint32_t>(c.cp);
    EXPECT_EQ(s, c.utf8) << std::hex << code;
    char32_t cp = 0;
    const auto* p = reinterpret_cast<const unsigned char*>(c.utf8.data());
    EXPECT_EQ(decode_utf8(p, p + c.utf8.size(), cp), static_cast<int>(c.utf8.size()));
    EXPECT_EQ(static_cast<std::uint32_t>(cp), code);
    // Truncated: never reads past end, never succeeds.
    if (c.utf8.size() > 1) {
      EXPECT_EQ(decode_utf8(p, p + c.utf8.size() - 1, cp), 0) << std::hex << code;
    }
  }
  for (const char* bad : {"\xC0\x80", "\xE0\x80\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\x80", "\xFF"}) {
    char32_t cp;
    const auto* p = reinterpret_cast<const unsigned char*>(bad);
    EXPECT_EQ(decode_utf8(p, p + std::strlen(bad), cp), 0) << testing::PrintToString(std::string(bad));
  }
}

TEST(Utf8, CharClasses) {
  // Letters: Lu Ll Lt Lm Lo.
  for (char32_t cp : {U'a', U'Z', U'é', U'ß', U'Ω', U'ж', U'ǅ', U'ʰ', U'中', U'あ', U'ا'})
    EXPECT_EQ(char_class(cp), CharClass::letter) << std::hex << static_cast<std::uint32_t>(cp);
  // Numbers: Nd Nl No.
  for (char32_t cp : {U'0', U'9', U'٣', U'Ⅻ', U'½', U'²'})
    EXPECT_EQ(char_class(cp), CharClass::number) << std::hex << static_cast<std::uint32_t>(cp);
  // White_Space.
  for (char32_t cp : {0x09u, 0x0Au, 0x0Bu, 0x0Cu, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x1680u, 0x2000u, 0x200Au, 0x2028u, 0x2029u,
                      0x202Fu, 0x205Fu, 0x3000u})
    EXPECT_EQ(char_class(cp), CharClass::space) << std::hex << static_cast<std::uint32_t>(cp);
  // Everything else: punctuation, symbols, marks, format characters, controls.
  for (char32_t cp : {0x21u, 0x27u, 0x2Eu, 0x24u, 0x301u, 0x200Bu, 0x1Cu, 0x0u, 0x7Fu, 0x1F643u, 0xFFFDu, 0x10FFFFu})
    EXPECT_EQ(char_class(cp), CharClass::other) << std::hex << static_cast<std::uint32_t>(cp);
}

TEST(Utf8, CharAtTreatsIllFormedBytesAsOneOther) {
  const std::string s = "\xFF" "a\xE2\x82" "b\xE2\x82\xAC";
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  CharInfo c = char_at(p, end);
  EXPECT_EQ(c.cls, CharClass::other);
  EXPECT_EQ(c.len, 1);
  EXPECT_EQ(char_at(p + 1, end).cls, CharClass::letter);
  c = char_at(p + 2, end);  // E2 82 followed by 'b': ill-formed, one byte
  EXPECT_EQ(c.cls, CharClass::other);
  EXPECT_EQ(c.len, 1);
  c = char_at(p + 5, end);  // the euro sign, a symbol
  EXPECT_EQ(c.cls, CharClass::other);
  EXPECT_EQ(c.len, 3);
}

// GPT-2's bytes_to_unicode(); expected values from the Python original.
TEST(Gpt2ByteMap, KnownValuesAndRoundTrip) {
  const auto& map = byte_to_unicode();
  EXPECT_EQ(map[0], 0x100u);
  EXPECT_EQ(map['\t'], 0x109u);
  EXPECT_EQ(map['\n'], 0x10Au);  // Ċ
  EXPECT_EQ(map[' '], 0x120u);   // Ġ
  EXPECT_EQ(map['!'], static_cast<char32_t>('!'));
  EXPECT_EQ(map['~'], static_cast<char32_t>('~'));
  EXPECT_EQ(map[0x7F], 0x121u);
  EXPECT_EQ(map[0x80], 0x122u);
  EXPECT_EQ(map[0xA0], 0x142u);
  EXPECT_EQ(map[0xA1], 0xA1u);
  EXPECT_EQ(map[0xAC], 0xACu);
  EXPECT_EQ(map[0xAD], 0x143u);
  EXPECT_EQ(map[0xAE], 0xAEu);
  EXPECT_EQ(map[0xFF], 0xFFu);

  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  std::string back;
  ASSERT_TRUE(gpt2_text_to_bytes(bytes_to_gpt2_text(all), back));
  EXPECT_EQ(back, all);
  EXPECT_EQ(bytes_to_gpt2_text(" the\n"), "\xC4\xA0the\xC4\x8A");  // "Ġthe" + "Ċ"

  std::string out;
  EXPECT_FALSE(gpt2_text_to_bytes("a b", out));          // U+0020 is not in the map's image
  EXPECT_FALSE(gpt2_text_to_bytes("\xE4\xB8\xAD", out));  // U+4E2D
  EXPECT_FALSE(gpt2_text_to_bytes("\xFF", out));          // ill-formed UTF-8
  EXPECT_TRUE(gpt2_text_to_bytes("", out));
  EXPECT_EQ(out, "");
}
