// The GPU optimizer step (see optimizer_cuda.h): three launches.
//   1. grad_norm_partials: kNormPartials blocks, each a fixed slice of the squared gradients summed in double;
//   2. step_coefficients: one thread sums the partials in order and computes the norm, clip factor,
//      learning rate and AdamW's scalars (in double, then rounded as the CPU rounds them);
//   3. adamw_block_per_chunk: the update, one block per chunk of one decay setting.
#include <cmath>

#include "tensor/cuda/cuda_check.cuh"
#include "train/optimizer_cuda.h"

namespace scratchlm {

std::vector<AdamWChunk> adamw_chunks(const ParamLayout& layout, const AdamWOptions& opt,
                                     const std::vector<std::int64_t>& copy_offsets) {
  constexpr std::int64_t kChunk = 16384;
  std::vector<AdamWChunk> chunks;
  for (std::size_t k = 0; k < layout.specs.size(); ++k) {
    const ParamSpec& spec = layout.specs[k];
    const bool decay = opt.weight_decay != 0.0 && (opt.decay_norm_gains || !spec.is_gain_or_bias);
    const std::int64_t copy = copy_offsets.empty() ? spec.offset : copy_offsets[k];
    for (std::int64_t i = 0; i < spec.numel(); i += kChunk)
      chunks.push_back({spec.offset + i, std::min(kChunk, spec.numel() - i), copy + i, decay ? 1 : 0});
  }
  return chunks;
}

namespace {

// The coefficients of this step, computed once.
struct StepCoefficients {
  float clip_coef;    // 1 when not clipping
  float step_size;    // lr / (1 − β1^t)
  float bias2_sqrt;   // sqrt(1 − β2^t)
  float shrink;       // 1 − lr·weight_decay (for decayed parameters)
  int skip;
};

static_assert(sizeof(StepCoefficients) <= 4 * sizeof(double));

__global__ void step_begin(GpuStepStats* stats) {
  stats->loss = 0.0;
  stats->skipped = 0;
}

__global__ void grad_norm_partials(double* partials, const float* g, std::int64_t n) {
  __shared__ double warp_partial[32];
  const std::int64_t per_block = (n + gridDim.x - 1) / gridDim.x;
  const std::int64_t begin = blockIdx.x * per_block, end = min(n, begin + per_block);
  double s = 0.0;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) s += static_cast<double>(g[i]) * g[i];
  s = warp_sum(s);
  if (threadIdx.x % 32 == 0) warp_partial[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) t += warp_partial[w];
    partials[blockIdx.x] = t;
  }
}

__device__ double cosine_lr_device(std::int64_t t, double lr_max, double lr_min, std::int64_t warmup,
                                   std::int64_t cycle) {
  if (t < warmup) return lr_max * static_cast<double>(t) / static_cast<double>(warmup);
  if (t <= cycle) {
    if (cycle == warmup) return lr_max;
    const double progress = static_cast<double>(t - warmup) / static_cast<double>(cycle - warmup);
    return lr_min + 0.5 * (1.0 + cos(progress * M_PI)) * (lr_max - lr_min);
  }
  return lr_min;
}

__global__ void step_coefficients(GpuStepStats* stats, double* partials, const GpuStepIndex* index,
                                  GpuOptimizerOptions opt) {
  double total = 0.0;
  for (int i = 0; i < kNormPartials; ++i) total += partials[i];
  const double norm = sqrt(total);
  const double lr = cosine_lr_device(index->step, opt.lr_max, opt.lr_min, opt.warmup, opt.cycle);
  const double t = static_cast<double>(index->adam_step + 1);
  StepCoefficients c;
  c.skip = !isfinite(norm) || !isfinite(stats->loss);
  const double coef = opt.clip > 0 ? opt.clip / (norm + 1e-6) : 1.0;
  c.clip_coef = coef < 1.0 ? static_cast<float>(coef) : 1.0f;
  c.step_size = static_cast<float>(lr / (1.0 - pow(opt.adamw.beta1, t)));
  c.bias2_sqrt = static_cast<float>(sqrt(1.0 - pow(opt.adamw.beta2, t)));
  c.shrink = static_cast<float>(1.0 - lr * opt.adamw.weight_decay);
  *reinterpret_cast<StepCoefficients*>(partials + kNormPartials) = c;
  stats->grad_norm = norm;
  stats->lr = lr;
  stats->skipped = c.skip;
}

template <typename T>
__global__ void adamw_block_per_chunk(float* params, T* params_copy, const float* grads, float* m, float* v,
                                      const AdamWChunk* chunks, const StepCoefficients* coefficients, float b1, float b2, float one_minus_b1,
                                      float one_minus_b2, float eps) {
  const StepCoefficients c = *coefficients;
  if (c.skip) return;
  const AdamWChunk chunk = chunks[blockIdx.x];
  const float shrink = chunk.decay ? c.shrink : 1.0f;
  for (std::int64_t k = threadIdx.x; k < chunk.count; k += blockDim.x) {
    const std::int64_t i = chunk.offset + k;
    const float g = c.clip_coef == 1.0f ? grads[i] : grads[i] * c.clip_coef;
    float p = params[i] * shrink;
    const float mi = b1 * m[i] + one_minus_b1 * g;
    const float vi = b2 * v[i] + one_minus_b2 * g * g;
    const float denom = sqrtf(vi) / c.bias2_sqrt + eps;
    p -= c.step_size * mi / denom;
    params[i] = p;
    m[i] = mi;
    v[i] = vi;
    if (params_copy) store_f(params_copy + chunk.copy_offset + k, p);
  }
}

}  // namespace

void step_begin_cuda(GpuStepStats* stats, CUstream_st* stream) {
  step_begin<<<1, 1, 0, stream>>>(stats);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void optimizer_step_cuda(float* params, T* params_copy, const float* grads, float* m, float* v, std::int64_t n,
                         const AdamWChunk* chunks, std::int64_t num_chunks, double* partials, GpuStepStats* stats,
                         const GpuStepIndex* index, const GpuOptimizerOptions& opt, CUstream_st* stream) {
  grad_norm_partials<<<kNormPartials, 512, 0, stream>>>(partials, grads, n);
  SLM_CUDA_LAUNCH_CHECK();
  step_coefficients<<<1, 1, 0, stream>>>(stats, partials, index, opt);
  SLM_CUDA_LAUNCH_CHECK();
  // 1 − β in double, rounded once, as the CPU path and torch do.
  adamw_block_per_chunk<<<static_cast<unsigned>(num_chunks), 256, 0, stream>>>(
      params, dev(params_copy), grads, m, v, chunks,
      reinterpret_cast<const StepCoefficients*>(partials + kNormPartials),
      static_cast<float>(opt.adamw.beta1), static_cast<float>(opt.adamw.beta2),
      static_cast<float>(1.0 - opt.adamw.beta1), static_cast<float>(1.0 - opt.adamw.beta2),
      static_cast<float>(opt.adamw.eps));
  SLM_CUDA_LAUNCH_CHECK();
}

template void optimizer_step_cuda<float>(float*, float*, const float*, float*, float*, std::int64_t, const AdamWChunk*,
                                         std::int64_t, double*, GpuStepStats*, const GpuStepIndex*,
                                         const GpuOptimizerOptions&, CUstream_st*);
template void optimizer_step_cuda<Bf16>(float*, Bf16*, const float*, float*, float*, std::int64_t, const AdamWChunk*,
                                        std::int64_t, double*, GpuStepStats*, const GpuStepIndex*,
                                        const GpuOptimizerOptions&, CUstream_st*);

}  // namespace scratchlm
