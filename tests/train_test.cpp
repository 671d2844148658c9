// Training, end to end and in pieces: batch sampling as CS336's get_batch, token files checked
// against the vocabulary, gradient accumulation, the KV cache, sampling, the `train` command's
// metrics and checkpoints, exact resume, a NaN stop, and bad input of every kind failing cleanly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "generate/generate.h"
#include "model/model.h"
#include "tensor/device.h"
#include "tensor/safetensors.h"
#include "test_util.h"
#include "tokenizer/token_file.h"
#include "train/data.h"
#include "tokenizer/vocab.h"
#include "util/error.h"

namespace scratchlm {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

using test::write_tokens;

// Tokens with structure a tiny model can learn: repeated short "sentences" over a 64-token vocabulary.
std::vector<std::uint32_t> patterned_tokens(std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<std::uint32_t> ids;
  while (ids.size() < n) {
    const std::uint32_t start = static_cast<std::uint32_t>(rng.below(8)) * 8;
    for (std::uint32_t k = 0; k < 8 && ids.size() < n; ++k) ids.push_back(start + k);
  }
  return ids;
}

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 64;
  c.context_length = 16;
  c.d_model = 32;
  c.num_layers = 2;
  c.num_heads = 4;
  c.d_ff = 48;
  c.rope_theta = 10000.0;
  return c;
}

TEST(TrainData, BatchStartsAreUniformAndTargetsShiftByOne) {
  TempDir dir;
  const std::string path = dir.file("t.bin");
  std::vector<std::uint32_t> ids(40);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::uint32_t>(i);   // value = position
  write_tokens(path, ids);
  const TokenData data(path, 64);
  const std::int64_t B = 8, T = 7, draws = 4000;
  const std::int64_t starts = 40 - T;   // CS336: uniform over [0, n − T − 1]
  std::vector<std::int64_t> count(static_cast<std::size_t>(starts), 0);
  std::vector<std::int32_t> x(B * T), y(B * T);
  Rng rng(3);
  for (std::int64_t d = 0; d < draws; ++d) {
    sample_batch(x.data(), y.data(), data, B, T, rng);
    for (std::int64_t b = 0; b < B; ++b) {
      const std::int32_t s = x[b * T];
      ASSERT_GE(s, 0);
      ASSERT_LT(s, starts);
      count[s] += 1;
      for (std::int64_t t = 0; t < T; ++t) {
        EXPECT_EQ(x[b * T + t], s + t);
        EXPECT_EQ(y[b * T + t], s + t + 1);
      }
    }
  }
  // Each of the 33 starts expects 32000/33 ≈ 970 draws (sd ≈ 31); ±6 sd fails only on a real bias.
  const double expected = static_cast<double>(B * draws) / static_cast<double>(starts);
  for (std::int64_t s = 0; s < starts; ++s) EXPECT_NEAR(static_cast<double>(count[s]), expected, 6 * std::sqrt(expected)) << s;
}

