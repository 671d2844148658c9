#include "train/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "util/error.h"

namespace scratchlm {

TokenData::TokenData(const std::string& path, std::int64_t vocab_size) : path_(path) {
  std::int64_t width = 2;
  if (std::filesystem::exists(sidecar_path(path))) {
    const TokenFileMeta meta = read_token_sidecar(path);   // also checks the size
    dtype_ = meta.dtype;
    has_sidecar_ = true;
    width = dtype_ == TokenDtype::uint16 ? 2 : 4;
  }
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(path, ": cannot open token file: ", std::strerror(errno));
  struct stat st{};
  ::fstat(fd, &st);
  const std::int64_t bytes = st.st_size;
  if (bytes == 0 || bytes % width != 0) {
    ::close(fd);
    fail(path, ": ", bytes, " bytes is not a whole, non-zero number of ", width * 8, "-bit tokens");
  }
  count_ = bytes / width;
  mapped_bytes_ = static_cast<std::size_t>(bytes);
  void* p = ::mmap(nullptr, mapped_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail(path, ": cannot map token file: ", std::strerror(errno));
  data_ = p;
  // One pass over the ids: an id outside the vocabulary would index past the embedding table.
  std::uint32_t max_id = 0;
  std::int64_t max_at = 0;
  for (std::int64_t i = 0; i < count_; ++i) {
    const std::uint32_t id = (*this)[i];
    if (id > max_id) {
      max_id = id;
      max_at = i;
    }
  }
  if (max_id >= static_cast<std::uint64_t>(vocab_size)) {
    ::munmap(const_cast<void*>(data_), mapped_bytes_);
    data_ = nullptr;
    fail(path, ": token ", max_at, " has id ", max_id, ", outside the model's vocabulary of ", vocab_size,
         " (tokenized with another tokenizer?)");
  }
}

TokenData::TokenData(TokenData&& o) noexcept
    : path_(std::move(o.path_)),
      dtype_(o.dtype_),
      has_sidecar_(o.has_sidecar_),
      count_(o.count_),
      data_(o.data_),
      mapped_bytes_(o.mapped_bytes_) {
  o.data_ = nullptr;
}

TokenData::~TokenData() {
  if (data_) ::munmap(const_cast<void*>(data_), mapped_bytes_);
}

void sample_batch(std::int32_t* x, std::int32_t* y, const TokenData& data, std::int64_t B, std::int64_t T, Rng& rng) {
  SLM_CHECK(data.size() >= T + 1);
  const auto starts = static_cast<std::uint64_t>(data.size() - T);   // [0, n − T − 1]
  for (std::int64_t b = 0; b < B; ++b) {
    const auto s = static_cast<std::int64_t>(rng.below(starts));
    for (std::int64_t t = 0; t < T; ++t) {
      x[b * T + t] = static_cast<std::int32_t>(data[s + t]);
      y[b * T + t] = static_cast<std::int32_t>(data[s + t + 1]);
    }
  }
}

void window_batch(std::int32_t* x, std::int32_t* y, const TokenData& data, std::int64_t B, std::int64_t T,
                  std::int64_t first_window, std::int64_t count) {
  SLM_CHECK(data.size() >= T + 1);
  const std::int64_t last_start = data.size() - T - 1;
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t w = first_window + b;
    const std::int64_t s = count > 1 ? last_start * w / (count - 1) : 0;
    for (std::int64_t t = 0; t < T; ++t) {
      x[b * T + t] = static_cast<std::int32_t>(data[s + t]);
      y[b * T + t] = static_cast<std::int32_t>(data[s + t + 1]);
    }
  }
}

}  // namespace scratchlm
