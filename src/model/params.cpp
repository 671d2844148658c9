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
  for (const ParamSpec& s : specs)
    if (s.name == name) return s;
  SLM_CHECK(false, "no parameter named ", name);
  std::abort();
}

ParamLayout param_layout(const ModelConfig& c) {
  const std::int64_t V = c.vocab_size, C = c.d_model, F = c.d_ff;
  ParamLayout layout;
  auto add = [&](std::string name, std::vector<std::int64_t> shape, ParamInit init) {
    layout.specs.push_back({std::move(name), std::move(shape), init, init == ParamInit::ones});
  };
  const std::int64_t Q = c.q_width(), K = c.kv_width();   // H·D, Hkv·D
  add("token_embeddings.weight", {V, C}, ParamInit::embedding);
  // learned absolute positions: initialised like the token embedding
  if (c.position == Position::learned) add("position_embeddings.weight", {c.context_length, C}, ParamInit::embedding);
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    add(p + "ln1.weight", {C}, ParamInit::ones);
    add(p + "attn.q_proj.weight", {Q, C}, ParamInit::linear);
    add(p + "attn.k_proj.weight", {K, C}, ParamInit::linear);
    add(p + "attn.v_proj.weight", {K, C}, ParamInit::linear);
    add(p + "attn.output_proj.weight", {C, Q}, ParamInit::linear);
    if (c.qk_norm) {
      add(p + "attn.q_norm.weight", {c.d_head()}, ParamInit::ones);
      add(p + "attn.k_norm.weight", {c.d_head()}, ParamInit::ones);
    }
    if (!c.parallel_block) add(p + "ln2.weight", {C}, ParamInit::ones);
    add(p + "ffn.w1.weight", {F, C}, ParamInit::linear);
    add(p + "ffn.w2.weight", {C, F}, ParamInit::linear);
    if (c.gated()) add(p + "ffn.w3.weight", {F, C}, ParamInit::linear);
  }
  layout.gated = c.gated();
  add("ln_final.weight", {C}, ParamInit::ones);
  if (!c.tie_embeddings) add("lm_head.weight", {V, C}, ParamInit::linear);
  layout.tied = c.tie_embeddings;
  layout.qk_norm = c.qk_norm;
  layout.parallel = c.parallel_block;
  layout.learned_positions = c.position == Position::learned;
  for (ParamSpec& s : layout.specs) {
    s.offset = layout.total;
    layout.total += s.numel();
  }
  return layout;
}

ModelWeights model_weights(const ParamLayout& layout, float* arena) {
  // The table order is fixed (see params.h), so views are taken by walking it once.
  std::size_t k = 0;
  auto next = [&]() { return arena + layout.specs[k++].offset; };
  ModelWeights w;
  w.embedding = next();
  w.position = layout.learned_positions ? next() : nullptr;
  const std::size_t per_layer = 7 + (layout.parallel ? 0 : 1) + (layout.gated ? 1 : 0) + (layout.qk_norm ? 2 : 0);
  const std::size_t outside = (layout.tied ? 2 : 3) + (layout.learned_positions ? 1 : 0);
  const std::size_t num_layers = (layout.specs.size() - outside) / per_layer;
  for (std::size_t i = 0; i < num_layers; ++i) {
    LayerWeights l;
    l.ln1 = next();
    l.wq = next();
    l.wk = next();
    l.wv = next();
    l.wo = next();
    l.q_norm = layout.qk_norm ? next() : nullptr;
    l.k_norm = layout.qk_norm ? next() : nullptr;
    l.ln2 = layout.parallel ? nullptr : next();
    l.w1 = next();
    l.w2 = next();
    l.w3 = layout.gated ? next() : nullptr;
    w.layers.push_back(l);
  }
  w.ln_final = next();
  w.lm_head = layout.tied ? w.embedding : next();
  SLM_CHECK(k == layout.specs.size());
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