TEST(TrainData, RejectsIdsOutsideTheVocabulary) {
  TempDir dir;
  const std::string path = dir.file("t.bin");
  write_tokens(path, {1, 2, 3, 70, 4});
  try {
    TokenData data(path, 64);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("id 70"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TokenData(dir.file("missing.bin"), 64), Error);
}

TEST(TrainData, RawUint16WithoutSidecarAndTruncatedFiles) {
  TempDir dir;
  test::write_bytes(dir.file("raw.bin"), std::string("\x01\x00\x02\x00\x03\x00", 6));
  const TokenData raw(dir.file("raw.bin"), 64);
  ASSERT_EQ(raw.size(), 3);
  EXPECT_EQ(raw[2], 3u);
  test::write_bytes(dir.file("odd.bin"), std::string("\x01\x00\x02", 3));
  EXPECT_THROW(TokenData(dir.file("odd.bin"), 64), Error);
  write_tokens(dir.file("cut.bin"), {1, 2, 3, 4});
  fs::resize_file(dir.file("cut.bin"), 6);   // the sidecar says 4 tokens
  EXPECT_THROW(TokenData(dir.file("cut.bin"), 64), Error);
}

TEST(TrainModel, GradientAccumulationEqualsTheFullBatch) {
  const ModelConfig c = tiny_config();
  Model model(c);
  Rng rng(1);
  init_params(model.layout, model.params.data(), rng);
  const std::int64_t B = 4, T = 16;
  std::vector<std::int32_t> x(B * T), y(B * T);
  for (auto& v : x) v = static_cast<std::int32_t>(rng.below(64));
  for (auto& v : y) v = static_cast<std::int32_t>(rng.below(64));
  std::vector<float> full(model.layout.total, 0.0f), halves(model.layout.total, 0.0f);
  Activations acts(c, B, T);
  model_forward(acts, model, x.data(), B, T);
  model_loss(acts, model, y.data());
  model_backward(full, acts, model, x.data(), y.data(), 1.0f);
  Activations half(c, B / 2, T);
  for (int h = 0; h < 2; ++h) {   // two micro-batches, each weighted 1/2
    const std::int64_t off = h * (B / 2) * T;
    model_forward(half, model, x.data() + off, B / 2, T);
    model_loss(half, model, y.data() + off);
    model_backward(halves, half, model, x.data() + off, y.data() + off, 0.5f);
  }
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < full.size(); ++i) {
    diff += std::pow(full[i] - halves[i], 2);
    norm += std::pow(full[i], 2);
  }
  EXPECT_LT(std::sqrt(diff / norm), 1e-5);   // the same sums, added in another order
}

TEST(TrainModel, KvCacheLogitsEqualTheFullForward) {
  const ModelConfig c = tiny_config();
  Model model(c);
  Rng rng(2);
  init_params(model.layout, model.params.data(), rng);
  const std::int64_t T = 11;
  std::vector<std::int32_t> ids(T);
  for (auto& v : ids) v = static_cast<std::int32_t>(rng.below(64));
  Activations full(c, 1, T, Activations::WithBackward::no);
  model_forward(full, model, ids.data(), 1, T);
  // prefill 5 tokens, then one at a time: each step's logits are the full pass's row
  KvCache cache(c, c.context_length);
  Activations pre(c, 1, 5, Activations::WithBackward::no), step(c, 1, 1, Activations::WithBackward::no);
  model_forward(pre, model, ids.data(), 1, 5, &cache);
  auto expect_row = [&](const float* got, std::int64_t t) {
    double diff = 0, norm = 0;
    for (std::int64_t v = 0; v < c.vocab_size; ++v) {
      diff += std::pow(got[v] - full.logits[t * c.vocab_size + v], 2);
      norm += std::pow(full.logits[t * c.vocab_size + v], 2);
    }
    EXPECT_LT(std::sqrt(diff / norm), 1e-5) << "position " << t;
  };
  expect_row(pre.logits.data(), 4);
  for (std::int64_t t = 5; t < T; ++t) {
    model_forward(step, model, ids.data() + t, 1, 1, &cache);
    expect_row(step.logits.data(), t);
  }
  EXPECT_EQ(cache.length, T);
}

