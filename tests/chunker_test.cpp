// Chunked processing must equal whole-text processing: pre-tokens across ChunkReader's cuts, and
// encode_files' ids for any thread count.
#include <gtest/gtest.h>

#include <random>

#include "test_util.h"
#include "tokenizer/chunker.h"
#include "tokenizer/encode_files.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

using namespace scratchlm;
using namespace scratchlm::test;

namespace {

// Text made of words, spaces, newlines, special tokens and multibyte characters, so that safe
// cuts are common but not everywhere.
std::string mixed_text(std::mt19937& rng, std::size_t words) {
  static const std::vector<std::string> parts = {"the", " cat", "  ", "\n", "\n\n", "x\ny", "<|endoftext|>",
                                                 "héllo", " 🙃", "123", " 45", "it's", "\t", "a b", "!!", " ",
                                                 "\xff\xfe", "日本語", "<|endo", "ftext|>"};
  std::string out;
  for (std::size_t i = 0; i < words; ++i) out += parts[rng() % parts.size()];
  out += random_unicode(rng, 20);
  return out;
}

}  // namespace

TEST(Chunker, SafeCutKeepsPiecesAndSpecialTokens) {
  std::mt19937 rng(7);
  const std::vector<std::string> specials = {"<|endoftext|>"};
  int cuts = 0;
  for (int round = 0; round < 300; ++round) {
    std::string text = mixed_text(rng, 5 + rng() % 60);
    std::size_t cut = find_safe_cut(text, specials);
    if (cut == 0) continue;
    ++cuts;
    ASSERT_GT(cut, 0u);
    ASSERT_LT(cut, text.size());
    std::vector<std::string> split = pieces(std::string_view(text).substr(0, cut));
    std::vector<std::string> right = pieces(std::string_view(text).substr(cut));
    split.insert(split.end(), right.begin(), right.end());
    ASSERT_EQ(split, pieces(text)) << "cut at " << cut;
    // Never inside a special token.
    for (std::size_t at = text.find("<|endoftext|>"); at != std::string::npos; at = text.find("<|endoftext|>", at + 1))
      ASSERT_FALSE(at < cut && cut < at + 13) << "cut inside a special token";
  }
  EXPECT_GT(cuts, 100);  // the property was exercised
}

TEST(Chunker, ChunksConcatenateToTheFilesAndNeverSpanFiles) {
  TempDir dir;
  std::mt19937 rng(11);
  std::vector<std::string> paths, texts;
  for (int f = 0; f < 3; ++f) {
    texts.push_back(mixed_text(rng, 400));
    paths.push_back(dir.file("f" + std::to_string(f) + ".txt"));
    write_bytes(paths.back(), texts.back());
  }
  write_bytes(dir.file("empty.txt"), "");
  paths.insert(paths.begin() + 1, dir.file("empty.txt"));
  texts.insert(texts.begin() + 1, "");
  for (std::size_t chunk_bytes : {7u, 64u, 1000u, 1u << 20}) {
    ChunkReader reader(paths, chunk_bytes, {"<|endoftext|>"});
    std::vector<std::string> rebuilt(paths.size());
    std::string chunk;
    std::size_t file_index;
    while (reader.next(chunk, file_index)) {
      ASSERT_LT(file_index, paths.size());
      rebuilt[file_index] += chunk;
    }
    EXPECT_EQ(rebuilt, texts) << "chunk_bytes " << chunk_bytes;
    EXPECT_EQ(reader.bytes_done(), reader.total_bytes());
  }
}

TEST(Chunker, PiecesOfChunksEqualPiecesOfTheWholeFile) {
  TempDir dir;
  std::mt19937 rng(13);
  std::string text = mixed_text(rng, 3000);
  write_bytes(dir.file("t.txt"), text);
  for (std::size_t chunk_bytes : {7u, 64u, 1000u}) {
    ChunkReader reader({dir.file("t.txt")}, chunk_bytes, {"<|endoftext|>"});
    std::vector<std::string> got;
    std::string chunk;
    std::size_t file_index;
    while (reader.next(chunk, file_index)) {
      auto p = pieces(chunk);
      got.insert(got.end(), p.begin(), p.end());
    }
    EXPECT_EQ(got, pieces(text)) << "chunk_bytes " << chunk_bytes;
  }
}

TEST(Chunker, MissingFileIsAnError) {
  EXPECT_THROW(ChunkReader({"/nonexistent/scratchlm-test.txt"}, 1024, {}), Error);
}

TEST(EncodeFiles, SameIdsForAnyThreadCountAndChunkSize) {
  TempDir dir;
  std::mt19937 rng(17);
  std::vector<std::string> paths;
  std::string all;
  for (int f = 0; f < 2; ++f) {
    std::string text = mixed_text(rng, 2000);
    paths.push_back(dir.file("e" + std::to_string(f) + ".txt"));
    write_bytes(paths.back(), text);
    all += text;
  }
  Vocab vocab = gpt2_vocab();
  vocab.add_special("<|endoftext|>");
  Tokenizer tokenizer(vocab);
  // Files are encoded independently: the expected ids are each file's, concatenated.
  std::vector<std::uint32_t> expected;
  for (const auto& p : paths) {
    Tokenizer t = tokenizer;
    t.encode(read_bytes(p), expected);
  }
  for (int threads = 1; threads <= 4; ++threads) {
    for (std::size_t chunk_bytes : {64u, 4096u}) {
      std::vector<std::uint32_t> got;
      EncodeStats stats = encode_files(tokenizer, paths, {.threads = threads, .chunk_bytes = chunk_bytes, .progress = false},
                                       [&](const std::vector<std::uint32_t>& ids) { got.insert(got.end(), ids.begin(), ids.end()); });
      EXPECT_EQ(got, expected) << threads << " threads, chunk " << chunk_bytes;
      EXPECT_EQ(stats.tokens, static_cast<std::int64_t>(expected.size()));
      EXPECT_EQ(stats.bytes, static_cast<std::int64_t>(all.size()));
    }
  }
}

TEST(EncodeFiles, SinkErrorStopsAllThreads) {
  TempDir dir;
  std::mt19937 rng(19);
  write_bytes(dir.file("s.txt"), mixed_text(rng, 5000));
  Tokenizer tokenizer(gpt2_vocab());
  int calls = 0;
  EXPECT_THROW(encode_files(tokenizer, {dir.file("s.txt")}, {.threads = 3, .chunk_bytes = 256, .progress = false},
                            [&](const std::vector<std::uint32_t>&) {
                              if (++calls == 3) fail("disk full");
                            }),
               Error);
}
