// Training data: token files (raw little-endian uint16 or uint32, see tokenizer/token_file.h)
// memory-mapped read-only, so a corpus larger than memory trains without being loaded, and batches
// drawn as CS336's get_batch:
//   starts s_b uniform over [0, n − T − 1];  x_b = tokens[s_b .. s_b+T),  y_b = tokens[s_b+1 .. s_b+T]
// Every id is checked against the vocabulary once, when the file is opened.
#pragma once

#include <cstdint>
#include <string>

#include "tokenizer/token_file.h"
#include "util/rng.h"

namespace scratchlm {

class TokenData {
 public:
  // Maps `path`; its dtype comes from the sidecar "<path>.json", or uint16 (numpy's usual choice)
  // when there is none. Throws Error naming the file if it is missing, empty, has a size that is not
  // a whole number of tokens, or holds an id >= vocab_size.
  TokenData(const std::string& path, std::int64_t vocab_size);
  TokenData(TokenData&& other) noexcept;
  TokenData& operator=(TokenData&&) = delete;
  TokenData(const TokenData&) = delete;
  ~TokenData();

  std::int64_t size() const { return count_; }
  std::uint32_t operator[](std::int64_t i) const {
    return dtype_ == TokenDtype::uint16 ? static_cast<const std::uint16_t*>(data_)[i]
                                        : static_cast<const std::uint32_t*>(data_)[i];
  }
  const std::string& path() const { return path_; }
  TokenDtype dtype() const { return dtype_; }
  bool has_sidecar() const { return has_sidecar_; }

 private:
  std::string path_;
  TokenDtype dtype_ = TokenDtype::uint16;
  bool has_sidecar_ = false;
  std::int64_t count_ = 0;
  const void* data_ = nullptr;
  std::size_t mapped_bytes_ = 0;
};

// Fills x and y (B, T) with a random batch; needs data.size() >= T + 1.
void sample_batch(std::int32_t* x, std::int32_t* y, const TokenData& data, std::int64_t B, std::int64_t T, Rng& rng);

// The fixed evaluation windows: `count` starts spread evenly over [0, n − T − 1], the same for
// every evaluation of a run.
void window_batch(std::int32_t* x, std::int32_t* y, const TokenData& data, std::int64_t B, std::int64_t T,
                  std::int64_t first_window, std::int64_t count);

}  // namespace scratchlm
