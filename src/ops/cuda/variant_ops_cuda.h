// The GPU ops of the model variants (issue 6): LayerNorm, the feed-forward activations other than
// SwiGLU, Linear biases, residual dropout, absolute position embeddings, and the classifier with
// logit soft-capping and z-loss. Each implements the CPU op named in its comment (ops/<op>.h, the
// spec) on device pointers, launched on `stream`, in the conventions of ops_cuda.h:
//   - T is the storage type of what matrix products read or write (float, or Bf16 for mixed
//     precision); the residual stream, statistics (mean, rstd, lse, losses) and parameter
//     gradients are fp32. Arithmetic is fp32 throughout. Every template is instantiated for both.
//   - No floating-point atomics: every reduction runs in a fixed order (per-chunk partial sums in a
//     caller-provided `partials` buffer, then the chunks summed in index order), so results repeat
//     bit for bit from run to run, which exact resume needs.
//   - Sizes may be anything ≥ 0 (no multiple-of-block requirement); N = 0 launches nothing.
//   - Where the only T argument is an optional copy (layernorm_backward_cuda's dx_copy,
//     dropout_forward_cuda's out_copy), passing nullptr needs the type spelled: f<T>(..., nullptr, ...).
// Left out: attention-probability dropout ("attention_dropout") lives inside the flash attention
// kernels (attention_cuda.h), which must regenerate ops/dropout.h's mask for site
// dropout_site_attn_probs(l), index ((b·H + h)·Tq + i)·Tk + j; nothing here does it. The
// sinusoidal table needs no kernel: upload sinusoidal_table(context_length, C) (ops/embedding.h)
// once and add it with position_add_forward_cuda.
#pragma once

#include <cstdint>

#include "model/config.h"          // Activation
#include "ops/common.h"            // Accumulate
#include "ops/cross_entropy.h"     // SoftmaxExtras
#include "ops/cuda/ops_cuda.h"     // kRmsnormPartials
#include "ops/dropout.h"           // Dropout
#include "tensor/bf16.h"

struct CUstream_st;

