// Flash-attention forward on Hopper instructions (sm_90a), FlashAttention-3 style: TMA loads of
// Q, K, V tiles into swizzled shared memory completing on mbarriers, one producer warp and kWG
// consumer warpgroups, S = Q Kᵀ by wgmma from shared memory, P V by wgmma with P from registers.
// Semantics and layouts are attention_forward_mma's (src/ops/cuda/attention_cuda.h):
//   qkv (B, T, 3, H, D) bf16, out (B, T, H, D) bf16, lse (B, H, T) fp32 = row log-sum-exp of the
//   scaled scores (natural log); S = Q Kᵀ / sqrt(D), causal or not, P = softmax(S), out = P V.
//
// Block: kWG + 1 warpgroups (128 threads each), one block per SM (about 90-165 KB of shared memory).
//   warpgroup 0, the producer, gives registers back (setmaxnreg.dec) and one thread issues all
//     TMA loads: Q once (kBlockM × D), then K and V tiles (kBlockN × D) through two rings of kStages
//     buffers each, in the order K0, K1, V0, K2, V1, ..., V_last (V one tile behind K, the order the
//     consumers need them when the next Q Kᵀ is issued before the current P V);
//   warpgroups 1..kWG, the consumers, take more registers (setmaxnreg.inc) and each owns 64 query
//     rows: per key tile S = Q Kᵀ (64 × kBlockN fp32 in registers), the online softmax of
//     attention_mma.cu (running max m and sum l per row, exp2 with log2 e folded into the scale,
//     P rounded to bf16 for the product as flash attention does, l summed from fp32 P), O += P V
//     (64 × D fp32 in registers), at the end O / l and lse = scale·m + log l.
//   kOverlap: the next tile's Q Kᵀ is issued before this tile's P V, so the softmax of tile j runs
//     while the tensor cores do P_{j-1} V_{j-1} (FA3's intra-warpgroup overlap); without it each
//     tile is Q Kᵀ, wait, softmax, P V, wait.
// Key tiles are visited from the last to the first, so causal masking happens on the first one or
// two tiles only; rows that see no key in a tile keep max −inf and exp2 gives 0 (never NaN).
// Barriers: full[s] (count 1: the producer's arrive.expect_tx, completed by the TMA bytes) and
// empty[s] (count 4·kWG: one arrival per consumer warp after its wgmma reading buffer s finished).
// Tile it of a ring uses buffer it % kStages; its full wait is on parity (it / kStages) & 1, and the
// producer's refill of that buffer waits on empty parity (it / kStages − 1) & 1.
// Left out (next steps): persistent scheduling, warpgroup ping-pong barriers, TMA stores of O,
// GQA, Tq != Tk.
#pragma once

#ifndef SCRATCHLM_WGMMA_TU
#error "define SCRATCHLM_WGMMA_TU before including (see hopper_primitives.cuh)"
#endif

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "hopper_primitives.cuh"
#include "wgmma_ptx.cuh"

