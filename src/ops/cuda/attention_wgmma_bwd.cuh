// Flash-attention backward on Hopper instructions (sm_90a): wgmma products and TMA loads through
// the forward's producer/consumer rings (attention_wgmma.cuh). It passed the lab's `bwd` stage on an
// H200 (bench/attention/WGMMA_NOTES.md); the library runs it through attention_backward_mma
// (attention_wgmma.cu picks the configurations).
// Semantics are attention_backward_mma's: qkv (B, T, 3, H, D), out, dout (B, T, H, D), lse (B, H, T)
// from the forward; dqkv (B, T, 3, H, D), every element written. S = Q Kᵀ·scale, P = exp(S − lse),
// dV = Pᵀ dO, dP = dO Vᵀ, delta = rowsum(dO ⊙ O), dS = P ⊙ (dP − delta), dQ = scale·dS K,
// dK = scale·dSᵀ Q. No atomics: each output element is summed by one thread in a fixed order, so
// results repeat bit for bit.
//
// Three kernels:
//   bwd_stats_kernel   lse2 = lse·log2 e and delta = rowsum(dO ⊙ O) (fp32, fixed order) into a
//                      scratch of (B·H, Tp) each, Tp = T rounded up to kStatPad rows, rows ≥ T
//                      set to lse2 = +inf and delta = 0: then P = exp2(S·scale·log2 e − lse2) is
//                      exactly 0 for the zero-filled query rows past T (never NaN: S is 0 there),
//                      dS = 0·(0 − 0) = 0, and the padded rows can be bulk-copied as whole tiles.
//   dkdv kernel        one block per (b, h, 64·kWG keys); K, V of the block resident in shared
//                      memory; a TMA ring of (Q, dO, lse2, delta) query tiles of kBlockM rows; each
//                      consumer warpgroup owns 64 keys and accumulates dK, dV (64 × D fp32 each) in
//                      registers over the query tiles at or after its keys (causal) or all.
//   dq kernel          one block per (b, h, 64·kWG queries); Q, dO, lse2, delta of the block resident;
//                      a TMA ring of (K, V) key tiles of kBlockN rows; each consumer warpgroup owns
//                      64 queries and accumulates dQ (64 × D) over the key tiles at or before them.
//
// The products, their operands and majorness (wgmma: A is M × K, B is N × K in "K-major" form when
// its K dimension is contiguous in shared memory, else MN-major = the transpose bit; A from
// registers is always K-major). Tiles are HeadTile<D>: rows of D contiguous bf16.
//   dkdv, per query tile (keys of the warpgroup = M = 64):
//     Sᵀ  (64 × kBlockM) = K_c Qᵀ     A = K rows (K-major: D contiguous), B = Q tile (N = queries,
//                                      K = D contiguous: K-major)            = the forward's Q Kᵀ
//     dPᵀ (64 × kBlockM) = V_c dOᵀ    A = V rows (K-major), B = dO tile (K-major)   same form
//     dV  (64 × D)  += Pᵀ dO          A = Pᵀ from registers (the Sᵀ accumulator packed to bf16),
//                                      B = dO tile with K = queries (rows), N = D contiguous:
//                                      MN-major, LBO = sub-tile step of a kBlockM-row tile
//                                                                             = the forward's P V
//     dK  (64 × D)  += dSᵀ Q          A = dSᵀ from registers, B = Q tile MN-major   same form
//   dq, per key tile (queries of the warpgroup = M = 64):
//     S  (64 × kBlockN) = Q_c Kᵀ      A = Q rows, B = K tile, both K-major   = the forward's Q Kᵀ
//     dP (64 × kBlockN) = dO_c Vᵀ     A = dO rows, B = V tile, both K-major   same form
//     dQ (64 × D)   += dS K           A = dS from registers, B = K tile with K = keys (rows),
//                                      N = D contiguous: MN-major (as V in the forward's P V)
// So every product is one of the two forms the lab's gemm stage checks (issue_qk: SS, both
// K-major; issue_pv: RS, B MN-major), with N or K = kBlockM / kBlockN ∈ {64, 128}.
//
// Per tile, a consumer warpgroup issues the two "score" products (two commit groups), waits for the
// first (wait_group 1), computes P while the second runs, issues the first "gradient" product
// (dkdv: dV; its P fragments stay untouched until the final wait), waits for the second score
// product, computes dS, issues the last product, waits for everything (wait_group 0) and releases
// the ring slot (one arrival per warp). wgmma groups complete in issue order, which is what the
// wait_group counts rely on.
// Causal masking: dkdv masks query < key on the tiles that cross the diagonal of its keys and skips
// (but still consumes and releases) tiles wholly before them; dq masks key > query and key ≥ T on
// the tiles that need it and skips tiles wholly after its rows. Keys ≥ T are zero rows of K and V:
// in dkdv they produce only rows of dK, dV that are never stored; in dq they are masked (their
// K rows would contribute 0 anyway).
#pragma once

