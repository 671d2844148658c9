// Resource accounting (model/accounting.h) against numbers derived independently: the GPT-2 XL
// figures of CS336's resource-accounting question, the parameter table that sizes the real arena
// (param_layout), the buffers the CPU path really allocates (Activations::bytes), and the
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
// lm_head), which change the count.
std::vector<ModelConfig> with_ffn_variants(std::vector<ModelConfig> shapes) {
  const std::size_t n = shapes.size();
  for (std::size_t i = 0; i < n; ++i) {
    ModelConfig c = shapes[i];
    c.ffn = FfnKind::mlp;
    c.activation = Activation::relu2;
    shapes.push_back(c);
    c.tie_embeddings = true;
    shapes.push_back(c);
    c.qk_norm = true;
    shapes.push_back(c);
    c.parallel_block = true;
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
    EXPECT_EQ(p.attention_per_layer, 4 * layout.find("layers.0.attn.q_proj.weight").numel());
    EXPECT_EQ(p.ffn_per_layer, layout.find("layers.0.ffn.w1.weight").numel() +
                                   layout.find("layers.0.ffn.w2.weight").numel() +
                                   (c.gated() ? layout.find("layers.0.ffn.w3.weight").numel() : 0));
  }
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