namespace scratchlm {

// Partial sums of the column reductions below (dweight, dbias, and the Linear bias gradient): the
// N rows are cut into kColumnPartials fixed chunks, each chunk's column sums go to one row of
// `partials`, and the rows are then added in order. A buffer of kRmsnormPartials × C floats (the
// GPU model's norm_partials) is large enough for LayerNorm with bias (2 × kColumnPartials × C).
constexpr std::int64_t kColumnPartials = 256;
static_assert(2 * kColumnPartials <= kRmsnormPartials, "LayerNorm's partials must fit the RMSNorm buffer");

// ---- LayerNorm (ops/layernorm.h: layernorm_forward / layernorm_backward) -----------------------

// out (N, C) = (x − mean) · rstd · weight + bias, per row of x (N, C) fp32; bias null: no bias
// (the "norm_bias": false variant). mean (N) and rstd (N) = 1 / sqrt(var + kLayerNormEps) are
// saved for backward, var the population variance (two passes over the row: the mean, then the
// squared deviations, as the CPU). out may be T = Bf16 (it feeds a matrix product: ln1, ln2,
// ln_final in pre placement) or T = float (it is the residual stream itself: post placement, or
// the post-sublayer norm of "double" placement). out may not alias x. Any C.
template <typename T>
void layernorm_forward_cuda(T* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                            std::int64_t N, std::int64_t C, CUstream_st* stream);

// With x̂ = (x − mean) · rstd and g = weight ⊙ dy, per row:
//   dx (N, C) = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)),  accumulated (dx_acc = Accumulate::yes, as
//   rmsnorm_backward_cuda always does: dx is the residual gradient) or overwritten (Accumulate::no);
//   dx_copy (N, C) in T, may be null: receives the new dx (the accumulated value), for the matrix
//   products that read it next;
//   dweight (C) += Σ_n dy ⊙ x̂,  dbias (C) += Σ_n dy  (dbias null: no bias),
// the two column sums through `partials` (2 × kColumnPartials × C floats of scratch, e.g. the
// kRmsnormPartials × C buffer of rmsnorm_backward_cuda). dy (N, C) fp32, x, mean, rstd as saved by
// forward. dx may alias dy (the column sums read dy first; each row's dx is written only after its
// dy is read), e.g. post placement's in-place dsub with Accumulate::no. Any C.
template <typename T>
void layernorm_backward_cuda(float* dx, T* dx_copy, float* dweight, float* dbias, float* partials, const float* dy,
                             const float* x, const float* weight, const float* mean, const float* rstd, std::int64_t N,
                             std::int64_t C, Accumulate dx_acc, CUstream_st* stream);

// ---- feed-forward activations (ops/activation.h: gated_* and activation_*) ---------------------
// act is relu (max(x, 0)), relu2 (relu(x)²), silu (x·σ(x)) or gelu (the exact x·Φ(x) =
// ½x(1 + erf(x/√2)), PyTorch's default, not the tanh approximation), in fp32 from values stored
// in T; derivatives as the CPU: relu' = [x > 0], relu2' = 2x·[x > 0], silu' = σ(1 + x(1 − σ)),
// gelu' = Φ(x) + x·φ(x).

// The gated feed-forwards (GeGLU: act = gelu, ReGLU: relu; any Activation works, silu gives
// SwiGLU but swiglu_forward_cuda is the tuned one) on the fused up-projection's layout: ab (N, 2F)
// holds a = W1 x in its first F columns and b = W3 x in its last F (as swiglu_forward_cuda);
// h (N, F) = act(a) ⊙ b. h may not alias ab.
template <typename T>
void gated_forward_cuda(T* h, const T* ab, std::int64_t N, std::int64_t F, Activation act, CUstream_st* stream);
// dab (N, 2F) overwritten with [da | db], da = dh ⊙ b ⊙ act'(a), db = dh ⊙ act(a), from dh (N, F)
// and forward's ab. dab may alias ab (each element of ab is read only by the thread that
// overwrites it), not dh.
template <typename T>
void gated_backward_cuda(T* dab, const T* dh, const T* ab, std::int64_t N, std::int64_t F, Activation act,
                         CUstream_st* stream);

// The plain MLP's activation, element-wise over n values (n = N·F of a (N, F) up-projection):
// h (n) = act(a). h may alias a (in place).
template <typename T>
void activation_forward_cuda(T* h, const T* a, std::int64_t n, Activation act, CUstream_st* stream);
// da (n) = dh ⊙ act'(a), overwritten; da may alias dh or a.
template <typename T>
void activation_backward_cuda(T* da, const T* dh, const T* a, std::int64_t n, Activation act, CUstream_st* stream);

// ---- Linear biases (ops/linear.h: the bias overloads) ------------------------------------------
// The GEMM wrapper (gemm_cuda.h) has no bias epilogue (its C operand is a full matrix, not a
// broadcast row), so a bias is a separate pass after the product.

// y[n][f] += bias[f] for n < N, f < F over rows of y with leading dimension ld ≥ F (ld = F for a
// plain (N, F) output; ld = 2F for one half of the fused ab (N, 2F), y pointing at its first
// column; ld = H·D + 2·Hkv·D for a part of qkv). T = float for fp32 outputs (the residual stream:
// x_mid after the out-projection, with the residual already added by the GEMM epilogue: the sum
// order differs from the CPU's (x·Wᵀ + b) + x only by rounding).
template <typename T>
void bias_forward_cuda(T* y, const float* bias, std::int64_t N, std::int64_t F, std::int64_t ld, CUstream_st* stream);
// dbias (F) += Σ_n dy[n][f] (column sums of dy, rows of leading dimension ld ≥ F), through
// `partials` (kColumnPartials × F floats of scratch), deterministic. dy in T: float for the
// residual gradient (bo, b2: pass the fp32 dresid, not its bf16 copy, for the better sum), T for
// dab (b1, b3) and dqkv (bq, bk, bv).
template <typename T>
void bias_backward_cuda(float* dbias, float* partials, const T* dy, std::int64_t N, std::int64_t F, std::int64_t ld,
                        CUstream_st* stream);

// ---- residual dropout (ops/dropout.h: dropout_forward) -----------------------------------------
// out (n) = [residual +] x ⊙ keep(d.seed, d.site, i) · d.scale(), for i = 0 .. n−1, with exactly
// ops/dropout.h's hash, threshold and fp32 scale: the same (seed, site, index) gives the CPU's mask
// bit for bit, and the kept values (x · scale, then + residual, each rounded once: no fused
// multiply-add) equal the CPU's dropout_forward followed by add_into. The index is the element's
// offset in the micro-batch's (N, C) tensor, n·C + c, as the CPU's sites use (dropout.h's table).
// residual (n) may be null (no add); out may alias x or residual. out_copy (n) in T, may be null:
// receives out converted to T (in backward, the bf16 copy the next matrix products read).
// d.on() false (p = 0) is a plain copy (plus residual); the caller normally skips the call then.
// Backward is the same map on the gradient (dropout is linear and its own transpose): dx =
// dropout_forward_cuda(dx, dx_copy, dy, nullptr, n, d) with forward's d. Only for fp32 tensors
// (residual-branch outputs and the embedding output are fp32); attention-probability dropout is
// inside the attention kernels (see the top of this file).
template <typename T>
void dropout_forward_cuda(float* out, T* out_copy, const float* x, const float* residual, std::int64_t n,
                          const Dropout& d, CUstream_st* stream);

// ---- absolute positions (ops/embedding.h: position_add_forward / position_add_backward) --------
// x (N, C) += table[start + (r mod T)] for each row r: N = B·T rows of B sequences of T tokens,
// token t of a sequence at position start + t (start = 0 in training; the CPU's positions[t] =
// start + t). table (P, C) fp32, P ≥ start + T: the learned "position_embeddings.weight" or the
// uploaded sinusoidal_table. N must be a multiple of T.
void position_add_forward_cuda(float* x, const float* table, std::int64_t N, std::int64_t T, std::int64_t start,
                               std::int64_t C, CUstream_st* stream);
// dtable[start + t] += Σ_b dx[b·T + t] (C floats per position, the batch summed in b order; one
// thread per (t, c), deterministic, no partials). dx (N, C) fp32, N a multiple of T.
void position_add_backward_cuda(float* dtable, const float* dx, std::int64_t N, std::int64_t T, std::int64_t start,
                                std::int64_t C, CUstream_st* stream);

// ---- the classifier with soft-capping and z-loss (ops/cross_entropy.h) -------------------------
// classifier_cuda (ops_cuda.h) with the final softmax's extras (SoftmaxExtras, as the CPU's
// cross_entropy_backward takes them; both 0 gives classifier_cuda's results). For each row of raw
// logits (N, V) in T (the lm_head product):
//   z = softcap ? softcap · tanh(raw / softcap) : raw      (the CPU's softcap_forward, in fp32 on the fly;
//                                                           the capped values are not stored)
//   lse_n = log Σ_v exp(z_v);   losses[n] = lse_n − z[target_n]   (the cross-entropy alone: the value
//                                                                  the CPU's model_loss logs)
//   lse (N), may be null: receives lse_n (the z-loss term of the objective is z_loss · mean(lse²))
// and when grad_scale != 0 the row is overwritten in place with the gradient with respect to the
// raw logits of grad_scale · (CE + z_loss · lse²):
//   dlogits = grad_scale · (softmax(z) · (1 + 2 · z_loss · lse) − onehot(target)) · (softcap ? 1 − (z / softcap)² : 1)
// exactly the CPU's cross_entropy_backward with `extras` (grad_scale = its `scale`, dloss / N).
// grad_scale = 0 leaves the logits untouched (evaluation).
template <typename T>
void classifier_extras_cuda(T* logits, float* losses, float* lse, const std::int32_t* targets, std::int64_t N,
                            std::int64_t V, float grad_scale, const SoftmaxExtras& extras, CUstream_st* stream);

// x (n) = c · tanh(x / c) in place (the CPU's softcap_forward), for logits that are sampled or
// returned rather than fed to classifier_extras_cuda (generation, evaluation logits).
template <typename T>
void softcap_cuda(T* x, std::int64_t n, float c, CUstream_st* stream);

}  // namespace scratchlm
