// The GPU versions of the variant ops (see variant_ops_cuda.h). Kept plain on purpose, since they
// run only in the variant models: row-wise ops give each row to one warp (8 rows per block) and
// stream the row with lane-strided, coalesced accesses; element-wise ops use one thread per
// element; column sums (parameter gradients) cut the rows into kColumnPartials fixed chunks, sum
// each chunk per column in a fixed order, and add the chunks in index order. No atomics anywhere.
#include <cmath>

#include "ops/cuda/variant_ops_cuda.h"
#include "ops/layernorm.h"
#include "tensor/cuda/cuda_check.cuh"

namespace scratchlm {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 256;          // element-wise kernels
constexpr int kRowLanes = 8;           // column sums: rows of a chunk spread over 8 row lanes

unsigned blocks_for(std::int64_t n, int per_block) { return static_cast<unsigned>((n + per_block - 1) / per_block); }

// ---- block-wide reductions in a fixed order ---------------------------------------------------
// Lanes by xor shuffles (every lane ends with the same value), then the warps' results in warp
// order by one thread; every thread of the block gets the result. `scratch` holds 33 floats of
// shared memory; the barrier at the start protects it from the previous call's readers.

struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename Op>
__device__ float block_reduce(float v, float* scratch, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  __syncthreads();
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = scratch[0];
    for (int w = 1; w < warps; ++w) t = op(t, scratch[w]);
    scratch[32] = t;
  }
  __syncthreads();
  return scratch[32];
}

// ---- column sums through partials --------------------------------------------------------------
// partials[k][p][c] = Σ over the rows n of chunk p of value(n, c)[k], K sums at once (LayerNorm's
// dweight and dbias; one for a bias). Grid (⌈C/32⌉, kColumnPartials), block (32, kRowLanes): thread
// (x, y) takes column c = 32·blockIdx.x + x and the rows begin + y, begin + y + 8, ... of chunk
// p = blockIdx.y; the 8 row lanes are then added in lane order. Each warp reads 32 consecutive
// floats of a row: coalesced.
template <int K, typename Value>
__global__ void column_partials_chunked(float* partials, std::int64_t N, std::int64_t C, Value value) {
  __shared__ float lane_sums[K][kRowLanes][33];
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const std::int64_t rows_per_chunk = (N + kColumnPartials - 1) / kColumnPartials;
  const std::int64_t begin = blockIdx.y * rows_per_chunk, end = min(N, begin + rows_per_chunk);
  float s[K] = {};
  if (c < C)
    for (std::int64_t n = begin + threadIdx.y; n < end; n += kRowLanes) {
      float v[K];
      value(n, c, v);
#pragma unroll
      for (int k = 0; k < K; ++k) s[k] += v[k];
    }
#pragma unroll
  for (int k = 0; k < K; ++k) lane_sums[k][threadIdx.y][threadIdx.x] = s[k];
  __syncthreads();
  if (threadIdx.y == 0 && c < C)
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float t = 0.0f;
      for (int r = 0; r < kRowLanes; ++r) t += lane_sums[k][r][threadIdx.x];
      partials[(k * kColumnPartials + blockIdx.y) * C + c] = t;
    }
}

// dst[c] += Σ_p partials[p][c] over the kColumnPartials chunks: 32 columns per block, the chunks
// split over 8 row lanes (p = y, y + 8, ...), the lanes added in order.
__global__ void add_column_partials(float* dst, const float* partials, std::int64_t C) {
  __shared__ float lane_sums[kRowLanes][33];
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < C)
    for (std::int64_t p = threadIdx.y; p < kColumnPartials; p += kRowLanes) s += partials[p * C + c];
  lane_sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t = 0.0f;
    for (int r = 0; r < kRowLanes; ++r) t += lane_sums[r][threadIdx.x];
    dst[c] += t;
  }
}

