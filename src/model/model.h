// The Transformer language model on the CPU (the reference path), as CS336 specifies it:
//   x = token_embeddings[ids]                                   (B, T, C)
//       [+ position embeddings, learned or sinusoidal; dropout]
//   for each layer:  x += output_proj(attention(rope(q_proj(rmsnorm1(x))), rope(k_proj(..)), v_proj(..)))
//                    x += w2(silu(w1(rmsnorm2(x))) ⊙ w3(rmsnorm2(x)))   (or the ffn variant: config.h)
//                    [each sublayer's output dropped out before its add]
//   logits = lm_head(rmsnorm_final(x))                          (B, T, V)
// Attention has H query heads and Hkv key/value heads of size D (config.h: kv_heads(), d_head());
// Q = H·D and K = Hkv·D are the widths of the query and key projections (both C by default).
// and its variants (config.h): the norm (RMSNorm, LayerNorm, none) and its placement around the
// sublayers (pre, post, double), biases, parallel blocks, and a mixture of experts in place of the
// feed-forward:
//   router probabilities p = softmax(W_router x) (in double), the k most probable experts (ties: the
//   lower index) with weights w_e = p_e / Σ_selected p, out = Σ_selected w_e·FFN_e(x) + Σ_s FFN_shared_s(x);
//   the load-balancing loss of a layer aux = E·Σ_e f_e·P_e over the N tokens of the forward, f_e the
//   share of the N·k assignments routed to e (a count: no gradient), P_e = mean_n p_{n,e}. With
//   capacity_factor c > 0, training and evaluation forwards (no KV cache) let each expert take at most
//   ceil(c·N·k/E) assignments, in token order then slot order; the rest are dropped (they add 0, and
//   the kept weights are not renormalised again). Generation (with a KV cache) is dropless.
// model_forward and model_backward are straight-line functions over the ops; backward is the same
// list in reverse. Activations holds every buffer either needs, allocated once for (B, T).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "ops/dropout.h"
#include "ops/rope.h"

namespace scratchlm {

// The model's parameters in one arena, with the table that names them. Move-only.
struct Model {
  ModelConfig config;
  ParamLayout layout;
  std::vector<float> params;   // layout.total floats
  RopeTable rope;              // positions 0 .. context_length − 1
  std::vector<float> sinusoid; // (context_length, C) with position "sinusoidal", else empty

  explicit Model(const ModelConfig& c);
  Model(Model&&) = default;
  Model& operator=(Model&&) = default;
  Model(const Model&) = delete;
  ModelWeights weights() { return model_weights(layout, params.data()); }
};

// Training or evaluation, for the stochastic parts (dropout, config.h). The default evaluates:
// nothing is dropped, as in validation and generation.
enum class Phase { evaluation, training };
struct PassOptions {
  Phase phase = Phase::evaluation;
  std::uint64_t dropout_seed = 0;   // the masks' seed; the trainer's is dropout_seed(run seed, step, micro)
};

// Activations of one forward pass over (B, T) tokens, kept for backward, and backward's scratch.
// Lifetimes: everything in LayerActs is written by forward and read by backward of the same step;
// the scratch buffers (d*) live only inside model_backward.
struct LayerActs {
  std::vector<float> x_in;     // (N, C) residual stream entering the block
  std::vector<float> ln1;      // (N, C) rmsnorm1(x_in); empty in post placement or without norms
  std::vector<float> rstd1;    // (N)
  std::vector<float> mean1, mean2;   // (N) LayerNorm's row means of ln1, ln2 (layernorm only)
  std::vector<float> q;        // (N, Q) = (B, T, H, D), after RoPE
  std::vector<float> k, v;     // (N, K) = (B, T, Hkv, D); k after RoPE
  std::vector<float> q_raw, k_raw;   // (N, Q), (N, K) the projections before QK-norm (qk_norm only)
  std::vector<float> rstd_q, rstd_k; // (N·H), (N·Hkv) QK-norm statistics (qk_norm only)
  std::vector<float> lse;      // (B, H, T) attention row log-sum-exp
  std::vector<float> attn;     // (N, Q) attention output before output_proj
  std::vector<float> x_mid;    // (N, C) residual stream after the attention sublayer
  std::vector<float> ln2;      // (N, C); empty in parallel blocks (the feed-forward reads ln1)
  std::vector<float> rstd2;    // (N)
  std::vector<float> a, b, h;  // (N, F) w1 x, w3 x, silu(a) ⊙ b (b empty without a gate: h = act(a)); empty with MoE
  // Post and double placements: each sublayer's output before the norm that follows it (N, C):
  // post: x_in + output_proj(attn) (ln1's input), x_mid + ffn (ln2's input); double: output_proj(attn)
  // (post_attn_norm's input), ffn (post_ffn_norm's input).
  std::vector<float> attn_out, ffn_out;
  std::vector<float> rstd_pa, mean_pa, rstd_pf, mean_pf;   // (N) post_attn_norm, post_ffn_norm statistics (double)

