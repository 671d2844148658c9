// The GPU versions of the element-wise and row-wise ops (see ops_cuda.h). Row-wise ops give each
// row to one warp (rows are a few hundred to a few thousand floats: one warp streams a row with
// coalesced accesses and reduces it with shuffles); element-wise ops use one thread per element.
// All reductions run in a fixed order, without atomics.
#include <cmath>
#include <vector>

#include "ops/cuda/ops_cuda.h"
#include "ops/rmsnorm.h"
#include "tensor/cuda/cuda_check.cuh"

namespace scratchlm {
namespace {

constexpr int kWarpsPerBlock = 8;

unsigned blocks_for(std::int64_t n, int per_block) { return static_cast<unsigned>((n + per_block - 1) / per_block); }

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// 16 bytes of T (8 bf16 or 4 floats), loaded and stored at once.
template <typename T>
struct Pack {
  static constexpr int n = 16 / sizeof(T);
  uint4 raw;
  __device__ float get(int i) const { return load_f(reinterpret_cast<const T*>(&raw) + i); }
  __device__ void set(int i, float v) { store_f(reinterpret_cast<T*>(&raw) + i, v); }
};
template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return Pack<T>{*reinterpret_cast<const uint4*>(p)};
}
template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
  *reinterpret_cast<uint4*>(p) = v.raw;
}

// ---- embedding ---------------------------------------------------------------------------------

__global__ void embedding_forward_row_per_block(float* x, const std::int32_t* ids, const float* table,
                                                std::int64_t C) {
  const std::int64_t n = blockIdx.x;
  const float* src = table + static_cast<std::int64_t>(ids[n]) * C;
  for (std::int64_t c = threadIdx.x; c < C; c += blockDim.x) x[n * C + c] = src[c];
}

// One block per distinct token: its rows of dx summed in position order, added to its table row.
__global__ void embedding_backward_block_per_token(float* dtable, const float* dx, const std::int32_t* uniq,
                                                   const std::int32_t* offsets, const std::int32_t* positions,
                                                   const std::int32_t* num_unique, std::int64_t C) {
  const int u = blockIdx.x;
  if (u >= *num_unique) return;
  const int begin = offsets[u], end = offsets[u + 1];
  float* row = dtable + static_cast<std::int64_t>(uniq[u]) * C;
  for (std::int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float s = 0.0f;
    for (int i = begin; i < end; ++i) s += dx[static_cast<std::int64_t>(positions[i]) * C + c];
    row[c] += s;
  }
}

// The same for C % 4 == 0, with the rows of a token spread over 16 row lanes (blockDim.y) and each
// lane's partial sums combined in lane order: real text repeats its most frequent tokens hundreds
// of times in a batch, and one thread summing those rows serially held up the whole step.
constexpr int kEmbeddingRowLanes = 16;

__global__ void embedding_backward_block_per_token_wide(float* dtable, const float* dx, const std::int32_t* uniq,
                                                        const std::int32_t* offsets, const std::int32_t* positions,
                                                        const std::int32_t* num_unique, std::int64_t C) {
  __shared__ float4 lane_sums[kEmbeddingRowLanes][32];
  const int u = blockIdx.x;
  if (u >= *num_unique) return;
  const int begin = offsets[u], end = offsets[u + 1];
  float* row = dtable + static_cast<std::int64_t>(uniq[u]) * C;
  if (end - begin <= 8) {   // most tokens of a batch: every thread of the block on its own columns
    const int t = threadIdx.y * 32 + threadIdx.x;
    for (std::int64_t c = 4 * t; c < C; c += 4 * 32 * kEmbeddingRowLanes) {
      float4 o = *reinterpret_cast<float4*>(row + c);
      for (int i = begin; i < end; ++i) {
        const float4 v = *reinterpret_cast<const float4*>(dx + static_cast<std::int64_t>(positions[i]) * C + c);
        o.x += v.x, o.y += v.y, o.z += v.z, o.w += v.w;
      }
      *reinterpret_cast<float4*>(row + c) = o;
    }
    return;   // the branch is the same for the whole block: no barrier is skipped by some threads only
  }
  for (std::int64_t c0 = 0; c0 < C; c0 += 128) {   // 32 column lanes × 4 columns
    const std::int64_t c = c0 + 4 * threadIdx.x;
    float4 s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (c < C)
      for (int i = begin + threadIdx.y; i < end; i += kEmbeddingRowLanes) {
        const float4 v = *reinterpret_cast<const float4*>(dx + static_cast<std::int64_t>(positions[i]) * C + c);
        s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
      }
    lane_sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
      float4 t = lane_sums[0][threadIdx.x];
      for (int r = 1; r < kEmbeddingRowLanes; ++r) {
        const float4 v = lane_sums[r][threadIdx.x];
        t.x += v.x, t.y += v.y, t.z += v.z, t.w += v.w;
      }
      float4* out = reinterpret_cast<float4*>(row + c);
      float4 o = *out;
      o.x += t.x, o.y += t.y, o.z += t.z, o.w += t.w;
      *out = o;
    }
    __syncthreads();
  }
}

