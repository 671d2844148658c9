// The decoder's kernels (see decode_kernels.h for what each computes and the layouts).
//
// decode_linear_kernel: y (B, rows) = x (B, K) · Wᵀ with B ≤ 32. At decoding batch sizes a linear
//   layer is a stream over its weights: every weight is read once and used B times, so the kernel
//   is built around reading W at full bandwidth. One block of 8 warps per 16 rows of W; the warps
//   split K in chunks of 32 columns (warp w takes chunks w, w + 8, ...). Each lane loads 16 bytes
//   of two weight rows per chunk (rows g and g + 8 of the tile, columns 8t .. 8t + 7 of the chunk,
//   lane = 4g + t) and 16 bytes of each batch row g of the activations at the same columns, and
//   feeds them to bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation): W is the 16 × 16 A
//   operand and the activations the 16 × 8 B operand (8 sequences per n-tile, up to 4 n-tiles).
//   The mma's fragments want columns 2t, 2t + 1, 2t + 8, 2t + 9 in each lane; a dot product does
//   not care in which order its terms are summed, so we let the mma's k index run over the
//   columns in the order the 16-byte loads deliver them (k-step s, lane t: columns 8t + 4s .. +3),
//   the same permutation for A and B. The 8 warps' partial sums meet in shared memory and are
//   added in warp order (deterministic). Before the activations are read the kernel already has
//   its first weights in flight; with programmatic dependent launch those loads overlap the end of
//   the previous kernel.
// decode_attention_kernel: grid (B·H, splits of 64 keys); a key's D values are spread over D/8
//   lanes (16 bytes each, so a warp reads 512 consecutive bytes of the cache per load), all of a
//   block's keys are loaded before any is used, scores are reduced over the key's lanes, and each
//   group of lanes keeps its own (max, sum, output); groups, warps and splits are merged in a fixed
//   order with the usual rescaling by exp(m − m'). A (sequence, head) with more than one split
//   writes per-split partials and the last of its blocks to finish (an integer counter) merges
//   them: one launch, no floating-point atomics.
// decode_sample_kernel: one block of 1024 threads per sequence. Greedy is a block argmax. Top-p
//   needs the smallest set of most likely tokens reaching mass top_p; instead of sorting V
//   probabilities, the probabilities are made 40-bit fixed-point integers (p / p_max · 2^40) and
//   the probability of the token where the sorted cumulative mass crosses top_p is found by a radix
//   select over those integers (4 passes of 11 bits, each a histogram of masses in shared memory
//   with integer atomics, whose sums do not depend on order). The kept set is every token above
//   that value and, among the tokens equal to it, the lowest ids as needed (the CPU's tie order);
//   the draw walks the kept tokens in id order, each thread over its own contiguous id range.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "generate/cuda/decode_kernels.h"
#include "tensor/cuda/cuda_check.cuh"
#include "tensor/gpu_buffer.h"
#include "util/error.h"