TEST(TrainSampling, GreedyTopPAndTemperature) {
  std::vector<std::pair<float, std::int32_t>> scratch;
  Rng rng(5);
  const std::vector<float> logits = {0.0f, 3.0f, 1.0f, 3.0f, -2.0f};
  // greedy: the largest logit, lowest id on a tie
  EXPECT_EQ(sample_token(logits.data(), 5, {.temperature = 0.0, .top_p = 1.0}, rng, scratch), 1);
  // a tiny top-p keeps only the most likely token (ties broken by id)
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sample_token(logits.data(), 5, {.temperature = 1.0, .top_p = 1e-6}, rng, scratch), 1);
  // top-p 0.95: ids 1 and 3 hold 2·e³/(2e³+e+1+e⁻²) = 0.913 < 0.95, so id 2 (cumulative 0.974) is
  // kept too, never 0 or 4
  std::map<std::int32_t, int> seen;
  for (int i = 0; i < 2000; ++i) seen[sample_token(logits.data(), 5, {.temperature = 1.0, .top_p = 0.95}, rng, scratch)]++;
  EXPECT_EQ(seen.count(0), 0u);
  EXPECT_EQ(seen.count(4), 0u);
  EXPECT_GT(seen[2], 0);
  // full sampling matches the softmax: p(1) = e³ / Σ ≈ 0.4398
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += sample_token(logits.data(), 5, {.temperature = 1.0, .top_p = 1.0}, rng, scratch) == 1;
  const double p1 = std::exp(3.0) / (2 * std::exp(3.0) + std::exp(1.0) + 1.0 + std::exp(-2.0));
  EXPECT_NEAR(ones / static_cast<double>(n), p1, 5 * std::sqrt(p1 * (1 - p1) / n));
}

// ---- the `train` command ----

struct RunFiles {
  TempDir dir;
  std::string config;
  RunFiles() {
    write_tokens(dir.file("train.bin"), patterned_tokens(20000, 1));
    write_tokens(dir.file("valid.bin"), patterned_tokens(4000, 2));
    nlohmann::json j = {{"model", {{"vocab_size", 64}, {"context_length", 16}, {"d_model", 32}, {"num_layers", 2},
                                   {"num_heads", 4}, {"d_ff", 48}, {"rope_theta", 10000.0}}},
                        {"train_data", dir.file("train.bin")},
                        {"valid_data", dir.file("valid.bin")},
                        {"batch_size", 8},
                        {"steps", 40},
                        {"threads", 1},   // ctest runs tests side by side: no oversubscription
                        {"device", "cpu"},
                        {"optimizer", {{"lr_max", 1e-2}, {"lr_min", 1e-3}, {"warmup", 5}}},
                        {"eval", {{"interval", 20}, {"batches", 2}}},
                        {"checkpoint", {{"interval", 20}, {"keep", 0}}},
                        {"log_interval", 1},
                        {"peak_flops", 1e10}};
    config = dir.file("run.json");
    test::write_bytes(config, j.dump());
  }
  std::string out(const std::string& name) const { return dir.file(name); }
};

std::vector<nlohmann::json> read_metrics(const std::string& run_dir) {
  std::vector<nlohmann::json> records;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
  return records;
}

std::vector<double> train_losses(const std::vector<nlohmann::json>& records) {
  std::vector<double> losses;
  for (const auto& r : records)
    if (r.contains("train_loss")) losses.push_back(r["train_loss"].get<double>());
  return losses;
}

