// Causal attention on bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation), flash-attention-2
// style: the T×T score matrix is never stored. Semantics and layouts: attention_cuda.h.
//
// Forward (attention_forward_mma_kernel), one block of 4 warps per (sequence b, head h, 64·kMT
//   queries): each warp owns 16·kMT query rows (kMT m-tiles of 16, see MmaTiles) and keeps their
//   running row max m, running row sum l and output accumulator O (fp32) in registers, with Q's
//   fragments in registers or re-read from shared memory. Key/value tiles of kBlockN rows
//   are staged in shared memory with cp.async, double-buffered (tile n+1 loads while tile n is used):
//     S = Q Kᵀ            (16 × kBlockN per warp)
//     m' = max(m, rowmax S);  P = exp(scale·(S − m'));  l = l·exp(scale·(m − m')) + rowsum P
//     O = O·exp(scale·(m − m')) + P V   (P rounded to bf16 for the mma, as flash attention does)
//   and at the end O / l and lse = scale·m + log l. The exponentials are exp2 with log2(e) folded
//   into the scale. Causality: key tiles after the block's last query are never loaded; only tiles
//   that cross the diagonal are masked. A sliding window W likewise: key tiles wholly before the
//   first key the block's first query sees are never loaded, and only tiles crossing the band's
//   far edge (query − key ≥ W somewhere in the warp's rows) get that second mask.
// Backward, two kernels, no atomics (results are bit-identical run to run):
//   attention_backward_dq_mma_kernel     per 64·kMT queries: first delta = rowsum(dO ⊙ O) of its rows
//                                        (fp32, also written to the delta scratch for the next
//                                        kernel), then loops over key tiles at or before them:
//                                        P = exp(scale·S − lse), dP = dO Vᵀ, dS = P ⊙ (dP − delta),
//                                        dQ = scale · dS K;
//   attention_backward_dkdv_mma_kernel   per 64·kMT keys (16·kMT per warp), loops over query tiles at or
//                                        after them, computing the transposed products
//                                        Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, dV = Pᵀ dO, dK = scale · dSᵀ Q;
//                                        with GQA one block per kv head runs this loop for each
//                                        query head of its group in turn.
//   Each output element is owned by one warp and summed in a fixed order. Both visit only the tiles
//   of the band, as the forward does.
// The variants are template flags (kSoftcap, kWindow, and for the forward and dQ kernels kGrouped),
// so the default instantiation has none of their work; the tile tables are the default's for all.
//   soft-capping: S ← (c/scale)·tanh(S·scale/c) right after Q Kᵀ (softcap_raw), before the masks;
//                 backward multiplies dS by 1 − tanh², recovered from the capped score itself
//                 (softcap_slope), so no second array of registers is kept.
//   window:       the tile ranges and one more uniform test per tile; the element test only on
//                 edge tiles.
//   grouped:      the kv head's columns (h / (H / Hkv)); dK/dV's grid is B·Hkv and its loop runs
//                 over group × query tiles.
// Registers (ptxas -v, sm_90, nvcc 13): the default kernels spill at most 8 bytes, the variant
// instantiations at most 28.
//
// mma.sync.m16n8k16 fragments (lane = 4·g + t; two bf16 per 32-bit register, lower column first):
//   A 16×16 row-major: a0 (row g, cols 2t, 2t+1), a1 (row g+8, same cols), a2 (row g, cols 2t+8, +9),
//                      a3 (row g+8, cols 2t+8, +9)
//   B 16×8 "col":      b0 (k rows 2t, 2t+1, col g), b1 (k rows 2t+8, 2t+9, col g)
//   C 16×8 fp32:       c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, cols 2t, 2t+1)
// ldmatrix.x4 loads four 8×8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and
// lane l receives row l/4, cols 2(l%4), +1 of each (".trans": col l/4, rows 2(l%4), +1), which is
// exactly an A or B register. A C fragment of two adjacent n-blocks (16 columns) is, once rounded to
// bf16, an A fragment for the next product: this is how P and dS feed P V, dS K, Pᵀ dO, dSᵀ Q.
//
// Shared-memory rows are padded from D to D + 8 bf16 (16 bytes), so the 8 row addresses of an
// ldmatrix fall in 8 different bank groups. Rows at or past T are zero-filled on load (cp.async
// with a source size of 0) and never written back. Requires D in {32, 64, 128} and 16-byte aligned
// tensors. Left out: non-causal attention, Tq != Tk.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "ops/cuda/attention_cuda.h"
#include "tensor/cuda/cuda_check.cuh"
#include "util/error.h"

