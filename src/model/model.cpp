#include "model/model.h"

#include <algorithm>

#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/dropout.h"
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
      rope(make_rope_table(c.rope_theta, c.d_head(), c.context_length)),
      sinusoid(c.position == Position::sinusoidal ? sinusoidal_table(c.context_length, c.d_model) : std::vector<float>{}) {}

Activations::Activations(const ModelConfig& c, std::int64_t B_, std::int64_t T_, WithBackward wb) : B(B_), T(T_) {
  const auto N = static_cast<std::size_t>(B * T), C = static_cast<std::size_t>(c.d_model),
             F = static_cast<std::size_t>(c.d_ff), V = static_cast<std::size_t>(c.vocab_size),
             H = static_cast<std::size_t>(c.num_heads), Hkv = static_cast<std::size_t>(c.kv_heads()),
             Q = static_cast<std::size_t>(c.q_width()), K = static_cast<std::size_t>(c.kv_width());
  positions.resize(static_cast<std::size_t>(T));
  layers.resize(static_cast<std::size_t>(c.num_layers));
  for (LayerActs& l : layers) {
    for (auto* buf : {&l.x_in, &l.ln1, &l.x_mid}) buf->resize(N * C);
    for (auto* buf : {&l.q, &l.attn}) buf->resize(N * Q);
    for (auto* buf : {&l.k, &l.v}) buf->resize(N * K);
    l.rstd1.resize(N);
    if (!c.parallel_block) {   // a parallel block's feed-forward reads ln1
      l.ln2.resize(N * C);
      l.rstd2.resize(N);
    }
    if (c.qk_norm) {
      l.q_raw.resize(N * Q);
      l.k_raw.resize(N * K);
      l.rstd_q.resize(N * H);
      l.rstd_k.resize(N * Hkv);
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
    dx.resize(N * C);
    dbuf.resize(N * std::max(C, Q));
    dq.resize(N * Q);
    for (auto* buf : {&dk, &dv}) buf->resize(N * K);
    if (c.qk_norm) dqk_raw.resize(N * Q);
    if (c.parallel_block) dln_ffn.resize(N * C);
    if (c.dropout > 0) ddrop.resize(N * C);
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
                          &dh, &da, &db, &dqk_raw, &dln_ffn, &ddrop})
    floats += buf->size();
  return static_cast<std::int64_t>(4 * floats);
}

KvCache::KvCache(const ModelConfig& c, std::int64_t capacity_) : capacity(capacity_) {
  std::int64_t rows = 0;
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const std::int64_t W = c.layer_window(l);
    slots.push_back(W ? std::min(W, capacity) : capacity);
    offset.push_back(rows * c.kv_width());
    rows += slots.back();
  }
  k.resize(static_cast<std::size_t>(rows * c.kv_width()));
  v.resize(k.size());
}

std::int64_t KvCache::bytes() const { return static_cast<std::int64_t>(4 * (k.size() + v.size())); }

namespace {

// Dropout at `site` with probability p in a training pass; off in evaluation.
Dropout dropout_at(const PassOptions& pass, std::uint64_t site, double p) {
  return {.p = pass.phase == Phase::training ? p : 0.0, .seed = pass.dropout_seed, .site = site};
}

// x (N, C) = dropout of x in place, when on.
void dropout_in_place(float* x, std::int64_t n, const Dropout& d) {
  if (d.on()) dropout_forward(x, x, n, d);
}

// A windowed layer's step with a cache: the keys and values its T new positions' queries can see,
// in position order: the cached ones of positions start − (W − 1) .. start − 1 (the ring keeps
// them in slots p % W), then the new ones (k_new, v_new (T, K)); returns how many rows. Then the
// new positions go into the ring (only the last W of them can survive there).
std::int64_t gather_window(KvCache& cache, std::size_t l, std::int64_t W, std::int64_t K, const float* k_new,
                           const float* v_new, std::int64_t T) {
  const std::int64_t start = cache.length, old = std::min(start, W - 1), slots = cache.slots[l];
  float* ring_k = cache.k.data() + cache.offset[l];
  float* ring_v = cache.v.data() + cache.offset[l];
  cache.k_window.resize(static_cast<std::size_t>((old + T) * K));
  cache.v_window.resize(cache.k_window.size());
  auto row = [&](std::int64_t p) { return (p % slots) * K; };   // slots = W unless the cache is shorter
  for (std::int64_t i = 0; i < old; ++i) {
    const std::int64_t p = start - old + i;
    std::copy_n(ring_k + row(p), K, cache.k_window.data() + i * K);
    std::copy_n(ring_v + row(p), K, cache.v_window.data() + i * K);
  }
  std::copy_n(k_new, T * K, cache.k_window.data() + old * K);
  std::copy_n(v_new, T * K, cache.v_window.data() + old * K);
  for (std::int64_t t = std::max<std::int64_t>(0, T - slots); t < T; ++t) {
    std::copy_n(k_new + t * K, K, ring_k + row(start + t));
    std::copy_n(v_new + t * K, K, ring_v + row(start + t));
  }
  return old + T;
}

}  // namespace

