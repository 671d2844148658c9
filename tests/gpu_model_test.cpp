// The GPU model against PyTorch's reference (tests/data/reference/lm-small, fp64 in PyTorch):
//   - fp32 mode: logits, loss and every parameter gradient within 1e-5, and the 6-step AdamW
//     trajectory (losses, norms, final weights) through the captured training step;
//   - bf16 mode: each error at most twice PyTorch's own autocast-bf16 error on the same model and
//     batch (torch_bf16_errors.json, written on the GPU machine by reference/torch_bf16_errors.py).
#include <gtest/gtest.h>

#if SCRATCHLM_CUDA

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/gpu_model.h"
#include "model/model.h"
#include "tensor/device.h"
#include "tensor/safetensors.h"
#include "gpu_test_util.h"
#include "test_util.h"
#include "util/error.h"
#include "util/files.h"

namespace scratchlm {
namespace {

const std::string kDir = SCRATCHLM_TEST_DATA "/reference/lm-small";

double rel(const float* a, const std::vector<float>& ref) { return test::rel_error(a, ref.data(), ref.size()); }

std::vector<std::int32_t> ints32(const SafetensorsFile& f, const std::string& name) {
  std::vector<std::int32_t> out;
  for (std::int64_t v : f.ints(name)) out.push_back(static_cast<std::int32_t>(v));
  return out;
}

struct Reference {
  SafetensorsFile f{kDir + "/reference.safetensors"};
  nlohmann::json js = nlohmann::json::parse(read_file(kDir + "/reference.json"));
  ModelConfig cfg;
  std::int64_t B, T;
  std::vector<float> params;
  Reference() {
    nlohmann::json m = js.at("config");
    B = m["batch"];
    T = m["seq"];
    m.erase("batch");
    m.erase("seq");
    cfg = model_config_from_json(m, kDir);
    cfg.context_length = T;   // the reference batch's length (RoPE of positions < T is the same)
    const ParamLayout layout = param_layout(cfg);
    params.resize(static_cast<std::size_t>(layout.total));
    for (const ParamSpec& s : layout.specs) f.read_f32("param." + s.name, s.shape, params.data() + s.offset);
  }
};

struct ModelErrors {
  double logits, loss;
  std::vector<std::pair<std::string, double>> grads;
};

ModelErrors model_errors(GpuPrecision precision) {
  Reference r;
  GpuModel gpu(r.cfg, {.precision = precision, .batch = r.B, .grad_accum = 1, .with_backward = true});
  gpu.set_params(r.params.data());
  const auto ids = ints32(r.f, "input.ids"), targets = ints32(r.f, "input.targets");
  std::vector<float> logits(static_cast<std::size_t>(r.B * r.T * r.cfg.vocab_size));
  const double loss = gpu.forward(ids.data(), targets.data(), r.B, r.T, logits.data());
  ModelErrors e;
  e.logits = rel(logits.data(), r.f.floats("out.logits"));
  const double ref_loss = r.js["loss"].get<double>();
  e.loss = std::fabs(loss - ref_loss) / std::fabs(ref_loss);
  const double loss2 = gpu.forward_backward(ids.data(), targets.data(), r.B, r.T, 1.0f);
  EXPECT_EQ(loss, loss2) << "forward and forward_backward compute the same loss";
  std::vector<float> grads(r.params.size());
  gpu.get_grads(grads.data());
  for (const ParamSpec& s : gpu.layout().specs)
    e.grads.emplace_back(s.name, rel(grads.data() + s.offset, r.f.floats("grad." + s.name)));
  return e;
}

TEST(GpuModel, Fp32MatchesPyTorch) {
  SLM_REQUIRE_GPU();
  const ModelErrors e = model_errors(GpuPrecision::fp32);
  EXPECT_LT(e.logits, 1e-5);
  EXPECT_LT(e.loss, 1e-6);
  for (const auto& [name, err] : e.grads) EXPECT_LT(err, 1e-5) << name;
}

TEST(GpuModel, Bf16WithinTwicePyTorchsAutocastError) {
  SLM_REQUIRE_GPU();
  const ModelErrors e = model_errors(GpuPrecision::bf16);
  std::printf("  bf16 model: logits %.2e, loss %.2e\n", e.logits, e.loss);
  for (const auto& [name, err] : e.grads) std::printf("  grad %s %.2e\n", name.c_str(), err);
  if (!std::filesystem::exists(kDir + "/torch_bf16_errors.json"))
    GTEST_SKIP() << "no torch_bf16_errors.json: run reference/torch_bf16_errors.py on the GPU";
  const nlohmann::json torch = nlohmann::json::parse(read_file(kDir + "/torch_bf16_errors.json"));
  std::printf("  torch autocast: logits %.2e, loss %.2e\n", torch["model.logits"].get<double>(),
              torch["model.loss"].get<double>());
  EXPECT_LT(e.logits, 2 * torch["model.logits"].get<double>());
  EXPECT_LT(e.loss, std::max(2 * torch["model.loss"].get<double>(), 1e-4));
  for (const auto& [name, err] : e.grads) {
    const double t = torch["model.grad." + name].get<double>();
    std::printf("  grad %-32s ours %.2e torch %.2e\n", name.c_str(), err, t);
    EXPECT_LT(err, 2 * t) << name;
  }
}

// Recomputing the feed-forward activations in backward runs the same kernels on the same inputs:
// the gradients are identical, bit for bit.
TEST(GpuModel, RecomputationGivesIdenticalGradients) {
  SLM_REQUIRE_GPU();
  Reference r;
  const auto ids = ints32(r.f, "input.ids"), targets = ints32(r.f, "input.targets");
  std::vector<std::vector<float>> grads;
  for (bool recompute : {false, true}) {
    GpuModel gpu(r.cfg, {.precision = GpuPrecision::bf16, .batch = r.B, .grad_accum = 1, .with_backward = true,
                         .recompute = recompute});
    gpu.set_params(r.params.data());
    gpu.forward_backward(ids.data(), targets.data(), r.B, r.T, 1.0f);
    grads.emplace_back(r.params.size());
    gpu.get_grads(grads.back().data());
  }
  EXPECT_EQ(grads[0], grads[1]);
}

// The training step as a CUDA graph (eager first step, then captured), against PyTorch's 6 AdamW
// steps with clipping and the cosine schedule.
TEST(GpuModel, Fp32TrainingTrajectoryMatchesPyTorch) {
  SLM_REQUIRE_GPU();
  Reference r;
  const nlohmann::json& t = r.js["train"];
  GpuModel gpu(r.cfg, {.precision = GpuPrecision::fp32, .batch = r.B, .grad_accum = 1, .with_backward = true});
  gpu.set_params(r.params.data());
  const GpuOptimizerOptions opt{.lr_max = t["lr_max"], .lr_min = t["lr_min"], .warmup = t["warmup"],
                                .cycle = t["cycle"],
                                .adamw = {.beta1 = t["betas"][0], .beta2 = t["betas"][1], .eps = t["eps"],
                                          .weight_decay = t["weight_decay"], .decay_norm_gains = true},
                                .clip = t["clip"]};
  const std::int64_t steps = t["steps"];
  for (std::int64_t s = 0; s < steps; ++s) {
    const auto batch = ints32(r.f, "train.step" + std::to_string(s) + ".ids");   // (B, T + 1)
    std::vector<std::int32_t> x, y;
    for (std::int64_t b = 0; b < r.B; ++b)
      for (std::int64_t i = 0; i < r.T; ++i) {
        x.push_back(batch[b * (r.T + 1) + i]);
        y.push_back(batch[b * (r.T + 1) + i + 1]);
      }
    gpu.submit_step(x.data(), y.data(), {.step = s, .adam_step = s}, opt);
    const GpuStepStats st = gpu.finish_step();
    EXPECT_EQ(st.skipped, 0);
    EXPECT_NEAR(st.lr, r.js["train.lrs"][s].get<double>(), 1e-15) << "step " << s;
    EXPECT_NEAR(st.loss, r.js["train.losses"][s].get<double>(), 1e-5) << "step " << s;
    const double norm = r.js["train.grad_norms_before_clip"][s].get<double>();
    EXPECT_NEAR(st.grad_norm, norm, 1e-5 * norm) << "step " << s;
  }
  std::vector<float> params(r.params.size());
  gpu.get_params(params.data());
  for (const ParamSpec& s : gpu.layout().specs)
    EXPECT_LT(rel(params.data() + s.offset, r.f.floats("train.final." + s.name)), 1e-5) << s.name;
}

}  // namespace
}  // namespace scratchlm

#endif  // SCRATCHLM_CUDA