namespace scratchlm {
namespace {

using bf16 = __nv_bfloat16;
using u64 = unsigned long long;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kInf = INFINITY;
constexpr int kLinWarps = 8;
constexpr int kLinThreads = kLinWarps * 32;
constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * 32;
constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kRadixBits = 11;
constexpr int kRadixBins = 1 << kRadixBits;

// ---- programmatic dependent launch ---------------------------------------------------------------
// launch_dependents lets the next kernel of the stream be scheduled once every block of this one
// has issued it; wait blocks until the previous kernel has finished and its writes are visible.
// Both are no-ops for a kernel launched without the attribute.
__device__ __forceinline__ void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t stream, bool pdl, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1]{};
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = pdl ? attr : nullptr;
  cfg.numAttrs = pdl ? 1 : 0;
  SLM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// ---- small device helpers -------------------------------------------------------------------------

// Loads of data written by earlier kernels go through L2 only (.cg): with programmatic dependent
// launch a block may share its SM's L1 with blocks of the kernel that wrote them. Weights, which
// never change, use the read-only path.
__device__ __forceinline__ uint4 load_weights16(const bf16* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ uint4 load_cg16(const void* p) { return __ldcg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ float4 load_cg_f4(const float* p) { return __ldcg(reinterpret_cast<const float4*>(p)); }

__device__ __forceinline__ std::uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  std::uint32_t u;
  memcpy(&u, &v, 4);
  return u;
}
// Element i (0..7) of 8 bf16 packed in a uint4, as float.
__device__ __forceinline__ float bf16_at(const uint4& v, int i) {
  const std::uint32_t w = i < 2 ? v.x : i < 4 ? v.y : i < 6 ? v.z : v.w;
  const std::uint32_t bits = (i % 2 == 0) ? (w << 16) : (w & 0xffff0000u);
  return __uint_as_float(bits);
}

// c (16×8 fp32) += a (16×16 bf16) · b (16×8 bf16); fragment layouts as in ops/cuda/attention_mma.cu.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], std::uint32_t a0, std::uint32_t a1, std::uint32_t a2,
                                               std::uint32_t a3, std::uint32_t b0, std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__host__ __device__ inline u64 splitmix64(u64 x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
__host__ __device__ inline u64 random_bits(u64 seed, u64 sequence, u64 generated) {
  return splitmix64(splitmix64(splitmix64(seed) ^ sequence) ^ generated);
}

// ---- decode_linear ---------------------------------------------------------------------------------

// The first of the 8 columns lane t handles in the warp's i-th chunk (chunks warp, warp + 8, ...
// of 32 columns), or −1 past the warp's chunks or past K.
__device__ __forceinline__ int chunk_column(int i, int my_chunks, int warp, int t, int K) {
  const int col = (warp + kLinWarps * i) * 32 + 8 * t;
  return i < my_chunks && col < K ? col : -1;
}

template <int kU, int kMats>
__device__ __forceinline__ void load_weight_group(uint4 (&a)[kU][kMats][2], const bf16* w_lo, const bf16* w_hi,
                                                  std::int64_t mat_stride, bool ok_lo, bool ok_hi, int group,
                                                  int my_chunks, int warp, int t, int K) {
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    const int col = chunk_column(group * kU + u, my_chunks, warp, t, K);
#pragma unroll
    for (int m = 0; m < kMats; ++m) {
      a[u][m][0] = col >= 0 && ok_lo ? load_weights16(w_lo + m * mat_stride + col) : make_uint4(0, 0, 0, 0);
      a[u][m][1] = col >= 0 && ok_hi ? load_weights16(w_hi + m * mat_stride + col) : make_uint4(0, 0, 0, 0);
    }
  }
}

// 8 consecutive activations of batch row bb at column col, as the mma's bf16 B operand.
template <LinearInput kIn>
__device__ __forceinline__ uint4 load_activations(const DecodeLinear& op, const float* rstd, int bb, int col) {
  if constexpr (kIn == LinearInput::bf16) {
    return load_cg16(reinterpret_cast<const bf16*>(op.act) + static_cast<std::int64_t>(bb) * op.K + col);
  } else {
    // RMSNorm: x · rstd · gain (the CPU's order), rounded to bf16 as the bf16 model's ln output is.
    const float* xr = op.x + static_cast<std::int64_t>(bb) * op.K + col;
    const float4 x0 = load_cg_f4(xr), x1 = load_cg_f4(xr + 4);
    const float4 g0 = __ldg(reinterpret_cast<const float4*>(op.gain + col));
    const float4 g1 = __ldg(reinterpret_cast<const float4*>(op.gain + col + 4));
    const float r = rstd[bb];
    return make_uint4(pack_bf16x2(x0.x * r * g0.x, x0.y * r * g0.y), pack_bf16x2(x0.z * r * g0.z, x0.w * r * g0.w),
                      pack_bf16x2(x1.x * r * g1.x, x1.y * r * g1.y), pack_bf16x2(x1.z * r * g1.z, x1.w * r * g1.w));
  }
}

template <LinearInput kIn, LinearEpilogue kEpi, int NT>
__global__ void __launch_bounds__(kLinThreads) decode_linear_kernel(const DecodeLinear op) {
  constexpr int kMats = kEpi == LinearEpilogue::swiglu ? 2 : 1;   // [W1; W3]: two accumulators
  constexpr int kU = NT >= 4 ? 2 : 4;                              // chunks loaded at once per warp
  constexpr int kB = NT * 8;                                       // batch rows the tile holds
  __shared__ float red[kMats][kLinWarps][kB][kDecodeTile + 1];     // per-warp partial sums
  __shared__ float rstd[kB];
  __shared__ float squares[kB][kDecodeTile + 1];

  pdl_launch_dependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int K = op.K, O = op.rows, B = op.batch;
  const int row0 = blockIdx.x * kDecodeTile;
  const int n_chunks = (K + 31) / 32;
  const int my_chunks = warp < n_chunks ? (n_chunks - 1 - warp) / kLinWarps + 1 : 0;
  const int n_groups = (my_chunks + kU - 1) / kU;
  const bool ok_lo = row0 + g < O, ok_hi = row0 + g + 8 < O;
  const bf16* w = reinterpret_cast<const bf16*>(op.w);
  const bf16* w_lo = w + static_cast<std::int64_t>(ok_lo ? row0 + g : 0) * K;
  const bf16* w_hi = w + static_cast<std::int64_t>(ok_hi ? row0 + g + 8 : 0) * K;
  const std::int64_t mat_stride = static_cast<std::int64_t>(O) * K;   // W3's rows follow W1's

  // The first weights are in flight before we wait for the previous kernel: they do not depend on it.
  uint4 a[kU][kMats][2];
  if (n_groups > 0) load_weight_group<kU, kMats>(a, w_lo, w_hi, mat_stride, ok_lo, ok_hi, 0, my_chunks, warp, t, K);
  pdl_wait();
  if constexpr (kIn == LinearInput::rmsnorm) {
    if (threadIdx.x < B) {   // rstd of each batch row from its tiles' sums of squares, in tile order
      const int n_part = (K + kDecodeTile - 1) / kDecodeTile;
      const float* p = op.ss + static_cast<std::int64_t>(threadIdx.x) * n_part;
      float s = 0.0f;
      for (int j = 0; j < n_part; ++j) s += __ldcg(p + j);
      rstd[threadIdx.x] = rsqrtf(s / static_cast<float>(K) + 1e-5f);
    }
    __syncthreads();
  }

  float acc[kMats][NT][4] = {};
  for (int group = 0; group < n_groups; ++group) {
    if (group > 0) load_weight_group<kU, kMats>(a, w_lo, w_hi, mat_stride, ok_lo, ok_hi, group, my_chunks, warp, t, K);
    uint4 xb[kU][NT];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int col = chunk_column(group * kU + u, my_chunks, warp, t, K);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int bb = nt * 8 + g;
        xb[u][nt] = col >= 0 && bb < B ? load_activations<kIn>(op, rstd, bb, col) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int m = 0; m < kMats; ++m) {
        const uint4& lo = a[u][m][0];
        const uint4& hi = a[u][m][1];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          // k-step 0: columns 8t .. 8t+3 of the chunk; k-step 1: 8t+4 .. 8t+7 (see the file comment)
          mma_bf16_16816(acc[m][nt], lo.x, hi.x, lo.y, hi.y, xb[u][nt].x, xb[u][nt].y);
          mma_bf16_16816(acc[m][nt], lo.z, hi.z, lo.w, hi.w, xb[u][nt].z, xb[u][nt].w);
        }
      }
    }
  }

  // C fragments: c0, c1 at (row g, batch 2t, 2t+1), c2, c3 at (row g + 8, same batch).
