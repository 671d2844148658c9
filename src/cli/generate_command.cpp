// `scratchlm generate`: samples text from a trained checkpoint. One prompt (--prompt) streams its
// text to stdout; a batch file (--batch-file, one prompt per line) gives one completion per line,
// in order. On the GPU (bf16) the prompts run through the decoder of generate/gpu_decoder.h, up to
// --batch-size at once; on the CPU, one after another through generate().
#include <omp.h>

#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "generate/generate.h"
#include "generate/gpu_decoder.h"
#include "tensor/device.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab.h"
#include "train/checkpoint.h"
#include "util/error.h"
#include "util/files.h"
#include "util/progress.h"

namespace scratchlm::cli {
namespace {

struct GenerateArgs {
  std::string checkpoint, tokenizer, prompt, batch_file, out;
  std::int64_t max_new_tokens = 256;
  std::int64_t batch_size = 32;
  double temperature = 1.0, top_p = 1.0;
  std::uint64_t seed = 0;
  int threads = 0;
  std::string device = "auto", precision = "bf16";
};

// A completion as one line: backslash, newline and carriage return escaped (\\, \n, \r).
std::string one_line(const std::string& text) {
  std::string out;
  for (char ch : text) {
    if (ch == '\\') out += "\\\\";
    else if (ch == '\n') out += "\\n";
    else if (ch == '\r') out += "\\r";
    else out += ch;
  }
  return out;
}

// The prompts of a batch file, one a line ("\r\n" line ends too; no prompt after a final newline).
std::vector<std::string> read_prompt_lines(const std::string& path) {
  const std::string text = read_file(path);
  std::vector<std::string> lines;
  std::size_t begin = 0;
  while (begin < text.size()) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    begin = end + 1;
  }
  return lines;
}

// Prompt and decode token counts and times of a whole run, for the closing line.
struct RunTotals {
  std::int64_t prompt_tokens = 0, generated = 0, decode_tokens = 0;
  double prefill_s = 0, decode_s = 0;
};

void run(const GenerateArgs& a) {
  if (a.temperature < 0) fail("--temperature must be >= 0 (0 = greedy), got ", a.temperature);
  if (!(a.top_p > 0 && a.top_p <= 1)) fail("--top-p must be in (0, 1], got ", a.top_p);
  if (a.max_new_tokens < 0) fail("--max-new-tokens must be >= 0");
  if (a.batch_size < 1) fail("--batch-size must be >= 1, got ", a.batch_size);
  if (!a.batch_file.empty() && !a.prompt.empty()) fail("--prompt and --batch-file exclude each other: give one");
  if (!a.out.empty() && a.batch_file.empty()) fail("--out is for --batch-file (a single --prompt streams to stdout)");
  if (a.threads > 0) omp_set_num_threads(a.threads);   // else OMP_NUM_THREADS, or all cores
  if (a.device != "auto" && a.device != "cpu" && a.device != "cuda")
    fail("--device must be auto, cpu or cuda, got \"", a.device, "\"");
  if (a.precision != "bf16" && a.precision != "fp32") fail("--precision must be bf16 or fp32, got \"", a.precision, "\"");
  if (a.device == "cuda" && cuda_device_count() == 0)
    fail("--device cuda: ", cuda_compiled() ? "no GPU is visible to this machine" : "this build has no CUDA");
  const bool batch = !a.batch_file.empty();
  const std::string dir = resolve_checkpoint(a.checkpoint);
  Model model(read_checkpoint_model_config(dir));
  load_checkpoint_weights(dir, model);
  const ModelConfig& c = model.config;
  // The GPU generates the CS336 architecture only so far: --device auto runs a variant on the CPU
  // (which has all of them, with its KV cache); --device cuda asks the GPU, which names what it lacks.
  const bool gpu = a.device == "cuda" || (a.device == "auto" && cuda_device_count() > 0 && c.is_default_architecture());
  if (a.device == "auto" && cuda_device_count() > 0 && !gpu)
    std::fprintf(stderr, "generate: the GPU has the CS336 architecture only so far; this model's variant runs on the CPU\n");
  Tokenizer tok(load_tokenizer_dir(a.tokenizer));
  if (tok.vocab_size() > c.vocab_size)
    fail(a.tokenizer, ": the tokenizer has ", tok.vocab_size(), " tokens but the model only ", c.vocab_size,
         ": not the tokenizer it was trained with");
  // <|endoftext|> ends a document: generation stops there, and an empty prompt starts after it.
  std::int32_t eot = -1;
  for (std::int32_t id : tok.vocab().special_ids)
    if (tok.vocab().tokens[id] == "<|endoftext|>") eot = id;

  const std::vector<std::string> texts = batch ? read_prompt_lines(a.batch_file) : std::vector<std::string>{a.prompt};
  std::vector<std::vector<std::int32_t>> prompts;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::string where = batch ? str(a.batch_file, ":", i + 1) : std::string("--prompt");
    std::vector<std::uint32_t> ids;
    tok.encode(texts[i], ids);
    std::vector<std::int32_t> p(ids.begin(), ids.end());
    if (p.empty()) {
      if (eot < 0) fail(where, ": the prompt is empty and the tokenizer has no <|endoftext|> to start from");
      p = {eot};
    }
    if (static_cast<std::int64_t>(p.size()) > c.context_length)
      fail(where, ": the prompt is ", p.size(), " tokens, longer than the context length ", c.context_length);
    prompts.push_back(std::move(p));
  }
  const auto n = static_cast<std::int64_t>(prompts.size());
  const bool decoder = gpu && a.precision == "bf16";
  const std::int64_t device_batch = std::max<std::int64_t>(1, std::min(n, a.batch_size));
  std::fprintf(stderr,
               "generate: checkpoint %s on %s, %lld prompt%s%s, temperature %g, top-p %g, seed %llu, max %lld new tokens\n",
               dir.c_str(),
               decoder ? "the GPU (bf16, KV-cache decoder)"
               : gpu   ? "the GPU (fp32, full recompute per token)"
                       : "the CPU",
               static_cast<long long>(n), n == 1 ? "" : "s",
               decoder && batch ? str(", ", device_batch, " at a time").c_str() : "", a.temperature, a.top_p,
               static_cast<unsigned long long>(a.seed), static_cast<long long>(a.max_new_tokens));

