// Causal attention on plain CUDA cores, any head dimension up to 256, fp32 or bf16 storage: the fp32
// path's attention and a second opinion for the tensor-core kernels (attention_mma.cu). One warp
// per query row (forward, dQ) or key row (dK, dV); each lane holds D/32 of the row's accumulators.
// Scores are recomputed with warp-wide dot products, so nothing of size T² is ever stored.
#include <cmath>

#include "ops/cuda/attention_cuda.h"
#include "tensor/cuda/cuda_check.cuh"

namespace scratchlm {
namespace {

constexpr int kMaxPerLane = 8;   // D ≤ 256
constexpr int kWarps = 4;

// Σ_d a[d]·b[d] over the warp, lanes striding over d.
template <typename T>
__device__ float warp_dot(const T* a, const T* b, int D) {
  float s = 0.0f;
  for (int d = threadIdx.x; d < D; d += 32) s += load_f(a + d) * load_f(b + d);
  return warp_sum(s);
}

// Row pointers into the packed (B, T, 3, H, D) buffer.
struct Packed {
  std::int64_t T, H, D;
  __device__ std::int64_t row(std::int64_t b, std::int64_t t) const { return (b * T + t) * 3 * H * D; }
};

template <typename T>
__global__ void attention_forward_warp_per_row(T* out, float* lse, const T* qkv, Packed p, float scale) {
  const std::int64_t bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.y;
  if (i >= p.T) return;
  const std::int64_t C = p.H * p.D;
  const int D = static_cast<int>(p.D);
  const T* q = qkv + p.row(b, i) + h * D;
  // Pass 1: the row's max and sum of exponentials (keys 0..i).
  float m = -INFINITY, s = 0.0f;
  for (std::int64_t j = 0; j <= i; ++j) {
    const float z = warp_dot(q, qkv + p.row(b, j) + C + h * D, D) * scale;
    const float mm = fmaxf(m, z);
    s = s * __expf(m - mm) + __expf(z - mm);
    m = mm;
  }
  const float row_lse = m + logf(s);
  // Pass 2: out = Σ_j p_j v_j, each lane its slice of D.
  float acc[kMaxPerLane] = {};
  for (std::int64_t j = 0; j <= i; ++j) {
    const T* kv = qkv + p.row(b, j);
    const float pj = __expf(warp_dot(q, kv + C + h * D, D) * scale - row_lse);
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      const int d = threadIdx.x + 32 * r;
      if (d < D) acc[r] += pj * load_f(kv + 2 * C + h * D + d);
    }
  }
  T* o = out + (b * p.T + i) * C + h * D;
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int d = threadIdx.x + 32 * r;
    if (d < D) store_f(o + d, acc[r]);
  }
  if (threadIdx.x == 0) lse[bh * p.T + i] = row_lse;
}

// delta (B, H, T) = rowsum(dO ⊙ O).
template <typename T>
__global__ void attention_delta_warp_per_row(float* delta, const T* dout, const T* out, Packed p) {
  const std::int64_t bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.y;
  if (i >= p.T) return;
  const std::int64_t off = (b * p.T + i) * p.H * p.D + h * p.D;
  const float d = warp_dot(dout + off, out + off, static_cast<int>(p.D));
  if (threadIdx.x == 0) delta[bh * p.T + i] = d;
}

// dQ_i = scale · Σ_{j ≤ i} P_ij (dP_ij − delta_i) K_j.
template <typename T>
__global__ void attention_dq_warp_per_row(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* delta,
                                          Packed p, float scale) {
  const std::int64_t bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.y;
  if (i >= p.T) return;
  const std::int64_t C = p.H * p.D;
  const int D = static_cast<int>(p.D);
  const T* q = qkv + p.row(b, i) + h * D;
  const T* dout_i = dout + (b * p.T + i) * C + h * D;
  const float l = lse[bh * p.T + i], dl = delta[bh * p.T + i];
  float acc[kMaxPerLane] = {};
  for (std::int64_t j = 0; j <= i; ++j) {
    const T* kv = qkv + p.row(b, j);
    const float pij = __expf(warp_dot(q, kv + C + h * D, D) * scale - l);
    const float ds = pij * (warp_dot(dout_i, kv + 2 * C + h * D, D) - dl);
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      const int d = threadIdx.x + 32 * r;
      if (d < D) acc[r] += ds * load_f(kv + C + h * D + d);
    }
  }
  T* dq = dqkv + p.row(b, i) + h * D;
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int d = threadIdx.x + 32 * r;
    if (d < D) store_f(dq + d, acc[r] * scale);
  }
}

