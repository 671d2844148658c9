// scratchlm_bench_gpu: training throughput of the GPU path on random tokens, the measurement
// ../shared/peers/torch_lm.py makes for PyTorch (same model, batch, optimizer and clipping).
//   scratchlm_bench_gpu CONFIG.json [--steps 30] [--warmup 8] [--precision bf16|fp32]
// --profile 1 also prints (stderr) the time per part of one eager step.
// Prints one JSON line: tokens/s, ms per step (median of the timed steps), MFU against 989 TFLOP/s
// with the peer's FLOP count, and the peak bytes held in scratchlm's device buffers (comparable to
// torch.cuda.max_memory_allocated).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "model/accounting.h"
#include "model/config.h"
#include "model/gpu_model.h"
#include "model/params.h"
#include "tensor/device.h"
#include "tensor/gpu_buffer.h"
#include "util/error.h"
#include "util/json_file.h"
#include "util/rng.h"

using namespace scratchlm;

// torch_lm.py's flops_per_token: 6 × matmul parameters + 3 × causal attention (QKᵀ and PV, half).
double peer_flops_per_token(const ModelConfig& c) {
  const double V = c.vocab_size, d = c.d_model, L = c.num_layers, T = c.context_length, F = c.d_ff;
  return 6 * (V * d + L * (4 * d * d + 3 * d * F)) + 3 * (L * 2 * 2 * T * d / 2);
}

int main(int argc, char** argv) {
  try {
    if (argc < 2) fail("usage: scratchlm_bench_gpu CONFIG.json [--steps N] [--warmup N] [--precision bf16|fp32] [--profile 1] [--recompute 1]");
    int steps = 30, warmup = 8;
    bool profile = false, recompute = false;
    std::string precision = "bf16";
    for (int i = 2; i + 1 < argc; i += 2) {
      const std::string flag = argv[i];
      if (flag == "--steps") steps = std::stoi(argv[i + 1]);
      else if (flag == "--warmup") warmup = std::stoi(argv[i + 1]);
      else if (flag == "--precision") precision = argv[i + 1];
      else if (flag == "--profile") profile = std::string(argv[i + 1]) == "1";
      else if (flag == "--recompute") recompute = std::string(argv[i + 1]) == "1";
      else fail("unknown flag ", flag);
    }
    if (cuda_device_count() == 0) fail("no GPU");
    const nlohmann::json j = read_json_file(argv[1]);
    const ModelConfig c = model_config_from_json(j.at("model"), argv[1]);
    const std::int64_t B = j.at("batch_size"), T = c.context_length, N = B * T;
    GpuModel gpu(c, {.precision = precision == "bf16" ? GpuPrecision::bf16 : GpuPrecision::fp32,
                     .batch = B, .grad_accum = 1, .with_backward = true, .recompute = recompute});
    {
      const ParamLayout layout = param_layout(c);
      std::vector<float> params(static_cast<std::size_t>(layout.total));
      Rng rng(0);
      init_params(layout, params.data(), rng);
      gpu.set_params(params.data());
    }
    std::fprintf(stderr, "%s\n", gpu.memory_plan().c_str());
    std::mt19937 gen(0);
    std::uniform_int_distribution<std::int32_t> tok(0, static_cast<std::int32_t>(c.vocab_size - 1));
    const int batches = 4;   // rotate a few random batches
    std::vector<std::vector<std::int32_t>> xs(batches), ys(batches);
    for (int b = 0; b < batches; ++b) {
      xs[b].resize(N);
      ys[b].resize(N);
      for (auto& v : xs[b]) v = tok(gen);
      for (auto& v : ys[b]) v = tok(gen);
    }
    const GpuOptimizerOptions opt{.lr_max = 3e-4, .lr_min = 3e-4, .warmup = 0, .cycle = 1,
                                  .adamw = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1,
                                            .decay_norm_gains = true},
                                  .clip = 1.0};
    std::vector<double> ms;
    double loss = 0;
    using clock = std::chrono::steady_clock;
    // Steps back to back, as training runs them: the host stages the next batch while the device
    // runs a step; each step's time is from one finish to the next.
    auto t_all = clock::now();
    gpu.stage_step(xs[0].data(), ys[0].data());
    auto t0 = clock::now();
    for (int s = 0; s < warmup + steps; ++s) {
      if (s == warmup) t_all = clock::now();
      gpu.submit_staged({.step = s, .adam_step = s}, opt);
      gpu.stage_step(xs[(s + 1) % batches].data(), ys[(s + 1) % batches].data());
      loss = gpu.finish_step().loss;
      const auto t1 = clock::now();
      if (s >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      t0 = t1;
    }
    const double total_ms = std::chrono::duration<double, std::milli>(clock::now() - t_all).count();
    gpu.submit_staged({.step = warmup + steps, .adam_step = warmup + steps}, opt);   // the one staged last
    gpu.finish_step();
    if (profile)
      std::fprintf(stderr, "%s", gpu.profile_step(xs[0].data(), ys[0].data(), {.step = 0, .adam_step = 0}, opt).c_str());
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    const double tokens_per_s = static_cast<double>(N) / (median / 1e3);
    nlohmann::ordered_json out = {
        {"config", std::string(argv[1])}, {"mode", "scratchlm-" + precision + (recompute ? "-recompute" : "")}, {"ms_per_step", median},
        {"ms_per_step_mean", total_ms / steps}, {"tokens_per_s", std::round(tokens_per_s)},
        {"mfu_vs_989", peer_flops_per_token(c) * tokens_per_s / 989e12},
        // the model's own training FLOPs (accounting.h: every variant, the window's band, the routed experts)
        {"model_tflops", train_flops_per_token(c, c.context_length) * tokens_per_s / 1e12}, {"loss", loss},
        {"max_mem_gb", static_cast<double>(gpu_buffer_peak_bytes()) / (1ull << 30)},
        {"gpu", cuda_device_description(0)}};
    std::printf("%s\n", out.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