// Launches both passes for K sums; dst[k] may be null (that sum is computed but not added).
template <int K, typename Value>
void column_sums(float* const (&dst)[K], float* partials, std::int64_t N, std::int64_t C, Value value,
                 CUstream_st* stream) {
  column_partials_chunked<K><<<dim3(blocks_for(C, 32), kColumnPartials), dim3(32, kRowLanes), 0, stream>>>(
      partials, N, C, value);
  SLM_CUDA_LAUNCH_CHECK();
  for (int k = 0; k < K; ++k) {
    if (!dst[k]) continue;
    add_column_partials<<<blocks_for(C, 32), dim3(32, kRowLanes), 0, stream>>>(dst[k], partials + k * kColumnPartials * C,
                                                                              C);
    SLM_CUDA_LAUNCH_CHECK();
  }
}

// ---- LayerNorm ---------------------------------------------------------------------------------

// One warp per row, three passes over the row (it is re-read from L1/L2): the mean, the mean of
// squared deviations (no E[x²] − E[x]² cancellation), then the output. Each lane sums its own
// columns serially, the warp by shuffles: a fixed order.
template <typename T>
__global__ void layernorm_forward_warp_per_row(T* out, float* mean, float* rstd, const float* x, const float* weight,
                                               const float* bias, std::int64_t N, std::int64_t C) {
  const std::int64_t n = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (n >= N) return;   // a whole warp leaves: the shuffles below see full warps only
  const float* xr = x + n * C;
  float sum = 0.0f;
  for (std::int64_t c = threadIdx.x; c < C; c += 32) sum += xr[c];
  const float mu = warp_sum(sum) / static_cast<float>(C);
  float sum_sq = 0.0f;
  for (std::int64_t c = threadIdx.x; c < C; c += 32) {
    const float d = xr[c] - mu;
    sum_sq += d * d;
  }
  // eps added to the variance inside the root (torch.nn.LayerNorm); sqrt and division each
  // correctly rounded (not rsqrtf's approximation), as close to the CPU's double as fp32 allows.
  const float r = 1.0f / sqrtf(warp_sum(sum_sq) / static_cast<float>(C) + kLayerNormEps);
  if (threadIdx.x == 0) {
    mean[n] = mu;
    rstd[n] = r;
  }
  for (std::int64_t c = threadIdx.x; c < C; c += 32) {
    const float xhat = (xr[c] - mu) * r;
    store_f(out + n * C + c, xhat * weight[c] + (bias ? bias[c] : 0.0f));
  }
}

// dx = r · (g − mean(g) − x̂ · mean(g ⊙ x̂)), g = weight ⊙ dy: one warp per row, the two means in
// a first pass, dx in a second (each column read and written by the same lane, so dx may alias dy).
template <typename T>
__global__ void layernorm_backward_dx_warp_per_row(float* dx, T* dx_copy, const float* dy, const float* x,
                                                   const float* weight, const float* mean, const float* rstd,
                                                   std::int64_t N, std::int64_t C, bool accumulate) {
  const std::int64_t n = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (n >= N) return;
  const float* xr = x + n * C;
  const float* dyr = dy + n * C;
  const float mu = mean[n], r = rstd[n];
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (std::int64_t c = threadIdx.x; c < C; c += 32) {
    const float g = weight[c] * dyr[c];
    sum_g += g;
    sum_gx += g * ((xr[c] - mu) * r);
  }
  const float mean_g = warp_sum(sum_g) / static_cast<float>(C);
  const float mean_gx = warp_sum(sum_gx) / static_cast<float>(C);
  for (std::int64_t c = threadIdx.x; c < C; c += 32) {
    const float xhat = (xr[c] - mu) * r;
    const float v = r * (weight[c] * dyr[c] - mean_g - xhat * mean_gx);
    const float d = accumulate ? dx[n * C + c] + v : v;
    dx[n * C + c] = d;
    if (dx_copy) store_f(dx_copy + n * C + c, d);
  }
}