#include "ops/cuda/attention_wgmma.cuh"

namespace scratchlm::wgmma {
inline namespace SCRATCHLM_WGMMA_TU {

constexpr int kStatPad = 384;   // lse2/delta rows padded to a multiple of every tile (64, 128, 192)
__host__ __device__ inline int bwd_padded_T(int T) { return (T + kStatPad - 1) / kStatPad * kStatPad; }
// Floats of scratch the backward needs: lse2 and delta, (B·H, Tp) each.
inline std::size_t bwd_scratch_floats(int B, int H, int T) {
  return 2 * static_cast<std::size_t>(B) * H * static_cast<std::size_t>(bwd_padded_T(T));
}

// Watchdog tags of the backward's waits: role · 1e6 + tile index.
enum BwdWaitTag : int {
  kTagDkdvKV = 11000000, kTagDkdvFull = 12000000, kTagDkdvEmpty = 13000000,
  kTagDqQ = 21000000, kTagDqFull = 22000000, kTagDqEmpty = 23000000,
};

// ---- stats: lse2 and delta -------------------------------------------------------------------------

// grid (B·H, Tp / 32), block 256: 32 rows, 8 lanes per row, each lane D/8 contiguous columns
// (16-byte loads), summed in order and then over the 8 lanes by a fixed butterfly.
template <int D>
__global__ void __launch_bounds__(256) bwd_stats_kernel(float* __restrict__ lse2, float* __restrict__ delta,
                                                        const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                                        const float* __restrict__ lse, int T, int Tp, int H) {
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int row = blockIdx.y * 32 + threadIdx.x / 8, lane8 = threadIdx.x % 8;
  constexpr int kPer = D / 8;   // columns per lane: 8 or 16
  float acc = 0.f;
  if (row < T) {
    const std::int64_t off = (static_cast<std::int64_t>(b) * T + row) * H * D + static_cast<std::int64_t>(h) * D +
                             lane8 * kPer;
#pragma unroll
    for (int c = 0; c < kPer; c += 8) {
      const uint4 ov = *reinterpret_cast<const uint4*>(out + off + c);
      const uint4 dv = *reinterpret_cast<const uint4*>(dout + off + c);
      const __nv_bfloat162* o2 = reinterpret_cast<const __nv_bfloat162*>(&ov);
      const __nv_bfloat162* d2 = reinterpret_cast<const __nv_bfloat162*>(&dv);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 of = __bfloat1622float2(o2[i]), df = __bfloat1622float2(d2[i]);
        acc = fmaf(df.x, of.x, acc);
        acc = fmaf(df.y, of.y, acc);
      }
    }
  }
  acc += __shfl_xor_sync(0xffffffffu, acc, 4);
  acc += __shfl_xor_sync(0xffffffffu, acc, 2);
  acc += __shfl_xor_sync(0xffffffffu, acc, 1);
  if (lane8 == 0 && row < Tp) {
    const std::int64_t i = static_cast<std::int64_t>(bh) * Tp + row;
    lse2[i] = row < T ? lse[static_cast<std::int64_t>(bh) * T + row] * 1.4426950408889634f : kInf;
    delta[i] = row < T ? acc : 0.f;
  }
}

// Stores a 64 × D fp32 accumulator (times `mul`) as bf16 rows of a (B, T, row_elems) tensor at
// column col: this thread's rows first_row + 16w + g and + 8, those < T only.
template <int D>
__device__ __forceinline__ void store_acc_rows(bf16* base, std::int64_t row_elems, int b, int T, int first_row,
                                               int col, const float (&acc)[D / 2], float mul, int warp, int g, int t) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = first_row + 16 * warp + g + 8 * r;
    if (row < T) {
      bf16* dst = base + (static_cast<std::int64_t>(b) * T + row) * row_elems + col;
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        *reinterpret_cast<std::uint32_t*>(dst + 8 * j + 2 * t) =
            pack_bf16x2(acc[4 * j + 2 * r] * mul, acc[4 * j + 2 * r + 1] * mul);
    }
  }
}

// Both kernels' barriers, from bar0: the resident tiles' barrier (count 1: the producer's
// arrive.expect_tx), then full[s] (count 1) and empty[s] (count 4·kWG: one arrival per consumer warp)
// of the ring, 8 bytes each.
template <int kStages, int kWG>
__device__ __forceinline__ void bwd_init_barriers(std::uint32_t bar0) {
  if (threadIdx.x == 0) {
    mbar_init(bar0, 1);
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      mbar_init(bar0 + 8 * (1 + s), 1);
      mbar_init(bar0 + 8 * (1 + kStages + s), 4 * kWG);
    }
    mbar_fence_init();
  }
  __syncthreads();
}

// ---- dK, dV ------------------------------------------------------------------------------------------

