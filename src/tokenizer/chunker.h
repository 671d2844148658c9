// Streaming a corpus in chunks that can be processed independently and in parallel.
//
// A chunk is cut only at a position where no pre-token (and no special token) can span the cut,
// so pre-tokenizing the chunks one by one gives exactly the pieces of the whole file:
//   - "x\ny": a newline between two ASCII non-space characters (the newline is a piece of its own,
//     and nothing joins across it), or
//   - "a b": a space between two ASCII letters (the letters' run ends at the space, and the space
//     starts the next word's piece),
// and never inside an occurrence of a special token. Memory is bounded by the chunk size unless a
// file has a stretch longer than that with no such position (then the chunk grows to hold it).
// A chunk never spans two files.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/special_tokens.h"
#include "util/files.h"

namespace scratchlm {

// The last safe cut in text (0 < p < text.size()), searched backwards; 0 if there is none. Text
// may be only the start of a file: a cut too close to its end to rule out a special token
// running past the end is not taken.
std::size_t find_safe_cut(std::string_view text, const std::vector<std::string>& specials);

class ChunkReader {
 public:
  ChunkReader(std::vector<std::string> paths, std::size_t chunk_bytes, std::vector<std::string> specials);

  // The next chunk into `chunk`; false once every file is done. `file_index` says which file.
  bool next(std::string& chunk, std::size_t& file_index);

  std::int64_t total_bytes() const { return total_bytes_; }
  std::int64_t bytes_done() const { return bytes_done_; }

 private:
  std::vector<std::string> paths_;
  std::size_t chunk_bytes_;
  std::vector<std::string> specials_;
  std::int64_t total_bytes_ = 0, bytes_done_ = 0;
  std::size_t file_index_ = 0;
  std::unique_ptr<FileReader> reader_;
  bool file_eof_ = false;
  std::string buffer_;  // read from the current file, not yet handed out
};

}  // namespace scratchlm