namespace scratchlm {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 16;                         // the m of m16n8k16
constexpr int kPad = 8;                                  // bf16 of padding per shared-memory row
constexpr int kMinTileRows = kWarps * kRowsPerWarp;      // the smallest tile along T (one m-tile per warp)
// Occupancy hint for ptxas. With 2 blocks per SM it may use up to 255 registers, which every kernel
// here needs (up to ~250 for D = 128) to keep its fragments and accumulators without spilling;
// without a hint ptxas chose 128 registers for the D = 32 dQ kernel and spilled.
constexpr int kMinBlocksPerSm = 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kInf = std::numeric_limits<float>::infinity();

// Tile shapes per head dimension, measured on an H200 (bench/attention). kMT: m-tiles of 16 rows
// per warp (a block is 4 warps, so 64·kMT queries or keys); two m-tiles let every K, V, Q or dO
// fragment read from shared memory feed two mmas, which pays where registers allow it (255 per
// thread at 2 blocks per SM; the D = 64 backward kernels spill 8 and 4 bytes, still the fastest of
// the shapes tried: see -Xptxas -v). kBlockN / kBlockM: the loop tile;
// kChunk: the n-blocks of dP live at once; k*InRegs: fragments kept in registers rather than
// re-read from shared memory. kMinBlocks: the __launch_bounds__ occupancy hint (2 = up to 255
// registers). D = 32 (short T, many small blocks: latency-bound) is fastest with tighter register
// caps and more resident blocks: measured at B=128, H=16, T=256 on an H200, forward 0.094 -> 0.083 ms,
// backward 0.290 -> 0.219 ms together with the delta fusion (dK/dV re-reads K, V from shared memory
// at 128 registers, no spill; dQ at 168 registers, no spill).
template <int D>
struct MmaTiles;
template <>
struct MmaTiles<32> {
  struct Forward { static constexpr int kMT = 2, kBlockN = 64, kMinBlocks = 3; static constexpr bool kQInRegs = true; };
  struct Dq { static constexpr int kMT = 2, kBlockN = 32, kChunk = 4, kMinBlocks = 3; };
  struct Dkdv {
    static constexpr int kMT = 1, kBlockM = 64, kChunk = 8, kMinBlocks = 4;
    static constexpr bool kKVInRegs = false;
  };
};
template <>
struct MmaTiles<64> {
  struct Forward { static constexpr int kMT = 2, kBlockN = 64, kMinBlocks = kMinBlocksPerSm; static constexpr bool kQInRegs = true; };
  struct Dq { static constexpr int kMT = 2, kBlockN = 32, kChunk = 4, kMinBlocks = kMinBlocksPerSm; };
  struct Dkdv {
    static constexpr int kMT = 2, kBlockM = 32, kChunk = 4, kMinBlocks = kMinBlocksPerSm;
    static constexpr bool kKVInRegs = false;
  };
};
template <>
struct MmaTiles<128> {
  struct Forward { static constexpr int kMT = 2, kBlockN = 32, kMinBlocks = kMinBlocksPerSm; static constexpr bool kQInRegs = false; };
  struct Dq { static constexpr int kMT = 1, kBlockN = 32, kChunk = 4, kMinBlocks = kMinBlocksPerSm; };
  struct Dkdv {
    static constexpr int kMT = 1, kBlockM = 32, kChunk = 4, kMinBlocks = kMinBlocksPerSm;
    static constexpr bool kKVInRegs = false;
  };
};

// ---- PTX wrappers ----------------------------------------------------------------------------
// The "memory" clobbers keep the compiler from moving ordinary shared-memory accesses across them;
// ptxas still schedules the instructions by their real dependencies.

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; valid == false writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async_16(std::uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

// 4 bytes global -> shared; valid == false writes 0.0f.
__device__ __forceinline__ void cp_async_4(std::uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// c (16×8 fp32) += a (16×16 bf16) · b (16×8 bf16).
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                               std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x with the MUFU instruction, subnormal results flushed to zero (what exp2f becomes under
// --use_fast_math; plain exp2f adds a rescaling around it to keep subnormals). Scores here are at
// most 0 after the max subtraction, so only results below 2^-126 differ, by less than 2^-126.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats rounded to nearest-even bf16, lo in the low half (the lower column of a fragment).
__device__ __forceinline__ std::uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

// ---- the variants --------------------------------------------------------------------------------

// What every kernel needs besides pointers. Scores stay in "raw" units (the unscaled Q·K) inside
// the kernels, as in the default path: the softmax scale is folded into the exp2.
struct MmaParams {
  int T;              // tokens per sequence
  int H, Hkv;         // query heads, key/value heads (H % Hkv == 0)
  int window;         // sliding window, 1 ≤ window < T; read only by kWindow kernels
  float scale;        // 1 / sqrt(D)
  float cap_raw;      // softcap c in raw units, c / scale (kSoftcap kernels only)
  float inv_cap_raw;  // scale / c
  float tanh_k;       // 2·log2(e)·scale / c
};

// Soft-capping in raw units: u' = (c / scale) · tanh(u · scale / c), with tanh(x) = 1 − 2 / (1 + e^2x)
// and e^2x = 2^(u · tanh_k) from MUFU.EX2. The absolute error of tanh is a few 1e-7 (ex2.approx is
// good to 2^-22 relative; the fast division to 2 ulp), so the capped score is off by ~c·1e-7, far
// below what bf16 P and dS lose; tanh.approx.f32 (2^-11 relative) would cost c·5e-4 (2.5% in P at
// c = 50). For u·tanh_k ≥ 128 the exponential is +inf and 2 / inf = 0 (tanh = 1); for very
// negative u it is 0 (tanh = −1): no NaN for any finite u.
__device__ __forceinline__ float softcap_raw(float u, const MmaParams& p) {
  return p.cap_raw * (1.f - __fdividef(2.f, 1.f + fast_exp2(u * p.tanh_k)));
}

// ∂u'/∂u = 1 − tanh² = 1 − (u' / cap_raw)², from the capped score itself (so the backward keeps no
// second array of tanh values). Clamped at 0: it is 0 for masked scores (u' = −inf), and it keeps
// rounding from making it slightly negative at |tanh| ≈ 1.
__device__ __forceinline__ float softcap_slope(float capped, const MmaParams& p) {
  const float t = capped * p.inv_cap_raw;
  return fmaxf(1.f - t * t, 0.f);
}

// The qkv row of a token as query head h's kernels address it: the row length, and the offsets
// from h's q columns to the k and v columns of the kv head it reads, kv = h / (H / Hkv) (k at
// (H + kv)·D, v at (H + Hkv + kv)·D). Without grouping (Hkv = H) they are 3·C, C and 2·C with
// C = H·D, written so: with the general expressions ptxas allocated registers differently and
// spilled the default D = 32 and D = 128 kernels (see -Xptxas -v).
struct QkvRow {
  std::int64_t stride;
  int k, v;
};
template <bool kGrouped, int D>
__device__ __forceinline__ QkvRow qkv_row(const MmaParams& p, int h) {
  const int C = p.H * D;
  if constexpr (kGrouped) {
    const int kv = h / (p.H / p.Hkv);
    return {static_cast<std::int64_t>(p.H + 2 * p.Hkv) * D, (p.H - h + kv) * D, (p.H + p.Hkv - h + kv) * D};
  } else {
    return {3 * static_cast<std::int64_t>(C), C, 2 * C};
  }
}

// ---- fragment loaders (all addresses are shared-memory tiles with kStride = D + kPad) -----------

// A fragment of rows [row0, row0 + 16), cols [col0, col0 + 16) of a row-major tile (Q, K, V, dO as
// the left operand). Matrices: 0 = rows 0-7 cols 0-7 (a0), 1 = rows 8-15 (a1), 2 = cols 8-15 (a2), 3.
template <int kStride>
__device__ __forceinline__ void load_a_frag(std::uint32_t (&a)[4], std::uint32_t tile, int row0, int col0,
                                            int lane) {
  const int row = row0 + (lane % 16);
  const int col = col0 + (lane / 16) * 8;
  ldmatrix_x4(a, tile + static_cast<std::uint32_t>((row * kStride + col) * 2));
}

// B fragments for X Yᵀ where Y is a row-major tile (rows = the n dimension, cols = the k dimension):
// n rows [n0, n0 + 16) as two n-blocks of 8, k cols [k0, k0 + 16). b[0], b[1] are b0, b1 of n-block
// n0..n0+7 and b[2], b[3] of n-block n0+8..n0+15. Matrices: 0 = rows 0-7 cols 0-7, 1 = rows 0-7
// cols 8-15, 2 = rows 8-15 cols 0-7, 3 = rows 8-15 cols 8-15.
template <int kStride>
__device__ __forceinline__ void load_b_frag_rows_are_n(std::uint32_t (&b)[4], std::uint32_t tile, int n0, int k0,
                                                       int lane) {
  const int row = n0 + (lane % 8) + (lane / 16) * 8;
  const int col = k0 + ((lane / 8) % 2) * 8;
  ldmatrix_x4(b, tile + static_cast<std::uint32_t>((row * kStride + col) * 2));
}

// B fragments for X Y where Y is a row-major tile (rows = the k dimension, cols = the n dimension):
// k rows [k0, k0 + 16), n cols [n0, n0 + 16) as two n-blocks of 8, loaded transposed. b[0], b[1]
// for n-block n0..n0+7, b[2], b[3] for n0+8..n0+15. Matrices: 0 = rows 0-7 cols 0-7, 1 = rows 8-15
// cols 0-7, 2 = rows 0-7 cols 8-15, 3 = rows 8-15 cols 8-15.
template <int kStride>
__device__ __forceinline__ void load_b_frag_rows_are_k(std::uint32_t (&b)[4], std::uint32_t tile, int k0, int n0,
                                                       int lane) {
  const int row = k0 + (lane % 8) + ((lane / 8) % 2) * 8;
  const int col = n0 + (lane / 16) * 8;
  ldmatrix_x4_trans(b, tile + static_cast<std::uint32_t>((row * kStride + col) * 2));
}

// C fragments of n-blocks 2kk and 2kk+1 (16 columns) as an A fragment over those 16 columns.
__device__ __forceinline__ void c_pair_to_a_frag(std::uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16x2(c0[0], c0[1]);   // row g,   cols 2t, 2t+1
  a[1] = pack_bf16x2(c0[2], c0[3]);   // row g+8, cols 2t, 2t+1
  a[2] = pack_bf16x2(c1[0], c1[1]);   // row g,   cols 2t+8, 2t+9
  a[3] = pack_bf16x2(c1[2], c1[3]);   // row g+8, cols 2t+8, 2t+9
}

// acc (16 × 8·kNB per warp) += A (16 × 16·kKSteps, fragments in registers) · Yᵀ, Y a shared tile
// with the n dimension along rows starting at row 0.
template <int kStride, int kNB, int kKSteps>
__device__ __forceinline__ void mma_a_regs_times_tile_t(float (&acc)[kNB][4], const std::uint32_t (&a)[kKSteps][4],
                                                        std::uint32_t tile, int lane) {
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
    for (int nb = 0; nb < kNB; nb += 2) {
      std::uint32_t b[4];
      load_b_frag_rows_are_n<kStride>(b, tile, nb * 8, kk * 16, lane);
      mma_bf16_16816(acc[nb], a[kk], b[0], b[1]);
      mma_bf16_16816(acc[nb + 1], a[kk], b[2], b[3]);
    }
  }
}

// acc (16 × D per warp) += X (16 × 8·kXB, C fragments in fp32, rounded to bf16 here) · Y, Y a shared
// tile (8·kXB rows of k, D cols of n).
template <int kStride, int kDB, int kXB>
__device__ __forceinline__ void mma_c_regs_times_tile(float (&acc)[kDB][4], const float (&x)[kXB][4],
                                                      std::uint32_t tile, int lane) {
#pragma unroll
  for (int kk = 0; kk < kXB / 2; ++kk) {
    std::uint32_t a[4];
    c_pair_to_a_frag(a, x[2 * kk], x[2 * kk + 1]);
#pragma unroll
    for (int db = 0; db < kDB; db += 2) {
      std::uint32_t b[4];
      load_b_frag_rows_are_k<kStride>(b, tile, kk * 16, db * 8, lane);
      mma_bf16_16816(acc[db], a, b[0], b[1]);
      mma_bf16_16816(acc[db + 1], a, b[2], b[3]);
    }
  }
}

// ---- global -> shared tile copies --------------------------------------------------------------

// Rows [row0, row0 + kRows) of one head (D bf16 per row, consecutive rows row_stride apart in
// global memory, base = the head's columns in row 0 of the sequence) into a (kRows, D + kPad)
// shared tile. Rows at or past T become zeros. Issued by all kThreads threads; not committed.
template <int kRows, int D>
__device__ __forceinline__ void load_rows_async(bf16* tile, const bf16* base, std::int64_t row_stride, int row0,
                                                int T, int tid) {
  constexpr int kChunksPerRow = D / 8;   // 16-byte chunks
  constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kChunks % kThreads == 0, "tile must split evenly over the block");
#pragma unroll
  for (int i = 0; i < kChunks / kThreads; ++i) {
    const int chunk = tid + i * kThreads;
    const int r = chunk / kChunksPerRow;
    const int col = (chunk % kChunksPerRow) * 8;
    const bool valid = row0 + r < T;
    const bf16* src = base + static_cast<std::int64_t>(valid ? row0 + r : 0) * row_stride + col;   // in bounds
    cp_async_16(smem_addr(tile + r * (D + kPad) + col), src, valid);
  }
}

// kRows floats [row0, row0 + kRows) of a (T) vector into shared memory, zeros past T. Not committed.
template <int kRows>
__device__ __forceinline__ void load_vector_async(float* dst, const float* src, int row0, int T, int tid) {
  static_assert(kRows <= kThreads);
  if (tid < kRows) {
    const bool valid = row0 + tid < T;
    cp_async_4(smem_addr(dst + tid), src + (valid ? row0 + tid : 0), valid);
  }
}

// A warp's 16 rows of a (·, D + kPad) shared tile to global rows row0.. (skipping rows at or past T),
// 16 bytes per lane per step: the staging that turns fragment-scattered results into whole-row stores.
template <int D>
__device__ __forceinline__ void store_warp_rows(bf16* dst_base, std::int64_t row_stride, const bf16* tile, int row0,
                                                int T, int lane) {
  constexpr int kChunksPerRow = D / 8;
  constexpr int kChunks = kRowsPerWarp * kChunksPerRow;
#pragma unroll
  for (int i = 0; i < kChunks / 32; ++i) {
    const int chunk = lane + i * 32;
    const int r = chunk / kChunksPerRow;
    const int col = (chunk % kChunksPerRow) * 8;
    if (row0 + r < T) {
      *reinterpret_cast<uint4*>(dst_base + static_cast<std::int64_t>(row0 + r) * row_stride + col) =
          *reinterpret_cast<const uint4*>(tile + r * (D + kPad) + col);
    }
  }
}

// Writes a warp's 16 × D fp32 accumulator, times `factor`, as bf16 into its own 16 rows of a shared
// tile (rows row0.., D + kPad wide).
template <int D>
__device__ __forceinline__ void stage_accumulator(bf16* tile, int row0, const float (&acc)[D / 8][4], float factor,
                                                  int lane) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int db = 0; db < D / 8; ++db) {
    const int col = db * 8 + 2 * t;
    *reinterpret_cast<std::uint32_t*>(tile + (row0 + g) * (D + kPad) + col) =
        pack_bf16x2(acc[db][0] * factor, acc[db][1] * factor);
    *reinterpret_cast<std::uint32_t*>(tile + (row0 + g + 8) * (D + kPad) + col) =
        pack_bf16x2(acc[db][2] * factor, acc[db][3] * factor);
  }
}