  // Mixture of experts (moe only). A = N·k assignments; the kept ones are grouped by expert.
  std::vector<float> router_probs;             // (N, E) softmax of the router logits
  std::vector<std::int32_t> moe_expert;        // (N, k) the selected experts, most probable first
  std::vector<float> moe_weight;               // (N, k) their renormalised weights
  std::vector<std::int32_t> moe_row;           // (N, k) each assignment's row in the grouped buffers; −1: dropped
  std::vector<std::int32_t> moe_assignment;    // (A) each grouped row's assignment n·k + j
  std::vector<std::int64_t> moe_offset;        // (E + 1) expert e's grouped rows are [offset[e], offset[e + 1])
  std::vector<float> moe_out;                  // (A, C) each kept assignment's expert output
  std::vector<float> moe_a, moe_b, moe_h;      // (A, Fe) the experts' a, b, h (b empty without a gate)
  std::vector<float> shared_a, shared_b, shared_h;   // (S·N, Fe) the shared experts' a, b, h
  std::vector<std::int64_t> expert_tokens;     // (E) assignments routed to each expert (capacity not applied)
  std::int64_t moe_dropped = 0;                // assignments over capacity
  double moe_aux = 0;                          // E · Σ_e f_e · P_e of this forward
};

struct Activations {
  std::int64_t B = 0, T = 0;
  std::vector<std::int32_t> positions;   // (T)
  std::vector<LayerActs> layers;
  std::vector<float> x_final;   // (N, C) residual stream after the last block
  std::vector<float> ln_final;  // (N, C)
  std::vector<float> rstd_final;// (N)
  std::vector<float> mean_final;// (N) layernorm only (ln_final, rstd_final empty without norms)
  std::vector<float> logits;    // (N, V); backward overwrites it with dlogits
  std::vector<float> losses;    // (N) per-token cross-entropy
  std::vector<float> ce_lse;    // (N)
  // backward scratch
  std::vector<float> dx;        // (N, C) gradient of the residual stream
  std::vector<float> dbuf;      // (N, max(C, Q)) gradient of a sublayer's input, or of the attention output
  std::vector<float> dq;        // (N, Q)
  std::vector<float> dk, dv;    // (N, K)
  std::vector<float> dqk_raw;   // (N, Q) QK-norm backward's output (qk_norm only)
  std::vector<float> dln_ffn;   // (N, C) parallel blocks: the feed-forward's share of ln1's gradient
  std::vector<float> ddrop;     // (N, C) dropout: the residual gradient through a site's mask
  std::vector<float> dh, da, db;// (N, F); (N, Fe) with MoE: one expert's rows at a time
  std::vector<float> dsub;      // (N, C) post and double placements: the gradient of a sublayer's output
  // MoE scratch (moe only), shared by the layers: an expert's gathered input rows, its output rows
  // (forward: a shared expert's output; backward: the gradient of an expert's output rows), the
  // gradient of its input rows, and the router logits' gradient.
  std::vector<float> moe_in, moe_tmp, moe_dx;   // (N, C)
  std::vector<float> moe_dr;                    // (N, E)
  PassOptions pass;             // what the last forward ran with; backward regenerates its masks