// The values LayerNorm's parameter gradients sum over rows: dy·x̂ (dweight) and dy (dbias).
struct LayerNormGradTerms {
  const float *dy, *x, *mean, *rstd;
  std::int64_t C;
  __device__ void operator()(std::int64_t n, std::int64_t c, float (&v)[2]) const {
    const float d = dy[n * C + c];
    v[0] = d * ((x[n * C + c] - mean[n]) * rstd[n]);
    v[1] = d;
  }
};

// ---- activations -------------------------------------------------------------------------------

// Values and derivatives as ops/cpu/activation.cpp (there in double, here in fp32). Full-precision
// expf and erfcf (not the __expf intrinsic): these ops are memory-bound, accuracy costs nothing.

// Φ(x) = ½(1 + erf(x/√2)) = ½·erfc(−x/√2): the erfc form keeps its relative accuracy in the left
// tail, where 1 + erf(x/√2) would cancel to a few digits in fp32 (x < −3).
__device__ __forceinline__ float normal_cdf(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
__device__ __forceinline__ float act_value(float x, Activation act) {
  switch (act) {
    case Activation::relu: return x > 0.0f ? x : 0.0f;
    case Activation::relu2: return x > 0.0f ? x * x : 0.0f;
    case Activation::silu: return x / (1.0f + expf(-x));
    case Activation::gelu: return x * normal_cdf(x);
  }
  return 0.0f;
}

__device__ __forceinline__ float act_derivative(float x, Activation act) {
  switch (act) {
    case Activation::relu: return x > 0.0f ? 1.0f : 0.0f;
    case Activation::relu2: return x > 0.0f ? 2.0f * x : 0.0f;
    case Activation::silu: {
      const float s = 1.0f / (1.0f + expf(-x));
      return s * (1.0f + x * (1.0f - s));
    }
    case Activation::gelu: {   // Φ(x) + x·φ(x), φ(x) = exp(−x²/2) / √(2π)
      return normal_cdf(x) + x * expf(-0.5f * x * x) * 0.39894228040143268f;
    }
  }
  return 0.0f;
}

// Element i of h (N, F) is row i / F, column i % F; its a and b sit at ab[row][col], ab[row][F + col].
template <typename T>
__global__ void gated_forward_elementwise(T* h, const T* ab, std::int64_t N, std::int64_t F, Activation act) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * F) return;
  const std::int64_t at = (i / F) * 2 * F + i % F;
  store_f(h + i, act_value(load_f(ab + at), act) * load_f(ab + at + F));
}

template <typename T>
__global__ void gated_backward_elementwise(T* dab, const T* dh, const T* ab, std::int64_t N, std::int64_t F,
                                           Activation act) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * F) return;
  const std::int64_t at = (i / F) * 2 * F + i % F;
  const float a = load_f(ab + at), b = load_f(ab + at + F), g = load_f(dh + i);   // read before dab (may alias ab)
  store_f(dab + at, g * b * act_derivative(a, act));
  store_f(dab + at + F, g * act_value(a, act));
}

template <typename T>
__global__ void activation_forward_elementwise(T* h, const T* a, std::int64_t n, Activation act) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) store_f(h + i, act_value(load_f(a + i), act));
}

template <typename T>
__global__ void activation_backward_elementwise(T* da, const T* dh, const T* a, std::int64_t n, Activation act) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) store_f(da + i, load_f(dh + i) * act_derivative(load_f(a + i), act));
}

// ---- biases ------------------------------------------------------------------------------------

template <typename T>
__global__ void bias_forward_elementwise(T* y, const float* bias, std::int64_t N, std::int64_t F, std::int64_t ld) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * F) return;
  T* p = y + (i / F) * ld + i % F;
  store_f(p, load_f(p) + bias[i % F]);
}

template <typename T>
struct BiasGradTerm {
  const T* dy;
  std::int64_t ld;
  __device__ void operator()(std::int64_t n, std::int64_t c, float (&v)[1]) const { v[0] = load_f(dy + n * ld + c); }
};