#pragma unroll
  for (int m = 0; m < kMats; ++m)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      red[m][warp][nt * 8 + 2 * t][g] = acc[m][nt][0];
      red[m][warp][nt * 8 + 2 * t + 1][g] = acc[m][nt][1];
      red[m][warp][nt * 8 + 2 * t][g + 8] = acc[m][nt][2];
      red[m][warp][nt * 8 + 2 * t + 1][g + 8] = acc[m][nt][3];
    }
  __syncthreads();
  auto total = [&](int m, int b, int r) {
    float s = 0.0f;
#pragma unroll
    for (int w8 = 0; w8 < kLinWarps; ++w8) s += red[m][w8][b][r];
    return s;
  };

  if constexpr (kEpi == LinearEpilogue::store) {
    for (int e = threadIdx.x; e < B * kDecodeTile; e += kLinThreads) {
      const int b = e / kDecodeTile, r = e % kDecodeTile, row = row0 + r;
      if (row < O) op.out[static_cast<std::int64_t>(b) * O + row] = total(0, b, r);
    }
  } else if constexpr (kEpi == LinearEpilogue::residual) {
    for (int e = threadIdx.x; e < B * kDecodeTile; e += kLinThreads) {
      const int b = e / kDecodeTile, r = e % kDecodeTile, row = row0 + r;
      float sq = 0.0f;
      if (row < O) {
        float* p = op.out + static_cast<std::int64_t>(b) * O + row;
        const float v = __ldcg(p) + total(0, b, r);
        *p = v;
        sq = v * v;
      }
      squares[b][r] = sq;
    }
    __syncthreads();
    if (threadIdx.x < B) {   // this tile's sum of squares of the new residual row
      float s = 0.0f;
      for (int r = 0; r < kDecodeTile; ++r) s += squares[threadIdx.x][r];
      op.ss_out[static_cast<std::int64_t>(threadIdx.x) * gridDim.x + blockIdx.x] = s;
    }
  } else if constexpr (kEpi == LinearEpilogue::swiglu) {
    for (int e = threadIdx.x; e < B * kDecodeTile; e += kLinThreads) {
      const int b = e / kDecodeTile, r = e % kDecodeTile, row = row0 + r;
      if (row < O) {
        const float x1 = total(0, b, r), x3 = total(1, b, r);
        reinterpret_cast<bf16*>(op.out_bf16)[static_cast<std::int64_t>(b) * O + row] =
            __float2bfloat16(x1 / (1.0f + __expf(-x1)) * x3);
      }
    }
  } else {   // qkv: pairs (2k, 2k+1) of a head, both in this tile (tiles start at even rows)
    const DecodeQkvTarget& q = op.qkv;
    const int D = q.D, Cq = q.H * D, Ckv = q.Hkv * D;
    for (int e = threadIdx.x; e < B * (kDecodeTile / 2); e += kLinThreads) {
      const int b = e / (kDecodeTile / 2), r = 2 * (e % (kDecodeTile / 2)), row = row0 + r;
      if (row >= O) continue;
      if (__ldcg(&q.slots[b].status) != static_cast<int>(SlotStatus::live)) continue;
      const int pos = __ldcg(&q.slots[b].length);
      float v0 = total(0, b, r), v1 = total(0, b, r + 1);
      const int region = row < Cq ? 0 : row < Cq + Ckv ? 1 : 2;   // q, k, v
      const int c = row - (region == 0 ? 0 : region == 1 ? Cq : Cq + Ckv);
      const int head = c / D, d = c % D;
      if (region < 2) {   // RoPE on the interleaved pair (d, d+1), as ops/rope.h
        const int half = D / 2;
        const float cs = __ldg(q.rope_cos + static_cast<std::int64_t>(pos) * half + d / 2);
        const float sn = __ldg(q.rope_sin + static_cast<std::int64_t>(pos) * half + d / 2);
        const float r0 = v0 * cs - v1 * sn, r1 = v0 * sn + v1 * cs;
        v0 = r0;
        v1 = r1;
      }
      if (region == 0) {
        *reinterpret_cast<float2*>(op.out + static_cast<std::int64_t>(b) * Cq + c) = make_float2(v0, v1);
      } else {
        bf16* cache = reinterpret_cast<bf16*>(region == 1 ? q.k_cache : q.v_cache);
        const std::int64_t at =
            ((static_cast<std::int64_t>(b) * q.Hkv + head) * q.capacity + pos % q.capacity) * D + d;
        *reinterpret_cast<__nv_bfloat162*>(cache + at) = __floats2bfloat162_rn(v0, v1);
      }
    }
  }
}

template <LinearInput kIn, LinearEpilogue kEpi>
void launch_linear(const DecodeLinear& op, cudaStream_t stream, bool pdl) {
  const dim3 grid(static_cast<unsigned>((op.rows + kDecodeTile - 1) / kDecodeTile));
  if (op.batch <= 8) launch(decode_linear_kernel<kIn, kEpi, 1>, grid, dim3(kLinThreads), stream, pdl, op);
  else if (op.batch <= 16) launch(decode_linear_kernel<kIn, kEpi, 2>, grid, dim3(kLinThreads), stream, pdl, op);
  else launch(decode_linear_kernel<kIn, kEpi, 4>, grid, dim3(kLinThreads), stream, pdl, op);
}

// ---- decode_attention ------------------------------------------------------------------------------

