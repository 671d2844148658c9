// scratchlm_bench_generate: generation throughput of the GPU decoder (generate/gpu_decoder.h) on
// random weights (init_params), the measurement torch_decode.py and hf_generate.py make for their
// peers: B prompts of 16 random tokens, 256 new tokens each, greedy, no stop token.
//   scratchlm_bench_generate [--configs ts-17M,gpt2s-124M] [--batches 1,32] [--gemm own,cublas] [--pdl 0,1]
//                            [--in-flight 8] [--prompt 16] [--new 256] [--runs 5] [--profile 1]
// Prints one JSON line per (config, batch, gemm, pdl, in-flight): decode tokens/s (the decode steps'
// GPU time, prefill excluded, as torch_decode.py counts) and total tokens/s (wall time of the whole
// generate call, prefill included, as Hugging Face's generate is timed), medians of --runs after a
// warm-up; the time per token against the memory floor: the bf16 weights one step reads (and the KV
// cache at the mean length) over the device-to-device copy bandwidth measured here first.
// --profile 1 prints (stderr) the time per kernel of one eager step at the mean length.
// ts-17M's context is 256; RoPE has no weights, so its context is raised to prompt + new (272) for
// the 256 new tokens to fit, as torch_decode.py sizes its cache to prompt + new + 8.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "generate/gpu_decoder.h"
#include "model/model.h"
#include "tensor/device.h"
#include "util/error.h"
#include "util/rng.h"

using namespace scratchlm;