template <int D_, int kBlockM_, int kStages_, bool kCausal_>
struct DkdvConfig {
  static constexpr int D = D_;
  static constexpr int kWG = 2;                    // consumer warpgroups, 64 keys each
  static constexpr int kBlockK = 64 * kWG;         // keys per block
  static constexpr int kBlockM = kBlockM_;         // queries per ring tile
  static constexpr int kStages = kStages_;
  static constexpr bool kCausal = kCausal_;
  static constexpr int kThreads = 128 * (kWG + 1);
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;   // 128·24 + 256·240 ≤ 65536
  using Tile = HeadTile<D>;
  static constexpr int kKVBytes = Tile::bytes(kBlockK);
  static constexpr int kQBytes = Tile::bytes(kBlockM);
  static constexpr int kStatBytes = kBlockM * 4;
  static constexpr int kKOff = 0;
  static constexpr int kVOff = kKOff + kKVBytes;
  static constexpr int kQOff = kVOff + kKVBytes;                      // ring: Q[s]
  static constexpr int kDOOff = kQOff + kStages * kQBytes;            // dO[s]
  static constexpr int kLOff = kDOOff + kStages * kQBytes;            // lse2[s]
  static constexpr int kDlOff = kLOff + kStages * kStatBytes;         // delta[s]
  static constexpr int kBarOff = kDlOff + kStages * kStatBytes;
  static constexpr int kNumBars = 1 + 2 * kStages;
  static constexpr int kSmemBytes = 1024 + kBarOff + 8 * kNumBars;
  static constexpr int kTxBytes = 2 * kQBytes + 2 * kStatBytes;       // one ring tile
  static_assert(D == 64 || D == 128, "head dims 64, 128");
  static_assert(kBlockM == 64 || kBlockM == 128, "query tiles of 64 or 128 rows");
  static_assert(kStatPad % kBlockM == 0 && kQBytes % 1024 == 0 && kKVBytes % 1024 == 0);
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block");
};

template <class Cfg>
struct DkdvSmem {
  std::uint32_t base;
  const unsigned char* gbase;   // generic pointer to the same aligned base (for the stat reads)
  __device__ explicit DkdvSmem(const unsigned char* raw)
      : base((smem_u32(raw) + 1023u) & ~1023u), gbase(raw + (((smem_u32(raw) + 1023u) & ~1023u) - smem_u32(raw))) {}
  __device__ std::uint32_t k() const { return base + Cfg::kKOff; }
  __device__ std::uint32_t v() const { return base + Cfg::kVOff; }
  __device__ std::uint32_t q(int s) const { return base + Cfg::kQOff + s * Cfg::kQBytes; }
  __device__ std::uint32_t dO(int s) const { return base + Cfg::kDOOff + s * Cfg::kQBytes; }
  __device__ std::uint32_t l(int s) const { return base + Cfg::kLOff + s * Cfg::kStatBytes; }
  __device__ std::uint32_t dl(int s) const { return base + Cfg::kDlOff + s * Cfg::kStatBytes; }
  __device__ const float* l_ptr(int s) const { return reinterpret_cast<const float*>(gbase + Cfg::kLOff + s * Cfg::kStatBytes); }
  __device__ const float* dl_ptr(int s) const { return reinterpret_cast<const float*>(gbase + Cfg::kDlOff + s * Cfg::kStatBytes); }
  __device__ std::uint32_t bar_kv() const { return base + Cfg::kBarOff; }
  __device__ std::uint32_t full(int s) const { return base + Cfg::kBarOff + 8 * (1 + s); }
  __device__ std::uint32_t empty(int s) const { return base + Cfg::kBarOff + 8 * (1 + Cfg::kStages + s); }
};

// The query tiles a key block visits: causal, from the one holding its first key to the last.
template <class Cfg>
__host__ __device__ inline int dkdv_first_tile(int k0) { return Cfg::kCausal ? k0 / Cfg::kBlockM : 0; }

