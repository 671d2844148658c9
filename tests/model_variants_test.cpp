// The architecture variants of the model (issue 6), on the CPU: each variant's whole-model gradient
// against central finite differences of the loss, its parameter table, and the command line.
// Variants so far: the feed-forward (SwiGLU, GeGLU, ReGLU, plain MLP with ReLU, GeLU, SiLU, ReLU²),
// NoPE, tied embeddings, z-loss, final-logit soft-capping, QK-norm, parallel blocks, the norm
// (RMSNorm, LayerNorm with and without a bias, none) and its placement (pre, post, double), biases,
// mixtures of experts (top-k routing, shared experts, fine-grained experts, capacity dropping, the
// load-balancing loss); on the attention side grouped-query and multi-query attention, a head size
// other than d_model / heads, sliding windows (alone, interleaved with full layers, with NoPE on the
// full layers), the score soft-cap, sinusoidal and learned absolute positions, and dropout. Also:
// each variant's KV-cache decoding against its full forward, and the MoE layer against a plain
// double-precision loop of its formula.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "generate/generate.h"
#include "model/model.h"
#include "ops/dropout.h"
#include "tensor/device.h"
#include "tensor/safetensors.h"
#include "test_util.h"
#include "tokenizer/vocab.h"
#include "train/train_config.h"
#include "util/json_file.h"
#include "util/error.h"

