// Unicode helpers for the byte-level tokenizer: strict UTF-8 decoding, the character classes the
// GPT-2 pre-tokenizer needs (\p{L}, \p{N}, \s, everything else), and UTF-8 → text conversion that
// replaces ill-formed sequences with U+FFFD exactly as Python's bytes.decode("utf-8", "replace").
//
// Classes come from Unicode's general categories (utf8proc's tables, loaded once into a flat
// table): letter = Lu Ll Lt Lm Lo, number = Nd Nl No, space = the White_Space property (what \s
// means in tiktoken's regex engine). A byte that is not part of a well-formed UTF-8 sequence is
// one character of class `other` (the same class as punctuation); see docs/tokenizer.md.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace scratchlm {

enum class CharClass : std::uint8_t { other, letter, number, space };

// Class of a code point (0 ≤ cp ≤ 0x10FFFF).
CharClass char_class(char32_t cp);

// Decodes one well-formed UTF-8 character at p (p < end). Returns its length in bytes (1–4) and
// sets cp, or returns 0 if the bytes at p do not start a well-formed sequence (overlong forms,
// surrogates, values above U+10FFFF and truncated sequences are all ill-formed).
int decode_utf8(const unsigned char* p, const unsigned char* end, char32_t& cp);

// Appends cp as UTF-8.
void append_utf8(std::string& out, char32_t cp);

// Bytes → valid UTF-8, each maximal ill-formed subpart replaced by U+FFFD (Python's "replace").
std::string utf8_replace_invalid(std::string_view bytes);

// True if the whole string is well-formed UTF-8.
bool is_valid_utf8(std::string_view bytes);

// Class of the character starting at p and its length (an ill-formed byte: `other`, length 1).
struct CharInfo {
  CharClass cls;
  int len;
};
CharInfo char_at(const unsigned char* p, const unsigned char* end);

}  // namespace scratchlm