// dK_j = scale · Σ_{i ≥ j} dS_ij Q_i,  dV_j = Σ_{i ≥ j} P_ij dO_i.
template <typename T>
__global__ void attention_dkdv_warp_per_row(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                            const float* delta, Packed p, float scale) {
  const std::int64_t bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.y;
  if (j >= p.T) return;
  const std::int64_t C = p.H * p.D;
  const int D = static_cast<int>(p.D);
  const T* kj = qkv + p.row(b, j) + C + h * D;
  const T* vj = kj + C;
  float dk[kMaxPerLane] = {}, dv[kMaxPerLane] = {};
  for (std::int64_t i = j; i < p.T; ++i) {
    const T* q = qkv + p.row(b, i) + h * D;
    const T* dout_i = dout + (b * p.T + i) * C + h * D;
    const float pij = __expf(warp_dot(q, kj, D) * scale - lse[bh * p.T + i]);
    const float ds = pij * (warp_dot(dout_i, vj, D) - delta[bh * p.T + i]);
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      const int d = threadIdx.x + 32 * r;
      if (d < D) {
        dk[r] += ds * load_f(q + d);
        dv[r] += pij * load_f(dout_i + d);
      }
    }
  }
  T* dk_out = dqkv + p.row(b, j) + C + h * D;
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int d = threadIdx.x + 32 * r;
    if (d < D) {
      store_f(dk_out + d, dk[r] * scale);
      store_f(dk_out + C + d, dv[r]);
    }
  }
}

dim3 grid_for(const GpuAttentionShape& s) {
  return dim3(static_cast<unsigned>((s.T + kWarps - 1) / kWarps), static_cast<unsigned>(s.B * s.H));
}

void check_shape(const GpuAttentionShape& s) {
  SLM_CHECK(s.D <= 32 * kMaxPerLane, "attention on CUDA cores supports head dims up to ", 32 * kMaxPerLane);
}

}  // namespace

template <typename T>
void attention_forward_cuda(T* out, float* lse, const T* qkv, const GpuAttentionShape& s, CUstream_st* stream) {
  check_shape(s);
  if (s.B * s.H * s.T == 0) return;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D)));
  attention_forward_warp_per_row<<<grid_for(s), dim3(32, kWarps), 0, stream>>>(dev(out), lse, dev(qkv),
                                                                              Packed{s.T, s.H, s.D}, scale);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void attention_backward_cuda(T* dqkv, float* delta, const T* dout, const T* qkv, const T* out, const float* lse,
                             const GpuAttentionShape& s, CUstream_st* stream) {
  check_shape(s);
  if (s.B * s.H * s.T == 0) return;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D)));
  const Packed p{s.T, s.H, s.D};
  attention_delta_warp_per_row<<<grid_for(s), dim3(32, kWarps), 0, stream>>>(delta, dev(dout), dev(out), p);
  SLM_CUDA_LAUNCH_CHECK();
  attention_dq_warp_per_row<<<grid_for(s), dim3(32, kWarps), 0, stream>>>(dev(dqkv), dev(dout), dev(qkv), lse, delta,
                                                                        p, scale);
  SLM_CUDA_LAUNCH_CHECK();
  attention_dkdv_warp_per_row<<<grid_for(s), dim3(32, kWarps), 0, stream>>>(dev(dqkv), dev(dout), dev(qkv), lse,
                                                                          delta, p, scale);
  SLM_CUDA_LAUNCH_CHECK();
}

template void attention_forward_cuda<float>(float*, float*, const float*, const GpuAttentionShape&, CUstream_st*);
template void attention_forward_cuda<Bf16>(Bf16*, float*, const Bf16*, const GpuAttentionShape&, CUstream_st*);
template void attention_backward_cuda<float>(float*, float*, const float*, const float*, const float*, const float*,
                                             const GpuAttentionShape&, CUstream_st*);
template void attention_backward_cuda<Bf16>(Bf16*, float*, const Bf16*, const Bf16*, const Bf16*, const float*,
                                            const GpuAttentionShape&, CUstream_st*);

}  // namespace scratchlm