// The dK/dV kernel's producer (one thread): K and V of the key block onto bar_kv, then for each
// query tile it (from m_first) Q, dO and the lse2/delta rows onto full[it % kStages], waiting for
// the slot's release from the second round on.
template <class Cfg>
__device__ __forceinline__ void dkdv_produce(const DkdvSmem<Cfg>& sm, const CUtensorMap* tmap_q, const CUtensorMap* tmap_kv,
                                             const CUtensorMap* tmap_do, const float* lse2, const float* delta, int b,
                                             int h, int C, int bh, int k0, int Tp, int m_first, int n_tiles) {
  constexpr int D = Cfg::D, kBlockM = Cfg::kBlockM, kStages = Cfg::kStages;
  using G = typename Cfg::Tile;
  tma_prefetch_map(tmap_q);
  tma_prefetch_map(tmap_kv);
  tma_prefetch_map(tmap_do);
  mbar_arrive_expect_tx(sm.bar_kv(), 2 * Cfg::kKVBytes);
#pragma unroll
  for (int sub = 0; sub < G::kSubs; ++sub) {
    tma_load_3d(sm.k() + sub * G::sub_bytes(Cfg::kBlockK), tmap_kv, sm.bar_kv(), C + h * D + sub * G::kSubCols, k0, b);
    tma_load_3d(sm.v() + sub * G::sub_bytes(Cfg::kBlockK), tmap_kv, sm.bar_kv(), 2 * C + h * D + sub * G::kSubCols,
                k0, b);
  }
  const float* l_row = lse2 + static_cast<std::int64_t>(bh) * Tp;
  const float* d_row = delta + static_cast<std::int64_t>(bh) * Tp;
  for (int it = 0; it < n_tiles; ++it) {
    const int s = it % kStages, round = it / kStages;
    if (round > 0) mbar_wait(sm.empty(s), (round - 1) & 1, kTagDkdvEmpty + it);
    mbar_arrive_expect_tx(sm.full(s), Cfg::kTxBytes);
    const int m0 = (m_first + it) * kBlockM;
#pragma unroll
    for (int sub = 0; sub < G::kSubs; ++sub) {
      tma_load_3d(sm.q(s) + sub * G::sub_bytes(kBlockM), tmap_q, sm.full(s), h * D + sub * G::kSubCols, m0, b);
      tma_load_3d(sm.dO(s) + sub * G::sub_bytes(kBlockM), tmap_do, sm.full(s), h * D + sub * G::kSubCols, m0, b);
    }
    bulk_load(sm.l(s), l_row + m0, Cfg::kStatBytes, sm.full(s));
    bulk_load(sm.dl(s), d_row + m0, Cfg::kStatBytes, sm.full(s));
  }
}