// ---- RMSNorm -----------------------------------------------------------------------------------

// Rows of C floats, read W at a time per lane (W = 4: 16-byte loads, when C % 4 == 0).
template <int W>
__device__ __forceinline__ void load_w(float (&v)[W], const float* p) {
  if constexpr (W == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
    v[0] = *p;
  }
}
template <int W>
__device__ __forceinline__ void store_w(float* p, const float (&v)[W]) {
  if constexpr (W == 4) *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  else *p = v[0];
}

template <typename T, int W>
__global__ void rmsnorm_forward_warp_per_row(T* out, float* rstd, const float* x, const float* gain,
                                             std::int64_t N, std::int64_t C) {
  const std::int64_t n = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (n >= N) return;
  const float* xr = x + n * C;
  float ss = 0.0f;
  for (std::int64_t c = W * threadIdx.x; c < C; c += 32 * W) {
    float v[W];
    load_w<W>(v, xr + c);
#pragma unroll
    for (int i = 0; i < W; ++i) ss += v[i] * v[i];
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / static_cast<float>(C) + 1e-5f);
  if (threadIdx.x == 0) rstd[n] = r;
  for (std::int64_t c = W * threadIdx.x; c < C; c += 32 * W) {
    float v[W], g[W];
    load_w<W>(v, xr + c);
    load_w<W>(g, gain + c);
#pragma unroll
    for (int i = 0; i < W; ++i) store_f(out + n * C + c + i, v[i] * r * g[i]);
  }
}

// One pass per row: dx += rstd · (g − x̂ · mean(g ⊙ x̂)), g = dy ⊙ gain, x̂ = x · rstd, and the
// copy in T; dgain's share of the block's rows summed per warp in shared memory (each warp its own
// row of C floats, so the order is fixed), then across the block's warps into partials[block].
template <typename T, int W>
__global__ void rmsnorm_backward_fused(float* dx, T* dx_copy, float* partials, const float* dy, const float* x,
                                       const float* gain, const float* rstd, std::int64_t N, std::int64_t C) {
  extern __shared__ float warp_dgain[];   // (kWarpsPerBlock, C)
  float* mine = warp_dgain + threadIdx.y * C;
  for (std::int64_t c = threadIdx.x; c < C; c += 32) mine[c] = 0.0f;
  const std::int64_t rows_per_block = (N + gridDim.x - 1) / gridDim.x;
  const std::int64_t begin = blockIdx.x * rows_per_block, end = min(N, begin + rows_per_block);
  for (std::int64_t n = begin + threadIdx.y; n < end; n += kWarpsPerBlock) {
    const float* xr = x + n * C;
    const float* dyr = dy + n * C;
    const float r = rstd[n];
    float dot = 0.0f;
    for (std::int64_t c = W * threadIdx.x; c < C; c += 32 * W) {
      float xv[W], dv[W], gv[W];
      load_w<W>(xv, xr + c);
      load_w<W>(dv, dyr + c);
      load_w<W>(gv, gain + c);
#pragma unroll
      for (int i = 0; i < W; ++i) dot += dv[i] * gv[i] * xv[i] * r;
    }
    const float mean = warp_sum(dot) / static_cast<float>(C);
    for (std::int64_t c = W * threadIdx.x; c < C; c += 32 * W) {
      float xv[W], dv[W], gv[W], acc[W];
      load_w<W>(xv, xr + c);
      load_w<W>(dv, dyr + c);
      load_w<W>(gv, gain + c);
      load_w<W>(acc, dx + n * C + c);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        const float xhat = xv[i] * r;
        acc[i] += r * (dv[i] * gv[i] - xhat * mean);
        mine[c + i] += dv[i] * xhat;   // this lane's own columns: no race
        if (dx_copy) store_f(dx_copy + n * C + c + i, acc[i]);
      }
      store_w<W>(dx + n * C + c, acc);
    }
  }
  __syncthreads();
  const int t = threadIdx.y * 32 + threadIdx.x;
  for (std::int64_t c = t; c < C; c += 32 * kWarpsPerBlock) {
    float sum = 0.0f;
    for (int w = 0; w < kWarpsPerBlock; ++w) sum += warp_dgain[w * C + c];
    partials[blockIdx.x * C + c] = sum;
  }
}

