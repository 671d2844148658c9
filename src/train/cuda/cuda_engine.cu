// The CUDA engine: a GpuModel holding the weights, gradients and AdamW state on the device; each
// step is one graph launch (gpu_model.h). The host keeps the step count of AdamW and copies the
// device state back into the Model for checkpoints.
#include "model/gpu_model.h"
#include "tensor/device.h"
#include "tensor/gpu_buffer.h"
#include "train/engine.h"
#include "util/error.h"
#include "util/progress.h"

namespace scratchlm {
namespace {

class CudaEngine final : public TrainEngine {
 public:
  CudaEngine(const TrainConfig& cfg, Model& model, AdamWState& adam)
      : cfg_(cfg),
        model_(model),
        adam_(adam),
        gpu_(cfg.model, {.precision = cfg.bf16 ? GpuPrecision::bf16 : GpuPrecision::fp32,
                         .batch = cfg.batch_size,
                         .grad_accum = cfg.grad_accum,
                         .with_backward = true,
                         .recompute = cfg.recompute}) {
    gpu_.set_params(model.params.data());
    gpu_.set_optimizer_state(adam.m.data(), adam.v.data());
    opt_ = {.lr_max = cfg.lr_max, .lr_min = cfg.lr_min, .warmup = cfg.warmup, .cycle = cfg.cycle,
            .adamw = cfg.adamw, .clip = cfg.clip};
    // Dense bf16 of an H100/H200 (the figure the issue and the PyTorch peer use); fp32 without tensor cores.
    peak_ = cfg.peak_flops > 0 ? cfg.peak_flops : (cfg.bf16 ? 989e12 : 67e12);
  }

  void stage_step(const std::int32_t* x, const std::int32_t* y) override { gpu_.stage_step(x, y); }

  void submit_step(std::int64_t step) override { gpu_.submit_staged({.step = step, .adam_step = adam_.step}, opt_); }

  StepResult finish_step() override {
    const GpuStepStats s = gpu_.finish_step();
    StepResult r{.loss = s.loss, .grad_norm = s.grad_norm, .lr = s.lr, .updated = s.skipped == 0};
    if (r.updated) adam_.step += 1;
    return r;
  }

  double eval_loss(const std::int32_t* x, const std::int32_t* y) override {
    return gpu_.forward(x, y, cfg_.batch_size, cfg_.model.context_length);
  }

  void sync_to_host() override {
    gpu_.get_params(model_.params.data());
    gpu_.get_optimizer_state(adam_.m.data(), adam_.v.data());
  }

  std::string describe() const override {
    return str("device: ", cuda_device_description(0), ", ", cfg_.bf16 ? "bf16 mixed precision" : "fp32", "\n",
               gpu_.memory_plan(), "\nMFU is reported against ", peak_ / 1e12, " TFLOP/s (",
               cfg_.peak_flops > 0 ? "peak_flops" : (cfg_.bf16 ? "H100/H200 dense bf16" : "H100/H200 fp32"), ")");
  }

  double peak_flops() const override { return peak_; }

 private:
  const TrainConfig& cfg_;
  Model& model_;
  AdamWState& adam_;
  GpuModel gpu_;
  GpuOptimizerOptions opt_{};
  double peak_ = 0;
};

}  // namespace

std::unique_ptr<TrainEngine> make_cuda_engine(const TrainConfig& cfg, Model& model, AdamWState& adam) {
  return std::make_unique<CudaEngine>(cfg, model, adam);
}

}  // namespace scratchlm
