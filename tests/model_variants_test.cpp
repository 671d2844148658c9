// The architecture variants of the model (issue 6), on the CPU: each variant's whole-model gradient
// against central finite differences of the loss, its parameter table, and the command line.
// Variants so far: the feed-forward (SwiGLU, GeGLU, ReGLU, plain MLP with ReLU, GeLU, SiLU, ReLU²),
// NoPE, tied embeddings, z-loss, final-logit soft-capping, QK-norm and parallel blocks; on the
// attention side grouped-query and multi-query attention, a head size other than d_model / heads,
// sliding windows (alone, interleaved with full layers, with NoPE on the full layers), the score
// soft-cap, sinusoidal and learned absolute positions, and dropout. Every variant also decodes
// through the KV cache to the full forward's logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "generate/generate.h"
#include "model/model.h"
#include "ops/dropout.h"
#include "tensor/device.h"
#include "tensor/safetensors.h"
#include "test_util.h"
#include "train/train_config.h"
#include "util/json_file.h"
#include "util/error.h"

namespace scratchlm {
namespace {

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
};

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
    // the combination: GQA + sliding window + QK-norm + tied embeddings
    {.tie = true, .qk_norm = true, .heads = 4, .kv_heads = 2, .window = 2},
    // and most of the rest together: MQA with D = 4 over 4 heads, interleaved NoPE full layers, caps, dropout
    {.softcap = 3.0, .qk_norm = true, .parallel = true, .heads = 4, .kv_heads = 1, .head_dim = 4, .window = 3,
     .full_every = 2, .full_nope = true, .attn_softcap = 1.0, .dropout = 0.1, .attention_dropout = 0.1},
    {.position = Position::learned, .kv_heads = 1, .window = 3, .dropout = 0.1},
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

// Loss and gradients of the whole model against central differences of the fp32 loss (accumulated in
// double) at 3 entries of every parameter tensor. Error budget: the loss (≈3) carries a few
// ε·sqrt(tokens) of rounding, so a step h = 1e-2 gives ≈ 1e-5 of absolute noise per entry, and
// truncation h²·L''' is ~1e-5 relative: measured 5e-5 – 2e-3 over the sampled entries together, so
// the bound is 5e-3. (The largest, 2e-3 for the interleaved window, is truncation: one entry of
// gradient 0.35 off by 6e-4 at h = 1e-2 and by 1.5e-4 at h = 5e-3, the h² of a central difference.) ReLU's kink falls inside a step for some pre-activations, where the central
// difference averages two slopes: measured 1e-2 for the ReLU MLP, bound 5e-2. A wrong backward is
// far off (GeLU's derivative without its x·φ(x) term: 0.13 – 0.15). The passes are training passes
// with a fixed dropout seed: the masks are the same in every evaluation of the loss, which is then
// a smooth function of the weights (and without dropout the phase changes nothing).
TEST(ModelVariants, WholeModelGradientMatchesFiniteDifferences) {
  const PassOptions train{.phase = Phase::training, .dropout_seed = 1234};
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(name(v));
    const ModelConfig c = tiny(v);
    Model model = initialised(c, 7);
    const std::int64_t B = 2, T = 5, N = B * T;
    std::vector<std::int32_t> ids(N), targets(N);
    for (std::int64_t i = 0; i < N; ++i) {
      ids[i] = static_cast<std::int32_t>((i * 7 + 3) % c.vocab_size);
      targets[i] = static_cast<std::int32_t>((i * 5 + 1) % c.vocab_size);
    }
    Activations acts(c, B, T);
    auto loss = [&] {   // the objective backward differentiates: cross-entropy + z-loss
      model_forward(acts, model, ids.data(), B, T, nullptr, train);
      double objective = model_loss(acts, model, targets.data());
      for (float l : acts.ce_lse) objective += c.z_loss * l * l / static_cast<double>(N);
      return objective;
    };
    loss();
    std::vector<float> grads(model.params.size(), 0.0f);
    model_backward(grads, acts, model, ids.data(), targets.data(), 1.0f);
    std::vector<double> analytic, numeric;
    test::SingleThreaded one_thread;   // see test_util.h
    for (const ParamSpec& spec : model.layout.specs)
      for (std::int64_t k = 0; k < std::min<std::int64_t>(3, spec.numel()); ++k) {
        const std::int64_t i = spec.offset + (k * 7919) % spec.numel();
        const float saved = model.params[i];
        model.params[i] = saved + 1e-2f;
        const float up = model.params[i];
        const double l_up = loss();
        model.params[i] = saved - 1e-2f;
        const float down = model.params[i];
        const double l_down = loss();
        model.params[i] = saved;
        numeric.push_back((l_up - l_down) / (static_cast<double>(up) - down));
        analytic.push_back(grads[i]);
      }
    const bool kinked = v.activation == Activation::relu;
    EXPECT_LE(test::rel_error(analytic, numeric), kinked ? 5e-2 : 5e-3);
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
    Model model = initialised(c, 11);
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

// The command: a plain-MLP model trains on the CPU, checkpoints without w3 and resumes; the GPU
// path, which has SwiGLU only so far, refuses it by name.
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
  if (cuda_device_count() > 0)
    test::expect_clean_failure(with({"--steps", "2", "--out_dir", dir.file("gpu"), "--device", "cuda"}),
                               {"\"ffn\"", "mlp", "--device cpu"});
}

// The ablation set (configs/ablations/, run by scripts/ablate.sh): every config is a valid run
// config, each a different model, and the baseline is the main job's model.
TEST(ModelVariants, AblationConfigsAreValidAndDistinct) {
  const std::filesystem::path dir = std::filesystem::path(SCRATCHLM_TEST_DATA) / ".." / ".." / "configs" / "ablations";
  std::vector<ModelConfig> models;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    nlohmann::ordered_json j = train_defaults();
    merge_train_json(j, read_json_file(e.path().string()), e.path().string());
    const TrainConfig cfg = train_config_from_json(j);
    for (const ModelConfig& other : models) EXPECT_FALSE(other == cfg.model) << e.path();
    models.push_back(cfg.model);
  }
  EXPECT_GE(models.size(), 6u);
}

}  // namespace
}  // namespace scratchlm