template <int D>
__global__ void __launch_bounds__(kAttnThreads) decode_attention_kernel(const DecodeAttention op, int n_splits) {
  constexpr int kLanesPerKey = D / 8;                    // 16 bytes of the key per lane
  constexpr int kKeysPerWarp = 32 / kLanesPerKey;
  constexpr int kKeysPerIter = kAttnWarps * kKeysPerWarp;
  constexpr int kIters = kDecodeAttentionSplit / kKeysPerIter;
  static_assert(kIters * kKeysPerIter == kDecodeAttentionSplit, "a split is whole iterations");
  __shared__ float s_m[kAttnWarps], s_l[kAttnWarps], s_o[kAttnWarps][D];
  __shared__ int s_last;

  pdl_launch_dependents();
  pdl_wait();
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int bh = blockIdx.x, b = bh / op.H, h = bh % op.H, split = blockIdx.y;
  const int kvh = h / (op.H / op.Hkv);
  const int C = op.H * D;
  bf16* out = reinterpret_cast<bf16*>(op.out) + static_cast<std::int64_t>(b) * C + h * D;
  if (__ldcg(&op.slots[b].status) != static_cast<int>(SlotStatus::live)) {
    if (split == 0 && tid < D) out[tid] = __float2bfloat16(0.0f);
    return;
  }
  const int len = __ldcg(&op.slots[b].length) + 1;   // the current token's key is in the cache already
  const int first = op.window > 0 ? max(0, len - op.window) : 0;
  const int n_active = (len - first + kDecodeAttentionSplit - 1) / kDecodeAttentionSplit;
  if (split >= n_active) return;   // the same for the whole block
  const int start = first + split * kDecodeAttentionSplit;
  const int end = min(len, start + kDecodeAttentionSplit);
  const int part = lane % kLanesPerKey, sub = lane / kLanesPerKey;

  // This lane's 8 values of q, scaled so that exp2 of a score difference is exp(scale · Δ).
  const float scale = kLog2e / sqrtf(static_cast<float>(D));
  const float* qp = op.q + static_cast<std::int64_t>(b) * C + h * D + 8 * part;
  const float4 qa = load_cg_f4(qp), qb = load_cg_f4(qp + 4);
  const float q[8] = {qa.x * scale, qa.y * scale, qa.z * scale, qa.w * scale,
                      qb.x * scale, qb.y * scale, qb.z * scale, qb.w * scale};
  const std::int64_t head_base = (static_cast<std::int64_t>(b) * op.Hkv + kvh) * op.capacity * D + 8 * part;
  const bf16* kb = reinterpret_cast<const bf16*>(op.k_cache) + head_base;
  const bf16* vb = reinterpret_cast<const bf16*>(op.v_cache) + head_base;

  uint4 kr[kIters], vr[kIters];
  bool valid[kIters];
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    const int p = start + i * kKeysPerIter + warp * kKeysPerWarp + sub;
    valid[i] = p < end;
    const std::int64_t row = valid[i] ? p % op.capacity : 0;
    kr[i] = valid[i] ? load_cg16(kb + row * D) : make_uint4(0, 0, 0, 0);
    vr[i] = valid[i] ? load_cg16(vb + row * D) : make_uint4(0, 0, 0, 0);
  }
  float s[kIters];
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) dot += q[j] * bf16_at(kr[i], j);
#pragma unroll
    for (int off = 1; off < kLanesPerKey; off *= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    s[i] = valid[i] ? dot : -kInf;
  }
  float m = -kInf;
#pragma unroll
  for (int i = 0; i < kIters; ++i) m = fmaxf(m, s[i]);
  float l = 0.0f, o[8] = {};
  if (m != -kInf) {
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const float p = exp2f(s[i] - m);   // 0 for masked keys
      l += p;
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] += p * bf16_at(vr[i], j);
    }
  }
  // Merge the key groups of the warp (lanes with the same `part`); every lane ends with the result.
#pragma unroll
  for (int off = kLanesPerKey; off < 32; off *= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const float l2 = __shfl_xor_sync(0xffffffffu, l, off);
    float o2[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) o2[j] = __shfl_xor_sync(0xffffffffu, o[j], off);
    const float mn = fmaxf(m, m2);
    if (mn != -kInf) {   // both −∞: nothing seen yet by either; keep zeros
      const float f1 = exp2f(m - mn), f2 = exp2f(m2 - mn);
      l = l * f1 + l2 * f2;
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = o[j] * f1 + o2[j] * f2;
      m = mn;
    }
  }
  if (sub == 0) {
#pragma unroll
    for (int j = 0; j < 8; ++j) s_o[warp][8 * part + j] = o[j];
    if (part == 0) {
      s_m[warp] = m;
      s_l[warp] = l;
    }
  }
  __syncthreads();
  // The block's result for dimension tid (at least one key of the split is valid, so mb is finite).
  float mb = -kInf, lb = 0.0f, ob = 0.0f;
  if (tid < D) {
    for (int w = 0; w < kAttnWarps; ++w) mb = fmaxf(mb, s_m[w]);
    for (int w = 0; w < kAttnWarps; ++w) {
      if (s_m[w] == -kInf) continue;
      const float f = exp2f(s_m[w] - mb);
      lb += s_l[w] * f;
      ob += s_o[w][tid] * f;
    }
  }
  if (n_active == 1) {
    if (tid < D) out[tid] = __float2bfloat16(ob / lb);
    return;
  }
  float* base = op.partials + static_cast<std::int64_t>(bh) * n_splits * (D + 2);
  float* mine = base + static_cast<std::int64_t>(split) * (D + 2);
  if (tid < D) mine[2 + tid] = ob;
  if (tid == 0) {
    mine[0] = mb;
    mine[1] = lb;
  }
  __threadfence();   // the partials are visible device-wide before the counter says so
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(op.counters + bh, 1) == n_active - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  if (tid < D) {   // the last block merges the splits in split order
    float M = -kInf;
    for (int sp = 0; sp < n_active; ++sp) M = fmaxf(M, __ldcg(base + sp * (D + 2)));
    float L = 0.0f, Osum = 0.0f;
    for (int sp = 0; sp < n_active; ++sp) {
      const float* p = base + sp * (D + 2);
      const float f = exp2f(__ldcg(p) - M);
      L += __ldcg(p + 1) * f;
      Osum += __ldcg(p + 2 + tid) * f;
    }
    out[tid] = __float2bfloat16(Osum / L);
  }
  if (tid == 0) op.counters[bh] = 0;   // ready for the next step
}

// ---- decode_sample ----------------------------------------------------------------------------------

struct SampleShared {
  u64 hist[kRadixBins];
  u64 scan[kSampleWarps + 1];
  float fred[kSampleWarps];
  int ired[kSampleWarps];
  u64 digit_above;
  int digit;
  int token;
};

__device__ __forceinline__ float block_max(float v, SampleShared& sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_max(v);
  if (lane == 0) sh.fred[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_max(sh.fred[lane]);
    if (lane == 0) sh.fred[0] = v;
  }
  __syncthreads();
  const float r = sh.fred[0];
  __syncthreads();
  return r;
}