TEST(TrainCommand, LearnsLogsAndCheckpoints) {
  RunFiles f;
  const auto r = test::run_cli({"train", "--config", f.config, "--out_dir", f.out("run")});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("effective settings"), std::string::npos);
  const auto records = read_metrics(f.out("run"));
  const auto losses = train_losses(records);
  ASSERT_EQ(losses.size(), 40u);
  EXPECT_LT(losses.back(), losses.front() - 1.0) << "loss should fall on patterned data";
  int evals = 0;
  for (const auto& rec : records)
    if (rec.contains("val_loss")) {
      ++evals;
      EXPECT_NEAR(rec["val_ppl"].get<double>(), std::exp(rec["val_loss"].get<double>()), 1e-9);
    }
  EXPECT_EQ(evals, 2);
  for (const char* key : {"step", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s"}) EXPECT_TRUE(records[0].contains(key)) << key;
  // the checkpoint has CS336 names and the optimizer state
  const SafetensorsFile weights(f.out("run") + "/checkpoints/step_000040/model.safetensors");
  EXPECT_TRUE(weights.has("layers.1.attn.output_proj.weight"));
  EXPECT_EQ(weights.info("layers.0.ffn.w1.weight").shape, (std::vector<std::int64_t>{48, 32}));
  EXPECT_TRUE(fs::exists(f.out("run") + "/checkpoints/step_000020/optimizer.safetensors"));
  // GPT-2's 50,257 tokens do not fit a 64-token model
  test::expect_clean_failure(test::run_cli({"generate", "--checkpoint", f.out("run"), "--tokenizer",
                                            test::data_path("gpt2"), "--prompt", "x"}),
                             {"not the tokenizer"});
}

// A byte-level vocabulary (256 bytes + <|endoftext|>) in dir/tok and a model trained on a repeated
// sentence in dir/run.
void train_byte_model(const TempDir& dir) {
  save_tokenizer_dir(dir.file("tok"), test::byte_vocab());
  std::vector<std::uint32_t> ids;
  for (int rep = 0; rep < 400; ++rep)
    for (unsigned char ch : std::string("the cat sat on the mat. ")) ids.push_back(ch);
  write_tokens(dir.file("train.bin"), ids);
  const std::vector<std::string> model = {"--model.vocab_size", "257", "--model.context_length", "32",
                                          "--model.d_model", "32", "--model.num_layers", "1",
                                          "--model.num_heads", "2", "--model.d_ff", "64",
                                          "--model.rope_theta", "10000.0", "--train_data", dir.file("train.bin"),
                                          "--steps", "60", "--batch_size", "8", "--optimizer.lr_max", "1e-2",
                                          "--optimizer.warmup", "5", "--out_dir", dir.file("run"),
                                          "--peak_flops", "1e10"};
  std::vector<std::string> args = {"train"};
  args.insert(args.end(), model.begin(), model.end());
  std::vector<std::string> bad = args;
  bad.insert(bad.end(), {"--config", "/dev/null"});
  // --config /dev/null is not JSON: the command must say so, then run without it
  test::expect_clean_failure(test::run_cli(bad), {"/dev/null"});
  args.insert(args.end(), {"--threads", "1", "--device", "cpu"});
  const auto trained = test::run_cli(args);
  ASSERT_EQ(trained.exit_code, 0) << trained.err;
}

TEST(GenerateCommand, GreedyIsDeterministicAndSamplingFollowsTheSeed) {
  TempDir dir;
  train_byte_model(dir);
  auto gen = [&](const std::string& temperature, const std::string& seed, const std::string& device = "cpu",
                 const std::string& precision = "bf16") {
    const auto r = test::run_cli({"generate", "--checkpoint", dir.file("run"), "--tokenizer", dir.file("tok"), "--prompt",
                                  "the cat", "--max-new-tokens", "20", "--temperature", temperature, "--seed", seed,
                                  "--threads", "1", "--device", device, "--precision", precision});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("tokens/s"), std::string::npos);
    return r.out;
  };
  const std::string greedy = gen("0", "1");
  EXPECT_EQ(greedy.rfind("the cat", 0), 0u);
  EXPECT_EQ(greedy, gen("0", "2")) << "greedy decoding does not depend on the seed";
  EXPECT_NE(greedy.find(" sat on the mat"), std::string::npos) << greedy;   // it learned the sentence
  EXPECT_EQ(gen("1", "7"), gen("1", "7"));
  if (cuda_device_count() > 0) {   // the GPU decodes the same text (fp32: the CPU's arithmetic up to rounding)
    EXPECT_EQ(gen("0", "1", "cuda", "fp32"), greedy);
    EXPECT_NE(gen("0", "1", "cuda", "bf16").find(" sat on the mat"), std::string::npos);
    EXPECT_EQ(gen("1", "7", "cuda"), gen("1", "7", "cuda"));
  }
  test::expect_clean_failure(test::run_cli({"generate", "--checkpoint", dir.file("run"), "--tokenizer", dir.file("tok"),
                                            "--prompt", "x", "--top-p", "1.5"}),
                             {"--top-p"});
}

