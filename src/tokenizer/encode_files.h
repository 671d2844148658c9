// Encoding whole files in parallel while keeping document order: the files are read in chunks
// (chunker.h), each worker thread encodes a chunk with its own Tokenizer copy (own cache), and
// results are handed to the sink strictly in order. A finished chunk that is not next in line is
// kept aside while its worker goes on with another chunk; at most 2 × threads chunks are in
// memory at once, so memory is constant in the input size.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace scratchlm {

struct EncodeFilesOptions {
  int threads = 1;
  std::size_t chunk_bytes = std::size_t{1} << 20;
  bool progress = false;
};

struct EncodeStats {
  std::int64_t bytes = 0, tokens = 0;
  double seconds = 0;
};

using TokenSink = std::function<void(const std::vector<std::uint32_t>& ids)>;

EncodeStats encode_files(const Tokenizer& tokenizer, const std::vector<std::string>& files,
                         const EncodeFilesOptions& options, const TokenSink& sink);

}  // namespace scratchlm