// Exclusive prefix sum over the block's threads in thread order; *total gets the sum of all.
__device__ __forceinline__ u64 block_exclusive_scan(u64 v, SampleShared& sh, u64* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  u64 incl = v;
  for (int o = 1; o < 32; o *= 2) {
    const u64 n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  if (lane == 31) sh.scan[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const u64 w = sh.scan[lane];
    u64 wi = w;
    for (int o = 1; o < 32; o *= 2) {
      const u64 n = __shfl_up_sync(0xffffffffu, wi, o);
      if (lane >= o) wi += n;
    }
    sh.scan[lane] = wi - w;
    if (lane == 31) sh.scan[kSampleWarps] = wi;
  }
  __syncthreads();
  const u64 r = sh.scan[warp] + incl - v;
  *total = sh.scan[kSampleWarps];
  __syncthreads();
  return r;
}

// Greedy: the largest logit, the lowest id among equals (NaNs are never chosen).
__device__ __forceinline__ int block_argmax(const float* row, int V, SampleShared& sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float best = -kInf;
  int idx = INT_MAX;
  for (int v = threadIdx.x; v < V; v += kSampleThreads) {   // ascending ids: '>' keeps the first
    const float z = __ldcg(row + v);
    if (z > best || (z == best && idx == INT_MAX)) best = z, idx = v;
  }
  for (int o = 16; o > 0; o /= 2) {
    const float z = __shfl_xor_sync(0xffffffffu, best, o);
    const int i = __shfl_xor_sync(0xffffffffu, idx, o);
    if (z > best || (z == best && i < idx)) best = z, idx = i;
  }
  if (lane == 0) sh.fred[warp] = best, sh.ired[warp] = idx;
  __syncthreads();
  if (warp == 0) {
    best = sh.fred[lane];
    idx = sh.ired[lane];
    for (int o = 16; o > 0; o /= 2) {
      const float z = __shfl_xor_sync(0xffffffffu, best, o);
      const int i = __shfl_xor_sync(0xffffffffu, idx, o);
      if (z > best || (z == best && i < idx)) best = z, idx = i;
    }
    if (lane == 0) sh.token = idx == INT_MAX ? 0 : idx;
  }
  __syncthreads();
  const int r = sh.token;
  __syncthreads();
  return r;
}

// A token's mass: exp((z − max) / T) ∈ [0, 1] in fixed point with 40 fraction bits (the most
// likely token has exactly 2^40; a total over V ≤ 2^23 tokens fits in 64 bits).
__device__ __forceinline__ u64 token_mass(float z, float mx, float temperature) {
  const float p = expf((z - mx) / temperature);
  return p > 0.0f ? __float2ull_rn(p * 0x1p40f) : 0ull;   // NaN → 0
}

// A token's mass if it is in the kept set, else 0: above τ, or equal to τ and among the first
// k_ties such tokens by id (rank counts the ties seen so far in id order).
__device__ __forceinline__ u64 kept_mass(u64 q, bool cut, u64 tau, u64 k_ties, u64& rank) {
  if (!cut || q > tau) return q;
  if (q == tau) return rank++ < k_ties ? q : 0;
  return 0;
}

// Temperature + top-p, the distribution of generate.cpp's sample_token (see the file comment).
__device__ __forceinline__ int block_sample(const float* row, int V, float temperature, float top_p, u64 bits, SampleShared& sh) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float mx = -kInf;
  for (int v = tid; v < V; v += kSampleThreads) mx = fmaxf(mx, __ldcg(row + v));
  mx = block_max(mx, sh);
  // Thread tid owns the contiguous ids [lo, hi): the kept set and the draw follow id order.
  const int per = (V + kSampleThreads - 1) / kSampleThreads;
  const int lo = min(V, tid * per), hi = min(V, lo + per);
  u64 own = 0;
#pragma unroll 1
  for (int v = lo; v < hi; ++v) own += token_mass(__ldcg(row + v), mx, temperature);
  u64 total = 0;
  block_exclusive_scan(own, sh, &total);

  const bool cut = top_p < 1.0f;
  u64 tau = 0, k_ties = 0;
  if (cut) {
    // The sorted cumulative mass must reach target; find the mass τ of the token where it does.
    u64 target = static_cast<u64>(ceil(static_cast<double>(top_p) * static_cast<double>(total)));
    target = target < 1 ? 1 : (target > total ? total : target);
    u64 prefix = 0, above = 0;   // above: mass of the tokens whose high bits exceed the prefix's
#pragma unroll 1
    for (int shift = 33; shift >= 0; shift -= kRadixBits) {
      for (int i = tid; i < kRadixBins; i += kSampleThreads) sh.hist[i] = 0;
      __syncthreads();
      const int high = shift + kRadixBits;
#pragma unroll 1
  for (int v = lo; v < hi; ++v) {
        const u64 q = token_mass(__ldcg(row + v), mx, temperature);
        if ((q >> high) == (prefix >> high)) atomicAdd(&sh.hist[(q >> shift) & (kRadixBins - 1)], q);
      }
      __syncthreads();
      if (warp == 0) {   // lane l sums bins 2047 − 64l − 63 .. 2047 − 64l (the highest first)
        constexpr int kPerLane = kRadixBins / 32;
        u64 sum = 0;
#pragma unroll 8
        for (int j = 0; j < kPerLane; ++j) sum += sh.hist[kRadixBins - 1 - kPerLane * lane - j];
        u64 incl = sum;
        for (int o = 1; o < 32; o *= 2) {
          const u64 n = __shfl_up_sync(0xffffffffu, incl, o);
          if (lane >= o) incl += n;
        }
        const unsigned crossing = __ballot_sync(0xffffffffu, above + incl >= target);
        const int L = crossing ? __ffs(crossing) - 1 : 31;   // never 0: above + all bins ≥ target
        if (lane == L) {
          u64 acc = above + (incl - sum);
          int d = kRadixBins - 1 - kPerLane * lane;
#pragma unroll 1
          for (int j = 0; j < kPerLane; ++j) {
            d = kRadixBins - 1 - kPerLane * lane - j;
            if (acc + sh.hist[d] >= target || j == kPerLane - 1) break;
            acc += sh.hist[d];
          }
          sh.digit = d;
          sh.digit_above = acc;
        }
      }
      __syncthreads();
      prefix |= static_cast<u64>(sh.digit) << shift;
      above = sh.digit_above;
      __syncthreads();
    }
    tau = prefix;   // > 0: the crossing token has mass
    k_ties = tau > 0 ? (target - above + tau - 1) / tau : 0;   // tokens of mass τ to keep, lowest ids first
  }
  // Rank of this thread's first tie among all ties, then each range's kept mass and its offset.
  u64 own_ties = 0;
  if (cut)
#pragma unroll 1
  for (int v = lo; v < hi; ++v) own_ties += token_mass(__ldcg(row + v), mx, temperature) == tau;
  u64 unused = 0;
  const u64 tie_rank0 = block_exclusive_scan(own_ties, sh, &unused);
  u64 kept_own = 0;
  {
    u64 rank = tie_rank0;
#pragma unroll 1
  for (int v = lo; v < hi; ++v) kept_own += kept_mass(token_mass(__ldcg(row + v), mx, temperature), cut, tau, k_ties, rank);
  }
  u64 kept_total = 0;
  const u64 offset = block_exclusive_scan(kept_own, sh, &kept_total);
  const u64 pick = __umul64hi(bits, kept_total);   // uniform in [0, kept_total)
  if (tid == 0) sh.token = -1;
  __syncthreads();
  if (kept_own > 0 && offset <= pick && pick < offset + kept_own) {
    u64 acc = offset, rank = tie_rank0;
#pragma unroll 1
  for (int v = lo; v < hi; ++v) {
      const u64 k = kept_mass(token_mass(__ldcg(row + v), mx, temperature), cut, tau, k_ties, rank);
      if (pick < acc + k) {
        sh.token = v;
        break;
      }
      acc += k;
    }
  }
  __syncthreads();
  const int r = sh.token < 0 ? 0 : sh.token;
  __syncthreads();
  return r;
}