// --batch-file: one completion a line, in order, escaped (\\, \n, \r), each the text the same prompt
// gives alone; --out writes the lines to a file instead. On the GPU, the decoder's batch does not
// change any prompt's text (greedy or sampled).
TEST(GenerateCommand, BatchFileGivesOneCompletionPerLine) {
  TempDir dir;
  train_byte_model(dir);
  const std::vector<std::string> prompts = {"the cat", "", "on the m", "sat"};
  std::string file;
  for (const std::string& p : prompts) file += p + "\n";
  test::write_bytes(dir.file("prompts.txt"), file);
  auto escaped = [](const std::string& text) {
    std::string out;
    for (char ch : text) {
      if (ch == '\\') out += "\\\\";
      else if (ch == '\n') out += "\\n";
      else if (ch == '\r') out += "\\r";
      else out += ch;
    }
    return out;
  };
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"generate", "--checkpoint", dir.file("run"), "--tokenizer", dir.file("tok"),
                                     "--max-new-tokens", "12", "--threads", "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
    return r;
  };
  for (const std::string temperature : {"0", "1"}) {
    SCOPED_TRACE("temperature " + temperature);
    const auto batch = run({"--batch-file", dir.file("prompts.txt"), "--device", "cpu", "--temperature", temperature,
                            "--seed", "5"});
    std::string want;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      // prompt i samples with seed + i; alone it prints the prompt, the completion and a newline
      const auto one = run({"--prompt", prompts[i], "--device", "cpu", "--temperature", temperature, "--seed",
                            std::to_string(5 + i)});
      ASSERT_EQ(one.out.rfind(prompts[i], 0), 0u);
      ASSERT_EQ(one.out.back(), '\n');
      want += escaped(one.out.substr(prompts[i].size(), one.out.size() - prompts[i].size() - 1)) + "\n";
    }
    EXPECT_EQ(batch.out, want);
    if (temperature == "0") {
      EXPECT_NE(batch.out.find("on the mat"), std::string::npos) << batch.out;
    }
    // --out: the same lines in the file, nothing on stdout
    const auto to_file = run({"--batch-file", dir.file("prompts.txt"), "--device", "cpu", "--temperature", temperature,
                              "--seed", "5", "--out", dir.file("out.txt")});
    EXPECT_EQ(to_file.out, "");
    EXPECT_EQ(test::read_bytes(dir.file("out.txt")), want);
    if (cuda_device_count() > 0) {
      // 4 prompts through 2, 3 and 4 slots of the GPU decoder: the same lines
      std::string first;
      for (const std::string bs : {"2", "3", "4"}) {
        const auto gpu = run({"--batch-file", dir.file("prompts.txt"), "--device", "cuda", "--temperature", temperature,
                              "--seed", "5", "--batch-size", bs});
        EXPECT_EQ(std::count(gpu.out.begin(), gpu.out.end(), '\n'), 4) << gpu.out;
        if (first.empty()) first = gpu.out;
        EXPECT_EQ(gpu.out, first) << "batch size " << bs;
      }
      if (temperature == "0") {
        EXPECT_NE(first.find("on the mat"), std::string::npos) << first;
      }
    }
  }
  test::expect_clean_failure(test::run_cli({"generate", "--checkpoint", dir.file("run"), "--tokenizer", dir.file("tok"),
                                            "--prompt", "x", "--batch-file", dir.file("prompts.txt")}),
                             {"--prompt", "--batch-file"});
  test::expect_clean_failure(test::run_cli({"generate", "--checkpoint", dir.file("run"), "--tokenizer", dir.file("tok"),
                                            "--prompt", "x", "--out", dir.file("o.txt")}),
                             {"--out", "--batch-file"});
  test::expect_clean_failure(test::run_cli({"generate", "--checkpoint", dir.file("run"), "--tokenizer", dir.file("tok"),
                                            "--batch-file", dir.file("missing.txt")}),
                             {"missing.txt"});
  test::write_bytes(dir.file("long.txt"), "the cat\n" + std::string(40, 'a') + "\n");
  test::expect_clean_failure(test::run_cli({"generate", "--checkpoint", dir.file("run"), "--tokenizer", dir.file("tok"),
                                            "--batch-file", dir.file("long.txt"), "--device", "cpu"}),
                             {"long.txt:2", "context length"});
}