namespace scratchlm::wgmma {
// (SCRATCHLM_WGMMA_TU: see hopper_primitives.cuh.)
inline namespace SCRATCHLM_WGMMA_TU {

using bf16 = __nv_bfloat16;
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- register layouts of wgmma (PTX ISA; cute CLayout_64xN / ALayout_64x16) ---------------------
// Thread lane = 4g + t of warp w (0..3) of its warpgroup.
// fp32 accumulator of m64nN: d[4j + e] is row 16w + g + 8·(e / 2), column 8j + 2t + (e % 2).
// bf16 A fragment of one k16 step from registers: a[j], j = 0..3, holds row 16w + g + 8·(j % 2),
//   columns 16kk + 8·(j / 2) + 2t and +1 (low half first).
// So the accumulator of S = Q Kᵀ (64 × kBlockN) read as bf16 pairs, p[i] = (d[2i], d[2i+1]), is
// exactly the A operand of P V: k step kk is p[4kk .. 4kk+3].
__host__ __device__ constexpr int acc_row(int idx, int warp, int g) { return 16 * warp + g + 8 * ((idx % 4) / 2); }
__host__ __device__ constexpr int acc_col(int idx, int t) { return 8 * (idx / 4) + 2 * t + (idx % 2); }
__host__ __device__ constexpr int afrag_row(int j, int warp, int g) { return 16 * warp + g + 8 * (j % 2); }
__host__ __device__ constexpr int afrag_col(int kk, int j, int t) { return 16 * kk + 8 * (j / 2) + 2 * t; }

template <int N>
__device__ __forceinline__ void acc_to_bf16_afrags(std::uint32_t (&p)[N / 2], const float (&s)[N]) {
#pragma unroll
  for (int i = 0; i < N / 2; ++i) p[i] = pack_bf16x2(s[2 * i], s[2 * i + 1]);
}

// The two products of a consumer warpgroup, each issued as one committed wgmma group (the caller
// waits with wgmma_wait and fences the accumulator after).
// s (64 × N) = Q Kᵀ: Q = rows [q_row0, q_row0 + 64) of a HeadTile<D> of q_rows rows, K an N-row
// HeadTile<D>; both K-major, D / 16 k-steps, the first one overwriting s (scale_d = 0).
template <int D, int N>
__device__ __forceinline__ void issue_qk(float (&s)[N / 2], std::uint32_t q_tile, int q_rows, int q_row0,
                                         std::uint32_t k_tile) {
  fence_operands(s);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    WgmmaSS<N, 0, 0>::run(s, kmajor_desc<D>(q_tile, q_rows, q_row0, kk), kmajor_desc<D>(k_tile, N, 0, kk), kk > 0 ? 1 : 0);
  wgmma_commit();
}
// o (64 × D) += P V: P (64 × N) as bf16 A fragments in registers (p[4kk .. 4kk+3] for k-step kk),
// V an N-row HeadTile<D> read MN-major (transposed) with the given LBO/SBO (the forward's:
// mnmajor_lbo<D>(N), mnmajor_sbo<D>()).
template <int D, int N>
__device__ __forceinline__ void issue_pv(float (&o)[D / 2], std::uint32_t (&p)[N / 4], std::uint32_t v_tile,
                                         std::uint32_t lbo, std::uint32_t sbo) {
  fence_operands(o);
  fence_operands(p);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk)
    WgmmaRS<D, 1>::run(o, p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3], mnmajor_desc<D>(v_tile, kk, lbo, sbo), 1);
  wgmma_commit();
}

// ---- configuration ---------------------------------------------------------------------------

template <int D_, int kWG_, int kBlockN_, int kStages_, bool kCausal_, bool kOverlap_>
struct FwdConfig {
  static constexpr int D = D_;
  static constexpr int kWG = kWG_;                 // consumer warpgroups, 64 query rows each
  static constexpr int kBlockM = 64 * kWG;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr bool kCausal = kCausal_;
  static constexpr bool kOverlap = kOverlap_;
  static constexpr int kThreads = 128 * (kWG + 1);
  // setmaxnreg budgets (FA3's): 128·24 + 256·240 = 64512 and 128·32 + 384·160 = 65536 registers,
  // within the 65536 of an SM; the entry allocation is 65536 / kThreads rounded down to 8.
  static constexpr int kProducerRegs = kWG == 2 ? 24 : 32;
  static constexpr int kConsumerRegs = kWG == 2 ? 240 : 160;
  using Tile = HeadTile<D>;
  static constexpr int kQBytes = Tile::bytes(kBlockM);
  static constexpr int kKVBytes = Tile::bytes(kBlockN);
  static constexpr int kQOff = 0;
  static constexpr int kKOff = kQOff + kQBytes;
  static constexpr int kVOff = kKOff + kStages * kKVBytes;
  static constexpr int kBarOff = kVOff + kStages * kKVBytes;
  static constexpr int kNumBars = 1 + 4 * kStages;
  static constexpr int kSmemBytes = 1024 /* alignment slack */ + kBarOff + 8 * kNumBars;
  static_assert(kWG == 2 || kWG == 3, "2 or 3 consumer warpgroups");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256 && kBlockM <= 256, "TMA boxes are at most 256 rows");
  static_assert(kQBytes % 1024 == 0 && kKVBytes % 1024 == 0, "tiles stay 1024-byte aligned");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block");
};