namespace {

ModelConfig shape(const std::string& name) {
  ModelConfig c;
  c.rope_theta = 10000.0;
  if (name == "ts-17M") {
    c.vocab_size = 10000, c.context_length = 256, c.d_model = 512, c.num_layers = 4, c.num_heads = 16, c.d_ff = 1344;
  } else if (name == "gpt2s-124M") {
    c.vocab_size = 50304, c.context_length = 1024, c.d_model = 768, c.num_layers = 12, c.num_heads = 12, c.d_ff = 2048;
  } else {
    fail("unknown config ", name, " (ts-17M or gpt2s-124M)");
  }
  return c;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string configs = "ts-17M,gpt2s-124M", batches = "1,32", gemms = "own,cublas", pdls = "0,1", in_flights = "8";
    int prompt_len = 16, new_tokens = 256, runs = 5;
    bool profile = false;
    for (int i = 1; i < argc; i += 2) {
      const std::string flag = argv[i];
      if (i + 1 >= argc) fail(flag, " needs a value");
      const std::string v = argv[i + 1];
      if (flag == "--configs") configs = v;
      else if (flag == "--batches") batches = v;
      else if (flag == "--gemm") gemms = v;
      else if (flag == "--pdl") pdls = v;
      else if (flag == "--in-flight") in_flights = v;
      else if (flag == "--prompt") prompt_len = std::stoi(v);
      else if (flag == "--new") new_tokens = std::stoi(v);
      else if (flag == "--runs") runs = std::stoi(v);
      else if (flag == "--profile") profile = v == "1";
      else fail("unknown flag ", flag);
    }
    if (cuda_device_count() == 0) fail("no GPU");
    if (prompt_len < 1 || new_tokens < 1 || runs < 1) fail("--prompt, --new and --runs must be >= 1");
    const double bandwidth = gpu_copy_bandwidth(std::int64_t{1} << 30);
    std::printf("%s\n", nlohmann::json{{"kind", "copy_bandwidth"},
                                       {"device", cuda_device_description(0)},
                                       {"bytes_per_s", bandwidth}}
                            .dump()
                            .c_str());
    std::fflush(stdout);
    for (const std::string& name : split(configs)) {
      ModelConfig c = shape(name);
      c.context_length = std::max<std::int64_t>(c.context_length, prompt_len + new_tokens);
      Model model(c);
      {
        Rng rng(0);
        init_params(model.layout, model.params.data(), rng);
      }
      for (const std::string& bs : split(batches)) {
        const int B = std::stoi(bs);
        std::vector<std::vector<std::int32_t>> prompts(static_cast<std::size_t>(B));
        Rng rng(1);
        for (auto& p : prompts) {
          p.resize(static_cast<std::size_t>(prompt_len));
          for (auto& t : p) t = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(c.vocab_size)));
        }
        for (const std::string& g : split(gemms))
          for (const std::string& pdl_s : split(pdls))
            for (const std::string& fl : split(in_flights)) {
              const DecoderGemm gemm = g == "cublas" ? DecoderGemm::cublas : DecoderGemm::own;
              const bool pdl = pdl_s == "1";
              if (gemm == DecoderGemm::cublas && pdl) continue;   // PDL is for our own kernels
              GpuDecoder dec(model, {.max_batch = B,
                                     .max_length = prompt_len + new_tokens,
                                     .gemm = gemm,
                                     .pdl = pdl,
                                     .in_flight = std::stoi(fl)});
              std::fprintf(stderr, "%s %s\n", name.c_str(), dec.describe().c_str());
              const SampleOptions greedy{.temperature = 0.0, .top_p = 1.0};
              std::vector<double> decode_tps, total_tps, prefill_ms, step_us;
              for (int r = 0; r <= runs; ++r) {   // run 0 warms up
                const auto res = dec.generate(prompts, new_tokens, greedy, -1, 0);
                const DecodeTimes& t = dec.times();
                for (const GenerateResult& x : res)
                  if (static_cast<int>(x.tokens.size()) != new_tokens) fail("a sequence stopped early");
                if (r == 0) continue;
                decode_tps.push_back(static_cast<double>(t.decode_tokens) / t.decode_s);
                total_tps.push_back(static_cast<double>(t.generated_tokens) / t.total_s);
                prefill_ms.push_back(t.prefill_s * 1e3);
                step_us.push_back(t.decode_s / static_cast<double>(t.steps) * 1e6);
              }
              const double step = median(step_us);
              const double floor_w = static_cast<double>(dec.step_weight_bytes()) / bandwidth * 1e6;
              const double mean_length = prompt_len + new_tokens / 2.0;
              const double floor_wc =
                  static_cast<double>(dec.step_weight_bytes() +
                                      dec.step_cache_bytes(B, static_cast<std::int64_t>(mean_length))) /
                  bandwidth * 1e6;
              nlohmann::json j{{"impl", "scratchlm"},
                               {"config", name},
                               {"batch", B},
                               {"gemm", g},
                               {"pdl", pdl},
                               {"in_flight", std::stoi(fl)},
                               {"new_tokens", new_tokens * B},
                               {"decode_tokens_per_s", median(decode_tps)},
                               {"total_tokens_per_s", median(total_tps)},
                               {"prefill_ms", median(prefill_ms)},
                               {"us_per_step", step},
                               {"us_per_token", step / B},
                               {"floor_weights_us_per_step", floor_w},
                               {"floor_weights_cache_us_per_step", floor_wc},
                               {"weight_bytes", dec.step_weight_bytes()}};
              std::printf("%s\n", j.dump().c_str());
              std::fflush(stdout);
              if (profile && !pdl) {
                // Slots at the mean length of the run, then one step with an event after each kernel.
                const int mean_steps = new_tokens / 2;
                dec.set_sampling(greedy, -1, 0);
                for (int b = 0; b < B; ++b) dec.start(b, prompts[b], new_tokens, b);
                for (int s = 0; s < mean_steps; ++s) {
                  dec.step();
                  if (s % 32 == 31)
                    for (int b = 0; b < B; ++b) dec.events(b);   // keep the record ring read
                }
                std::fprintf(stderr, "%s batch %d, %s, length %d: %s", name.c_str(), B, g.c_str(),
                             prompt_len + mean_steps, dec.profile_step().c_str());
              }
            }
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
