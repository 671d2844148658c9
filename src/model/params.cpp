#include "model/params.h"

#include <cmath>

#include "util/error.h"

namespace scratchlm {

std::int64_t ParamSpec::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

const ParamSpec& ParamLayout::find(const std::string& name) const {
  const ParamSpec* s = get(name);
  SLM_CHECK(s, "no parameter named ", name);
  return *s;
}

const ParamSpec* ParamLayout::get(const std::string& name) const {
  const auto it = index.find(name);
  return it == index.end() ? nullptr : &specs[it->second];
}

ParamLayout param_layout(const ModelConfig& c) {
  const std::int64_t V = c.vocab_size, C = c.d_model, F = c.d_ff;
  ParamLayout layout;
  auto add = [&](std::string name, std::vector<std::int64_t> shape, ParamInit init) {
    const bool gain_or_bias = init == ParamInit::ones || init == ParamInit::zeros;
    layout.specs.push_back({std::move(name), std::move(shape), init, gain_or_bias});
  };
  const std::int64_t Q = c.q_width(), K = c.kv_width();   // H·D, Hkv·D
  // A Linear's weight (d_out, d_in), then its bias (d_out) with "bias".
  auto linear = [&](const std::string& name, std::int64_t d_out, std::int64_t d_in, bool bias) {
    add(name + ".weight", {d_out, d_in}, ParamInit::linear);
    if (bias) add(name + ".bias", {d_out}, ParamInit::zeros);
  };
  // A norm's gain, then LayerNorm's bias; nothing with "norm": "none".
  auto norm = [&](const std::string& name) {
    if (!c.has_norms()) return;
    add(name + ".weight", {C}, ParamInit::ones);
    if (c.norm_has_bias()) add(name + ".bias", {C}, ParamInit::zeros);
  };
  // One feed-forward of width f: w1, w2 (and w3 when gated).
  auto ffn = [&](const std::string& p, std::int64_t f) {
    linear(p + "w1", f, C, c.bias);
    linear(p + "w2", C, f, c.bias);
    if (c.gated()) linear(p + "w3", f, C, c.bias);
  };
  const bool double_norm = c.norm_placement == NormPlacement::pre_and_post;
  // Tied embeddings: the matrix is also the LM head, so it starts as the untied head does (a linear
  // (V, C) init): the first logits are the untied model's in distribution. With N(0, 1) the logits'
  // scale is √C (loss 84 instead of ln V = 8.3 at d_model 128, and 40 steps to recover).
  add("token_embeddings.weight", {V, C}, c.tie_embeddings ? ParamInit::linear : ParamInit::embedding);
  // learned absolute positions: initialised like the token embedding
  if (c.position == Position::learned) add("position_embeddings.weight", {c.context_length, C}, ParamInit::embedding);
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    norm(p + "ln1");
    linear(p + "attn.q_proj", Q, C, c.bias);
    linear(p + "attn.k_proj", K, C, c.bias);
    linear(p + "attn.v_proj", K, C, c.bias);
    linear(p + "attn.output_proj", C, Q, c.bias);
    if (c.qk_norm) {
      add(p + "attn.q_norm.weight", {c.d_head()}, ParamInit::ones);
      add(p + "attn.k_norm.weight", {c.d_head()}, ParamInit::ones);
    }
    if (double_norm) norm(p + "post_attn_norm");
    if (!c.parallel_block) norm(p + "ln2");
    if (c.is_moe()) {
      linear(p + "ffn.router", c.moe.num_experts, C, false);   // the router has no bias
      for (std::int64_t e = 0; e < c.moe.num_experts; ++e)
        ffn(p + "ffn.experts." + std::to_string(e) + ".", c.moe.d_ff_expert);
      for (std::int64_t e = 0; e < c.moe.num_shared; ++e)
        ffn(p + "ffn.shared_experts." + std::to_string(e) + ".", c.moe.d_ff_expert);
    } else {
      ffn(p + "ffn.", F);
    }
    if (double_norm) norm(p + "post_ffn_norm");
  }
  layout.gated = c.gated();
  norm("ln_final");
  if (!c.tie_embeddings) add("lm_head.weight", {V, C}, ParamInit::linear);
  layout.tied = c.tie_embeddings;
  layout.qk_norm = c.qk_norm;
  layout.parallel = c.parallel_block;
  for (std::size_t k = 0; k < layout.specs.size(); ++k) {
    ParamSpec& s = layout.specs[k];
    s.offset = layout.total;
    layout.total += s.numel();
    layout.index.emplace(s.name, k);
  }
  return layout;
}