  const SampleOptions sampling{.temperature = a.temperature, .top_p = a.top_p};
  auto bytes_of = [&](const std::vector<std::int32_t>& ids) {
    std::vector<std::uint32_t> u(ids.begin(), ids.end());
    return tok.decode_bytes(u);
  };
  // A single prompt streams: the prompt, then each token as it comes.
  auto print_token = [&](std::int32_t id) {
    const std::string bytes = bytes_of({id});
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
  };
  if (!batch) {
    std::fwrite(a.prompt.data(), 1, a.prompt.size(), stdout);
    std::fflush(stdout);
  }
  std::vector<GenerateResult> results;
  RunTotals t;
  const double start = now_seconds();
  if (decoder) {
    GpuDecoder dec(model, fastest_decoder_options(device_batch, model.config.d_model));
    std::fprintf(stderr, "%s\n", dec.describe().c_str());
    results = dec.generate(prompts, a.max_new_tokens, sampling, eot, a.seed,
                           [&](std::int64_t, std::int32_t id) {
                             if (!batch) print_token(id);
                           });
    const DecodeTimes& dt = dec.times();
    t = {dt.prompt_tokens, dt.generated_tokens, dt.decode_tokens, dt.prefill_s, dt.decode_s};
  } else {
    // One prompt after another; prompt i samples with Rng(seed + i) (prompt 0: the seed itself).
    for (std::int64_t i = 0; i < n; ++i) {
      Rng rng(a.seed + static_cast<std::uint64_t>(i));
      const double t0 = now_seconds();
      double first = -1;
      auto on_token = [&](std::int32_t id) {
        if (first < 0) first = now_seconds();
        if (!batch) print_token(id);
      };
      results.push_back(gpu ? generate_gpu(model, false, prompts[i], a.max_new_tokens, sampling, eot, rng, on_token)
                            : generate(model, prompts[i], a.max_new_tokens, sampling, eot, rng, on_token));
      const double t1 = now_seconds();
      const auto g = static_cast<std::int64_t>(results.back().tokens.size());
      t.prompt_tokens += static_cast<std::int64_t>(prompts[i].size());
      t.generated += g;
      t.decode_tokens += std::max<std::int64_t>(0, g - 1);
      t.prefill_s += (first < 0 ? t1 : first) - t0;   // up to the first token: the prompt's pass
      t.decode_s += first < 0 ? 0.0 : t1 - first;
    }
  }
  const double seconds = now_seconds() - start;
  if (batch) {
    std::string lines;
    for (const GenerateResult& r : results) lines += one_line(bytes_of(r.tokens)) + "\n";
    if (a.out.empty()) std::fwrite(lines.data(), 1, lines.size(), stdout);
    else write_file_atomic(a.out, lines);
  } else {
    std::printf("\n");
  }
  std::fflush(stdout);
  std::int64_t stops[3] = {0, 0, 0};
  for (const GenerateResult& r : results) stops[static_cast<int>(r.stop)] += 1;
  const std::string stopped =
      n == 1 ? str("stopped at ", stop_reason_name(results[0].stop))
             : str("stopped: ", stops[0], " at end of text, ", stops[1], " at max new tokens, ", stops[2],
                   " at the context length");
  auto rate = [](double tokens, double s) { return tokens / std::max(s, 1e-9); };
  std::fprintf(stderr,
               "generated %lld tokens in %.3f s (%.1f tokens/s); prefill %lld prompt tokens in %.3f s (%.1f tokens/s), "
               "decode %lld tokens in %.3f s (%.1f tokens/s); %s\n",
               static_cast<long long>(t.generated), seconds, rate(static_cast<double>(t.generated), seconds),
               static_cast<long long>(t.prompt_tokens), t.prefill_s, rate(static_cast<double>(t.prompt_tokens), t.prefill_s),
               static_cast<long long>(t.decode_tokens), t.decode_s, rate(static_cast<double>(t.decode_tokens), t.decode_s),
               stopped.c_str());
}

}  // namespace