// ---- forward -----------------------------------------------------------------------------------

// grid (B·H, ceil(T / kBlockM)); block 128 = 4 warps × 16·kMT query rows (kMT m-tiles of 16 per
// warp: every K or V fragment read from shared memory feeds kMT mmas). Query tiles run in reverse
// blockIdx.y order so the longest (last) tiles are scheduled first. The block loads only the key
// tiles of its band (from the one holding its first query's first visible key, with a window; else
// from 0, to the one holding its last query); a warp skips tiles wholly outside its own band.
// Shared: sQ (kBlockM, D+8) | sK 2 × (kBlockN, D+8) | sV 2 × (kBlockN, D+8), bf16.
// kQInRegs: keep the warp's Q fragments in registers; else re-read them from sQ each key tile.
// kSoftcap, kWindow, kGrouped (Hkv < H): the variants, compile-time so that the default kernel has
// none of their work.
template <int D, int kMT, int kBlockN, bool kQInRegs, int kMinBlocks, bool kSoftcap, bool kWindow, bool kGrouped>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    attention_forward_mma_kernel(bf16* __restrict__ out,          // (B, T, H, D)
                                 float* __restrict__ lse,         // (B, H, T)
                                 const bf16* __restrict__ qkv,    // (B, T, H·D + 2·Hkv·D)
                                 MmaParams prm) {
  constexpr int kStride = D + kPad;
  constexpr int kWarpRows = kMT * kRowsPerWarp;
  constexpr int kBlockM = kWarps * kWarpRows;
  constexpr int kNB = kBlockN / 8;   // n-blocks of S per m-tile: S is 16 × kBlockN
  constexpr int kDB = D / 8;         // n-blocks of O per m-tile: O is 16 × D
  constexpr int kDK = D / 16;        // k-steps of Q Kᵀ
  static_assert(kBlockN % 16 == 0 && D % 16 == 0);

  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + kBlockM * kStride;
  bf16* sV = sK + 2 * kBlockN * kStride;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int T = prm.T, H = prm.H;
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kBlockM;   // first query of the block
  const int qw0 = q0 + warp * kWarpRows;                    // first query of this warp
  const int C = H * D;                                      // columns of out
  const QkvRow row = qkv_row<kGrouped, D>(prm, h);
  const std::int64_t row_stride = row.stride;
  const bf16* q_base = qkv + static_cast<std::int64_t>(b) * T * row_stride + h * D;
  const bf16* k_base = q_base + row.k;
  const bf16* v_base = q_base + row.v;
  [[maybe_unused]] const int window = prm.window;

  // Key tiles n_begin..n_end-1: from the one holding the first key the block's first query sees
  // (key 0 without a window) to the one holding the block's last query (or the last key).
  const int n_begin = kWindow ? max(q0 - window + 1, 0) / kBlockN : 0;
  const int n_end = min(q0 + kBlockM - 1, T - 1) / kBlockN + 1;

  load_rows_async<kBlockM, D>(sQ, q_base, row_stride, q0, T, tid);
  load_rows_async<kBlockN, D>(sK, k_base, row_stride, n_begin * kBlockN, T, tid);
  load_rows_async<kBlockN, D>(sV, v_base, row_stride, n_begin * kBlockN, T, tid);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  const std::uint32_t q_tile = smem_addr(sQ);
  std::uint32_t q_frag[kQInRegs ? kMT : 1][kQInRegs ? kDK : 1][4];
  if constexpr (kQInRegs) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int kk = 0; kk < kDK; ++kk)
        load_a_frag<kStride>(q_frag[mt][kk], q_tile, warp * kWarpRows + mt * 16, kk * 16, lane);
  }

  // Each thread holds two rows per m-tile: r = 0 is row g of the m-tile, r = 1 is row g + 8.
  float o[kMT][kDB][4] = {};                  // O accumulator, unnormalised
  float row_max[kMT][2], row_sum[kMT][2];     // running max of raw Q·K (full row); sum of P (own cols)
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    row_max[mt][0] = row_max[mt][1] = -kInf;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }
  const float scale = prm.scale;
  const float scale_log2 = scale * kLog2e;    // exp(scale·x) = exp2(scale_log2·x)

  for (int n = n_begin; n < n_end; ++n) {
    // Prefetch tile n+1 into the other buffer; every warp finished with it before the barrier
    // that ended iteration n-1.
    const int buf = (n - n_begin) % 2;
    if (n + 1 < n_end) {
      const int next = 1 - buf;
      load_rows_async<kBlockN, D>(sK + next * kBlockN * kStride, k_base, row_stride, (n + 1) * kBlockN, T, tid);
      load_rows_async<kBlockN, D>(sV + next * kBlockN * kStride, v_base, row_stride, (n + 1) * kBlockN, T, tid);
      cp_async_commit();
    }
    const std::uint32_t k_tile = smem_addr(sK + buf * kBlockN * kStride);
    const std::uint32_t v_tile = smem_addr(sV + buf * kBlockN * kStride);
    const int n0 = n * kBlockN;

    // Warp-uniform: some key of the tile is visible to the warp (not after its last query, and with
    // a window not before the first key its first query sees).
    if (n0 <= qw0 + kWarpRows - 1 && (!kWindow || n0 + kBlockN - 1 > qw0 - window)) {
      // S = Q Kᵀ: s[mt][j][e] is row mt·16 + g + 8·(e/2), key n0 + 8j + 2t + e%2.
      float s[kMT][kNB][4] = {};
#pragma unroll
      for (int kk = 0; kk < kDK; ++kk) {
        std::uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (kQInRegs) {
#pragma unroll
            for (int i = 0; i < 4; ++i) a[mt][i] = q_frag[mt][kk][i];
          } else {
            load_a_frag<kStride>(a[mt], q_tile, warp * kWarpRows + mt * 16, kk * 16, lane);
          }
        }
#pragma unroll
        for (int nb = 0; nb < kNB; nb += 2) {
          std::uint32_t bk[4];
          load_b_frag_rows_are_n<kStride>(bk, k_tile, nb * 8, kk * 16, lane);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_bf16_16816(s[mt][nb], a[mt], bk[0], bk[1]);
            mma_bf16_16816(s[mt][nb + 1], a[mt], bk[2], bk[3]);
          }
        }
      }

      if constexpr (kSoftcap) {   // capped before the mask and the softmax
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int j = 0; j < kNB; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[mt][j][e] = softcap_raw(s[mt][j][e], prm);
      }

      // Causal mask, only on tiles whose last key is past this warp's first query. Keys at or past
      // T lie after every real query, so this also hides the zero-filled tail of the last tile.
      // The window's edge, only on tiles whose first key is one the warp's last query no longer sees.
      const bool window_edge = kWindow && n0 <= qw0 + kWarpRows - 1 - window;
      if (n0 + kBlockN - 1 > qw0 || window_edge) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int j = 0; j < kNB; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int key = n0 + j * 8 + 2 * t + (e % 2);
              const int query = qw0 + mt * 16 + g + 8 * (e / 2);
              if (key > query || (window_edge && query - key >= window)) s[mt][j][e] = -kInf;
            }
      }

