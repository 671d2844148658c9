// libFuzzer target for the tokenizer's byte-level invariants on arbitrary input bytes:
//   - the pre-tokens concatenate to the input;
//   - cutting at find_safe_cut and pre-tokenizing both sides gives the same pieces;
//   - decode_bytes(encode(x)) == x with the GPT-2 vocabulary, special tokens recognised;
//   - utf8_replace_invalid always returns well-formed UTF-8, unchanged when the input was valid.
// Build and run with scripts/fuzz.sh; any failed invariant aborts with the input saved.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "tokenizer/chunker.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"
#include "util/error.h"

using namespace scratchlm;

namespace {
Tokenizer& gpt2() {
  static Tokenizer tokenizer = [] {
    const char* dir = std::getenv("SCRATCHLM_FUZZ_TOKENIZER");
    Vocab vocab = load_tokenizer_dir(dir ? dir : "tests/data/gpt2");
    vocab.add_special("<|endoftext|>");
    return Tokenizer(std::move(vocab));
  }();
  return tokenizer;
}

std::vector<std::string> pieces(std::string_view s) {
  std::vector<std::string> out;
  pretokenize(s, [&](std::string_view p) { out.emplace_back(p); });
  return out;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);

  std::vector<std::string> whole = pieces(text);
  std::string joined;
  for (const auto& p : whole) joined += p;
  SLM_CHECK(joined == text, "pre-tokens do not concatenate to the input");

  std::size_t cut = find_safe_cut(text, {"<|endoftext|>"});
  if (cut > 0) {
    std::vector<std::string> split = pieces(text.substr(0, cut));
    std::vector<std::string> right = pieces(text.substr(cut));
    split.insert(split.end(), right.begin(), right.end());
    SLM_CHECK(split == whole, "pre-tokenization differs across the safe cut at ", cut);
  }

  std::vector<std::uint32_t> ids = gpt2().encode(text);
  SLM_CHECK(gpt2().decode_bytes(ids) == text, "decode(encode(x)) != x");

  std::string replaced = utf8_replace_invalid(text);
  SLM_CHECK(is_valid_utf8(replaced), "replacement output is not UTF-8");
  if (is_valid_utf8(text)) SLM_CHECK(replaced == text, "valid UTF-8 changed by replacement");
  return 0;
}
