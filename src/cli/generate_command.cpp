// `scratchlm generate`: samples text from a trained checkpoint, streaming it to stdout.
#include <omp.h>

#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "generate/generate.h"
#include "tensor/device.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab.h"
#include "train/checkpoint.h"
#include "util/error.h"
#include "util/progress.h"

namespace scratchlm::cli {
namespace {

struct GenerateArgs {
  std::string checkpoint, tokenizer, prompt;
  std::int64_t max_new_tokens = 256;
  double temperature = 1.0, top_p = 1.0;
  std::uint64_t seed = 0;
  int threads = 0;
  std::string device = "auto", precision = "bf16";
};

void run(const GenerateArgs& a) {
  if (a.temperature < 0) fail("--temperature must be >= 0 (0 = greedy), got ", a.temperature);
  if (!(a.top_p > 0 && a.top_p <= 1)) fail("--top-p must be in (0, 1], got ", a.top_p);
  if (a.max_new_tokens < 0) fail("--max-new-tokens must be >= 0");
  if (a.threads > 0) omp_set_num_threads(a.threads);   // else OMP_NUM_THREADS, or all cores
  if (a.device != "auto" && a.device != "cpu" && a.device != "cuda")
    fail("--device must be auto, cpu or cuda, got \"", a.device, "\"");
  if (a.precision != "bf16" && a.precision != "fp32") fail("--precision must be bf16 or fp32, got \"", a.precision, "\"");
  const bool gpu = a.device == "cuda" || (a.device == "auto" && cuda_device_count() > 0);
  if (gpu && cuda_device_count() == 0)
    fail("--device cuda: ", cuda_compiled() ? "no GPU is visible to this machine" : "this build has no CUDA");
  const std::string dir = resolve_checkpoint(a.checkpoint);
  Model model(read_checkpoint_model_config(dir));
  load_checkpoint_weights(dir, model);
  Tokenizer tok(load_tokenizer_dir(a.tokenizer));
  if (tok.vocab_size() > model.config.vocab_size)
    fail(a.tokenizer, ": the tokenizer has ", tok.vocab_size(), " tokens but the model only ", model.config.vocab_size,
         ": not the tokenizer it was trained with");
  // <|endoftext|> ends a document: generation stops there, and an empty prompt starts after it.
  std::int32_t eot = -1;
  for (std::int32_t id : tok.vocab().special_ids)
    if (tok.vocab().tokens[id] == "<|endoftext|>") eot = id;
  std::vector<std::uint32_t> ids;
  tok.encode(a.prompt, ids);
  std::vector<std::int32_t> prompt(ids.begin(), ids.end());
  if (prompt.empty()) {
    if (eot < 0) fail("--prompt is empty and the tokenizer has no <|endoftext|> to start from");
    prompt = {eot};
  }
  std::fprintf(stderr, "generate: checkpoint %s on %s, prompt %zu tokens, temperature %g, top-p %g, seed %llu, max %lld new tokens\n",
               dir.c_str(), gpu ? (a.precision == "bf16" ? "the GPU (bf16)" : "the GPU (fp32)") : "the CPU", prompt.size(),
               a.temperature, a.top_p, static_cast<unsigned long long>(a.seed),
               static_cast<long long>(a.max_new_tokens));
  std::fwrite(a.prompt.data(), 1, a.prompt.size(), stdout);
  std::fflush(stdout);
  Rng rng(a.seed);
  const double start = now_seconds();
  const SampleOptions sampling{.temperature = a.temperature, .top_p = a.top_p};
  auto print_token = [&](std::int32_t id) {
    const auto u = static_cast<std::uint32_t>(id);
    const std::string bytes = tok.decode_bytes(&u, 1);
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
  };
  const GenerateResult r = gpu ? generate_gpu(model, a.precision == "bf16", prompt, a.max_new_tokens, sampling, eot, rng,
                                              print_token)
                               : generate(model, prompt, a.max_new_tokens, sampling, eot, rng, print_token);
  const double seconds = now_seconds() - start;
  std::printf("\n");
  std::fflush(stdout);
  std::fprintf(stderr, "generated %zu tokens in %.2f s (%.1f tokens/s); stopped at %s\n", r.tokens.size(), seconds,
               static_cast<double>(r.tokens.size()) / std::max(seconds, 1e-9), stop_reason_name(r.stop));
}

}  // namespace

void register_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* sub = app.add_subcommand("generate", "Generate text from a trained checkpoint (CPU, KV cache)");
  sub->add_option("--checkpoint", a->checkpoint, "checkpoint directory, or a run directory (its newest checkpoint)")
      ->required();
  sub->add_option("--tokenizer", a->tokenizer, "tokenizer directory the model was trained with")->required();
  sub->add_option("--prompt", a->prompt, "text to continue (empty: start a new document after <|endoftext|>)");
  sub->add_option("--max-new-tokens", a->max_new_tokens, "stop after this many new tokens")->capture_default_str();
  sub->add_option("--temperature", a->temperature, "softmax temperature; 0 = greedy")->capture_default_str();
  sub->add_option("--top-p", a->top_p, "nucleus sampling: keep the most likely tokens up to this mass")->capture_default_str();
  sub->add_option("--seed", a->seed, "sampling seed")->capture_default_str();
  sub->add_option("--threads", a->threads, "CPU threads (0 = all)")->capture_default_str();
  sub->add_option("--device", a->device, "auto (the GPU when present), cpu or cuda")->capture_default_str();
  sub->add_option("--precision", a->precision, "on the GPU: bf16 or fp32")->capture_default_str();
  sub->callback([a]() { run(*a); });
}

}  // namespace scratchlm::cli
