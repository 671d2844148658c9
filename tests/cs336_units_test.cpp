// The unit cases of CS336 assignment 1 (tests/test_nn_utils.py, test_optimizer.py) that concern
// the ops and the optimizer, against double-precision references written here:
//   - softmax and cross-entropy stay finite and exact at logits of ±1000s (the max is subtracted);
//   - gradient clipping behaves as torch.nn.utils.clip_grad_norm_ (ε = 1e-6, returns the norm
//     before clipping);
//   - the cosine schedule reproduces CS336's fixture exactly;
//   - AdamW follows torch.optim.AdamW's algorithm, and decay_norm_gains = false exempts exactly
//     the RMSNorm gains from weight decay.
//
// Precision: ε = 2^-24 ≈ 6e-8 is the fp32 unit roundoff. A result that is one correctly rounded
// fp32 value of an exactly computed quantity is within ε of it; tolerances below are a small
// multiple of ε with the multiple argued next to each.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "ops/cross_entropy.h"
#include "train/optimizer.h"
#include "test_util.h"
#include "util/rng.h"

using namespace scratchlm;

namespace {

using i64 = std::int64_t;

constexpr double kEps32 = 0x1.0p-24;   // fp32 unit roundoff

std::size_t sz(i64 n) { return static_cast<std::size_t>(n); }

std::vector<float> randn(Rng& rng, i64 n, double scale = 1.0) {
  std::vector<float> v(sz(n));
  for (float& x : v) x = static_cast<float>(scale * rng.normal());
  return v;
}

bool all_finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

// log Σ exp(row) in double, max subtracted first.
double lse_ref(const float* row, i64 V) {
  double max = row[0];
  for (i64 v = 1; v < V; ++v) max = std::max(max, static_cast<double>(row[v]));
  double sum = 0.0;
  for (i64 v = 0; v < V; ++v) sum += std::exp(row[v] - max);
  return max + std::log(sum);
}

// ---------------------------------------------------------------------------------------------
// Softmax

// softmax_forward computes exp(x − lse) in double and rounds once, so each probability is within
// ~ε of the exact one: 1e-6 relative (16ε) leaves room for a float exp. Probabilities that
// underflow fp32 (exp(−2000) at scale 1000) compare absolutely, to the smallest denormal.
void expect_softmax_matches_reference(const std::vector<float>& x, const std::vector<float>& p, i64 N, i64 V) {
  for (i64 n = 0; n < N; ++n) {
    const double lse = lse_ref(x.data() + n * V, V);
    double row_sum = 0.0;
    for (i64 v = 0; v < V; ++v) {
      const double want = std::exp(x[sz(n * V + v)] - lse);
      EXPECT_NEAR(p[sz(n * V + v)], want, 1e-6 * want + std::numeric_limits<float>::denorm_min()) << n << "," << v;
      row_sum += p[sz(n * V + v)];
    }
    EXPECT_NEAR(row_sum, 1.0, 1e-6) << "row " << n;   // V roundings of ≤ ε each: ≤ 11ε ≈ 7e-7
  }
}

TEST(Cs336Units, SoftmaxIsStable) {
  const i64 N = 4, V = 11;
  Rng rng(1);
  const std::vector<float> x = randn(rng, N * V);
  for (float scale : {1.0f, 1000.0f}) {
    SCOPED_TRACE(testing::Message() << "scale " << scale);
    std::vector<float> xs = x;
    for (float& e : xs) e *= scale;   // at 1000: values in the ±1000s; exp(x) alone overflows
    std::vector<float> p(xs.size(), -1.0f);
    softmax_forward(p.data(), xs.data(), N, V);
    ASSERT_TRUE(all_finite(p));
    expect_softmax_matches_reference(xs, p, N, V);

    // out may alias x.
    std::vector<float> in_place = xs;
    softmax_forward(in_place.data(), in_place.data(), N, V);
    EXPECT_EQ(in_place, p);
  }
}

TEST(Cs336Units, SoftmaxIgnoresAConstantAddedToARow) {
  // x on a grid of eighths in [−4, 4], so x + c is exact in fp32 for these c (|c| ≤ 40000: at most
  // 19 significant bits): the shifted rows are exactly the same softmax problem.
  const i64 N = 4, V = 11;
  Rng rng(2);
  std::vector<float> x(sz(N * V));
  for (float& e : x) e = (static_cast<float>(rng.below(65)) - 32.0f) / 8.0f;
  std::vector<float> p(x.size());
  softmax_forward(p.data(), x.data(), N, V);
  for (float c : {100.0f, -1000.0f, 10000.0f}) {
    std::vector<float> shifted = x;
    for (i64 n = 0; n < N; ++n)
      for (i64 v = 0; v < V; ++v) shifted[sz(n * V + v)] += c * static_cast<float>(n + 1);   // a different constant per row
    std::vector<float> ps(x.size());
    softmax_forward(ps.data(), shifted.data(), N, V);
    // Only lse's double rounding (~1e-16 · |c|) differs: far below one fp32 rounding.
    for (std::size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(ps[i], p[i], 1e-6 * p[i]) << "c " << c << " at " << i;
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

TEST(Cs336Units, CrossEntropyIsStable) {
  const i64 N = 4, V = 11;
  Rng rng(3);
  std::vector<float> logits = randn(rng, N * V);
  for (float& z : logits) z *= 1000.0f;
  // Row 1 (maximum ≈ 2200) gets a near tie at the top, its two largest logits 0.75 apart, so that
  // its lse is not just its maximum and lse's fp32 rounding shows in the gradients below.
  const i64 top1 = std::max_element(logits.begin() + V, logits.begin() + 2 * V) - (logits.begin() + V);
  const i64 tie1 = (top1 + 1) % V;
  logits[sz(V + tie1)] = logits[sz(V + top1)] - 0.75f;
  // Row 0's target is its largest logit (loss ≈ 0), row 1's the runner-up; the others are wherever
  // they fall.
  std::vector<std::int32_t> targets = {0, static_cast<std::int32_t>(tie1), 0, 5};
  targets[0] = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.begin() + V) - logits.begin());

  std::vector<float> losses(sz(N)), lse(sz(N));
  const double mean = cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V);
  ASSERT_TRUE(all_finite(losses));
  ASSERT_TRUE(all_finite(lse));
  ASSERT_TRUE(std::isfinite(mean));
  double want_mean = 0.0;
  std::vector<double> want_lse(sz(N));
  for (i64 n = 0; n < N; ++n) {
    want_lse[sz(n)] = lse_ref(logits.data() + n * V, V);
    const double want = want_lse[sz(n)] - logits[sz(n * V + targets[sz(n)])];
    // one fp32 rounding of a value computed in double (whose own error is ~1e-16 · 3000)
    EXPECT_NEAR(losses[sz(n)], want, 2 * kEps32 * want + 1e-9) << "row " << n;
    // lse is saved as the fp32 rounding of the exact value: half an ulp
    EXPECT_NEAR(lse[sz(n)], want_lse[sz(n)], 2 * kEps32 * std::abs(want_lse[sz(n)])) << "row " << n;
    want_mean += want / static_cast<double>(N);
  }
  EXPECT_NEAR(losses[0], 0.0, 1e-9);
  EXPECT_NEAR(mean, want_mean, 2 * kEps32 * want_mean);

  // dlogits = (softmax − onehot) · scale, finite, rows summing to ~0. The backward forms
  // exp(z − lse) in fp32 from the saved fp32 lse, so every probability inherits lse's rounding
  // δ = |lse_f − lse| (up to half an ulp of |lse|: 1.2e-4 at 2200; 9e-5 in row 1 here) as a
  // relative error, plus a few ε of its own; the tolerance is that bound, computed per row.
  // (PyTorch's log_softmax forms (z − max) − log Σ instead, accurate to ~ε·|z − lse|; at ordinary
  // logit scales, |z| ≲ 30, the two differ by less than 2e-6 relative.)
  const float scale = 1.0f / static_cast<float>(N);
  std::vector<float> d(logits.size());
  cross_entropy_backward(d.data(), logits.data(), lse.data(), targets.data(), N, V, scale);
  ASSERT_TRUE(all_finite(d));
  for (i64 n = 0; n < N; ++n) {
    const double delta = std::abs(static_cast<double>(lse[sz(n)]) - want_lse[sz(n)]);
    double row_sum = 0.0, row_tol = 0.0;
    for (i64 v = 0; v < V; ++v) {
      const double p = std::exp(logits[sz(n * V + v)] - want_lse[sz(n)]);
      const double want = (p - (v == targets[sz(n)] ? 1.0 : 0.0)) * scale;
      const double tol = scale * (p * (delta + 8 * kEps32) + 2 * kEps32) + std::numeric_limits<float>::denorm_min();
      EXPECT_NEAR(d[sz(n * V + v)], want, tol) << n << "," << v;
      row_sum += d[sz(n * V + v)];
      row_tol += tol;
    }
    EXPECT_NEAR(row_sum, 0.0, row_tol) << "row " << n;
  }
}

// ---------------------------------------------------------------------------------------------
// Gradient clipping

TEST(Cs336Units, GradientClippingMatchesTorch) {
  const i64 n = 37;
  Rng rng(4);
  const std::vector<float> g0 = randn(rng, n);
  double sum_sq = 0.0;
  for (float g : g0) sum_sq += static_cast<double>(g) * g;
  const double norm = std::sqrt(sum_sq);

  // Clipped: every gradient times max_norm / (norm + 1e-6). The factor is rounded to fp32 once and
  // the product once: 2ε relative, plus the norm's double rounding (negligible).
  const double max_norm = 1e-2;
  std::vector<float> g = g0;
  EXPECT_NEAR(clip_grad_norm(g.data(), n, max_norm), norm, 1e-12 * norm);   // the norm before clipping
  const double coef = max_norm / (norm + 1e-6);
  for (i64 i = 0; i < n; ++i)
    EXPECT_NEAR(g[sz(i)], g0[sz(i)] * coef, 2 * kEps32 * std::abs(g0[sz(i)] * coef)) << i;
  EXPECT_LT(global_norm(g.data(), n), max_norm);
  EXPECT_NEAR(global_norm(g.data(), n), max_norm * norm / (norm + 1e-6), 1e-6 * max_norm);

  // Not clipped: a max_norm above the norm leaves the gradients bit for bit.
  std::vector<float> h = g0;
  EXPECT_NEAR(clip_grad_norm(h.data(), n, 1e3), norm, 1e-12 * norm);
  EXPECT_EQ(h, g0);
}

TEST(Cs336Units, GradientNormIsGlobalOverTheWholeArena) {
  // global_norm sums fixed blocks of 2^16 floats: an arena of several blocks (and a partial one)
  // gives the norm of all of it, not of one block.
  const i64 n = 3 * (i64{1} << 16) + 12345;
  Rng rng(5);
  const std::vector<float> g = randn(rng, n);
  double sum_sq = 0.0;
  for (float x : g) sum_sq += static_cast<double>(x) * x;
  EXPECT_NEAR(global_norm(g.data(), n), std::sqrt(sum_sq), 1e-12 * std::sqrt(sum_sq));
}

// ---------------------------------------------------------------------------------------------
// Learning-rate schedule

TEST(Cs336Units, CosineScheduleMatchesFixture) {
  // CS336's fixture (tests/test_optimizer.py, get_lr_cosine_schedule with max 1, min 0.1, warmup 7,
  // cosine cycle 21). Checked independently with python3 against
  //   t < 7: t / 7;   7 ≤ t ≤ 21: 0.1 + 0.5 (1 + cos(π (t − 7) / 14)) · 0.9;   t > 21: 0.1
  // agreeing to 1.2e-16 (t = 18 and 20 differ in the last bit with that grouping of operations).
  const std::vector<double> expected = {
      0,                   0.14285714285714285, 0.2857142857142857,  0.42857142857142855, 0.5714285714285714,
      0.7142857142857143,  0.8571428571428571,  1.0,                 0.9887175604818206,  0.9554359905560885,
      0.9018241671106134,  0.8305704108364301,  0.7452476826029011,  0.6501344202803414,  0.55,
      0.44986557971965857, 0.3547523173970989,  0.26942958916356996, 0.19817583288938662, 0.14456400944391146,
      0.11128243951817937, 0.1,                 0.1,                 0.1,                 0.1};
  for (i64 t = 0; t < static_cast<i64>(expected.size()); ++t)
    EXPECT_NEAR(cosine_lr(t, 1.0, 0.1, 7, 21), expected[sz(t)], 1e-12) << "t = " << t;
}

// ---------------------------------------------------------------------------------------------
// AdamW

// torch.optim.AdamW's algorithm in double: decoupled weight decay first, then the moments, then the
// bias-corrected step with ε added to the corrected root.
struct AdamWReference {
  std::vector<double> p, m, v;
  i64 step = 0;
  explicit AdamWReference(const std::vector<float>& params)
      : p(params.begin(), params.end()), m(params.size(), 0.0), v(params.size(), 0.0) {}

