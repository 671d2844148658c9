#include "tokenizer/token_file.h"

#include <bit>
#include <cstring>
#include <filesystem>

#include "util/error.h"
#include "util/json_file.h"

namespace scratchlm {

static_assert(std::endian::native == std::endian::little, "token files are little-endian; add byte swapping here");

TokenDtype dtype_for_vocab(std::int64_t vocab_size) {
  return vocab_size <= 65536 ? TokenDtype::uint16 : TokenDtype::uint32;
}

const char* dtype_name(TokenDtype dtype) { return dtype == TokenDtype::uint16 ? "uint16" : "uint32"; }

std::string sidecar_path(const std::string& token_file) { return token_file + ".json"; }

TokenFileWriter::TokenFileWriter(const std::string& path, TokenDtype dtype) : path_(path), dtype_(dtype), file_(path) {}

void TokenFileWriter::append(const std::uint32_t* ids, std::size_t n) {
  if (dtype_ == TokenDtype::uint32) {
    file_.write(ids, n * sizeof(std::uint32_t));
  } else {
    narrow_.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      SLM_CHECK(ids[i] <= 0xFFFF, "id ", ids[i], " does not fit uint16");
      narrow_[i] = static_cast<std::uint16_t>(ids[i]);
    }
    file_.write(narrow_.data(), n * sizeof(std::uint16_t));
  }
  count_ += static_cast<std::int64_t>(n);
}

void TokenFileWriter::commit(nlohmann::json info) {
  nlohmann::json sidecar = {{"format", "scratchlm-tokens"}, {"version", 1}, {"dtype", dtype_name(dtype_)},
                            {"byte_order", "little"}, {"token_count", count_}};
  for (auto& [k, v] : info.items()) sidecar[k] = v;
  file_.commit();
  write_file_atomic(sidecar_path(path_), sidecar.dump(2) + "\n");
}

TokenFileMeta read_token_sidecar(const std::string& path) {
  const std::string meta_path = sidecar_path(path);
  if (!std::filesystem::exists(meta_path))
    fail(path, ": no sidecar ", meta_path, " saying its dtype (token files are written by `scratchlm tokenize`)");
  const nlohmann::json meta = read_json_file(meta_path);
  if (!meta.is_object()) fail(meta_path, ": not a JSON object");
  std::string dtype = meta.value("dtype", "");
  if (dtype != "uint16" && dtype != "uint32") fail(meta_path, ": \"dtype\" must be \"uint16\" or \"uint32\"");
  if (!meta.contains("token_count") || !meta["token_count"].is_number_integer())
    fail(meta_path, ": \"token_count\" is missing");
  TokenFileMeta out{dtype == "uint16" ? TokenDtype::uint16 : TokenDtype::uint32, meta["token_count"].get<std::int64_t>(),
                    meta};
  const std::int64_t width = out.dtype == TokenDtype::uint16 ? 2 : 4;
  const std::int64_t bytes = file_size(path);
  if (bytes != out.token_count * width)
    fail(path, ": holds ", bytes, " bytes but its sidecar says ", out.token_count, " ", dtype, " tokens (",
         out.token_count * width, " bytes): truncated or not the file the sidecar describes");
  return out;
}

std::vector<std::uint32_t> read_token_file(const std::string& path) {
  const TokenFileMeta meta = read_token_sidecar(path);
  const std::int64_t count = meta.token_count;
  const std::size_t width = meta.dtype == TokenDtype::uint16 ? 2 : 4;
  std::string data = read_file(path);
  if (static_cast<std::int64_t>(data.size()) != count * static_cast<std::int64_t>(width))
    fail(path, ": changed size while being read");
  std::vector<std::uint32_t> ids(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (width == 2) {
      std::uint16_t v;
      std::memcpy(&v, data.data() + 2 * i, 2);
      ids[i] = v;
    } else {
      std::memcpy(&ids[i], data.data() + 4 * i, 4);
    }
  }
  return ids;
}

}  // namespace scratchlm
