// What the training loop (trainer.cpp) asks of the device that runs the model: one optimizer step
// at a time, the validation loss, and the weights and AdamW state back on the host for checkpoints.
// The CPU engine computes on the host Model itself; the CUDA engine keeps its own device copy and
// writes it back into the Model and AdamWState on sync_to_host.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "train/optimizer.h"
#include "train/train_config.h"

namespace scratchlm {

struct StepResult {
  double loss = 0, grad_norm = 0, lr = 0;
  bool updated = false;   // false: the loss or the norm was not finite and the weights are unchanged
  // Mixtures of experts (empty otherwise): Σ_layers aux, the mean over the micro-batches; and per layer
  // the assignments routed to each expert and those dropped over capacity, summed over them.
  double moe_aux = 0;
  std::vector<std::vector<std::int64_t>> expert_tokens = {};   // (L, E)
  std::vector<std::int64_t> moe_dropped = {};                  // (L)
};

class TrainEngine {
 public:
  virtual ~TrainEngine() = default;
  // A step in three calls, so that the host's work for the next step overlaps the device's:
  //   stage_step(x, y)    the batch of the next step (x, y: grad_accum·B·T ids, copied before
  //                       returning); may be called while the previous step still runs;
  //   submit_step(step)   starts step `step` (0-based) on the staged batch;
  //   finish_step()       waits for it.
  virtual void stage_step(const std::int32_t* x, const std::int32_t* y) = 0;
  virtual void submit_step(std::int64_t step) = 0;
  virtual StepResult finish_step() = 0;
  // Mean loss over one batch (B, T) of x and y, without touching gradients or weights.
  virtual double eval_loss(const std::int32_t* x, const std::int32_t* y) = 0;
  // Model::params and the AdamWState (step count included) reflect every finished step.
  virtual void sync_to_host() = 0;
  // Lines for the start-up report: device, precision, memory plan, MFU's peak.
  virtual std::string describe() const = 0;
  virtual double peak_flops() const = 0;
};

std::unique_ptr<TrainEngine> make_cpu_engine(const TrainConfig& cfg, Model& model, AdamWState& adam);
// The model's weights and the AdamW state are uploaded from `model` and `adam`.
std::unique_ptr<TrainEngine> make_cuda_engine(const TrainConfig& cfg, Model& model, AdamWState& adam);

}  // namespace scratchlm