  // With_backward::no allocates only what forward needs (evaluation, generation).
  enum class WithBackward { no, yes };
  Activations(const ModelConfig& c, std::int64_t B, std::int64_t T, WithBackward wb = WithBackward::yes);
  std::int64_t bytes() const;
};

// For generation: keys and values of earlier positions, batch 1, K = Hkv·D floats per position and
// layer (grouped-query attention shrinks the cache by H / Hkv). A full-attention layer keeps every
// position, capacity rows; a windowed layer only the last min(W, capacity): a ring, position p in
// slot p % W (the window bounds the cache).
struct KvCache {
  std::int64_t capacity = 0;
  std::int64_t length = 0;          // positions filled
  std::vector<std::int64_t> slots;  // (L) rows of layer l: capacity, or min(W, capacity)
  std::vector<std::int64_t> offset; // (L) floats before layer l's rows in k and v
  std::vector<float> k, v;          // (Σ slots, K)
  // Scratch of a windowed layer's step: the cached window and the new positions' keys and values
  // in position order, (≤ W − 1 + T, K), the layout attention reads.
  std::vector<float> k_window, v_window;
  KvCache(const ModelConfig& c, std::int64_t capacity);
  std::int64_t bytes() const;   // of k and v, fp32
};

// Forward over ids (B, T), filling acts (logits included).
// With a cache (B must be 1): the T tokens sit at positions cache->length ..; their keys and values
// are appended to the cache, attention also sees the cached ones, and only the last position's
// logits are computed (acts.logits row 0). `pass` says training (dropout drawn from its seed) or
// evaluation (the default); a cache is for evaluation only.
void model_forward(Activations& acts, Model& model, const std::int32_t* ids, std::int64_t B, std::int64_t T,
                   KvCache* cache = nullptr, const PassOptions& pass = {});

// Mean cross-entropy of acts.logits against targets (B, T); fills acts.losses and acts.ce_lse. With
// config.z_loss the objective backward differentiates also has z_loss · mean(lse²), and with MoE
// moe.aux_loss · moe_aux(acts); this value (the one logged and evaluated) is the cross-entropy alone.
double model_loss(Activations& acts, const Model& model, const std::int32_t* targets);

// Σ over the layers of the load-balancing loss of the last model_forward (0 without MoE).
double moe_aux(const Activations& acts);

// One layer's mixture-of-experts feed-forward, the pieces model_forward and model_backward call
// (exposed as the spec of the GPU path's tests). moe_forward: y (N, C) = Σ_selected w_e·FFN_e(x) +
// Σ_s FFN_shared_s(x) over x (N, C), filling a's MoE buffers (a.moe_aux included) and using acts'
// MoE scratch; `capacity` applies moe.capacity_factor. moe_backward: dx (N, C) overwritten with the
// gradient of x from dy (N, C); the weight gradients accumulate into g; aux_scale is the aux loss's
// coefficient in the differentiated objective (loss_scale · moe.aux_loss).
void moe_forward(float* y, LayerActs& a, Activations& acts, const float* x, const LayerWeights& w,
                 const ModelConfig& c, std::int64_t N, bool capacity);
void moe_backward(float* dx, const LayerWeights& g, Activations& acts, const LayerActs& a, const float* dy,
                  const float* x, const LayerWeights& w, const ModelConfig& c, std::int64_t N, double aux_scale);

// Adds the gradient of (loss_scale · (mean loss [+ z-loss] [+ aux_loss · moe_aux])) to grads (an
// arena with the model's layout), using the activations of the last model_forward + model_loss on
// the same ids, with that forward's dropout masks (acts.pass). Overwrites acts.logits.
void model_backward(std::vector<float>& grads, Activations& acts, Model& model, const std::int32_t* ids,
                    const std::int32_t* targets, float loss_scale);

}  // namespace scratchlm