namespace scratchlm {
namespace {

using test::SingleThreaded;

struct Variant {
  FfnKind ffn = FfnKind::swiglu;
  Activation activation = Activation::silu;
  Position position = Position::rope;
  bool tie = false;
  double z_loss = 0, softcap = 0;
  bool qk_norm = false;
  bool parallel = false;
  std::int64_t heads = 2, kv_heads = 0, head_dim = 0;
  std::int64_t window = 0, full_every = 0;
  bool full_nope = false;
  double attn_softcap = 0;
  double dropout = 0, attention_dropout = 0;
  Norm norm = Norm::rmsnorm;
  bool norm_bias = true;
  NormPlacement placement = NormPlacement::pre;
  bool bias = false;
  MoeConfig moe = {};
};

// Mixtures of experts of the tiny model (d_model 8).
constexpr MoeConfig kTop2Shared{.num_experts = 4, .top_k = 2, .num_shared = 1, .d_ff_expert = 12, .aux_loss = 0.1};
constexpr MoeConfig kFineGrained{.num_experts = 8, .top_k = 3, .num_shared = 1, .d_ff_expert = 4, .aux_loss = 0.1};
// capacity ceil(0.5·10·2/4) = 3 of the 20 assignments per expert: at least 8 are dropped
constexpr MoeConfig kCapacity{.num_experts = 4, .top_k = 2, .d_ff_expert = 8, .aux_loss = 0.1, .capacity_factor = 0.5};
// The load-balancing loss weighted heavily, so that a wrong gradient of it shows.
constexpr MoeConfig kHeavyAux{.num_experts = 4, .top_k = 1, .d_ff_expert = 8, .aux_loss = 5.0};

const Variant kVariants[] = {
    {},
    {.ffn = FfnKind::geglu, .activation = Activation::gelu},
    {.ffn = FfnKind::reglu, .activation = Activation::relu},
    {.ffn = FfnKind::mlp, .activation = Activation::relu},
    {.ffn = FfnKind::mlp, .activation = Activation::gelu},
    {.ffn = FfnKind::mlp, .activation = Activation::silu},
    {.ffn = FfnKind::mlp, .activation = Activation::relu2},
    {.position = Position::none},
    {.tie = true},
    {.z_loss = 0.1},
    {.softcap = 2.0},   // logits of the tiny model reach ~±4: the cap bends them
    {.qk_norm = true},
    {.parallel = true},
    {.ffn = FfnKind::geglu, .activation = Activation::gelu, .position = Position::none, .tie = true, .z_loss = 0.05,
     .softcap = 3.0, .qk_norm = true, .parallel = true},
    {.kv_heads = 1},                                   // multi-query
    {.heads = 4, .kv_heads = 2},                       // grouped-query, D = 2
    {.head_dim = 6},                                   // H·D = 12 ≠ d_model = 8
    {.window = 2},                                     // T = 5: every query past the window
    {.window = 2, .full_every = 2},                    // layer 0 windowed, layer 1 full
    {.window = 2, .full_every = 2, .full_nope = true}, // ... and the full layer without RoPE
    {.attn_softcap = 0.5},                             // scores of the tiny model reach ~±1
    {.position = Position::sinusoidal},
    {.position = Position::learned},
    {.dropout = 0.2, .attention_dropout = 0.3},        // the masks fixed by the seed
    // the issue's combination: GQA + sliding window + QK-norm + tied embeddings
    {.tie = true, .qk_norm = true, .heads = 4, .kv_heads = 2, .window = 2},
    // and most of the rest together: MQA with D = 4 over 4 heads, interleaved NoPE full layers, caps, dropout
    {.softcap = 3.0, .qk_norm = true, .parallel = true, .heads = 4, .kv_heads = 1, .head_dim = 4, .window = 3,
     .full_every = 2, .full_nope = true, .attn_softcap = 1.0, .dropout = 0.1, .attention_dropout = 0.1},
    {.position = Position::learned, .kv_heads = 1, .window = 3, .dropout = 0.1},
    {.norm = Norm::layernorm},
    {.norm = Norm::layernorm, .norm_bias = false},
    {.norm = Norm::none},
    {.placement = NormPlacement::post},
    {.placement = NormPlacement::pre_and_post},
    {.norm = Norm::layernorm, .placement = NormPlacement::pre_and_post},
    {.bias = true},
    // the issue's combinations: post-norm + LayerNorm + GeLU MLP; MoE top-2 with a shared expert
    {.ffn = FfnKind::mlp, .activation = Activation::gelu, .norm = Norm::layernorm, .placement = NormPlacement::post},
    {.moe = kTop2Shared},
    {.moe = kFineGrained},
    {.moe = kCapacity},
    {.moe = kHeavyAux},
    {.qk_norm = true, .parallel = true, .norm = Norm::none, .bias = true},
    {.ffn = FfnKind::geglu, .activation = Activation::gelu, .qk_norm = true, .norm = Norm::layernorm,
     .placement = NormPlacement::pre_and_post, .bias = true, .moe = kTop2Shared},
    {.ffn = FfnKind::mlp, .activation = Activation::gelu, .parallel = true, .bias = true, .moe = kCapacity},
    // attention and norm/ffn variants together: GQA with a window under post-LayerNorm with biases;
    // MQA with a head size of its own and attention dropout around a double-norm MoE (with residual
    // dropout as well the loss curves enough that h = 1e-2 measures 8e-3, 1.2e-3 at h = 4e-3: the h²
    // of truncation, not a wrong gradient; each pair of the three is checked below 6e-4)
    {.heads = 4, .kv_heads = 2, .window = 3, .dropout = 0.1, .norm = Norm::layernorm,
     .placement = NormPlacement::post, .bias = true},
    {.kv_heads = 1, .head_dim = 6, .attention_dropout = 0.1, .placement = NormPlacement::pre_and_post,
     .moe = kTop2Shared},
    {.dropout = 0.1, .attention_dropout = 0.1, .placement = NormPlacement::pre_and_post},
    {.dropout = 0.1, .moe = kTop2Shared},
};

ModelConfig tiny(const Variant& v) {
  ModelConfig c{.vocab_size = 23, .context_length = 8, .d_model = 8, .num_layers = 2, .num_heads = 2, .d_ff = 12};
  c.ffn = v.ffn;
  c.activation = v.activation;
  c.position = v.position;
  c.tie_embeddings = v.tie;
  c.z_loss = v.z_loss;
  c.logit_softcap = v.softcap;
  c.qk_norm = v.qk_norm;
  c.parallel_block = v.parallel;
  c.num_heads = v.heads;
  c.num_kv_heads = v.kv_heads;
  c.head_dim = v.head_dim;
  c.attention_window = v.window;
  c.full_attention_every = v.full_every;
  if (v.full_nope) c.full_attention_position = Position::none;
  c.attn_softcap = v.attn_softcap;
  c.dropout = v.dropout;
  c.attention_dropout = v.attention_dropout;
  c.norm = v.norm;
  c.norm_bias = v.norm_bias;
  c.norm_placement = v.placement;
  c.bias = v.bias;
  c.moe = v.moe;
  validate(c, "tiny");
  return c;
}

std::string name(const Variant& v) { return to_json(tiny(v)).dump(); }

// The tiny model of a variant with CS336-initialised weights.
Model initialised(const ModelConfig& c, std::uint64_t seed) {
  Model model(c);
  Rng rng(seed);
  init_params(model.layout, model.params.data(), rng);
  return model;
}

// Every layer's routing decisions: each token's set of selected experts, each marked kept or dropped
// (the order of the selected among themselves changes nothing: a token's slots go to distinct
// experts, so the capacity cut, in token order, does not depend on it either).
std::vector<std::pair<std::int32_t, bool>> routing(const Activations& acts, const ModelConfig& c) {
  std::vector<std::pair<std::int32_t, bool>> r;
  if (!c.is_moe()) return r;
  const std::size_t k = static_cast<std::size_t>(c.moe.top_k);
  for (const LayerActs& l : acts.layers)
    for (std::size_t n = 0; n < l.moe_expert.size() / k; ++n) {
      std::vector<std::pair<std::int32_t, bool>> token;
      for (std::size_t j = 0; j < k; ++j) token.emplace_back(l.moe_expert[n * k + j], l.moe_row[n * k + j] >= 0);
      std::sort(token.begin(), token.end());
      r.insert(r.end(), token.begin(), token.end());
    }
  return r;
}

// The smallest gap, over every layer's tokens, between the log-probabilities of the k-th and the
// (k+1)-th most probable expert (infinite without MoE or with k = E): how far the router logits
// must move before a routing decision changes.
double routing_margin(const Activations& acts, const ModelConfig& c) {
  double margin = INFINITY;
  const std::int64_t E = c.moe.num_experts, k = c.moe.top_k;
  if (!c.is_moe() || k == E) return margin;
  for (const LayerActs& l : acts.layers)
    for (std::size_t n = 0; n < l.moe_expert.size() / k; ++n) {
      const float* p = l.router_probs.data() + n * E;
      const float kth = p[l.moe_expert[n * k + k - 1]];
      float next = 0;   // the most probable expert not selected
      for (std::int64_t e = 0; e < E; ++e)
        if (std::find(&l.moe_expert[n * k], &l.moe_expert[n * k] + k, e) == &l.moe_expert[n * k] + k)
          next = std::max(next, p[e]);
      margin = std::min(margin, std::log(static_cast<double>(kth)) - std::log(static_cast<double>(next)));
    }
  return margin;
}

// Loss and gradients of the whole model against central differences of the fp32 loss (accumulated in
// double) at 3 entries of every parameter tensor. Error budget: the loss (≈3) carries a few
// ε·sqrt(tokens) of rounding, so a step h = 1e-2 gives ≈ 1e-5 of absolute noise per entry, and
// truncation h²·L''' is ~1e-5 relative: measured 3e-5 – 9e-4 over the sampled entries together
// (3e-3 with LayerNorm in double placement, whose norms of the small sublayer outputs curve the loss
// most), so the bound is 5e-3. ReLU's kink falls inside a step for some pre-activations, where the central
// difference averages two slopes: measured 1e-2 for the ReLU MLP, bound 5e-2. A wrong backward is
// far off (GeLU's derivative without its x·φ(x) term: 0.13 – 0.15). (The interleaved window's
// 2e-3 is truncation: one entry of gradient 0.35 off by 6e-4 at h = 1e-2 and by 1.5e-4 at h = 5e-3,
// the h² of a central difference.) The passes are training passes with a fixed dropout seed: the
// masks are the same in every evaluation of the loss, which is then a smooth function of the
// weights (and without dropout the phase changes nothing).
//
// Mixtures of experts: the objective (cross-entropy + aux_loss · Σ aux) is piecewise smooth — a
// top-k choice, the capacity cut and the counts f_e change only where two router probabilities
// cross, and there the loss jumps. A central difference is valid only if neither perturbed point
// changes a decision, so the test checks that every perturbation leaves every layer's routing (the
// selected experts and the kept assignments) as it was: for these seeds and h = 1e-2 the smallest
// gap between a token's k-th and (k+1)-th probability is far above what a step moves it. The
// initialisation's seed is the first from 7 on whose routing margin (routing_margin) is at least 0.2
// in log-probability: one weight moved by h shifts a router logit by h·|x| ≲ 0.05 (directly, or
// through the layers below). Each
// router tensor is also checked alone (its gradient, through the softmax, the renormalisation and
// the aux term, is a small part of the whole): measured 1e-5 – 9e-4, bound 5e-3. Leaving out the
// aux term's gradient, or the renormalisation's −Σ dw·w, fails both checks (0.06 – 1).
TEST(ModelVariants, WholeModelGradientMatchesFiniteDifferences) {
  SingleThreaded one_thread;
  const PassOptions train{.phase = Phase::training, .dropout_seed = 1234};
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(name(v));
    const ModelConfig c = tiny(v);
    Model model(c);
    const std::int64_t B = 2, T = 5, N = B * T;
    std::vector<std::int32_t> ids(N), targets(N);
    for (std::int64_t i = 0; i < N; ++i) {
      ids[i] = static_cast<std::int32_t>((i * 7 + 3) % c.vocab_size);
      targets[i] = static_cast<std::int32_t>((i * 5 + 1) % c.vocab_size);
    }
    Activations acts(c, B, T);
    for (std::uint64_t seed = 7;; ++seed) {
      ASSERT_LT(seed, 100u) << "no seed with a clear routing";
      Rng rng(seed);
      init_params(model.layout, model.params.data(), rng);
      model_forward(acts, model, ids.data(), B, T, nullptr, train);
      if (routing_margin(acts, c) >= 0.05) break;
    }
    auto loss = [&] {   // the objective backward differentiates: cross-entropy + z-loss + MoE aux
      model_forward(acts, model, ids.data(), B, T, nullptr, train);
      double objective = model_loss(acts, model, targets.data());
      for (float l : acts.ce_lse) objective += c.z_loss * l * l / static_cast<double>(N);
      return objective + c.moe.aux_loss * moe_aux(acts);
    };
    loss();
    const auto decisions = routing(acts, c);
    if (c.moe.capacity_factor > 0) {
      std::int64_t dropped = 0;
      for (const LayerActs& l : acts.layers) dropped += l.moe_dropped;
      EXPECT_GE(dropped, 8 * c.num_layers);   // the capacity really cuts
    }
    std::vector<float> grads(model.params.size(), 0.0f);
    model_backward(grads, acts, model, ids.data(), targets.data(), 1.0f);
    std::vector<double> analytic, numeric;
    int flips = 0;
    for (const ParamSpec& spec : model.layout.specs) {
      std::vector<double> spec_analytic, spec_numeric;
      for (std::int64_t k = 0; k < std::min<std::int64_t>(3, spec.numel()); ++k) {
        const std::int64_t i = spec.offset + (k * 7919) % spec.numel();
        const float saved = model.params[i];
        model.params[i] = saved + 1e-2f;
        const float up = model.params[i];
        const double l_up = loss();
        flips += routing(acts, c) != decisions;
        model.params[i] = saved - 1e-2f;
        const float down = model.params[i];
        const double l_down = loss();
        flips += routing(acts, c) != decisions;
        model.params[i] = saved;
        spec_numeric.push_back((l_up - l_down) / (static_cast<double>(up) - down));
        spec_analytic.push_back(grads[i]);
      }
      if (spec.name.ends_with("router.weight")) {
        EXPECT_LE(test::rel_error(spec_analytic, spec_numeric), 5e-3) << spec.name;
      }
      analytic.insert(analytic.end(), spec_analytic.begin(), spec_analytic.end());
      numeric.insert(numeric.end(), spec_numeric.begin(), spec_numeric.end());
    }
    EXPECT_EQ(flips, 0) << "a perturbation changed a routing decision: the finite differences are not valid";
    const bool kinked = v.activation == Activation::relu;
    EXPECT_LE(test::rel_error(analytic, numeric), kinked ? 5e-2 : 5e-3);
  }
}

// Tied embeddings start where the untied model does: the shared matrix has the untied head's init
// (std √(2/(V+C))), so the first loss on random tokens is near ln V for both; with the embedding's
// N(0, 1) it was near √C·(spread of a logit) above it (84 at V 4096, C 128).
TEST(ModelVariants, TiedEmbeddingsStartAtTheUntiedModelsLoss) {
  const std::int64_t V = 1024, C = 128, B = 4, T = 16;
  std::vector<std::int32_t> ids(B * T), targets(B * T);
  for (std::int64_t i = 0; i < B * T; ++i) ids[i] = static_cast<std::int32_t>((37 * i) % V), targets[i] = static_cast<std::int32_t>((91 * i + 5) % V);
  for (bool tied : {false, true}) {
    ModelConfig c = test::model_shape(V, T, C, 2, 4, 256);
    c.tie_embeddings = tied;
    Model model(c);
    Rng rng(11);
    init_params(model.layout, model.params.data(), rng);
    const ParamSpec& e = model.layout.specs[0];
    ASSERT_EQ(e.name, "token_embeddings.weight");
    double sq = 0;
    for (std::int64_t i = 0; i < e.numel(); ++i) sq += model.params[e.offset + i] * double(model.params[e.offset + i]);
    const double std = std::sqrt(sq / static_cast<double>(e.numel()));
    // a normal truncated at 3σ has 0.987σ
    EXPECT_NEAR(std, tied ? 0.987 * std::sqrt(2.0 / (V + C)) : 0.987, 0.05 * std) << "tied " << tied;
    Activations acts(c, B, T);
    model_forward(acts, model, ids.data(), B, T);
    EXPECT_NEAR(model_loss(acts, model, targets.data()), std::log(static_cast<double>(V)), 0.5) << "tied " << tied;
  }
}

TEST(ModelVariants, PlainMlpHasNoGateWeights) {
  ModelConfig c = tiny({FfnKind::mlp, Activation::gelu});
  const ParamLayout layout = param_layout(c);
  EXPECT_FALSE(layout.gated);
  for (const ParamSpec& s : layout.specs) EXPECT_EQ(s.name.find("w3"), std::string::npos) << s.name;
  EXPECT_EQ(layout.total, param_layout(tiny({FfnKind::swiglu, Activation::silu})).total - 2 * 12 * 8);
  EXPECT_EQ(model_weights(layout, nullptr).layers[1].w3, nullptr);
  // Tied embeddings: no lm_head tensor; the head is the embedding.
  // Parallel blocks: one norm per layer.
  for (const ParamSpec& s : param_layout(tiny({.parallel = true})).specs) EXPECT_EQ(s.name.find("ln2"), std::string::npos);
  const ParamLayout tied = param_layout(tiny({.tie = true}));
  EXPECT_TRUE(tied.tied);
  for (const ParamSpec& s : tied.specs) EXPECT_NE(s.name, "lm_head.weight");
  float arena = 0;
  const ModelWeights w = model_weights(tied, &arena);
  EXPECT_EQ(w.lm_head, w.embedding);
}

// The names of one layer's tensors, in table order ("layers.0." left out).
std::vector<std::string> layer0(const Variant& v) {
  ModelConfig c = tiny(v);
  c.num_layers = 1;
  std::vector<std::string> names;
  for (const ParamSpec& s : param_layout(c).specs)
    if (s.name.starts_with("layers.0.")) names.push_back(s.name.substr(9));
  return names;
}

TEST(ModelVariants, AttentionShapesInTheParamTable) {
  // GQA with a head size of its own: q_proj (H·D, C), k_proj and v_proj (Hkv·D, C), output_proj (C, H·D).
  const ParamLayout gqa = param_layout(tiny({.qk_norm = true, .heads = 4, .kv_heads = 2, .head_dim = 3 * 2}));
  EXPECT_EQ(gqa.find("layers.1.attn.q_proj.weight").shape, (std::vector<std::int64_t>{24, 8}));
  EXPECT_EQ(gqa.find("layers.1.attn.k_proj.weight").shape, (std::vector<std::int64_t>{12, 8}));
  EXPECT_EQ(gqa.find("layers.1.attn.v_proj.weight").shape, (std::vector<std::int64_t>{12, 8}));
  EXPECT_EQ(gqa.find("layers.1.attn.output_proj.weight").shape, (std::vector<std::int64_t>{8, 24}));
  EXPECT_EQ(gqa.find("layers.1.attn.k_norm.weight").shape, (std::vector<std::int64_t>{6}));
  // Learned positions: (context_length, C), right after the token embedding.
  const ParamLayout learned = param_layout(tiny({.position = Position::learned}));
  EXPECT_EQ(learned.specs[1].name, "position_embeddings.weight");
  EXPECT_EQ(learned.specs[1].shape, (std::vector<std::int64_t>{8, 8}));
  std::vector<float> arena(static_cast<std::size_t>(learned.total));
  const ModelWeights w = model_weights(learned, arena.data());
  EXPECT_EQ(w.position, arena.data() + learned.specs[1].offset);
  EXPECT_EQ(w.layers[0].ln1, arena.data() + learned.find("layers.0.ln1.weight").offset);
  for (const ParamSpec& spec : param_layout(tiny({.position = Position::sinusoidal})).specs)
    EXPECT_EQ(spec.name.find("position"), std::string::npos) << "sinusoids have no parameters";
  // The sinusoids at a few entries, from the formula: PE[p, 2i] = sin(p·10000^(−2i/C)), PE[p, 2i+1] = cos(..).
  const Model sin_model(tiny({.position = Position::sinusoidal}));
  EXPECT_FLOAT_EQ(sin_model.sinusoid[0 * 8 + 1], 1.0f);                              // cos(0)
  EXPECT_FLOAT_EQ(sin_model.sinusoid[3 * 8 + 0], static_cast<float>(std::sin(3.0)));   // i = 0
  EXPECT_FLOAT_EQ(sin_model.sinusoid[5 * 8 + 5], static_cast<float>(std::cos(5.0 / 100.0)));   // 2i = 4: 10000^(−1/2)
}

TEST(ModelVariants, NormBiasAndExpertTensorsAreNamedAndPlaced) {
  using Names = std::vector<std::string>;
  const Names attn = {"attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.output_proj.weight"};
  auto cat = [](std::initializer_list<Names> parts) {
    Names all;
    for (const Names& p : parts) all.insert(all.end(), p.begin(), p.end());
    return all;
  };
  const Names dense = {"ffn.w1.weight", "ffn.w2.weight", "ffn.w3.weight"};
  EXPECT_EQ(layer0({}), cat({{"ln1.weight"}, attn, {"ln2.weight"}, dense}));
  EXPECT_EQ(layer0({.norm = Norm::none}), cat({attn, dense}));
  EXPECT_EQ(layer0({.placement = NormPlacement::post}), layer0({}));   // the same tensors, applied after
  EXPECT_EQ(layer0({.norm = Norm::layernorm}), cat({{"ln1.weight", "ln1.bias"}, attn, {"ln2.weight", "ln2.bias"}, dense}));
  EXPECT_EQ(layer0({.norm = Norm::layernorm, .norm_bias = false}), layer0({}));
  EXPECT_EQ(layer0({.qk_norm = true, .norm = Norm::layernorm, .norm_bias = false, .placement = NormPlacement::pre_and_post}),
            cat({{"ln1.weight"}, attn, {"attn.q_norm.weight", "attn.k_norm.weight", "post_attn_norm.weight", "ln2.weight"},
                 dense, {"post_ffn_norm.weight"}}));
  EXPECT_EQ(layer0({.ffn = FfnKind::mlp, .activation = Activation::gelu, .bias = true}),
            (Names{"ln1.weight", "attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight", "attn.k_proj.bias",
                   "attn.v_proj.weight", "attn.v_proj.bias", "attn.output_proj.weight", "attn.output_proj.bias",
                   "ln2.weight", "ffn.w1.weight", "ffn.w1.bias", "ffn.w2.weight", "ffn.w2.bias"}));
  const MoeConfig two{.num_experts = 2, .top_k = 1, .num_shared = 1, .d_ff_expert = 4};
  EXPECT_EQ(layer0({.ffn = FfnKind::mlp, .activation = Activation::gelu, .moe = two}),
            cat({{"ln1.weight"}, attn,
                 {"ln2.weight", "ffn.router.weight", "ffn.experts.0.w1.weight", "ffn.experts.0.w2.weight",
                  "ffn.experts.1.w1.weight", "ffn.experts.1.w2.weight", "ffn.shared_experts.0.w1.weight",
                  "ffn.shared_experts.0.w2.weight"}}));
  // Shapes, inits and the weight-decay flag: biases (C or d_out) are zeros, gains ones, both flagged.
  const ParamLayout layout = param_layout(tiny({.norm = Norm::layernorm, .bias = true, .moe = two}));
  EXPECT_EQ(layout.find("layers.1.attn.k_proj.bias").shape, (std::vector<std::int64_t>{8}));
  EXPECT_EQ(layout.find("layers.1.ffn.experts.1.w1.bias").shape, (std::vector<std::int64_t>{4}));
  EXPECT_EQ(layout.find("layers.1.ffn.experts.1.w2.bias").shape, (std::vector<std::int64_t>{8}));
  EXPECT_EQ(layout.find("layers.1.ffn.router.weight").shape, (std::vector<std::int64_t>{2, 8}));
  EXPECT_EQ(layout.get("layers.1.ffn.router.bias"), nullptr);   // no bias on the router
  EXPECT_EQ(layout.find("ln_final.bias").init, ParamInit::zeros);
  for (const ParamSpec& s : layout.specs)
    EXPECT_EQ(s.is_gain_or_bias, s.name.ends_with(".bias") || s.name.find("ln") != std::string::npos) << s.name;
  std::vector<float> arena(static_cast<std::size_t>(layout.total));
  Rng rng(1);
  init_params(layout, arena.data(), rng);
  const ModelWeights w = model_weights(layout, arena.data());
  EXPECT_EQ(w.layers[1].experts.size(), 2u);
  EXPECT_EQ(w.layers[1].shared_experts.size(), 1u);
  EXPECT_EQ(w.layers[1].w1, nullptr);   // no dense feed-forward
  EXPECT_EQ(w.layers[1].bq[3], 0.0f);
  EXPECT_EQ(w.ln_final_bias[0], 0.0f);
  // Without norms there is no ln_final either.
  EXPECT_EQ(param_layout(tiny({.norm = Norm::none})).get("ln_final.weight"), nullptr);
}

// The MoE feed-forward against its formula in plain double loops, for one layer: router softmax, top-k
// (ties to the lower index), renormalised weights, SwiGLU experts of width Fe, the shared expert,
// capacity in token order then slot order, and the load-balancing loss. Tolerance: the model is fp32
// and the spec double; the outputs are sums of a few dozen O(1) products, so 1e-5 relative.
TEST(ModelVariants, MixtureOfExpertsMatchesItsFormula) {
  SingleThreaded one_thread;
  for (const MoeConfig& moe : {kTop2Shared, kFineGrained, kCapacity}) {
    ModelConfig c = tiny({.bias = true, .moe = moe});
    c.num_layers = 1;
    SCOPED_TRACE(to_json(c).dump());
    Model model(c);
    Rng rng(11);
    init_params(model.layout, model.params.data(), rng);
    for (float& p : model.params) p += 0.01f;   // biases away from 0
    const std::int64_t B = 2, T = 5, N = B * T, C = c.d_model, E = moe.num_experts, k = moe.top_k, Fe = moe.d_ff_expert;
    std::vector<std::int32_t> ids(N);
    for (std::int64_t i = 0; i < N; ++i) ids[i] = static_cast<std::int32_t>((i * 5 + 2) % c.vocab_size);
    Activations acts(c, B, T, Activations::WithBackward::no);
    model_forward(acts, model, ids.data(), B, T);
    const LayerActs& a = acts.layers[0];
    const LayerWeights lw = model.weights().layers[0];
    auto swiglu = [&](const FfnWeights& f, const float* x) {   // w2(silu(w1 x + b1) ⊙ (w3 x + b3)) + b2
      std::vector<double> h(static_cast<std::size_t>(Fe)), out(static_cast<std::size_t>(C));
      for (std::int64_t i = 0; i < Fe; ++i) {
        double u = f.b1[i], g = f.b3[i];
        for (std::int64_t j = 0; j < C; ++j) u += static_cast<double>(f.w1[i * C + j]) * x[j], g += static_cast<double>(f.w3[i * C + j]) * x[j];
        h[i] = u / (1 + std::exp(-u)) * g;
      }
      for (std::int64_t j = 0; j < C; ++j) {
        out[j] = f.b2[j];
        for (std::int64_t i = 0; i < Fe; ++i) out[j] += static_cast<double>(f.w2[j * Fe + i]) * h[i];
      }
      return out;
    };
    const std::int64_t capacity = moe.capacity_factor > 0 ? static_cast<std::int64_t>(std::ceil(moe.capacity_factor * N * k / E)) : N * k;
    std::vector<std::int64_t> taken(static_cast<std::size_t>(E), 0), routed(static_cast<std::size_t>(E), 0);
    std::vector<double> want, got, mean_p(static_cast<std::size_t>(E), 0.0);
    for (std::int64_t n = 0; n < N; ++n) {
      const float* x = a.ln2.data() + n * C;   // the feed-forward's input
      std::vector<double> p(static_cast<std::size_t>(E));
      double z = 0;
      for (std::int64_t e = 0; e < E; ++e) {
        for (std::int64_t j = 0; j < C; ++j) p[e] += static_cast<double>(lw.router[e * C + j]) * x[j];
      }
      const double max = *std::max_element(p.begin(), p.end());
      for (double& v : p) z += (v = std::exp(v - max));
      for (std::int64_t e = 0; e < E; ++e) mean_p[e] += p[e] / z / N;
      std::vector<std::int64_t> order(static_cast<std::size_t>(E));
      for (std::int64_t e = 0; e < E; ++e) order[e] = e;
      std::stable_sort(order.begin(), order.end(), [&](std::int64_t i, std::int64_t j) { return p[i] > p[j]; });
      double selected = 0;
      for (std::int64_t j = 0; j < k; ++j) selected += p[order[j]];
      std::vector<double> y(static_cast<std::size_t>(C), 0.0);
      if (moe.num_shared == 1) y = swiglu(lw.shared_experts[0], x);
      for (std::int64_t j = 0; j < k; ++j) {
        const std::int64_t e = order[j];
        EXPECT_EQ(a.moe_expert[n * k + j], e) << n;
        routed[e] += 1;
        if (taken[e]++ >= capacity) continue;   // dropped: adds nothing
        const std::vector<double> out = swiglu(lw.experts[e], x);
        for (std::int64_t i = 0; i < C; ++i) y[i] += p[e] / selected * out[i];
      }
      for (std::int64_t i = 0; i < C; ++i) {
        want.push_back(y[i]);
        got.push_back(acts.x_final[n * C + i] - a.x_mid[n * C + i]);   // x_out = x_mid + ffn
      }
    }
    EXPECT_LE(test::rel_error(got, want), 1e-5);
    double aux = 0;
    for (std::int64_t e = 0; e < E; ++e) {
      EXPECT_EQ(a.expert_tokens[e], routed[e]);
      aux += E * static_cast<double>(routed[e]) / static_cast<double>(N * k) * mean_p[e];
    }
    EXPECT_NEAR(a.moe_aux, aux, 1e-6 * aux);
    EXPECT_EQ(a.moe_dropped > 0, moe.capacity_factor > 0);
  }
}

// Decoding through the KV cache gives the full forward's logits at every position, for every
// variant: token by token from the first position, and after prefills of 3 and 6 tokens (6 is past
// every window here: windowed layers' rings have wrapped, and a prefill longer than the window
// gathers from its own new keys). Then generate() decodes greedily what argmax over full forwards
// picks. The cache runs the same sums with products of other shapes (one row, or a band of keys),
// so rows agree to fp32 rounding: ~1e-7 per operation through two layers and the head, measured
// below 1e-6 relative; bound 1e-5.
TEST(ModelVariants, KvCacheDecodingMatchesTheFullForward) {
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(name(v));
    const ModelConfig c = tiny(v);
    // Generation is dropless: a capacity model decodes as its dropless twin, whose full forward is
    // the reference (KvCacheGenerationEqualsTheFullForward compares the two).
    ModelConfig dropless = c;
    dropless.moe.capacity_factor = 0;
    Model model = initialised(dropless, 11);
    Rng rng(11);
    const std::int64_t T = c.context_length, V = c.vocab_size;
    std::vector<std::int32_t> ids(static_cast<std::size_t>(T));
    for (auto& id : ids) id = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(V)));
    Activations full(c, 1, T, Activations::WithBackward::no);
    model_forward(full, model, ids.data(), 1, T);
    auto expect_row = [&](const std::vector<float>& got, std::int64_t t) {
      EXPECT_LT(test::rel_error(got.data(), full.logits.data() + t * V, static_cast<std::size_t>(V)), 1e-5)
          << "position " << t;
    };
    for (std::int64_t prefill : {1, 3, 6}) {
      SCOPED_TRACE(testing::Message() << "prefill " << prefill);
      KvCache cache(c, T);
      Activations pre(c, 1, prefill, Activations::WithBackward::no), step(c, 1, 1, Activations::WithBackward::no);
      model_forward(pre, model, ids.data(), 1, prefill, &cache);
      expect_row(pre.logits, prefill - 1);
      for (std::int64_t t = prefill; t < T; ++t) {
        model_forward(step, model, ids.data() + t, 1, 1, &cache);
        expect_row(step.logits, t);
      }
      // K = Hkv·D floats per position and layer; a windowed layer keeps W positions
      std::int64_t rows = 0;
      for (std::int64_t l = 0; l < c.num_layers; ++l) {
        EXPECT_EQ(cache.slots[l], c.layer_window(l) ? c.layer_window(l) : T);
        rows += cache.slots[l];
      }
      EXPECT_EQ(cache.bytes(), 2 * 4 * rows * c.kv_heads() * c.d_head());
    }
    // greedy generation against argmax over full forwards of the growing sequence
    std::vector<std::int32_t> seq(ids.begin(), ids.begin() + 2);
    Rng unused(0);
    const GenerateResult got = generate(model, seq, T, {.temperature = 0}, -1, unused);
    EXPECT_EQ(got.stop, StopReason::context_length);
    for (std::size_t n = 0; n < got.tokens.size(); ++n) {
      const auto len = static_cast<std::int64_t>(seq.size());
      Activations acts(c, 1, len, Activations::WithBackward::no);
      model_forward(acts, model, seq.data(), 1, len);
      const float* last = acts.logits.data() + (len - 1) * V;
      const auto want = static_cast<std::int32_t>(std::max_element(last, last + V) - last);
      ASSERT_EQ(got.tokens[n], want) << "token " << n;
      seq.push_back(want);
    }
  }
}