// Shared-memory addresses of one block's buffers and barriers.
template <class Cfg>
struct FwdSmem {
  std::uint32_t base;
  __device__ explicit FwdSmem(const void* raw) : base((smem_u32(raw) + 1023u) & ~1023u) {}
  __device__ std::uint32_t q() const { return base + Cfg::kQOff; }
  __device__ std::uint32_t k(int s) const { return base + Cfg::kKOff + s * Cfg::kKVBytes; }
  __device__ std::uint32_t v(int s) const { return base + Cfg::kVOff + s * Cfg::kKVBytes; }
  __device__ std::uint32_t bar_q() const { return base + Cfg::kBarOff; }
  __device__ std::uint32_t k_full(int s) const { return base + Cfg::kBarOff + 8 * (1 + s); }
  __device__ std::uint32_t k_empty(int s) const { return base + Cfg::kBarOff + 8 * (1 + Cfg::kStages + s); }
  __device__ std::uint32_t v_full(int s) const { return base + Cfg::kBarOff + 8 * (1 + 2 * Cfg::kStages + s); }
  __device__ std::uint32_t v_empty(int s) const { return base + Cfg::kBarOff + 8 * (1 + 3 * Cfg::kStages + s); }
};

// Wait tags for the watchdog report: role · 1e6 + tile index.
enum WaitTag : int { kTagQ = 1000000, kTagKFull = 2000000, kTagVFull = 3000000, kTagKEmpty = 4000000, kTagVEmpty = 5000000 };

// Key tiles one query block visits: causal, those up to the one holding its last query (or T − 1).
template <class Cfg>
__host__ __device__ inline int fwd_key_tiles(int q0, int T) {
  if constexpr (Cfg::kCausal) {
    const int last = q0 + Cfg::kBlockM - 1 < T - 1 ? q0 + Cfg::kBlockM - 1 : T - 1;
    return last / Cfg::kBlockN + 1;
  } else {
    return (T + Cfg::kBlockN - 1) / Cfg::kBlockN;
  }
}

template <class Cfg>
__device__ __forceinline__ void fwd_init_barriers(const FwdSmem<Cfg>& sm) {
  if (threadIdx.x == 0) {
    mbar_init(sm.bar_q(), 1);
#pragma unroll
    for (int s = 0; s < Cfg::kStages; ++s) {
      mbar_init(sm.k_full(s), 1);
      mbar_init(sm.v_full(s), 1);
      mbar_init(sm.k_empty(s), 4 * Cfg::kWG);
      mbar_init(sm.v_empty(s), 4 * Cfg::kWG);
    }
    mbar_fence_init();
  }
  __syncthreads();
}

// The producer: one thread. Key tile it (0-based, in visiting order) starts at key
// (n_tiles − 1 − it) · kBlockN. col_q = h·D is the head's first column in a row of 3C.
template <class Cfg>
__device__ __forceinline__ void fwd_produce(const FwdSmem<Cfg>& sm, const CUtensorMap* tmap_q, const CUtensorMap* tmap_kv,
                                            int b, int col_q, int C, int q0, int n_tiles) {
  using G = typename Cfg::Tile;
  tma_prefetch_map(tmap_q);
  tma_prefetch_map(tmap_kv);
  mbar_arrive_expect_tx(sm.bar_q(), Cfg::kQBytes);
#pragma unroll
  for (int sub = 0; sub < G::kSubs; ++sub)
    tma_load_3d(sm.q() + sub * G::sub_bytes(Cfg::kBlockM), tmap_q, sm.bar_q(), col_q + sub * G::kSubCols, q0, b);

  auto load = [&](int it, bool is_v) {
    const int s = it % Cfg::kStages, round = it / Cfg::kStages;
    const std::uint32_t full = is_v ? sm.v_full(s) : sm.k_full(s);
    const std::uint32_t empty = is_v ? sm.v_empty(s) : sm.k_empty(s);
    const std::uint32_t dst = is_v ? sm.v(s) : sm.k(s);
    if (round > 0) mbar_wait(empty, (round - 1) & 1, (is_v ? kTagVEmpty : kTagKEmpty) + it);
    mbar_arrive_expect_tx(full, Cfg::kKVBytes);
    const int n0 = (n_tiles - 1 - it) * Cfg::kBlockN;
    const int col = col_q + (is_v ? 2 * C : C);
#pragma unroll
    for (int sub = 0; sub < G::kSubs; ++sub)
      tma_load_3d(dst + sub * G::sub_bytes(Cfg::kBlockN), tmap_kv, full, col + sub * G::kSubCols, n0, b);
  };
  load(0, false);
  for (int it = 1; it < n_tiles; ++it) {
    load(it, false);
    load(it - 1, true);
  }
  load(n_tiles - 1, true);
}

