// Byte-level BPE training with the CS336 semantics:
//   1. split the text on the special tokens (they are never merged into or across, never counted);
//   2. pre-tokenize each piece with the GPT-2 pattern (pretokenize.h) and count distinct pieces;
//   3. start from the 256 single bytes and repeatedly merge the most frequent adjacent pair within
//      a piece, ties broken by the lexicographically greatest pair compared as (bytes, bytes);
//   4. vocabulary = 256 bytes (ids 0..255 = byte values), then the merges in order, then the
//      special tokens; vocab_size counts all three.
//
// Step 2 streams the files in chunks (chunker.h) over `threads` threads, so memory grows with the
// number of distinct pre-tokens, not with the corpus. Step 3 keeps pair counts and, for each pair,
// the pieces that contain it, and updates both incrementally after each merge: only the pieces
// holding the merged pair are touched. The next pair comes from a max-heap with lazy deletion.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/vocab.h"
#include "util/hash_map.h"

namespace scratchlm {

struct BpeTrainOptions {
  std::int64_t vocab_size = 0;
  std::vector<std::string> special_tokens;
  int threads = 1;
  std::size_t chunk_bytes = std::size_t{4} << 20;
  bool progress = false;  // progress bars on stderr
};

struct BpeTrainStats {
  double pretokenize_seconds = 0, merge_seconds = 0;
  std::int64_t input_bytes = 0;
  std::int64_t pretokens = 0;           // pieces counted (with repetition)
  std::int64_t distinct_pretokens = 0;
  std::int64_t merges = 0;
};

using PretokenCounts = StringMap<std::int64_t>;

// Adds the pre-tokens of text (split on specials first) to counts.
void count_pretokens(std::string_view text, const std::vector<std::string>& specials, PretokenCounts& counts);

// Steps 3-4 from pre-token counts. Stops early (with a smaller vocabulary) if no pair is left.
Vocab train_bpe_from_counts(const PretokenCounts& counts, const BpeTrainOptions& options, BpeTrainStats* stats = nullptr);

// The whole training on files. Throws Error for unreadable files or a vocab_size that is too small.
Vocab train_bpe(const std::vector<std::string>& files, const BpeTrainOptions& options, BpeTrainStats* stats = nullptr);

}  // namespace scratchlm