// Generation with a KV cache gives the full forward's logits for every variant (a MoE one routes
// each new token alone; generation is dropless, so a capacity model is compared with the same
// weights without capacity).
TEST(ModelVariants, KvCacheGenerationEqualsTheFullForward) {
  SingleThreaded one_thread;
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(name(v));
    const ModelConfig c = tiny(v);
    ModelConfig dropless = c;
    dropless.moe.capacity_factor = 0;
    Model model(c), reference(dropless);
    Rng rng(5);
    init_params(model.layout, model.params.data(), rng);
    reference.params = model.params;
    const std::int64_t T = 7;
    const std::vector<std::int32_t> ids = {3, 17, 4, 4, 21, 9, 0};
    Activations full(c, 1, T, Activations::WithBackward::no);
    model_forward(full, reference, ids.data(), 1, T);
    KvCache cache(c, c.context_length);
    Activations prefill(c, 1, 3, Activations::WithBackward::no), step(c, 1, 1, Activations::WithBackward::no);
    model_forward(prefill, model, ids.data(), 1, 3, &cache);
    auto row = [&](std::int64_t t) {
      return std::vector<float>(full.logits.begin() + t * c.vocab_size, full.logits.begin() + (t + 1) * c.vocab_size);
    };
    EXPECT_LE(test::rel_error(std::vector<float>(prefill.logits.begin(), prefill.logits.begin() + c.vocab_size), row(2)), 1e-5);
    for (std::int64_t t = 3; t < T; ++t) {
      model_forward(step, model, ids.data() + t, 1, 1, &cache);
      EXPECT_LE(test::rel_error(std::vector<float>(step.logits.begin(), step.logits.begin() + c.vocab_size), row(t)), 1e-5) << t;
    }
  }
}

