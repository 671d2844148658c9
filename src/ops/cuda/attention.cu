// Causal attention on plain CUDA cores, any head dimension up to 256, fp32 or bf16 storage: the fp32
// path's attention and a second opinion for the tensor-core kernels (attention_mma.cu). One warp
// per query row (forward, dQ) or key row (dK, dV); each lane holds D/32 of the row's accumulators.
// Scores are recomputed with warp-wide dot products, so nothing of size T² is ever stored. The
// variants (attention_cuda.h): a row's loop covers only its visible band of keys (or, for dK/dV,
// of queries), so a window W costs W per row instead of T; soft-capping uses the accurate tanhf;
// a key row's dK/dV sum over the query heads of its group, in head order.
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

// The packed qkv buffer (B, T, H·D + 2·Hkv·D) and the variant parameters, as the kernels see them.
struct Packed {
  std::int64_t T, H, Hkv, D;
  std::int64_t window;   // 1 ≤ window ≤ T (0 and W ≥ T are passed as T: the full causal band)
  float scale;           // 1 / sqrt(D)
  float softcap;         // c, 0 = off
  __device__ std::int64_t row(std::int64_t b, std::int64_t t) const { return (b * T + t) * (H + 2 * Hkv) * D; }
  __device__ std::int64_t q_col(std::int64_t h) const { return h * D; }
  // the kv head that query head h reads, and its k and v columns
  __device__ std::int64_t kv_head(std::int64_t h) const { return h / (H / Hkv); }
  __device__ std::int64_t k_col(std::int64_t kh) const { return H * D + kh * D; }
  __device__ std::int64_t v_col(std::int64_t kh) const { return (H + Hkv) * D + kh * D; }
  // keys that query i sees: first_key(i) .. i
  __device__ std::int64_t first_key(std::int64_t i) const { return i - window + 1 > 0 ? i - window + 1 : 0; }
  // queries that see key j: j .. last_query(j)
  __device__ std::int64_t last_query(std::int64_t j) const { return j + window - 1 < T - 1 ? j + window - 1 : T - 1; }
  // The scaled score of a dot product, capped when softcap > 0.
  __device__ float score(float dot) const {
    const float z = dot * scale;
    return softcap > 0.0f ? softcap * tanhf(z / softcap) : z;
  }
  // ∂(capped score)/∂(scaled score) = 1 − tanh²(z / c), from the capped score z' = c·tanh(z / c).
  __device__ float cap_slope(float capped) const {
    if (softcap == 0.0f) return 1.0f;
    const float t = capped / softcap;
    return 1.0f - t * t;
  }
};

template <typename T>
__global__ void attention_forward_warp_per_row(T* out, float* lse, const T* qkv, Packed p) {
  const std::int64_t bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.y;
  if (i >= p.T) return;
  const int D = static_cast<int>(p.D);
  const std::int64_t kh = p.kv_head(h), j0 = p.first_key(i);
  const T* q = qkv + p.row(b, i) + p.q_col(h);
  // Pass 1: the row's max and sum of exponentials (keys j0..i).
  float m = -INFINITY, s = 0.0f;
  for (std::int64_t j = j0; j <= i; ++j) {
    const float z = p.score(warp_dot(q, qkv + p.row(b, j) + p.k_col(kh), D));
    const float mm = fmaxf(m, z);
    s = s * __expf(m - mm) + __expf(z - mm);
    m = mm;
  }
  const float row_lse = m + logf(s);
  // Pass 2: out = Σ_j p_j v_j, each lane its slice of D.
  float acc[kMaxPerLane] = {};
  for (std::int64_t j = j0; j <= i; ++j) {
    const T* kv = qkv + p.row(b, j);
    const float pj = __expf(p.score(warp_dot(q, kv + p.k_col(kh), D)) - row_lse);
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      const int d = threadIdx.x + 32 * r;
      if (d < D) acc[r] += pj * load_f(kv + p.v_col(kh) + d);
    }
  }
  T* o = out + (b * p.T + i) * p.H * p.D + h * p.D;
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

// dQ_i = scale · Σ_j dS_ij K_j over the visible keys, dS_ij = P_ij (dP_ij − delta_i) · cap slope.
template <typename T>
__global__ void attention_dq_warp_per_row(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* delta,
                                          Packed p) {
  const std::int64_t bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.y;
  if (i >= p.T) return;
  const int D = static_cast<int>(p.D);
  const std::int64_t kh = p.kv_head(h);
  const T* q = qkv + p.row(b, i) + p.q_col(h);
  const T* dout_i = dout + (b * p.T + i) * p.H * p.D + h * p.D;
  const float l = lse[bh * p.T + i], dl = delta[bh * p.T + i];
  float acc[kMaxPerLane] = {};
  for (std::int64_t j = p.first_key(i); j <= i; ++j) {
    const T* kv = qkv + p.row(b, j);
    const float z = p.score(warp_dot(q, kv + p.k_col(kh), D));
    const float pij = __expf(z - l);
    const float ds = pij * (warp_dot(dout_i, kv + p.v_col(kh), D) - dl) * p.cap_slope(z);
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      const int d = threadIdx.x + 32 * r;
      if (d < D) acc[r] += ds * load_f(kv + p.k_col(kh) + d);
    }
  }
  T* dq = dqkv + p.row(b, i) + p.q_col(h);
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int d = threadIdx.x + 32 * r;
    if (d < D) store_f(dq + d, acc[r] * p.scale);
  }
}

