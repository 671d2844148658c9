// `scratchlm tokenizer train|encode|decode` and `scratchlm tokenize`.
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/encode_files.h"
#include "tokenizer/token_file.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "util/error.h"
#include "util/files.h"
#include "util/progress.h"

namespace scratchlm::cli {

namespace {

using json = nlohmann::json;

void print_settings(const std::string& command, const json& settings) {
  std::fprintf(stderr, "scratchlm %s: %s\n", command.c_str(), settings.dump().c_str());
}

std::string stdin_if_dash(const std::string& path) { return path == "-" ? "/dev/stdin" : path; }

// The tokenizer in dir, with the special tokens it records plus those given on the command line.
Tokenizer load_tokenizer(const std::string& dir, const std::vector<std::string>& extra_specials) {
  Vocab vocab = load_tokenizer_dir(dir);
  for (const auto& s : extra_specials) {
    if (s.empty()) fail("--special-token: a special token cannot be empty");
    vocab.add_special(s);
  }
  return Tokenizer(std::move(vocab));
}

json tokenizer_identity(const std::string& dir, const Tokenizer& tokenizer) {
  return {{"dir", std::filesystem::absolute(dir).lexically_normal().string()},
          {"vocab_size", tokenizer.vocab_size()},
          {"fingerprint", vocab_fingerprint(tokenizer.vocab())},
          {"special_tokens", tokenizer.special_texts()}};
}

void report_encoding(const EncodeStats& stats) {
  double ratio = stats.tokens ? static_cast<double>(stats.bytes) / stats.tokens : 0;
  std::fprintf(stderr, "encoded %s into %lld tokens: %.3f bytes/token, %.1f MB/s (%.2f s)\n",
               human_bytes(static_cast<double>(stats.bytes)).c_str(), static_cast<long long>(stats.tokens), ratio,
               stats.seconds > 0 ? stats.bytes / stats.seconds / 1e6 : 0.0, stats.seconds);
}

// Encodes `inputs` into a token file at `out` (atomically, with its sidecar).
void encode_to_token_file(const std::string& tokenizer_dir, const Tokenizer& tokenizer,
                          const std::vector<std::string>& inputs, const std::string& out, int threads) {
  TokenDtype dtype = dtype_for_vocab(tokenizer.vocab_size());
  TokenFileWriter writer(out, dtype);
  EncodeStats stats = encode_files(tokenizer, inputs, {.threads = threads, .progress = true},
                                   [&](const std::vector<std::uint32_t>& ids) { writer.append(ids.data(), ids.size()); });
  json sources = json::array();
  for (const auto& p : inputs) sources.push_back(p);
  writer.commit({{"source_bytes", stats.bytes}, {"sources", sources},
                 {"tokenizer", tokenizer_identity(tokenizer_dir, tokenizer)}});
  report_encoding(stats);
  std::fprintf(stderr, "wrote %s (%lld %s tokens) and %s\n", out.c_str(), static_cast<long long>(writer.token_count()),
               dtype_name(dtype), sidecar_path(out).c_str());
}

void write_stdout(const std::string& text) {
  if (!text.empty() && std::fwrite(text.data(), 1, text.size(), stdout) != text.size())
    fail("cannot write to standard output");
}

struct TrainArgs {
  std::vector<std::string> inputs, specials;
  std::int64_t vocab_size = 0;
  std::string out;
  int threads = default_threads();
};

void run_train(const TrainArgs& a) {
  print_settings("tokenizer train", {{"input", a.inputs}, {"vocab_size", a.vocab_size}, {"special_tokens", a.specials},
                                     {"out", a.out}, {"threads", a.threads}});
  if (a.threads < 1) fail("--threads must be at least 1");
  double start = now_seconds();
  BpeTrainStats stats;
  Vocab vocab = train_bpe(a.inputs, {.vocab_size = a.vocab_size, .special_tokens = a.specials, .threads = a.threads,
                                     .progress = true},
                          &stats);
  save_tokenizer_dir(a.out, vocab);
  double seconds = now_seconds() - start;
  std::size_t longest = 256;
  for (std::size_t id = 256; id < 256 + vocab.merges.size(); ++id)
    if (vocab.tokens[id].size() > (longest < vocab.tokens.size() ? vocab.tokens[longest].size() : 0)) longest = id;
  std::fprintf(stderr, "trained: vocabulary %lld = 256 bytes + %lld merges + %zu special token(s)\n",
               static_cast<long long>(vocab.size()), static_cast<long long>(stats.merges), a.specials.size());
  if (stats.merges < a.vocab_size - 256 - static_cast<std::int64_t>(a.specials.size()))
    std::fprintf(stderr, "note: the corpus ran out of pairs to merge; the vocabulary is smaller than --vocab-size\n");
  std::fprintf(stderr, "time: %.2f s (pre-tokenization %.2f s at %.1f MB/s, merging %.2f s)\n", seconds,
               stats.pretokenize_seconds, stats.input_bytes / std::max(stats.pretokenize_seconds, 1e-9) / 1e6,
               stats.merge_seconds);
  std::fprintf(stderr, "pre-tokens: %lld, of which %lld distinct\n", static_cast<long long>(stats.pretokens),
               static_cast<long long>(stats.distinct_pretokens));
  std::fprintf(stderr, "peak memory: %s\n", human_bytes(static_cast<double>(peak_rss_bytes())).c_str());
  if (longest < vocab.tokens.size() && vocab.merges.size() > 0)
    std::fprintf(stderr, "longest token: id %zu, %zu bytes: %s\n", longest, vocab.tokens[longest].size(),
                 json(utf8_replace_invalid(vocab.tokens[longest])).dump().c_str());
  std::fprintf(stderr, "wrote %s/{vocab.json, merges.txt, special_tokens.json, tokenizer.json}\n", a.out.c_str());
}

struct EncodeArgs {
  std::string tokenizer, input = "-", out;
  std::vector<std::string> specials;
  int threads = default_threads();
};

void run_encode(const EncodeArgs& a) {
  if (a.threads < 1) fail("--threads must be at least 1");
  Tokenizer tokenizer = load_tokenizer(a.tokenizer, a.specials);
  print_settings("tokenizer encode", {{"tokenizer", a.tokenizer}, {"vocab_size", tokenizer.vocab_size()},
                                      {"special_tokens", tokenizer.special_texts()}, {"input", a.input},
                                      {"out", a.out.empty() ? "(stdout, as text)" : a.out}, {"threads", a.threads}});
  std::vector<std::string> inputs = {stdin_if_dash(a.input)};
  if (!a.out.empty()) {
    encode_to_token_file(a.tokenizer, tokenizer, inputs, a.out, a.threads);
    return;
  }
  bool first = true;
  std::string text;
  EncodeStats stats = encode_files(tokenizer, inputs, {.threads = a.threads}, [&](const std::vector<std::uint32_t>& ids) {
    text.clear();
    char buf[16];
    for (auto id : ids) {
      if (!first) text += ' ';
      first = false;
      auto [end, ec] = std::to_chars(buf, buf + sizeof buf, id);
      text.append(buf, end);
    }
    write_stdout(text);
  });
  write_stdout("\n");
  report_encoding(stats);
}

// Ids from a token file (if it has a sidecar) or from whitespace-separated decimal text.
std::vector<std::uint32_t> read_ids(const std::string& path) {
  if (path != "/dev/stdin" && std::filesystem::exists(sidecar_path(path))) return read_token_file(path);
  std::string text = read_file(path);
  std::vector<std::uint32_t> ids;
  const char* p = text.data();
  const char* end = p + text.size();
  while (true) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) ++p;
    if (p == end) break;
    std::uint64_t v;
    auto [q, ec] = std::from_chars(p, end, v);
    if (ec != std::errc() || v > 0xFFFFFFFFu || (q < end && !std::isspace(static_cast<unsigned char>(*q))))
      fail(path, ": expected whitespace-separated token ids, found ", json(utf8_replace_invalid(std::string(p, std::min<std::size_t>(end - p, 20)))).dump(),
           " at byte ", p - text.data(), " (a token file needs its .json sidecar beside it)");
    ids.push_back(static_cast<std::uint32_t>(v));
    p = q;
  }
  return ids;
}