  // weight_decay_of(i): the decay of element i (0 for an exempt one)
  template <class DecayOf>
  void update(const std::vector<float>& g, double lr, const AdamWOptions& o, DecayOf weight_decay_of) {
    step += 1;
    const double bias1 = 1.0 - std::pow(o.beta1, static_cast<double>(step));
    const double bias2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
    for (std::size_t i = 0; i < p.size(); ++i) {
      p[i] -= lr * weight_decay_of(i) * p[i];
      m[i] = o.beta1 * m[i] + (1.0 - o.beta1) * g[i];
      v[i] = o.beta2 * v[i] + (1.0 - o.beta2) * static_cast<double>(g[i]) * g[i];
      p[i] -= lr / bias1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bias2) + o.eps);
    }
  }
};

using test::rel_error;

// Runs `steps` AdamW steps on one (5, 7) tensor, fp32 and reference side by side, and compares.
// Tolerances (fp32 state against the double reference):
//   - m and v: each step rounds β·m and (1 − β)·g (and g²) and their sum, a few ε, and the moments
//     forget old errors at rate β: 1e-6 (16ε).
//   - p: ~2 roundings of |p| per step, so after 10 steps ~20ε · |p| ≈ 1.2e-6 relative: 3e-6.
//   - the displacement p_S − p_0, which is what the algorithm decides (|p| ≈ 1 ≫ the updates, so
//     p alone is insensitive to a wrong update): its error is p's rounding, ~20ε · |p| ≈ 1.2e-6,
//     over a displacement of ~10 · lr = 0.1..1: ≤ 1.2e-5 relative: 1e-4. Every algorithmic
//     slip (ε inside the root, decay after the update, a missing bias correction) moves it by
//     more than 1e-2 with these settings.
void check_adamw_against_reference(const AdamWOptions& opt, double lr_max, std::uint64_t seed) {
  const i64 rows = 5, cols = 7, n = rows * cols, steps = 10;
  ParamLayout layout;
  layout.specs.push_back(ParamSpec{"w", {rows, cols}, ParamInit::linear, false, 0});
  layout.total = n;
  Rng rng(seed);
  const std::vector<float> p0 = randn(rng, n);
  std::vector<float> p = p0;
  AdamWState state(n);
  AdamWReference ref(p0);
  for (i64 t = 1; t <= steps; ++t) {
    std::vector<float> g = randn(rng, n);
    g[0] = 0.0f;   // an element with no gradient: m = v = 0, only decay moves it
    const double lr = cosine_lr(t, lr_max, 0.1 * lr_max, 3, steps);
    adamw_step(p.data(), g.data(), state, layout, lr, opt);
    ref.update(g, lr, opt, [&](std::size_t) { return opt.weight_decay; });
  }
  EXPECT_EQ(state.step, steps);
  EXPECT_LE(rel_error(state.m, ref.m), 1e-6) << "m";
  EXPECT_LE(rel_error(state.v, ref.v), 1e-6) << "v";
  EXPECT_LE(rel_error(p, ref.p), 3e-6) << "p";
  std::vector<double> moved(sz(n)), want_moved(sz(n));
  for (i64 i = 0; i < n; ++i) {
    moved[sz(i)] = static_cast<double>(p[sz(i)]) - p0[sz(i)];
    want_moved[sz(i)] = ref.p[sz(i)] - p0[sz(i)];
  }
  EXPECT_LE(rel_error(moved, want_moved), 1e-4) << "p − p0";
}

