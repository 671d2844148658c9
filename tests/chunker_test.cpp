// Chunked processing must equal whole-text processing: pre-tokens across ChunkReader's cuts,
// encode_files' ids for any thread count, and BPE training's merges for any thread count.
#include <gtest/gtest.h>

#include <random>

#include "test_util.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/chunker.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/special_tokens.h"
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

// The text's special tokens (marked "\x01" + token) and pre-tokens, in order.
void segment(std::string_view text, const std::vector<std::string>& specials, std::vector<std::string>& out) {
  SpecialMatcher matcher(specials);
  matcher.split(
      text, [&](std::string_view piece) { pretokenize(piece, [&](std::string_view p) { out.emplace_back(p); }); },
      [&](int k) { out.push_back("\x01" + specials[k]); });
}

// The segments of every chunk of the files, in order.
std::vector<std::string> segment_by_chunks(const std::vector<std::string>& files, std::size_t chunk_bytes,
                                           const std::vector<std::string>& specials) {
  ChunkReader reader(files, chunk_bytes, specials);
  std::vector<std::string> out;
  std::string chunk;
  std::size_t file_index;
  while (reader.next(chunk, file_index)) segment(chunk, specials, out);
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

TEST(Chunker, FindSafeCutPositions) {
  EXPECT_EQ(find_safe_cut("ab cd", {}), 2u);      // before the space of " cd"
  EXPECT_EQ(find_safe_cut("ab\ncd", {}), 3u);     // after the newline
  EXPECT_EQ(find_safe_cut("one two three", {}), 7u);  // the last cut
  EXPECT_EQ(find_safe_cut("abcdef", {}), 0u);
  EXPECT_EQ(find_safe_cut("ab  cd", {}), 0u);     // "  cd" splits as " ", " cd": not a safe place
  EXPECT_EQ(find_safe_cut("1 2", {}), 0u);
  EXPECT_EQ(find_safe_cut("é é", {}), 0u);
  EXPECT_EQ(find_safe_cut("", {}), 0u);
  EXPECT_EQ(find_safe_cut("a", {}), 0u);
  // Never inside a special token.
  EXPECT_EQ(find_safe_cut("x<|a b|>y", {"<|a b|>"}), 0u);
  EXPECT_EQ(find_safe_cut("ab cd<|a\nb|>y", {"<|a\nb|>"}), 2u);
}

// Files that end and start mid-word ("ab" | "cd") are pre-tokenized separately.
TEST(Chunker, FilesAreNeverJoined) {
  TempDir dir;
  write_bytes(dir.file("a"), "one two ab");
  write_bytes(dir.file("b"), "cd three");
  std::vector<std::string> expected;
  segment("one two ab", {}, expected);
  segment("cd three", {}, expected);
  for (std::size_t chunk_bytes : {3u, 5u, 100u}) EXPECT_EQ(segment_by_chunks({dir.file("a"), dir.file("b")}, chunk_bytes, {}), expected);
}

// A stretch with no safe cut (one long word) comes out whole, in a chunk that grows to hold it.
TEST(Chunker, NoSafeCutGrowsTheChunk) {
  TempDir dir;
  const std::string text = std::string(5000, 'x') + " " + std::string(5000, '!');
  write_bytes(dir.file("t"), text);
  EXPECT_EQ(segment_by_chunks({dir.file("t")}, 16, {}), pieces(text));
}

TEST(Chunker, DirectoryIsAnErrorNamingIt) {
  TempDir dir;
  try {
    ChunkReader reader({dir.path()}, 64, {});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path()), std::string::npos) << e.what();
  }
}

