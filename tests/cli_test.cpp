// The scratchlm program end to end: outputs a user relies on, and bad input that must end in one
// clear message (naming the file, line or flag), a non-zero exit, no crash and no file left
// under the final name.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test_util.h"
#include "tokenizer/tokenizer.h"
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

// ---------------------------------------------------------------------------------------------
// The same against a tiny hand-made tokenizer (fast to load): the 256 bytes, then "th", "the".

namespace {

Vocab tiny_vocab() {
  Vocab v;
  for (int b = 0; b < 256; ++b) v.tokens.emplace_back(1, static_cast<char>(b));
  v.tokens.push_back("th");
  v.tokens.push_back("the");
  v.merges = {{'t', 'h'}, {256, 'e'}};
  return v;
}

// vocab.json text for the 256 bytes plus `extra` ("key": value pairs, already JSON).
std::string bytes_vocab_json(const std::string& extra) {
  std::string out = "{";
  for (int b = 0; b < 256; ++b)
    out += nlohmann::json(bytes_to_gpt2_text(std::string(1, static_cast<char>(b)))).dump() + ": " + std::to_string(b) + ",";
  return out + extra + "}";
}

std::vector<std::uint32_t> parse_ids(const std::string& text) {
  std::vector<std::uint32_t> ids;
  std::istringstream in(text);
  for (std::uint32_t id; in >> id;) ids.push_back(id);
  return ids;
}

class CliTiny : public testing::Test {
 protected:
  void SetUp() override {
    save_tokenizer_dir(path("tiny"), tiny_vocab());
    write_bytes(path("text.txt"), "the theme, then the end\n");
  }
  std::string path(std::string_view name) const { return dir_.file(name); }
  // A copy of the tiny tokenizer with one file replaced; returns its directory.
  std::string tiny_with(const std::string& name, const std::string& file, const std::string& contents) {
    std::string d = path(name);
    save_tokenizer_dir(d, tiny_vocab());
    write_bytes(d + "/" + file, contents);
    return d;
  }
  CliResult encode_with(const std::string& tokenizer_dir) {
    return run_cli({"tokenizer", "encode", "--tokenizer", tokenizer_dir, "--input", path("text.txt")});
  }
  // For each case, `file` of the tiny tokenizer replaced by `contents` makes encode fail naming
  // the file and each of `needles`.
  struct BrokenFile {
    const char* name;
    std::string contents;
    std::vector<std::string> needles;
  };
  void expect_each_fails(const std::string& file, const std::vector<BrokenFile>& cases) {
    for (const auto& c : cases) {
      SCOPED_TRACE(c.name);
      std::string d = tiny_with(c.name, file, c.contents);
      std::vector<std::string> needles = c.needles;
      needles.push_back(d + "/" + file);
      expect_clean_failure(encode_with(d), needles);
    }
  }

  TempDir dir_;
};

}  // namespace