// grid (B·H, ceil(T / kBlockK)): key block blockIdx.y (causal: block 0 has the most tiles and starts
// first). tmap_q: box (kSubCols, kBlockM) over qkv; tmap_kv: box (kSubCols, kBlockK) over qkv;
// tmap_do: box (kSubCols, kBlockM) over dout (B, T, C).
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    attention_dkdv_wgmma_kernel(const __grid_constant__ CUtensorMap tmap_q, const __grid_constant__ CUtensorMap tmap_kv,
                                const __grid_constant__ CUtensorMap tmap_do, const float* __restrict__ lse2,
                                const float* __restrict__ delta, bf16* __restrict__ dqkv, int T, int H, float scale) {
  constexpr int D = Cfg::D, kBlockM = Cfg::kBlockM, kStages = Cfg::kStages;
  constexpr int kSN = kBlockM / 2;   // Sᵀ, dPᵀ accumulator floats per thread (64 × kBlockM)
  constexpr int kON = D / 2;         // dK, dV accumulator floats per thread (64 × D)
  using G = typename Cfg::Tile;
  extern __shared__ unsigned char smem_raw[];
  const DkdvSmem<Cfg> sm(smem_raw);

  const int bh = blockIdx.x, b = bh / H, h = bh % H, C = H * D;
  const int k0 = blockIdx.y * Cfg::kBlockK;
  const int Tp = bwd_padded_T(T);
  const int m_first = dkdv_first_tile<Cfg>(k0);
  const int n_tiles = (T + kBlockM - 1) / kBlockM - m_first;

  bwd_init_barriers<kStages, Cfg::kWG>(sm.bar_kv());

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) dkdv_produce<Cfg>(sm, &tmap_q, &tmap_kv, &tmap_do, lse2, delta, b, h, C, bh, k0, Tp, m_first, n_tiles);
  } else {
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    const int c = wg - 1;
    const int lt = threadIdx.x % 128, warp = lt / 32, lane = lt % 32, g = lane / 4, t = lane % 4;
    const int wk0 = k0 + 64 * c;                   // first key of this warpgroup
    const int key0 = wk0 + 16 * warp + g;          // this thread's keys: key0 and key0 + 8
    const float scale_log2 = scale * 1.4426950408889634f;

    float dk[kON], dv[kON], st[kSN], dpt[kSN];
#pragma unroll
    for (int i = 0; i < kON; ++i) dk[i] = 0.f, dv[i] = 0.f;
#pragma unroll
    for (int i = 0; i < kSN; ++i) st[i] = 0.f, dpt[i] = 0.f;
    std::uint32_t pf[kSN / 2], dsf[kSN / 2];

    mbar_wait(sm.bar_kv(), 0, kTagDkdvKV);
    // The products of tile it, in two halves. scores: Sᵀ = K Qᵀ and dPᵀ = V dOᵀ issued (two commit
    // groups). grads: with those two the newest pending groups, P, dV += Pᵀ dO, dS, dK += dSᵀ Q;
    // returns with dV and dK issued and possibly running (the caller waits).
    auto scores = [&](int it) {
      const int s = it % kStages;
      mbar_wait(sm.full(s), (it / kStages) & 1, kTagDkdvFull + it);
      issue_qk<D, kBlockM>(st, sm.k(), Cfg::kBlockK, 64 * c, sm.q(s));    // Sᵀ = K Qᵀ
      issue_qk<D, kBlockM>(dpt, sm.v(), Cfg::kBlockK, 64 * c, sm.dO(s));  // dPᵀ = V dOᵀ
    };
    auto grads = [&](int it) {
      const int s = it % kStages;
      const int m0 = (m_first + it) * kBlockM;
      wgmma_wait<1>();   // Sᵀ done (dPᵀ may still run)
      fence_operands(st);
      // Pᵀ = exp2(Sᵀ·scale·log2 e − lse2(query)); element i: key key0 + 8·((i % 4) / 2), query
      // m0 + acc_col(i, t). Queries ≥ T have lse2 = +inf: P = 0 with no mask.
      const float* lt2 = sm.l_ptr(s);
      const bool need_mask = Cfg::kCausal && m0 < wk0 + 63;
#pragma unroll
      for (int i = 0; i < kSN; ++i) {
        const int qc = acc_col(i, t);
        float p = fast_exp2(fmaf(st[i], scale_log2, -lt2[qc]));
        if (need_mask && m0 + qc < key0 + 8 * ((i % 4) / 2)) p = 0.f;
        st[i] = p;
      }
      acc_to_bf16_afrags<kSN>(pf, st);
      issue_pv<D, kBlockM>(dv, pf, sm.dO(s), mnmajor_lbo<D>(kBlockM), mnmajor_sbo<D>());   // dV += Pᵀ dO
      wgmma_wait<1>();   // dPᵀ done (dV may still run)
      fence_operands(dpt);
      const float* dlt = sm.dl_ptr(s);
#pragma unroll
      for (int i = 0; i < kSN; ++i) dpt[i] = st[i] * (dpt[i] - dlt[acc_col(i, t)]);   // dSᵀ
      acc_to_bf16_afrags<kSN>(dsf, dpt);
      issue_pv<D, kBlockM>(dk, dsf, sm.q(s), mnmajor_lbo<D>(kBlockM), mnmajor_sbo<D>());   // dK += dSᵀ Q
    };
    auto finish = [&] {   // after the wait that covers dV and dK
      fence_operands(dv);
      fence_operands(dk);
      fence_operands(pf);
      fence_operands(dsf);
    };
    // (An overlap across tiles — tile it + 1's scores issued before the wait for tile it's dV and
    // dK, so that a wgmma group stays pending over the loop's back edge — made ptxas serialize every
    // wgmma of the kernel: C7514, "non wgmma instructions reading accumulator registers of a wgmma
    // between start and end of the pipeline stage"; its pipeline stages end at a wait_group 0.)
    for (int it = 0; it < n_tiles; ++it) {
      const int m0 = (m_first + it) * kBlockM;
      // Warp-group uniform: some query of the tile sees some key of this warpgroup.
      if (!Cfg::kCausal || m0 + kBlockM - 1 >= wk0) {
        scores(it);
        grads(it);
        wgmma_wait<0>();
        finish();
      } else {
        mbar_wait(sm.full(it % kStages), (it / kStages) & 1, kTagDkdvFull + it);
      }
      release(sm.empty(it % kStages));
    }
    // dK = scale · Σ dSᵀ Q, dV = Σ Pᵀ dO: key rows < T, into the k and v columns of dqkv.
    store_acc_rows<D>(dqkv, 3 * static_cast<std::int64_t>(C), b, T, wk0, C + h * D, dk, scale, warp, g, t);
    store_acc_rows<D>(dqkv, 3 * static_cast<std::int64_t>(C), b, T, wk0, 2 * C + h * D, dv, 1.f, warp, g, t);
  }
}

// ---- dQ ------------------------------------------------------------------------------------------------