// x, through an asm the compiler cannot see into or move out of a loop.
__device__ __forceinline__ int opaque_copy(int x) {
  int y;
  asm volatile("mov.b32 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// One consumer warp's release of a buffer: after its wgmma_wait, one arrival per warp.
__device__ __forceinline__ void release(std::uint32_t empty_bar) {
  __syncwarp();
  if (threadIdx.x % 32 == 0) mbar_arrive(empty_bar);
}

// ---- the forward kernel --------------------------------------------------------------------------

// grid (B·H, ceil(T / kBlockM)), query blocks in reverse blockIdx.y order (longest causal rows start
// first); block Cfg::kThreads; dynamic shared memory Cfg::kSmemBytes.
// tmap_q: box (kSubCols, kBlockM, 1) over qkv viewed as (3C, T, B); tmap_kv: box (kSubCols, kBlockN, 1).
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    attention_forward_wgmma_kernel(const __grid_constant__ CUtensorMap tmap_q, const __grid_constant__ CUtensorMap tmap_kv,
                                   bf16* __restrict__ out,    // (B, T, H, D)
                                   float* __restrict__ lse,   // (B, H, T)
                                   int T, int H, float scale) {
  constexpr int D = Cfg::D, kBlockN = Cfg::kBlockN, kStages = Cfg::kStages;
  constexpr int kSN = kBlockN / 2;   // S accumulator floats per thread (64 × kBlockN over 128 threads)
  constexpr int kON = D / 2;         // O accumulator floats per thread
  extern __shared__ unsigned char smem_raw[];
  const FwdSmem<Cfg> sm(smem_raw);

  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * Cfg::kBlockM;
  const int n_tiles = fwd_key_tiles<Cfg>(q0, T);
  const int C = H * D;

  fwd_init_barriers<Cfg>(sm);

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) fwd_produce<Cfg>(sm, &tmap_q, &tmap_kv, b, h * D, C, q0, n_tiles);
  } else {
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    const int c = wg - 1;                          // consumer index: rows q0 + 64c ..
    const int lt = threadIdx.x % 128, warp = lt / 32, lane = lt % 32, g = lane / 4, t = lane % 4;
    const int wq0 = q0 + 64 * c;                   // first row of this warpgroup
    const int row0 = wq0 + 16 * warp + g;          // this thread's rows: row0 and row0 + 8
    const float scale_log2 = scale * 1.4426950408889634f;   // exp(scale·x) = exp2(scale_log2·x)

    float o[kON];
    float s[kSN];
#pragma unroll
    for (int i = 0; i < kON; ++i) o[i] = 0.f;
#pragma unroll
    for (int i = 0; i < kSN; ++i) s[i] = 0.f;
    std::uint32_t p[kSN / 2];
    float row_max[2] = {-kInf, -kInf}, row_sum[2] = {0.f, 0.f};

    auto qk = [&](int stage) { issue_qk<D, kBlockN>(s, sm.q(), Cfg::kBlockM, 64 * c, sm.k(stage)); };
    auto pv = [&](int stage) { issue_pv<D, kBlockN>(o, p, sm.v(stage), mnmajor_lbo<D>(kBlockN), mnmajor_sbo<D>()); };
    // Mask (where needed), then the online-softmax update of tile it: s becomes fp32 P; alpha
    // rescales the older terms of row_sum (here) and of o (by the caller, once P V is done).
    auto softmax = [&](int it, float (&alpha)[2]) {
      const int n0 = (n_tiles - 1 - it) * kBlockN;
      const bool need_mask = (Cfg::kCausal && n0 + kBlockN - 1 > wq0) || n0 + kBlockN > T;
      if (need_mask) {
#pragma unroll
        for (int i = 0; i < kSN; ++i) {
          const int key = n0 + acc_col(i, t);
          const int row = row0 + 8 * ((i % 4) / 2);
          if (key >= T || (Cfg::kCausal && key > row)) s[i] = -kInf;
        }
      }
      float mx[2] = {row_max[0], row_max[1]};
#pragma unroll
      for (int i = 0; i < kSN; ++i) mx[(i % 4) / 2] = fmaxf(mx[(i % 4) / 2], s[i]);
      float ms[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        ms[r] = mx[r] == -kInf ? 0.f : mx[r] * scale_log2;   // a row with no key yet: exp2 gives 0, not NaN
        alpha[r] = fast_exp2(row_max[r] * scale_log2 - ms[r]);
        row_max[r] = mx[r];
        row_sum[r] *= alpha[r];
      }
#pragma unroll
      for (int i = 0; i < kSN; ++i) {
        s[i] = fast_exp2(fmaf(s[i], scale_log2, -ms[(i % 4) / 2]));
        row_sum[(i % 4) / 2] += s[i];
      }
    };
    auto rescale_o = [&](const float (&alpha)[2]) {
#pragma unroll
      for (int i = 0; i < kON; ++i) o[i] *= alpha[(i % 4) / 2];
    };

    mbar_wait(sm.bar_q(), 0, kTagQ);
    if constexpr (Cfg::kOverlap) {
      mbar_wait(sm.k_full(0), 0, kTagKFull);
      qk(0);
      wgmma_wait<0>();
      fence_operands(s);
      release(sm.k_empty(0));
      float alpha[2];
      softmax(0, alpha);   // o is still zero: alpha needs no rescale of it
      acc_to_bf16_afrags<kSN>(p, s);
      for (int it = 1; it < n_tiles; ++it) {
        const int st = it % kStages, pst = (it - 1) % kStages;
        mbar_wait(sm.k_full(st), (it / kStages) & 1, kTagKFull + it);
        qk(st);
        mbar_wait(sm.v_full(pst), ((it - 1) / kStages) & 1, kTagVFull + it - 1);
        pv(pst);
        wgmma_wait<1>();   // Q Kᵀ of tile it done (P V of it − 1 may still run)
        fence_operands(s);
        release(sm.k_empty(st));
        softmax(it, alpha);
        // Scheduling fence: ptxas schedules within a basic block, and without a block boundary
        // here it hoisted this wait above the whole softmax to interleave the rescale and the bf16
        // packing (which overwrite registers the running P V reads) with the exponentials, so the
        // softmax no longer overlapped P V (seen in the SASS). A branch on a value neither compiler
        // can fold keeps the wait after the softmax: T > 0 always holds (the host refuses empty
        // shapes), read through an asm volatile in the loop so that NVVM cannot unswitch the loop
        // on it (which it did for a plain `if (T > 0)` in the non-causal kernels).
        if (opaque_copy(T) > 0) {
          wgmma_wait<0>();   // P V of tile it − 1 done
          fence_operands(o);
          fence_operands(p);
          release(sm.v_empty(pst));
          rescale_o(alpha);
          acc_to_bf16_afrags<kSN>(p, s);
        }
      }
      const int last = n_tiles - 1, lst = last % kStages;
      mbar_wait(sm.v_full(lst), (last / kStages) & 1, kTagVFull + last);
      pv(lst);
      wgmma_wait<0>();
      fence_operands(o);
      release(sm.v_empty(lst));
    } else {
      for (int it = 0; it < n_tiles; ++it) {
        const int st = it % kStages, ph = (it / kStages) & 1;
        mbar_wait(sm.k_full(st), ph, kTagKFull + it);
        qk(st);
        wgmma_wait<0>();
        fence_operands(s);
        release(sm.k_empty(st));
        float alpha[2];
        softmax(it, alpha);
        rescale_o(alpha);
        acc_to_bf16_afrags<kSN>(p, s);
        mbar_wait(sm.v_full(st), ph, kTagVFull + it);
        pv(st);
        wgmma_wait<0>();
        fence_operands(o);
        release(sm.v_empty(st));
      }
    }

    // Epilogue: full row sums over the quad, out = O / l, lse = scale·m + log l; rows at or past T
    // are neither written nor read.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[r] = l > 0.f ? 1.f / l : 0.f;
      const int row = row0 + 8 * r;
      if (t == 0 && row < T) lse[static_cast<std::int64_t>(bh) * T + row] = row_max[r] * scale + logf(l);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + 8 * r;
      if (row < T) {
        bf16* dst = out + (static_cast<std::int64_t>(b) * T + row) * C + h * D;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          const std::uint32_t v = pack_bf16x2(o[4 * j + 2 * r] * inv[r], o[4 * j + 2 * r + 1] * inv[r]);
          *reinterpret_cast<std::uint32_t*>(dst + 8 * j + 2 * t) = v;
        }
      }
    }
  }
}