// Dropout's masks (ops/dropout.h): over n = 10^6 elements the kept fraction is binomial with mean
// 1 − p and standard deviation sqrt(p(1 − p)/n) ≤ 5e-4; the bound 5σ ≤ 2.5e-3 fails by chance with
// probability 6e-7. Two masks of other seeds or sites agree on a fraction (1 − p)² + p² (independent)
// to the same bound. Kept values are scaled by exactly 1/(1 − p).
TEST(ModelVariants, DropoutKeepsOneMinusPAndEvaluationNeverDrops) {
  const std::int64_t n = 1'000'000;
  const std::vector<float> ones(static_cast<std::size_t>(n), 1.0f);
  EXPECT_EQ(dropout_threshold(0.0), 0u);
  EXPECT_EQ(dropout_threshold(0.25), std::uint64_t{1} << 62);
  for (double p : {0.1, 0.3, 0.5}) {
    SCOPED_TRACE(testing::Message() << "p " << p);
    const double sigma = std::sqrt(p * (1 - p) / static_cast<double>(n));
    auto mask = [&](std::uint64_t seed, std::uint64_t site) {
      std::vector<float> out(ones.size());
      dropout_forward(out.data(), ones.data(), n, {.p = p, .seed = seed, .site = site});
      return out;
    };
    const std::vector<float> a = mask(7, 2), b = mask(8, 2), c = mask(7, 3);
    std::int64_t kept = 0, same_seed = 0, same_site = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      kept += a[i] != 0;
      if (a[i] != 0 && a[i] != static_cast<float>(1.0 / (1.0 - p))) ADD_FAILURE() << "kept value " << a[i];
      same_seed += (a[i] != 0) == (b[i] != 0);
      same_site += (a[i] != 0) == (c[i] != 0);
    }
    EXPECT_NEAR(static_cast<double>(kept) / n, 1 - p, 5 * sigma);
    const double agree = (1 - p) * (1 - p) + p * p;
    EXPECT_NEAR(static_cast<double>(same_seed) / n, agree, 5 * sigma);
    EXPECT_NEAR(static_cast<double>(same_site) / n, agree, 5 * sigma);
    EXPECT_EQ(mask(7, 2), a) << "a mask is a function of (seed, site, index)";
  }
  // The model: evaluation with dropout configured is the model without it, bit for bit; training
  // passes follow their seed.
  const ModelConfig with = tiny({.dropout = 0.3, .attention_dropout = 0.3}), without = tiny({});
  Model model(with), plain(without);
  Rng rng(5);
  init_params(model.layout, model.params.data(), rng);
  plain.params = model.params;
  const std::vector<std::int32_t> ids = {1, 5, 9, 2, 7, 3, 11, 4, 6, 8};
  auto logits = [&](Model& m, const PassOptions& pass) {
    Activations acts(m.config, 2, 5, Activations::WithBackward::no);
    model_forward(acts, m, ids.data(), 2, 5, nullptr, pass);
    return acts.logits;
  };
  const std::vector<float> eval = logits(model, {});
  EXPECT_EQ(eval, logits(plain, {}));
  EXPECT_EQ(eval, logits(model, {.dropout_seed = 99}));   // evaluation ignores the seed
  const PassOptions s1{.phase = Phase::training, .dropout_seed = 1}, s2{.phase = Phase::training, .dropout_seed = 2};
  EXPECT_EQ(logits(model, s1), logits(model, s1));
  EXPECT_NE(logits(model, s1), logits(model, s2));
  EXPECT_NE(logits(model, s1), eval);
  EXPECT_EQ(logits(plain, s1), eval) << "without dropout a training pass is the evaluation pass";
}