ModelWeights model_weights(const ParamLayout& layout, float* arena) {
  // By name (the table's order is param_layout's business): an absent tensor is a null view. Every
  // tensor of the table must be taken exactly once, which the count at the end checks.
  std::size_t taken = 0;
  auto at = [&](const std::string& name) -> float* {
    const ParamSpec* s = layout.get(name);
    if (!s) return nullptr;
    ++taken;
    return arena + s->offset;
  };
  auto norm = [&](const std::string& name) { return NormWeights{at(name + ".weight"), at(name + ".bias")}; };
  auto ffn = [&](const std::string& p) {
    return FfnWeights{.w1 = at(p + "w1.weight"), .b1 = at(p + "w1.bias"), .w2 = at(p + "w2.weight"),
                      .b2 = at(p + "w2.bias"), .w3 = at(p + "w3.weight"), .b3 = at(p + "w3.bias")};
  };
  ModelWeights w;
  w.embedding = at("token_embeddings.weight");
  w.position = at("position_embeddings.weight");
  for (std::int64_t i = 0;; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    if (!layout.get(p + "attn.q_proj.weight")) break;
    LayerWeights l;
    const NormWeights n1 = norm(p + "ln1"), n2 = norm(p + "ln2");
    l.ln1 = n1.weight;
    l.ln1_bias = n1.bias;
    l.wq = at(p + "attn.q_proj.weight");
    l.bq = at(p + "attn.q_proj.bias");
    l.wk = at(p + "attn.k_proj.weight");
    l.bk = at(p + "attn.k_proj.bias");
    l.wv = at(p + "attn.v_proj.weight");
    l.bv = at(p + "attn.v_proj.bias");
    l.wo = at(p + "attn.output_proj.weight");
    l.bo = at(p + "attn.output_proj.bias");
    l.q_norm = at(p + "attn.q_norm.weight");
    l.k_norm = at(p + "attn.k_norm.weight");
    l.post_attn_norm = norm(p + "post_attn_norm");
    l.ln2 = n2.weight;
    l.ln2_bias = n2.bias;
    const FfnWeights dense = ffn(p + "ffn.");
    l.w1 = dense.w1, l.b1 = dense.b1, l.w2 = dense.w2, l.b2 = dense.b2, l.w3 = dense.w3, l.b3 = dense.b3;
    l.router = at(p + "ffn.router.weight");
    for (std::int64_t e = 0; layout.get(p + "ffn.experts." + std::to_string(e) + ".w1.weight"); ++e)
      l.experts.push_back(ffn(p + "ffn.experts." + std::to_string(e) + "."));
    for (std::int64_t e = 0; layout.get(p + "ffn.shared_experts." + std::to_string(e) + ".w1.weight"); ++e)
      l.shared_experts.push_back(ffn(p + "ffn.shared_experts." + std::to_string(e) + "."));
    l.post_ffn_norm = norm(p + "post_ffn_norm");
    w.layers.push_back(std::move(l));
  }
  const NormWeights final_norm = norm("ln_final");
  w.ln_final = final_norm.weight;
  w.ln_final_bias = final_norm.bias;
  w.lm_head = layout.tied ? w.embedding : at("lm_head.weight");
  SLM_CHECK(taken == layout.specs.size(), "the parameter table has tensors the model does not use");
  return w;
}

void init_params(const ParamLayout& layout, float* arena, Rng& rng) {
  for (const ParamSpec& s : layout.specs) {
    float* p = arena + s.offset;
    const std::int64_t n = s.numel();
    switch (s.init) {
      case ParamInit::ones:
        for (std::int64_t i = 0; i < n; ++i) p[i] = 1.0f;
        break;
      case ParamInit::zeros:
        for (std::int64_t i = 0; i < n; ++i) p[i] = 0.0f;
        break;
      case ParamInit::embedding:
        for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(rng.truncated_normal(1.0, 3.0));
        break;
      case ParamInit::linear: {
        const double d_out = static_cast<double>(s.shape[0]), d_in = static_cast<double>(s.shape[1]);
        const double std = std::sqrt(2.0 / (d_in + d_out));
        for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(rng.truncated_normal(std, 3.0 * std));
        break;
      }
    }
  }
}

}  // namespace scratchlm
