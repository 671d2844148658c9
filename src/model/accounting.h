// Resource accounting (CS336 assignment 1, "resource accounting"): parameters, FLOPs and fp32
// memory of the Transformer LM in model.h, computed from its shape alone — nothing is allocated.
//
// Dimensions: V vocab_size, C d_model, L num_layers, H num_heads, Hkv num_kv_heads, D the head size,
// Q = H·D and K = Hkv·D the query and key/value widths (both C by default), F d_ff, W the attention
// window, L_full and L_win the layers with full and windowed attention; T is the sequence length
// being accounted (default context_length, at most context_length), B the batch, N = B·T tokens.
//
// Conventions (each has variants in the literature; these are the ones used here):
//   - Parameters: token embedding (V, C); learned position embeddings (context_length, C) if any;
//     per layer ln1 (C), q_proj (Q, C), k_proj and v_proj (K, C), output_proj (C, Q), no biases,
//     ln2 (C), SwiGLU w1 (F, C), w2 (C, F), w3 (F, C); ln_final (C); an untied lm_head (V, C).
//     "Non-embedding" excludes the token and position embeddings (Kaplan et al.); lm_head is
//     counted in it. The variants (config.h) change these counts: LayerNorm's biases, no norms, the
//     double norms, the Linears' biases, no w3 without a gate, QK-norm gains, tied embeddings, and a
//     mixture of experts: the router (E, C) and E + S experts of width Fe in place of the
//     feed-forward. "Active" counts what one token uses: the router, k routed experts and the S
//     shared ones (all of a dense model).
//   - FLOPs: a matrix product (m, k)·(k, n) costs 2·m·n·k. Attention scores Q·Kᵀ and the mix P·V of
//     a full layer are counted unmasked (full T×T): the causal mask does not change the dense
//     products we compute. A windowed layer's are counted as min(W, T) keys per query, unmasked
//     within the band (the first W − 1 queries see fewer keys; the count ignores that). A mixture
//     of experts costs, per token, the router 2·C·E and k + S experts (dropless: with a capacity,
//     dropped assignments cost nothing, so this is an upper bound).
//     Backward of a matmul is two matmuls of the same size (dinput and dweight), so backward = 2×
//     forward and a training step = 3× forward — the standard 6·N_params per token plus attention.
//     Non-matmul ops (norms, RoPE, softmax, SwiGLU's gate, biases, routing, residual adds,
//     cross-entropy) are counted roughly, reported separately and left out of the totals (well under
//     1% at GPT-2 sizes).
//   - Memory: fp32 (4 bytes a value). Parameters, gradients (same arena layout), AdamW m and v (2×
//     parameters), and the activations of the CPU path's plan: exactly the buffers of Activations
//     (model.h) allocated with backward, i.e. Activations(c, B, T).bytes() (int32 routing indices 4
//     bytes, int64 expert counts 8). Per-thread temporaries inside ops and the (T) int32 positions
//     buffer are not counted.
//   - KV cache (generation): K keys and K values per position and layer; a full layer keeps every
//     position, a windowed layer at most W (a ring). fp32 is the CPU's cache, bf16 a half-size one.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"