TEST(ModelVariants, NopeIgnoresPositionsAndTheCapBoundsTheLogits) {
  // NoPE: in one layer the last position attends to its prefix as a set, so swapping two earlier
  // tokens leaves its output unchanged (up to summation order); with RoPE the order matters.
  for (Position p : {Position::none, Position::rope}) {
    ModelConfig c = tiny({.position = p});
    c.num_layers = 1;
    Model model(c);
    Rng rng(3);
    init_params(model.layout, model.params.data(), rng);
    Activations acts(c, 1, 5, Activations::WithBackward::no);
    auto last_logits = [&](std::vector<std::int32_t> ids) {
      model_forward(acts, model, ids.data(), 1, 5);
      return std::vector<float>(acts.logits.end() - c.vocab_size, acts.logits.end());
    };
    const double change = test::rel_error(last_logits({3, 9, 14, 2, 7}), last_logits({9, 3, 14, 2, 7}));
    if (p == Position::none) EXPECT_LT(change, 1e-5);
    else EXPECT_GT(change, 1e-3);
  }
  const ModelConfig c = tiny({.softcap = 1.5});
  Model model(c);
  Rng rng(4);
  init_params(model.layout, model.params.data(), rng);
  Activations acts(c, 1, 6, Activations::WithBackward::no);
  const std::vector<std::int32_t> ids = {1, 2, 3, 4, 5, 6};
  model_forward(acts, model, ids.data(), 1, 6);
  for (float z : acts.logits) EXPECT_LE(std::fabs(z), 1.5f);
}