// dgain[c] += Σ_p partials[p][c]: 32 columns per block, the partials split over 8 row lanes (so
// each thread has 1/8 of the chain of loads), combined in lane order.
__global__ void add_partials(float* dgain, const float* partials, std::int64_t C) {
  __shared__ float lane_sums[8][33];
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < C)
    for (int p = threadIdx.y; p < kRmsnormPartials; p += 8) s += partials[p * C + c];
  lane_sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t = 0.0f;
    for (int r = 0; r < 8; ++r) t += lane_sums[r][threadIdx.x];
    dgain[c] += t;
  }
}

// ---- QK-norm -----------------------------------------------------------------------------------

// RMSNorm of each head's D values of q and k inside qkv (N, H·D + 2·Hkv·D): `rows` = N·(H + Hkv)
// rows of D, row r the head hh = r % (H + Hkv) of token r / (H + Hkv) (query heads first, then key
// heads, as they lie in qkv). One warp per row, each lane its D/32 of the row in registers.
constexpr int kQkNormPerLane = 8;   // D ≤ 256

struct QkRows {
  std::int64_t rows, heads, H, row_len;   // N·(H + Hkv), H + Hkv, H, H·D + 2·Hkv·D
  int D;
  __device__ std::int64_t offset(std::int64_t r) const { return (r / heads) * row_len + (r % heads) * D; }
  __device__ bool is_q(std::int64_t r) const { return r % heads < H; }
};

template <typename T>
__global__ void qk_norm_forward_warp_per_row(T* qkv, T* qk_raw, float* rstd, const float* q_gain,
                                             const float* k_gain, QkRows q) {
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (r >= q.rows) return;
  T* x = qkv + q.offset(r);
  const float* gain = q.is_q(r) ? q_gain : k_gain;
  float v[kQkNormPerLane];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < kQkNormPerLane; ++i) {
    const int d = threadIdx.x + 32 * i;
    v[i] = d < q.D ? load_f(x + d) : 0.0f;
    ss += v[i] * v[i];
  }
  ss = warp_sum(ss);
  const float rs = rsqrtf(ss / static_cast<float>(q.D) + kRmsNormEps);   // eps inside the root, as the CPU
  if (threadIdx.x == 0) rstd[r] = rs;
#pragma unroll
  for (int i = 0; i < kQkNormPerLane; ++i) {
    const int d = threadIdx.x + 32 * i;
    if (d < q.D) {
      store_f(qk_raw + r * q.D + d, v[i]);   // exactly the stored value: v came from T
      store_f(x + d, v[i] * rs * gain[d]);
    }
  }
}

// dx = rstd · (g − x̂ · mean(g ⊙ x̂)), g = dy ⊙ gain, x̂ = x · rstd, in place of dy in dqkv; and the
// block's share of dgain = Σ dy ⊙ x̂, q heads and k heads apart: each lane sums its own columns
// over the warp's rows in order (registers), then the block's 8 warps in order (shared memory) into
// partials (2, kRmsnormPartials, D): q's at [0][block], k's at [1][block].
template <typename T>
__global__ void qk_norm_backward_fused(T* dqkv, float* partials, const T* qk_raw, const float* rstd,
                                       const float* q_gain, const float* k_gain, QkRows q) {
  __shared__ float warp_sums[kWarpsPerBlock][2][32 * kQkNormPerLane];
  float acc_q[kQkNormPerLane] = {}, acc_k[kQkNormPerLane] = {};
  const std::int64_t rows_per_block = (q.rows + gridDim.x - 1) / gridDim.x;
  const std::int64_t begin = blockIdx.x * rows_per_block, end = min(q.rows, begin + rows_per_block);
  for (std::int64_t r = begin + threadIdx.y; r < end; r += kWarpsPerBlock) {
    T* dy_row = dqkv + q.offset(r);
    const T* x_row = qk_raw + r * q.D;
    const bool is_q = q.is_q(r);   // warp-uniform
    const float* gain = is_q ? q_gain : k_gain;
    const float rs = rstd[r];
    float dy[kQkNormPerLane], xhat[kQkNormPerLane], g[kQkNormPerLane];
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kQkNormPerLane; ++i) {
      const int d = threadIdx.x + 32 * i;
      const bool in = d < q.D;
      dy[i] = in ? load_f(dy_row + d) : 0.0f;
      xhat[i] = in ? load_f(x_row + d) * rs : 0.0f;
      g[i] = in ? gain[d] : 0.0f;
      dot += dy[i] * g[i] * xhat[i];
    }
    const float mean = warp_sum(dot) / static_cast<float>(q.D);
#pragma unroll
    for (int i = 0; i < kQkNormPerLane; ++i) {
      const int d = threadIdx.x + 32 * i;
      if (d < q.D) store_f(dy_row + d, rs * (dy[i] * g[i] - xhat[i] * mean));
      if (is_q) acc_q[i] += dy[i] * xhat[i];
      else acc_k[i] += dy[i] * xhat[i];
    }
  }
