// scratchlm_bench_train: CPU training throughput of the reference path, and where the step's time
// goes. Usage: scratchlm_bench_train MODEL_JSON BATCH [STEPS]
//   - this machine's sgemm FLOP/s (1024³ products, all threads): the roofline for this path;
//   - median time of a full training step (forward, loss, backward, clipping, AdamW) on random
//     tokens → tokens/s and achieved FLOP/s (model FLOPs, 6N + attention, as MFU counts them);
//   - the same step's pieces replayed alone: the linear layers' matrix products (the 6N part),
//     attention forward + backward, and the rest (norms, RoPE, SwiGLU, cross-entropy, AdamW).
// Prints a table and one JSON line (prefix "json: ") for bench/train_cpu/run.sh.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "model/accounting.h"
#include "model/model.h"
#include "ops/attention.h"
#include "ops/linear.h"
#include "train/optimizer.h"
#include "util/files.h"
#include "util/progress.h"

using namespace scratchlm;

namespace {

template <class F>
double median_seconds(int reps, F&& f) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const double start = now_seconds();
    f();
    t.push_back(now_seconds() - start);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_JSON BATCH [STEPS]\n", argv[0]);
    return 2;
  }
  const ModelConfig c = model_config_from_json(nlohmann::json::parse(read_file(argv[1])), argv[1]);
  const std::int64_t B = std::stoll(argv[2]), T = c.context_length, N = B * T;
  const int steps = argc > 3 ? std::stoi(argv[3]) : 10;
  const std::int64_t C = c.d_model, F = c.d_ff, V = c.vocab_size;

  const double sgemm = measure_sgemm_flops(1.0);
  Model model(c);
  Rng rng(0);
  init_params(model.layout, model.params.data(), rng);
  std::vector<std::int32_t> x(N), y(N);
  for (auto& v : x) v = static_cast<std::int32_t>(rng.below(V));
  for (auto& v : y) v = static_cast<std::int32_t>(rng.below(V));
  Activations acts(c, B, T);
  std::vector<float> grads(model.layout.total);
  AdamWState adam(model.layout.total);
  auto step = [&]() {
    std::fill(grads.begin(), grads.end(), 0.0f);
    model_forward(acts, model, x.data(), B, T);
    model_loss(acts, model, y.data());
    model_backward(grads, acts, model, x.data(), y.data(), 1.0f);
    clip_grad_norm(grads.data(), model.layout.total, 1.0);
    adamw_step(model.params.data(), grads.data(), adam, model.layout, 1e-4, AdamWOptions{});
  };
  step();   // warm-up: first touch of every buffer
  const double t_step = median_seconds(steps, step);

  // The linear layers' products of one step: forward y = x Wᵀ, backward dx = dy W and dW += dyᵀ x.
  std::vector<float> a(N * std::max({C, F, V})), b(N * std::max({C, F, V})), w(std::max({C * C, C * F, C * V}));
  auto linears = [&]() {
    auto lin = [&](std::int64_t din, std::int64_t dout) {
      linear_forward(b.data(), a.data(), w.data(), N, din, dout);
      linear_backward(a.data(), w.data(), b.data(), a.data(), w.data(), N, din, dout, Accumulate::no);
    };
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      for (int p = 0; p < 4; ++p) lin(C, C);
      lin(C, F);
      lin(C, F);
      lin(F, C);
    }
    lin(C, V);
  };
  const double t_linear = median_seconds(steps, linears);
  const AttentionDims dims{.B = B, .H = c.num_heads, .D = c.d_head(), .Tq = T, .Tk = T, .kv_batch_stride = 0};
  std::vector<float> q(N * C, 0.1f), k(N * C, 0.2f), v(N * C, 0.3f), o(N * C), lse(B * c.num_heads * T), dq(N * C),
      dk(N * C), dv(N * C);
  auto attention = [&]() {
    for (std::int64_t l = 0; l < c.num_layers; ++l) {
      attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), dims);
      attention_backward(dq.data(), dk.data(), dv.data(), o.data(), q.data(), k.data(), v.data(), o.data(), lse.data(), dims);
    }
  };
  const double t_attention = median_seconds(steps, attention);

  const Accounting acc = compute_accounting(c, B, T);
  const double flops_per_token = train_flops_per_token(c, T);
  const double tokens_per_s = static_cast<double>(N) / t_step;
  const double achieved = flops_per_token * tokens_per_s;
  const double linear_flops = 6.0 * static_cast<double>(N) *
                              static_cast<double>(c.num_layers * (4 * C * C + 3 * C * F) + C * V);
  std::printf("model %lld params, batch %lld x %lld, %d threads\n", static_cast<long long>(model.layout.total),
              static_cast<long long>(B), static_cast<long long>(T), omp_get_max_threads());
  std::printf("BLAS: %s\n", blas_description().c_str());
  std::printf("sgemm 1024^3:            %8.1f GFLOP/s\n", sgemm / 1e9);
  std::printf("training step (median):  %8.1f ms   %8.0f tokens/s   %6.1f GFLOP/s = %.0f%% of sgemm\n", 1e3 * t_step,
              tokens_per_s, achieved / 1e9, 100 * achieved / sgemm);
  std::printf("  linear matmuls alone:  %8.1f ms   (%4.0f%% of the step, %6.1f GFLOP/s)\n", 1e3 * t_linear,
              100 * t_linear / t_step, linear_flops / t_linear / 1e9);
  std::printf("  attention fwd+bwd:     %8.1f ms   (%4.0f%%)\n", 1e3 * t_attention, 100 * t_attention / t_step);
  std::printf("  everything else:       %8.1f ms   (%4.0f%%)\n", 1e3 * (t_step - t_linear - t_attention),
              100 * (t_step - t_linear - t_attention) / t_step);
  nlohmann::ordered_json j = {{"params", model.layout.total}, {"blas", blas_description()}, {"batch", B}, {"seq", T},
                              {"sgemm_gflops", sgemm / 1e9}, {"step_ms", 1e3 * t_step},
                              {"tokens_per_s", tokens_per_s}, {"achieved_gflops", achieved / 1e9},
                              {"fraction_of_sgemm", achieved / sgemm}, {"linear_ms", 1e3 * t_linear},
                              {"attention_ms", 1e3 * t_attention}, {"train_flops_per_token", flops_per_token},
                              {"forward_flops_per_sequence", acc.forward_per_sequence}};
  std::printf("json: %s\n", j.dump().c_str());
  return 0;
}
