// Token files: raw little-endian unsigned integers, one per token, no header, so that
// numpy.memmap(path, dtype=np.uint16) reads them; uint16 while the vocabulary has at most 65,536
// tokens, uint32 above. Beside each one, "<path>.json" records what it is:
//   {"format": "scratchlm-tokens", "version": 1, "dtype": "uint16", "token_count": N,
//    "source_bytes": M, "sources": [...], "tokenizer": {"dir", "vocab_size", "fingerprint",
//    "special_tokens"}}
// Both are written under temporary names and renamed at the end (data first, then the sidecar),
// and readers check the data's size against token_count, so an interrupted run is never mistaken
// for a complete file.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "util/files.h"

namespace scratchlm {

enum class TokenDtype { uint16, uint32 };

TokenDtype dtype_for_vocab(std::int64_t vocab_size);
const char* dtype_name(TokenDtype dtype);
std::string sidecar_path(const std::string& token_file);

class TokenFileWriter {
 public:
  TokenFileWriter(const std::string& path, TokenDtype dtype);
  void append(const std::uint32_t* ids, std::size_t n);
  std::int64_t token_count() const { return count_; }
  // Renames the data into place and writes the sidecar with `info` plus dtype and token_count.
  void commit(nlohmann::json info);

 private:
  std::string path_;
  TokenDtype dtype_;
  AtomicFile file_;
  std::int64_t count_ = 0;
  std::vector<std::uint16_t> narrow_;
};

struct TokenFileMeta {
  TokenDtype dtype;
  std::int64_t token_count;
  nlohmann::json sidecar;
};
// Reads and checks "<path>.json" (and that the data's size matches it); throws Error naming the file.
TokenFileMeta read_token_sidecar(const std::string& path);

// Reads a token file as ids; dtype from its sidecar. Throws Error naming the file if the sidecar
// is missing or malformed or the size does not match.
std::vector<std::uint32_t> read_token_file(const std::string& path);

}  // namespace scratchlm