#pragma unroll
  for (int i = 0; i < kQkNormPerLane; ++i) {
    warp_sums[threadIdx.y][0][threadIdx.x + 32 * i] = acc_q[i];
    warp_sums[threadIdx.y][1][threadIdx.x + 32 * i] = acc_k[i];
  }
  __syncthreads();
  for (int c = threadIdx.y * 32 + threadIdx.x; c < 2 * q.D; c += 32 * kWarpsPerBlock) {
    const int part = c / q.D, d = c % q.D;
    float sum = 0.0f;
    for (int w = 0; w < kWarpsPerBlock; ++w) sum += warp_sums[w][part][d];
    partials[(part * kRmsnormPartials + blockIdx.x) * q.D + d] = sum;
  }
}

// ---- RoPE --------------------------------------------------------------------------------------

// The rows of qkv (N, H·D + 2·Hkv·D) begin with the H query heads and then the Hkv key heads, so
// RoPE rotates the first (H + Hkv)·D columns of each row, head by head (`heads` = H + Hkv, `row` =
// the row length). One thread per (token, head, pair).
template <typename T>
__global__ void rope_qk_thread_per_pair(T* qkv, const float* cos, const float* sin, std::int64_t N, std::int64_t T_,
                                        std::int64_t heads, std::int64_t row, std::int64_t D, float sign) {
  const std::int64_t half = D / 2;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * heads * half) return;
  const std::int64_t k = i % half, h = (i / half) % heads, n = i / (half * heads);
  const std::int64_t t = n % T_;
  const float c = cos[t * half + k], s = sign * sin[t * half + k];
  T* p = qkv + n * row + h * D + 2 * k;
  const float x0 = load_f(p), x1 = load_f(p + 1);
  store_f(p, x0 * c - x1 * s);
  store_f(p + 1, x0 * s + x1 * c);
}

// The same, one 16-byte pack of q or k per thread (D a multiple of the pack, so packs never
// straddle two heads).
template <typename T>
__global__ void rope_qk_packed(T* qkv, const float* cos, const float* sin, std::int64_t N, std::int64_t T_,
                               std::int64_t heads, std::int64_t row, std::int64_t D, float sign) {
  constexpr int P = Pack<T>::n;
  const std::int64_t packs_per_row = heads * D / P;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * packs_per_row) return;
  const std::int64_t n = i / packs_per_row, c0 = (i % packs_per_row) * P;
  const std::int64_t half = D / 2, k0 = (c0 % D) / 2, t = n % T_;
  T* p = qkv + n * row + c0;
  const Pack<T> v = load_pack(p);
  Pack<T> o;
#pragma unroll
  for (int j = 0; j < P / 2; ++j) {
    const float c = cos[t * half + k0 + j], s = sign * sin[t * half + k0 + j];
    const float x0 = v.get(2 * j), x1 = v.get(2 * j + 1);
    o.set(2 * j, x0 * c - x1 * s);
    o.set(2 * j + 1, x0 * s + x1 * c);
  }
  store_pack(p, o);
}

// ---- SwiGLU ------------------------------------------------------------------------------------

// Element i of h (N, F) sits at row n = i / F, column f = i % F; its a and b at ab[n][f], ab[n][F + f].
template <typename T>
__global__ void swiglu_forward_elementwise(T* h, const T* ab, std::int64_t N, std::int64_t F) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * F) return;
  const T* a = ab + (i / F) * 2 * F + i % F;
  const float x = load_f(a);
  store_f(h + i, x / (1.0f + __expf(-x)) * load_f(a + F));
}

