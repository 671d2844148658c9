// Encoding text to token ids and decoding ids back, with a byte-level BPE vocabulary.
//
// encode: split on the special tokens (leftmost, longest first), pre-tokenize each stretch of
// ordinary text with the GPT-2 pattern, and turn each piece into ids:
//   - a piece that is itself a token is that token (as tiktoken does, and Hugging Face with
//     "ignore_merges": true, which our tokenizer.json sets);
//   - otherwise its bytes are merged by BPE: repeatedly the adjacent pair with the lowest merge
//     rank, leftmost first, until no pair of the merge list remains.
// Results per piece are cached (a bounded cache, so memory stays constant on any input).
//
// One Tokenizer holds the cache and so is not thread-safe: give each thread its own copy (the
// shared tables are behind a shared_ptr and are not copied).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/special_tokens.h"
#include "tokenizer/vocab.h"
#include "util/hash_map.h"

namespace scratchlm {

class Tokenizer {
 public:
  // recognise_specials: whether vocab.special_ids are matched in the text (false = tiktoken's
  // encode_ordinary).
  explicit Tokenizer(Vocab vocab, bool recognise_specials = true);

  const Vocab& vocab() const { return tables_->vocab; }
  std::int64_t vocab_size() const { return tables_->vocab.size(); }
  // The special tokens matched in the text (empty if recognise_specials was false).
  const std::vector<std::string>& special_texts() const { return tables_->special_texts; }

  // Appends the ids of text to out.
  void encode(std::string_view text, std::vector<std::uint32_t>& out);
  std::vector<std::uint32_t> encode(std::string_view text) {
    std::vector<std::uint32_t> out;
    encode(text, out);
    return out;
  }
  // Appends the ids of one pre-token (no special-token matching, no pre-tokenization).
  void encode_piece(std::string_view piece, std::vector<std::uint32_t>& out);

  // The bytes of the ids (exact; may be ill-formed UTF-8). Throws Error for an id out of range.
  std::string decode_bytes(const std::uint32_t* ids, std::size_t n) const;
  std::string decode_bytes(const std::vector<std::uint32_t>& ids) const { return decode_bytes(ids.data(), ids.size()); }
  // The text of the ids, ill-formed UTF-8 replaced by U+FFFD as Python's errors="replace" does.
  std::string decode(const std::vector<std::uint32_t>& ids) const;

  // BPE of one piece without the whole-token shortcut or the cache (exposed for tests).
  void bpe_merge(std::string_view piece, std::vector<std::uint32_t>& out) const;

 private:
  struct Tables {
    Vocab vocab;
    std::uint32_t byte_ids[256];
    U64Map<std::uint64_t> merges;              // (left << 32 | right) → (rank << 32 | merged id)
    StringMap<std::uint32_t> token_ids{1024};  // bytes → id (ordinary tokens)
    std::vector<std::string> special_texts;
    SpecialMatcher specials;
    std::vector<std::uint32_t> special_ids;    // by matcher index
  };
  void bpe_merge_long(std::string_view piece, std::vector<std::uint32_t>& out) const;

  std::shared_ptr<const Tables> tables_;
  // Per-instance cache: piece → (offset, count) into cache_ids_.
  StringMap<std::uint64_t> cache_{4096};
  std::vector<std::uint32_t> cache_ids_;
};

}  // namespace scratchlm
