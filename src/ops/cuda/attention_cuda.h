// Causal attention on the GPU, for training (Tq == Tk == T), the CPU's ops/attention.h semantics
// plus the attention-side architecture variants of issue 6:
//   s = q·k / sqrt(D)                          the scaled score of query i and key j
//   s ← c · tanh(s / c)                        logit soft-capping, when softcap c > 0 (Gemma 2)
//   keys j > i masked (causal), and with a sliding window W > 0 also keys j ≤ i − W:
//                                              query i sees keys i − W < j ≤ i
//   P = softmax(s), out = P V; lse = row log-sum-exp of the (capped) scores, natural log, fp32,
//   saved for backward, which recomputes P. Backward multiplies dS by 1 − tanh²(s / c) when capped.
// Grouped-query attention: H query heads share Hkv key/value heads (H % Hkv == 0; Hkv = 1 is
// multi-query, Hkv = H the default multi-head attention); query head h reads kv head h / (H / Hkv).
// Layouts (N = B·T tokens, D = head dim, which need not be d_model / H):
//   qkv  (B, T, H·D + 2·Hkv·D): the fused projection's output, one row per token; q of head h at
//        column h·D, k of kv head j at H·D + j·D, v of kv head j at H·D + Hkv·D + j·D. With
//        Hkv = H this is (B, T, 3, H, D).
//   out, dout (B, T, H, D);  lse, delta (B, H, T) fp32;  dqkv like qkv, every element overwritten:
//   dk and dv of a kv head are the sums over the query heads of its group, in head order (no
//   atomics: results repeat bit for bit).
// Tiles of the score matrix wholly outside the visible band are never loaded or computed (forward,
// dQ and dK/dV alike), so the cost of a window scales with W, not T; only tiles that cross an edge
// of the band are masked element by element.
// Implementations:
//   attention_*_cuda<T>      plain CUDA cores, any D ≤ 256, T = float or Bf16 (the fp32 path and a check);
//   attention_*_mma          bf16 tensor cores, D in {32, 64, 128}: the training path's entry points.
//                            Each dispatches to its wgmma kernel where that applies
//                            (attention_wgmma_supported) and to its mma_sync kernel otherwise;
//                            SCRATCHLM_ATTENTION=mma in the environment forces mma_sync (unset,
//                            empty or "auto": the choice above; see attention_mma.cu).
//   attention_*_mma_sync     mma.sync (Ampere-style tensor cores), every variant above;
//   attention_*_wgmma        Hopper wgmma + TMA (attention_wgmma.cu, compiled for sm_90a only):
//                            an sm_90 device, D in {64, 128}, multi-head (Hkv = H), no window, no
//                            soft-capping. Same results as mma_sync up to fp32 summation order.
// Left out: non-causal attention, Tq != Tk (generation has its own path).
#pragma once

#include <cstdint>

#include "tensor/bf16.h"

struct CUstream_st;

namespace scratchlm {

struct GpuAttentionShape {
  std::int64_t B = 0, T = 0, H = 0, D = 0;
  std::int64_t Hkv = 0;      // key/value heads; 0 means H (multi-head)
  std::int64_t window = 0;   // sliding window W: 0 = full causal; W ≥ T is the same as full
  float softcap = 0.0f;      // attention logit soft-capping c: 0 = off

  std::int64_t kv_heads() const { return Hkv == 0 ? H : Hkv; }
  std::int64_t qkv_row() const { return (H + 2 * kv_heads()) * D; }   // elements per token of qkv
};

// Fails (scratchlm::Error, naming the field) unless B, T, H, D > 0, H % Hkv == 0, window ≥ 0 and
// softcap is finite and ≥ 0. Every entry point below calls it; `op` names the caller.
void check_attention_shape(const GpuAttentionShape& s, const char* op);

// The (query, key) pairs inside the visible band, over all sequences and query heads: each of the
// forward's two products (Q Kᵀ, P V) costs 2·D FLOPs per pair, the backward's four 2·D each
// (benchmarks count FLOPs with it; masked work on edge tiles is not counted).
inline double attention_visible_pairs(const GpuAttentionShape& s) {
  const double T = static_cast<double>(s.T);
  const double W = s.window == 0 || s.window >= s.T ? T : static_cast<double>(s.window);
  // query i sees min(i + 1, W) keys: W(W + 1)/2 for the first W queries, W for the other T − W
  return static_cast<double>(s.B * s.H) * (W * (W + 1) / 2 + (T - W) * W);
}

template <typename T>
void attention_forward_cuda(T* out, float* lse, const T* qkv, const GpuAttentionShape& s, CUstream_st* stream);
// delta: scratch (B, H, T) for rowsum(dO ⊙ O).
template <typename T>
void attention_backward_cuda(T* dqkv, float* delta, const T* dout, const T* qkv, const T* out, const float* lse,
                             const GpuAttentionShape& s, CUstream_st* stream);

bool attention_mma_supported(std::int64_t D);
void attention_forward_mma(Bf16* out, float* lse, const Bf16* qkv, const GpuAttentionShape& s, CUstream_st* stream);
void attention_forward_mma_sync(Bf16* out, float* lse, const Bf16* qkv, const GpuAttentionShape& s,
                                CUstream_st* stream);
// True when attention_forward_wgmma runs `s` on the current device.
bool attention_wgmma_supported(const GpuAttentionShape& s);
void attention_forward_wgmma(Bf16* out, float* lse, const Bf16* qkv, const GpuAttentionShape& s, CUstream_st* stream);
// The backward's scratch: attention_backward_scratch_floats(s) floats (the mma_sync kernels use
// B·H·T of them for delta; the wgmma kernels 2·B·H·Tp for lse·log2 e and delta, with T rounded up to
// a multiple of their tiles, Tp ≤ T + 383).
std::int64_t attention_backward_scratch_floats(const GpuAttentionShape& s);
void attention_backward_mma(Bf16* dqkv, float* scratch, const Bf16* dout, const Bf16* qkv, const Bf16* out,
                            const float* lse, const GpuAttentionShape& s, CUstream_st* stream);
void attention_backward_mma_sync(Bf16* dqkv, float* scratch, const Bf16* dout, const Bf16* qkv, const Bf16* out,
                                 const float* lse, const GpuAttentionShape& s, CUstream_st* stream);
void attention_backward_wgmma(Bf16* dqkv, float* scratch, const Bf16* dout, const Bf16* qkv, const Bf16* out,
                              const float* lse, const GpuAttentionShape& s, CUstream_st* stream);

}  // namespace scratchlm