__global__ void __launch_bounds__(kSampleThreads, 1) decode_sample_kernel(const DecodeSample op) {
  __shared__ SampleShared sh;
  __shared__ SlotState st;
  __shared__ SampleParams prm;
  __shared__ int next;
  pdl_launch_dependents();
  pdl_wait();
  const int tid = threadIdx.x;
  const int b = op.first_slot + blockIdx.x;
  const int C = op.C, n_tiles = (C + kDecodeTile - 1) / kDecodeTile;
  if (tid == 0) {
    const SlotState* s = op.slots + b;
    st.status = __ldcg(&s->status);
    st.length = __ldcg(&s->length);
    st.generated = __ldcg(&s->generated);
    st.max_new = __ldcg(&s->max_new);
    st.events = __ldcg(&s->events);
    st.sequence = __ldcg(&s->sequence);
    prm = *op.params;
  }
  __syncthreads();
  float* xr = op.x + static_cast<std::int64_t>(b) * C;
  float* ssr = op.ss + static_cast<std::int64_t>(b) * n_tiles;
  if (st.status != static_cast<int>(SlotStatus::live)) {   // keep a dead row's residual at zero
    for (int c = tid; c < C; c += kSampleThreads) xr[c] = 0.0f;
    for (int j = tid; j < n_tiles; j += kSampleThreads) ssr[j] = 0.0f;
    return;
  }
  const bool at_limit = st.generated >= st.max_new;
  int token = -1;
  if (!at_limit) {
    const float* row = op.logits + static_cast<std::int64_t>(b) * op.V;
    if (prm.temperature <= 0.0f) {
      token = block_argmax(row, op.V, sh);
    } else {
      const u64 bits = random_bits(prm.seed, static_cast<u64>(st.sequence), static_cast<u64>(st.generated));
      token = block_sample(row, op.V, prm.temperature, prm.top_p, bits, sh);
    }
  }
  if (tid == 0) {   // the stop rules of sample_loop (generate.cpp), in its order
    SlotState s = st;
    if (op.after_forward) s.length += 1;   // the token fed in this step now has its keys cached
    int status = static_cast<int>(SlotStatus::live);
    if (at_limit) {
      status = static_cast<int>(SlotStatus::max_new_tokens);
    } else if (token == prm.stop_id) {
      status = static_cast<int>(SlotStatus::end_of_text);
      token = -1;
    } else {
      s.generated += 1;
      if (s.length >= prm.context_length) status = static_cast<int>(SlotStatus::context_length);
      else if (s.generated >= s.max_new) status = static_cast<int>(SlotStatus::max_new_tokens);
    }
    s.status = status;
    SlotRecord* rec = op.records + static_cast<std::int64_t>(s.events % op.ring) * op.B_max + b;
    *reinterpret_cast<int4*>(rec) = make_int4(token, status, s.generated, s.length);
    s.events += 1;
    op.slots[b] = s;
    next = status == static_cast<int>(SlotStatus::live) ? token : -1;
  }
  __syncthreads();
  // The next step's input: the token's embedding row and the sums of squares of its tiles.
  const int tok = next;
  const float* e = op.embedding + static_cast<std::int64_t>(tok < 0 ? 0 : tok) * C;
  for (int c = tid; c < C; c += kSampleThreads) xr[c] = tok < 0 ? 0.0f : e[c];
  for (int j = tid; j < n_tiles; j += kSampleThreads) {
    float s = 0.0f;
    if (tok >= 0)
      for (int c = j * kDecodeTile; c < min(C, (j + 1) * kDecodeTile); ++c) s += e[c] * e[c];
    ssr[j] = s;
  }
}

// ---- kv_write ---------------------------------------------------------------------------------------

