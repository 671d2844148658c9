// The CPU engine: model_forward / model_backward / clipping / AdamW on the host Model (model.cpp).
#include <omp.h>

#include <cmath>

#include "model/accounting.h"
#include "ops/dropout.h"
#include "ops/linear.h"
#include "train/engine.h"
#include "util/error.h"
#include "util/progress.h"

namespace scratchlm {
namespace {

class CpuEngine final : public TrainEngine {
 public:
  CpuEngine(const TrainConfig& cfg, Model& model, AdamWState& adam)
      : cfg_(cfg),
        model_(model),
        adam_(adam),
        acts_(cfg.model, cfg.batch_size, cfg.model.context_length),
        grads_(static_cast<std::size_t>(model.layout.total)),
        peak_(cfg.peak_flops > 0 ? cfg.peak_flops : measure_sgemm_flops()) {}

  void stage_step(const std::int32_t* x, const std::int32_t* y) override {
    const std::size_t n = static_cast<std::size_t>(cfg_.grad_accum * cfg_.batch_size * cfg_.model.context_length);
    x_.assign(x, x + n);
    y_.assign(y, y + n);
  }

  void submit_step(std::int64_t step) override {
    const std::int64_t B = cfg_.batch_size, T = cfg_.model.context_length;
    const std::int32_t* x = x_.data();
    const std::int32_t* y = y_.data();
    result_ = {};
    result_.lr = cosine_lr(step, cfg_.lr_max, cfg_.lr_min, cfg_.warmup, cfg_.cycle);
    std::fill(grads_.begin(), grads_.end(), 0.0f);
    const ModelConfig& mc = cfg_.model;
    if (mc.is_moe()) {
      result_.expert_tokens.assign(static_cast<std::size_t>(mc.num_layers),
                                   std::vector<std::int64_t>(static_cast<std::size_t>(mc.moe.num_experts), 0));
      result_.moe_dropped.assign(static_cast<std::size_t>(mc.num_layers), 0);
    }
    for (std::int64_t micro = 0; micro < cfg_.grad_accum; ++micro) {
      const std::int64_t off = micro * B * T;
      // dropout's masks: a pure function of the run's seed, the step and the micro-batch (resume-exact)
      const PassOptions pass{.phase = Phase::training, .dropout_seed = dropout_seed(cfg_.seed, step, micro)};
      model_forward(acts_, model_, x + off, B, T, nullptr, pass);
      result_.loss += model_loss(acts_, model_, y + off) / static_cast<double>(cfg_.grad_accum);
      model_backward(grads_, acts_, model_, x + off, y + off, 1.0f / static_cast<float>(cfg_.grad_accum));
      if (!mc.is_moe()) continue;
      result_.moe_aux += moe_aux(acts_) / static_cast<double>(cfg_.grad_accum);
      for (std::size_t l = 0; l < acts_.layers.size(); ++l) {
        for (std::size_t e = 0; e < acts_.layers[l].expert_tokens.size(); ++e)
          result_.expert_tokens[l][e] += acts_.layers[l].expert_tokens[e];
        result_.moe_dropped[l] += acts_.layers[l].moe_dropped;
      }
    }
    result_.grad_norm = cfg_.clip > 0 ? clip_grad_norm(grads_.data(), model_.layout.total, cfg_.clip)
                                      : global_norm(grads_.data(), model_.layout.total);
    if (!std::isfinite(result_.loss) || !std::isfinite(result_.grad_norm)) return;   // no update
    adamw_step(model_.params.data(), grads_.data(), adam_, model_.layout, result_.lr, cfg_.adamw);
    result_.updated = true;
  }

  StepResult finish_step() override { return result_; }

  double eval_loss(const std::int32_t* x, const std::int32_t* y) override {   // evaluation: nothing dropped
    model_forward(acts_, model_, x, cfg_.batch_size, cfg_.model.context_length);
    return model_loss(acts_, model_, y);
  }

  void sync_to_host() override {}

  std::string describe() const override {
    const double param_bytes = 4.0 * static_cast<double>(model_.layout.total);
    return str("device: CPU, fp32; threads: ", omp_get_max_threads(), "; BLAS: ", blas_description(),
               "\nmemory plan (fp32, CPU): parameters ", human_bytes(param_bytes), ", gradients ",
               human_bytes(param_bytes), ", AdamW state ", human_bytes(2 * param_bytes), ", activations ",
               human_bytes(static_cast<double>(acts_.bytes())), " (batch ", cfg_.batch_size, " x ",
               cfg_.model.context_length, ")\nMFU is reported against ", peak_ / 1e9, " GFLOP/s (",
               cfg_.peak_flops > 0 ? "peak_flops" : "this machine's measured sgemm", ")");
  }

  double peak_flops() const override { return peak_; }

 private:
  const TrainConfig& cfg_;
  Model& model_;
  AdamWState& adam_;
  Activations acts_;
  std::vector<float> grads_;
  std::vector<std::int32_t> x_, y_;   // the staged batch
  double peak_;
  StepResult result_;
};

}  // namespace

std::unique_ptr<TrainEngine> make_cpu_engine(const TrainConfig& cfg, Model& model, AdamWState& adam) {
  return std::make_unique<CpuEngine>(cfg, model, adam);
}

}  // namespace scratchlm