// h = silu(a)·b: da = dh·b·σ(a)·(1 + a·(1 − σ(a))), db = dh·silu(a).
template <typename T>
__global__ void swiglu_backward_elementwise(T* dab, const T* dh, const T* ab, std::int64_t N, std::int64_t F) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * F) return;
  const std::int64_t at = (i / F) * 2 * F + i % F;
  const float x = load_f(ab + at), y = load_f(ab + at + F), g = load_f(dh + i);
  const float sig = 1.0f / (1.0f + __expf(-x));
  store_f(dab + at, g * y * sig * (1.0f + x * (1.0f - sig)));
  store_f(dab + at + F, g * x * sig);
}

// The same, one 16-byte pack per thread (F a multiple of the pack, pointers aligned).
template <typename T>
__global__ void swiglu_forward_packed(T* h, const T* ab, std::int64_t N, std::int64_t F) {
  constexpr int P = Pack<T>::n;
  const std::int64_t i = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * P;
  if (i >= N * F) return;
  const std::int64_t at = (i / F) * 2 * F + i % F;
  const Pack<T> av = load_pack(ab + at), bv = load_pack(ab + at + F);
  Pack<T> hv;
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const float x = av.get(k);
    hv.set(k, x / (1.0f + __expf(-x)) * bv.get(k));
  }
  store_pack(h + i, hv);
}

template <typename T>
__global__ void swiglu_backward_packed(T* dab, const T* dh, const T* ab, std::int64_t N, std::int64_t F) {
  constexpr int P = Pack<T>::n;
  const std::int64_t i = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * P;
  if (i >= N * F) return;
  const std::int64_t at = (i / F) * 2 * F + i % F;
  const Pack<T> av = load_pack(ab + at), bv = load_pack(ab + at + F), gv = load_pack(dh + i);
  Pack<T> dav, dbv;
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const float x = av.get(k), y = bv.get(k), g = gv.get(k);
    const float sig = 1.0f / (1.0f + __expf(-x));
    dav.set(k, g * y * sig * (1.0f + x * (1.0f - sig)));
    dbv.set(k, g * x * sig);
  }
  store_pack(dab + at, dav);
  store_pack(dab + at + F, dbv);
}

// ---- classifier --------------------------------------------------------------------------------

constexpr int kClassifierThreads = 512;

// The block's (max, Σ exp(z − max)) pairs merged into the row's log-sum-exp, in a fixed order
// (lanes by shuffles, then warps in index order); every thread gets the result.
__device__ float block_logsumexp(float m, float s) {
  __shared__ float s_max[kClassifierThreads / 32], s_sum[kClassifierThreads / 32];
  __shared__ float s_lse;
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    const float mm = fmaxf(m, m2);
    s = (mm == -INFINITY) ? 0.0f : s * __expf(m - mm) + s2 * __expf(m2 - mm);
    m = mm;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_max[warp] = m;
    s_sum[warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float mm = s_max[0];
    for (int w = 1; w < kClassifierThreads / 32; ++w) mm = fmaxf(mm, s_max[w]);
    float ss = 0.0f;
    for (int w = 0; w < kClassifierThreads / 32; ++w)
      if (s_max[w] != -INFINITY) ss += s_sum[w] * __expf(s_max[w] - mm);
    s_lse = mm + logf(ss);
  }
  __syncthreads();
  return s_lse;
}

// One block per row: an online max / sum-of-exp pass, then (for training) the gradient written over
// the logits. The row is read twice; at 100 KB (V = 50,304 in bf16) the second read hits L2.
template <typename T>
__global__ void classifier_block_per_row(T* logits, float* losses, const std::int32_t* targets, std::int64_t V,
                                         float grad_scale) {
  const std::int64_t n = blockIdx.x;
  T* row = logits + n * V;
  float m = -INFINITY, s = 0.0f;
  for (std::int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float z = load_f(row + j);
    if (z > m) {
      s = s * __expf(m - z) + 1.0f;
      m = z;
    } else {
      s += __expf(z - m);
    }
  }
  // The target's logit is read before the barrier in block_logsumexp: after it, pass 2 overwrites.
  const float z_target = threadIdx.x == 0 ? load_f(row + targets[n]) : 0.0f;
  const float lse = block_logsumexp(m, s);
  if (threadIdx.x == 0) losses[n] = lse - z_target;
  if (grad_scale == 0.0f) return;
  const std::int32_t target = targets[n];
  for (std::int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float p = __expf(load_f(row + j) - lse);
    store_f(row + j, (p - (j == target ? 1.0f : 0.0f)) * grad_scale);
  }
}