// dK_j = scale · Σ_h Σ_i dS_ij Q_i,  dV_j = Σ_h Σ_i P_ij dO_i, over the query heads h of kv head
// kh's group (in order) and the queries i that see key j. grid.y = B·Hkv.
template <typename T>
__global__ void attention_dkdv_warp_per_row(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                            const float* delta, Packed p) {
  const std::int64_t bkh = blockIdx.y, b = bkh / p.Hkv, kh = bkh % p.Hkv;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.y;
  if (j >= p.T) return;
  const int D = static_cast<int>(p.D);
  const std::int64_t group = p.H / p.Hkv, i_last = p.last_query(j);
  const T* kj = qkv + p.row(b, j) + p.k_col(kh);
  const T* vj = qkv + p.row(b, j) + p.v_col(kh);
  float dk[kMaxPerLane] = {}, dv[kMaxPerLane] = {};
  for (std::int64_t h = kh * group; h < (kh + 1) * group; ++h) {
    const std::int64_t bh = b * p.H + h;
    for (std::int64_t i = j; i <= i_last; ++i) {
      const T* q = qkv + p.row(b, i) + p.q_col(h);
      const T* dout_i = dout + (b * p.T + i) * p.H * p.D + h * p.D;
      const float z = p.score(warp_dot(q, kj, D));
      const float pij = __expf(z - lse[bh * p.T + i]);
      const float ds = pij * (warp_dot(dout_i, vj, D) - delta[bh * p.T + i]) * p.cap_slope(z);
#pragma unroll
      for (int r = 0; r < kMaxPerLane; ++r) {
        const int d = threadIdx.x + 32 * r;
        if (d < D) {
          dk[r] += ds * load_f(q + d);
          dv[r] += pij * load_f(dout_i + d);
        }
      }
    }
  }
  T* dk_out = dqkv + p.row(b, j) + p.k_col(kh);
  T* dv_out = dqkv + p.row(b, j) + p.v_col(kh);
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int d = threadIdx.x + 32 * r;
    if (d < D) {
      store_f(dk_out + d, dk[r] * p.scale);
      store_f(dv_out + d, dv[r]);
    }
  }
}

dim3 grid_for(const GpuAttentionShape& s, std::int64_t heads) {
  return dim3(static_cast<unsigned>((s.T + kWarps - 1) / kWarps), static_cast<unsigned>(s.B * heads));
}

Packed packed(const GpuAttentionShape& s, const char* op) {
  check_attention_shape(s, op);
  SLM_CHECK(s.D <= 32 * kMaxPerLane, "attention on CUDA cores supports head dims up to ", 32 * kMaxPerLane);
  // gridDim.y is limited to 65535 (B·H rows of blocks), gridDim.x to 2^31 − 1.
  if (s.B * s.H > 65535 || (s.T + kWarps - 1) / kWarps > 0x7fffffff)
    fail(op, ": shape B=", s.B, " H=", s.H, " T=", s.T, " is too large for the CUDA-core kernels' grid");
  return Packed{.T = s.T,
                .H = s.H,
                .Hkv = s.kv_heads(),
                .D = s.D,
                .window = s.window == 0 || s.window > s.T ? s.T : s.window,
                .scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D))),
                .softcap = s.softcap};
}

}  // namespace

void check_attention_shape(const GpuAttentionShape& s, const char* op) {
  if (s.B <= 0 || s.T <= 0 || s.H <= 0 || s.D <= 0)
    fail(op, ": empty or negative shape B=", s.B, " T=", s.T, " H=", s.H, " D=", s.D);
  if (s.Hkv < 0 || s.H % s.kv_heads() != 0)
    fail(op, ": Hkv = ", s.Hkv, " must divide the query heads H = ", s.H, " (0 means H)");
  if (s.window < 0) fail(op, ": window = ", s.window, " must be ≥ 0 (0 = full causal attention)");
  if (!(s.softcap >= 0.0f) || !std::isfinite(s.softcap))
    fail(op, ": softcap = ", s.softcap, " must be a finite value ≥ 0 (0 = off)");
}

template <typename T>
void attention_forward_cuda(T* out, float* lse, const T* qkv, const GpuAttentionShape& s, CUstream_st* stream) {
  const Packed p = packed(s, "attention_forward_cuda");
  attention_forward_warp_per_row<<<grid_for(s, s.H), dim3(32, kWarps), 0, stream>>>(dev(out), lse, dev(qkv), p);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void attention_backward_cuda(T* dqkv, float* delta, const T* dout, const T* qkv, const T* out, const float* lse,
                             const GpuAttentionShape& s, CUstream_st* stream) {
  const Packed p = packed(s, "attention_backward_cuda");
  attention_delta_warp_per_row<<<grid_for(s, s.H), dim3(32, kWarps), 0, stream>>>(delta, dev(dout), dev(out), p);
  SLM_CUDA_LAUNCH_CHECK();
  attention_dq_warp_per_row<<<grid_for(s, s.H), dim3(32, kWarps), 0, stream>>>(dev(dqkv), dev(dout), dev(qkv), lse,
                                                                             delta, p);
  SLM_CUDA_LAUNCH_CHECK();
  attention_dkdv_warp_per_row<<<grid_for(s, s.kv_heads()), dim3(32, kWarps), 0, stream>>>(
      dev(dqkv), dev(dout), dev(qkv), lse, delta, p);
  SLM_CUDA_LAUNCH_CHECK();
}

template void attention_forward_cuda<float>(float*, float*, const float*, const GpuAttentionShape&, CUstream_st*);
template void attention_forward_cuda<Bf16>(Bf16*, float*, const Bf16*, const GpuAttentionShape&, CUstream_st*);
template void attention_backward_cuda<float>(float*, float*, const float*, const float*, const float*, const float*,
                                             const GpuAttentionShape&, CUstream_st*);
template void attention_backward_cuda<Bf16>(Bf16*, float*, const Bf16*, const Bf16*, const Bf16*, const float*,
                                            const GpuAttentionShape&, CUstream_st*);

}  // namespace scratchlm