TEST(ModelVariants, ConfigNamesTheVariantAndRejectsMismatches) {
  nlohmann::json j = {{"vocab_size", 23}, {"context_length", 8}, {"d_model", 8}, {"num_layers", 1},
                      {"num_heads", 2},   {"d_ff", 12},          {"rope_theta", 10000.0}};
  EXPECT_EQ(model_config_from_json(j, "x").ffn, FfnKind::swiglu);
  EXPECT_FALSE(to_json(model_config_from_json(j, "x")).contains("ffn"));   // CS336 configs read as before
  j["ffn"] = "mlp";
  EXPECT_EQ(model_config_from_json(j, "x").activation, Activation::gelu);
  j["activation"] = "relu2";
  const ModelConfig c = model_config_from_json(j, "x");
  EXPECT_EQ(c.activation, Activation::relu2);
  EXPECT_EQ(model_config_from_json(nlohmann::json(to_json(c)), "x"), c);   // round trip
  auto fails_naming = [&](const nlohmann::json& bad, const std::string& needle) {
    try {
      model_config_from_json(bad, "cfg.json");
      ADD_FAILURE() << "accepted " << bad.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
    }
  };
  fails_naming({{"vocab_size", 23}, {"context_length", 8}, {"d_model", 8}, {"num_layers", 1}, {"num_heads", 2},
                {"d_ff", 12}, {"ffn", "swiglu"}, {"activation", "relu"}},
               "\"activation\" applies to \"ffn\": \"mlp\" only");
  j["ffn"] = "moe";
  fails_naming(j, "\"ffn\"");
  j["ffn"] = "mlp";
  j["activation"] = "tanh";
  fails_naming(j, "\"activation\"");
  j["activation"] = 3;
  fails_naming(j, "must be a string");
  j["activation"] = "relu";
  j["position"] = "alibi";
  fails_naming(j, "\"position\"");
  j["position"] = "none";
  j["z_loss"] = -1;
  fails_naming(j, "\"z_loss\"");
  j["z_loss"] = 1e-4;
  j["logit_softcap"] = "big";
  fails_naming(j, "\"logit_softcap\"");
  j["logit_softcap"] = 30.0;
  j["tie_embeddings"] = 1;
  fails_naming(j, "\"tie_embeddings\"");
  j["tie_embeddings"] = true;
  j["qk_norm"] = "yes";
  fails_naming(j, "\"qk_norm\"");
  j["qk_norm"] = true;
  j["block"] = "sideways";
  fails_naming(j, "\"block\"");
  j["block"] = "parallel";
  const ModelConfig all = model_config_from_json(j, "x");
  EXPECT_TRUE(all.parallel_block);
  EXPECT_EQ(model_config_from_json(nlohmann::json(to_json(all)), "x"), all);
}

