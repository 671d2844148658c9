// The GPU model's architecture variants (issue 6) against the CPU model, the spec: for each variant
// and the combinations the PyTorch fixtures cover, one forward and backward on the same weights
// and batch, comparing the loss, the logits (capped where the model caps them) and every
// parameter gradient.
//   fp32: the GPU runs the CPU's arithmetic in another summation order (cuBLASLt's products, the
//   kernels' fixed-order reductions), so each tensor agrees to a few ulps of its largest terms:
//   relative error (‖got − want‖ / ‖want‖) below 1e-4.
//   bf16: every matrix product reads operands rounded to 8 bits of mantissa (relative 2⁻⁹ ≈ 2e-3
//   each) and the errors of a layer's products add up through the two layers and the backward:
//   below 5e-2, the bound that catches a wrong wiring (which gives errors of order 1) without
//   flagging rounding. Some variants are worse conditioned than others (no norm with biases and
//   saturated soft-caps: the residual stream grows and tanh's derivative cancels), and their
//   gradients move more under the same rounding; for those the bound is 4× the variant's own
//   sensitivity, measured on the CPU: how far its loss, logits and gradients move when only the
//   weights are rounded to bf16 (the GPU also rounds each product's activations, one to three
//   roundings more per product; the ratio measured on an H200 is 0.8× to 3.3×). The default model
//   is held to PyTorch's own bf16 error in gpu_model_test.
#include <gtest/gtest.h>

#if SCRATCHLM_CUDA

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "model/config.h"
#include "model/gpu_model.h"
#include "model/model.h"
#include "tensor/bf16.h"
#include "test_util.h"
#include "util/error.h"
#include "util/rng.h"