TEST(TrainCommand, ResumeIsExactBitForBit) {
  RunFiles f;
  const auto straight = test::run_cli({"train", "--config", f.config, "--out_dir", f.out("a")});
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  // the same run, stopped at step 20 and resumed
  const auto first = test::run_cli({"train", "--config", f.config, "--out_dir", f.out("b"), "--steps", "20",
                                    "--optimizer.cycle", "40"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const auto second = test::run_cli({"train", "--resume", f.out("b"), "--steps", "40"});
  ASSERT_EQ(second.exit_code, 0) << second.err;
  const auto a = read_metrics(f.out("a")), b = read_metrics(f.out("b"));
  const auto la = train_losses(a), lb = train_losses(b);
  ASSERT_EQ(la.size(), lb.size());
  for (std::size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i], lb[i]) << "step " << i + 1;   // exact, not near
  EXPECT_EQ(test::read_bytes(f.out("a") + "/checkpoints/step_000040/model.safetensors"),
            test::read_bytes(f.out("b") + "/checkpoints/step_000040/model.safetensors"));
}

// With dropout the masks are a function of the run's seed, the step and the micro-batch
// (ops/dropout.h), so a resumed run draws the same ones: still bit for bit. Two micro-batches per
// step, so that the micro-batch index matters too; the first loss differs from the run without
// dropout (the masks are on in training).
TEST(TrainCommand, ResumeWithDropoutIsExactBitForBit) {
  RunFiles f;
  const std::vector<std::string> dropout = {"--model.dropout", "0.1", "--model.attention_dropout", "0.1",
                                            "--grad_accum", "2", "--batch_size", "4"};
  auto train = [&](std::vector<std::string> args, bool with_dropout = true) {
    if (with_dropout) args.insert(args.end(), dropout.begin(), dropout.end());
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  };
  train({"train", "--config", f.config, "--out_dir", f.out("a"), "--steps", "12"});
  train({"train", "--config", f.config, "--out_dir", f.out("b"), "--steps", "6", "--optimizer.cycle", "12"});
  train({"train", "--resume", f.out("b"), "--steps", "12"}, false);   // the checkpoint's config has the dropout
  train({"train", "--config", f.config, "--out_dir", f.out("c"), "--steps", "1", "--grad_accum", "2", "--batch_size", "4"},
        false);
  const auto la = train_losses(read_metrics(f.out("a"))), lb = train_losses(read_metrics(f.out("b")));
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(la.size(), lb.size());
  for (std::size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i], lb[i]) << "step " << i + 1;
  EXPECT_EQ(test::read_bytes(f.out("a") + "/checkpoints/step_000012/model.safetensors"),
            test::read_bytes(f.out("b") + "/checkpoints/step_000012/model.safetensors"));
  EXPECT_NE(train_losses(read_metrics(f.out("c")))[0], la[0]);
}