// The attention fields (issue 6): defaults spelled out equal the fields left out, a full set round
// trips, the GPU's default-architecture check sees each, and every impossible combination fails
// naming its fields.
TEST(ModelVariants, AttentionConfigFieldsAndTheirErrors) {
  const nlohmann::json base = {{"vocab_size", 23}, {"context_length", 8}, {"d_model", 8}, {"num_layers", 2},
                               {"num_heads", 4},   {"d_ff", 12}};
  auto with = [&](nlohmann::json extra) {
    nlohmann::json j = base;
    for (const auto& [k, v] : extra.items()) j[k] = v;
    return j;
  };
  const ModelConfig plain = model_config_from_json(base, "x");
  EXPECT_EQ(model_config_from_json(with({{"num_kv_heads", 4}, {"head_dim", 2}, {"attention_window", 0},
                                         {"attn_softcap", 0}, {"dropout", 0}, {"position", "rope"}}),
                                   "x"),
            plain);
  EXPECT_EQ(to_json(plain).size(), 7u);   // the CS336 fields only: no variant field at its default
  EXPECT_TRUE(plain.is_default_architecture());
  const nlohmann::json all = with({{"num_kv_heads", 2}, {"head_dim", 6}, {"attention_window", 3},
                                   {"full_attention_every", 2}, {"full_attention_position", "none"},
                                   {"attn_softcap", 30.0}, {"dropout", 0.1}, {"attention_dropout", 0.05}});
  const ModelConfig c = model_config_from_json(all, "x");
  EXPECT_EQ(c.kv_heads(), 2);
  EXPECT_EQ(c.d_head(), 6);
  EXPECT_EQ(c.q_width(), 24);
  EXPECT_EQ(c.kv_width(), 12);
  EXPECT_EQ(c.layer_window(0), 3);
  EXPECT_EQ(c.layer_window(1), 0);   // (1 + 1) % 2 == 0: full
  EXPECT_TRUE(c.layer_rope(0));
  EXPECT_FALSE(c.layer_rope(1));     // the full layer: NoPE
  EXPECT_EQ(model_config_from_json(nlohmann::json(to_json(c)), "x"), c);
  // a head size of its own frees d_model from divisibility
  EXPECT_EQ(model_config_from_json(with({{"d_model", 10}, {"head_dim", 4}}), "x").q_width(), 16);
  for (const nlohmann::json& one : {nlohmann::json{{"num_kv_heads", 2}}, {{"head_dim", 4}}, {{"attention_window", 3}},
                                    {{"attn_softcap", 5.0}}, {{"dropout", 0.1}}, {{"attention_dropout", 0.1}},
                                    {{"position", "sinusoidal"}}, {{"position", "learned"}}})
    EXPECT_FALSE(model_config_from_json(with(one), "x").is_default_architecture()) << one.dump();
  for (Position p : {Position::sinusoidal, Position::learned})
    EXPECT_EQ(model_config_from_json(with({{"position", position_name(p)}}), "x").position, p);

  auto fails_naming = [&](const nlohmann::json& extra, std::vector<std::string> needles) {
    try {
      model_config_from_json(with(extra), "cfg.json");
      ADD_FAILURE() << "accepted " << extra.dump();
    } catch (const Error& e) {
      needles.push_back("cfg.json");
      for (const std::string& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
  };
  fails_naming({{"num_kv_heads", 3}}, {"\"num_heads\"", "\"num_kv_heads\"", "divisible"});
  fails_naming({{"num_kv_heads", 8}}, {"\"num_heads\"", "\"num_kv_heads\""});
  fails_naming({{"num_kv_heads", 0}}, {"\"num_kv_heads\"", "at least 1"});
  fails_naming({{"num_kv_heads", 1.5}}, {"\"num_kv_heads\"", "integer"});
  fails_naming({{"head_dim", 0}}, {"\"head_dim\"", "at least 1"});
  fails_naming({{"head_dim", 3}}, {"\"head_dim\"", "even"});
  fails_naming({{"d_model", 10}}, {"\"d_model\"", "\"num_heads\"", "\"head_dim\""});
  fails_naming({{"d_model", 9}, {"num_heads", 3}, {"position", "sinusoidal"}}, {"\"d_model\"", "sinusoidal"});
  fails_naming({{"position", "alibi"}}, {"\"position\"", "learned"});
  fails_naming({{"attention_window", 8}}, {"\"attention_window\"", "\"context_length\"", "leave the field out"});
  fails_naming({{"attention_window", -1}}, {"\"attention_window\""});
  fails_naming({{"full_attention_every", 2}}, {"\"full_attention_every\"", "needs \"attention_window\""});
  fails_naming({{"attention_window", 3}, {"full_attention_every", 0}}, {"\"full_attention_every\"", "at least 1"});
  fails_naming({{"attention_window", 3}, {"full_attention_every", 3}}, {"\"full_attention_every\"", "\"num_layers\"", "no layer"});
  fails_naming({{"attention_window", 3}, {"full_attention_position", "none"}},
               {"\"full_attention_position\"", "needs \"full_attention_every\""});
  fails_naming({{"attention_window", 3}, {"full_attention_every", 2}, {"full_attention_position", "learned"}},
               {"\"full_attention_position\"", "\"rope\" or \"none\""});
  fails_naming({{"attention_window", 3}, {"full_attention_every", 2}, {"full_attention_position", "none"},
                {"position", "learned"}},
               {"\"full_attention_position\"", "\"position\": \"rope\""});
  fails_naming({{"attn_softcap", -1}}, {"\"attn_softcap\""});
  fails_naming({{"dropout", 1.0}}, {"\"dropout\"", "[0, 1)"});
  fails_naming({{"attention_dropout", -0.1}}, {"\"attention_dropout\"", "[0, 1)"});
  fails_naming({{"dropout", "a lot"}}, {"\"dropout\"", "number"});
}

TEST(ModelVariants, DffFromTheRatioOrTheDefaultAndTheNewFieldsRoundTrip) {
  const nlohmann::json base = {{"vocab_size", 23}, {"context_length", 8}, {"d_model", 100}, {"num_layers", 1},
                               {"num_heads", 2}};
  auto with = [&](nlohmann::json extra) {   // {} reads as null
    nlohmann::json j = base;
    if (!extra.is_null()) j.update(extra);
    return model_config_from_json(j, "x");
  };
  // By hand: 8/3·100 = 266.7 → 320; 4·100 = 400 → 448; 3·100 = 300 → 320; 1.28·100 = 128 exactly → 128.
  EXPECT_EQ(with({}).d_ff, 320);
  EXPECT_EQ(with({{"ffn", "geglu"}}).d_ff, 320);
  EXPECT_EQ(with({{"ffn", "mlp"}}).d_ff, 448);
  EXPECT_EQ(with({{"d_ff_ratio", 3}}).d_ff, 320);
  EXPECT_EQ(with({{"d_ff_ratio", 1.28}}).d_ff, 128);
  EXPECT_EQ(with({{"d_ff", 77}}).d_ff, 77);
  const nlohmann::ordered_json resolved = to_json(with({{"d_ff_ratio", 3}}));
  EXPECT_EQ(resolved["d_ff"], 320);   // the effective config holds the resolved width, not the ratio
  EXPECT_FALSE(resolved.contains("d_ff_ratio"));
  // The MoE's defaults: d_ff_expert = d_ff, no shared experts, α = 0.01, dropless.
  const ModelConfig moe = with({{"moe", {{"num_experts", 4}, {"top_k", 2}}}});
  EXPECT_EQ(moe.moe, (MoeConfig{.num_experts = 4, .top_k = 2, .num_shared = 0, .d_ff_expert = 320, .aux_loss = 0.01,
                                .capacity_factor = 0}));
  for (const ModelConfig& c :
       {moe, with({{"norm", "layernorm"}, {"norm_bias", false}, {"norm_placement", "double"}, {"bias", true}}),
        with({{"norm", "none"}, {"block", "parallel"}}), with({{"norm_placement", "post"}, {"ffn", "mlp"}}),
        with({{"moe", {{"num_experts", 8}, {"top_k", 1}, {"num_shared", 2}, {"d_ff_expert", 64}, {"aux_loss", 0},
                       {"capacity_factor", 1.25}}}})}) {
    EXPECT_EQ(model_config_from_json(nlohmann::json(to_json(c)), "x"), c) << to_json(c).dump();
    EXPECT_FALSE(c.is_default_architecture());   // the GPU path refuses them
  }
  EXPECT_TRUE(with({{"norm", "rmsnorm"}, {"norm_placement", "pre"}, {"bias", false}}).is_default_architecture());
  EXPECT_EQ(to_json(with({{"norm", "rmsnorm"}, {"norm_placement", "pre"}, {"bias", false}})), to_json(with({})));
}

TEST(ModelVariants, BadNormBiasDffAndMoeFieldsAreNamed) {
  const nlohmann::json base = {{"vocab_size", 23}, {"context_length", 8}, {"d_model", 8}, {"num_layers", 1},
                               {"num_heads", 2}};
  const std::vector<std::pair<nlohmann::json, std::vector<std::string>>> cases = {
      {{{"norm", "batchnorm"}}, {"\"norm\"", "batchnorm"}},
      {{{"norm_bias", false}}, {"\"norm_bias\"", "layernorm"}},
      {{{"norm", "none"}, {"norm_bias", true}}, {"\"norm_bias\"", "layernorm"}},
      {{{"norm", "layernorm"}, {"norm_bias", "no"}}, {"\"norm_bias\"", "true or false"}},
      {{{"norm_placement", "sandwich"}}, {"\"norm_placement\"", "sandwich"}},
      {{{"norm_placement", "post"}, {"block", "parallel"}}, {"\"block\"", "\"norm_placement\""}},
      {{{"norm_placement", "double"}, {"block", "parallel"}}, {"\"block\"", "\"norm_placement\""}},
      {{{"norm", "none"}, {"norm_placement", "post"}}, {"\"norm_placement\"", "\"norm\""}},
      {{{"d_ff", 12}, {"d_ff_ratio", 2}}, {"\"d_ff\"", "\"d_ff_ratio\""}},
      {{{"d_ff_ratio", 0}}, {"\"d_ff_ratio\""}},
      {{{"d_ff_ratio", "big"}}, {"\"d_ff_ratio\""}},
      {{{"bias", 1}}, {"\"bias\""}},
      {{{"moe", 4}}, {"\"moe\"", "object"}},
      {{{"moe", {{"top_k", 1}}}}, {"\"moe.num_experts\"", "missing"}},
      {{{"moe", {{"num_experts", 0}, {"top_k", 1}}}}, {"\"moe.num_experts\""}},
      {{{"moe", {{"num_experts", 4}}}}, {"\"moe.top_k\"", "missing"}},
      {{{"moe", {{"num_experts", 4}, {"top_k", 0}}}}, {"\"moe.top_k\""}},
      {{{"moe", {{"num_experts", 4}, {"top_k", 5}}}}, {"\"moe.top_k\"", "num_experts"}},
      {{{"moe", {{"num_experts", 4}, {"top_k", 2}, {"d_ff_expert", 0}}}}, {"\"moe.d_ff_expert\""}},
      {{{"moe", {{"num_experts", 4}, {"top_k", 2}, {"num_shared", -1}}}}, {"\"moe.num_shared\""}},
      {{{"moe", {{"num_experts", 4}, {"top_k", 2}, {"aux_loss", -0.1}}}}, {"\"moe.aux_loss\""}},
      {{{"moe", {{"num_experts", 4}, {"top_k", 2}, {"capacity_factor", -1}}}}, {"\"moe.capacity_factor\""}},
      {{{"moe", {{"num_experts", 4}, {"top_k", 2}, {"capacity", 1}}}}, {"\"moe.capacity\"", "unknown"}},
      {{{"moe", {{"num_experts", 4.5}, {"top_k", 2}}}}, {"\"moe.num_experts\"", "integer"}},
  };
  for (const auto& [extra, needles] : cases) {
    nlohmann::json j = base;
    j.update(extra);
    try {
      model_config_from_json(j, "cfg.json");
      ADD_FAILURE() << "accepted " << j.dump();
    } catch (const Error& e) {
      for (const std::string& needle : needles)
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
    }
  }
}

// The command: a plain-MLP model trains on the CPU, checkpoints without w3 and resumes; where there
// is a GPU, it trains there too and writes the same tensors.
TEST(ModelVariants, TrainsAndResumesFromTheCommandLine) {
  test::TempDir dir;
  std::vector<std::uint32_t> tokens;
  for (int i = 0; i < 6000; ++i) tokens.push_back(static_cast<std::uint32_t>((i * 7 + i / 13) % 31));
  test::write_tokens(dir.file("train.bin"), tokens);
  const std::vector<std::string> base = {"train",           "--model.vocab_size", "32", "--model.context_length", "16",
                                         "--model.d_model", "16", "--model.num_layers", "1", "--model.num_heads", "2",
                                         "--model.d_ff",    "64", "--model.rope_theta", "10000.0", "--model.ffn", "mlp",
                                         "--model.activation", "relu2", "--train_data", dir.file("train.bin"),
                                         "--batch_size",    "4", "--threads", "1",
                                         "--peak_flops",    "1e10", "--optimizer.warmup", "2"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return test::run_cli(args);
  };
  const auto first = with({"--steps", "6", "--optimizer.cycle", "12", "--out_dir", dir.file("run"), "--device", "cpu"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const SafetensorsFile weights(dir.file("run") + "/checkpoints/step_000006/model.safetensors");
  EXPECT_TRUE(weights.has("layers.0.ffn.w2.weight"));
  EXPECT_FALSE(weights.has("layers.0.ffn.w3.weight"));
  const auto resumed = test::run_cli({"train", "--resume", dir.file("run"), "--steps", "12"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  if (cuda_device_count() > 0) {
    const auto gpu = with({"--steps", "2", "--out_dir", dir.file("gpu"), "--device", "cuda"});
    ASSERT_EQ(gpu.exit_code, 0) << gpu.err;
    const SafetensorsFile gpu_weights(dir.file("gpu") + "/checkpoints/step_000002/model.safetensors");
    EXPECT_TRUE(gpu_weights.has("layers.0.ffn.w2.weight"));
    EXPECT_FALSE(gpu_weights.has("layers.0.ffn.w3.weight"));
  }
}

// A mixture of experts with LayerNorm, post-norm and biases from the command line: the model field
// as a JSON flag, d_ff from a ratio flag over the file's d_ff, the MoE records in metrics.jsonl,
// resume, generation from the checkpoint; the GPU path refuses it by name.
TEST(ModelVariants, MixtureOfExpertsTrainsLogsResumesAndGenerates) {
  test::TempDir dir;
  save_tokenizer_dir(dir.file("tok"), test::byte_vocab());
  std::vector<std::uint32_t> tokens;
  for (int rep = 0; rep < 200; ++rep)
    for (unsigned char ch : std::string("the cat sat on the mat. ")) tokens.push_back(ch);
  test::write_tokens(dir.file("train.bin"), tokens);
  const nlohmann::json run = {
      {"model", {{"vocab_size", 257}, {"context_length", 16}, {"d_model", 16}, {"num_layers", 2}, {"num_heads", 2},
                 {"d_ff", 48}, {"norm", "layernorm"}, {"norm_placement", "post"}, {"bias", true}}},
      {"train_data", dir.file("train.bin")}, {"batch_size", 4}, {"threads", 1}, {"peak_flops", 1e10},
      {"log_interval", 2}, {"device", "cpu"}, {"optimizer", {{"warmup", 2}, {"cycle", 8}}}};
  test::write_bytes(dir.file("run.json"), run.dump());
  const std::string moe = R"({"num_experts": 4, "top_k": 2, "num_shared": 1, "d_ff_expert": 8, "capacity_factor": 1.0})";
  const auto first = test::run_cli({"train", "--config", dir.file("run.json"), "--model.moe", moe, "--model.d_ff_ratio",
                                    "2", "--steps", "4", "--out_dir", dir.file("run")});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_NE(first.err.find("moe aux"), std::string::npos) << first.err;   // progress lines go to stderr
  const nlohmann::json saved = nlohmann::json::parse(test::read_bytes(dir.file("run") + "/config.json"));
  EXPECT_EQ(saved["model"]["d_ff"], 64);   // the flag's ratio 2 replaced the file's d_ff: 64·ceil(2·16/64)
  EXPECT_FALSE(saved["model"].contains("d_ff_ratio"));
  EXPECT_EQ(saved["model"]["moe"]["aux_loss"], 0.01);   // defaults resolved
  const SafetensorsFile weights(dir.file("run") + "/checkpoints/step_000004/model.safetensors");
  EXPECT_TRUE(weights.has("layers.1.ffn.experts.3.w2.bias"));
  EXPECT_TRUE(weights.has("layers.1.ffn.shared_experts.0.w1.weight"));
  EXPECT_TRUE(weights.has("ln_final.bias"));
  EXPECT_FALSE(weights.has("layers.0.ffn.w1.weight"));
  std::int64_t records = 0;
  std::istringstream metrics(test::read_bytes(dir.file("run") + "/metrics.jsonl"));
  for (std::string line; std::getline(metrics, line);) {
    const nlohmann::json r = nlohmann::json::parse(line);
    if (!r.contains("train_loss")) continue;
    ++records;
    ASSERT_TRUE(r.contains("moe_aux")) << line;
    EXPECT_GE(r["moe_aux"].get<double>(), 0.0);
    ASSERT_EQ(r["expert_tokens"].size(), 2u);
    for (const auto& layer : r["expert_tokens"]) {
      ASSERT_EQ(layer.size(), 4u);
      std::int64_t sum = 0;
      for (const auto& n : layer) sum += n.get<std::int64_t>();
      EXPECT_EQ(sum, 4 * 16 * 2);   // B·T tokens, k = 2 assignments each
    }
    EXPECT_EQ(r["moe_dropped"].size(), 2u);
  }
  EXPECT_EQ(records, 3);   // steps 1, 2, 4
  const auto resumed = test::run_cli({"train", "--resume", dir.file("run"), "--steps", "6"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  const auto gen = test::run_cli({"generate", "--checkpoint", dir.file("run"), "--tokenizer", dir.file("tok"), "--prompt",
                                  "the cat", "--max-new-tokens", "8", "--temperature", "0", "--threads", "1", "--device",
                                  "cpu"});
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  EXPECT_EQ(gen.out.rfind("the cat", 0), 0u) << gen.out;
  if (cuda_device_count() > 0)
    test::expect_clean_failure(test::run_cli({"train", "--config", dir.file("run.json"), "--model.moe", moe, "--steps",
                                              "2", "--out_dir", dir.file("gpu"), "--device", "cuda"}),
                               {"\"moe\"", "--device cpu"});
}

// The ablation set (configs/ablations/, run by scripts/ablate.sh): every config is a valid run
// config, each a different run (a different model, or the same at another learning rate: CS336's
// no-norm ablation at the baseline's and at a lower one), each with its own out_dir, and the
// baseline is the main job's model.
TEST(ModelVariants, AblationConfigsAreValidAndDistinct) {
  const std::filesystem::path dir = std::filesystem::path(SCRATCHLM_TEST_DATA) / ".." / ".." / "configs" / "ablations";
  std::vector<TrainConfig> runs;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    nlohmann::ordered_json j = train_defaults();
    merge_train_json(j, read_json_file(e.path().string()), e.path().string());
    const TrainConfig cfg = train_config_from_json(j);
    for (const TrainConfig& other : runs) {
      EXPECT_FALSE(other.model == cfg.model && other.lr_max == cfg.lr_max) << e.path();
      EXPECT_NE(other.out_dir, cfg.out_dir) << e.path();
    }
    if (e.path().filename() == "baseline.json") {
      nlohmann::ordered_json main = train_defaults();
      merge_train_json(main, read_json_file((dir / ".." / "sample.json").string()), "sample.json");
      EXPECT_EQ(cfg.model, train_config_from_json(main).model);
    }
    runs.push_back(cfg);
  }
  EXPECT_GE(runs.size(), 12u);
}

}  // namespace
}  // namespace scratchlm