namespace scratchlm {
namespace {

struct Variant {
  std::string name;
  std::function<void(ModelConfig&)> set;
};

// The variants one field at a time, then the combinations of the reference fixtures
// (tests/data/reference/variants) and a few more that cross the code paths.
std::vector<Variant> variants() {
  return {
      {"default", [](ModelConfig&) {}},
      {"layernorm", [](ModelConfig& c) { c.norm = Norm::layernorm; }},
      {"layernorm_no_bias", [](ModelConfig& c) { c.norm = Norm::layernorm, c.norm_bias = false; }},
      {"no_norm", [](ModelConfig& c) { c.norm = Norm::none; }},
      {"post_norm", [](ModelConfig& c) { c.norm_placement = NormPlacement::post; }},
      {"double_norm", [](ModelConfig& c) { c.norm_placement = NormPlacement::pre_and_post; }},
      {"geglu", [](ModelConfig& c) { c.ffn = FfnKind::geglu, c.activation = Activation::gelu; }},
      {"reglu", [](ModelConfig& c) { c.ffn = FfnKind::reglu, c.activation = Activation::relu; }},
      {"mlp_gelu", [](ModelConfig& c) { c.ffn = FfnKind::mlp, c.activation = Activation::gelu; }},
      {"mlp_silu", [](ModelConfig& c) { c.ffn = FfnKind::mlp, c.activation = Activation::silu; }},
      {"mlp_relu2", [](ModelConfig& c) { c.ffn = FfnKind::mlp, c.activation = Activation::relu2; }},
      {"parallel", [](ModelConfig& c) { c.parallel_block = true; }},
      {"nope", [](ModelConfig& c) { c.position = Position::none; }},
      {"sinusoidal", [](ModelConfig& c) { c.position = Position::sinusoidal; }},
      {"learned", [](ModelConfig& c) { c.position = Position::learned; }},
      {"gqa", [](ModelConfig& c) { c.num_kv_heads = 2; }},
      {"mqa", [](ModelConfig& c) { c.num_kv_heads = 1; }},
      {"head_dim", [](ModelConfig& c) { c.head_dim = 16; }},
      {"window", [](ModelConfig& c) { c.attention_window = 5; }},
      {"interleaved_nope_full",
       [](ModelConfig& c) {
         c.attention_window = 4, c.full_attention_every = 2, c.full_attention_position = Position::none;
       }},
      {"qk_norm", [](ModelConfig& c) { c.qk_norm = true; }},
      {"z_loss", [](ModelConfig& c) { c.z_loss = 1e-2; }},
      {"logit_softcap", [](ModelConfig& c) { c.logit_softcap = 3.0; }},
      {"attn_softcap", [](ModelConfig& c) { c.attn_softcap = 2.0; }},
      {"tied", [](ModelConfig& c) { c.tie_embeddings = true; }},
      {"bias", [](ModelConfig& c) { c.bias = true; }},
      {"moe_top2_shared",
       [](ModelConfig& c) { c.moe = {.num_experts = 4, .top_k = 2, .num_shared = 1, .d_ff_expert = 32}; }},
      {"moe_capacity",
       [](ModelConfig& c) { c.moe = {.num_experts = 4, .top_k = 1, .d_ff_expert = 48, .capacity_factor = 1.0}; }},
      {"gqa_window_qknorm_tied",
       [](ModelConfig& c) { c.num_kv_heads = 2, c.attention_window = 6, c.qk_norm = true, c.tie_embeddings = true; }},
      {"postnorm_layernorm_gelu_mlp",
       [](ModelConfig& c) {
         c.norm_placement = NormPlacement::post, c.norm = Norm::layernorm, c.ffn = FfnKind::mlp,
         c.activation = Activation::gelu;
       }},
      {"nope_parallel", [](ModelConfig& c) { c.position = Position::none, c.parallel_block = true; }},
      {"double_layernorm_bias_geglu",
       [](ModelConfig& c) {
         c.norm_placement = NormPlacement::pre_and_post, c.norm = Norm::layernorm, c.bias = true,
         c.ffn = FfnKind::geglu, c.activation = Activation::gelu;
       }},
      {"parallel_moe_learned",
       [](ModelConfig& c) {
         c.parallel_block = true, c.position = Position::learned,
         c.moe = {.num_experts = 3, .top_k = 2, .d_ff_expert = 32};
       }},
      {"no_norm_bias_softcaps_zloss",
       [](ModelConfig& c) { c.norm = Norm::none, c.bias = true, c.attn_softcap = 4.0, c.logit_softcap = 5.0, c.z_loss = 1e-3; }},
  };
}

struct Pass {
  double loss = 0;
  std::vector<float> logits, grads;
};

// The CPU's loss, logits (forward only, as the model outputs them) and gradients.
Pass cpu_pass(Model& model, const std::vector<std::int32_t>& ids, const std::vector<std::int32_t>& targets,
              std::int64_t B, std::int64_t T) {
  Pass p;
  Activations acts(model.config, B, T);
  model_forward(acts, model, ids.data(), B, T);
  p.loss = model_loss(acts, model, targets.data());
  p.logits = acts.logits;
  p.grads.assign(model.params.size(), 0.0f);
  model_backward(p.grads, acts, model, ids.data(), targets.data(), 1.0f);
  return p;
}

Pass gpu_pass(const Model& model, GpuPrecision precision, const std::vector<std::int32_t>& ids,
              const std::vector<std::int32_t>& targets, std::int64_t B, std::int64_t T) {
  Pass p;
  GpuModel gpu(model.config, {.precision = precision, .batch = B, .grad_accum = 1, .with_backward = true});
  gpu.set_params(model.params.data());
  p.logits.resize(static_cast<std::size_t>(B * T * model.config.vocab_size));
  const double loss = gpu.forward(ids.data(), targets.data(), B, T, p.logits.data());
  p.loss = gpu.forward_backward(ids.data(), targets.data(), B, T, 1.0f);
  EXPECT_EQ(loss, p.loss) << "forward and forward_backward compute the same loss";
  p.grads.resize(model.params.size());
  gpu.get_grads(p.grads.data());
  return p;
}

// A small model (two layers, so that the residual paths between blocks are crossed) with every
// parameter off its initial value (biases and gains included, so that their use is checked).
Model variant_model(const Variant& v, std::int64_t head_dim_default) {
  ModelConfig c = test::model_shape(96, 16, 4 * head_dim_default, 2, 4, 64);
  v.set(c);
  validate(c, v.name);
  Model model(c);
  Rng rng(7);
  init_params(model.layout, model.params.data(), rng);
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> jitter(-0.1f, 0.1f);
  for (float& x : model.params) x += jitter(gen);
  return model;
}

// The worst relative change of the loss, logits and any gradient between two passes.
double worst_difference(const Model& model, const Pass& got, const Pass& want) {
  double worst = std::max(std::fabs(got.loss - want.loss) / std::fabs(want.loss), test::rel_error(got.logits, want.logits));
  for (const ParamSpec& s : model.layout.specs) {
    const double e = test::rel_error(got.grads.data() + s.offset, want.grads.data() + s.offset,
                                     static_cast<std::size_t>(s.numel()));
    worst = std::max(worst, e);
  }
  return worst;
}

// How far the CPU's pass moves when the weights are rounded to bf16 (the variant's conditioning).
double bf16_weight_sensitivity(const Model& model, const Pass& want, const std::vector<std::int32_t>& ids,
                               const std::vector<std::int32_t>& targets, std::int64_t B, std::int64_t T) {
  Model rounded(model.config);
  for (std::size_t i = 0; i < model.params.size(); ++i) rounded.params[i] = to_float(to_bf16(model.params[i]));
  return worst_difference(model, cpu_pass(rounded, ids, targets, B, T), want);
}

void check_variants(GpuPrecision precision, std::int64_t D, double floor_bound) {
  const std::int64_t B = 2, T = 16;
  std::mt19937 gen(5);
  std::uniform_int_distribution<std::int32_t> token(0, 95);
  std::vector<std::int32_t> ids(B * T), targets(B * T);
  for (auto& x : ids) x = token(gen);
  for (auto& x : targets) x = token(gen);
  for (const Variant& v : variants()) {
    SCOPED_TRACE(v.name);
    Model model = variant_model(v, D);
    const Pass want = cpu_pass(model, ids, targets, B, T);
    const Pass got = gpu_pass(model, precision, ids, targets, B, T);
    const double sensitivity =
        precision == GpuPrecision::bf16 ? bf16_weight_sensitivity(model, want, ids, targets, B, T) : 0.0;
    const double bound = std::max(floor_bound, 4 * sensitivity);
    const double loss_err = std::fabs(got.loss - want.loss) / std::fabs(want.loss);
    const double logits_err = test::rel_error(got.logits, want.logits);
    double worst = 0;
    std::string worst_name;
    for (const ParamSpec& s : model.layout.specs) {
      const double e = test::rel_error(got.grads.data() + s.offset, want.grads.data() + s.offset,
                                       static_cast<std::size_t>(s.numel()));
      EXPECT_LT(e, bound) << "grad " << s.name;
      if (e > worst) worst = e, worst_name = s.name;
    }
    std::printf("  %-30s loss %.1e logits %.1e worst grad %.1e (%s)", v.name.c_str(), loss_err, logits_err, worst,
                worst_name.c_str());
    if (precision == GpuPrecision::bf16) std::printf("  weight-rounding sensitivity %.1e, bound %.1e", sensitivity, bound);
    std::printf("\n");
    EXPECT_LT(loss_err, bound);
    EXPECT_LT(logits_err, bound);
  }
}

TEST(GpuModelVariants, Fp32MatchesTheCpu) {
  SLM_REQUIRE_GPU();
  check_variants(GpuPrecision::fp32, 8, 1e-4);
}

// Head dim 32: the bf16 path's tensor-core attention (attention_forward_mma and its backward).
TEST(GpuModelVariants, Bf16MatchesTheCpuWithinItsRounding) {
  SLM_REQUIRE_GPU();
  check_variants(GpuPrecision::bf16, 32, 5e-2);
}

// The training step (captured as a CUDA graph from its second step) on a model combining
// variants (the trajectory against PyTorch's AdamW is checked for the default model in
// gpu_model_test): four steps on one batch lower its loss, and the weights the replays leave give
// the CPU's loss.
TEST(GpuModelVariants, TrainingStepsReplayTheVariantKernels) {
  SLM_REQUIRE_GPU();
  const Variant v{"combined", [](ModelConfig& c) {
                    c.num_kv_heads = 2, c.qk_norm = true, c.norm = Norm::layernorm, c.z_loss = 1e-3, c.moe = {.num_experts = 4, .top_k = 2, .num_shared = 1, .d_ff_expert = 32};
                  }};
  Model model = variant_model(v, 8);
  const std::int64_t B = 2, T = 16;
  std::vector<std::int32_t> x(B * T), y(B * T);
  for (std::int64_t i = 0; i < B * T; ++i) x[i] = static_cast<std::int32_t>((7 * i) % 96), y[i] = x[(i + 1) % (B * T)];
  GpuModel gpu(model.config, {.precision = GpuPrecision::fp32, .batch = B, .grad_accum = 1, .with_backward = true});
  gpu.set_params(model.params.data());
  const GpuOptimizerOptions opt{.lr_max = 3e-3, .lr_min = 3e-3, .warmup = 0, .cycle = 10,
                                .adamw = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.0,
                                          .decay_norm_gains = true},
                                .clip = 0.0};
  std::vector<double> losses;
  for (std::int64_t s = 0; s < 4; ++s) {
    gpu.submit_step(x.data(), y.data(), {.step = s, .adam_step = s}, opt);
    const GpuStepStats st = gpu.finish_step();
    losses.push_back(st.loss);
  }
  EXPECT_LT(losses.back(), losses.front()) << "four AdamW steps on one batch lower its loss";
  // the graph's last replay updated the weights: the GPU's own forward on them gives the CPU's loss
  gpu.get_params(model.params.data());
  Activations acts(model.config, B, T);
  model_forward(acts, model, x.data(), B, T);
  const double cpu_loss = model_loss(acts, model, y.data());
  const double gpu_loss = gpu.forward(x.data(), y.data(), B, T);
  EXPECT_NEAR(gpu_loss, cpu_loss, 1e-4 * cpu_loss);
  EXPECT_LT(cpu_loss, losses.front());
}

// What the GPU path does not implement is refused by field name, with the way to the CPU.
TEST(GpuModelVariants, RefusesWhatItDoesNotImplementByName) {
  SLM_REQUIRE_GPU();
  const std::vector<std::pair<std::string, std::function<void(ModelConfig&)>>> refused = {
      {"dropout", [](ModelConfig& c) { c.dropout = 0.1; }},
      {"attention_dropout", [](ModelConfig& c) { c.attention_dropout = 0.1; }},
      {"ffn", [](ModelConfig& c) { c.ffn = FfnKind::geglu, c.moe = {.num_experts = 2, .top_k = 1, .d_ff_expert = 8}; }},
  };
  for (const auto& [field, set] : refused) {
    ModelConfig c = test::model_shape(32, 16, 16, 2, 4, 32);
    set(c);
    validate(c, field);
    try {
      GpuModel gpu(c, {.precision = GpuPrecision::fp32, .with_backward = false});
      ADD_FAILURE() << field << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("\"" + field + "\""), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("--device cpu"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace scratchlm

#endif  // SCRATCHLM_CUDA
