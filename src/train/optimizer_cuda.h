// The optimizer step on the GPU, the same arithmetic as train/optimizer.h's CPU version:
//   lr from the cosine schedule of the step index (computed on the device);
//   the global gradient norm (in double, in a fixed order), clipping by max_norm / (norm + 1e-6);
//   AdamW in torch's order over the flat fp32 arenas, writing the working-precision weight copy too.
// If the loss or the norm is not finite the update is skipped on the device (the host reads
// `skipped` and stops the run with the weights of the last good step).
#pragma once

#include <cstdint>
#include <vector>

#include "model/params.h"
#include "tensor/bf16.h"
#include "train/optimizer.h"

struct CUstream_st;

namespace scratchlm {

// Written by the device each step; the host reads it after the step.
struct GpuStepStats {
  double loss = 0;        // mean loss over the step's micro-batches
  double grad_norm = 0;   // before clipping
  double lr = 0;
  std::int64_t skipped = 0;
};

// Read by the device: the step's place in the schedule (host-written, with the batch).
struct GpuStepIndex {
  std::int64_t step = 0;        // 0-based step index (the schedule's t)
  std::int64_t adam_step = 0;   // updates before this one
};

struct GpuOptimizerOptions {
  double lr_max, lr_min;
  std::int64_t warmup, cycle;
  AdamWOptions adamw;
  double clip;   // 0 = off
};

// Contiguous pieces of the arena with one weight-decay setting, one block each; copy_offset is
// where the piece goes in the working-precision copy, whose layout may order tensors differently.
struct AdamWChunk {
  std::int64_t offset, count, copy_offset;
  std::int32_t decay;
};
// copy_offsets: per spec, its offset in the copy (empty: the arena's own layout).
std::vector<AdamWChunk> adamw_chunks(const ParamLayout& layout, const AdamWOptions& opt,
                                     const std::vector<std::int64_t>& copy_offsets = {});

constexpr int kNormPartials = 264;   // blocks of the norm's first pass (2 per SM of an H100)
constexpr int kOptimizerScratch = kNormPartials + 4;   // the partials, then the step's coefficients

// stats->loss = 0 (before the micro-batches add their losses).
void step_begin_cuda(GpuStepStats* stats, CUstream_st* stream);
// The whole update: norm, clip, schedule, AdamW; `partials` is kOptimizerScratch doubles of scratch.
// params_copy (may be null) receives the updated weights in T.
template <typename T>
void optimizer_step_cuda(float* params, T* params_copy, const float* grads, float* m, float* v, std::int64_t n,
                         const AdamWChunk* chunks, std::int64_t num_chunks, double* partials, GpuStepStats* stats,
                         const GpuStepIndex* index, const GpuOptimizerOptions& opt, CUstream_st* stream);

}  // namespace scratchlm