__global__ void kv_write_kernel(const KvWrite op) {
  const int D = op.D, Cq = op.H * D, Ckv = op.Hkv * D, width = Cq + 2 * Ckv;
  const bool decode = op.slots != nullptr;
  const int packs = (decode ? width : 2 * Ckv) / 8;   // 16-byte packs per row handled
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<std::int64_t>(op.rows) * packs) return;
  const int row = static_cast<int>(i / packs);
  const int col = (decode ? 0 : Cq) + static_cast<int>(i % packs) * 8;
  int pos = row, slot = op.slot;
  if (decode) {
    if (op.slots[row].status != static_cast<int>(SlotStatus::live)) return;
    pos = op.slots[row].length;
    slot = row;
  }
  const uint4 raw = *reinterpret_cast<const uint4*>(reinterpret_cast<const bf16*>(op.qkv) +
                                                    static_cast<std::int64_t>(row) * width + col);
  const int region = col < Cq ? 0 : col < Cq + Ckv ? 1 : 2;
  const int c = col - (region == 0 ? 0 : region == 1 ? Cq : Cq + Ckv);
  const int head = c / D, d = c % D;
  uint4 packed = raw;
  if (decode) {
    float v[8];
    for (int j = 0; j < 8; ++j) v[j] = bf16_at(raw, j);
    if (region < 2) {
      const int half = D / 2;
      for (int j = 0; j < 4; ++j) {
        const float cs = op.rope_cos[static_cast<std::int64_t>(pos) * half + d / 2 + j];
        const float sn = op.rope_sin[static_cast<std::int64_t>(pos) * half + d / 2 + j];
        const float x0 = v[2 * j], x1 = v[2 * j + 1];
        v[2 * j] = x0 * cs - x1 * sn;
        v[2 * j + 1] = x0 * sn + x1 * cs;
      }
    }
    if (region == 0) {
      float* q = op.q_out + static_cast<std::int64_t>(row) * Cq + c;
      *reinterpret_cast<float4*>(q) = make_float4(v[0], v[1], v[2], v[3]);
      *reinterpret_cast<float4*>(q + 4) = make_float4(v[4], v[5], v[6], v[7]);
      return;
    }
    packed = make_uint4(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]),
                        pack_bf16x2(v[6], v[7]));
  }
  bf16* cache = reinterpret_cast<bf16*>(region == 1 ? op.k_cache : op.v_cache);
  const std::int64_t at = ((static_cast<std::int64_t>(slot) * op.Hkv + head) * op.capacity + pos % op.capacity) * D + d;
  *reinterpret_cast<uint4*>(cache + at) = packed;
}

}  // namespace

// ---- host entry points ------------------------------------------------------------------------------

bool decode_head_dim_supported(std::int64_t D) { return D == 16 || D == 32 || D == 64 || D == 128; }

std::uint64_t decode_random_bits(std::uint64_t seed, std::int64_t sequence, std::int64_t generated) {
  return random_bits(seed, static_cast<u64>(sequence), static_cast<u64>(generated));
}

void decode_linear_cuda(const DecodeLinear& op, CUstream_st* stream, bool pdl) {
  SLM_CHECK(op.batch >= 1 && op.batch <= kDecodeMaxBatch, "decode_linear: batch ", op.batch, " outside 1..32");
  SLM_CHECK(op.rows >= 1 && op.K >= 8 && op.K % 8 == 0, "decode_linear: K = ", op.K, " must be a multiple of 8");
  SLM_CHECK(aligned16(op.w), "decode_linear: weights must be 16-byte aligned");
  if (op.input == LinearInput::rmsnorm) {
    SLM_CHECK(op.x && op.ss && op.gain && aligned16(op.x) && aligned16(op.gain), "decode_linear: rmsnorm input");
  } else {
    SLM_CHECK(op.act && aligned16(op.act), "decode_linear: bf16 input must be 16-byte aligned");
  }
  switch (op.epilogue) {
    case LinearEpilogue::store: SLM_CHECK(op.out, "decode_linear: no output"); break;
    case LinearEpilogue::residual: SLM_CHECK(op.out && op.ss_out, "decode_linear: no residual"); break;
    case LinearEpilogue::swiglu: SLM_CHECK(op.out_bf16, "decode_linear: no output"); break;
    case LinearEpilogue::qkv:
      SLM_CHECK(op.out && op.qkv.slots && op.qkv.k_cache && op.qkv.v_cache && op.qkv.D % 2 == 0 &&
                    op.rows == (op.qkv.H + 2 * op.qkv.Hkv) * op.qkv.D && op.qkv.capacity > 0 &&
                    reinterpret_cast<std::uintptr_t>(op.out) % 8 == 0,
                "decode_linear: qkv target");
      break;
  }
  cudaStream_t s = stream;
  using In = LinearInput;
  using Epi = LinearEpilogue;
  if (op.input == In::rmsnorm && op.epilogue == Epi::qkv) launch_linear<In::rmsnorm, Epi::qkv>(op, s, pdl);
  else if (op.input == In::rmsnorm && op.epilogue == Epi::swiglu) launch_linear<In::rmsnorm, Epi::swiglu>(op, s, pdl);
  else if (op.input == In::rmsnorm && op.epilogue == Epi::store) launch_linear<In::rmsnorm, Epi::store>(op, s, pdl);
  else if (op.input == In::bf16 && op.epilogue == Epi::residual) launch_linear<In::bf16, Epi::residual>(op, s, pdl);
  else if (op.input == In::bf16 && op.epilogue == Epi::store) launch_linear<In::bf16, Epi::store>(op, s, pdl);
  else SLM_CHECK(false, "decode_linear: no kernel for this input and epilogue");
}

int decode_attention_splits(int capacity, int window) {
  const int visible = window > 0 ? std::min(capacity, window) : capacity;
  return (visible + kDecodeAttentionSplit - 1) / kDecodeAttentionSplit;
}