// ---- host side -----------------------------------------------------------------------------------

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess)
    throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + what + ": " + cudaGetErrorString(e));
}
#define LAB_CUDA(expr) ::scratchlm::wgmma::cuda_check((expr), #expr, __FILE__, __LINE__)

// cuTensorMapEncodeTiled from the driver through the runtime, so nothing links libcuda.
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
inline EncodeTiledFn encode_tiled_fn() {
  static EncodeTiledFn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    LAB_CUDA(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || p == nullptr) throw CudaError("cuTensorMapEncodeTiled not found in the driver");
    return reinterpret_cast<EncodeTiledFn>(p);
  }();
  return fn;
}

// A 3-D map over a (B, T, cols) bf16 tensor seen as (cols columns, T rows, B sequences), box
// (kSubCols, rows, 1), swizzled as HeadTile<D> expects. Rows past T read as zeros. cols·2 bytes
// must be a multiple of 16 (the TMA's stride rule): true for qkv (3·H·D) and dout (H·D), D ≥ 64 or
// H even.
template <int D>
CUtensorMap make_row_map(const bf16* base, int B, int T, std::uint64_t cols, int box_rows) {
  using G = HeadTile<D>;
  if (reinterpret_cast<std::uintptr_t>(base) % 16 != 0) throw CudaError("tensors must be 16-byte aligned for the TMA");
  if (cols * 2 % 16 != 0) throw CudaError("row length must be a multiple of 16 bytes for the TMA");
  CUtensorMap map;
  const cuuint64_t dims[3] = {cols, static_cast<cuuint64_t>(T), static_cast<cuuint64_t>(B)};
  const cuuint64_t strides[2] = {cols * 2, static_cast<cuuint64_t>(T) * cols * 2};   // bytes, dims 1 and 2
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(G::kSubCols), static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult r = encode_tiled_fn()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<bf16*>(base), dims, strides,
                                       box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                       G::kRowBytes == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
                                       CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw CudaError("cuTensorMapEncodeTiled failed with CUresult " + std::to_string(static_cast<int>(r)));
  return map;
}