#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        // Online softmax. New row max over the 4 lanes of a quad (they share rows g and g+8).
        float new_max[2] = {row_max[mt][0], row_max[mt][1]};
#pragma unroll
        for (int j = 0; j < kNB; ++j) {
          new_max[0] = fmaxf(new_max[0], fmaxf(s[mt][j][0], s[mt][j][1]));
          new_max[1] = fmaxf(new_max[1], fmaxf(s[mt][j][2], s[mt][j][3]));
        }
        float max_scaled[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          new_max[r] = fmaxf(new_max[r], __shfl_xor_sync(0xffffffffu, new_max[r], 1));
          new_max[r] = fmaxf(new_max[r], __shfl_xor_sync(0xffffffffu, new_max[r], 2));
          // A row with no visible key so far keeps max -inf; subtract 0 then so exp2 gives 0, not
          // NaN. (With a window a row's first tiles can be wholly masked for it; every row sees its
          // own key later, so its final max is finite.)
          max_scaled[r] = new_max[r] == -kInf ? 0.f : new_max[r] * scale_log2;
          const float alpha = fast_exp2(row_max[mt][r] * scale_log2 - max_scaled[r]);   // rescales old terms
          row_max[mt][r] = new_max[r];
          row_sum[mt][r] *= alpha;
#pragma unroll
          for (int db = 0; db < kDB; ++db) {
            o[mt][db][2 * r] *= alpha;
            o[mt][db][2 * r + 1] *= alpha;
          }
        }
        // P = exp(scale·(S − max)), in place; the sum uses fp32 P, the mma below its bf16 rounding.
#pragma unroll
        for (int j = 0; j < kNB; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][j][e] = fast_exp2(fmaf(s[mt][j][e], scale_log2, -max_scaled[e / 2]));
            row_sum[mt][e / 2] += s[mt][j][e];
          }
        }
      }

      // O += P V: P (16 × kBlockN per m-tile) as A fragments, V (kBlockN × D) as B.
#pragma unroll
      for (int kk = 0; kk < kNB / 2; ++kk) {
        std::uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) c_pair_to_a_frag(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
        for (int db = 0; db < kDB; db += 2) {
          std::uint32_t bv[4];
          load_b_frag_rows_are_k<kStride>(bv, v_tile, kk * 16, db * 8, lane);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_bf16_16816(o[mt][db], a[mt], bv[0], bv[1]);
            mma_bf16_16816(o[mt][db + 1], a[mt], bv[2], bv[3]);
          }
        }
      }
    }

    // Tile n+1 has landed and every warp is done with buffer n % 2.
    cp_async_wait_all();
    __syncthreads();
  }

  // Full row sums (quad reduction), then out = O / l and lse = scale·max + log l, staged through
  // this warp's own rows of sQ (only this warp ever read them), then whole-row stores.
  const std::int64_t out_stride = static_cast<std::int64_t>(C);   // (B, T, H, D): rows of H·D
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    float inv_sum[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv_sum[r] = l > 0.f ? 1.f / l : 0.f;
      const int query = qw0 + mt * 16 + g + 8 * r;
      if (t == 0 && query < T) lse[static_cast<std::int64_t>(bh) * T + query] = row_max[mt][r] * scale + logf(l);
    }
#pragma unroll
    for (int db = 0; db < kDB; ++db) {
      o[mt][db][0] *= inv_sum[0];
      o[mt][db][1] *= inv_sum[0];
      o[mt][db][2] *= inv_sum[1];
      o[mt][db][3] *= inv_sum[1];
    }
    stage_accumulator<D>(sQ, warp * kWarpRows + mt * 16, o[mt], 1.f, lane);
  }
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
    store_warp_rows<D>(out + static_cast<std::int64_t>(b) * T * out_stride + h * D, out_stride,
                       sQ + (warp * kWarpRows + mt * 16) * kStride, qw0 + mt * 16, T, lane);
}

// ---- backward ----------------------------------------------------------------------------------