void register_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* sub = app.add_subcommand("generate", "Generate text from a trained checkpoint (KV cache, CPU or GPU)");
  sub->add_option("--checkpoint", a->checkpoint, "checkpoint directory, or a run directory (its newest checkpoint)")
      ->required();
  sub->add_option("--tokenizer", a->tokenizer, "tokenizer directory the model was trained with")->required();
  sub->add_option("--prompt", a->prompt, "text to continue (empty: start a new document after <|endoftext|>)");
  sub->add_option("--batch-file", a->batch_file,
                  "file of prompts, one a line (an empty line starts after <|endoftext|>): one completion a line on "
                  "stdout, in order, with \\, newline and CR escaped as \\\\, \\n, \\r");
  sub->add_option("--out", a->out, "with --batch-file: write the completions to this file instead of stdout");
  sub->add_option("--batch-size", a->batch_size, "on the GPU: prompts decoded at once (at most 32)")
      ->capture_default_str();
  sub->add_option("--max-new-tokens", a->max_new_tokens, "stop after this many new tokens")->capture_default_str();
  sub->add_option("--temperature", a->temperature, "softmax temperature; 0 = greedy")->capture_default_str();
  sub->add_option("--top-p", a->top_p, "nucleus sampling: keep the most likely tokens up to this mass")->capture_default_str();
  sub->add_option("--seed", a->seed, "sampling seed")->capture_default_str();
  sub->add_option("--threads", a->threads, "CPU threads (0 = all)")->capture_default_str();
  sub->add_option("--device", a->device, "auto (the GPU when present), cpu or cuda")->capture_default_str();
  sub->add_option("--precision", a->precision, "on the GPU: bf16 (the KV-cache decoder) or fp32 (full recompute)")
      ->capture_default_str();
  sub->callback([a]() { run(*a); });
}

}  // namespace scratchlm::cli