TEST(Cs336Units, AdamWMatchesTorchAlgorithm) {
  {
    SCOPED_TRACE("this project's defaults (β = 0.9, 0.95; ε = 1e-8; λ = 0.1)");
    check_adamw_against_reference(AdamWOptions{}, 3e-2, 6);
  }
  {
    // Large lr·λ and ε make the order of decay and update, and where ε goes, visible.
    SCOPED_TRACE("sharp settings (β = 0.8, 0.9; ε = 0.1; λ = 0.5; lr 0.1)");
    AdamWOptions opt;
    opt.beta1 = 0.8, opt.beta2 = 0.9, opt.eps = 0.1, opt.weight_decay = 0.5;
    check_adamw_against_reference(opt, 0.1, 7);
  }
}

TEST(Cs336Units, AdamWMatchesTorchAlgorithmAtTorchDefaultBetas) {
  // torch.optim.AdamW's defaults, β2 = 0.999. torch scales g² by (1 − β2) formed in double and
  // rounded to fp32 (4.7e-8 relative error). adamw_step forms it in fp32 as 1 − fp32(0.999) =
  // 0.00099998713: 1.29e-5 relative, about 200ε, so v (and the update, by half that) drift from
  // torch's fp32 arithmetic by far more than rounding. (For β = 0.9 or 0.95 the same construction
  // costs 2.4e-7, which the test above tolerates.)
  AdamWOptions opt;
  opt.beta1 = 0.9, opt.beta2 = 0.999, opt.eps = 1e-8, opt.weight_decay = 1e-2;
  check_adamw_against_reference(opt, 1e-2, 8);
}

