// The model's shape, as a JSON object with the CS336 field names:
//   {"vocab_size": 10000, "context_length": 256, "d_model": 512, "num_layers": 4,
//    "num_heads": 16, "d_ff": 1344, "rope_theta": 10000.0}
// Every field is required; an unknown field or an impossible shape is an error naming the field.
// Optional variant fields (issue 6; absent means the default, the CS336 model):
//   "ffn": "swiglu" (default) | "geglu" | "reglu" (gated: act(W1 x) ⊙ W3 x, then W2) |
//          "mlp" (W2 act(W1 x), no W3);
//   "activation": for "mlp" only: "gelu" (default; exact, with erf) | "relu" | "silu" | "relu2" (ReLU²);
//   "position": "rope" (default) | "none" (NoPE: no position signal but the causal mask);
//   "tie_embeddings": false (default) | true (the LM head is the token embedding; no lm_head.weight);
//   "z_loss": 0 (default) | c > 0: c · log²Z (Z the softmax normaliser) added to each token's loss
//             (PaLM's auxiliary loss; the logged and evaluated loss stays the cross-entropy);
//   "logit_softcap": 0 (default, off) | c > 0: the final logits z become c · tanh(z / c) (Gemma 2);
//   "qk_norm": false (default) | true: RMSNorm on each head's query and key (before RoPE), with
//              gains of d_head shared by the heads (attn.q_norm.weight, attn.k_norm.weight);
//   "block": "serial" (default) | "parallel": x + attn(ln1(x)) + ffn(ln1(x)), one norm (no ln2).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace scratchlm {

enum class FfnKind { swiglu, geglu, reglu, mlp };
enum class Activation { relu, gelu, silu, relu2 };
enum class Position { rope, none };
const char* ffn_name(FfnKind f);
const char* activation_name(Activation a);

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

  bool gated() const { return ffn != FfnKind::mlp; }
  // The CS336 model: what the GPU path implements so far.
  bool is_default_architecture() const {
    return ffn == FfnKind::swiglu && position == Position::rope && !tie_embeddings && z_loss == 0 &&
           logit_softcap == 0 && !qk_norm && !parallel_block;
  }

  std::int64_t d_head() const { return d_model / num_heads; }
  bool operator==(const ModelConfig&) const = default;
};

// Parses and validates; `where` names the file (or "--config") in error messages.
ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::ordered_json to_json(const ModelConfig& c);
// Throws Error naming the offending field if the shape is impossible.
void validate(const ModelConfig& c, const std::string& where);

}  // namespace scratchlm
