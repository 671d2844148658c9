#include "model/model.h"

#include <algorithm>
#include <cmath>

#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/layernorm.h"
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
  const bool layernorm = c.norm == Norm::layernorm;
  const bool post = c.norm_placement == NormPlacement::post, dbl = c.norm_placement == NormPlacement::pre_and_post;
  const bool pre_norms = c.has_norms() && !post;   // ln1 (and ln2) outputs feed the sublayers
  const auto E = static_cast<std::size_t>(c.moe.num_experts), k = static_cast<std::size_t>(c.moe.top_k),
             Fe = static_cast<std::size_t>(c.moe.d_ff_expert), S = static_cast<std::size_t>(c.moe.num_shared);
  positions.resize(static_cast<std::size_t>(T));
  layers.resize(static_cast<std::size_t>(c.num_layers));
  for (LayerActs& l : layers) {
    for (auto* buf : {&l.x_in, &l.x_mid}) buf->resize(N * C);
    for (auto* buf : {&l.q, &l.attn}) buf->resize(N * Q);
    for (auto* buf : {&l.k, &l.v}) buf->resize(N * K);
    if (pre_norms) l.ln1.resize(N * C);
    if (c.has_norms()) l.rstd1.resize(N);
    if (layernorm) l.mean1.resize(N);
    if (!c.parallel_block && c.has_norms()) {   // a parallel block's feed-forward reads ln1
      if (pre_norms) l.ln2.resize(N * C);
      l.rstd2.resize(N);
      if (layernorm) l.mean2.resize(N);
    }
    if (post || dbl) {
      for (auto* buf : {&l.attn_out, &l.ffn_out}) buf->resize(N * C);
    }
    if (dbl) {
      for (auto* buf : {&l.rstd_pa, &l.rstd_pf}) buf->resize(N);
      if (layernorm)
        for (auto* buf : {&l.mean_pa, &l.mean_pf}) buf->resize(N);
    }
    if (c.qk_norm) {
      l.q_raw.resize(N * Q);
      l.k_raw.resize(N * K);
      l.rstd_q.resize(N * H);
      l.rstd_k.resize(N * Hkv);
    }
    l.lse.resize(N * H);
    if (c.is_moe()) {
      l.router_probs.resize(N * E);
      l.moe_expert.resize(N * k);
      l.moe_weight.resize(N * k);
      l.moe_row.resize(N * k);
      l.moe_assignment.resize(N * k);
      l.moe_offset.resize(E + 1);
      l.expert_tokens.resize(E);
      l.moe_out.resize(N * k * C);
      for (auto* buf : {&l.moe_a, &l.moe_h}) buf->resize(N * k * Fe);
      for (auto* buf : {&l.shared_a, &l.shared_h}) buf->resize(S * N * Fe);
      if (c.gated()) {
        l.moe_b.resize(N * k * Fe);
        l.shared_b.resize(S * N * Fe);
      }
    } else {
      for (auto* buf : {&l.a, &l.h}) buf->resize(N * F);
      if (c.gated()) l.b.resize(N * F);
    }
  }
  x_final.resize(N * C);
  if (c.has_norms()) {
    ln_final.resize(N * C);
    rstd_final.resize(N);
    if (layernorm) mean_final.resize(N);
  }
  logits.resize(N * V);
  losses.resize(N);
  ce_lse.resize(N);
  if (c.is_moe())
    for (auto* buf : {&moe_in, &moe_tmp}) buf->resize(N * C);
  if (wb == WithBackward::yes) {
    dx.resize(N * C);
    dbuf.resize(N * std::max(C, Q));
    dq.resize(N * Q);
    for (auto* buf : {&dk, &dv}) buf->resize(N * K);
    if (c.qk_norm) dqk_raw.resize(N * Q);
    if (c.parallel_block) dln_ffn.resize(N * C);
    if (c.dropout > 0) ddrop.resize(N * C);
    if (post || dbl) dsub.resize(N * C);
    const std::size_t hidden = c.is_moe() ? Fe : F;   // MoE: one expert's rows (at most N) at a time
    for (auto* buf : {&dh, &da}) buf->resize(N * hidden);
    if (c.gated()) db.resize(N * hidden);
    if (c.is_moe()) {
      moe_dx.resize(N * C);
      moe_dr.resize(N * E);
    }
  }
}