struct DecodeArgs {
  std::string tokenizer, input = "-";
};

void run_decode(const DecodeArgs& a) {
  print_settings("tokenizer decode", {{"tokenizer", a.tokenizer}, {"input", a.input}});
  Tokenizer tokenizer = load_tokenizer(a.tokenizer, {});
  std::vector<std::uint32_t> ids = read_ids(stdin_if_dash(a.input));
  std::string text;
  try {
    text = tokenizer.decode(ids);
  } catch (const Error& e) {
    fail(a.input == "-" ? "standard input" : a.input, ": ", e.what());
  }
  write_stdout(text);
}

struct TokenizeArgs {
  std::string tokenizer, out;
  std::vector<std::string> inputs, specials;
  int threads = default_threads();
};

void run_tokenize(const TokenizeArgs& a) {
  if (a.threads < 1) fail("--threads must be at least 1");
  Tokenizer tokenizer = load_tokenizer(a.tokenizer, a.specials);
  print_settings("tokenize", {{"tokenizer", a.tokenizer}, {"vocab_size", tokenizer.vocab_size()},
                              {"special_tokens", tokenizer.special_texts()}, {"input", a.inputs}, {"out", a.out},
                              {"threads", a.threads}});
  encode_to_token_file(a.tokenizer, tokenizer, a.inputs, a.out, a.threads);
}

}  // namespace