// The same with 16-byte loads and stores (V a multiple of the pack, rows aligned). (Keeping the row
// in shared memory between the passes measured slower: the second read already hits L2.)
template <typename T>
__global__ void classifier_block_per_row_packed(T* logits, float* losses, const std::int32_t* targets, std::int64_t V,
                                                float grad_scale) {
  constexpr int P = Pack<T>::n;
  const std::int64_t n = blockIdx.x;
  T* row = logits + n * V;
  float m = -INFINITY, s = 0.0f;
  for (std::int64_t j = P * threadIdx.x; j < V; j += P * blockDim.x) {
    const Pack<T> v = load_pack(row + j);
    float pm = v.get(0);
#pragma unroll
    for (int k = 1; k < P; ++k) pm = fmaxf(pm, v.get(k));
    const float mm = fmaxf(m, pm);
    float add = 0.0f;
#pragma unroll
    for (int k = 0; k < P; ++k) add += __expf(v.get(k) - mm);
    s = s * __expf(m - mm) + add;
    m = mm;
  }
  // The target's logit is read before the barrier in block_logsumexp: after it, pass 2 overwrites.
  const float z_target = threadIdx.x == 0 ? load_f(row + targets[n]) : 0.0f;
  const float lse = block_logsumexp(m, s);
  if (threadIdx.x == 0) losses[n] = lse - z_target;
  if (grad_scale == 0.0f) return;
  const std::int32_t target = targets[n];
  for (std::int64_t j = P * threadIdx.x; j < V; j += P * blockDim.x) {
    const Pack<T> v = load_pack(row + j);
    Pack<T> g;
#pragma unroll
    for (int k = 0; k < P; ++k) g.set(k, (__expf(v.get(k) - lse) - (j + k == target ? 1.0f : 0.0f)) * grad_scale);
    store_pack(row + j, g);
  }
}

// ---- reductions and conversions ----------------------------------------------------------------

__global__ void sum_into_one_block(double* out, const float* x, std::int64_t n, double scale) {
  __shared__ double partial[32];
  double s = 0.0;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  s = warp_sum(s);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) t += partial[w];
    *out += scale * t;
  }
}

template <typename T>
__global__ void convert_elementwise(T* dst, const float* src, std::int64_t n) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) store_f(dst + i, src[i]);
}

}  // namespace

void embedding_forward_cuda(float* x, const std::int32_t* ids, const float* table, std::int64_t N, std::int64_t C,
                            CUstream_st* stream) {
  if (N == 0) return;
  embedding_forward_row_per_block<<<static_cast<unsigned>(N), 128, 0, stream>>>(x, ids, table, C);
  SLM_CUDA_LAUNCH_CHECK();
}

void group_tokens(std::int32_t* uniq, std::int32_t* offsets, std::int32_t* positions, std::int32_t* num_unique,
                  const std::int32_t* ids, std::int64_t N, std::int32_t* counts, std::int64_t vocab_size) {
  std::fill(counts, counts + vocab_size, 0);
  for (std::int64_t i = 0; i < N; ++i) counts[ids[i]] += 1;
  std::int32_t u = 0, offset = 0;
  for (std::int64_t v = 0; v < vocab_size; ++v) {
    if (counts[v] == 0) continue;
    uniq[u] = static_cast<std::int32_t>(v);
    offsets[u] = offset;
    offset += counts[v];
    counts[v] = offsets[u];   // now: the next free slot of token v
    ++u;
  }
  offsets[u] = offset;
  for (std::int64_t i = 0; i < N; ++i) positions[counts[ids[i]]++] = static_cast<std::int32_t>(i);
  *num_unique = u;
}