// BUG (src/tokenizer/chunker.cpp, find_safe_cut/inside_special): special tokens may contain spaces
// or newlines ("--special-token '<|end of text|>'"), and a chunk must never be cut inside one. The
// check only sees the bytes read so far, so when the buffer ends inside such a token, its space
// looks like a safe cut. Disabled until fixed: remove  from the two tests below.
TEST(Chunker, NeverCutsInsideSpecialTokensWithSpacesOrNewlines) {
  TempDir dir;
  {
    // The smallest case: the first 10 bytes read are "go <|end o", whose space at 8 looks safe
    // because the rest of the special token has not been read yet.
    write_bytes(dir.file("small"), "go <|end of text|> now");
    ChunkReader reader({dir.file("small")}, 10, {"<|end of text|>"});
    std::string chunk;
    std::size_t file_index;
    std::vector<std::string> chunks;
    while (reader.next(chunk, file_index)) chunks.push_back(chunk);
    for (const auto& c : chunks)
      EXPECT_TRUE(c.find("<|end") == std::string::npos || c.find("<|end of text|>") != std::string::npos)
          << "a chunk holds part of the special token: " << testing::PrintToString(chunks);
  }
  const std::vector<std::string> specials = {"<|end of text|>", "[doc\nbreak]"};
  static const std::vector<std::string> parts = {"the", " cat", "  ", "\n", "x\ny", "a b", "<|end of text|>",
                                                 "[doc\nbreak]", "héllo", "123", " ", "!!"};
  std::mt19937 rng(23);
  std::string text;
  for (int i = 0; i < 3000; ++i) text += parts[rng() % parts.size()];
  write_bytes(dir.file("t"), text);
  std::vector<std::string> whole;
  segment(text, specials, whole);
  for (std::size_t chunk_bytes = 5; chunk_bytes <= 40; ++chunk_bytes)
    ASSERT_EQ(segment_by_chunks({dir.file("t")}, chunk_bytes, specials), whole) << "chunk_bytes " << chunk_bytes;
}

// The same bug seen through encode_files: with the default 1 MiB chunks it strikes wherever such a
// special token straddles a chunk's end, and the token is then encoded as ordinary text.
TEST(EncodeFiles, SpecialTokenWithSpaceIsNeverSplit) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 200; ++i) text += "go <|end of text|> now\n";
  write_bytes(dir.file("t"), text);
  Vocab v = gpt2_vocab();
  v.add_special("<|end of text|>");
  const auto special_id = static_cast<std::uint32_t>(v.special_ids.back());
  Tokenizer tokenizer(v);
  const std::vector<std::uint32_t> expected = tokenizer.encode(text);
  ASSERT_EQ(std::count(expected.begin(), expected.end(), special_id), 200);
  for (std::size_t chunk_bytes : {10u, 64u, 1000u}) {
    std::vector<std::uint32_t> got;
    encode_files(tokenizer, {dir.file("t")}, {.threads = 1, .chunk_bytes = chunk_bytes, .progress = false},
                 [&](const std::vector<std::uint32_t>& ids) { got.insert(got.end(), ids.begin(), ids.end()); });
    EXPECT_EQ(std::count(got.begin(), got.end(), special_id), 200) << "chunk_bytes " << chunk_bytes;
    EXPECT_EQ(got, expected) << "chunk_bytes " << chunk_bytes;
  }
}

// train_bpe on files (chunked, over threads) equals train_bpe_from_counts on the whole text.
TEST(BpeTrainChunked, SameMergesForAnyThreadsAndChunkSize) {
  TempDir dir;
  std::mt19937 rng(5);
  const std::vector<std::string> specials = {"<|endoftext|>"};
  const std::string a = mixed_text(rng, 2000), b = mixed_text(rng, 2000);
  write_bytes(dir.file("a.txt"), a);
  write_bytes(dir.file("b.txt"), b);
  PretokenCounts counts;
  count_pretokens(a, specials, counts);
  count_pretokens(b, specials, counts);
  const Vocab expected = train_bpe_from_counts(counts, bpe_options(400, specials));
  ASSERT_GT(expected.merges.size(), 50u);
  for (int threads : {1, 2, 3}) {
    for (std::size_t chunk_bytes : {7u, 100u, 1u << 20}) {
      BpeTrainStats stats;
      Vocab got = train_bpe({dir.file("a.txt"), dir.file("b.txt")}, bpe_options(400, specials, threads, chunk_bytes), &stats);
      EXPECT_EQ(got.tokens, expected.tokens) << threads << " threads, chunk " << chunk_bytes;
      EXPECT_EQ(got.merges, expected.merges) << threads << " threads, chunk " << chunk_bytes;
      EXPECT_EQ(got.special_ids, expected.special_ids);
      EXPECT_EQ(stats.input_bytes, static_cast<std::int64_t>(a.size() + b.size()));
      EXPECT_EQ(stats.distinct_pretokens, static_cast<std::int64_t>(counts.size()));
    }
  }
}
