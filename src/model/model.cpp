#include "model/model.h"

#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/swiglu.h"
#include "util/error.h"

namespace scratchlm {

Model::Model(const ModelConfig& c)
    : config(c),
      layout(param_layout(c)),
      params(static_cast<std::size_t>(layout.total), 0.0f),
      rope(make_rope_table(c.rope_theta, c.d_head(), c.context_length)) {}

Activations::Activations(const ModelConfig& c, std::int64_t B_, std::int64_t T_, WithBackward wb) : B(B_), T(T_) {
  const auto N = static_cast<std::size_t>(B * T), C = static_cast<std::size_t>(c.d_model),
             F = static_cast<std::size_t>(c.d_ff), V = static_cast<std::size_t>(c.vocab_size),
             H = static_cast<std::size_t>(c.num_heads);
  positions.resize(static_cast<std::size_t>(T));
  layers.resize(static_cast<std::size_t>(c.num_layers));
  for (LayerActs& l : layers) {
    for (auto* buf : {&l.x_in, &l.ln1, &l.q, &l.k, &l.v, &l.attn, &l.x_mid}) buf->resize(N * C);
    l.rstd1.resize(N);
    if (!c.parallel_block) {   // a parallel block's feed-forward reads ln1
      l.ln2.resize(N * C);
      l.rstd2.resize(N);
    }
    if (c.qk_norm) {
      for (auto* buf : {&l.q_raw, &l.k_raw}) buf->resize(N * C);
      for (auto* buf : {&l.rstd_q, &l.rstd_k}) buf->resize(N * H);
    }
    l.lse.resize(N * H);
    for (auto* buf : {&l.a, &l.h}) buf->resize(N * F);
    if (c.gated()) l.b.resize(N * F);
  }
  x_final.resize(N * C);
  ln_final.resize(N * C);
  rstd_final.resize(N);
  logits.resize(N * V);
  losses.resize(N);
  ce_lse.resize(N);
  if (wb == WithBackward::yes) {
    for (auto* buf : {&dx, &dbuf, &dq, &dk, &dv}) buf->resize(N * C);
    if (c.qk_norm) dqk_raw.resize(N * C);
    if (c.parallel_block) dln_ffn.resize(N * C);
    for (auto* buf : {&dh, &da}) buf->resize(N * F);
    if (c.gated()) db.resize(N * F);
  }
}

std::int64_t Activations::bytes() const {
  std::size_t floats = 0;
  for (const LayerActs& l : layers)
    for (const auto* buf : {&l.x_in, &l.ln1, &l.rstd1, &l.q, &l.k, &l.v, &l.lse, &l.attn, &l.x_mid, &l.ln2,
                            &l.rstd2, &l.a, &l.b, &l.h, &l.q_raw, &l.k_raw, &l.rstd_q, &l.rstd_k})
      floats += buf->size();
  for (const auto* buf : {&x_final, &ln_final, &rstd_final, &logits, &losses, &ce_lse, &dx, &dbuf, &dq, &dk, &dv,
                          &dh, &da, &db, &dqk_raw, &dln_ffn})
    floats += buf->size();
  return static_cast<std::int64_t>(4 * floats);
}

KvCache::KvCache(const ModelConfig& c, std::int64_t capacity_) : capacity(capacity_) {
  const auto n = static_cast<std::size_t>(c.num_layers * capacity * c.d_model);
  k.resize(n);
  v.resize(n);
}

void model_forward(Activations& acts, Model& model, const std::int32_t* ids, std::int64_t B, std::int64_t T,
                   KvCache* cache) {
  const ModelConfig& c = model.config;
  const std::int64_t N = B * T, C = c.d_model, F = c.d_ff, V = c.vocab_size, H = c.num_heads, D = c.d_head();
  SLM_CHECK(B == acts.B && T == acts.T, "activations sized for another batch");
  const std::int64_t start = cache ? cache->length : 0;
  if (cache) SLM_CHECK(B == 1 && start + T <= cache->capacity, "KV cache holds one sequence of its capacity");
  SLM_CHECK(start + T <= c.context_length, "positions beyond the context length");
  for (std::int64_t t = 0; t < T; ++t) acts.positions[t] = static_cast<std::int32_t>(start + t);
  const ModelWeights w = model.weights();

  std::vector<float>& x0 = acts.layers.empty() ? acts.x_final : acts.layers[0].x_in;
  embedding_forward(x0.data(), ids, w.embedding, N, C);
  for (std::size_t l = 0; l < acts.layers.size(); ++l) {
    LayerActs& a = acts.layers[l];
    const LayerWeights& lw = w.layers[l];
    // Keys and values go to the cache when there is one (rows start..start+T of this layer's slab).
    float* k_dst = cache ? cache->k.data() + (l * cache->capacity + start) * C : a.k.data();
    float* v_dst = cache ? cache->v.data() + (l * cache->capacity + start) * C : a.v.data();
    // attention sublayer
    rmsnorm_forward(a.ln1.data(), a.rstd1.data(), a.x_in.data(), lw.ln1, N, C);
    if (c.qk_norm) {   // each head's q and k normalised over its D values: (N·H) rows of D
      linear_forward(a.q_raw.data(), a.ln1.data(), lw.wq, N, C, C);
      linear_forward(a.k_raw.data(), a.ln1.data(), lw.wk, N, C, C);
      rmsnorm_forward(a.q.data(), a.rstd_q.data(), a.q_raw.data(), lw.q_norm, N * H, D);
      rmsnorm_forward(k_dst, a.rstd_k.data(), a.k_raw.data(), lw.k_norm, N * H, D);
    } else {
      linear_forward(a.q.data(), a.ln1.data(), lw.wq, N, C, C);
      linear_forward(k_dst, a.ln1.data(), lw.wk, N, C, C);
    }
    linear_forward(v_dst, a.ln1.data(), lw.wv, N, C, C);
    if (c.position == Position::rope) {
      rope_forward(a.q.data(), a.q.data(), acts.positions.data(), model.rope, B, T, H, D);
      rope_forward(k_dst, k_dst, acts.positions.data(), model.rope, B, T, H, D);
    }
    AttentionDims dims{.B = B, .H = H, .D = D, .Tq = T, .Tk = start + T, .kv_batch_stride = 0};
    const float* k_all = cache ? cache->k.data() + l * cache->capacity * C : a.k.data();
    const float* v_all = cache ? cache->v.data() + l * cache->capacity * C : a.v.data();
    attention_forward(a.attn.data(), a.lse.data(), a.q.data(), k_all, v_all, dims);
    linear_forward(a.x_mid.data(), a.attn.data(), lw.wo, N, C, C);
    add_into(a.x_mid.data(), a.x_in.data(), N * C);   // x_mid = x_in + attn
    // feed-forward sublayer, writing the next block's input
    std::vector<float>& x_out = l + 1 < acts.layers.size() ? acts.layers[l + 1].x_in : acts.x_final;
    // serial: ffn(ln2(x_mid)); parallel: ffn(ln1(x_in)), so x_out = x_in + attn + ffn
    const float* ffn_in = c.parallel_block ? a.ln1.data() : a.ln2.data();
    if (!c.parallel_block) rmsnorm_forward(a.ln2.data(), a.rstd2.data(), a.x_mid.data(), lw.ln2, N, C);
    linear_forward(a.a.data(), ffn_in, lw.w1, N, C, F);
    if (c.ffn == FfnKind::swiglu) {
      linear_forward(a.b.data(), ffn_in, lw.w3, N, C, F);
      swiglu_forward(a.h.data(), a.a.data(), a.b.data(), N * F);
    } else if (c.gated()) {   // GeGLU, ReGLU
      linear_forward(a.b.data(), ffn_in, lw.w3, N, C, F);
      gated_forward(a.h.data(), a.a.data(), a.b.data(), N * F, c.activation);
    } else {                  // plain MLP
      activation_forward(a.h.data(), a.a.data(), N * F, c.activation);
    }
    linear_forward(x_out.data(), a.h.data(), lw.w2, N, F, C);
    add_into(x_out.data(), a.x_mid.data(), N * C);    // x_out = x_mid + ffn
  }
  if (cache) cache->length += T;
  rmsnorm_forward(acts.ln_final.data(), acts.rstd_final.data(), acts.x_final.data(), w.ln_final, N, C);
  const std::int64_t rows = cache ? 1 : N;   // generation needs only the last position's distribution
  linear_forward(acts.logits.data(), acts.ln_final.data() + (N - rows) * C, w.lm_head, rows, C, V);
  if (c.logit_softcap > 0) softcap_forward(acts.logits.data(), rows * V, static_cast<float>(c.logit_softcap));
}

double model_loss(Activations& acts, const Model& model, const std::int32_t* targets) {
  return cross_entropy_forward(acts.losses.data(), acts.ce_lse.data(), acts.logits.data(), targets,
                               acts.B * acts.T, model.config.vocab_size);
}

void model_backward(std::vector<float>& grads, Activations& acts, Model& model, const std::int32_t* ids,
                    const std::int32_t* targets, float loss_scale) {
  const ModelConfig& c = model.config;
  const std::int64_t B = acts.B, T = acts.T, N = B * T, C = c.d_model, F = c.d_ff, V = c.vocab_size,
                     H = c.num_heads, D = c.d_head();
  SLM_CHECK(!acts.dx.empty(), "activations allocated without backward buffers");
  SLM_CHECK(static_cast<std::int64_t>(grads.size()) == model.layout.total);
  const ModelWeights w = model.weights();
  const ModelWeights g = model_weights(model.layout, grads.data());
  float* dx = acts.dx.data();
  float* dbuf = acts.dbuf.data();

  // loss → logits → final norm
  float* dlogits = acts.logits.data();   // in place: the logits are not needed any more
  cross_entropy_backward(dlogits, acts.logits.data(), acts.ce_lse.data(), targets, N, V,
                         loss_scale / static_cast<float>(N),
                         {.z_loss = static_cast<float>(c.z_loss), .softcap = static_cast<float>(c.logit_softcap)});
  linear_backward(dbuf, g.lm_head, dlogits, acts.ln_final.data(), w.lm_head, N, C, V, Accumulate::no);
  rmsnorm_backward(dx, g.ln_final, dbuf, acts.x_final.data(), w.ln_final, acts.rstd_final.data(), N, C,
                   Accumulate::no);

  for (std::size_t l = acts.layers.size(); l-- > 0;) {
    LayerActs& a = acts.layers[l];
    const LayerWeights& lw = w.layers[l];
    const LayerWeights& lg = g.layers[l];
    // feed-forward sublayer: x_out = x_mid + w2(h); dx holds dL/dx_out
    linear_backward(acts.dh.data(), lg.w2, dx, a.h.data(), lw.w2, N, F, C, Accumulate::no);
    if (c.ffn == FfnKind::swiglu)
      swiglu_backward(acts.da.data(), acts.db.data(), acts.dh.data(), a.a.data(), a.b.data(), N * F);
    else if (c.gated())
      gated_backward(acts.da.data(), acts.db.data(), acts.dh.data(), a.a.data(), a.b.data(), N * F, c.activation);
    else
      activation_backward(acts.da.data(), acts.dh.data(), a.a.data(), N * F, c.activation);
    // The gradient of the feed-forward's input: ln2 (serial, through its norm into dx now) or ln1
    // (parallel: kept in dln_ffn until the attention sublayer's share of ln1's gradient joins it).
    const float* ffn_in = c.parallel_block ? a.ln1.data() : a.ln2.data();
    float* dffn_in = c.parallel_block ? acts.dln_ffn.data() : dbuf;
    linear_backward(dffn_in, lg.w1, acts.da.data(), ffn_in, lw.w1, N, C, F, Accumulate::no);
    if (c.gated()) linear_backward(dffn_in, lg.w3, acts.db.data(), ffn_in, lw.w3, N, C, F, Accumulate::yes);
    if (!c.parallel_block)
      rmsnorm_backward(dx, lg.ln2, dbuf, a.x_mid.data(), lw.ln2, a.rstd2.data(), N, C, Accumulate::yes);
    // attention sublayer: x_mid = x_in + output_proj(attn); dx holds dL/dx_mid
    linear_backward(dbuf, lg.wo, dx, a.attn.data(), lw.wo, N, C, C, Accumulate::no);
    AttentionDims dims{.B = B, .H = H, .D = D, .Tq = T, .Tk = T, .kv_batch_stride = 0};
    attention_backward(acts.dq.data(), acts.dk.data(), acts.dv.data(), dbuf, a.q.data(), a.k.data(), a.v.data(),
                       a.attn.data(), a.lse.data(), dims);
    if (c.position == Position::rope) {
      rope_backward(acts.dq.data(), acts.dq.data(), acts.positions.data(), model.rope, B, T, H, D);
      rope_backward(acts.dk.data(), acts.dk.data(), acts.positions.data(), model.rope, B, T, H, D);
    }
    if (c.qk_norm) {   // through the norms to the raw projections
      rmsnorm_backward(acts.dqk_raw.data(), lg.q_norm, acts.dq.data(), a.q_raw.data(), lw.q_norm, a.rstd_q.data(),
                       N * H, D, Accumulate::no);
      linear_backward(dbuf, lg.wq, acts.dqk_raw.data(), a.ln1.data(), lw.wq, N, C, C, Accumulate::no);
      rmsnorm_backward(acts.dqk_raw.data(), lg.k_norm, acts.dk.data(), a.k_raw.data(), lw.k_norm, a.rstd_k.data(),
                       N * H, D, Accumulate::no);
      linear_backward(dbuf, lg.wk, acts.dqk_raw.data(), a.ln1.data(), lw.wk, N, C, C, Accumulate::yes);
    } else {
      linear_backward(dbuf, lg.wq, acts.dq.data(), a.ln1.data(), lw.wq, N, C, C, Accumulate::no);
      linear_backward(dbuf, lg.wk, acts.dk.data(), a.ln1.data(), lw.wk, N, C, C, Accumulate::yes);
    }
    linear_backward(dbuf, lg.wv, acts.dv.data(), a.ln1.data(), lw.wv, N, C, C, Accumulate::yes);
    if (c.parallel_block) add_into(dbuf, acts.dln_ffn.data(), N * C);   // ln1 feeds both sublayers
    rmsnorm_backward(dx, lg.ln1, dbuf, a.x_in.data(), lw.ln1, a.rstd1.data(), N, C, Accumulate::yes);
  }
  embedding_backward(g.embedding, dx, ids, N, C);
}

}  // namespace scratchlm