void embedding_backward_cuda(float* dtable, const float* dx, const TokenGroups& g, std::int64_t max_unique,
                             std::int64_t C, CUstream_st* stream) {
  if (max_unique == 0) return;
  if (C % 4 == 0 && aligned16(dtable) && aligned16(dx))
    embedding_backward_block_per_token_wide<<<static_cast<unsigned>(max_unique), dim3(32, kEmbeddingRowLanes), 0,
                                              stream>>>(dtable, dx, g.uniq, g.offsets, g.positions, g.num_unique, C);
  else
    embedding_backward_block_per_token<<<static_cast<unsigned>(max_unique), 128, 0, stream>>>(
        dtable, dx, g.uniq, g.offsets, g.positions, g.num_unique, C);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void rmsnorm_forward_cuda(T* out, float* rstd, const float* x, const float* gain, std::int64_t N, std::int64_t C,
                          CUstream_st* stream) {
  if (N == 0) return;
  const dim3 grid(blocks_for(N, kWarpsPerBlock)), block(32, kWarpsPerBlock);
  if (C % 4 == 0 && aligned16(x) && aligned16(gain))
    rmsnorm_forward_warp_per_row<device_t<T>, 4><<<grid, block, 0, stream>>>(dev(out), rstd, x, gain, N, C);
  else
    rmsnorm_forward_warp_per_row<device_t<T>, 1><<<grid, block, 0, stream>>>(dev(out), rstd, x, gain, N, C);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void rmsnorm_backward_cuda(float* dx, T* dx_copy, float* dgain, float* partials, const float* dy, const float* x,
                           const float* gain, const float* rstd, std::int64_t N, std::int64_t C, CUstream_st* stream) {
  if (N == 0) return;
  const std::size_t smem = static_cast<std::size_t>(kWarpsPerBlock * C) * sizeof(float);
  const dim3 block(32, kWarpsPerBlock);
  auto launch = [&](auto kernel) {
    if (smem > 48 * 1024) SLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                              static_cast<int>(smem)));
    kernel<<<kRmsnormPartials, block, smem, stream>>>(dx, dev(dx_copy), partials, dy, x, gain, rstd, N, C);
  };
  if (C % 4 == 0 && aligned16(dx) && aligned16(dy) && aligned16(x) && aligned16(gain))
    launch(rmsnorm_backward_fused<device_t<T>, 4>);
  else
    launch(rmsnorm_backward_fused<device_t<T>, 1>);
  SLM_CUDA_LAUNCH_CHECK();
  add_partials<<<blocks_for(C, 32), dim3(32, 8), 0, stream>>>(dgain, partials, C);
  SLM_CUDA_LAUNCH_CHECK();
}

QkRows qk_rows(const GpuAttentionShape& s, const char* op) {
  check_attention_shape(s, op);
  SLM_CHECK(s.D <= 32 * kQkNormPerLane, op, ": head dims up to ", 32 * kQkNormPerLane, ", not D = ", s.D);
  return {.rows = s.B * s.T * (s.H + s.kv_heads()),
          .heads = s.H + s.kv_heads(),
          .H = s.H,
          .row_len = s.qkv_row(),
          .D = static_cast<int>(s.D)};
}