template <int D_, int kBlockN_, int kStages_, bool kCausal_, int kWG_ = 2>
struct DqConfig {
  static constexpr int D = D_;
  static constexpr int kWG = kWG_;                 // consumer warpgroups, 64 queries each
  static constexpr int kBlockM = 64 * kWG;         // queries per block
  static constexpr int kBlockN = kBlockN_;         // keys per ring tile
  static constexpr int kStages = kStages_;
  static constexpr bool kCausal = kCausal_;
  static constexpr int kThreads = 128 * (kWG + 1);
  // The forward's budgets: 128·24 + 256·240 and 128·32 + 384·160 registers.
  static constexpr int kProducerRegs = kWG == 2 ? 24 : 32;
  static constexpr int kConsumerRegs = kWG == 2 ? 240 : 160;
  using Tile = HeadTile<D>;
  static constexpr int kQBytes = Tile::bytes(kBlockM);
  static constexpr int kKVBytes = Tile::bytes(kBlockN);
  static constexpr int kStatBytes = kBlockM * 4;
  static constexpr int kQOff = 0;
  static constexpr int kDOOff = kQOff + kQBytes;
  static constexpr int kKOff = kDOOff + kQBytes;                      // ring: K[s]
  static constexpr int kVOff = kKOff + kStages * kKVBytes;            // V[s]
  static constexpr int kLOff = kVOff + kStages * kKVBytes;
  static constexpr int kDlOff = kLOff + kStatBytes;
  static constexpr int kBarOff = kDlOff + kStatBytes;
  static constexpr int kNumBars = 1 + 2 * kStages;
  static constexpr int kSmemBytes = 1024 + kBarOff + 8 * kNumBars;
  static_assert(D == 64 || D == 128, "head dims 64, 128");
  static_assert(kBlockN == 64 || kBlockN == 128, "key tiles of 64 or 128 rows");
  static_assert(kWG == 2 || kWG == 3, "2 or 3 consumer warpgroups");
  static_assert(kStatPad % kBlockM == 0 && kQBytes % 1024 == 0 && kKVBytes % 1024 == 0);
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block");
};

template <class Cfg>
struct DqSmem {
  std::uint32_t base;
  const unsigned char* gbase;
  __device__ explicit DqSmem(const unsigned char* raw)
      : base((smem_u32(raw) + 1023u) & ~1023u), gbase(raw + (((smem_u32(raw) + 1023u) & ~1023u) - smem_u32(raw))) {}
  __device__ std::uint32_t q() const { return base + Cfg::kQOff; }
  __device__ std::uint32_t dO() const { return base + Cfg::kDOOff; }
  __device__ std::uint32_t k(int s) const { return base + Cfg::kKOff + s * Cfg::kKVBytes; }
  __device__ std::uint32_t v(int s) const { return base + Cfg::kVOff + s * Cfg::kKVBytes; }
  __device__ std::uint32_t l() const { return base + Cfg::kLOff; }
  __device__ std::uint32_t dl() const { return base + Cfg::kDlOff; }
  __device__ const float* l_ptr() const { return reinterpret_cast<const float*>(gbase + Cfg::kLOff); }
  __device__ const float* dl_ptr() const { return reinterpret_cast<const float*>(gbase + Cfg::kDlOff); }
  __device__ std::uint32_t bar_q() const { return base + Cfg::kBarOff; }
  __device__ std::uint32_t full(int s) const { return base + Cfg::kBarOff + 8 * (1 + s); }
  __device__ std::uint32_t empty(int s) const { return base + Cfg::kBarOff + 8 * (1 + Cfg::kStages + s); }
};

// The dQ kernel's producer (one thread): Q, dO and the lse2/delta rows of the query block onto
// bar_q, then K and V of key tile it (from the last tile down) onto full[it % kStages].
template <class Cfg>
__device__ __forceinline__ void dq_produce(const DqSmem<Cfg>& sm, const CUtensorMap* tmap_q, const CUtensorMap* tmap_kv,
                                           const CUtensorMap* tmap_do, const float* lse2, const float* delta, int b, int h,
                                           int C, int bh, int q0, int Tp, int n_tiles) {
  constexpr int D = Cfg::D, kBlockN = Cfg::kBlockN, kStages = Cfg::kStages;
  using G = typename Cfg::Tile;
  tma_prefetch_map(tmap_q);
  tma_prefetch_map(tmap_kv);
  tma_prefetch_map(tmap_do);
  mbar_arrive_expect_tx(sm.bar_q(), 2 * Cfg::kQBytes + 2 * Cfg::kStatBytes);
#pragma unroll
  for (int sub = 0; sub < G::kSubs; ++sub) {
    tma_load_3d(sm.q() + sub * G::sub_bytes(Cfg::kBlockM), tmap_q, sm.bar_q(), h * D + sub * G::kSubCols, q0, b);
    tma_load_3d(sm.dO() + sub * G::sub_bytes(Cfg::kBlockM), tmap_do, sm.bar_q(), h * D + sub * G::kSubCols, q0, b);
  }
  bulk_load(sm.l(), lse2 + static_cast<std::int64_t>(bh) * Tp + q0, Cfg::kStatBytes, sm.bar_q());
  bulk_load(sm.dl(), delta + static_cast<std::int64_t>(bh) * Tp + q0, Cfg::kStatBytes, sm.bar_q());
  for (int it = 0; it < n_tiles; ++it) {
    const int s = it % kStages, round = it / kStages;
    if (round > 0) mbar_wait(sm.empty(s), (round - 1) & 1, kTagDqEmpty + it);
    mbar_arrive_expect_tx(sm.full(s), 2 * Cfg::kKVBytes);
    const int n0 = (n_tiles - 1 - it) * kBlockN;
#pragma unroll
    for (int sub = 0; sub < G::kSubs; ++sub) {
      tma_load_3d(sm.k(s) + sub * G::sub_bytes(kBlockN), tmap_kv, sm.full(s), C + h * D + sub * G::kSubCols, n0, b);
      tma_load_3d(sm.v(s) + sub * G::sub_bytes(kBlockN), tmap_kv, sm.full(s), 2 * C + h * D + sub * G::kSubCols, n0,
                  b);
    }
  }
}