TEST(Cs336Units, AdamWDecayNormGainsFalseExemptsExactlyTheNormGains) {
  ModelConfig cfg;
  cfg.vocab_size = 11, cfg.context_length = 8, cfg.d_model = 8, cfg.num_layers = 2, cfg.num_heads = 2, cfg.d_ff = 12;
  const ParamLayout layout = param_layout(cfg);

  // The gains are the RMSNorm weights, and only they.
  std::set<std::string> gains;
  for (const ParamSpec& s : layout.specs)
    if (s.is_gain_or_bias) gains.insert(s.name);
  EXPECT_EQ(gains, (std::set<std::string>{"layers.0.ln1.weight", "layers.0.ln2.weight", "layers.1.ln1.weight",
                                          "layers.1.ln2.weight", "ln_final.weight"}));

  Rng rng(9);
  const std::vector<float> p0 = randn(rng, layout.total);
  const double lr = 0.1;
  AdamWOptions opt;
  opt.weight_decay = 0.5;

  // Zero gradients isolate the decay: m = v = 0, so the Adam step is exactly 0 and each parameter
  // is multiplied by fp32(1 − lr·λ), or left alone.
  const std::vector<float> zero(sz(layout.total), 0.0f);
  const float shrink = static_cast<float>(1.0 - lr * opt.weight_decay);
  for (bool decay_gains : {false, true}) {
    SCOPED_TRACE(testing::Message() << "decay_norm_gains " << decay_gains);
    opt.decay_norm_gains = decay_gains;
    std::vector<float> p = p0;
    AdamWState state(layout.total);
    adamw_step(p.data(), zero.data(), state, layout, lr, opt);
    for (const ParamSpec& s : layout.specs) {
      const bool decayed = decay_gains || !s.is_gain_or_bias;
      for (i64 i = s.offset; i < s.offset + s.numel(); ++i)
        ASSERT_EQ(p[sz(i)], decayed ? p0[sz(i)] * shrink : p0[sz(i)]) << s.name;
    }
  }

  // Real gradients, several steps: the whole arena against the reference with λ = 0 on the gains.
  opt.decay_norm_gains = false;
  std::vector<bool> is_gain(sz(layout.total), false);
  for (const ParamSpec& s : layout.specs)
    for (i64 i = s.offset; i < s.offset + s.numel(); ++i) is_gain[sz(i)] = s.is_gain_or_bias;
  std::vector<float> p = p0;
  AdamWState state(layout.total);
  AdamWReference ref(p0);
  for (int t = 0; t < 5; ++t) {
    const std::vector<float> g = randn(rng, layout.total);
    adamw_step(p.data(), g.data(), state, layout, lr, opt);
    ref.update(g, lr, opt, [&](std::size_t i) { return is_gain[i] ? 0.0 : opt.weight_decay; });
  }
  EXPECT_LE(rel_error(p, ref.p), 3e-6);
  // and the gains alone moved by the Adam step only
  for (const ParamSpec& s : layout.specs) {
    if (!s.is_gain_or_bias) continue;
    std::vector<float> got(p.begin() + s.offset, p.begin() + s.offset + s.numel());
    std::vector<double> want(ref.p.begin() + s.offset, ref.p.begin() + s.offset + s.numel());
    EXPECT_LE(rel_error(got, want), 3e-6) << s.name;
  }
}

}  // namespace