// dQ = scale · dS K, dS = P ⊙ (dO Vᵀ − delta), P = exp(scale·Q Kᵀ − lse), for kBlockM queries;
// delta = rowsum(dO ⊙ O) is computed here from sdO and sO (and stored for the dK/dV kernel).
// With soft-capping, P = exp(scale·capped − lse) and dS also carries the slope 1 − tanh².
// grid (B·H, ceil(T / kBlockM)), reversed like the forward; block 128 = 4 warps × 16·kMT query rows;
// the key tiles visited are the forward's.
// dP is computed kChunk key columns at a time (all of the warp's dO fragments stay in registers),
// turned into dS in place of P right away, so only kChunk n-blocks of dP are live at once.
// Shared: sQ (kBlockM, D+8) | sdO (kBlockM, D+8) | sK 2 × (kBlockN, D+8) | sV 2 × (kBlockN, D+8) |
//         sO (kBlockM, D+8).
template <int D, int kMT, int kBlockN, int kChunk, int kMinBlocks, bool kSoftcap, bool kWindow, bool kGrouped>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    attention_backward_dq_mma_kernel(bf16* __restrict__ dqkv,          // (B, T, H·D + 2·Hkv·D), q part written
                                     const bf16* __restrict__ dout,    // (B, T, H, D)
                                     const bf16* __restrict__ qkv,     // (B, T, H·D + 2·Hkv·D)
                                     const bf16* __restrict__ out,     // (B, T, H, D)
                                     const float* __restrict__ lse,    // (B, H, T)
                                     float* __restrict__ delta,        // (B, H, T), written
                                     MmaParams prm) {
  constexpr int kStride = D + kPad;
  constexpr int kWarpRows = kMT * kRowsPerWarp;
  constexpr int kBlockM = kWarps * kWarpRows;
  constexpr int kNB = kBlockN / 8;   // S, dP are 16 × kBlockN per m-tile
  constexpr int kDB = D / 8;         // dQ is 16 × D per m-tile
  constexpr int kDK = D / 16;
  static_assert(kBlockN % 16 == 0 && D % 16 == 0 && kChunk % 2 == 0 && kNB % kChunk == 0);

  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sdO = sQ + kBlockM * kStride;
  bf16* sK = sdO + kBlockM * kStride;
  bf16* sV = sK + 2 * kBlockN * kStride;
  bf16* sO = sV + 2 * kBlockN * kStride;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int T = prm.T, H = prm.H;
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kBlockM;
  const int qw0 = q0 + warp * kWarpRows;
  const int C = H * D;   // columns of out and dout
  const QkvRow row = qkv_row<kGrouped, D>(prm, h);
  const std::int64_t row_stride = row.stride;
  const std::int64_t seq_offset = static_cast<std::int64_t>(b) * T * row_stride + h * D;
  const bf16* q_base = qkv + seq_offset;
  const bf16* k_base = q_base + row.k;
  const bf16* v_base = q_base + row.v;
  const bf16* do_base = dout + static_cast<std::int64_t>(b) * T * C + h * D;
  [[maybe_unused]] const int window = prm.window;
  const int n_begin = kWindow ? max(q0 - window + 1, 0) / kBlockN : 0;   // as in the forward
  const int n_end = min(q0 + kBlockM - 1, T - 1) / kBlockN + 1;

  load_rows_async<kBlockM, D>(sQ, q_base, row_stride, q0, T, tid);
  load_rows_async<kBlockM, D>(sdO, do_base, C, q0, T, tid);
  load_rows_async<kBlockN, D>(sK, k_base, row_stride, n_begin * kBlockN, T, tid);
  load_rows_async<kBlockN, D>(sV, v_base, row_stride, n_begin * kBlockN, T, tid);
  load_rows_async<kBlockM, D>(sO, out + static_cast<std::int64_t>(b) * T * C + h * D, C, q0, T, tid);
  cp_async_commit();

  // Per-row statistics of rows g and g+8 of each m-tile, in log2 units for exp2. Rows past T: 0
  // (their Q and dO are zero, so P = 1 and dS = 0 there; those rows are never written).
  float lse_log2[kMT][2], row_delta[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int query = qw0 + mt * 16 + g + 8 * r;
      const std::int64_t i = static_cast<std::int64_t>(bh) * T + query;
      lse_log2[mt][r] = query < T ? lse[i] * kLog2e : 0.f;
    }

  cp_async_wait_all();
  __syncthreads();

  {
    // delta = rowsum(dO ⊙ O) of rows g and g+8 of each m-tile: lane t of the quad sums the 8-column
    // groups t, t+4, .. in order, then a quad butterfly (fixed order, the same value in all 4 lanes).
    // Rows past T were zero-filled, so their delta is 0. Written out for the dK/dV kernel.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = warp * kWarpRows + mt * 16 + g + 8 * r;
        float acc = 0.f;
#pragma unroll
        for (int c = t * 8; c < D; c += 32) {
          const uint4 dv = *reinterpret_cast<const uint4*>(sdO + row * kStride + c);
          const uint4 ov = *reinterpret_cast<const uint4*>(sO + row * kStride + c);
          const __nv_bfloat162* d2 = reinterpret_cast<const __nv_bfloat162*>(&dv);
          const __nv_bfloat162* o2 = reinterpret_cast<const __nv_bfloat162*>(&ov);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float2 df = __bfloat1622float2(d2[i]);
            const float2 of = __bfloat1622float2(o2[i]);
            acc = fmaf(df.x, of.x, acc);
            acc = fmaf(df.y, of.y, acc);
          }
        }
        acc += __shfl_xor_sync(0xffffffffu, acc, 1);
        acc += __shfl_xor_sync(0xffffffffu, acc, 2);
        row_delta[mt][r] = acc;
        const int query = qw0 + mt * 16 + g + 8 * r;
        if (t == 0 && query < T) delta[static_cast<std::int64_t>(bh) * T + query] = acc;
      }
  }

  std::uint32_t q_frag[kMT][kDK][4], do_frag[kMT][kDK][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int kk = 0; kk < kDK; ++kk) {
      load_a_frag<kStride>(q_frag[mt][kk], smem_addr(sQ), warp * kWarpRows + mt * 16, kk * 16, lane);
      load_a_frag<kStride>(do_frag[mt][kk], smem_addr(sdO), warp * kWarpRows + mt * 16, kk * 16, lane);
    }

  float dq[kMT][kDB][4] = {};
  const float scale = prm.scale;
  const float scale_log2 = scale * kLog2e;

  for (int n = n_begin; n < n_end; ++n) {
    const int buf = (n - n_begin) % 2;
    if (n + 1 < n_end) {
      const int next = 1 - buf;
      load_rows_async<kBlockN, D>(sK + next * kBlockN * kStride, k_base, row_stride, (n + 1) * kBlockN, T, tid);
      load_rows_async<kBlockN, D>(sV + next * kBlockN * kStride, v_base, row_stride, (n + 1) * kBlockN, T, tid);
      cp_async_commit();
    }
    const std::uint32_t k_tile = smem_addr(sK + buf * kBlockN * kStride);
    const std::uint32_t v_tile = smem_addr(sV + buf * kBlockN * kStride);
    const int n0 = n * kBlockN;

    // Warp-uniform: the tile is not wholly masked for this warp (as in the forward).
    if (n0 <= qw0 + kWarpRows - 1 && (!kWindow || n0 + kBlockN - 1 > qw0 - window)) {
      // P = exp(scale·Q Kᵀ − lse): p[mt][j][e] is row mt·16 + g + 8·(e/2), key n0 + 8j + 2t + e%2.
      float p[kMT][kNB][4] = {};
#pragma unroll
      for (int kk = 0; kk < kDK; ++kk) {
#pragma unroll
        for (int nb = 0; nb < kNB; nb += 2) {
          std::uint32_t bk[4];
          load_b_frag_rows_are_n<kStride>(bk, k_tile, nb * 8, kk * 16, lane);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_bf16_16816(p[mt][nb], q_frag[mt][kk], bk[0], bk[1]);
            mma_bf16_16816(p[mt][nb + 1], q_frag[mt][kk], bk[2], bk[3]);
          }
        }
      }
      const bool masked_tile = n0 + kBlockN - 1 > qw0;
      const bool window_edge = kWindow && n0 <= qw0 + kWarpRows - 1 - window;   // as in the forward
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int j = 0; j < kNB; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if constexpr (kSoftcap) {
              // P times the cap's slope: P itself is not needed here, only dS = P ⊙ (dP − delta) ⊙ slope.
              const float u = softcap_raw(p[mt][j][e], prm);
              p[mt][j][e] = fast_exp2(fmaf(u, scale_log2, -lse_log2[mt][e / 2])) * softcap_slope(u, prm);
            } else {
              p[mt][j][e] = fast_exp2(fmaf(p[mt][j][e], scale_log2, -lse_log2[mt][e / 2]));
            }
            if (masked_tile && n0 + j * 8 + 2 * t + (e % 2) > qw0 + mt * 16 + g + 8 * (e / 2)) p[mt][j][e] = 0.f;
            if (window_edge && qw0 + mt * 16 + g + 8 * (e / 2) - (n0 + j * 8 + 2 * t + (e % 2)) >= window)
              p[mt][j][e] = 0.f;
          }

      // dP = dO Vᵀ, kChunk n-blocks at a time, then dS = P ⊙ (dP − delta) in place of P.
#pragma unroll
      for (int c = 0; c < kNB; c += kChunk) {
        float dp[kMT][kChunk][4] = {};
#pragma unroll
        for (int kk = 0; kk < kDK; ++kk) {
#pragma unroll
          for (int j = 0; j < kChunk; j += 2) {
            std::uint32_t bv[4];
            load_b_frag_rows_are_n<kStride>(bv, v_tile, (c + j) * 8, kk * 16, lane);
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
              mma_bf16_16816(dp[mt][j], do_frag[mt][kk], bv[0], bv[1]);
              mma_bf16_16816(dp[mt][j + 1], do_frag[mt][kk], bv[2], bv[3]);
            }
          }
        }
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int j = 0; j < kChunk; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              p[mt][c + j][e] = p[mt][c + j][e] * (dp[mt][j][e] - row_delta[mt][e / 2]);
      }

      // dQ += dS K (scale applied once at the end).
#pragma unroll
      for (int kk = 0; kk < kNB / 2; ++kk) {
        std::uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) c_pair_to_a_frag(a[mt], p[mt][2 * kk], p[mt][2 * kk + 1]);
#pragma unroll
        for (int db = 0; db < kDB; db += 2) {
          std::uint32_t bk[4];
          load_b_frag_rows_are_k<kStride>(bk, k_tile, kk * 16, db * 8, lane);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_bf16_16816(dq[mt][db], a[mt], bk[0], bk[1]);
            mma_bf16_16816(dq[mt][db + 1], a[mt], bk[2], bk[3]);
          }
        }
      }
    }

    cp_async_wait_all();
    __syncthreads();
  }