std::int64_t Activations::bytes() const {
  std::size_t floats = 0, int32s = 0, int64s = 0;
  for (const LayerActs& l : layers) {
    for (const auto* buf : {&l.x_in, &l.ln1, &l.rstd1, &l.mean1, &l.mean2, &l.q, &l.k, &l.v, &l.lse, &l.attn,
                            &l.x_mid, &l.ln2, &l.rstd2, &l.a, &l.b, &l.h, &l.q_raw, &l.k_raw, &l.rstd_q, &l.rstd_k,
                            &l.attn_out, &l.ffn_out, &l.rstd_pa, &l.mean_pa, &l.rstd_pf, &l.mean_pf, &l.router_probs,
                            &l.moe_weight, &l.moe_out, &l.moe_a, &l.moe_b, &l.moe_h, &l.shared_a, &l.shared_b,
                            &l.shared_h})
      floats += buf->size();
    int32s += l.moe_expert.size() + l.moe_row.size() + l.moe_assignment.size();
    int64s += l.moe_offset.size() + l.expert_tokens.size();
  }
  for (const auto* buf : {&x_final, &ln_final, &rstd_final, &mean_final, &logits, &losses, &ce_lse, &dx, &dbuf, &dq, &dk, &dv,
                          &dh, &da, &db, &dqk_raw, &dln_ffn, &ddrop, &dsub, &moe_in, &moe_tmp, &moe_dx, &moe_dr})
    floats += buf->size();
  return static_cast<std::int64_t>(4 * (floats + int32s) + 8 * int64s);
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

double moe_aux(const Activations& acts) {
  double sum = 0;
  for (const LayerActs& l : acts.layers) sum += l.moe_aux;
  return sum;
}

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


// ---- norms: one of the model's norms (ln1, ln2, ln_final, post_*_norm) as config.norm says ----

// out (N, C) = norm(x); mean (N) is LayerNorm's only, rstd (N) both norms'.
void norm_forward(const ModelConfig& c, float* out, float* mean, float* rstd, const float* x, const NormWeights& w,
                  std::int64_t N, std::int64_t C) {
  if (c.norm == Norm::layernorm) layernorm_forward(out, mean, rstd, x, w.weight, w.bias, N, C);
  else rmsnorm_forward(out, rstd, x, w.weight, N, C);
}

void norm_backward(const ModelConfig& c, float* dx, const NormWeights& g, const float* dout, const float* x,
                   const NormWeights& w, const float* mean, const float* rstd, std::int64_t N, std::int64_t C,
                   Accumulate dx_acc) {
  if (c.norm == Norm::layernorm) layernorm_backward(dx, g.weight, g.bias, dout, x, w.weight, mean, rstd, N, C, dx_acc);
  else rmsnorm_backward(dx, g.weight, dout, x, w.weight, rstd, N, C, dx_acc);
}

// ---- the residual update around a sublayer with output y ----
//   pre:    x_out = x_res + y        (y was written into x_out itself)
//   post:   x_out = n(x_res + y)     (y in its own buffer; the sum replaces it, as n's saved input)
//   double: x_out = x_res + n(y)     (y in its own buffer, n's saved input)
// n is ln1 / ln2 in post placement, post_attn_norm / post_ffn_norm in double.
struct NormSaved {
  float* mean;   // (N) LayerNorm only
  float* rstd;   // (N)
};

void residual_forward(const ModelConfig& c, float* x_out, float* y, const float* x_res, const NormWeights& n,
                      NormSaved s, std::int64_t N, std::int64_t C) {
  switch (c.norm_placement) {
    case NormPlacement::pre:
      add_into(x_out, x_res, N * C);
      break;
    case NormPlacement::post:
      add_into(y, x_res, N * C);
      norm_forward(c, x_out, s.mean, s.rstd, y, n, N, C);
      break;
    case NormPlacement::pre_and_post:
      norm_forward(c, x_out, s.mean, s.rstd, y, n, N, C);
      add_into(x_out, x_res, N * C);
      break;
  }
}

// dx holds dL/dx_out. Returns dL/dy (dx itself in pre placement, else dsub) and leaves in dx the
// gradient x_res gets through the residual path (the sublayer's own share is added later).
const float* residual_backward(const ModelConfig& c, float* dx, float* dsub, const NormWeights& g, const float* y,
                               const NormWeights& n, NormSaved s, std::int64_t N, std::int64_t C) {
  switch (c.norm_placement) {
    case NormPlacement::pre: return dx;
    case NormPlacement::post:   // x_out = n(x_res + y): both get the norm's input gradient
      norm_backward(c, dsub, g, dx, y, n, s.mean, s.rstd, N, C, Accumulate::no);
      std::copy(dsub, dsub + N * C, dx);
      return dsub;
    case NormPlacement::pre_and_post:
      norm_backward(c, dsub, g, dx, y, n, s.mean, s.rstd, N, C, Accumulate::no);
      return dsub;
  }
  return dx;
}

// ---- one feed-forward of the model's kind (the dense one, an expert, a shared expert) ----
// out (M, C) = w2 · h + b2 with h = act(w1 x + b1) [⊙ (w3 x + b3)] over M rows of x (M, C).

struct FfnBuffers {
  float* a;   // (M, F) w1 x
  float* b;   // (M, F) w3 x; null without a gate
  float* h;   // (M, F) the activation
};

void ffn_forward(float* out, FfnBuffers s, const float* x, const FfnWeights& w, const ModelConfig& c, std::int64_t M,
                 std::int64_t F) {
  const std::int64_t C = c.d_model;
  linear_forward(s.a, x, w.w1, w.b1, M, C, F);
  if (c.ffn == FfnKind::swiglu) {
    linear_forward(s.b, x, w.w3, w.b3, M, C, F);
    swiglu_forward(s.h, s.a, s.b, M * F);
  } else if (c.gated()) {   // GeGLU, ReGLU
    linear_forward(s.b, x, w.w3, w.b3, M, C, F);
    gated_forward(s.h, s.a, s.b, M * F, c.activation);
  } else {                  // plain MLP
    activation_forward(s.h, s.a, M * F, c.activation);
  }
  linear_forward(out, s.h, w.w2, w.b2, M, F, C);
}

// dx (M, C) overwritten or accumulated (dx_acc); the weight gradients accumulate into g; d holds
// scratch of the same shapes as s (da, db, dh).
struct FfnSaved {   // forward's a, b, h, read by backward
  const float* a;
  const float* b;
  const float* h;
};

void ffn_backward(float* dx, const FfnWeights& g, FfnBuffers d, const float* dout, const float* x, FfnSaved s,
                  const FfnWeights& w, const ModelConfig& c, std::int64_t M, std::int64_t F, Accumulate dx_acc) {
  const std::int64_t C = c.d_model;
  linear_backward(d.h, g.w2, g.b2, dout, s.h, w.w2, M, F, C, Accumulate::no);
  if (c.ffn == FfnKind::swiglu) swiglu_backward(d.a, d.b, d.h, s.a, s.b, M * F);
  else if (c.gated()) gated_backward(d.a, d.b, d.h, s.a, s.b, M * F, c.activation);
  else activation_backward(d.a, d.h, s.a, M * F, c.activation);
  linear_backward(dx, g.w1, g.b1, d.a, x, w.w1, M, C, F, dx_acc);
  if (c.gated()) linear_backward(dx, g.w3, g.b3, d.b, x, w.w3, M, C, F, Accumulate::yes);
}

}  // namespace