// grid (B·H, ceil(T / kBlockM)), query blocks in reverse blockIdx.y order (longest causal rows
// first). Key tile it (visiting order) starts at key (n_tiles − 1 − it)·kBlockN: the diagonal
// tiles (masked) first, as in the forward. tmap_q, tmap_do: box (kSubCols, kBlockM); tmap_kv: box
// (kSubCols, kBlockN).
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    attention_dq_wgmma_kernel(const __grid_constant__ CUtensorMap tmap_q, const __grid_constant__ CUtensorMap tmap_kv,
                              const __grid_constant__ CUtensorMap tmap_do, const float* __restrict__ lse2,
                              const float* __restrict__ delta, bf16* __restrict__ dqkv, int T, int H, float scale) {
  constexpr int D = Cfg::D, kBlockN = Cfg::kBlockN, kStages = Cfg::kStages;
  constexpr int kSN = kBlockN / 2;   // S, dP accumulator floats per thread (64 × kBlockN)
  constexpr int kON = D / 2;         // dQ accumulator floats per thread
  using G = typename Cfg::Tile;
  extern __shared__ unsigned char smem_raw[];
  const DqSmem<Cfg> sm(smem_raw);

  const int bh = blockIdx.x, b = bh / H, h = bh % H, C = H * D;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * Cfg::kBlockM;
  const int Tp = bwd_padded_T(T);
  const int n_tiles = fwd_key_tiles<Cfg>(q0, T);   // the forward's: keys up to the block's last row

  bwd_init_barriers<kStages, Cfg::kWG>(sm.bar_q());

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) dq_produce<Cfg>(sm, &tmap_q, &tmap_kv, &tmap_do, lse2, delta, b, h, C, bh, q0, Tp, n_tiles);
  } else {
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    const int c = wg - 1;
    const int lt = threadIdx.x % 128, warp = lt / 32, lane = lt % 32, g = lane / 4, t = lane % 4;
    const int wq0 = q0 + 64 * c;                   // first query of this warpgroup
    const int row0 = wq0 + 16 * warp + g;          // this thread's queries: row0 and row0 + 8
    const float scale_log2 = scale * 1.4426950408889634f;

    float dq[kON], sc[kSN], dp[kSN];
#pragma unroll
    for (int i = 0; i < kON; ++i) dq[i] = 0.f;
#pragma unroll
    for (int i = 0; i < kSN; ++i) sc[i] = 0.f, dp[i] = 0.f;
    std::uint32_t dsf[kSN / 2];

    mbar_wait(sm.bar_q(), 0, kTagDqQ);
    float row_l2[2], row_delta[2];   // rows ≥ T: +inf and 0 (the padded stats)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_l2[r] = sm.l_ptr()[row0 + 8 * r - q0];
      row_delta[r] = sm.dl_ptr()[row0 + 8 * r - q0];
    }
    for (int it = 0; it < n_tiles; ++it) {
      const int s = it % kStages;
      const int n0 = (n_tiles - 1 - it) * kBlockN;
      mbar_wait(sm.full(s), (it / kStages) & 1, kTagDqFull + it);
      // Warp-group uniform: some key of the tile is visible to some row of this warpgroup.
      if (!Cfg::kCausal || n0 <= wq0 + 63) {
        issue_qk<D, kBlockN>(sc, sm.q(), Cfg::kBlockM, 64 * c, sm.k(s));    // S = Q Kᵀ
        issue_qk<D, kBlockN>(dp, sm.dO(), Cfg::kBlockM, 64 * c, sm.v(s));   // dP = dO Vᵀ
        wgmma_wait<1>();
        fence_operands(sc);
        const bool need_mask = (Cfg::kCausal && n0 + kBlockN - 1 > wq0) || n0 + kBlockN > T;
#pragma unroll
        for (int i = 0; i < kSN; ++i) {
          const int r = (i % 4) / 2, key = n0 + acc_col(i, t);
          float p = fast_exp2(fmaf(sc[i], scale_log2, -row_l2[r]));
          if (need_mask && (key >= T || (Cfg::kCausal && key > row0 + 8 * r))) p = 0.f;
          sc[i] = p;
        }
        // (ptxas moves this wait up into the exponentials above, so P overlaps dO Vᵀ only in part;
        // the forward's fix, a basic-block boundary through opaque_copy, made ptxas serialize every
        // wgmma here (C7518: the dQ product would sit in a "divergent" path), so it is not used.)
        wgmma_wait<0>();
        fence_operands(dp);
#pragma unroll
        for (int i = 0; i < kSN; ++i) dp[i] = sc[i] * (dp[i] - row_delta[(i % 4) / 2]);   // dS
        acc_to_bf16_afrags<kSN>(dsf, dp);
        issue_pv<D, kBlockN>(dq, dsf, sm.k(s), mnmajor_lbo<D>(kBlockN), mnmajor_sbo<D>());   // dQ += dS K
        wgmma_wait<0>();
        fence_operands(dq);
        fence_operands(dsf);
      }
      release(sm.empty(s));
    }
    store_acc_rows<D>(dqkv, 3 * static_cast<std::int64_t>(C), b, T, wq0, h * D, dq, scale, warp, g, t);
  }
}