#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) stage_accumulator<D>(sQ, warp * kWarpRows + mt * 16, dq[mt], scale, lane);
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
    store_warp_rows<D>(dqkv + seq_offset, row_stride, sQ + (warp * kWarpRows + mt * 16) * kStride, qw0 + mt * 16, T,
                       lane);
}

// dK = scale · dSᵀ Q and dV = Pᵀ dO for kBlockK = 64·kMT keys (16·kMT per warp), looping over the
// query tiles at or after them; the products are computed transposed (keys as rows) so the key rows
// stay the m dimension: Sᵀ = K Qᵀ, Pᵀ = exp(scale·Sᵀ − lse(column)), dPᵀ = V dOᵀ,
// dSᵀ = Pᵀ ⊙ (dPᵀ − delta(column)) (⊙ the cap's slope with soft-capping). The block visits the query
// tiles of its band (to the one holding the last query that sees its last key, with a window; else
// to the last) and a warp skips tiles wholly outside its own band.
// Grouped-query attention: the block belongs to one kv head and runs this loop over the query heads
// of its group in order, one after another (the pipeline runs on across them), accumulating dK and
// dV in registers: the group's sum with no atomics, in a fixed order.
// grid (B·Hkv, ceil(T / kBlockK)); key tile blockIdx.y, so the longest (first) tiles start first.
// Shared: sK (kBlockK, D+8) | sV (kBlockK, D+8) | sQ 2 × (kBlockM, D+8) | sdO 2 × (kBlockM, D+8)
//         bf16 | s_lse 2 × kBlockM | s_delta 2 × kBlockM fp32.
// kKVInRegs: keep this warp's K and V rows as A fragments in registers; else they are re-read from
// shared memory each query tile to leave registers for the dK and dV accumulators. dPᵀ is computed
// kChunk query columns at a time.
template <int D, int kMT, int kBlockM, bool kKVInRegs, int kChunk, int kMinBlocks, bool kSoftcap, bool kWindow>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    attention_backward_dkdv_mma_kernel(bf16* __restrict__ dqkv,          // (B, T, H·D + 2·Hkv·D), k and v parts
                                       const bf16* __restrict__ dout,    // (B, T, H, D)
                                       const bf16* __restrict__ qkv,     // (B, T, H·D + 2·Hkv·D)
                                       const float* __restrict__ lse,    // (B, H, T)
                                       const float* __restrict__ delta,  // (B, H, T)
                                       MmaParams prm) {
  constexpr int kStride = D + kPad;
  constexpr int kWarpRows = kMT * kRowsPerWarp;
  constexpr int kBlockK = kWarps * kWarpRows;
  constexpr int kNB = kBlockM / 8;   // Sᵀ, dPᵀ are 16 × kBlockM per m-tile
  constexpr int kDB = D / 8;         // dK, dV are 16 × D per m-tile
  constexpr int kDK = D / 16;
  static_assert(kBlockM % 16 == 0 && D % 16 == 0 && kChunk % 2 == 0 && kNB % kChunk == 0);

  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + kBlockK * kStride;
  bf16* sQ = sV + kBlockK * kStride;
  bf16* sdO = sQ + 2 * kBlockM * kStride;
  float* s_lse = reinterpret_cast<float*>(sdO + 2 * kBlockM * kStride);
  float* s_delta = s_lse + 2 * kBlockM;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int T = prm.T, H = prm.H, Hkv = prm.Hkv, group = H / Hkv;
  const int bkv = blockIdx.x, b = bkv / Hkv, kv = bkv % Hkv;
  const int k0 = blockIdx.y * kBlockK;         // first key of the block
  const int kw0 = k0 + warp * kWarpRows;       // first key of this warp
  const int C = H * D;                         // columns of dout
  const std::int64_t row_stride = static_cast<std::int64_t>(H + 2 * Hkv) * D;
  const std::int64_t seq_offset = static_cast<std::int64_t>(b) * T * row_stride;
  const bf16* k_base = qkv + seq_offset + (H + kv) * D;
  const bf16* v_base = qkv + seq_offset + (H + Hkv + kv) * D;
  [[maybe_unused]] const int window = prm.window;

  // Query tiles from the one holding key k0 to the last (with a window: to the one holding the last
  // query that sees the block's last key).
  const int m_first = k0 / kBlockM;
  const int m_end = (kWindow ? min(k0 + kBlockK - 1 + window - 1, T - 1) : T - 1) / kBlockM + 1;

  // Query tile m of query head kv·group + hg: Q, dO, lse and delta rows into buffer buf.
  auto load_query_tile = [&](int hg, int m, int buf) {
    const int h = kv * group + hg;
    const std::int64_t bh = static_cast<std::int64_t>(b) * H + h;
    const int m0 = m * kBlockM;
    load_rows_async<kBlockM, D>(sQ + buf * kBlockM * kStride, qkv + seq_offset + h * D, row_stride, m0, T, tid);
    load_rows_async<kBlockM, D>(sdO + buf * kBlockM * kStride, dout + static_cast<std::int64_t>(b) * T * C + h * D,
                                C, m0, T, tid);
    load_vector_async<kBlockM>(s_lse + buf * kBlockM, lse + bh * T, m0, T, tid);
    load_vector_async<kBlockM>(s_delta + buf * kBlockM, delta + bh * T, m0, T, tid);
  };

  load_rows_async<kBlockK, D>(sK, k_base, row_stride, k0, T, tid);
  load_rows_async<kBlockK, D>(sV, v_base, row_stride, k0, T, tid);
  load_query_tile(0, m_first, 0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  // This warp's key rows as A fragments (registers, or re-read from shared memory per tile).
  std::uint32_t k_frag[kKVInRegs ? kMT : 1][kKVInRegs ? kDK : 1][4];
  std::uint32_t v_frag[kKVInRegs ? kMT : 1][kKVInRegs ? kDK : 1][4];
  if constexpr (kKVInRegs) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int kk = 0; kk < kDK; ++kk) {
        load_a_frag<kStride>(k_frag[mt][kk], smem_addr(sK), warp * kWarpRows + mt * 16, kk * 16, lane);
        load_a_frag<kStride>(v_frag[mt][kk], smem_addr(sV), warp * kWarpRows + mt * 16, kk * 16, lane);
      }
  }

  float dk[kMT][kDB][4] = {}, dv[kMT][kDB][4] = {};
  const float scale = prm.scale;
  const float scale_log2 = scale * kLog2e;

  // (hg, m) runs over the group's heads, and for each over query tiles m_first..m_end-1; the
  // prefetch of the next pair crosses from one head to the next.
  const int iterations = group * (m_end - m_first);
  int hg = 0, m = m_first;
  for (int it = 0; it < iterations; ++it) {
    const int buf = it % 2;
    int next_hg = hg, next_m = m + 1;
    if (next_m == m_end) {   // the next head of the group, from its first tile
      next_hg = hg + 1;
      next_m = m_first;
    }
    if (it + 1 < iterations) {
      load_query_tile(next_hg, next_m, 1 - buf);
      cp_async_commit();
    }
    const std::uint32_t q_tile = smem_addr(sQ + buf * kBlockM * kStride);
    const std::uint32_t do_tile = smem_addr(sdO + buf * kBlockM * kStride);
    const float* lse_tile = s_lse + buf * kBlockM;
    const float* delta_tile = s_delta + buf * kBlockM;
    const int m0 = m * kBlockM;

    // Warp-uniform: some query of the tile sees a key of the warp (none before its first key, and
    // with a window none after the last query that sees its last key).
    if (m0 + kBlockM - 1 >= kw0 && (!kWindow || m0 < kw0 + kWarpRows - 1 + window)) {
      // Sᵀ = K Qᵀ: p[mt][j][e] is key mt·16 + g + 8·(e/2), query m0 + 8j + 2t + e%2.
      float p[kMT][kNB][4] = {};
#pragma unroll
      for (int kk = 0; kk < kDK; ++kk) {
        std::uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (kKVInRegs) {
#pragma unroll
            for (int i = 0; i < 4; ++i) a[mt][i] = k_frag[mt][kk][i];
          } else {
            load_a_frag<kStride>(a[mt], smem_addr(sK), warp * kWarpRows + mt * 16, kk * 16, lane);
          }
        }
#pragma unroll
        for (int nb = 0; nb < kNB; nb += 2) {
          std::uint32_t bq[4];
          load_b_frag_rows_are_n<kStride>(bq, q_tile, nb * 8, kk * 16, lane);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_bf16_16816(p[mt][nb], a[mt], bq[0], bq[1]);
            mma_bf16_16816(p[mt][nb + 1], a[mt], bq[2], bq[3]);
          }
        }
      }

      // Pᵀ = exp(scale·Sᵀ − lse). Mask where query < key (only tiles reaching below this warp's
      // last key) and queries at or past T (ragged last tile; their lse was zero-filled); with a
      // window also where query − key ≥ W (only tiles reaching past the band's far edge).
      // With soft-capping p keeps the capped score instead (−inf where masked): the dS step below
      // needs it for the slope, so P is computed from it twice (for dV, and again for dS) rather
      // than kept in a second array of registers.
      const bool masked_tile = m0 < kw0 + kWarpRows - 1 || m0 + kBlockM > T;
      const bool window_edge = kWindow && m0 + kBlockM - 1 - kw0 >= window;
      constexpr float kMasked = kSoftcap ? -kInf : 0.f;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int j = 0; j < kNB; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = j * 8 + 2 * t + (e % 2);
            const int query = m0 + col;
            const int key = kw0 + mt * 16 + g + 8 * (e / 2);
            if constexpr (kSoftcap) p[mt][j][e] = softcap_raw(p[mt][j][e], prm);
            else p[mt][j][e] = fast_exp2(fmaf(p[mt][j][e], scale_log2, -lse_tile[col] * kLog2e));
            if (masked_tile && (query < key || query >= T)) p[mt][j][e] = kMasked;
            if (window_edge && query - key >= window) p[mt][j][e] = kMasked;
          }
      // P of element (j, e) from the capped score (kSoftcap only).
      auto prob = [&](float capped, int j, int e) {
        return fast_exp2(fmaf(capped, scale_log2, -lse_tile[j * 8 + 2 * t + (e % 2)] * kLog2e));
      };

      // dV += Pᵀ dO.