// ---- mixture of experts (declared in model.h for the GPU path's tests) ----

// y (N, C) = Σ_selected w_e · FFN_e(x) + Σ_s FFN_shared_s(x) over x (N, C), filling a's MoE buffers
// (see model.h). `capacity`: apply moe.capacity_factor (training and evaluation, not generation).
void moe_forward(float* y, LayerActs& a, Activations& acts, const float* x, const LayerWeights& w,
                 const ModelConfig& c, std::int64_t N, bool capacity) {
  const std::int64_t C = c.d_model, E = c.moe.num_experts, k = c.moe.top_k, Fe = c.moe.d_ff_expert;
  float* probs = a.router_probs.data();   // (N, E)
  // 1. Router probabilities: softmax of the logits, each row in double.
  linear_forward(probs, x, w.router, N, C, E);
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    float* p = probs + n * E;
    const double max = *std::max_element(p, p + E);
    double sum = 0.0;
    for (std::int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(p[e]) - max);
    for (std::int64_t e = 0; e < E; ++e) p[e] = static_cast<float>(std::exp(static_cast<double>(p[e]) - max) / sum);
  }
  // 2. The k most probable experts of each token (strictly greater wins, so ties go to the lower
  //    index), and their weights renormalised over the selected.
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const float* p = probs + n * E;
    std::int32_t* sel = a.moe_expert.data() + n * k;
    double selected = 0.0;
    for (std::int64_t j = 0; j < k; ++j) {
      std::int64_t best = -1;
      for (std::int64_t e = 0; e < E; ++e) {
        if (std::find(sel, sel + j, static_cast<std::int32_t>(e)) != sel + j) continue;   // taken
        if (best < 0 || p[e] > p[best]) best = e;
      }
      sel[j] = static_cast<std::int32_t>(best);
      selected += p[best];
    }
    for (std::int64_t j = 0; j < k; ++j) a.moe_weight[n * k + j] = static_cast<float>(p[sel[j]] / selected);
  }
  // 3. Counts, capacity and grouping: the kept assignments of expert e get the grouped rows
  //    [offset[e], offset[e + 1]), in token order then slot order.
  std::fill(a.expert_tokens.begin(), a.expert_tokens.end(), 0);
  for (std::int64_t i = 0; i < N * k; ++i) a.expert_tokens[a.moe_expert[i]] += 1;
  const std::int64_t limit =   // ceil(((c·N)·k)/E), evaluated left to right in double
      capacity && c.moe.capacity_factor > 0
          ? static_cast<std::int64_t>(std::ceil(c.moe.capacity_factor * static_cast<double>(N) * static_cast<double>(k) /
                                                static_cast<double>(E)))
          : N * k;
  std::vector<std::int64_t> kept(static_cast<std::size_t>(E), 0);
  for (std::int64_t i = 0; i < N * k; ++i) {
    const std::int32_t e = a.moe_expert[i];
    a.moe_row[i] = kept[e] < limit ? 0 : -1;   // rows are numbered in the next pass
    if (kept[e] < limit) kept[e] += 1;
  }
  a.moe_offset[0] = 0;
  for (std::int64_t e = 0; e < E; ++e) a.moe_offset[e + 1] = a.moe_offset[e] + kept[e];
  a.moe_dropped = N * k - a.moe_offset[E];
  std::vector<std::int64_t> next(a.moe_offset.begin(), a.moe_offset.end() - 1);
  for (std::int64_t i = 0; i < N * k; ++i) {
    if (a.moe_row[i] < 0) continue;
    const std::int64_t row = next[a.moe_expert[i]]++;
    a.moe_row[i] = static_cast<std::int32_t>(row);
    a.moe_assignment[row] = static_cast<std::int32_t>(i);
  }
  // 4. Each expert on its rows: gather the tokens' inputs, one feed-forward, scatter-add w · output.
  //    Within one expert every token appears at most once, so the scatter's rows are distinct.
  zero(y, N * C);
  float* in = acts.moe_in.data();   // (M, C)
  for (std::int64_t e = 0; e < E; ++e) {
    const std::int64_t first = a.moe_offset[e], M = a.moe_offset[e + 1] - first;
    if (M == 0) continue;
    const std::int32_t* asg = a.moe_assignment.data() + first;
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < M; ++r) std::copy_n(x + (asg[r] / k) * C, C, in + r * C);
    float* out = a.moe_out.data() + first * C;   // (M, C)
    const FfnBuffers s{a.moe_a.data() + first * Fe, c.gated() ? a.moe_b.data() + first * Fe : nullptr,
                       a.moe_h.data() + first * Fe};
    ffn_forward(out, s, in, w.experts[e], c, M, Fe);
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < M; ++r) {
      const float weight = a.moe_weight[asg[r]];
      float* yr = y + (asg[r] / k) * C;
      for (std::int64_t i = 0; i < C; ++i) yr[i] += weight * out[r * C + i];
    }
  }
  // 5. The shared experts, on every token.
  for (std::size_t s = 0; s < w.shared_experts.size(); ++s) {
    const std::int64_t at = static_cast<std::int64_t>(s) * N * Fe;
    const FfnBuffers buf{a.shared_a.data() + at, c.gated() ? a.shared_b.data() + at : nullptr, a.shared_h.data() + at};
    ffn_forward(acts.moe_tmp.data(), buf, x, w.shared_experts[s], c, N, Fe);
    add_into(y, acts.moe_tmp.data(), N * C);
  }
  // 6. The load-balancing loss E · Σ_e f_e · P_e, f_e = routed share, P_e = mean probability.
  double aux = 0.0;
  for (std::int64_t e = 0; e < E; ++e) {
    double P = 0.0;
    for (std::int64_t n = 0; n < N; ++n) P += probs[n * E + e];
    aux += static_cast<double>(a.expert_tokens[e]) / static_cast<double>(N * k) * (P / static_cast<double>(N));
  }
  a.moe_aux = static_cast<double>(E) * aux;
}