// ---- host side ---------------------------------------------------------------------------------------

// One of the two backward kernels on grid (B·H, blocks_y), with its three tensor maps: Q and dO
// boxes of q_rows rows, K/V boxes of kv_rows rows.
template <int D, class Kernel>
void launch_bwd_kernel(Kernel kernel, int smem, int threads, int blocks_y, int q_rows, int kv_rows, const bf16* qkv,
                       const bf16* dout, const float* lse2, const float* delta, bf16* dqkv, int B, int T, int H,
                       float scale, cudaStream_t stream) {
  const CUtensorMap tq = make_qkv_map<D>(qkv, B, T, H, q_rows);
  const CUtensorMap tkv = make_qkv_map<D>(qkv, B, T, H, kv_rows);
  const CUtensorMap tdo = make_row_map<D>(dout, B, T, static_cast<std::uint64_t>(H) * D, q_rows);
  LAB_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<dim3(static_cast<unsigned>(B * H), static_cast<unsigned>(blocks_y)), threads, smem, stream>>>(
      tq, tkv, tdo, lse2, delta, dqkv, T, H, scale);
  LAB_CUDA(cudaGetLastError());
}

// scratch: bwd_scratch_floats(B, H, T) floats (lse2, then delta). dqkv, dout, qkv 16-byte aligned.
template <class KCfg, class QCfg>
void attention_backward_wgmma(bf16* dqkv, float* scratch, const bf16* dout, const bf16* qkv, const bf16* out,
                              const float* lse, int B, int T, int H, cudaStream_t stream) {
  static_assert(KCfg::D == QCfg::D && KCfg::kCausal == QCfg::kCausal);
  constexpr int D = KCfg::D;
  if (B <= 0 || T <= 0 || H <= 0) throw CudaError("attention_backward_wgmma: empty shape");
  // grid.x = B·H (< 2^31) for all three kernels; grid.y = query or key blocks, and Tp / 32 rows of
  // the stats kernel (≤ 65535).
  if (static_cast<long long>(B) * H > 2147483647LL || bwd_padded_T(T) / 32 > 65535)
    throw CudaError("attention_backward_wgmma: grid too large");
  if (reinterpret_cast<std::uintptr_t>(dqkv) % 4 != 0 || reinterpret_cast<std::uintptr_t>(out) % 16 != 0 ||
      reinterpret_cast<std::uintptr_t>(dout) % 16 != 0 || reinterpret_cast<std::uintptr_t>(scratch) % 16 != 0)
    throw CudaError("attention_backward_wgmma: misaligned buffers");
  const int Tp = bwd_padded_T(T);
  float* lse2 = scratch;
  float* delta = scratch + static_cast<std::size_t>(B) * H * Tp;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));

  bwd_stats_kernel<D><<<dim3(static_cast<unsigned>(B * H), static_cast<unsigned>(Tp / 32)), 256, 0, stream>>>(
      lse2, delta, out, dout, lse, T, Tp, H);
  LAB_CUDA(cudaGetLastError());

  // dK/dV: Q and dO boxes of its query tile, K/V boxes of its key block; dQ: Q and dO boxes of its
  // query block, K/V boxes of its key tile.
  launch_bwd_kernel<D>(attention_dkdv_wgmma_kernel<KCfg>, KCfg::kSmemBytes, KCfg::kThreads,
                       (T + KCfg::kBlockK - 1) / KCfg::kBlockK, KCfg::kBlockM, KCfg::kBlockK, qkv, dout, lse2, delta,
                       dqkv, B, T, H, scale, stream);
  launch_bwd_kernel<D>(attention_dq_wgmma_kernel<QCfg>, QCfg::kSmemBytes, QCfg::kThreads,
                       (T + QCfg::kBlockM - 1) / QCfg::kBlockM, QCfg::kBlockM, QCfg::kBlockN, qkv, dout, lse2, delta,
                       dqkv, B, T, H, scale, stream);
}

}  // namespace SCRATCHLM_WGMMA_TU
}  // namespace scratchlm::wgmma
