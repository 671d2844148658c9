// The parameter table: one list of specs (name, shape, initialisation, weight decay) that sizes the
// flat parameter arena, orders checkpoints, names tensors in tests and drives the weight-decay
// mask. Gradients and AdamW state are arenas with the same layout, so the optimizer is one pass
// over flat buffers and `model_weights` gives named views into any of them.
//
// Order (and names, exactly CS336's state-dict names; the variants' additions in the same style):
//   token_embeddings.weight                      (V, C)
//   position_embeddings.weight                   (context_length, C)   with position "learned" only
//   per layer i: layers.{i}.ln1.weight           (C)       absent with "norm": "none"
//                layers.{i}.ln1.bias             (C)       LayerNorm with a bias only (so for every norm)
//                layers.{i}.attn.q_proj.weight   (H·D, C)  Linear weights are [d_out, d_in]
//                layers.{i}.attn.q_proj.bias     (H·D)     with "bias" only (so for every Linear of the block)
//                layers.{i}.attn.k_proj.weight   (Hkv·D, C)  (H·D = Hkv·D = C by default)
//                layers.{i}.attn.v_proj.weight   (Hkv·D, C)
//                layers.{i}.attn.output_proj.weight (C, H·D)
//                layers.{i}.attn.q_norm.weight   (D)       with qk_norm only
//                layers.{i}.attn.k_norm.weight   (D)       with qk_norm only
//                layers.{i}.post_attn_norm.weight (C)      "norm_placement": "double" only
//                layers.{i}.ln2.weight           (C)       serial blocks only
//                layers.{i}.ffn.w1.weight        (F, C)    a dense feed-forward:
//                layers.{i}.ffn.w2.weight        (C, F)
//                layers.{i}.ffn.w3.weight        (F, C)    gated feed-forwards only (not "mlp")
//                layers.{i}.ffn.router.weight    (E, C)    or a mixture of experts ("moe"):
//                layers.{i}.ffn.experts.{e}.w1.weight (Fe, C), .w2.weight (C, Fe), .w3.weight (Fe, C)
//                layers.{i}.ffn.shared_experts.{s}.w1.weight ...  (the same per shared expert)
//                layers.{i}.post_ffn_norm.weight (C)       "norm_placement": "double" only
//   ln_final.weight                              (C)       absent with "norm": "none"
//   lm_head.weight                               (V, C)    absent with tied embeddings
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/config.h"
#include "util/rng.h"

namespace scratchlm {

enum class ParamInit { embedding, linear, ones, zeros };

struct ParamSpec {
  std::string name;
  std::vector<std::int64_t> shape;
  ParamInit init;
  bool is_gain_or_bias;     // norm gains and biases: decay_norm_gains = false exempts them from weight decay
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
  const ParamSpec& find(const std::string& name) const;   // SLM_CHECK that it exists
  const ParamSpec* get(const std::string& name) const;    // null when absent
  std::unordered_map<std::string, std::size_t> index;     // name → position in specs
};

ParamLayout param_layout(const ModelConfig& c);

// Named views into one arena laid out by param_layout (parameters, gradients or optimizer state).
// A tensor the model does not have is null: a bias without "bias", a norm with "norm": "none", ...
struct NormWeights {
  float* weight = nullptr;   // (C); null: no norm here (the identity)
  float* bias = nullptr;     // (C); LayerNorm with a bias only
};
struct FfnWeights {          // one feed-forward of width F (the dense one, an expert, a shared expert)
  float* w1 = nullptr;       // (F, C)
  float* b1 = nullptr;       // (F)
  float* w2 = nullptr;       // (C, F)
  float* b2 = nullptr;       // (C)
  float* w3 = nullptr;       // (F, C); null without a gate (ffn "mlp")
  float* b3 = nullptr;       // (F)
};
struct LayerWeights {
  float* ln1;    // (C); null without norms
  float* wq;     // (H·D, C)
  float* wk;     // (Hkv·D, C)
  float* wv;     // (Hkv·D, C)
  float* wo;     // (C, H·D)
  float* q_norm; // (D); null without qk_norm
  float* k_norm; // (D)
  float* ln2;    // (C); null in parallel blocks
  float* w1;     // (F, C); null in a mixture of experts
  float* w2;     // (C, F)
  float* w3;     // (F, C); null without a gate (ffn "mlp")
  // The variants' tensors (null when absent): biases, LayerNorm biases, the double norms, experts.
  float* bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr;   // (H·D), (Hkv·D), (Hkv·D), (C)
  float* b1 = nullptr, *b2 = nullptr, *b3 = nullptr;                  // (F), (C), (F)
  float* ln1_bias = nullptr, *ln2_bias = nullptr;                     // (C)
  NormWeights post_attn_norm, post_ffn_norm;                          // "double" placement only
  float* router = nullptr;                                            // (E, C)
  std::vector<FfnWeights> experts, shared_experts;                    // E, S of width Fe

  NormWeights norm1() const { return {ln1, ln1_bias}; }
  NormWeights norm2() const { return {ln2, ln2_bias}; }
  FfnWeights ffn() const { return {w1, b1, w2, b2, w3, b3}; }   // the dense feed-forward
};
struct ModelWeights {
  float* embedding;   // (V, C)
  float* position;    // (context_length, C); null unless position "learned"
  std::vector<LayerWeights> layers;
  float* ln_final;    // (C); null without norms
  float* ln_final_bias = nullptr;   // (C); LayerNorm with a bias only
  float* lm_head;     // (V, C); the embedding itself with tied embeddings
};
ModelWeights model_weights(const ParamLayout& layout, float* arena);

// CS336 initialisation: Linear N(0, 2/(d_in+d_out)) truncated at ±3σ (the router too); embeddings
// N(0, 1) truncated at ±3; norm gains 1; biases (Linear and LayerNorm) 0. Parameters are drawn in
// table order.
void init_params(const ParamLayout& layout, float* arena, Rng& rng);

}  // namespace scratchlm