TEST(TrainCommand, NanLossStopsAndKeepsTheLastCheckpoint) {
  RunFiles f;
  const auto r = test::run_cli({"train", "--config", f.config, "--out_dir", f.out("run"), "--optimizer.lr_max", "1e30",
                                "--optimizer.warmup", "0", "--optimizer.clip", "0", "--checkpoint.interval", "1"});
  expect_clean_failure(r, {"step ", "is ", "last good checkpoint"});
  // every checkpoint on disk is complete and loadable
  for (const auto& e : fs::directory_iterator(f.out("run") + "/checkpoints")) {
    if (e.path().filename().string().rfind("step_", 0) != 0) continue;
    SafetensorsFile weights(e.path().string() + "/model.safetensors");
    for (const float v : weights.floats("ln_final.weight")) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST(TrainCommand, BadInputFailsCleanlyNamingTheProblem) {
  RunFiles f;
  using test::expect_clean_failure;
  using test::run_cli;
  const std::string out = f.out("run");
  expect_clean_failure(run_cli({"train", "--config", f.out("missing.json")}), {"missing.json"});
  test::write_bytes(f.out("bad.json"), "{\"model\": ");
  expect_clean_failure(run_cli({"train", "--config", f.out("bad.json")}), {"bad.json", "invalid JSON"});
  test::write_bytes(f.out("unknown.json"), "{\"batch_sise\": 4}");
  expect_clean_failure(run_cli({"train", "--config", f.out("unknown.json")}), {"unknown field", "batch_sise"});
  expect_clean_failure(run_cli({"train", "--config", f.config, "--out_dir", out, "--model.num_heads", "5"}),
                       {"d_model", "num_heads"});
  expect_clean_failure(run_cli({"train", "--config", f.config, "--out_dir", out, "--model.context_length", "50000"}),
                       {"train.bin", "fewer than context_length"});
  expect_clean_failure(run_cli({"train", "--config", f.config, "--out_dir", out, "--model.vocab_size", "32"}),
                       {"train.bin", "outside the model's vocabulary"});
  expect_clean_failure(run_cli({"train", "--config", f.config, "--out_dir", out, "--steps", "ten"}), {"--steps"});
  expect_clean_failure(run_cli({"train", "--config", f.config, "--out_dir", out, "--batch_size", "0"}), {"batch_size"});
  expect_clean_failure(run_cli({"train", "--resume", f.out("nowhere")}), {"nowhere"});
  expect_clean_failure(run_cli({"train", "--config", f.config, "--out_dir", out, "--device", "tpu"}), {"device", "tpu"});
  expect_clean_failure(run_cli({"train", "--config", f.config, "--out_dir", out, "--precision", "fp16"}),
                       {"precision", "fp16"});
  expect_clean_failure(run_cli({"train", "--config", f.config, "--out_dir", out, "--recompute", "yes"}), {"--recompute"});
  if (cuda_device_count() == 0)
    expect_clean_failure(run_cli({"train", "--config", f.config, "--out_dir", out, "--device", "cuda"}),
                         {"device \"cuda\"", "--device cpu"});
  // a finished run: its checkpoint cannot be overwritten by a fresh start, nor loaded into another shape
  ASSERT_EQ(run_cli({"train", "--config", f.config, "--out_dir", out, "--steps", "2"}).exit_code, 0);
  expect_clean_failure(run_cli({"train", "--config", f.config, "--out_dir", out}), {"already holds checkpoints", "--resume"});
  expect_clean_failure(run_cli({"train", "--resume", out, "--steps", "4", "--model.d_model", "64"}),
                       {"different model", "d_model"});
  // a truncated checkpoint is refused, and the failed resume writes nothing: every file of the run
  // keeps its bytes
  const std::string weights = out + "/checkpoints/step_000002/model.safetensors";
  fs::resize_file(weights, fs::file_size(weights) - 100);
  std::map<std::string, std::string> before;
  for (const auto& e : fs::recursive_directory_iterator(out))
    if (e.is_regular_file()) before[e.path().string()] = test::read_bytes(e.path().string());
  expect_clean_failure(run_cli({"train", "--resume", out, "--steps", "4"}), {"model.safetensors"});
  expect_clean_failure(run_cli({"generate", "--checkpoint", out, "--tokenizer", test::data_path("gpt2"), "--prompt", "x"}),
                       {"model.safetensors"});
  std::map<std::string, std::string> after;
  for (const auto& e : fs::recursive_directory_iterator(out))
    if (e.is_regular_file()) after[e.path().string()] = test::read_bytes(e.path().string());
  EXPECT_EQ(before, after);
}


// ---- the same command on the GPU (skipped without one) -------------------------------------------

#define SLM_REQUIRE_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU on this machine"

TEST(TrainCommandGpu, LearnsAndResumesBitForBit) {
  SLM_REQUIRE_GPU();
  RunFiles f;
  const auto straight = test::run_cli({"train", "--config", f.config, "--out_dir", f.out("a"), "--device", "cuda"});
  ASSERT_EQ(straight.exit_code, 0) << straight.err << straight.out;
  EXPECT_NE(straight.out.find("memory plan (GPU, bf16)"), std::string::npos) << straight.out;
  const auto la = train_losses(read_metrics(f.out("a")));
  ASSERT_EQ(la.size(), 40u);
  EXPECT_LT(la.back(), la.front() - 1.0) << "loss should fall on patterned data";
  const auto first = test::run_cli({"train", "--config", f.config, "--out_dir", f.out("b"), "--steps", "20",
                                    "--optimizer.cycle", "40", "--device", "cuda"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const auto second = test::run_cli({"train", "--resume", f.out("b"), "--steps", "40"});
  ASSERT_EQ(second.exit_code, 0) << second.err;
  const auto lb = train_losses(read_metrics(f.out("b")));
  ASSERT_EQ(la.size(), lb.size());
  for (std::size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i], lb[i]) << "step " << i + 1;   // exact, not near
  EXPECT_EQ(test::read_bytes(f.out("a") + "/checkpoints/step_000040/model.safetensors"),
            test::read_bytes(f.out("b") + "/checkpoints/step_000040/model.safetensors"));
}

// A checkpoint written on one device continues on the other. In fp32 the two devices differ only
// by summation order, so the losses of the continued runs agree closely with a one-device run.
TEST(TrainCommandGpu, CheckpointsMoveBetweenCpuAndGpu) {
  SLM_REQUIRE_GPU();
  RunFiles f;
  const auto cpu = test::run_cli({"train", "--config", f.config, "--out_dir", f.out("cpu"), "--device", "cpu"});
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  const auto reference = train_losses(read_metrics(f.out("cpu")));
  for (const char* first_device : {"cuda", "cpu"}) {
    const std::string second_device = std::string(first_device) == "cuda" ? "cpu" : "cuda";
    const std::string dir = f.out(std::string("from_") + first_device);
    const auto a = test::run_cli({"train", "--config", f.config, "--out_dir", dir, "--steps", "20", "--optimizer.cycle",
                                  "40", "--device", first_device, "--precision", "fp32"});
    ASSERT_EQ(a.exit_code, 0) << a.err;
    const auto b = test::run_cli({"train", "--resume", dir, "--steps", "40", "--device", second_device, "--precision",
                                  "fp32"});
    ASSERT_EQ(b.exit_code, 0) << b.err << b.out;
    const auto losses = train_losses(read_metrics(dir));
    ASSERT_EQ(losses.size(), reference.size());
    for (std::size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], reference[i], 1e-3 * reference[i]) << first_device << " then " << second_device
                                                                << ", step " << i + 1;
  }
}

TEST(TrainCommandGpu, NanLossStopsWithoutUpdating) {
  SLM_REQUIRE_GPU();
  RunFiles f;
  const auto r = test::run_cli({"train", "--config", f.config, "--out_dir", f.out("run"), "--optimizer.lr_max", "1e30",
                                "--optimizer.warmup", "0", "--optimizer.clip", "0", "--checkpoint.interval", "1",
                                "--device", "cuda"});
  test::expect_clean_failure(r, {"step ", "is ", "last good checkpoint"});
  for (const auto& e : fs::directory_iterator(f.out("run") + "/checkpoints")) {
    if (e.path().filename().string().rfind("step_", 0) != 0) continue;
    SafetensorsFile weights(e.path().string() + "/model.safetensors");
    for (const float v : weights.floats("ln_final.weight")) ASSERT_TRUE(std::isfinite(v));
  }
}

}  // namespace
}  // namespace scratchlm
