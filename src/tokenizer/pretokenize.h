// The GPT-2 pre-tokenizer: splits text into the pieces matched by
//
//   '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// written as a hand-made scanner instead of a regex engine (same result, several times faster).
// At each position the alternatives are tried in the pattern's order:
//   1. an apostrophe contraction ('s 'd 'm 't 'll 've 're; lower case only, as in GPT-2);
//   2-4. an optional U+0020 space followed by a run of letters, of numbers, or of "other"
//        characters (neither space, letter nor number);
//   5. a run of whitespace not followed by a non-space: if the run reaches the end of the text it
//      is taken whole, otherwise its last character is left for the next piece (so " word"
//      keeps its space) — unless the run is a single character;
//   6. that single whitespace character.
// Ill-formed UTF-8 bytes are characters of class `other`, one byte each (docs/tokenizer.md).
#pragma once

#include <string_view>

#include "tokenizer/unicode.h"

namespace scratchlm {

// Calls emit(std::string_view piece) for each pre-token of `text`, in order; the pieces
// concatenate to `text` exactly.
template <class Emit>
void pretokenize(std::string_view text, Emit&& emit) {
  const auto* begin = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = begin + text.size();
  const auto* p = begin;
  auto piece = [&](const unsigned char* from, const unsigned char* to) {
    emit(std::string_view(reinterpret_cast<const char*>(from), static_cast<std::size_t>(to - from)));
  };
  // End of the run of characters of class `cls` starting at q.
  auto run_end = [end](const unsigned char* q, CharClass cls) {
    while (q < end) {
      CharInfo c = char_at(q, end);
      if (c.cls != cls) break;
      q += c.len;
    }
    return q;
  };
  while (p < end) {
    // 1. Contractions.
    if (*p == '\'' && p + 1 < end) {
      unsigned char a = p[1];
      if (a == 's' || a == 'd' || a == 'm' || a == 't') {
        piece(p, p + 2);
        p += 2;
        continue;
      }
      if (p + 2 < end) {
        unsigned char b = p[2];
        if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) {
          piece(p, p + 3);
          p += 3;
          continue;
        }
      }
    }
    CharInfo c = char_at(p, end);
    // 2-4. " ?" followed by a run of letters, numbers or others.
    if (*p == ' ' && p + 1 < end) {
      CharInfo next = char_at(p + 1, end);
      if (next.cls != CharClass::space) {
        const unsigned char* q = run_end(p + 1 + next.len, next.cls);
        piece(p, q);
        p = q;
        continue;
      }
    }
    if (c.cls != CharClass::space) {
      const unsigned char* q = run_end(p + c.len, c.cls);
      piece(p, q);
      p = q;
      continue;
    }
    // 5-6. Whitespace run: remember where its last character starts.
    const unsigned char* q = p + c.len;
    const unsigned char* last = p;
    while (q < end) {
      CharInfo w = char_at(q, end);
      if (w.cls != CharClass::space) break;
      last = q;
      q += w.len;
    }
    if (q < end && last > p) q = last;  // followed by a non-space: leave the last one
    piece(p, q);
    p = q;
  }
}

}  // namespace scratchlm