#pragma unroll
      for (int kk = 0; kk < kNB / 2; ++kk) {
        std::uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (kSoftcap) {
            float p0[4], p1[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              p0[e] = prob(p[mt][2 * kk][e], 2 * kk, e);
              p1[e] = prob(p[mt][2 * kk + 1][e], 2 * kk + 1, e);
            }
            c_pair_to_a_frag(a[mt], p0, p1);
          } else {
            c_pair_to_a_frag(a[mt], p[mt][2 * kk], p[mt][2 * kk + 1]);
          }
        }
#pragma unroll
        for (int db = 0; db < kDB; db += 2) {
          std::uint32_t bo[4];
          load_b_frag_rows_are_k<kStride>(bo, do_tile, kk * 16, db * 8, lane);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_bf16_16816(dv[mt][db], a[mt], bo[0], bo[1]);
            mma_bf16_16816(dv[mt][db + 1], a[mt], bo[2], bo[3]);
          }
        }
      }

      // dPᵀ = V dOᵀ, kChunk n-blocks at a time, then dSᵀ = Pᵀ ⊙ (dPᵀ − delta) in place of Pᵀ.
#pragma unroll
      for (int c = 0; c < kNB; c += kChunk) {
        float dp[kMT][kChunk][4] = {};
#pragma unroll
        for (int kk = 0; kk < kDK; ++kk) {
          std::uint32_t a[kMT][4];
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            if constexpr (kKVInRegs) {
#pragma unroll
              for (int i = 0; i < 4; ++i) a[mt][i] = v_frag[mt][kk][i];
            } else {
              load_a_frag<kStride>(a[mt], smem_addr(sV), warp * kWarpRows + mt * 16, kk * 16, lane);
            }
          }
#pragma unroll
          for (int j = 0; j < kChunk; j += 2) {
            std::uint32_t bo[4];
            load_b_frag_rows_are_n<kStride>(bo, do_tile, (c + j) * 8, kk * 16, lane);
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
              mma_bf16_16816(dp[mt][j], a[mt], bo[0], bo[1]);
              mma_bf16_16816(dp[mt][j + 1], a[mt], bo[2], bo[3]);
            }
          }
        }
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int j = 0; j < kChunk; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float ddp = dp[mt][j][e] - delta_tile[(c + j) * 8 + 2 * t + (e % 2)];
              if constexpr (kSoftcap) {
                const float u = p[mt][c + j][e];
                p[mt][c + j][e] = prob(u, c + j, e) * ddp * softcap_slope(u, prm);
              } else {
                p[mt][c + j][e] = p[mt][c + j][e] * ddp;
              }
            }
      }

      // dK += dSᵀ Q (scale applied once at the end).
#pragma unroll
      for (int kk = 0; kk < kNB / 2; ++kk) {
        std::uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) c_pair_to_a_frag(a[mt], p[mt][2 * kk], p[mt][2 * kk + 1]);
#pragma unroll
        for (int db = 0; db < kDB; db += 2) {
          std::uint32_t bq[4];
          load_b_frag_rows_are_k<kStride>(bq, q_tile, kk * 16, db * 8, lane);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_bf16_16816(dk[mt][db], a[mt], bq[0], bq[1]);
            mma_bf16_16816(dk[mt][db + 1], a[mt], bq[2], bq[3]);
          }
        }
      }
    }

    cp_async_wait_all();
    __syncthreads();
    hg = next_hg;
    m = next_m;
  }

  // Stage through this warp's own rows of sK and sV (read by this warp only), then store.
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    stage_accumulator<D>(sK, warp * kWarpRows + mt * 16, dk[mt], scale, lane);
    stage_accumulator<D>(sV, warp * kWarpRows + mt * 16, dv[mt], 1.f, lane);
  }
  __syncwarp();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    const int r0 = warp * kWarpRows + mt * 16;
    store_warp_rows<D>(dqkv + seq_offset + (H + kv) * D, row_stride, sK + r0 * kStride, kw0 + mt * 16, T, lane);
    store_warp_rows<D>(dqkv + seq_offset + (H + Hkv + kv) * D, row_stride, sV + r0 * kStride, kw0 + mt * 16, T,
                       lane);
  }
}

// ---- host side ---------------------------------------------------------------------------------

// Shape checks shared by forward and backward; the kernels' parameters. The variant flags
// (soft-capping on, a window narrower than T) pick the kernel instantiation.
struct Launch {
  MmaParams p;
  int BH = 0, BHkv = 0;
  bool softcap = false, window = false, grouped = false;
};

Launch check_shape(const GpuAttentionShape& s, const char* op) {
  check_attention_shape(s, op);
  SLM_CHECK(attention_mma_supported(s.D), op, ": D = ", s.D, " has no mma kernel");
  const std::int64_t tiles = (s.T + kMinTileRows - 1) / kMinTileRows;   // the most tiles any kernel uses
  constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
  // Positions within a sequence (up to 2·T with a window's reach) and column offsets (up to
  // (H + 2·Hkv)·D) are ints in the kernels; token offsets are 64-bit. gridDim.y (query or key
  // tiles) is limited to 65535.
  if (s.B * s.H > kIntMax || 2 * s.T > kIntMax || s.qkv_row() > kIntMax || tiles > 65535) {
    fail(op, ": shape B=", s.B, " T=", s.T, " H=", s.H, " Hkv=", s.kv_heads(), " D=", s.D,
         " is too large for the mma kernels' grid");
  }
  Launch l;
  const bool windowed = s.window > 0 && s.window < s.T;
  const float scale = 1.f / std::sqrt(static_cast<float>(s.D));
  l.p = MmaParams{.T = static_cast<int>(s.T),
                  .H = static_cast<int>(s.H),
                  .Hkv = static_cast<int>(s.kv_heads()),
                  .window = static_cast<int>(windowed ? s.window : s.T),
                  .scale = scale,
                  .cap_raw = s.softcap > 0 ? s.softcap / scale : 0.f,
                  .inv_cap_raw = s.softcap > 0 ? scale / s.softcap : 0.f,
                  .tanh_k = s.softcap > 0 ? 2.f * kLog2e * scale / s.softcap : 0.f};
  l.BH = static_cast<int>(s.B * s.H);
  l.BHkv = static_cast<int>(s.B * s.kv_heads());
  l.softcap = s.softcap > 0;
  l.window = windowed;
  l.grouped = s.kv_heads() != s.H;
  return l;
}

void check_aligned(const void* p, const char* what) {
  SLM_CHECK(reinterpret_cast<std::uintptr_t>(p) % 16 == 0, what, " must be 16-byte aligned for cp.async");
}

