// The parameter table: one list of specs (name, shape, initialisation, weight decay) that sizes the
// flat parameter arena, orders checkpoints, names tensors in tests and drives the weight-decay
// mask. Gradients and AdamW state are arenas with the same layout, so the optimizer is one pass
// over flat buffers and `model_weights` gives named views into any of them.
//
// Order (and names, exactly CS336's state-dict names):
//   token_embeddings.weight                      (V, C)
//   position_embeddings.weight                   (context_length, C)   with position "learned" only
//   per layer i: layers.{i}.ln1.weight           (C)
//                layers.{i}.attn.q_proj.weight   (H·D, C)  Linear weights are [d_out, d_in]
//                layers.{i}.attn.k_proj.weight   (Hkv·D, C)  (H·D = Hkv·D = C by default)
//                layers.{i}.attn.v_proj.weight   (Hkv·D, C)
//                layers.{i}.attn.output_proj.weight (C, H·D)
//                layers.{i}.attn.q_norm.weight   (D)       with qk_norm only
//                layers.{i}.attn.k_norm.weight   (D)       with qk_norm only
//                layers.{i}.ln2.weight           (C)       serial blocks only
//                layers.{i}.ffn.w1.weight        (F, C)
//                layers.{i}.ffn.w2.weight        (C, F)
//                layers.{i}.ffn.w3.weight        (F, C)    gated feed-forwards only (not "mlp")
//   ln_final.weight                              (C)
//   lm_head.weight                               (V, C)    absent with tied embeddings
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "util/rng.h"

namespace scratchlm {

enum class ParamInit { embedding, linear, ones };

struct ParamSpec {
  std::string name;
  std::vector<std::int64_t> shape;
  ParamInit init;
  bool is_norm_gain;        // the optimizer may exempt these from weight decay
  std::int64_t offset = 0;  // into the arena, in floats
  std::int64_t numel() const;
};

struct ParamLayout {
  std::vector<ParamSpec> specs;
  std::int64_t total = 0;   // floats in the arena
  bool gated = true;        // the layers have ffn.w3
  bool tied = false;        // no lm_head.weight: the head is token_embeddings.weight
  bool qk_norm = false;     // the layers have attn.q_norm / attn.k_norm
  bool parallel = false;    // parallel blocks: no ln2
  bool learned_positions = false;   // position_embeddings.weight follows the token embedding
  const ParamSpec& find(const std::string& name) const;   // SLM_CHECK that it exists
};

ParamLayout param_layout(const ModelConfig& c);

// Named views into one arena laid out by param_layout (parameters, gradients or optimizer state).
struct LayerWeights {
  float* ln1;    // (C)
  float* wq;     // (H·D, C)
  float* wk;     // (Hkv·D, C)
  float* wv;     // (Hkv·D, C)
  float* wo;     // (C, H·D)
  float* q_norm; // (D); null without qk_norm
  float* k_norm; // (D)
  float* ln2;    // (C); null in parallel blocks
  float* w1;     // (F, C)
  float* w2;     // (C, F)
  float* w3;     // (F, C); null without a gate (ffn "mlp")
};
struct ModelWeights {
  float* embedding;   // (V, C)
  float* position;    // (context_length, C); null unless position "learned"
  std::vector<LayerWeights> layers;
  float* ln_final;    // (C)
  float* lm_head;     // (V, C); the embedding itself with tied embeddings
};
ModelWeights model_weights(const ParamLayout& layout, float* arena);

// CS336 initialisation: Linear N(0, 2/(d_in+d_out)) truncated at ±3σ; embeddings N(0, 1)
// truncated at ±3; norm gains 1. Parameters are drawn in table order.
void init_params(const ParamLayout& layout, float* arena, Rng& rng);

}  // namespace scratchlm
