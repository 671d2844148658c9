// Resource accounting (model/accounting.h) against numbers derived independently: the GPT-2 XL
// figures of CS336's resource-accounting question, the parameter table that sizes the real arena
// (param_layout), the buffers the CPU path really allocates (Activations::bytes, KvCache::bytes), the
// attention variants' counts worked out by hand, and the
// `scratchlm accounting` command, including bad configs.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "model/accounting.h"
#include "model/model.h"
#include "model/params.h"
#include "test_util.h"
#include "util/error.h"

using namespace scratchlm;
using namespace scratchlm::test;

namespace {

ModelConfig gpt2_xl() { return model_shape(50257, 1024, 1600, 48, 25, 6400); }

// configs/ sits next to tests/ in the source tree.
std::string config_path(const std::string& name) { return data_path("../../configs/" + name); }

}  // namespace

TEST(Accounting, Gpt2XlParameters) {
  // 2·V·C (embedding + lm_head) = 2·50,257·1,600 = 160,822,400
  // per layer 4C² + 3CF + 2C = 10,240,000 + 30,720,000 + 3,200 = 40,963,200; × 48 = 1,966,233,600
  // final norm C = 1,600                                   total = 2,127,057,600
  const Accounting a = compute_accounting(gpt2_xl(), 1, 1024);
  EXPECT_EQ(a.params.total, 2'127'057'600);
  EXPECT_EQ(a.params.embedding, 80'411'200);
  EXPECT_EQ(a.params.lm_head, 80'411'200);
  EXPECT_EQ(a.params.non_embedding, 2'127'057'600 - 80'411'200);
}

TEST(Accounting, Gpt2XlForwardFlops) {
  // One sequence, T = 1,024, 2·m·n·k per matmul, attention unmasked:
  //   per layer  q, k, v, o:   4 · 2·T·C²  = 8·1,024·2,560,000        = 20,971,520,000
  //              QKᵀ and PV:   2 · 2·T²·C  = 4·1,048,576·1,600        =  6,710,886,400
  //              w1, w3, w2:   3 · 2·T·C·F = 6·1,024·1,600·6,400      = 62,914,560,000
  //              sum                                                  = 90,596,966,400
  //   × 48 layers                                                     = 4,348,654,387,200
  //   lm_head      2·T·C·V = 2·1,024·1,600·50,257                     =   164,682,137,600
  //   forward                                                         = 4,513,336,524,800 ≈ 4.51e12
  const double expected = 4'513'336'524'800.0;
  const Accounting a = compute_accounting(gpt2_xl(), 1, 1024);
  EXPECT_NEAR(a.forward_per_sequence, expected, 0.01 * expected);
  EXPECT_EQ(a.forward_per_sequence, expected);   // every term is an exact integer in double
  EXPECT_DOUBLE_EQ(a.forward_per_token, expected / 1024);
  EXPECT_DOUBLE_EQ(a.backward_per_sequence, 2 * expected);
  EXPECT_DOUBLE_EQ(a.training_per_sequence, 3 * expected);
  EXPECT_DOUBLE_EQ(train_flops_per_token(gpt2_xl(), 1024), 3 * expected / 1024);
  // The rough non-matmul count is small enough to call negligible.
  EXPECT_LT(a.non_matmul_per_sequence, 0.01 * expected);
  // The FFN dominates at this size (CS336: ~2/3 of the forward FLOPs).
  double ffn = 0;
  for (const MatmulFlops& m : a.forward)
    if (m.name.rfind("ffn", 0) == 0) ffn += m.per_sequence;
  EXPECT_NEAR(ffn / expected, 0.669, 0.001);
}

TEST(Accounting, TrainFlopsPerTokenIsSixNPlusAttention) {
  // 3 × forward per token = 6·(L·(4C² + 3CF) + V·C) + 12·L·T·C.
  for (const ModelConfig& c : {gpt2_xl(), model_shape(10000, 256, 512, 4, 16, 1344), model_shape(300, 64, 32, 2, 4, 96)})
    for (std::int64_t T : {std::int64_t{1}, c.context_length / 2, c.context_length}) {
      const double V = c.vocab_size, C = c.d_model, L = c.num_layers, F = c.d_ff;
      const double matmul_weights = L * (4 * C * C + 3 * C * F) + V * C;
      EXPECT_DOUBLE_EQ(train_flops_per_token(c, T), 6 * matmul_weights + 12 * L * T * C) << T;
    }
}

// Every shape with the SwiGLU feed-forward, with the plain MLP (no w3) and with tied embeddings (no
// lm_head), which change the count; and with the attention variants: grouped-query heads of their
// own size, learned positions, a window interleaved with full layers, dropout.
std::vector<ModelConfig> with_ffn_variants(std::vector<ModelConfig> shapes) {
  const std::size_t n = shapes.size();
  for (std::size_t i = 0; i < n; ++i) {
    ModelConfig c = shapes[i];
    ModelConfig a = c;   // the attention side
    a.num_kv_heads = c.num_heads / 2 > 0 && c.num_heads % 2 == 0 ? c.num_heads / 2 : 1;
    a.head_dim = 2 * c.d_model / c.num_heads + 2;
    a.position = Position::learned;
    a.attention_window = c.context_length / 4 > 0 ? c.context_length / 4 : 1;
    a.full_attention_every = c.num_layers;
    a.dropout = 0.1;
    validate(a, "attention variant");
    shapes.push_back(a);
    a.qk_norm = true;
    a.position = Position::sinusoidal;
    a.num_kv_heads = 1;
    validate(a, "attention variant");
    shapes.push_back(a);
    c.ffn = FfnKind::mlp;
    c.activation = Activation::relu2;
    shapes.push_back(c);
    c.tie_embeddings = true;
    shapes.push_back(c);
    c.qk_norm = true;
    shapes.push_back(c);
    c.parallel_block = true;
    shapes.push_back(c);
    // issue 6, second part: norms, placements, biases, mixtures of experts
    c = shapes[i];
    c.norm = Norm::layernorm;
    shapes.push_back(c);
    c.norm_placement = NormPlacement::pre_and_post;
    c.bias = true;
    shapes.push_back(c);
    c.norm_bias = false;
    c.norm_placement = NormPlacement::post;
    shapes.push_back(c);
    c = shapes[i];
    c.norm = Norm::none;
    c.parallel_block = true;
    c.qk_norm = true;
    shapes.push_back(c);
    c = shapes[i];
    c.moe = {.num_experts = 4, .top_k = 2, .num_shared = 1, .d_ff_expert = c.d_ff / 4};
    shapes.push_back(c);
    c.ffn = FfnKind::mlp;
    c.activation = Activation::gelu;
    c.bias = true;
    c.norm_placement = NormPlacement::post;
    c.moe = {.num_experts = 8, .top_k = 1, .num_shared = 0, .d_ff_expert = c.d_ff / 8, .capacity_factor = 1.0};
    shapes.push_back(c);
  }
  return shapes;
}

TEST(Accounting, ParametersMatchTheParamTable) {
  for (const ModelConfig& c : with_ffn_variants({gpt2_xl(), model_shape(10000, 256, 512, 4, 16, 1344),
                                                 model_shape(300, 64, 32, 2, 4, 96), model_shape(50257, 1024, 768, 12, 12, 3072),
                                                 model_shape(257, 16, 8, 1, 2, 24)})) {
    const ParamLayout layout = param_layout(c);
    const ParamCounts p = compute_accounting(c, 1, c.context_length).params;
    EXPECT_EQ(p.total, layout.total) << c.d_model;
    EXPECT_EQ(p.embedding, layout.find("token_embeddings.weight").numel());
    EXPECT_EQ(p.lm_head, c.tie_embeddings ? 0 : layout.find("lm_head.weight").numel());
    // Each component against the table's tensors of layer 0, by name.
    std::int64_t attention = 0, norms = 0, ffn = 0, router = 0, expert0 = 0;
    for (const ParamSpec& spec : layout.specs) {
      if (!spec.name.starts_with("layers.0.")) continue;
      const std::string n = spec.name.substr(9);
      if (n.starts_with("attn.q_norm") || n.starts_with("attn.k_norm") || n.find("norm") != std::string::npos ||
          n.starts_with("ln"))
        norms += spec.numel();
      else if (n.starts_with("attn.")) attention += spec.numel();
      else if (n.starts_with("ffn.")) ffn += spec.numel();
      if (n.starts_with("ffn.router.")) router += spec.numel();
      if (n.starts_with("ffn.experts.0.")) expert0 += spec.numel();
    }
    EXPECT_EQ(p.attention_per_layer, attention);
    EXPECT_EQ(p.norms_per_layer, norms);
    EXPECT_EQ(p.ffn_per_layer, ffn);
    EXPECT_EQ(p.router_per_layer, router);
    EXPECT_EQ(p.per_expert, expert0);
    const ParamSpec* final_norm = layout.get("ln_final.weight");
    const ParamSpec* final_bias = layout.get("ln_final.bias");
    EXPECT_EQ(p.final_norm, (final_norm ? final_norm->numel() : 0) + (final_bias ? final_bias->numel() : 0));
    if (!c.is_moe()) {
      EXPECT_EQ(p.active, p.total);
    }
    EXPECT_EQ(p.position_embedding,
              c.position == Position::learned ? layout.find("position_embeddings.weight").numel() : 0);
    EXPECT_EQ(p.non_embedding, p.total - p.embedding - p.position_embedding);
  }
}

TEST(Accounting, MixtureOfExpertsByHand) {
  // V 100, C 16, L 2, H 2, T 8; SwiGLU experts E 4, k 2, S 1, Fe 8; biases; LayerNorm with bias in
  // double placement (4 norms a layer).
  ModelConfig c = model_shape(100, 8, 16, 2, 2, 64);
  c.bias = true;
  c.norm = Norm::layernorm;
  c.norm_placement = NormPlacement::pre_and_post;
  c.moe = {.num_experts = 4, .top_k = 2, .num_shared = 1, .d_ff_expert = 8};
  // Parameters: embedding and head 100·16 = 1,600 each; attention 4·16² + 4·16 = 1,088 a layer;
  // norms 4·(16 + 16) = 128; router 4·16 = 64; one expert 3·16·8 + 2·8 + 16 = 416, five of them
  // 2,080, the feed-forward 2,144; a layer 1,088 + 128 + 2,144 = 3,360; final norm 32.
  //   total = 1,600 + 2·3,360 + 32 + 1,600 = 9,952; active: the router and 3 experts, 64 + 3·416 =
  //   1,312 a layer, so 9,952 − 2·(2,144 − 1,312) = 8,288.
  const Accounting a = compute_accounting(c, 3, 8);
  EXPECT_EQ(a.params.attention_per_layer, 1088);
  EXPECT_EQ(a.params.norms_per_layer, 128);
  EXPECT_EQ(a.params.router_per_layer, 64);
  EXPECT_EQ(a.params.per_expert, 416);
  EXPECT_EQ(a.params.ffn_per_layer, 2144);
  EXPECT_EQ(a.params.ffn_active_per_layer, 1312);
  EXPECT_EQ(a.params.final_norm, 32);
  EXPECT_EQ(a.params.total, 9952);
  EXPECT_EQ(a.params.active, 8288);
  // Forward FLOPs, one sequence of T = 8, per layer:
  //   q, k, v, o 4·2·8·16² = 16,384; QKᵀ, PV 2·2·8²·16 = 4,096; router 2·8·16·4 = 1,024;
  //   routed experts 3 products · 2·8·2·16·8 = 12,288; the shared one 3 · 2·8·1·16·8 = 6,144
  //   → 39,936 a layer, 79,872 for both; lm_head 2·8·16·100 = 25,600; forward 105,472.
  EXPECT_EQ(a.forward_per_sequence, 105472.0);
  EXPECT_DOUBLE_EQ(train_flops_per_token(c, 8), 3 * 105472.0 / 8);
  EXPECT_EQ(a.training_per_step, 3 * 3 * 105472.0);
  // Without norms: no norm parameters at all, ln_final included.
  ModelConfig bare = model_shape(100, 8, 16, 2, 2, 64);
  bare.norm = Norm::none;
  const ParamCounts p = compute_accounting(bare, 1, 8).params;
  EXPECT_EQ(p.norms_per_layer, 0);
  EXPECT_EQ(p.final_norm, 0);
  EXPECT_EQ(p.total, 2 * 1600 + 2 * (4 * 256 + 3 * 16 * 64));
}

TEST(Accounting, MemoryMatchesTheCpuActivations) {
  for (const ModelConfig& c : with_ffn_variants({model_shape(300, 64, 32, 2, 4, 96), model_shape(257, 16, 8, 1, 2, 24)}))
    for (std::int64_t B : {1, 3})
      for (std::int64_t T : {std::int64_t{1}, c.context_length}) {
        const MemoryPlan m = compute_accounting(c, B, T).memory;
        EXPECT_EQ(m.activations, Activations(c, B, T).bytes()) << B << " " << T;
        const std::int64_t P = param_layout(c).total;
        EXPECT_EQ(m.parameters, 4 * P);
        EXPECT_EQ(m.gradients, 4 * P);
        EXPECT_EQ(m.adamw_state, 8 * P);
        EXPECT_EQ(m.total, 16 * P + m.activations);
      }
}

TEST(Accounting, KvCacheMatchesTheCpuCache) {
  for (const ModelConfig& c : with_ffn_variants({model_shape(300, 64, 32, 2, 4, 96), model_shape(257, 16, 8, 3, 2, 24)})) {
    const KvCacheBytes kv = compute_accounting(c, 1, c.context_length).kv_cache;
    EXPECT_EQ(kv.sequence_fp32, KvCache(c, c.context_length).bytes());
    EXPECT_EQ(kv.sequence_bf16 * 2, kv.sequence_fp32);
    EXPECT_EQ(kv.per_token_fp32, 2 * 4 * c.num_layers * c.kv_heads() * c.d_head());
  }
}

TEST(Accounting, GroupedQueryAndWindowedAttentionByHand) {
  // V 1,000, context 256, C 512, L 4, H 8, Hkv 2 (D 64, Q 512, K 128), F 1,344, W 64, full every 2
  // (layers 1 and 3 full, 0 and 2 windowed); T = 256.
  ModelConfig c = model_shape(1000, 256, 512, 4, 8, 1344);
  c.num_kv_heads = 2;
  c.attention_window = 64;
  c.full_attention_every = 2;
  const Accounting a = compute_accounting(c, 1, 256);
  //   attention per layer: q 512·512 + k, v 2·128·512 + o 512·512 = 262,144·2 + 65,536·2 = 655,360
  EXPECT_EQ(a.params.attention_per_layer, 655'360);
  auto flops = [&](const std::string& name) {
    for (const MatmulFlops& m : a.forward)
      if (m.name == name) return m.per_sequence;
    ADD_FAILURE() << "no " << name;
    return 0.0;
  };
  EXPECT_EQ(flops("q_proj"), 536'870'912.0);         // 2·256·512·512·4
  EXPECT_EQ(flops("k_proj"), 134'217'728.0);         // 2·256·512·128·4
  EXPECT_EQ(flops("v_proj"), 134'217'728.0);
  EXPECT_EQ(flops("output_proj"), 536'870'912.0);
  EXPECT_EQ(flops("scores Q·K^T"), 134'217'728.0);   // full layers: 2·256·256·512·2
  EXPECT_EQ(flops("mix P·V"), 134'217'728.0);
  EXPECT_EQ(flops("scores Q·K^T, window"), 33'554'432.0);   // windowed: 2·256·64·512·2
  EXPECT_EQ(flops("mix P·V, window"), 33'554'432.0);
  // KV cache: K = 128 keys and values per position and layer, 4 bytes: 2·128·4·4 = 4,096 per token
  // while every layer stores it, 2·128·2·4 = 2,048 past the window; one 256-token sequence
  // 2·128·(2·256 + 2·64)·4 = 655,360 bytes in fp32, 327,680 in bf16.
  EXPECT_EQ(a.kv_cache.per_token_fp32, 4096);
  EXPECT_EQ(a.kv_cache.per_token_full_fp32, 2048);
  EXPECT_EQ(a.kv_cache.sequence_fp32, 655'360);
  EXPECT_EQ(a.kv_cache.sequence_bf16, 327'680);
  // At T = 32 < W the window holds every key: the same as full attention, 2·32·32·512·2.
  const Accounting short_seq = compute_accounting(c, 1, 32);
  for (const MatmulFlops& m : short_seq.forward)
    if (m.name.rfind("scores", 0) == 0) {
      EXPECT_EQ(m.per_sequence, 2.0 * 32 * 32 * 512 * 2) << m.name;
    }
  // Head size of its own: H 4, D 48 (Q 192 ≠ C 128), Hkv 1 (K 48); learned positions (256·128).
  ModelConfig d = model_shape(1000, 256, 128, 2, 4, 384);
  d.head_dim = 48;
  d.num_kv_heads = 1;
  d.position = Position::learned;
  const Accounting b = compute_accounting(d, 1, 256);
  EXPECT_EQ(b.params.attention_per_layer, 128 * 192 * 2 + 128 * 48 * 2);   // 61,440
  EXPECT_EQ(b.params.position_embedding, 256 * 128);
  EXPECT_EQ(b.params.total, 2 * 1000 * 128 + 256 * 128 + 2 * (61'440 + 2 * 128 + 3 * 128 * 384) + 128);
  // training FLOPs per token: 6·(matmul weights) + 12·T·Q·L (attention, full layers)
  const double weights = 2 * (61'440 + 3 * 128 * 384) + 1000 * 128;
  EXPECT_DOUBLE_EQ(b.training_per_token, 6 * weights + 12.0 * 256 * 192 * 2);
}

TEST(AccountingCli, JsonHasTheKvCache) {
  TempDir dir;
  write_bytes(dir.file("gqa.json"), R"({"vocab_size": 1000, "context_length": 256, "d_model": 512, "num_layers": 4,
      "num_heads": 8, "num_kv_heads": 2, "d_ff": 1344, "attention_window": 64, "full_attention_every": 2})");
  CliResult r = run_cli({"accounting", "--config", dir.file("gqa.json"), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["kv_cache_bytes"]["context_sequence"]["fp32"].get<std::int64_t>(), 655'360);
  EXPECT_EQ(j["kv_cache_bytes"]["per_token"]["bf16"].get<std::int64_t>(), 2048);
  EXPECT_EQ(j["flops"]["forward_per_sequence"]["scores Q·K^T, window"].get<std::int64_t>(), 33'554'432);
  CliResult table = run_cli({"accounting", "--config", dir.file("gqa.json")});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("655,360"), std::string::npos) << table.out;
}

TEST(Accounting, RejectsBadBatchAndSequence) {
  EXPECT_THROW(compute_accounting(gpt2_xl(), 0, 1024), Error);
  EXPECT_THROW(compute_accounting(gpt2_xl(), 1, 0), Error);
  EXPECT_THROW(compute_accounting(gpt2_xl(), 1, 1025), Error);
}

TEST(AccountingCli, PrintsGpt2XlTotals) {
  CliResult r = run_cli({"accounting", "--config", config_path("gpt2-xl.json")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("2,127,057,600"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4,513,336,524,800"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4.513 TFLOPs"), std::string::npos) << r.out;
}

TEST(AccountingCli, JsonAndRunConfig) {
  TempDir dir;
  // A run config: the model under "model", other keys ignored.
  nlohmann::json run = {{"model", nlohmann::json::parse(read_bytes(config_path("gpt2-xl.json")))},
                        {"train", {{"steps", 10}}}};
  write_bytes(dir.file("run.json"), run.dump());
  CliResult r = run_cli({"accounting", "--config", dir.file("run.json"), "--batch", "4", "--seq", "512", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["parameters"]["total"].get<std::int64_t>(), 2'127'057'600);
  EXPECT_EQ(j["batch"].get<std::int64_t>(), 4);
  EXPECT_EQ(j["seq_len"].get<std::int64_t>(), 512);
  const Accounting a = compute_accounting(gpt2_xl(), 4, 512);
  EXPECT_EQ(j["flops"]["forward_per_sequence"]["total"].get<double>(), a.forward_per_sequence);
  EXPECT_EQ(j["memory_bytes"]["activations"]["total"].get<std::int64_t>(), a.memory.activations);
  EXPECT_FALSE(j["parameters"].contains("active"));   // a dense model: every parameter is active

  // A mixture of experts: the active count and the experts' rows.
  nlohmann::json moe = nlohmann::json::parse(read_bytes(config_path("gpt2-xl.json")));
  moe["moe"] = {{"num_experts", 8}, {"top_k", 2}, {"d_ff_expert", 1600}};
  write_bytes(dir.file("moe.json"), moe.dump());
  CliResult m = run_cli({"accounting", "--config", dir.file("moe.json"), "--json"});
  ASSERT_EQ(m.exit_code, 0) << m.err;
  const nlohmann::json mj = nlohmann::json::parse(m.out);
  // a layer: router 8·1,600 = 12,800, an expert 3·1,600·1,600 = 7,680,000; inactive 6 experts a layer
  EXPECT_EQ(mj["parameters"]["per_expert"].get<std::int64_t>(), 7'680'000);
  EXPECT_EQ(mj["parameters"]["total"].get<std::int64_t>() - mj["parameters"]["active"].get<std::int64_t>(),
            std::int64_t{48} * 6 * 7'680'000);
  CliResult table = run_cli({"accounting", "--config", dir.file("moe.json")});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("experts w1 (k of E)"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("active per token"), std::string::npos) << table.out;
}

TEST(AccountingCli, BadConfigsFailCleanly) {
  TempDir dir;
  nlohmann::json good = nlohmann::json::parse(read_bytes(config_path("gpt2-xl.json")));

  nlohmann::json unknown = good;
  unknown["n_embd"] = 1600;
  write_bytes(dir.file("unknown.json"), unknown.dump());
  expect_clean_failure(run_cli({"accounting", "--config", dir.file("unknown.json")}), {"unknown.json", "n_embd"});

  nlohmann::json indivisible = good;
  indivisible["num_heads"] = 24;   // 1600 / 24 is not an integer
  write_bytes(dir.file("heads.json"), indivisible.dump());
  expect_clean_failure(run_cli({"accounting", "--config", dir.file("heads.json")}), {"heads.json", "d_model", "num_heads"});

  nlohmann::json in_run = {{"model", unknown}};
  write_bytes(dir.file("run.json"), in_run.dump());
  expect_clean_failure(run_cli({"accounting", "--config", dir.file("run.json")}), {"run.json", "n_embd"});

  write_bytes(dir.file("broken.json"), "{\"vocab_size\": 50257,");
  expect_clean_failure(run_cli({"accounting", "--config", dir.file("broken.json")}), {"broken.json", "invalid JSON"});

  expect_clean_failure(run_cli({"accounting", "--config", dir.file("missing.json")}), {"missing.json"});
  expect_clean_failure(run_cli({"accounting", "--config", config_path("gpt2-xl.json"), "--seq", "2048"}),
                       {"--seq", "context_length"});
  expect_clean_failure(run_cli({"accounting", "--config", config_path("gpt2-xl.json"), "--batch", "0"}), {"--batch"});
}