// dx (N, C) is overwritten with the gradient of the MoE's input x; dy (N, C) is the gradient of its
// output; the weight gradients accumulate into g. aux_scale = loss_scale · moe.aux_loss.
void moe_backward(float* dx, const LayerWeights& g, Activations& acts, const LayerActs& a, const float* dy,
                  const float* x, const LayerWeights& w, const ModelConfig& c, std::int64_t N, double aux_scale) {
  const std::int64_t C = c.d_model, E = c.moe.num_experts, k = c.moe.top_k, Fe = c.moe.d_ff_expert;
  zero(dx, N * C);
  // dL/dw of each assignment: dot(dy[n], expert output); 0 for a dropped one. Small: (N, k).
  std::vector<double> dweight(static_cast<std::size_t>(N * k), 0.0);
  float* in = acts.moe_in.data();      // (M, C) the expert's input rows
  float* dout = acts.moe_tmp.data();   // (M, C) the gradient of its output rows, w · dy[n]
  float* din = acts.moe_dx.data();     // (M, C) the gradient of its input rows
  const FfnBuffers d{acts.da.data(), c.gated() ? acts.db.data() : nullptr, acts.dh.data()};
  for (std::int64_t e = 0; e < E; ++e) {
    const std::int64_t first = a.moe_offset[e], M = a.moe_offset[e + 1] - first;
    if (M == 0) continue;
    const std::int32_t* asg = a.moe_assignment.data() + first;
    const float* out = a.moe_out.data() + first * C;
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < M; ++r) {
      const std::int64_t n = asg[r] / k;
      const float weight = a.moe_weight[asg[r]];
      double dot = 0.0;
      for (std::int64_t i = 0; i < C; ++i) {
        dot += static_cast<double>(dy[n * C + i]) * out[r * C + i];
        dout[r * C + i] = weight * dy[n * C + i];
      }
      dweight[asg[r]] = dot;
      std::copy_n(x + n * C, C, in + r * C);
    }
    const FfnSaved s{a.moe_a.data() + first * Fe, c.gated() ? a.moe_b.data() + first * Fe : nullptr,
                     a.moe_h.data() + first * Fe};
    ffn_backward(din, g.experts[e], d, dout, in, s, w.experts[e], c, M, Fe, Accumulate::no);
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < M; ++r) {
      float* dxr = dx + (asg[r] / k) * C;
      for (std::int64_t i = 0; i < C; ++i) dxr[i] += din[r * C + i];
    }
  }
  for (std::size_t s = 0; s < w.shared_experts.size(); ++s) {
    const std::int64_t at = static_cast<std::int64_t>(s) * N * Fe;
    const FfnSaved buf{a.shared_a.data() + at, c.gated() ? a.shared_b.data() + at : nullptr, a.shared_h.data() + at};
    ffn_backward(dx, g.shared_experts[s], d, dy, x, buf, w.shared_experts[s], c, N, Fe, Accumulate::yes);
  }
  // The router. With S = Σ_selected p and w_j = p_{e_j} / S:
  //   dL/dp_e = (dw_j(e) − Σ_j dw_j·w_j) / S  for a selected e (0 otherwise), plus from the aux loss
  //   aux_scale · E · f_e / N for every e (f_e a count: no gradient of its own); then the softmax's
  //   dr = p ⊙ (dp − Σ_e p_e·dp_e).
  const float* probs = a.router_probs.data();
  float* dr = acts.moe_dr.data();   // (N, E)
  std::vector<double> daux(static_cast<std::size_t>(E));
  for (std::int64_t e = 0; e < E; ++e)
    daux[e] = aux_scale * static_cast<double>(E) * (static_cast<double>(a.expert_tokens[e]) / static_cast<double>(N * k)) /
              static_cast<double>(N);
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const float* p = probs + n * E;
    const std::int32_t* sel = a.moe_expert.data() + n * k;
    std::vector<double> dp(daux);
    double selected = 0.0, weighted = 0.0;
    for (std::int64_t j = 0; j < k; ++j) {
      selected += p[sel[j]];
      weighted += dweight[n * k + j] * a.moe_weight[n * k + j];
    }
    for (std::int64_t j = 0; j < k; ++j) dp[sel[j]] += (dweight[n * k + j] - weighted) / selected;
    double dot = 0.0;
    for (std::int64_t e = 0; e < E; ++e) dot += p[e] * dp[e];
    for (std::int64_t e = 0; e < E; ++e) dr[n * E + e] = static_cast<float>(p[e] * (dp[e] - dot));
  }
  linear_backward(dx, g.router, dr, x, w.router, N, C, E, Accumulate::yes);
}

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
  // ln1 and ln2 before their sublayers (pre, double placements); in post placement they follow the
  // residual sums, and without norms there are none.
  const bool post = c.norm_placement == NormPlacement::post;
  const bool pre_norms = c.has_norms() && !post;

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
    // attention sublayer, on ln1(x_in) (pre, double) or x_in itself (post, no norms)
    if (pre_norms) norm_forward(c, a.ln1.data(), a.mean1.data(), a.rstd1.data(), a.x_in.data(), lw.norm1(), N, C);
    const float* attn_in = pre_norms ? a.ln1.data() : a.x_in.data();
    if (c.qk_norm) {   // each head's q and k normalised over its D values: (N·H), (N·Hkv) rows of D
      linear_forward(a.q_raw.data(), attn_in, lw.wq, lw.bq, N, C, Q);
      linear_forward(a.k_raw.data(), attn_in, lw.wk, lw.bk, N, C, K);
      rmsnorm_forward(a.q.data(), a.rstd_q.data(), a.q_raw.data(), lw.q_norm, N * H, D);
      rmsnorm_forward(k_dst, a.rstd_k.data(), a.k_raw.data(), lw.k_norm, N * Hkv, D);
    } else {
      linear_forward(a.q.data(), attn_in, lw.wq, lw.bq, N, C, Q);
      linear_forward(k_dst, attn_in, lw.wk, lw.bk, N, C, K);
    }
    linear_forward(v_dst, attn_in, lw.wv, lw.bv, N, C, K);
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
    // x_mid = x_in + y (pre) | ln1(x_in + y) (post) | x_in + post_attn_norm(y) (double), with
    // y = drop(output_proj(attn))
    float* attn_y = c.norm_placement == NormPlacement::pre ? a.x_mid.data() : a.attn_out.data();
    linear_forward(attn_y, a.attn.data(), lw.wo, lw.bo, N, Q, C);
    dropout_in_place(attn_y, N * C, dropout_at(pass, dropout_site_attn_out(static_cast<std::int64_t>(l)), c.dropout));
    if (post)
      residual_forward(c, a.x_mid.data(), attn_y, a.x_in.data(), lw.norm1(), {a.mean1.data(), a.rstd1.data()}, N, C);
    else
      residual_forward(c, a.x_mid.data(), attn_y, a.x_in.data(), lw.post_attn_norm, {a.mean_pa.data(), a.rstd_pa.data()},
                       N, C);
    // feed-forward sublayer, writing the next block's input. Its input: serial blocks ln2(x_mid)
    // (pre, double) or x_mid (post, no norms); parallel blocks the attention's input, so that
    // x_out = x_in + attn + ffn.
    std::vector<float>& x_out = l + 1 < acts.layers.size() ? acts.layers[l + 1].x_in : acts.x_final;
    if (pre_norms && !c.parallel_block)
      norm_forward(c, a.ln2.data(), a.mean2.data(), a.rstd2.data(), a.x_mid.data(), lw.norm2(), N, C);
    const float* ffn_in = c.parallel_block ? attn_in : pre_norms ? a.ln2.data() : a.x_mid.data();
    float* ffn_y = c.norm_placement == NormPlacement::pre ? x_out.data() : a.ffn_out.data();
    if (c.is_moe())
      moe_forward(ffn_y, a, acts, ffn_in, lw, c, N, /*capacity=*/cache == nullptr);
    else
      ffn_forward(ffn_y, {a.a.data(), c.gated() ? a.b.data() : nullptr, a.h.data()}, ffn_in, lw.ffn(), c, N, F);
    dropout_in_place(ffn_y, N * C, dropout_at(pass, dropout_site_ffn_out(static_cast<std::int64_t>(l)), c.dropout));
    if (post)
      residual_forward(c, x_out.data(), ffn_y, a.x_mid.data(), lw.norm2(), {a.mean2.data(), a.rstd2.data()}, N, C);
    else
      residual_forward(c, x_out.data(), ffn_y, a.x_mid.data(), lw.post_ffn_norm, {a.mean_pf.data(), a.rstd_pf.data()},
                       N, C);
  }
  if (cache) cache->length += T;
  const float* final_in = acts.x_final.data();   // the head's input: ln_final(x_final), or x_final without norms
  if (c.has_norms()) {
    norm_forward(c, acts.ln_final.data(), acts.mean_final.data(), acts.rstd_final.data(), acts.x_final.data(),
                 {w.ln_final, w.ln_final_bias}, N, C);
    final_in = acts.ln_final.data();
  }
  const std::int64_t rows = cache ? 1 : N;   // generation needs only the last position's distribution
  linear_forward(acts.logits.data(), final_in + (N - rows) * C, w.lm_head, rows, C, V);
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
  // The gradient dy through a residual dropout site's mask (the map is its own transpose), or dy as it is.
  auto through_dropout = [&](const float* dy, const Dropout& d) -> const float* {
    if (!d.on()) return dy;
    dropout_forward(acts.ddrop.data(), dy, N * C, d);
    return acts.ddrop.data();
  };
  SLM_CHECK(static_cast<std::int64_t>(grads.size()) == model.layout.total);
  const ModelWeights w = model.weights();
  const ModelWeights g = model_weights(model.layout, grads.data());
  const bool post = c.norm_placement == NormPlacement::post;
  const bool pre_norms = c.has_norms() && !post;
  float* dx = acts.dx.data();
  float* dbuf = acts.dbuf.data();

  // loss → logits → final norm
  float* dlogits = acts.logits.data();   // in place: the logits are not needed any more
  cross_entropy_backward(dlogits, acts.logits.data(), acts.ce_lse.data(), targets, N, V,
                         loss_scale / static_cast<float>(N),
                         {.z_loss = static_cast<float>(c.z_loss), .softcap = static_cast<float>(c.logit_softcap)});
  if (c.has_norms()) {
    linear_backward(dbuf, g.lm_head, dlogits, acts.ln_final.data(), w.lm_head, N, C, V, Accumulate::no);
    norm_backward(c, dx, {g.ln_final, g.ln_final_bias}, dbuf, acts.x_final.data(), {w.ln_final, w.ln_final_bias},
                  acts.mean_final.data(), acts.rstd_final.data(), N, C, Accumulate::no);
  } else {
    linear_backward(dx, g.lm_head, dlogits, acts.x_final.data(), w.lm_head, N, C, V, Accumulate::no);
  }

  for (std::size_t l = acts.layers.size(); l-- > 0;) {
    LayerActs& a = acts.layers[l];
    const LayerWeights& lw = w.layers[l];
    const LayerWeights& lg = g.layers[l];
    const auto layer = static_cast<std::int64_t>(l);
    // feed-forward sublayer; dx holds dL/dx_out. dffn_y: the gradient of the feed-forward's output
    // (before its dropout mask).
    const float* dffn_y = through_dropout(
        post ? residual_backward(c, dx, acts.dsub.data(), lg.norm2(), a.ffn_out.data(), lw.norm2(),
                                 {a.mean2.data(), a.rstd2.data()}, N, C)
             : residual_backward(c, dx, acts.dsub.data(), lg.post_ffn_norm, a.ffn_out.data(), lw.post_ffn_norm,
                                 {a.mean_pf.data(), a.rstd_pf.data()}, N, C),
        dropout_at(pass, dropout_site_ffn_out(layer), c.dropout));
    // The gradient of the feed-forward's input: ln2 (serial, through its norm into dx now), x_mid
    // (post, no norms: straight into dx) or ln1 (parallel: kept in dln_ffn until the attention
    // sublayer's share of ln1's gradient joins it).
    const float* attn_in = pre_norms ? a.ln1.data() : a.x_in.data();
    const float* ffn_in = c.parallel_block ? attn_in : pre_norms ? a.ln2.data() : a.x_mid.data();
    float* dffn_in = c.parallel_block ? acts.dln_ffn.data() : dbuf;
    if (c.is_moe())
      moe_backward(dffn_in, lg, acts, a, dffn_y, ffn_in, lw, c, N, loss_scale * c.moe.aux_loss);
    else
      ffn_backward(dffn_in, lg.ffn(), {acts.da.data(), c.gated() ? acts.db.data() : nullptr, acts.dh.data()}, dffn_y,
                   ffn_in, {a.a.data(), c.gated() ? a.b.data() : nullptr, a.h.data()}, lw.ffn(), c, N, F,
                   Accumulate::no);
    if (!c.parallel_block) {
      if (pre_norms)
        norm_backward(c, dx, lg.norm2(), dbuf, a.x_mid.data(), lw.norm2(), a.mean2.data(), a.rstd2.data(), N, C,
                      Accumulate::yes);
      else
        add_into(dx, dbuf, N * C);
    }
    // attention sublayer; dx holds dL/dx_mid
    const float* dattn_y = through_dropout(
        post ? residual_backward(c, dx, acts.dsub.data(), lg.norm1(), a.attn_out.data(), lw.norm1(),
                                 {a.mean1.data(), a.rstd1.data()}, N, C)
             : residual_backward(c, dx, acts.dsub.data(), lg.post_attn_norm, a.attn_out.data(), lw.post_attn_norm,
                                 {a.mean_pa.data(), a.rstd_pa.data()}, N, C),
        dropout_at(pass, dropout_site_attn_out(layer), c.dropout));
    linear_backward(dbuf, lg.wo, lg.bo, dattn_y, a.attn.data(), lw.wo, N, Q, C, Accumulate::no);   // dbuf (N, Q)
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
      linear_backward(dbuf, lg.wq, lg.bq, acts.dqk_raw.data(), attn_in, lw.wq, N, C, Q, Accumulate::no);
      rmsnorm_backward(acts.dqk_raw.data(), lg.k_norm, acts.dk.data(), a.k_raw.data(), lw.k_norm, a.rstd_k.data(),
                       N * Hkv, D, Accumulate::no);
      linear_backward(dbuf, lg.wk, lg.bk, acts.dqk_raw.data(), attn_in, lw.wk, N, C, K, Accumulate::yes);
    } else {
      linear_backward(dbuf, lg.wq, lg.bq, acts.dq.data(), attn_in, lw.wq, N, C, Q, Accumulate::no);
      linear_backward(dbuf, lg.wk, lg.bk, acts.dk.data(), attn_in, lw.wk, N, C, K, Accumulate::yes);
    }
    linear_backward(dbuf, lg.wv, lg.bv, acts.dv.data(), attn_in, lw.wv, N, C, K, Accumulate::yes);
    if (c.parallel_block) add_into(dbuf, acts.dln_ffn.data(), N * C);   // ln1 feeds both sublayers
    if (pre_norms)
      norm_backward(c, dx, lg.norm1(), dbuf, a.x_in.data(), lw.norm1(), a.mean1.data(), a.rstd1.data(), N, C,
                    Accumulate::yes);
    else
      add_into(dx, dbuf, N * C);
  }
  // the embedding output x0 = drop(token + position): dx through the mask, in place
  const Dropout embed_drop = dropout_at(pass, kDropoutSiteEmbedding, c.dropout);
  if (embed_drop.on()) dropout_forward(dx, dx, N * C, embed_drop);
  if (c.position == Position::learned) position_add_backward(g.position, dx, acts.positions.data(), B, T, C);
  embedding_backward(g.embedding, dx, ids, N, C);
}

}  // namespace scratchlm