void model_forward(Activations& acts, Model& model, const std::int32_t* ids, std::int64_t B, std::int64_t T,
                   KvCache* cache, const PassOptions& pass) {
  const ModelConfig& c = model.config;
  const std::int64_t N = B * T, C = c.d_model, F = c.d_ff, V = c.vocab_size, H = c.num_heads, Hkv = c.kv_heads(),
                     D = c.d_head(), Q = c.q_width(), K = c.kv_width();
  SLM_CHECK(B == acts.B && T == acts.T, "activations sized for another batch");
  const std::int64_t start = cache ? cache->length : 0;
  if (cache) SLM_CHECK(B == 1 && start + T <= cache->capacity, "KV cache holds one sequence of its capacity");
  SLM_CHECK(!(cache && pass.phase == Phase::training), "a KV cache is for evaluation only");
  SLM_CHECK(start + T <= c.context_length, "positions beyond the context length");
  for (std::int64_t t = 0; t < T; ++t) acts.positions[t] = static_cast<std::int32_t>(start + t);
  acts.pass = pass;
  const ModelWeights w = model.weights();

  std::vector<float>& x0 = acts.layers.empty() ? acts.x_final : acts.layers[0].x_in;
  embedding_forward(x0.data(), ids, w.embedding, N, C);
  if (c.position == Position::sinusoidal)
    position_add_forward(x0.data(), model.sinusoid.data(), acts.positions.data(), B, T, C);
  if (c.position == Position::learned) position_add_forward(x0.data(), w.position, acts.positions.data(), B, T, C);
  dropout_in_place(x0.data(), N * C, dropout_at(pass, kDropoutSiteEmbedding, c.dropout));
  for (std::size_t l = 0; l < acts.layers.size(); ++l) {
    LayerActs& a = acts.layers[l];
    const LayerWeights& lw = w.layers[l];
    const std::int64_t window = c.layer_window(static_cast<std::int64_t>(l));
    // With a cache, a full layer's keys and values go straight to it (rows start..start+T of its
    // slab); a windowed layer's to the activations first, then with the cached window into the ring.
    const bool into_cache = cache && window == 0;
    float* k_dst = into_cache ? cache->k.data() + cache->offset[l] + start * K : a.k.data();
    float* v_dst = into_cache ? cache->v.data() + cache->offset[l] + start * K : a.v.data();
    // attention sublayer
    rmsnorm_forward(a.ln1.data(), a.rstd1.data(), a.x_in.data(), lw.ln1, N, C);
    if (c.qk_norm) {   // each head's q and k normalised over its D values: (N·H), (N·Hkv) rows of D
      linear_forward(a.q_raw.data(), a.ln1.data(), lw.wq, N, C, Q);
      linear_forward(a.k_raw.data(), a.ln1.data(), lw.wk, N, C, K);
      rmsnorm_forward(a.q.data(), a.rstd_q.data(), a.q_raw.data(), lw.q_norm, N * H, D);
      rmsnorm_forward(k_dst, a.rstd_k.data(), a.k_raw.data(), lw.k_norm, N * Hkv, D);
    } else {
      linear_forward(a.q.data(), a.ln1.data(), lw.wq, N, C, Q);
      linear_forward(k_dst, a.ln1.data(), lw.wk, N, C, K);
    }
    linear_forward(v_dst, a.ln1.data(), lw.wv, N, C, K);
    if (c.layer_rope(static_cast<std::int64_t>(l))) {
      rope_forward(a.q.data(), a.q.data(), acts.positions.data(), model.rope, B, T, H, D);
      rope_forward(k_dst, k_dst, acts.positions.data(), model.rope, B, T, Hkv, D);
    }
    AttentionDims dims{.B = B, .H = H, .Hkv = Hkv, .D = D, .Tq = T, .Tk = T, .kv_batch_stride = 0,
                       .window = window, .softcap = static_cast<float>(c.attn_softcap),
                       .dropout = dropout_at(pass, dropout_site_attn_probs(static_cast<std::int64_t>(l)), c.attention_dropout)};
    const float* k_all = a.k.data();
    const float* v_all = a.v.data();
    if (into_cache) {
      k_all = cache->k.data() + cache->offset[l];
      v_all = cache->v.data() + cache->offset[l];
      dims.Tk = start + T;
    } else if (cache) {
      dims.Tk = gather_window(*cache, l, window, K, a.k.data(), a.v.data(), T);
      k_all = cache->k_window.data();
      v_all = cache->v_window.data();
    }
    attention_forward(a.attn.data(), a.lse.data(), a.q.data(), k_all, v_all, dims);
    linear_forward(a.x_mid.data(), a.attn.data(), lw.wo, N, Q, C);
    dropout_in_place(a.x_mid.data(), N * C, dropout_at(pass, dropout_site_attn_out(static_cast<std::int64_t>(l)), c.dropout));
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
    dropout_in_place(x_out.data(), N * C, dropout_at(pass, dropout_site_ffn_out(static_cast<std::int64_t>(l)), c.dropout));
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
                     H = c.num_heads, Hkv = c.kv_heads(), D = c.d_head(), Q = c.q_width(), K = c.kv_width();
  SLM_CHECK(!acts.dx.empty(), "activations allocated without backward buffers");
  const PassOptions& pass = acts.pass;   // forward's: the same dropout masks
  // The gradient through a residual dropout site's mask (the map is its own transpose), or dx as it is.
  auto through_dropout = [&](const Dropout& d) -> const float* {
    if (!d.on()) return acts.dx.data();
    dropout_forward(acts.ddrop.data(), acts.dx.data(), N * C, d);
    return acts.ddrop.data();
  };
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
    const auto layer = static_cast<std::int64_t>(l);
    // feed-forward sublayer: x_out = x_mid + drop(w2(h)); dx holds dL/dx_out
    const float* dffn_out = through_dropout(dropout_at(pass, dropout_site_ffn_out(layer), c.dropout));
    linear_backward(acts.dh.data(), lg.w2, dffn_out, a.h.data(), lw.w2, N, F, C, Accumulate::no);
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
    // attention sublayer: x_mid = x_in + drop(output_proj(attn)); dx holds dL/dx_mid
    const float* dattn_out = through_dropout(dropout_at(pass, dropout_site_attn_out(layer), c.dropout));
    linear_backward(dbuf, lg.wo, dattn_out, a.attn.data(), lw.wo, N, Q, C, Accumulate::no);   // dbuf (N, Q)
    AttentionDims dims{.B = B, .H = H, .Hkv = Hkv, .D = D, .Tq = T, .Tk = T, .kv_batch_stride = 0,
                       .window = c.layer_window(layer), .softcap = static_cast<float>(c.attn_softcap),
                       .dropout = dropout_at(pass, dropout_site_attn_probs(layer), c.attention_dropout)};
    attention_backward(acts.dq.data(), acts.dk.data(), acts.dv.data(), dbuf, a.q.data(), a.k.data(), a.v.data(),
                       a.attn.data(), a.lse.data(), dims);
    if (c.layer_rope(layer)) {
      rope_backward(acts.dq.data(), acts.dq.data(), acts.positions.data(), model.rope, B, T, H, D);
      rope_backward(acts.dk.data(), acts.dk.data(), acts.positions.data(), model.rope, B, T, Hkv, D);
    }
    // from here dbuf is the gradient of ln1 (N, C)
    if (c.qk_norm) {   // through the norms to the raw projections
      rmsnorm_backward(acts.dqk_raw.data(), lg.q_norm, acts.dq.data(), a.q_raw.data(), lw.q_norm, a.rstd_q.data(),
                       N * H, D, Accumulate::no);
      linear_backward(dbuf, lg.wq, acts.dqk_raw.data(), a.ln1.data(), lw.wq, N, C, Q, Accumulate::no);
      rmsnorm_backward(acts.dqk_raw.data(), lg.k_norm, acts.dk.data(), a.k_raw.data(), lw.k_norm, a.rstd_k.data(),
                       N * Hkv, D, Accumulate::no);
      linear_backward(dbuf, lg.wk, acts.dqk_raw.data(), a.ln1.data(), lw.wk, N, C, K, Accumulate::yes);
    } else {
      linear_backward(dbuf, lg.wq, acts.dq.data(), a.ln1.data(), lw.wq, N, C, Q, Accumulate::no);
      linear_backward(dbuf, lg.wk, acts.dk.data(), a.ln1.data(), lw.wk, N, C, K, Accumulate::yes);
    }
    linear_backward(dbuf, lg.wv, acts.dv.data(), a.ln1.data(), lw.wv, N, C, K, Accumulate::yes);
    if (c.parallel_block) add_into(dbuf, acts.dln_ffn.data(), N * C);   // ln1 feeds both sublayers
    rmsnorm_backward(dx, lg.ln1, dbuf, a.x_in.data(), lw.ln1, a.rstd1.data(), N, C, Accumulate::yes);
  }
  // the embedding output x0 = drop(token + position): dx through the mask, in place
  const Dropout embed_drop = dropout_at(pass, kDropoutSiteEmbedding, c.dropout);
  if (embed_drop.on()) dropout_forward(dx, dx, N * C, embed_drop);
  if (c.position == Position::learned) position_add_backward(g.position, dx, acts.positions.data(), B, T, C);
  embedding_backward(g.embedding, dx, ids, N, C);
}

}  // namespace scratchlm
