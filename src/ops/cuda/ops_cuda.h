// The model's element-wise and row-wise ops on the GPU. Each implements the CPU op of the same name
// (ops/<op>.h is the spec) on device pointers, launched on `stream`. T is the storage type of the
// activations that feed matrix products: float (the fp32 path) or Bf16 (mixed precision); the
// residual stream, statistics (rstd, log-sum-exp, losses) and gradients of parameters are fp32.
// Nothing here uses floating-point atomics: every result is the same bit for bit from run to run,
// which exact resume needs.
#pragma once

#include <cstdint>

#include "ops/cuda/attention_cuda.h"
#include "tensor/bf16.h"

struct CUstream_st;

namespace scratchlm {

// x (N, C) = table[ids] (fp32 rows).
void embedding_forward_cuda(float* x, const std::int32_t* ids, const float* table, std::int64_t N, std::int64_t C,
                            CUstream_st* stream);

// The batch's token occurrences grouped by token, built on the host (no atomics needed on the device):
// `num_unique` tokens uniq[u]; occurrences of uniq[u] are positions[offsets[u] .. offsets[u+1]).
struct TokenGroups {
  const std::int32_t* uniq;        // (N) first num_unique used
  const std::int32_t* offsets;     // (N + 1)
  const std::int32_t* positions;   // (N)
  const std::int32_t* num_unique;  // device scalar
};
// Host side: fills uniq/offsets/positions/num_unique (arrays of N, N + 1, N, 1) from ids (N) by a
// counting sort over the vocabulary. `counts` is scratch of vocab_size ints.
void group_tokens(std::int32_t* uniq, std::int32_t* offsets, std::int32_t* positions, std::int32_t* num_unique,
                  const std::int32_t* ids, std::int64_t N, std::int32_t* counts, std::int64_t vocab_size);
// dtable[uniq[u]] += Σ dx[positions of u] (rows summed in position order). max_unique bounds the grid.
void embedding_backward_cuda(float* dtable, const float* dx, const TokenGroups& groups, std::int64_t max_unique,
                             std::int64_t C, CUstream_st* stream);

// out (N, C) = x · rstd · gain, rstd (N) = 1 / sqrt(mean(x²) + 1e-5).
template <typename T>
void rmsnorm_forward_cuda(T* out, float* rstd, const float* x, const float* gain, std::int64_t N, std::int64_t C,
                          CUstream_st* stream);
// dx (N, C) += ∂L/∂x (always accumulated: dx is the residual stream's gradient); dx_copy (may be null)
// receives the new dx in storage type T, for the matrix products that read it next.
// dgain (C) += Σ_n dy·x·rstd, through `partials` (kRmsnormPartials × C floats of scratch: one
// row per block of the fused pass). C ≤ 7,000 (the per-warp sums of a block live in shared memory).
constexpr std::int64_t kRmsnormPartials = 528;   // blocks of the fused pass: 4 per SM of an H100/H200
template <typename T>
void rmsnorm_backward_cuda(float* dx, T* dx_copy, float* dgain, float* partials, const float* dy, const float* x,
                           const float* gain, const float* rstd, std::int64_t N, std::int64_t C, CUstream_st* stream);

// QK-norm (model field "qk_norm"): RMSNorm over each head's D values of q and of k inside qkv
// (B, T, H·D + 2·Hkv·D; attention_cuda.h's layout, only s's B, T, H, Hkv, D read), with gains of D
// shared by the heads, q_gain for the H query heads and k_gain for the Hkv key heads: the CPU's
// rmsnorm_forward over (N·H, D) rows of q and (N·Hkv, D) rows of k. The model applies it before RoPE.
// In place: qkv's q and k columns become the normalised values (RoPE and attention read them
// there; v is untouched); for the backward the raw values are copied to qk_raw (N, (H + Hkv)·D) in
// T and rstd (N, H + Hkv) is saved, the query heads of a token first. D ≤ 256.
template <typename T>
void qk_norm_forward_cuda(T* qkv, T* qk_raw, float* rstd, const float* q_gain, const float* k_gain,
                          const GpuAttentionShape& s, CUstream_st* stream);
// Backward, in place on dqkv: its q and k columns hold the gradients of the normalised values and
// become those of the raw ones (v untouched). q_dgain, k_dgain (D) += Σ over tokens and heads of
// dy·x·rstd, through `partials` (2 × kRmsnormPartials × D floats of scratch), in a fixed order.
template <typename T>
void qk_norm_backward_cuda(T* dqkv, float* q_dgain, float* k_dgain, float* partials, const T* qk_raw,
                           const float* rstd, const float* q_gain, const float* k_gain, const GpuAttentionShape& s,
                           CUstream_st* stream);

// RoPE on the q and k parts of qkv (B, T, H·D + 2·Hkv·D), the fused projection's layout of
// attention_cuda.h (only s's B, T, H, Hkv and D are read), in place: the H query heads and the Hkv
// key heads, the values untouched. cos/sin (≥ T, D/2) tables on the device, position t of a
// sequence at row t. RopeDirection::inverse rotates by −angle (backward, on dqkv). A layer without
// RoPE simply does not call it.
enum class RopeDirection { forward, inverse };
template <typename T>
void rope_qk_cuda(T* qkv, const float* cos, const float* sin, const GpuAttentionShape& s, RopeDirection dir,
                  CUstream_st* stream);

// The SwiGLU gate on the fused up-projection: ab (N, 2F) holds a = W1 x in its first F columns and
// b = W3 x in its last F (one matrix product makes both); h (N, F) = silu(a) ⊙ b.
template <typename T>
void swiglu_forward_cuda(T* h, const T* ab, std::int64_t N, std::int64_t F, CUstream_st* stream);
// dab (N, 2F) overwritten with [da | db] from dh (N, F).
template <typename T>
void swiglu_backward_cuda(T* dab, const T* dh, const T* ab, std::int64_t N, std::int64_t F, CUstream_st* stream);

// The fused classifier: for each row of logits (N, V), losses[n] = logsumexp − logit[target]; when
// grad_scale != 0 the row is overwritten in place with dlogits = (softmax − onehot) · grad_scale.
// No fp32 copy of the logits is made.
template <typename T>
void classifier_cuda(T* logits, float* losses, const std::int32_t* targets, std::int64_t N, std::int64_t V,
                     float grad_scale, CUstream_st* stream);

// *out += scale · Σ x (n floats), in double, in a fixed order (one block).
void sum_into_cuda(double* out, const float* x, std::int64_t n, double scale, CUstream_st* stream);

// dst (n) = src converted to T.
template <typename T>
void convert_cuda(T* dst, const float* src, std::int64_t n, CUstream_st* stream);

}  // namespace scratchlm
