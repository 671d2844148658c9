// Token files: uint16 up to 65,536 tokens and uint32 above, the sidecar, and the checks that keep
// a truncated or foreign file from being read as tokens.
#include "tokenizer/token_file.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "test_util.h"
#include "util/error.h"

using namespace scratchlm;
using namespace scratchlm::test;

namespace {

// The Error message of f(), or "" if it did not throw one.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(TokenFile, DtypeBoundary) {
  EXPECT_EQ(dtype_for_vocab(256), TokenDtype::uint16);
  EXPECT_EQ(dtype_for_vocab(65536), TokenDtype::uint16);  // ids 0..65535
  EXPECT_EQ(dtype_for_vocab(65537), TokenDtype::uint32);
  EXPECT_STREQ(dtype_name(TokenDtype::uint16), "uint16");
  EXPECT_STREQ(dtype_name(TokenDtype::uint32), "uint32");
  EXPECT_EQ(sidecar_path("a/b.bin"), "a/b.bin.json");
}

TEST(TokenFile, WriteAndReadBothDtypes) {
  TempDir dir;
  const std::vector<std::uint32_t> narrow = {0, 1, 255, 256, 65535, 7};
  const std::vector<std::uint32_t> wide = {0, 65535, 65536, 100000, 0xFFFFFFFFu};
  for (auto [dtype, ids, width] : {std::tuple{TokenDtype::uint16, narrow, 2u}, std::tuple{TokenDtype::uint32, wide, 4u}}) {
    const std::string path = dir.file(std::string(dtype_name(dtype)) + ".bin");
    TokenFileWriter writer(path, dtype);
    writer.append(ids.data(), 2);
    EXPECT_FALSE(std::filesystem::exists(path)) << "visible under its final name before commit";
    writer.append(ids.data() + 2, ids.size() - 2);
    EXPECT_EQ(writer.token_count(), static_cast<std::int64_t>(ids.size()));
    writer.commit({{"source_bytes", 123}});
    EXPECT_EQ(std::filesystem::file_size(path), width * ids.size());
    EXPECT_EQ(read_token_file(path), ids);
    auto meta = nlohmann::json::parse(read_bytes(sidecar_path(path)));
    EXPECT_EQ(meta["dtype"], dtype_name(dtype));
    EXPECT_EQ(meta["token_count"], ids.size());
    EXPECT_EQ(meta["source_bytes"], 123);
    EXPECT_EQ(meta["format"], "scratchlm-tokens");
    // Little-endian on disk.
    std::string raw = read_bytes(path);
    EXPECT_EQ(static_cast<unsigned char>(raw[width * 2]), ids[2] & 0xFF);
  }
}

TEST(TokenFile, UncommittedWriterLeavesNothing) {
  TempDir dir;
  {
    TokenFileWriter writer(dir.file("t.bin"), TokenDtype::uint16);
    std::uint32_t id = 5;
    writer.append(&id, 1);
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(TokenFile, BadFilesAreRejectedNamingThem) {
  TempDir dir;
  const std::string path = dir.file("t.bin");
  write_bytes(path, std::string(6, '\0'));
  EXPECT_NE(error_of([&] { read_token_file(path); }).find(path), std::string::npos);  // no sidecar

  auto with_sidecar = [&](const std::string& sidecar) {
    write_bytes(sidecar_path(path), sidecar);
    return error_of([&] { read_token_file(path); });
  };
  EXPECT_EQ(with_sidecar(R"({"dtype": "uint16", "token_count": 3})"), "");
  EXPECT_NE(with_sidecar(R"({"dtype": "uint16", "token_count": 4})").find(path), std::string::npos);  // truncated
  EXPECT_NE(with_sidecar(R"({"dtype": "uint32", "token_count": 3})").find(path), std::string::npos);
  EXPECT_NE(with_sidecar(R"({"dtype": "int8", "token_count": 6})").find(sidecar_path(path)), std::string::npos);
  EXPECT_NE(with_sidecar(R"({"dtype": "uint16"})").find(sidecar_path(path)), std::string::npos);
  EXPECT_NE(with_sidecar(R"({"dtype": "uint16", "token_count": "3"})").find(sidecar_path(path)), std::string::npos);
  EXPECT_NE(with_sidecar("{not json").find(sidecar_path(path)), std::string::npos);
  EXPECT_NE(with_sidecar(R"({"dtype": "uint16", "token_count": -1})").find(path), std::string::npos);
}