// ---- dropout -----------------------------------------------------------------------------------

// One thread per element. __fmul_rn / __fadd_rn: each product and sum rounded on its own, never
// contracted into a fused multiply-add, so the values equal the CPU's x·scale and then + residual.
template <typename T>
__global__ void dropout_elementwise(float* out, T* out_copy, const float* x, const float* residual, std::int64_t n,
                                    std::uint64_t seed, std::uint64_t site, std::uint64_t threshold, float scale) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v = dropout_keep(seed, site, static_cast<std::uint64_t>(i), threshold) ? __fmul_rn(x[i], scale) : 0.0f;
  if (residual) v = __fadd_rn(residual[i], v);
  out[i] = v;
  if (out_copy) store_f(out_copy + i, v);
}

// ---- positions ---------------------------------------------------------------------------------

__global__ void position_add_elementwise(float* x, const float* table, std::int64_t N, std::int64_t T_,
                                         std::int64_t start, std::int64_t C) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * C) return;
  const std::int64_t t = (i / C) % T_, c = i % C;
  x[i] += table[(start + t) * C + c];
}

// One thread per (t, c) of the T·C gradient entries; the B rows b·T + t summed in b order. B is the
// batch (tens to hundreds of sequences), so the serial loop is short.
__global__ void position_add_backward_thread_per_entry(float* dtable, const float* dx, std::int64_t B,
                                                       std::int64_t T_, std::int64_t start, std::int64_t C) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T_ * C) return;
  const std::int64_t t = i / C, c = i % C;
  float s = 0.0f;
  for (std::int64_t b = 0; b < B; ++b) s += dx[(b * T_ + t) * C + c];
  dtable[(start + t) * C + c] += s;
}

// ---- classifier with extras --------------------------------------------------------------------

constexpr int kClassifierThreads = 512;

// The logit the softmax sees: raw, or c·tanh(raw / c).
__device__ __forceinline__ float capped(float raw, float softcap) {
  return softcap != 0.0f ? softcap * tanhf(raw / softcap) : raw;
}

// One block per row, three passes over it (the second and third read it from L2): the maximum,
// Σ exp(z − max), then (training) the gradient over the raw logits. The target's capped logit is
// read in the first pass, before the barriers in block_reduce: the third pass overwrites the row.
template <typename T>
__global__ void classifier_extras_block_per_row(T* logits, float* losses, float* lse_out,
                                                const std::int32_t* targets, std::int64_t V, float grad_scale,
                                                float z_loss, float softcap) {
  __shared__ float scratch[33];
  const std::int64_t n = blockIdx.x;
  T* row = logits + n * V;
  const std::int32_t target = targets[n];
  float m = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, capped(load_f(row + j), softcap));
  const float z_target = capped(load_f(row + target), softcap);   // every thread: the same value
  m = block_reduce(m, scratch, MaxOp{});
  float s = 0.0f;
  for (std::int64_t j = threadIdx.x; j < V; j += blockDim.x) s += expf(capped(load_f(row + j), softcap) - m);
  const float lse = m + logf(block_reduce(s, scratch, SumOp{}));
  if (threadIdx.x == 0) {
    losses[n] = lse - z_target;
    if (lse_out) lse_out[n] = lse;
  }
  if (grad_scale == 0.0f) return;
  const float p_scale = 1.0f + 2.0f * z_loss * lse;   // d(z_loss · lse²)/dz = 2 · z_loss · lse · softmax
  for (std::int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float z = capped(load_f(row + j), softcap);
    float g = expf(z - lse) * p_scale - (j == target ? 1.0f : 0.0f);
    if (softcap != 0.0f) g *= 1.0f - (z / softcap) * (z / softcap);   // d(c·tanh(raw/c))/draw = 1 − (z/c)²
    store_f(row + j, g * grad_scale);
  }
}

template <typename T>
__global__ void softcap_elementwise(T* x, std::int64_t n, float c) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) store_f(x + i, c * tanhf(load_f(x + i) / c));
}

}  // namespace

