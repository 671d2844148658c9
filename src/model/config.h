// The model's shape, as a JSON object with the CS336 field names:
//   {"vocab_size": 10000, "context_length": 256, "d_model": 512, "num_layers": 4,
//    "num_heads": 16, "d_ff": 1344, "rope_theta": 10000.0}
// Every field but rope_theta (default 10000) and d_ff (see d_ff_ratio below) is required; an unknown
// field or an impossible shape is an error naming the field.
// Optional variant fields (issue 6; absent means the default, the CS336 model):
//   "ffn": "swiglu" (default) | "geglu" | "reglu" (gated: act(W1 x) ⊙ W3 x, then W2) |
//          "mlp" (W2 act(W1 x), no W3);
//   "activation": for "mlp" only: "gelu" (default; exact, with erf) | "relu" | "silu" | "relu2" (ReLU²);
//   "position": "rope" (default) | "none" (NoPE: no position signal but the causal mask) |
//               "sinusoidal" | "learned" (absolute, added to the token embedding before the first
//               block: PE[p, 2i] = sin(p·10000^(−2i/C)), PE[p, 2i+1] = cos(..), or the parameter
//               position_embeddings.weight (context_length, C));
//   "tie_embeddings": false (default) | true (the LM head is the token embedding; no lm_head.weight);
//   "z_loss": 0 (default) | c > 0: c · log²Z (Z the softmax normaliser) added to each token's loss
//             (PaLM's auxiliary loss; the logged and evaluated loss stays the cross-entropy);
//   "logit_softcap": 0 (default, off) | c > 0: the final logits z become c · tanh(z / c) (Gemma 2);
//   "qk_norm": false (default) | true: RMSNorm on each head's query and key (before RoPE), with
//              gains of d_head shared by the heads (attn.q_norm.weight, attn.k_norm.weight);
//   "block": "serial" (default) | "parallel": x + attn(ln1(x)) + ffn(ln1(x)), one norm (no ln2);
// attention (issue 6):
//   "num_kv_heads": Hkv (default num_heads): grouped-query attention, 1 = multi-query; query head h
//                   reads kv head h / (num_heads / Hkv);
//   "head_dim": D (default d_model / num_heads): q_proj (H·D, C), k_proj, v_proj (Hkv·D, C),
//               output_proj (C, H·D);
//   "attention_window": W ≥ 1 (absent or 0: full causal): position p sees keys p − W < j ≤ p;
//                       less than context_length;
//   "full_attention_every": k (needs attention_window): layers l with (l + 1) % k == 0 attend
//                           fully, the others through the window; k ≤ num_layers;
//   "full_attention_position": "rope" (default) | "none" (needs full_attention_every and position
//                              "rope"): the full layers use no position signal, the windowed keep RoPE;
//   "attn_softcap": 0 (off) | c > 0: each score s = q·k/sqrt(D) becomes c·tanh(s/c) (Gemma 2);
//   "dropout": p in [0, 1): residual dropout on the embedding output and on each sublayer's output
//              before its residual add; "attention_dropout": p on the attention probabilities.
//              Inverted, training only (ops/dropout.h).
//   "norm": "rmsnorm" (default) | "layernorm" (with the population variance, eps 1e-5) | "none" (ln1,
//           ln2, ln_final and the double-norm norms are the identity and have no parameters);
//           QK-norm stays RMSNorm;
//   "norm_bias": true (default) | false: LayerNorm's bias (ln*.bias); for "layernorm" only;
//   "norm_placement": "pre" (default) | "post": x_mid = ln1(x + attn(x)), x_out = ln2(x_mid + ffn(x_mid)) |
//           "double": x_mid = x + post_attn_norm(attn(ln1(x))), x_out = x_mid + post_ffn_norm(ffn(ln2(x_mid)));
//           ln_final stays before the head in every placement; parallel blocks are "pre" only;
//   "d_ff_ratio": r > 0 instead of "d_ff": d_ff = 64·ceil(r·d_model/64). With neither, d_ff =
//           64·ceil(8/3·d_model/64) for the gated feed-forwards and 64·ceil(4·d_model/64) for "mlp"
//           (evaluated left to right in double, as Python would). to_json writes the resolved d_ff;
//   "bias": false (default) | true: a bias on every Linear of the blocks (q, k, v, output projections,
//           w1, w2, w3, the experts'), initialised to 0; not on the router or the LM head;
//   "moe": {"num_experts": E, "top_k": k, "num_shared": S (0), "d_ff_expert": Fe (d_ff),
//           "aux_loss": α (0.01), "capacity_factor": c (0 = dropless)}: every layer's feed-forward is a
//           mixture of E experts of the model's ffn kind and width Fe, k routed per token by a softmax
//           router (weights renormalised over the selected), plus S shared experts every token uses;
//           the objective adds α · Σ_layers E·Σ_e f_e·P_e (Switch Transformer). See model.h.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace scratchlm {