TEST_F(CliTiny, TrainGivesExactlyTheLibrarysVocab) {
  CliResult r = run_cli({"tokenizer", "train", "--input", data_path("cs336/corpus.en"), "--vocab-size", "500",
                         "--special-token", kSpecial, "--out", path("tok"), "--threads", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Vocab loaded = load_tokenizer_dir(path("tok"));
  EXPECT_EQ(loaded.tokens, corpus_en_vocab().tokens);
  EXPECT_EQ(loaded.merges, corpus_en_vocab().merges);
  EXPECT_EQ(loaded.special_ids, corpus_en_vocab().special_ids);
}

// A corpus with nothing to merge gives the bytes and the special tokens, and still loads.
TEST_F(CliTiny, TrainOnEmptyOrSpecialOnlyInput) {
  write_bytes(path("empty.txt"), "");
  write_bytes(path("specials.txt"), "<|endoftext|>x<|endoftext|>");
  CliResult r = run_cli({"tokenizer", "train", "--input", path("empty.txt"), "--input", path("specials.txt"),
                         "--vocab-size", "300", "--special-token", kSpecial, "--out", path("tok")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Vocab v = load_tokenizer_dir(path("tok"));
  EXPECT_EQ(v.tokens.size(), 257u);
  EXPECT_TRUE(v.merges.empty());
  EXPECT_EQ(v.special_ids, (std::vector<std::int32_t>{256}));
  CliResult enc = run_cli({"tokenizer", "encode", "--tokenizer", path("tok"), "--input", path("specials.txt")});
  ASSERT_EQ(enc.exit_code, 0) << enc.err;
  EXPECT_EQ(enc.out, "256 120 256\n");
}

// Several inputs are encoded one after the other, each on its own, and decode to their concatenation.
TEST_F(CliTiny, TokenizeSeveralInputsInOrder) {
  write_bytes(path("b.txt"), "then");
  CliResult r = run_cli({"tokenize", "--tokenizer", path("tiny"), "--input", path("text.txt"), "--input", path("b.txt"),
                         "--out", path("t.bin")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Tokenizer t(tiny_vocab());
  std::vector<std::uint32_t> expected = t.encode("the theme, then the end\n");
  t.encode("then", expected);
  // "the" | " theme" | "," | " then" | " the" | " end" | "\n", then "then": "the" is a token; the
  // rest merge (t, h) and (th, e).
  EXPECT_EQ(expected, (std::vector<std::uint32_t>{257, 32, 257, 109, 101, 44, 32, 257, 110, 32, 257, 32, 101, 110, 100,
                                                  10, 257, 110}));
  auto meta = nlohmann::json::parse(read_bytes(path("t.bin.json")));
  EXPECT_EQ(meta["token_count"], expected.size());
  EXPECT_EQ(meta["sources"].size(), 2u);
  CliResult d = run_cli({"tokenizer", "decode", "--tokenizer", path("tiny"), "--input", path("t.bin")});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out, "the theme, then the end\nthen");
  // An odd number of bytes cannot be uint16 tokens.
  std::string data = read_bytes(path("t.bin"));
  write_bytes(path("t.bin"), data.substr(0, data.size() - 1));
  expect_clean_failure(run_cli({"tokenizer", "decode", "--tokenizer", path("tiny"), "--input", path("t.bin")}),
                       {path("t.bin")});
}

TEST_F(CliTiny, MissingOrDirectoryInputForEveryCommand) {
  fs::create_directories(path("adir"));
  for (const std::string& bad : {path("missing.txt"), path("adir")}) {
    SCOPED_TRACE(bad);
    expect_clean_failure(run_cli({"tokenize", "--tokenizer", path("tiny"), "--input", bad, "--out", path("o.bin")}), {bad});
    EXPECT_FALSE(fs::exists(path("o.bin")));
    expect_clean_failure(run_cli({"tokenizer", "encode", "--tokenizer", path("tiny"), "--input", bad}), {bad});
    expect_clean_failure(run_cli({"tokenizer", "decode", "--tokenizer", path("tiny"), "--input", bad}), {bad});
  }
}

TEST_F(CliTiny, MalformedVocabJson) {
  expect_each_fails("vocab.json", {
      {"empty", "", {}},
      {"fractional_id", bytes_vocab_json("\"th\": 256.5, \"the\": 257"), {"th"}},
      {"id_out_of_range", bytes_vocab_json("\"th\": 256, \"the\": 9999"), {"9999"}},
      {"duplicate_key", bytes_vocab_json("\"th\": 256, \"th\": 257"), {"th"}},
      {"missing_byte", "{\"a\": 0}", {}},
  });
}

TEST_F(CliTiny, MalformedMergesTxt) {
  expect_each_fails("merges.txt", {
      {"three_tokens", "t h\nth e x\n", {"merges.txt:2"}},
      {"part_not_byte_level", "t h\n\xE4\xB8\xAD e\n", {"merges.txt:2"}},
      {"part_not_in_vocab", "t h\nth e\ntx e\n", {"merges.txt:3", "tx"}},
      {"result_not_in_vocab", "t h\nh e\n", {"merges.txt:2", "he"}},
      // Line numbers count the "#version" line and blank lines.
      {"line_numbers", "#version: 0.2\nt h\n\nth e\nthe the\n", {"merges.txt:5"}},
  });
  // Well-formed variants: a "#version" line, CRLF line ends, no final newline.
  for (const std::string ok : {"#version: 0.2\nt h\nth e\n", "t h\r\nth e\r\n", "t h\nth e"}) {
    CliResult r = encode_with(tiny_with("ok", "merges.txt", ok));
    EXPECT_EQ(r.exit_code, 0) << testing::PrintToString(ok) << r.err;
    EXPECT_EQ(parse_ids(r.out), Tokenizer(tiny_vocab()).encode("the theme, then the end\n")) << testing::PrintToString(ok);
  }
}

TEST_F(CliTiny, MissingTokenizerFiles) {
  fs::create_directories(path("empty_dir"));
  expect_clean_failure(encode_with(path("empty_dir")), {path("empty_dir")});
  std::string d = tiny_with("no_merges", "merges.txt", "");
  fs::remove(d + "/merges.txt");
  expect_clean_failure(encode_with(d), {d + "/merges.txt"});
}

TEST_F(CliTiny, DecodeRejectsNegativeAndHugeIds) {
  for (const char* ids : {"1 -2\n", "1 99999999999\n", "1 4294967295\n"}) {
    write_bytes(path("ids.txt"), ids);
    expect_clean_failure(run_cli({"tokenizer", "decode", "--tokenizer", path("tiny"), "--input", path("ids.txt")}),
                         {path("ids.txt")});
  }
}

TEST_F(CliTiny, UnwritableOutputs) {
  const std::string nowhere = path("no/such/dir/out.bin");
  expect_clean_failure(
      run_cli({"tokenizer", "encode", "--tokenizer", path("tiny"), "--input", path("text.txt"), "--out", nowhere}),
      {nowhere});
  EXPECT_FALSE(fs::exists(path("no")));

  // --out is an existing directory: it stays, and nothing is left beside it.
  fs::create_directories(path("outdir"));
  expect_clean_failure(
      run_cli({"tokenize", "--tokenizer", path("tiny"), "--input", path("text.txt"), "--out", path("outdir")}),
      {path("outdir")});
  EXPECT_TRUE(fs::is_directory(path("outdir")));
  EXPECT_FALSE(fs::exists(path("outdir.json")));
  EXPECT_TRUE(no_tmp_files(dir_.path()).empty());

  // train --out below a regular file.
  expect_clean_failure(run_cli({"tokenizer", "train", "--input", path("text.txt"), "--vocab-size", "260", "--out",
                                path("text.txt/tok")}),
                       {path("text.txt/tok")});
  EXPECT_EQ(read_bytes(path("text.txt")), "the theme, then the end\n");
}

TEST_F(CliTiny, UsageErrors) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {},
           {"tokenizer"},
           {"no-such-command"},
           {"tokenizer", "encode", "--input", path("text.txt")},
           {"tokenizer", "train", "--input", path("text.txt"), "--vocab-size", "many", "--out", path("o")},
           {"tokenizer", "train", "--input", path("text.txt"), "--vocab-size", "100", "--out", path("o")},
           {"tokenizer", "train", "--input", path("text.txt"), "--vocab-size", "-5", "--out", path("o")},
           {"tokenizer", "encode", "--tokenizer", path("tiny"), "--input", path("text.txt"), "--threads", "0"},
           {"tokenizer", "encode", "--tokenizer", path("tiny"), "--input", path("text.txt"), "--special-token", ""},
       }) {
    CliResult r = run_cli(args);
    EXPECT_EQ(r.signal, 0) << testing::PrintToString(args);
    EXPECT_NE(r.exit_code, 0) << testing::PrintToString(args);
    EXPECT_FALSE(r.err.empty()) << testing::PrintToString(args);
  }
  EXPECT_FALSE(fs::exists(path("o")));
}

TEST(Cli, MalformedHuggingFaceTokenizerJson) {
  TempDir dir;
  std::string tok = trained_tokenizer(dir);
  const auto good = nlohmann::json::parse(read_bytes(tok + "/tokenizer.json"));
  struct Case {
    std::function<void(nlohmann::json&)> spoil;
    std::vector<std::string> needles;
  };
  std::vector<Case> cases = {
      {[](nlohmann::json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, {"tokenizer.json", "ByteLevel"}},
      {[](nlohmann::json& j) { j["model"]["type"] = "WordPiece"; }, {"tokenizer.json", "only BPE"}},
      {[](nlohmann::json& j) { j["model"]["merges"][3] = "zzzzzz t"; }, {"model.merges[3]", "not in"}},
      {[](nlohmann::json& j) { j["model"]["merges"][0] = 7; }, {"model.merges[0]", "expected"}},
      {[](nlohmann::json& j) { j["model"]["vocab"].erase("!"); }, {"model.vocab", "out of range"}},
      {[](nlohmann::json& j) { j["model"]["vocab"]["!"] = 1; }, {"model.vocab", "id 1"}},
  };
  for (std::size_t k = 0; k < cases.size(); ++k) {
    SCOPED_TRACE("case " + std::to_string(k));
    std::string hf = dir.file("hf" + std::to_string(k));
    fs::create_directories(hf);
    nlohmann::json j = good;
    cases[k].spoil(j);
    write_bytes(hf + "/tokenizer.json", j.dump());
    expect_clean_failure(run_cli({"tokenizer", "encode", "--tokenizer", hf, "--input", data_path("cs336/address.txt")}),
                         cases[k].needles);
  }
}