template <typename T>
void qk_norm_forward_cuda(T* qkv, T* qk_raw, float* rstd, const float* q_gain, const float* k_gain,
                          const GpuAttentionShape& s, CUstream_st* stream) {
  const QkRows q = qk_rows(s, "qk_norm_forward_cuda");
  qk_norm_forward_warp_per_row<<<blocks_for(q.rows, kWarpsPerBlock), dim3(32, kWarpsPerBlock), 0, stream>>>(
      dev(qkv), dev(qk_raw), rstd, q_gain, k_gain, q);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void qk_norm_backward_cuda(T* dqkv, float* q_dgain, float* k_dgain, float* partials, const T* qk_raw,
                           const float* rstd, const float* q_gain, const float* k_gain, const GpuAttentionShape& s,
                           CUstream_st* stream) {
  const QkRows q = qk_rows(s, "qk_norm_backward_cuda");
  qk_norm_backward_fused<<<kRmsnormPartials, dim3(32, kWarpsPerBlock), 0, stream>>>(dev(dqkv), partials, dev(qk_raw),
                                                                                  rstd, q_gain, k_gain, q);
  SLM_CUDA_LAUNCH_CHECK();
  add_partials<<<blocks_for(s.D, 32), dim3(32, 8), 0, stream>>>(q_dgain, partials, s.D);
  SLM_CUDA_LAUNCH_CHECK();
  add_partials<<<blocks_for(s.D, 32), dim3(32, 8), 0, stream>>>(k_dgain, partials + kRmsnormPartials * s.D, s.D);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void rope_qk_cuda(T* qkv, const float* cos, const float* sin, const GpuAttentionShape& s, RopeDirection dir,
                  CUstream_st* stream) {
  check_attention_shape(s, "rope_qk_cuda");
  SLM_CHECK(s.D % 2 == 0, "RoPE rotates pairs: the head dim D = ", s.D, " must be even");
  const std::int64_t N = s.B * s.T, heads = s.H + s.kv_heads(), row = s.qkv_row(), D = s.D;
  const float sign = dir == RopeDirection::forward ? 1.0f : -1.0f;
  constexpr int P = Pack<device_t<T>>::n;
  if (D % P == 0 && aligned16(qkv)) {   // then every row and head starts on 16 bytes too
    rope_qk_packed<<<blocks_for(N * heads * D / P, 256), 256, 0, stream>>>(dev(qkv), cos, sin, N, s.T, heads, row, D,
                                                                          sign);
  } else {
    rope_qk_thread_per_pair<<<blocks_for(N * heads * (D / 2), 256), 256, 0, stream>>>(dev(qkv), cos, sin, N, s.T,
                                                                                     heads, row, D, sign);
  }
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void swiglu_forward_cuda(T* h, const T* ab, std::int64_t N, std::int64_t F, CUstream_st* stream) {
  if (N * F == 0) return;
  constexpr int P = Pack<device_t<T>>::n;
  if (F % P == 0 && aligned16(h) && aligned16(ab))
    swiglu_forward_packed<<<blocks_for(N * F / P, 256), 256, 0, stream>>>(dev(h), dev(ab), N, F);
  else
    swiglu_forward_elementwise<<<blocks_for(N * F, 256), 256, 0, stream>>>(dev(h), dev(ab), N, F);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void swiglu_backward_cuda(T* dab, const T* dh, const T* ab, std::int64_t N, std::int64_t F, CUstream_st* stream) {
  if (N * F == 0) return;
  constexpr int P = Pack<device_t<T>>::n;
  if (F % P == 0 && aligned16(dab) && aligned16(dh) && aligned16(ab))
    swiglu_backward_packed<<<blocks_for(N * F / P, 256), 256, 0, stream>>>(dev(dab), dev(dh), dev(ab), N, F);
  else
    swiglu_backward_elementwise<<<blocks_for(N * F, 256), 256, 0, stream>>>(dev(dab), dev(dh), dev(ab), N, F);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void classifier_cuda(T* logits, float* losses, const std::int32_t* targets, std::int64_t N, std::int64_t V,
                     float grad_scale, CUstream_st* stream) {
  if (N == 0) return;
  constexpr int P = Pack<device_t<T>>::n;
  if (V % P == 0 && aligned16(logits))
    classifier_block_per_row_packed<<<static_cast<unsigned>(N), kClassifierThreads, 0, stream>>>(
        dev(logits), losses, targets, V, grad_scale);
  else
    classifier_block_per_row<<<static_cast<unsigned>(N), kClassifierThreads, 0, stream>>>(dev(logits), losses, targets,
                                                                                          V, grad_scale);
  SLM_CUDA_LAUNCH_CHECK();
}

void sum_into_cuda(double* out, const float* x, std::int64_t n, double scale, CUstream_st* stream) {
  sum_into_one_block<<<1, 1024, 0, stream>>>(out, x, n, scale);
  SLM_CUDA_LAUNCH_CHECK();
}

template <typename T>
void convert_cuda(T* dst, const float* src, std::int64_t n, CUstream_st* stream) {
  if (n == 0) return;
  convert_elementwise<<<blocks_for(n, 256), 256, 0, stream>>>(dev(dst), src, n);
  SLM_CUDA_LAUNCH_CHECK();
}

#define SLM_INSTANTIATE(T)                                                                                       \
  template void rmsnorm_forward_cuda<T>(T*, float*, const float*, const float*, std::int64_t, std::int64_t,        \
                                        CUstream_st*);                                                          \
  template void rmsnorm_backward_cuda<T>(float*, T*, float*, float*, const float*, const float*, const float*,    \
                                         const float*, std::int64_t, std::int64_t, CUstream_st*);              \
  template void rope_qk_cuda<T>(T*, const float*, const float*, const GpuAttentionShape&, RopeDirection,          \
                                CUstream_st*);                                                                  \
  template void qk_norm_forward_cuda<T>(T*, T*, float*, const float*, const float*, const GpuAttentionShape&,     \
                                        CUstream_st*);                                                          \
  template void qk_norm_backward_cuda<T>(T*, float*, float*, float*, const T*, const float*, const float*,        \
                                         const float*, const GpuAttentionShape&, CUstream_st*);                \
  template void swiglu_forward_cuda<T>(T*, const T*, std::int64_t, std::int64_t, CUstream_st*);                  \
  template void swiglu_backward_cuda<T>(T*, const T*, const T*, std::int64_t, std::int64_t, CUstream_st*);       \
  template void classifier_cuda<T>(T*, float*, const std::int32_t*, std::int64_t, std::int64_t, float,           \
                                   CUstream_st*);                                                                \
  template void convert_cuda<T>(T*, const float*, std::int64_t, CUstream_st*);
SLM_INSTANTIATE(float)
SLM_INSTANTIATE(Bf16)
#undef SLM_INSTANTIATE

}  // namespace scratchlm