// ---- host entry points -------------------------------------------------------------------------

template <typename T>
void layernorm_forward_cuda(T* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                            std::int64_t N, std::int64_t C, CUstream_st* stream) {
  if (N == 0) return;
  SLM_CHECK(C > 0, "layernorm_forward_cuda: C = ", C);
  layernorm_forward_warp_per_row<<<blocks_for(N, kWarpsPerBlock), dim3(32, kWarpsPerBlock), 0, stream>>>(
      dev(out), mean, rstd, x, weight, bias, N, C);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void layernorm_backward_cuda(float* dx, T* dx_copy, float* dweight, float* dbias, float* partials, const float* dy,
                             const float* x, const float* weight, const float* mean, const float* rstd, std::int64_t N,
                             std::int64_t C, Accumulate dx_acc, CUstream_st* stream) {
  if (N == 0) return;
  SLM_CHECK(C > 0, "layernorm_backward_cuda: C = ", C);
  // The column sums first: they read dy, which the dx pass may overwrite (dx aliasing dy).
  float* const dst[2] = {dweight, dbias};
  column_sums<2>(dst, partials, N, C, LayerNormGradTerms{dy, x, mean, rstd, C}, stream);
  layernorm_backward_dx_warp_per_row<<<blocks_for(N, kWarpsPerBlock), dim3(32, kWarpsPerBlock), 0, stream>>>(
      dx, dev(dx_copy), dy, x, weight, mean, rstd, N, C, dx_acc == Accumulate::yes);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void gated_forward_cuda(T* h, const T* ab, std::int64_t N, std::int64_t F, Activation act, CUstream_st* stream) {
  if (N * F == 0) return;
  gated_forward_elementwise<<<blocks_for(N * F, kThreads), kThreads, 0, stream>>>(dev(h), dev(ab), N, F, act);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void gated_backward_cuda(T* dab, const T* dh, const T* ab, std::int64_t N, std::int64_t F, Activation act,
                         CUstream_st* stream) {
  if (N * F == 0) return;
  gated_backward_elementwise<<<blocks_for(N * F, kThreads), kThreads, 0, stream>>>(dev(dab), dev(dh), dev(ab), N, F,
                                                                                  act);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void activation_forward_cuda(T* h, const T* a, std::int64_t n, Activation act, CUstream_st* stream) {
  if (n == 0) return;
  activation_forward_elementwise<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(dev(h), dev(a), n, act);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void activation_backward_cuda(T* da, const T* dh, const T* a, std::int64_t n, Activation act, CUstream_st* stream) {
  if (n == 0) return;
  activation_backward_elementwise<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(dev(da), dev(dh), dev(a), n, act);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void bias_forward_cuda(T* y, const float* bias, std::int64_t N, std::int64_t F, std::int64_t ld, CUstream_st* stream) {
  if (N * F == 0) return;
  SLM_CHECK(ld >= F, "bias_forward_cuda: leading dimension ", ld, " < F = ", F);
  bias_forward_elementwise<<<blocks_for(N * F, kThreads), kThreads, 0, stream>>>(dev(y), bias, N, F, ld);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void bias_backward_cuda(float* dbias, float* partials, const T* dy, std::int64_t N, std::int64_t F, std::int64_t ld,
                        CUstream_st* stream) {
  if (N * F == 0) return;
  SLM_CHECK(ld >= F, "bias_backward_cuda: leading dimension ", ld, " < F = ", F);
  float* const dst[1] = {dbias};
  column_sums<1>(dst, partials, N, F, BiasGradTerm<device_t<T>>{dev(dy), ld}, stream);
}

template <typename T>
void dropout_forward_cuda(float* out, T* out_copy, const float* x, const float* residual, std::int64_t n,
                          const Dropout& d, CUstream_st* stream) {
  if (n == 0) return;
  dropout_elementwise<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(out, dev(out_copy), x, residual, n, d.seed,
                                                                       d.site, d.threshold(), d.scale());
  SLM_CUDA_LAUNCH_CHECK();
}

void position_add_forward_cuda(float* x, const float* table, std::int64_t N, std::int64_t T, std::int64_t start,
                               std::int64_t C, CUstream_st* stream) {
  if (N * C == 0) return;
  SLM_CHECK(T > 0 && N % T == 0, "position_add_forward_cuda: N = ", N, " rows are not sequences of T = ", T);
  position_add_elementwise<<<blocks_for(N * C, kThreads), kThreads, 0, stream>>>(x, table, N, T, start, C);
  SLM_CUDA_LAUNCH_CHECK();
}

void position_add_backward_cuda(float* dtable, const float* dx, std::int64_t N, std::int64_t T, std::int64_t start,
                                std::int64_t C, CUstream_st* stream) {
  if (N * C == 0) return;
  SLM_CHECK(T > 0 && N % T == 0, "position_add_backward_cuda: N = ", N, " rows are not sequences of T = ", T);
  position_add_backward_thread_per_entry<<<blocks_for(T * C, kThreads), kThreads, 0, stream>>>(dtable, dx, N / T, T,
                                                                                             start, C);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void classifier_extras_cuda(T* logits, float* losses, float* lse, const std::int32_t* targets, std::int64_t N,
                            std::int64_t V, float grad_scale, const SoftmaxExtras& extras, CUstream_st* stream) {
  if (N == 0) return;
  classifier_extras_block_per_row<<<static_cast<unsigned>(N), kClassifierThreads, 0, stream>>>(
      dev(logits), losses, lse, targets, V, grad_scale, extras.z_loss, extras.softcap);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void softcap_cuda(T* x, std::int64_t n, float c, CUstream_st* stream) {
  if (n == 0) return;
  SLM_CHECK(c > 0, "softcap_cuda: the cap must be positive, not ", c);
  softcap_elementwise<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(dev(x), n, c);
  SLM_CUDA_LAUNCH_CHECK();
}

#define SLM_INSTANTIATE(T)                                                                                        \
  template void layernorm_forward_cuda<T>(T*, float*, float*, const float*, const float*, const float*,           \
                                          std::int64_t, std::int64_t, CUstream_st*);                             \
  template void layernorm_backward_cuda<T>(float*, T*, float*, float*, float*, const float*, const float*,        \
                                           const float*, const float*, const float*, std::int64_t, std::int64_t, \
                                           Accumulate, CUstream_st*);                                            \
  template void gated_forward_cuda<T>(T*, const T*, std::int64_t, std::int64_t, Activation, CUstream_st*);        \
  template void gated_backward_cuda<T>(T*, const T*, const T*, std::int64_t, std::int64_t, Activation,            \
                                       CUstream_st*);                                                            \
  template void activation_forward_cuda<T>(T*, const T*, std::int64_t, Activation, CUstream_st*);                 \
  template void activation_backward_cuda<T>(T*, const T*, const T*, std::int64_t, Activation, CUstream_st*);      \
  template void bias_forward_cuda<T>(T*, const float*, std::int64_t, std::int64_t, std::int64_t, CUstream_st*);   \
  template void bias_backward_cuda<T>(float*, float*, const T*, std::int64_t, std::int64_t, std::int64_t,         \
                                      CUstream_st*);                                                             \
  template void dropout_forward_cuda<T>(float*, T*, const float*, const float*, std::int64_t, const Dropout&,     \
                                        CUstream_st*);                                                           \
  template void classifier_extras_cuda<T>(T*, float*, float*, const std::int32_t*, std::int64_t, std::int64_t,    \
                                          float, const SoftmaxExtras&, CUstream_st*);                            \
  template void softcap_cuda<T>(T*, std::int64_t, float, CUstream_st*);
SLM_INSTANTIATE(float)
SLM_INSTANTIATE(Bf16)
#undef SLM_INSTANTIATE

}  // namespace scratchlm