enum class FfnKind { swiglu, geglu, reglu, mlp };
enum class Activation { relu, gelu, silu, relu2 };
enum class Position { rope, none, sinusoidal, learned };
enum class Norm { rmsnorm, layernorm, none };
enum class NormPlacement { pre, post, pre_and_post };   // "pre", "post", "double"
const char* ffn_name(FfnKind f);
const char* activation_name(Activation a);
const char* position_name(Position p);
const char* norm_name(Norm n);
const char* norm_placement_name(NormPlacement p);

// Mixture of experts (the model field "moe"); num_experts 0 means none (a dense feed-forward).
struct MoeConfig {
  std::int64_t num_experts = 0;   // E
  std::int64_t top_k = 0;         // k experts per token
  std::int64_t num_shared = 0;    // S shared experts, used by every token
  std::int64_t d_ff_expert = 0;   // Fe, each expert's hidden width (the model's d_ff when absent)
  double aux_loss = 0.01;         // α, the load-balancing loss's coefficient
  double capacity_factor = 0.0;   // c: at most ceil(c·N·k/E) assignments per expert per micro-batch; 0 = dropless
  bool operator==(const MoeConfig&) const = default;
};

struct ModelConfig {
  std::int64_t vocab_size = 0;
  std::int64_t context_length = 0;
  std::int64_t d_model = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_heads = 0;
  std::int64_t d_ff = 0;
  double rope_theta = 10000.0;
  FfnKind ffn = FfnKind::swiglu;
  Activation activation = Activation::silu;   // the feed-forward's: silu for swiglu, gelu for geglu, relu for reglu

  Position position = Position::rope;
  bool tie_embeddings = false;
  double z_loss = 0.0;
  double logit_softcap = 0.0;
  bool qk_norm = false;
  bool parallel_block = false;
  Norm norm = Norm::rmsnorm;
  bool norm_bias = true;   // LayerNorm only
  NormPlacement norm_placement = NormPlacement::pre;
  bool bias = false;       // biases on the blocks' Linears
  MoeConfig moe = {};

  // Attention. 0 in num_kv_heads and head_dim means the default (num_heads, d_model / num_heads):
  // read them through kv_heads() and d_head().
  std::int64_t num_kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t attention_window = 0;       // 0: every layer full causal
  std::int64_t full_attention_every = 0;   // 0: every layer windowed (with a window)
  Position full_attention_position = Position::rope;   // rope or none, for the interleaved full layers
  double attn_softcap = 0.0;
  double dropout = 0.0;
  double attention_dropout = 0.0;

  bool gated() const { return ffn != FfnKind::mlp; }
  bool is_moe() const { return moe.num_experts > 0; }
  bool has_norms() const { return norm != Norm::none; }                     // ln1, ln2, ln_final exist
  bool norm_has_bias() const { return norm == Norm::layernorm && norm_bias; }  // ln*.bias exist
  // The CS336 model: what the GPU path implements so far.
  bool is_default_architecture() const {
    return ffn == FfnKind::swiglu && position == Position::rope && !tie_embeddings && z_loss == 0 &&
           logit_softcap == 0 && !qk_norm && !parallel_block && kv_heads() == num_heads && q_width() == d_model &&
           attention_window == 0 && attn_softcap == 0 && dropout == 0 && attention_dropout == 0 &&
           norm == Norm::rmsnorm && norm_placement == NormPlacement::pre && !bias && !is_moe();
  }

  std::int64_t kv_heads() const { return num_kv_heads ? num_kv_heads : num_heads; }   // Hkv
  std::int64_t d_head() const { return head_dim ? head_dim : d_model / num_heads; }   // D
  std::int64_t q_width() const { return num_heads * d_head(); }                       // H·D
  std::int64_t kv_width() const { return kv_heads() * d_head(); }                     // Hkv·D
  // Layer l (0-based): full causal attention, or its window W.
  bool full_attention_layer(std::int64_t l) const {
    return attention_window == 0 || (full_attention_every > 0 && (l + 1) % full_attention_every == 0);
  }
  std::int64_t layer_window(std::int64_t l) const { return full_attention_layer(l) ? 0 : attention_window; }
  // Whether layer l rotates its queries and keys: with RoPE, except the interleaved full layers
  // when full_attention_position is "none".
  bool layer_rope(std::int64_t l) const {
    return position == Position::rope &&
           !(full_attention_every > 0 && full_attention_layer(l) && full_attention_position == Position::none);
  }
  bool operator==(const ModelConfig&) const = default;
};

// Parses and validates; `where` names the file (or "--config") in error messages.
ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::ordered_json to_json(const ModelConfig& c);
// Throws Error naming the offending field if the shape is impossible.
void validate(const ModelConfig& c, const std::string& where);

// The model fields the GPU path (GpuModel) does not implement as this model sets them, each
// quoted, comma-separated ("\"dropout\", \"attention_dropout\""); empty when the GPU trains it:
// dropout of either kind, head_dim above 256, and mixtures of experts other than SwiGLU experts
// without biases.
std::string gpu_unsupported_fields(const ModelConfig& c);

}  // namespace scratchlm