namespace scratchlm {

struct ParamCounts {
  std::int64_t embedding = 0;            // V·C token embedding
  std::int64_t position_embedding = 0;   // context_length·C with learned positions, else 0
  std::int64_t attention_per_layer = 0;  // 2·C·Q + 2·C·K  q, k, v, output projections (4·C² by default; + biases)
  std::int64_t norms_per_layer = 0;      // 2·C   ln1, ln2 gains (+ biases, double norms, QK-norm gains)
  std::int64_t ffn_per_layer = 0;        // 3·C·F w1, w2, w3 (+ biases); MoE: router + (E + S) experts
  std::int64_t final_norm = 0;           // C (2·C with LayerNorm's bias, 0 without norms)
  std::int64_t lm_head = 0;              // V·C (untied)
  std::int64_t total = 0;                // embeddings + L·(per layer) + final_norm + lm_head
  std::int64_t non_embedding = 0;        // total − embedding − position_embedding (lm_head counted)
  // Mixtures of experts (0 otherwise): the router (E·C) and one expert of width Fe, of a layer.
  std::int64_t router_per_layer = 0;
  std::int64_t per_expert = 0;
  std::int64_t ffn_active_per_layer = 0; // what one token uses: router + (k + S) experts; = ffn_per_layer if dense
  std::int64_t active = 0;               // total − L·(ffn_per_layer − ffn_active_per_layer)
};

// One matrix product of the forward pass, summed over the layers it occurs in, for one sequence.
struct MatmulFlops {
  std::string name;      // "q_proj", "scores QK^T", ...
  std::string formula;   // "2·T·C·C·L"
  double per_sequence;   // FLOPs for one sequence of T tokens
};

struct MemoryPlan {   // bytes, fp32; the formulas are the CS336 model's, and each *_formula the config's
  std::int64_t parameters = 0;        // 4·P
  std::int64_t gradients = 0;         // 4·P
  std::int64_t adamw_state = 0;       // 8·P (m and v)
  std::int64_t act_layers = 0;        // 4·N·(8C + 2 + H + 3F)·L   saved by forward for backward
  std::int64_t act_final = 0;         // 4·N·(2C + 3)  x_final, ln_final, rstd_final, losses, ce_lse
  std::int64_t act_logits = 0;        // 4·N·V
  std::int64_t act_backward = 0;      // 4·N·(5C + 3F) backward scratch dx, dbuf, dq, dk, dv, dh, da, db
  std::int64_t act_moe_scratch = 0;   // 4·N·2C  MoE only: moe_in, moe_tmp (forward scratch)
  std::int64_t activations = 0;       // the five above
  std::int64_t total = 0;             // parameters + gradients + adamw_state + activations
  std::string act_layers_formula, act_final_formula, act_backward_formula;   // "4·N·(8C + 2 + H + 3F)·L", ...
};

// Generation's KV cache, bytes.
struct KvCacheBytes {
  std::int64_t per_token_fp32 = 0;       // 2·K·L·4: a new position, while the sequence is within every window
  std::int64_t per_token_full_fp32 = 0;  // 2·K·L_full·4: past the window only the full layers grow
  std::int64_t sequence_fp32 = 0;        // one context_length sequence: 2·K·(L_full·ctx + L_win·min(W, ctx))·4
  std::int64_t per_token_bf16 = 0, per_token_full_bf16 = 0, sequence_bf16 = 0;   // half of each
};

struct Accounting {
  ModelConfig config;
  std::int64_t batch = 0;     // B
  std::int64_t seq_len = 0;   // T
  ParamCounts params;
  std::vector<MatmulFlops> forward;   // every forward matmul, in model order
  double forward_per_sequence = 0;    // Σ forward
  double forward_per_token = 0;       // forward_per_sequence / T
  double backward_per_sequence = 0;   // 2 × forward
  double training_per_sequence = 0;   // 3 × forward
  double training_per_token = 0;      // = train_flops_per_token(config, T)
  double training_per_step = 0;       // B × training_per_sequence
  double non_matmul_per_sequence = 0; // rough forward estimate, not in any total above
  MemoryPlan memory;
  KvCacheBytes kv_cache;
};

// Throws Error if batch or seq_len is not positive, seq_len exceeds context_length, or a count
// overflows 64 bits.
Accounting compute_accounting(const ModelConfig& c, std::int64_t batch, std::int64_t seq_len);

// Training FLOPs per token at sequence length seq_len: 3 × forward matmul FLOPs / seq_len, i.e.
// 6·(non-embedding matmul weights) + 12·L·T·C (attention, unmasked) for the CS336 shape; in general
// 6·(matmul weights) + 12·T·Q·L_full + 12·min(W, T)·Q·L_win. For MFU.
double train_flops_per_token(const ModelConfig& c, std::int64_t seq_len);

// A human-readable report: aligned columns, thousands separators, GB (10⁹ bytes) and TFLOPs.
std::string accounting_table(const Accounting& a);
nlohmann::ordered_json to_json(const Accounting& a);

}  // namespace scratchlm
