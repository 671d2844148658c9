// A byte-level BPE vocabulary and its files.
//
// In memory, a token is its byte string; ids index `tokens`. `merges` lists (left, right) id
// pairs in merge order; the rank of a merge is its index. Special tokens are ordinary vocabulary
// entries whose ids are listed in `special_ids`; the encoder matches them in the text before
// pre-tokenization.
//
// On disk (a tokenizer directory), the GPT-2 formats, which tiktoken, Hugging Face and CS336 read:
//   vocab.json           {"token": id, ...}, token bytes written through GPT-2's byte→unicode map
//   merges.txt           "left right" per line in merge order (a "#version" first line is allowed)
//   special_tokens.json  ["<|endoftext|>", ...]  (optional; the special tokens as UTF-8 text)
//   tokenizer.json       Hugging Face tokenizers' single-file format (written, not read)
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace scratchlm {

struct Vocab {
  std::vector<std::string> tokens;                              // id → bytes
  std::vector<std::pair<std::int32_t, std::int32_t>> merges;    // in merge order
  std::vector<std::int32_t> special_ids;                        // ids of the special tokens

  std::int64_t size() const { return static_cast<std::int64_t>(tokens.size()); }
  // bytes → id for every token (built on demand by callers that need it).
  std::unordered_map<std::string, std::int32_t> index() const;
  // Adds a special token (appending it to the vocabulary if its bytes are not a token yet).
  void add_special(const std::string& text);
};

// GPT-2's reversible byte → printable character map (space → 'Ġ', newline → 'Ċ', ...).
const std::array<char32_t, 256>& byte_to_unicode();
// Token bytes → their GPT-2 printable form (UTF-8).
std::string bytes_to_gpt2_text(std::string_view bytes);
// GPT-2 printable form → bytes; false if a character is outside the map.
bool gpt2_text_to_bytes(std::string_view text, std::string& bytes);

// Reads DIR/vocab.json, DIR/merges.txt and, if present, DIR/special_tokens.json; or, when DIR has
// no vocab.json, a byte-level BPE DIR/tokenizer.json (Hugging Face; its added tokens marked
// special become special tokens). Throws Error naming the file (and line) on malformed input: bad
// JSON, duplicate or missing ids, a merge with an unknown part or whose result is not in the
// vocabulary.
Vocab load_tokenizer_dir(const std::string& dir);

// Writes vocab.json, merges.txt, special_tokens.json and tokenizer.json into dir (created if
// needed), each under a temporary name renamed into place.
void save_tokenizer_dir(const std::string& dir, const Vocab& vocab);

// The Hugging Face tokenizers' tokenizer.json text for this vocabulary.
std::string hf_tokenizer_json(const Vocab& vocab);

// A 64-bit fingerprint of the vocabulary, merges and special tokens, as 16 hex digits (token files
// record it so that a file can be matched with the tokenizer that wrote it).
std::string vocab_fingerprint(const Vocab& vocab);

}  // namespace scratchlm