// qkv (B, T, 3, H, D) as rows of 3C columns: Q, K, V of head h are boxes at columns h·D, C + h·D, 2C + h·D.
template <int D>
CUtensorMap make_qkv_map(const bf16* qkv, int B, int T, int H, int box_rows) {
  return make_row_map<D>(qkv, B, T, 3 * static_cast<std::uint64_t>(H) * D, box_rows);
}

template <class Cfg>
void attention_forward_wgmma(bf16* out, float* lse, const bf16* qkv, int B, int T, int H, cudaStream_t stream) {
  if (B <= 0 || T <= 0 || H <= 0) throw CudaError("attention_forward_wgmma: empty shape");
  const long long m_blocks = (T + Cfg::kBlockM - 1) / Cfg::kBlockM;
  if (m_blocks > 65535 || static_cast<long long>(B) * H > 2147483647LL) throw CudaError("attention_forward_wgmma: grid too large");
  if (reinterpret_cast<std::uintptr_t>(out) % 4 != 0) throw CudaError("out must be 4-byte aligned");
  const CUtensorMap tq = make_qkv_map<Cfg::D>(qkv, B, T, H, Cfg::kBlockM);
  const CUtensorMap tkv = make_qkv_map<Cfg::D>(qkv, B, T, H, Cfg::kBlockN);
  auto kernel = attention_forward_wgmma_kernel<Cfg>;
  // Opt in to the large shared memory on every launch (a cheap driver call), so that it holds on
  // whichever device is current.
  LAB_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
  kernel<<<dim3(static_cast<unsigned>(B * H), static_cast<unsigned>(m_blocks)), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(
      tq, tkv, out, lse, T, H, 1.f / std::sqrt(static_cast<float>(Cfg::D)));
  LAB_CUDA(cudaGetLastError());
}

}  // namespace SCRATCHLM_WGMMA_TU
}  // namespace scratchlm::wgmma