void decode_attention_cuda(const DecodeAttention& op, CUstream_st* stream, bool pdl) {
  SLM_CHECK(decode_head_dim_supported(op.D), "decode_attention: head dim ", op.D, " not supported");
  SLM_CHECK(op.batch >= 1 && op.H >= 1 && op.Hkv >= 1 && op.H % op.Hkv == 0 && op.capacity >= 1,
            "decode_attention: shape");
  SLM_CHECK(op.window == 0 || op.window <= op.capacity, "decode_attention: the window must fit the cache");
  SLM_CHECK(aligned16(op.q) && aligned16(op.k_cache) && aligned16(op.v_cache) && op.partials && op.counters,
            "decode_attention: buffers");
  const int splits = decode_attention_splits(op.capacity, op.window);
  SLM_CHECK(splits <= 65535, "decode_attention: too many splits");
  const dim3 grid(static_cast<unsigned>(op.batch * op.H), static_cast<unsigned>(splits));
  cudaStream_t s = stream;
  switch (op.D) {
    case 16: launch(decode_attention_kernel<16>, grid, dim3(kAttnThreads), s, pdl, op, splits); break;
    case 32: launch(decode_attention_kernel<32>, grid, dim3(kAttnThreads), s, pdl, op, splits); break;
    case 64: launch(decode_attention_kernel<64>, grid, dim3(kAttnThreads), s, pdl, op, splits); break;
    case 128: launch(decode_attention_kernel<128>, grid, dim3(kAttnThreads), s, pdl, op, splits); break;
  }
}

void decode_sample_cuda(const DecodeSample& op, CUstream_st* stream, bool pdl) {
  SLM_CHECK(op.count >= 1 && op.first_slot >= 0 && op.first_slot + op.count <= op.B_max && op.ring >= 1,
            "decode_sample: slots");
  SLM_CHECK(op.V >= 1 && op.V <= (1 << 23) && op.C >= 1, "decode_sample: V = ", op.V, " (at most 2^23: the masses' sum fits 64 bits)");
  SLM_CHECK(op.slots && op.records && op.x && op.ss && op.logits && op.embedding && op.params, "decode_sample: buffers");
  launch(decode_sample_kernel, dim3(static_cast<unsigned>(op.count)), dim3(kSampleThreads), stream, pdl, op);
}

void kv_write_cuda(const KvWrite& op, CUstream_st* stream) {
  SLM_CHECK(op.D % 8 == 0 && op.H % op.Hkv == 0 && op.capacity >= 1 && op.rows >= 0, "kv_write: shape");
  SLM_CHECK(aligned16(op.qkv) && aligned16(op.k_cache) && aligned16(op.v_cache), "kv_write: alignment");
  SLM_CHECK(!op.slots || (op.q_out && aligned16(op.q_out) && op.rope_cos && op.rope_sin), "kv_write: decode inputs");
  if (op.rows == 0) return;
  const int width = (op.H + 2 * op.Hkv) * op.D;
  const std::int64_t packs = (op.slots ? width : 2 * op.Hkv * op.D) / 8;
  const std::int64_t n = op.rows * packs;
  constexpr int kThreads = 256;
  kv_write_kernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(op);
  SLM_CUDA_LAUNCH_CHECK();
}

SampleRounds decode_sample_rounds(const std::vector<float>& logits, std::vector<SlotState> slots,
                                  const std::vector<float>& embedding, int V, int C, const SampleParams& params,
                                  bool after_forward, int rounds) {
  const int B = static_cast<int>(slots.size());
  const int tiles = (C + kDecodeTile - 1) / kDecodeTile;
  SLM_CHECK(B >= 1 && rounds >= 1 && logits.size() == static_cast<std::size_t>(B) * V &&
            embedding.size() == static_cast<std::size_t>(V) * C);
  GpuBuffer d_logits(static_cast<std::int64_t>(logits.size()) * 4), d_emb(static_cast<std::int64_t>(embedding.size()) * 4);
  GpuBuffer d_slots(B * static_cast<std::int64_t>(sizeof(SlotState))), d_params(sizeof(SampleParams));
  GpuBuffer d_x(static_cast<std::int64_t>(B) * C * 4), d_ss(static_cast<std::int64_t>(B) * tiles * 4);
  copy_to_gpu(d_logits.data(), logits.data(), d_logits.bytes());
  copy_to_gpu(d_emb.data(), embedding.data(), d_emb.bytes());
  copy_to_gpu(d_slots.data(), slots.data(), d_slots.bytes());
  copy_to_gpu(d_params.data(), &params, sizeof params);
  SlotRecord* host = nullptr;
  const std::size_t record_bytes = static_cast<std::size_t>(rounds) * B * sizeof(SlotRecord);
  SLM_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host), record_bytes, cudaHostAllocMapped));
  std::memset(host, 0xff, record_bytes);   // −1 everywhere: rounds a slot did not write show as such
  SampleRounds out;
  try {
    SlotRecord* device = nullptr;
    SLM_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&device), host, 0));
    for (int r = 0; r < rounds; ++r)
      decode_sample_cuda({.slots = d_slots.as<SlotState>(),
                          .records = device,
                          .ring = rounds,
                          .x = d_x.as<float>(),
                          .ss = d_ss.as<float>(),
                          .logits = d_logits.as<float>(),
                          .embedding = d_emb.as<float>(),
                          .params = d_params.as<SampleParams>(),
                          .first_slot = 0,
                          .count = B,
                          .B_max = B,
                          .V = V,
                          .C = C,
                          .after_forward = after_forward},
                         nullptr, false);
    SLM_CUDA_CHECK(cudaDeviceSynchronize());
    out.records.assign(host, host + static_cast<std::size_t>(rounds) * B);
  } catch (...) {
    cudaFreeHost(host);
    throw;
  }
  cudaFreeHost(host);
  out.slots.resize(static_cast<std::size_t>(B));
  copy_from_gpu(out.slots.data(), d_slots.data(), d_slots.bytes());
  out.x.resize(static_cast<std::size_t>(B) * C);
  copy_from_gpu(out.x.data(), d_x.data(), d_x.bytes());
  out.ss.resize(static_cast<std::size_t>(B) * tiles);
  copy_from_gpu(out.ss.data(), d_ss.data(), d_ss.bytes());
  return out;
}

}  // namespace scratchlm
