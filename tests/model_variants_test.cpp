// The architecture variants of the model (issue 6), on the CPU: each variant's whole-model gradient
// against central finite differences of the loss, its parameter table, and the command line.
// Variants so far: the feed-forward (SwiGLU, GeGLU, ReGLU, plain MLP with ReLU, GeLU, SiLU, ReLU²),
// NoPE, tied embeddings, z-loss, final-logit soft-capping, QK-norm and parallel blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/model.h"
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
  return c;
}

std::string name(const Variant& v) { return to_json(tiny(v)).dump(); }

// Loss and gradients of the whole model against central differences of the fp32 loss (accumulated in
// double) at 3 entries of every parameter tensor. Error budget: the loss (≈3) carries a few
// ε·sqrt(tokens) of rounding, so a step h = 1e-2 gives ≈ 1e-5 of absolute noise per entry, and
// truncation h²·L''' is ~1e-5 relative: measured 6e-5 – 9e-4 over the sampled entries together, so
// the bound is 5e-3. ReLU's kink falls inside a step for some pre-activations, where the central
// difference averages two slopes: measured 1e-2 for the ReLU MLP, bound 5e-2. A wrong backward is
// far off (GeLU's derivative without its x·φ(x) term: 0.13 – 0.15).
TEST(ModelVariants, WholeModelGradientMatchesFiniteDifferences) {
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(name(v));
    const ModelConfig c = tiny(v);
    Model model(c);
    Rng rng(7);
    init_params(model.layout, model.params.data(), rng);
    const std::int64_t B = 2, T = 5, N = B * T;
    std::vector<std::int32_t> ids(N), targets(N);
    for (std::int64_t i = 0; i < N; ++i) {
      ids[i] = static_cast<std::int32_t>((i * 7 + 3) % c.vocab_size);
      targets[i] = static_cast<std::int32_t>((i * 5 + 1) % c.vocab_size);
    }
    Activations acts(c, B, T);
    auto loss = [&] {   // the objective backward differentiates: cross-entropy + z-loss
      model_forward(acts, model, ids.data(), B, T);
      double objective = model_loss(acts, model, targets.data());
      for (float l : acts.ce_lse) objective += c.z_loss * l * l / static_cast<double>(N);
      return objective;
    };
    loss();
    std::vector<float> grads(model.params.size(), 0.0f);
    model_backward(grads, acts, model, ids.data(), targets.data(), 1.0f);
    std::vector<double> analytic, numeric;
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