void register_tokenizer_commands(CLI::App& app) {
  auto* tok = app.add_subcommand("tokenizer", "Byte-level BPE tokenizer: train, encode, decode");
  tok->require_subcommand(1);

  auto train_args = std::make_shared<TrainArgs>();
  auto* train = tok->add_subcommand("train", "Train a byte-level BPE tokenizer (GPT-2 pre-tokenization) on text files");
  train->add_option("--input", train_args->inputs, "Text file to train on (repeat for several)")->required();
  train->add_option("--vocab-size", train_args->vocab_size, "Vocabulary size: 256 bytes + merges + special tokens")->required();
  train->add_option("--special-token", train_args->specials, "Special token, never merged (repeatable), e.g. <|endoftext|>");
  train->add_option("--out", train_args->out, "Output directory (vocab.json, merges.txt, special_tokens.json, tokenizer.json)")->required();
  train->add_option("--threads", train_args->threads, "Threads for pre-tokenization")->capture_default_str();
  train->callback([train_args] { run_train(*train_args); });

  auto enc_args = std::make_shared<EncodeArgs>();
  auto* enc = tok->add_subcommand("encode", "Encode text to token ids (printed, or written as a token file)");
  enc->add_option("--tokenizer", enc_args->tokenizer, "Tokenizer directory (vocab.json + merges.txt)")->required();
  enc->add_option("--special-token", enc_args->specials, "Extra special token to recognise (repeatable)");
  enc->add_option("--input", enc_args->input, "Text file ('-' for standard input)")->capture_default_str();
  enc->add_option("--out", enc_args->out, "Write a token file (.bin + .bin.json sidecar) instead of printing ids");
  enc->add_option("--threads", enc_args->threads, "Encoding threads")->capture_default_str();
  enc->callback([enc_args] { run_encode(*enc_args); });

  auto dec_args = std::make_shared<DecodeArgs>();
  auto* dec = tok->add_subcommand("decode", "Decode token ids (text or a token file) back to text");
  dec->add_option("--tokenizer", dec_args->tokenizer, "Tokenizer directory (vocab.json + merges.txt)")->required();
  dec->add_option("--input", dec_args->input, "Whitespace-separated ids, or a token file with its sidecar ('-': stdin)")->capture_default_str();
  dec->callback([dec_args] { run_decode(*dec_args); });

  auto tz_args = std::make_shared<TokenizeArgs>();
  auto* tz = app.add_subcommand("tokenize", "Stream a corpus of any size into a token file (uint16/uint32 + JSON sidecar)");
  tz->add_option("--tokenizer", tz_args->tokenizer, "Tokenizer directory (vocab.json + merges.txt)")->required();
  tz->add_option("--input", tz_args->inputs, "Text file (repeat for several; concatenated in order)")->required();
  tz->add_option("--out", tz_args->out, "Token file to write; its sidecar is <out>.json")->required();
  tz->add_option("--special-token", tz_args->specials, "Extra special token to recognise (repeatable)");
  tz->add_option("--threads", tz_args->threads, "Encoding threads")->capture_default_str();
  tz->callback([tz_args] { run_tokenize(*tz_args); });
}

}  // namespace scratchlm::cli