// Opt in to more than 48 KiB of dynamic shared memory. Set on every launch (a cheap driver call)
// rather than once, so it holds on whichever device is current.
template <typename Kernel>
void set_smem(Kernel kernel, std::size_t bytes) {
  SLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

unsigned tiles_of(int T, int rows) { return static_cast<unsigned>((T + rows - 1) / rows); }

// Calls f(bool_constant<softcap>, bool_constant<window>, bool_constant<grouped>): the variant as
// template arguments.
template <typename F>
void with_variant(const Launch& l, F&& f) {
  auto grouped = [&](auto sc, auto w) {
    if (l.grouped) f(sc, w, std::true_type{});
    else f(sc, w, std::false_type{});
  };
  auto window = [&](auto sc) {
    if (l.window) grouped(sc, std::true_type{});
    else grouped(sc, std::false_type{});
  };
  if (l.softcap) window(std::true_type{});
  else window(std::false_type{});
}

template <int D, int kMT, int kBlockN, bool kQInRegs, int kMinBlocks, bool kSoftcap, bool kWindow, bool kGrouped>
void forward_cfg(bf16* out, float* lse, const bf16* qkv, const Launch& l, cudaStream_t stream) {
  constexpr int kBlockM = kWarps * kRowsPerWarp * kMT;
  constexpr std::size_t smem = static_cast<std::size_t>(kBlockM + 4 * kBlockN) * (D + kPad) * sizeof(bf16);
  auto kernel = attention_forward_mma_kernel<D, kMT, kBlockN, kQInRegs, kMinBlocks, kSoftcap, kWindow, kGrouped>;
  set_smem(kernel, smem);
  kernel<<<dim3(l.BH, tiles_of(l.p.T, kBlockM)), kThreads, smem, stream>>>(out, lse, qkv, l.p);
  SLM_CUDA_LAUNCH_CHECK();
}

template <int D, int kMT, int kBlockN, int kChunk, int kMinBlocks, bool kSoftcap, bool kWindow, bool kGrouped>
void dq_cfg(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse, float* delta,
            const Launch& l, cudaStream_t stream) {
  constexpr int kBlockM = kWarps * kRowsPerWarp * kMT;
  constexpr std::size_t smem =
      static_cast<std::size_t>(3 * kBlockM + 4 * kBlockN) * (D + kPad) * sizeof(bf16);
  auto kernel = attention_backward_dq_mma_kernel<D, kMT, kBlockN, kChunk, kMinBlocks, kSoftcap, kWindow, kGrouped>;
  set_smem(kernel, smem);
  kernel<<<dim3(l.BH, tiles_of(l.p.T, kBlockM)), kThreads, smem, stream>>>(dqkv, dout, qkv, out, lse, delta, l.p);
  SLM_CUDA_LAUNCH_CHECK();
}

template <int D, int kMT, int kBlockM, bool kKVInRegs, int kChunk, int kMinBlocks, bool kSoftcap, bool kWindow>
void dkdv_cfg(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* delta, const Launch& l,
              cudaStream_t stream) {
  constexpr int kBlockK = kWarps * kRowsPerWarp * kMT;
  constexpr std::size_t smem = static_cast<std::size_t>(2 * kBlockK + 4 * kBlockM) * (D + kPad) * sizeof(bf16) +
                               4 * kBlockM * sizeof(float);
  auto kernel = attention_backward_dkdv_mma_kernel<D, kMT, kBlockM, kKVInRegs, kChunk, kMinBlocks, kSoftcap, kWindow>;
  set_smem(kernel, smem);
  kernel<<<dim3(l.BHkv, tiles_of(l.p.T, kBlockK)), kThreads, smem, stream>>>(dqkv, dout, qkv, lse, delta, l.p);
  SLM_CUDA_LAUNCH_CHECK();
}

template <int D>
void launch_forward(bf16* out, float* lse, const bf16* qkv, const Launch& l, cudaStream_t stream) {
  using F = typename MmaTiles<D>::Forward;
  with_variant(l, [&](auto softcap, auto window, auto grouped) {
    forward_cfg<D, F::kMT, F::kBlockN, F::kQInRegs, F::kMinBlocks, decltype(softcap)::value, decltype(window)::value,
                decltype(grouped)::value>(out, lse, qkv, l, stream);
  });
}

template <int D>
void launch_backward(bf16* dqkv, float* delta, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse,
                     const Launch& l, cudaStream_t stream) {
  // dQ first: it also writes delta = rowsum(dO ⊙ O), which the dK/dV kernel reads.
  using Q = typename MmaTiles<D>::Dq;
  using K = typename MmaTiles<D>::Dkdv;
  // dK/dV loops over a group's heads at run time: grouping changes only its grid and loop count.
  with_variant(l, [&](auto softcap, auto window, auto grouped) {
    constexpr bool kSoftcap = decltype(softcap)::value, kWindow = decltype(window)::value;
    dq_cfg<D, Q::kMT, Q::kBlockN, Q::kChunk, Q::kMinBlocks, kSoftcap, kWindow, decltype(grouped)::value>(
        dqkv, dout, qkv, out, lse, delta, l, stream);
    dkdv_cfg<D, K::kMT, K::kBlockM, K::kKVInRegs, K::kChunk, K::kMinBlocks, kSoftcap, kWindow>(dqkv, dout, qkv, lse,
                                                                                              delta, l, stream);
  });
}

}  // namespace

bool attention_mma_supported(std::int64_t D) { return D == 32 || D == 64 || D == 128; }

namespace {
// SCRATCHLM_ATTENTION: unset, empty or "auto" lets each entry point pick its kernel (wgmma where it
// applies); "mma" runs mma.sync everywhere (for comparisons, and a way out should a wgmma kernel
// misbehave on some driver).
bool forced_mma_sync() {
  const char* e = std::getenv("SCRATCHLM_ATTENTION");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "auto") == 0) return false;
  if (std::strcmp(e, "mma") == 0) return true;
  fail("SCRATCHLM_ATTENTION = '", e, "' must be 'auto' or 'mma'");
}
}  // namespace

void attention_forward_mma(Bf16* out, float* lse, const Bf16* qkv, const GpuAttentionShape& s, CUstream_st* stream) {
  check_attention_shape(s, "attention_forward_mma");
  if (!forced_mma_sync() && attention_wgmma_supported(s)) attention_forward_wgmma(out, lse, qkv, s, stream);
  else attention_forward_mma_sync(out, lse, qkv, s, stream);
}

void attention_forward_mma_sync(Bf16* out, float* lse, const Bf16* qkv, const GpuAttentionShape& s,
                                CUstream_st* stream) {
  const Launch l = check_shape(s, "attention_forward_mma_sync");
  check_aligned(out, "out");
  check_aligned(qkv, "qkv");
  bf16* o = reinterpret_cast<bf16*>(out);
  const bf16* x = reinterpret_cast<const bf16*>(qkv);
  switch (s.D) {
    case 32: launch_forward<32>(o, lse, x, l, stream); break;
    case 64: launch_forward<64>(o, lse, x, l, stream); break;
    case 128: launch_forward<128>(o, lse, x, l, stream); break;
  }
}

void attention_backward_mma(Bf16* dqkv, float* scratch, const Bf16* dout, const Bf16* qkv, const Bf16* out,
                            const float* lse, const GpuAttentionShape& s, CUstream_st* stream) {
  check_attention_shape(s, "attention_backward_mma");
  if (!forced_mma_sync() && attention_wgmma_supported(s)) attention_backward_wgmma(dqkv, scratch, dout, qkv, out, lse, s, stream);
  else attention_backward_mma_sync(dqkv, scratch, dout, qkv, out, lse, s, stream);
}

void attention_backward_mma_sync(Bf16* dqkv, float* delta, const Bf16* dout, const Bf16* qkv, const Bf16* out,
                                 const float* lse, const GpuAttentionShape& s, CUstream_st* stream) {
  const Launch l = check_shape(s, "attention_backward_mma_sync");
  check_aligned(dqkv, "dqkv");
  check_aligned(dout, "dout");
  check_aligned(qkv, "qkv");
  check_aligned(out, "out");
  bf16* dx = reinterpret_cast<bf16*>(dqkv);
  const bf16* dy = reinterpret_cast<const bf16*>(dout);
  const bf16* x = reinterpret_cast<const bf16*>(qkv);
  const bf16* y = reinterpret_cast<const bf16*>(out);
  switch (s.D) {
    case 32: launch_backward<32>(dx, delta, dy, x, y, lse, l, stream); break;
    case 64: launch_backward<64>(dx, delta, dy, x, y, lse, l, stream); break;
    case 128: launch_backward<128>(dx, delta, dy, x, y, lse, l, stream); break;
  }
}

}  // namespace scratchlm
