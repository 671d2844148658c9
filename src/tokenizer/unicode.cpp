#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <array>
#include <memory>

namespace scratchlm {

namespace {

// The White_Space property (Unicode 15), which is what \s matches in tiktoken's regex engine.
bool is_white_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

CharClass compute_class(char32_t cp) {
  if (is_white_space(cp)) return CharClass::space;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return CharClass::letter;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return CharClass::number;
    default:
      return CharClass::other;
  }
}

constexpr char32_t kMaxCodePoint = 0x10FFFF;

// One byte per code point (1.1 MB), filled once on first use; thread-safe by static init.
const CharClass* class_table() {
  static const std::unique_ptr<CharClass[]> table = [] {
    auto t = std::make_unique<CharClass[]>(kMaxCodePoint + 1);
    for (char32_t cp = 0; cp <= kMaxCodePoint; ++cp) t[cp] = compute_class(cp);
    return t;
  }();
  return table.get();
}

// Classes of the ASCII bytes, for the fast path.
const std::array<CharClass, 128>& ascii_classes() {
  static const std::array<CharClass, 128> table = [] {
    std::array<CharClass, 128> t{};
    for (char32_t cp = 0; cp < 128; ++cp) t[cp] = compute_class(cp);
    return t;
  }();
  return table;
}

}  // namespace

CharClass char_class(char32_t cp) { return cp <= kMaxCodePoint ? class_table()[cp] : CharClass::other; }

namespace {
// What a lead byte promises (Unicode Table 3-7): the sequence length and the allowed range of the
// second byte, which rules out overlong forms, surrogates and values above U+10FFFF. Length 0: not
// a lead byte (ASCII is handled before, 80..C1 and F5..FF are never valid).
struct Lead {
  int len;
  unsigned char lo, hi;
};
Lead lead_of(unsigned char b0) {
  if (b0 >= 0xC2 && b0 <= 0xDF) return {2, 0x80, 0xBF};
  if (b0 == 0xE0) return {3, 0xA0, 0xBF};
  if (b0 == 0xED) return {3, 0x80, 0x9F};
  if (b0 >= 0xE1 && b0 <= 0xEF) return {3, 0x80, 0xBF};
  if (b0 == 0xF0) return {4, 0x90, 0xBF};
  if (b0 >= 0xF1 && b0 <= 0xF3) return {4, 0x80, 0xBF};
  if (b0 == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}
}  // namespace

int decode_utf8(const unsigned char* p, const unsigned char* end, char32_t& cp) {
  unsigned char b0 = p[0];
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  Lead lead = lead_of(b0);
  if (lead.len == 0 || end - p < lead.len || p[1] < lead.lo || p[1] > lead.hi) return 0;
  cp = b0 & (0x7F >> lead.len);  // the lead byte's payload bits
  for (int k = 1; k < lead.len; ++k) {
    if ((p[k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[k] & 0x3F);
  }
  return lead.len;
}

CharInfo char_at(const unsigned char* p, const unsigned char* end) {
  if (*p < 0x80) return {ascii_classes()[*p], 1};
  char32_t cp;
  int len = decode_utf8(p, end, cp);
  if (len == 0) return {CharClass::other, 1};
  return {class_table()[cp], len};
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Python (like the Unicode standard's "best practice") replaces each maximal subpart of an
// ill-formed sequence by one U+FFFD: a valid lead byte followed by valid continuation bytes that
// stop early counts as one subpart; any other bad byte is a subpart by itself.
std::string utf8_replace_invalid(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto* end = p + bytes.size();
  std::string out;
  out.reserve(bytes.size());
  while (p < end) {
    char32_t cp;
    int len = decode_utf8(p, end, cp);
    if (len > 0) {
      out.append(reinterpret_cast<const char*>(p), len);
      p += len;
      continue;
    }
    // Length of the maximal subpart: the lead byte plus the continuation bytes that were valid.
    Lead lead = lead_of(*p);
    int skip = 1;
    if (lead.len > 0 && p + 1 < end && p[1] >= lead.lo && p[1] <= lead.hi) {
      skip = 2;
      while (skip < lead.len && p + skip < end && (p[skip] & 0xC0) == 0x80) ++skip;
    }
    out += "\xEF\xBF\xBD";
    p += skip;
  }
  return out;
}

bool is_valid_utf8(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto* end = p + bytes.size();
  while (p < end) {
    char32_t cp;
    int len = decode_utf8(p, end, cp);
    if (len == 0) return false;
    p += len;
  }
  return true;
}

}  // namespace scratchlm
