// The Transformer LM on the GPU: the same model as model.h (the CPU path is its spec), with
//   - fp32 master weights, gradients and AdamW state in flat arenas laid out by param_layout, and a
//     copy of the weights in the working precision for the matrix products;
//   - activations in the working precision (bf16 or fp32) where matrix products read them; the
//     residual stream, RMSNorm's rstd, attention's log-sum-exp and the losses in fp32;
//   - matrix products through cuBLASLt, with the residual adds in their epilogues;
//   - a training step (micro-batches, clipping, AdamW, schedule) captured once as a CUDA graph and
//     replayed, fed from pinned host memory.
// The host header holds no CUDA types; everything device-side lives in model/cuda/gpu_model.cu.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "model/config.h"
#include "model/params.h"
#include "train/optimizer_cuda.h"

namespace scratchlm {

enum class GpuPrecision { fp32, bf16 };
const char* precision_name(GpuPrecision p);

struct GpuModelOptions {
  GpuPrecision precision = GpuPrecision::bf16;
  std::int64_t batch = 1;         // sequences per micro-batch the buffers hold (B)
  std::int64_t grad_accum = 1;    // micro-batches per training step
  bool with_backward = true;      // false: forward buffers only (generation, evaluation)
  // Keep no feed-forward hidden activations per layer (3·F of the layer's 6·C + 3·F values per
  // token); backward recomputes them (two more matrix products per layer, ~+8% FLOPs at F = 8/3·C).
  bool recompute = false;
};

class GpuModel {
 public:
  GpuModel(const ModelConfig& c, const GpuModelOptions& o);
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  const ParamLayout& layout() const;

  // Host ↔ device copies of the arenas (layout().total floats each).
  void set_params(const float* params);   // also refreshes the working-precision copy
  void get_params(float* params) const;
  void get_grads(float* grads) const;
  void set_optimizer_state(const float* m, const float* v);
  void get_optimizer_state(float* m, float* v) const;
  void zero_grads();

  // Eager passes over host ids and targets (B·T each, B ≤ batch, T ≤ context_length); each waits
  // for the device. forward returns the mean loss and, if logits is not null, copies the
  // (B·T, V) logits out as floats. forward_backward also accumulates the gradients of
  // loss_scale × mean loss.
  double forward(const std::int32_t* ids, const std::int32_t* targets, std::int64_t B, std::int64_t T,
                 float* logits = nullptr);
  double forward_backward(const std::int32_t* ids, const std::int32_t* targets, std::int64_t B, std::int64_t T,
                          float loss_scale);
  // The next-token logits (V floats) after ids (T of them), for generation.
  void last_logits(const std::int32_t* ids, std::int64_t T, float* logits);

  // One training step over grad_accum micro-batches of (batch, context_length): x and y hold
  // grad_accum·batch·context_length ids each. stage_step does the host's share (copying the batch
  // into pinned memory and grouping its tokens) and may run while the previous step is still on the
  // device; submit_staged queues the copy and the step and returns (the host may prepare the next
  // batch); finish_step waits for it. The first step runs eagerly, the second is captured into a
  // CUDA graph that later steps replay. submit_step = stage_step + submit_staged.
  void stage_step(const std::int32_t* x, const std::int32_t* y);
  void submit_staged(const GpuStepIndex& index, const GpuOptimizerOptions& opt);
  void submit_step(const std::int32_t* x, const std::int32_t* y, const GpuStepIndex& index,
                   const GpuOptimizerOptions& opt);
  GpuStepStats finish_step();
  // One step run eagerly with an event after each part; returns a table of the time per part
  // (matrix products, attention, norms, ... summed over layers). For benchmarks; updates the
  // weights like submit_step + finish_step.
  std::string profile_step(const std::int32_t* x, const std::int32_t* y, const GpuStepIndex& index,
                           const GpuOptimizerOptions& opt);

  // Multi-line description of the device memory, by purpose.
  std::string memory_plan() const;

  struct Impl;   // the device buffers; defined in model/cuda/gpu_model.cu

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace scratchlm
