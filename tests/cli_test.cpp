// The scratchlm program end to end: outputs a user relies on, and bad input that must end in one
// clear message (naming the file, line or flag), a non-zero exit, no crash and no file left
// under the final name.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "tokenizer/vocab.h"

using namespace scratchlm;
using namespace scratchlm::test;
namespace fs = std::filesystem;

namespace {

const std::string kSpecial = "<|endoftext|>";

// A small tokenizer directory trained by the program itself.
std::string trained_tokenizer(const TempDir& dir) {
  std::string out = dir.file("tok");
  CliResult r = run_cli({"tokenizer", "train", "--input", data_path("cs336/corpus.en"), "--vocab-size", "400",
                         "--special-token", kSpecial, "--out", out, "--threads", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return out;
}

// A copy of the GPT-2 tokenizer directory where one file is replaced by `contents`.
std::string gpt2_with(const TempDir& dir, const std::string& name, const std::string& contents) {
  std::string out = dir.file("bad");
  fs::create_directories(out);
  fs::copy_file(data_path("gpt2/vocab.json"), out + "/vocab.json");
  fs::copy_file(data_path("gpt2/merges.txt"), out + "/merges.txt");
  write_bytes(out + "/" + name, contents);
  return out;
}

std::vector<std::string> no_tmp_files(const std::string& dir) {
  std::vector<std::string> leftovers;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) leftovers.push_back(e.path().string());
  return leftovers;
}

}  // namespace

TEST(Cli, TrainWritesFilesThatLoadBack) {
  TempDir dir;
  std::string tok = trained_tokenizer(dir);
  for (const char* f : {"vocab.json", "merges.txt", "special_tokens.json", "tokenizer.json"})
    EXPECT_TRUE(fs::exists(tok + "/" + f)) << f;
  Vocab vocab = load_tokenizer_dir(tok);
  EXPECT_EQ(vocab.size(), 400);
  EXPECT_EQ(vocab.merges.size(), 400u - 256u - 1u);
  ASSERT_EQ(vocab.special_ids.size(), 1u);
  EXPECT_EQ(vocab.tokens[vocab.special_ids[0]], kSpecial);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(vocab.tokens[b], std::string(1, static_cast<char>(b)));
  // The same vocabulary from the Hugging Face file alone.
  std::string hf_only = dir.file("hf");
  fs::create_directories(hf_only);
  fs::copy_file(tok + "/tokenizer.json", hf_only + "/tokenizer.json");
  Vocab from_hf = load_tokenizer_dir(hf_only);
  EXPECT_EQ(from_hf.tokens, vocab.tokens);
  EXPECT_EQ(from_hf.merges, vocab.merges);
  EXPECT_EQ(from_hf.special_ids, vocab.special_ids);
  auto hf = nlohmann::json::parse(read_bytes(tok + "/tokenizer.json"));
  EXPECT_EQ(hf["model"]["type"], "BPE");
  EXPECT_EQ(hf["model"]["merges"].size(), vocab.merges.size());
  EXPECT_TRUE(no_tmp_files(tok).empty());
}

TEST(Cli, TokenizeWritesTokenFileAndSidecarThatDecodeBack) {
  TempDir dir;
  std::string tok = trained_tokenizer(dir);
  std::string text = read_bytes(data_path("cs336/tinystories_sample.txt")) + kSpecial + "\nThe end.\n";
  write_bytes(dir.file("in.txt"), text);
  std::string bin = dir.file("out.bin");
  CliResult r = run_cli({"tokenize", "--tokenizer", tok, "--input", dir.file("in.txt"), "--out", bin, "--threads", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto meta = nlohmann::json::parse(read_bytes(bin + ".json"));
  EXPECT_EQ(meta["dtype"], "uint16");
  EXPECT_EQ(meta["source_bytes"], text.size());
  EXPECT_EQ(fs::file_size(bin), 2 * meta["token_count"].get<std::uint64_t>());
  EXPECT_EQ(meta["tokenizer"]["vocab_size"], 400);
  EXPECT_EQ(meta["tokenizer"]["fingerprint"], vocab_fingerprint(load_tokenizer_dir(tok)));
  // Each special token in the text is one id: the vocabulary's last.
  std::string data = read_bytes(bin);
  int specials = 0;
  for (std::size_t i = 0; i + 1 < data.size(); i += 2)
    specials += (static_cast<unsigned char>(data[i]) | static_cast<unsigned char>(data[i + 1]) << 8) == 399;
  int in_text = 0;
  for (std::size_t at = text.find(kSpecial); at != std::string::npos; at = text.find(kSpecial, at + 1)) ++in_text;
  EXPECT_GT(in_text, 1);
  EXPECT_EQ(specials, in_text);
  CliResult d = run_cli({"tokenizer", "decode", "--tokenizer", tok, "--input", bin});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out, text);
  EXPECT_TRUE(no_tmp_files(dir.path()).empty());
}

TEST(Cli, EncodePrintsIdsAndDecodeReadsThem) {
  TempDir dir;
  write_bytes(dir.file("t.txt"), "Hello world<|endoftext|> ok");
  CliResult r = run_cli({"tokenizer", "encode", "--tokenizer", data_path("gpt2"), "--special-token", kSpecial,
                         "--input", dir.file("t.txt")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // tiktoken: enc.encode("Hello world<|endoftext|> ok", allowed_special="all")
  EXPECT_EQ(r.out, "15496 995 50256 12876\n");
  write_bytes(dir.file("ids.txt"), r.out);
  CliResult d = run_cli({"tokenizer", "decode", "--tokenizer", data_path("gpt2"), "--input", dir.file("ids.txt")});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out, "Hello world<|endoftext|> ok");
}

TEST(Cli, TruncatedTokenFileIsRejected) {
  TempDir dir;
  write_bytes(dir.file("t.txt"), "some text to tokenize, some more text");
  std::string bin = dir.file("t.bin");
  ASSERT_EQ(run_cli({"tokenize", "--tokenizer", data_path("gpt2"), "--input", dir.file("t.txt"), "--out", bin}).exit_code, 0);
  std::string data = read_bytes(bin);
  write_bytes(bin, data.substr(0, data.size() - 2));
  expect_clean_failure(run_cli({"tokenizer", "decode", "--tokenizer", data_path("gpt2"), "--input", bin}), {bin, "truncated"});
}

TEST(Cli, BadInputFilesAndFlags) {
  TempDir dir;
  expect_clean_failure(run_cli({"tokenizer", "train", "--input", dir.file("missing.txt"), "--vocab-size", "300", "--out",
                                dir.file("o")}),
                       {"missing.txt", "cannot open"});
  expect_clean_failure(run_cli({"tokenizer", "train", "--input", dir.path(), "--vocab-size", "300", "--out", dir.file("o")}),
                       {"is a directory"});
  expect_clean_failure(run_cli({"tokenizer", "train", "--input", data_path("cs336/corpus.en"), "--vocab-size", "256",
                                "--special-token", kSpecial, "--out", dir.file("o")}),
                       {"--vocab-size", "257"});
  EXPECT_FALSE(fs::exists(dir.file("o")));
  expect_clean_failure(run_cli({"tokenizer", "train", "--input", data_path("cs336/corpus.en"), "--vocab-size", "300",
                                "--out", dir.file("o"), "--no-such-flag"}),
                       {"--no-such-flag"});
  expect_clean_failure(run_cli({"tokenizer", "encode", "--tokenizer", dir.file("nodir"), "--input",
                                data_path("cs336/corpus.en")}),
                       {"nodir", "not a tokenizer directory"});
  expect_clean_failure(run_cli({"tokenizer", "train", "--input", data_path("cs336/corpus.en"), "--vocab-size", "300",
                                "--threads", "0", "--out", dir.file("o")}),
                       {"--threads"});
}

TEST(Cli, UnwritableOutputLeavesNothing) {
  TempDir dir;
  std::string out = dir.file("no/such/dir/out.bin");
  expect_clean_failure(run_cli({"tokenize", "--tokenizer", data_path("gpt2"), "--input", data_path("cs336/address.txt"),
                                "--out", out}),
                       {out, "cannot open for writing"});
  EXPECT_FALSE(fs::exists(out));
  // An existing output survives a failed run untouched.
  write_bytes(dir.file("keep.bin"), "previous contents");
  expect_clean_failure(run_cli({"tokenize", "--tokenizer", data_path("gpt2"), "--input", dir.file("missing.txt"), "--out",
                                dir.file("keep.bin")}),
                       {"missing.txt"});
  EXPECT_EQ(read_bytes(dir.file("keep.bin")), "previous contents");
  EXPECT_TRUE(no_tmp_files(dir.path()).empty());
}

TEST(Cli, DecodeRejectsBadIds) {
  TempDir dir;
  write_bytes(dir.file("ids.txt"), "15496 50257\n");
  expect_clean_failure(run_cli({"tokenizer", "decode", "--tokenizer", data_path("gpt2"), "--input", dir.file("ids.txt")}),
                       {"ids.txt", "50257", "out of range"});
  write_bytes(dir.file("words.txt"), "15496 hello\n");
  expect_clean_failure(run_cli({"tokenizer", "decode", "--tokenizer", data_path("gpt2"), "--input", dir.file("words.txt")}),
                       {"words.txt", "expected whitespace-separated token ids"});
}

TEST(Cli, MalformedVocabulary) {
  struct Case {
    std::string file, contents;
    std::vector<std::string> needles;
  };
  std::string vocab = read_bytes(data_path("gpt2/vocab.json"));
  std::string duplicate_id = vocab;
  duplicate_id.replace(duplicate_id.find("\"!\": 0"), 6, "\"!\": 1");
  std::string non_integer = vocab;
  non_integer.replace(non_integer.find("\"!\": 0"), 6, "\"!\": \"0\"");
  std::string not_byte_level = vocab;
  not_byte_level.replace(not_byte_level.find("\"!\": 0"), 6, "\"a b\": 0");
  std::vector<Case> cases = {
      {"vocab.json", "{\"a\": 0,", {"vocab.json", "invalid JSON"}},
      {"vocab.json", "[1, 2]", {"vocab.json", "expected a JSON object"}},
      {"vocab.json", duplicate_id, {"vocab.json", "id 1"}},
      {"vocab.json", non_integer, {"vocab.json", "not an integer"}},
      {"vocab.json", not_byte_level, {"vocab.json", "byte-level form"}},
      {"merges.txt", "\xc4\xa0 t\nonlyone\n", {"merges.txt:2", "two tokens"}},
      {"merges.txt", "\xc4\xa0 t\nzzzzzzzzzz q\n", {"merges.txt:2", "not in"}},
      {"merges.txt", "\xc4\xa0 t\nq zzzzzzzzzz\n", {"merges.txt:2", "not in"}},
      {"special_tokens.json", "{\"x\": 1}", {"special_tokens.json", "array"}},
      {"special_tokens.json", "[\"<|not-in-vocab|>\"]", {"special_tokens.json", "not in"}},
  };
  for (const auto& c : cases) {
    TempDir dir;
    std::string tok = gpt2_with(dir, c.file, c.contents);
    write_bytes(dir.file("t.txt"), "hello");
    SCOPED_TRACE(c.file + ": " + c.needles.back());
    expect_clean_failure(run_cli({"tokenizer", "encode", "--tokenizer", tok, "--input", dir.file("t.txt")}), c.needles);
  }
}

TEST(Cli, MergeWhoseResultIsNotInTheVocabulary) {
  // "Ġ" + "zz" is not a GPT-2 token, though both parts are.
  TempDir dir;
  std::string tok = gpt2_with(dir, "merges.txt", "\xc4\xa0 zz\n");
  write_bytes(dir.file("t.txt"), "hello");
  expect_clean_failure(run_cli({"tokenizer", "encode", "--tokenizer", tok, "--input", dir.file("t.txt")}),
                       {"merges.txt:1", "merged token"});
}

TEST(Cli, HelpListsTheSubcommands) {
  CliResult r = run_cli({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* s : {"tokenizer", "tokenize", "info"}) EXPECT_NE(r.out.find(s), std::string::npos) << s;
}
