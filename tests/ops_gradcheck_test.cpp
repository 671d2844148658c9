// The CPU ops (src/ops/cpu/) checked two ways, on small odd shapes so that no size coincides with
// another and an index that mixes two of them goes wrong visibly:
//   1. forward values against a plain double-precision loop written here from the op's formula
//      (the spec), on random inputs;
//   2. every backward against central finite differences of the float forward op itself.
// Plus the properties the model relies on: the causal mask (a future key or value never changes an
// earlier output), attention over a strided KV cache with Tk > Tq agreeing with the full forward,
// RoPE at position 0 being the identity, and RoPE preserving the norm of each rotated pair; the
// attention variants of issue 6 (grouped-query heads, a sliding window, the score soft-cap, dropout)
// against the same spec and finite differences, and the window's band.
//
// The gradient check. For an op y = f(x) take the scalar loss L = Σ_i y_i R_i with a fixed random
// R (N(0, 1)); its gradient is what backward returns when given dout = R. The numeric gradient
// perturbs one float input at a time, runs the float forward op, and accumulates L in double:
//     g_fd = (L(x + h) − L(x − h)) / ((x + h) − (x − h)),
// dividing by the step actually taken in float (x ± h is rounded), not by 2h. Error budget, with
// inputs O(1), h = 1e-2 and ε = 2^-24 ≈ 6e-8 (fp32 unit roundoff):
//   - truncation: g_fd − g = h²/6 · L'''(ξ) ≈ 1.7e-5 · |L'''|, and for these smooth ops of O(1)
//     arguments |L'''| is of the order of |g|, so ~1e-5 relative. It is exactly 0 for the ops
//     that are linear in the perturbed input (embedding, linear, RoPE): their tolerance is tighter.
//   - rounding: each float output carries a relative error of a few ε, so L carries an absolute
//     error δ ≈ ε · ‖(y_i R_i) over the outputs the perturbation touches‖ (random signs), and the
//     quotient an error ≈ δ / 2h = ε/2h · that ≈ 3e-6 · |L_touched|, i.e. 1e-5 .. 1e-4 relative to
//     the gradient for the handful to few dozen outputs one input touches here. Accumulating L in
//     double adds ~1e-16 and the analytic (fp32) backward a few ε·sqrt(K) ≈ 1e-6: negligible.
// So the expected relative error ‖g_analytic − g_fd‖ / ‖g_fd‖ per tensor is ~1e-5 (≤ 1e-4):
//   kTolLinearOp = 1e-4 (rounding only), kTolNonlinearOp = 1e-3 (rounding + truncation), each
// about 10× above what is expected, while a wrong gradient (a sign, a missing term, a transposed
// index, a wrong scale) is off by 1e-1 or more.
//
// The forward spec tolerance kTolForward = 1e-6 ≈ 16 ε: each output is a few fp32 roundings of O(1)
// values or a reduction of at most a dozen terms, whose error grows like sqrt(terms) · ε.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <vector>

#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/cpu/fast_exp.h"
#include "ops/cross_entropy.h"
#include "ops/dropout.h"
#include "ops/embedding.h"
#include "ops/layernorm.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"
#include "test_util.h"
#include "util/rng.h"

using namespace scratchlm;

namespace {

using i64 = std::int64_t;

constexpr double kStep = 1e-2;            // finite-difference step, inputs being O(1)
constexpr double kTolLinearOp = 1e-4;     // see the file comment
constexpr double kTolNonlinearOp = 1e-3;
constexpr double kTolForward = 1e-6;

std::size_t sz(i64 n) { return static_cast<std::size_t>(n); }

// n draws of N(0, scale²) (through scratchlm's own generator: the same numbers on every platform).
std::vector<float> randn(Rng& rng, i64 n, double scale = 1.0) {
  std::vector<float> v(sz(n));
  for (float& x : v) x = static_cast<float>(scale * rng.normal());
  return v;
}

// L = Σ y_i R_i, in double.
double weighted_sum(std::span<const float> y, std::span<const float> r) {
  double s = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) s += static_cast<double>(y[i]) * r[i];
  return s;
}

using test::SingleThreaded;

// Central-difference gradient of loss() with respect to each element of x, perturbing x in place
// (and restoring it). loss() must run the forward op on the current contents of x.
std::vector<double> numeric_grad(std::vector<float>& x, const std::function<double()>& loss, double h = kStep) {
  SingleThreaded one_thread;
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float x0 = x[i];
    const float xp = static_cast<float>(x0 + h), xm = static_cast<float>(x0 - h);
    x[i] = xp;
    const double lp = loss();
    x[i] = xm;
    const double lm = loss();
    x[i] = x0;
    g[i] = (lp - lm) / (static_cast<double>(xp) - static_cast<double>(xm));   // the step actually taken
  }
  return g;
}

using test::rel_error;

// got[i] + extra[i]: what an accumulating backward should leave in a buffer that held `got`.
std::vector<double> plus(const std::vector<float>& base, const std::vector<double>& g) {
  std::vector<double> out(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) out[i] = static_cast<double>(base[i]) + g[i];
  return out;
}

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// Garbage for buffers an op must overwrite: a stale value would show up as a huge error.
constexpr float kGarbage = 12345.0f;

// ---------------------------------------------------------------------------------------------
// Specs: the ops' formulas as plain double loops.

// out (M, N) = alpha · op(a) · op(b) [+ out], a and b stored with leading dimensions lda, ldb.
std::vector<double> gemm_spec(const std::vector<float>& out0, i64 ldo, const std::vector<float>& a, i64 lda,
                              Transpose ta, const std::vector<float>& b, i64 ldb, Transpose tb, i64 M, i64 N, i64 K,
                              double alpha, Accumulate acc) {
  std::vector<double> out(out0.begin(), out0.end());
  for (i64 i = 0; i < M; ++i)
    for (i64 j = 0; j < N; ++j) {
      double s = 0.0;
      for (i64 k = 0; k < K; ++k) {
        const double av = ta == Transpose::no ? a[sz(i * lda + k)] : a[sz(k * lda + i)];
        const double bv = tb == Transpose::no ? b[sz(k * ldb + j)] : b[sz(j * ldb + k)];
        s += av * bv;
      }
      out[sz(i * ldo + j)] = alpha * s + (acc == Accumulate::yes ? out[sz(i * ldo + j)] : 0.0);
    }
  return out;
}

// Causal attention, (B, Tq, H, D) queries against (B, Tk, Hkv, D) keys and values stored with
// kv_stride floats between sequences; query i sits at position p = Tk − Tq + i and sees the keys
// p − W < j ≤ p (W = window, all j ≤ p without one); query head h reads kv head h / (H / Hkv); the
// scores are capped at c · tanh(s / c) with a softcap; dropout keeps P_ij where the hash says so.
struct AttentionSpec {
  std::vector<double> out, lse;
};
AttentionSpec attention_spec(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                             const AttentionDims& d) {
  const i64 Hkv = d.Hkv ? d.Hkv : d.H, Cq = d.H * d.D, Ckv = Hkv * d.D;
  const i64 kv_stride = d.kv_batch_stride ? d.kv_batch_stride : d.Tk * Ckv;
  const std::uint64_t threshold = dropout_threshold(d.dropout.p);
  AttentionSpec r{std::vector<double>(sz(d.B * d.Tq * Cq)), std::vector<double>(sz(d.B * d.H * d.Tq))};
  for (i64 b = 0; b < d.B; ++b)
    for (i64 h = 0; h < d.H; ++h)
      for (i64 i = 0; i < d.Tq; ++i) {
        const i64 pos = d.Tk - d.Tq + i, first = d.window ? std::max<i64>(0, pos - d.window + 1) : 0;
        const i64 kv_head = h / (d.H / Hkv);
        std::vector<double> s(sz(pos + 1));
        double max = -std::numeric_limits<double>::infinity();
        for (i64 j = first; j <= pos; ++j) {
          double dot = 0.0;
          for (i64 e = 0; e < d.D; ++e)
            dot += static_cast<double>(q[sz((b * d.Tq + i) * Cq + h * d.D + e)]) *
                   k[sz(b * kv_stride + j * Ckv + kv_head * d.D + e)];
          s[sz(j)] = dot / std::sqrt(static_cast<double>(d.D));
          if (d.softcap > 0) s[sz(j)] = d.softcap * std::tanh(s[sz(j)] / d.softcap);
          max = std::max(max, s[sz(j)]);
        }
        double sum = 0.0;
        for (i64 j = first; j <= pos; ++j) sum += std::exp(s[sz(j)] - max);
        r.lse[sz((b * d.H + h) * d.Tq + i)] = max + std::log(sum);
        for (i64 j = first; j <= pos; ++j) {
          double pj = std::exp(s[sz(j)] - max) / sum;
          if (d.dropout.on()) {
            const bool keep = dropout_hash(d.dropout.seed, d.dropout.site,
                                           static_cast<std::uint64_t>(((b * d.H + h) * d.Tq + i) * d.Tk + j)) >= threshold;
            pj = keep ? pj / (1.0 - d.dropout.p) : 0.0;
          }
          for (i64 e = 0; e < d.D; ++e)
            r.out[sz((b * d.Tq + i) * Cq + h * d.D + e)] += pj * v[sz(b * kv_stride + j * Ckv + kv_head * d.D + e)];
        }
      }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Embedding

TEST(OpsGradcheck, EmbeddingForwardIsARowCopy) {
  const i64 V = 11, C = 6;
  Rng rng(1);
  const std::vector<float> w = randn(rng, V * C);
  const std::vector<std::int32_t> ids = {3, 7, 3, 0, 10, 3, 7};
  const i64 N = static_cast<i64>(ids.size());
  std::vector<float> out(sz(N * C), kGarbage);
  embedding_forward(out.data(), ids.data(), w.data(), N, C);
  for (i64 n = 0; n < N; ++n)
    for (i64 c = 0; c < C; ++c) EXPECT_EQ(out[sz(n * C + c)], w[sz(ids[sz(n)] * C + c)]) << n << "," << c;
}

TEST(OpsGradcheck, EmbeddingBackward) {
  // Repeated ids (3 three times, 7 twice) must add up; unused rows get nothing.
  const i64 V = 11, C = 6;
  Rng rng(2);
  std::vector<float> w = randn(rng, V * C);
  const std::vector<std::int32_t> ids = {3, 7, 3, 0, 10, 3, 7};
  const i64 N = static_cast<i64>(ids.size());
  const std::vector<float> R = randn(rng, N * C);
  std::vector<float> out(sz(N * C));
  auto loss = [&] {
    embedding_forward(out.data(), ids.data(), w.data(), N, C);
    return weighted_sum(out, R);
  };
  const std::vector<double> fd = numeric_grad(w, loss);

  // dweight accumulates: start from a non-zero buffer.
  const std::vector<float> dw0 = randn(rng, V * C);
  std::vector<float> dw = dw0;
  embedding_backward(dw.data(), R.data(), ids.data(), N, C);
  EXPECT_LE(rel_error(dw, plus(dw0, fd)), kTolLinearOp);
  for (i64 row : {1, 2, 4, 5, 6, 8, 9})   // rows no id points at are untouched, bit for bit
    for (i64 c = 0; c < C; ++c) EXPECT_EQ(dw[sz(row * C + c)], dw0[sz(row * C + c)]);
}

// ---------------------------------------------------------------------------------------------
// Linear

TEST(OpsGradcheck, GemmMatchesSpecForEveryTransposeAndLeadingDimension) {
  const i64 M = 5, N = 7, K = 6, pad = 3;   // stored rows longer than needed: ld = row length + pad
  Rng rng(3);
  for (Transpose ta : {Transpose::no, Transpose::yes})
    for (Transpose tb : {Transpose::no, Transpose::yes})
      for (Accumulate acc : {Accumulate::no, Accumulate::yes}) {
        const i64 lda = (ta == Transpose::no ? K : M) + pad, ldb = (tb == Transpose::no ? N : K) + pad, ldo = N + pad;
        const std::vector<float> a = randn(rng, (ta == Transpose::no ? M : K) * lda);
        const std::vector<float> b = randn(rng, (tb == Transpose::no ? K : N) * ldb);
        std::vector<float> out = randn(rng, M * ldo);
        const std::vector<double> want = gemm_spec(out, ldo, a, lda, ta, b, ldb, tb, M, N, K, 0.5, acc);
        gemm(out.data(), ldo, a.data(), lda, ta, b.data(), ldb, tb, M, N, K, 0.5f, acc);
        SCOPED_TRACE(testing::Message() << "ta " << (ta == Transpose::yes) << " tb " << (tb == Transpose::yes)
                                        << " acc " << (acc == Accumulate::yes));
        EXPECT_LE(rel_error(out, want), kTolForward);
        // The padding columns of out are never written.
        for (i64 i = 0; i < M; ++i)
          for (i64 j = N; j < ldo; ++j) EXPECT_EQ(out[sz(i * ldo + j)], want[sz(i * ldo + j)]);
      }
}

TEST(OpsGradcheck, LinearForwardMatchesSpec) {
  const i64 N = 5, Din = 6, Dout = 10;
  Rng rng(4);
  const std::vector<float> x = randn(rng, N * Din), w = randn(rng, Dout * Din);
  std::vector<float> out(sz(N * Dout), kGarbage);
  linear_forward(out.data(), x.data(), w.data(), N, Din, Dout);
  std::vector<double> want(sz(N * Dout));
  for (i64 n = 0; n < N; ++n)
    for (i64 o = 0; o < Dout; ++o)
      for (i64 i = 0; i < Din; ++i) want[sz(n * Dout + o)] += static_cast<double>(x[sz(n * Din + i)]) * w[sz(o * Din + i)];
  EXPECT_LE(rel_error(out, want), kTolForward);
}

TEST(OpsGradcheck, LinearBackward) {
  const i64 N = 5, Din = 6, Dout = 10;
  Rng rng(5);
  std::vector<float> x = randn(rng, N * Din), w = randn(rng, Dout * Din);
  const std::vector<float> R = randn(rng, N * Dout);
  std::vector<float> out(sz(N * Dout));
  auto loss = [&] {
    linear_forward(out.data(), x.data(), w.data(), N, Din, Dout);
    return weighted_sum(out, R);
  };
  const std::vector<double> fd_x = numeric_grad(x, loss), fd_w = numeric_grad(w, loss);

  // Accumulate::no overwrites dx; dw always accumulates.
  std::vector<float> dx(sz(N * Din), kGarbage), dw(sz(Dout * Din), 0.0f);
  linear_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), N, Din, Dout, Accumulate::no);
  EXPECT_LE(rel_error(dx, fd_x), kTolLinearOp);
  EXPECT_LE(rel_error(dw, fd_w), kTolLinearOp);

  // Accumulate::yes adds into dx, and dw adds whatever is already there.
  const std::vector<float> dx0 = randn(rng, N * Din), dw0 = randn(rng, Dout * Din);
  std::vector<float> dx_acc = dx0, dw_acc = dw0;
  linear_backward(dx_acc.data(), dw_acc.data(), R.data(), x.data(), w.data(), N, Din, Dout, Accumulate::yes);
  EXPECT_LE(rel_error(dx_acc, plus(dx0, fd_x)), kTolLinearOp);
  EXPECT_LE(rel_error(dw_acc, plus(dw0, fd_w)), kTolLinearOp);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

TEST(OpsGradcheck, RmsNormForwardMatchesSpec) {
  const i64 N = 5, C = 6;
  Rng rng(6);
  const std::vector<float> x = randn(rng, N * C, 3.0), gain = randn(rng, C);
  std::vector<float> out(sz(N * C), kGarbage), rstd(sz(N), kGarbage);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), gain.data(), N, C);
  std::vector<double> want(sz(N * C)), want_rstd(sz(N));
  for (i64 n = 0; n < N; ++n) {
    double ms = 0.0;
    for (i64 c = 0; c < C; ++c) ms += static_cast<double>(x[sz(n * C + c)]) * x[sz(n * C + c)] / static_cast<double>(C);
    want_rstd[sz(n)] = 1.0 / std::sqrt(ms + static_cast<double>(kRmsNormEps));
    for (i64 c = 0; c < C; ++c) want[sz(n * C + c)] = x[sz(n * C + c)] * want_rstd[sz(n)] * gain[sz(c)];
  }
  EXPECT_LE(rel_error(out, want), kTolForward);
  EXPECT_LE(rel_error(rstd, want_rstd), kTolForward);
}

TEST(OpsGradcheck, RmsNormBackward) {
  const i64 N = 5, C = 6;
  Rng rng(7);
  std::vector<float> x = randn(rng, N * C), gain = randn(rng, C, 0.5);
  for (float& g : gain) g += 1.0f;   // gains around 1, as trained
  const std::vector<float> R = randn(rng, N * C);
  std::vector<float> out(sz(N * C)), rstd(sz(N));
  auto loss = [&] {
    rmsnorm_forward(out.data(), rstd.data(), x.data(), gain.data(), N, C);
    return weighted_sum(out, R);
  };
  const std::vector<double> fd_x = numeric_grad(x, loss), fd_gain = numeric_grad(gain, loss);
  loss();   // rstd of the unperturbed input

  std::vector<float> dx(sz(N * C), kGarbage), dgain(sz(C), 0.0f);
  rmsnorm_backward(dx.data(), dgain.data(), R.data(), x.data(), gain.data(), rstd.data(), N, C, Accumulate::no);
  EXPECT_LE(rel_error(dx, fd_x), kTolNonlinearOp);
  EXPECT_LE(rel_error(dgain, fd_gain), kTolNonlinearOp);

  const std::vector<float> dx0 = randn(rng, N * C), dgain0 = randn(rng, C);
  std::vector<float> dx_acc = dx0, dgain_acc = dgain0;
  rmsnorm_backward(dx_acc.data(), dgain_acc.data(), R.data(), x.data(), gain.data(), rstd.data(), N, C,
                   Accumulate::yes);
  EXPECT_LE(rel_error(dx_acc, plus(dx0, fd_x)), kTolNonlinearOp);
  EXPECT_LE(rel_error(dgain_acc, plus(dgain0, fd_gain)), kTolNonlinearOp);
}

TEST(OpsGradcheck, LinearWithBias) {
  // Forward: the product plus the bias on every row, against the double loop; backward: dbias the
  // column sums of dout (exact up to the sum's rounding), dx and dw as without a bias.
  const i64 N = 5, Din = 6, Dout = 7;
  Rng rng(15);
  std::vector<float> x = randn(rng, N * Din), w = randn(rng, Dout * Din), bias = randn(rng, Dout);
  const std::vector<float> R = randn(rng, N * Dout);
  std::vector<float> out(sz(N * Dout), kGarbage);
  linear_forward(out.data(), x.data(), w.data(), bias.data(), N, Din, Dout);
  std::vector<double> want(sz(N * Dout));
  for (i64 n = 0; n < N; ++n)
    for (i64 o = 0; o < Dout; ++o) {
      want[sz(n * Dout + o)] = bias[sz(o)];
      for (i64 i = 0; i < Din; ++i) want[sz(n * Dout + o)] += static_cast<double>(x[sz(n * Din + i)]) * w[sz(o * Din + i)];
    }
  EXPECT_LE(rel_error(out, want), kTolForward);
  auto loss = [&] {
    linear_forward(out.data(), x.data(), w.data(), bias.data(), N, Din, Dout);
    return weighted_sum(out, R);
  };
  const std::vector<double> fd_x = numeric_grad(x, loss), fd_w = numeric_grad(w, loss), fd_b = numeric_grad(bias, loss);
  const std::vector<float> db0 = randn(rng, Dout);   // dbias accumulates
  std::vector<float> dx(sz(N * Din), kGarbage), dw(sz(Dout * Din), 0.0f), db = db0;
  linear_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), N, Din, Dout, Accumulate::no);
  EXPECT_LE(rel_error(dx, fd_x), kTolLinearOp);
  EXPECT_LE(rel_error(dw, fd_w), kTolLinearOp);
  EXPECT_LE(rel_error(db, plus(db0, fd_b)), kTolLinearOp);
  // A null bias is the plain op.
  std::vector<float> plain(sz(N * Dout)), none(sz(N * Dout));
  linear_forward(plain.data(), x.data(), w.data(), N, Din, Dout);
  linear_forward(none.data(), x.data(), w.data(), nullptr, N, Din, Dout);
  EXPECT_EQ(plain, none);
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

TEST(OpsGradcheck, LayerNormForwardMatchesSpec) {
  // Rows with a large common offset: the two-pass variance keeps its digits where E[x²] − E[x]²
  // would cancel them.
  const i64 N = 5, C = 6;
  Rng rng(16);
  std::vector<float> x = randn(rng, N * C, 3.0);
  for (i64 c = 0; c < C; ++c) x[sz(2 * C + c)] += 1000.0f;
  const std::vector<float> weight = randn(rng, C), bias = randn(rng, C);
  for (const bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "bias" : "no bias");
    std::vector<float> out(sz(N * C), kGarbage), mean(sz(N), kGarbage), rstd(sz(N), kGarbage);
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight.data(), with_bias ? bias.data() : nullptr,
                      N, C);
    std::vector<double> want(sz(N * C)), want_mean(sz(N)), want_rstd(sz(N));
    for (i64 n = 0; n < N; ++n) {
      double mu = 0.0, var = 0.0;
      for (i64 c = 0; c < C; ++c) mu += static_cast<double>(x[sz(n * C + c)]) / static_cast<double>(C);
      for (i64 c = 0; c < C; ++c) var += (x[sz(n * C + c)] - mu) * (x[sz(n * C + c)] - mu) / static_cast<double>(C);
      want_mean[sz(n)] = mu;
      want_rstd[sz(n)] = 1.0 / std::sqrt(var + static_cast<double>(kLayerNormEps));
      for (i64 c = 0; c < C; ++c)
        want[sz(n * C + c)] = (x[sz(n * C + c)] - mu) * want_rstd[sz(n)] * weight[sz(c)] + (with_bias ? bias[sz(c)] : 0.0);
    }
    EXPECT_LE(rel_error(out, want), kTolForward);
    EXPECT_LE(rel_error(mean, want_mean), kTolForward);
    EXPECT_LE(rel_error(rstd, want_rstd), kTolForward);
  }
}

TEST(OpsGradcheck, LayerNormBackward) {
  const i64 N = 5, C = 6;
  Rng rng(17);
  std::vector<float> x = randn(rng, N * C), weight = randn(rng, C, 0.5), bias = randn(rng, C);
  for (float& g : weight) g += 1.0f;   // weights around 1, as trained
  const std::vector<float> R = randn(rng, N * C);
  std::vector<float> out(sz(N * C)), mean(sz(N)), rstd(sz(N));
  for (const bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "bias" : "no bias");
    const float* b = with_bias ? bias.data() : nullptr;
    auto loss = [&] {
      layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight.data(), b, N, C);
      return weighted_sum(out, R);
    };
    const std::vector<double> fd_x = numeric_grad(x, loss), fd_w = numeric_grad(weight, loss),
                              fd_b = numeric_grad(bias, loss);
    loss();   // statistics of the unperturbed input

    std::vector<float> dx(sz(N * C), kGarbage), dw(sz(C), 0.0f), db(sz(C), 0.0f);
    layernorm_backward(dx.data(), dw.data(), with_bias ? db.data() : nullptr, R.data(), x.data(), weight.data(),
                       mean.data(), rstd.data(), N, C, Accumulate::no);
    EXPECT_LE(rel_error(dx, fd_x), kTolNonlinearOp);
    EXPECT_LE(rel_error(dw, fd_w), kTolNonlinearOp);
    if (with_bias) EXPECT_LE(rel_error(db, fd_b), kTolNonlinearOp);
    else EXPECT_EQ(db, std::vector<float>(sz(C), 0.0f));

    const std::vector<float> dx0 = randn(rng, N * C), dw0 = randn(rng, C);
    std::vector<float> dx_acc = dx0, dw_acc = dw0;
    layernorm_backward(dx_acc.data(), dw_acc.data(), nullptr, R.data(), x.data(), weight.data(), mean.data(),
                       rstd.data(), N, C, Accumulate::yes);
    EXPECT_LE(rel_error(dx_acc, plus(dx0, fd_x)), kTolNonlinearOp);
    EXPECT_LE(rel_error(dw_acc, plus(dw0, fd_w)), kTolNonlinearOp);
  }
  // Properties a wrong formula breaks: shifting a row does not change its output, so its gradient
  // sums to zero over the row; scaling it changes the output only through eps, so Σ x̂·dx is
  // eps·r³·Σ g·x̂ (from Σ x̂² = C·var·r² = C·(1 − eps·r²)) rather than 0.
  std::vector<float> dx(sz(N * C));
  std::vector<float> dw(sz(C), 0.0f);
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight.data(), nullptr, N, C);
  layernorm_backward(dx.data(), dw.data(), nullptr, R.data(), x.data(), weight.data(), mean.data(), rstd.data(), N, C,
                     Accumulate::no);
  for (i64 n = 0; n < N; ++n) {
    const double r = rstd[sz(n)];
    double sum = 0.0, dot = 0.0, gx = 0.0, scale = 0.0;
    for (i64 c = 0; c < C; ++c) {
      const double xhat = (x[sz(n * C + c)] - mean[sz(n)]) * r;
      sum += dx[sz(n * C + c)];
      dot += dx[sz(n * C + c)] * xhat;
      gx += static_cast<double>(weight[sz(c)]) * R[sz(n * C + c)] * xhat;
      scale += std::fabs(dx[sz(n * C + c)]);
    }
    EXPECT_LE(std::fabs(sum), 1e-6 * scale) << n;   // a few roundings of the O(1) terms
    EXPECT_LE(std::fabs(dot - kLayerNormEps * r * r * r * gx), 1e-6 * scale) << n;
  }
}

// ---------------------------------------------------------------------------------------------
// RoPE

constexpr double kTheta = 10000.0;

TEST(OpsGradcheck, RopeForwardMatchesSpecAtNonContiguousPositions) {
  const i64 B = 2, T = 7, H = 3, D = 4;
  const RopeTable table = make_rope_table(kTheta, D, 64);
  const std::vector<std::int32_t> positions = {0, 3, 4, 9, 17, 63, 2};   // not contiguous, not sorted
  Rng rng(8);
  const std::vector<float> x = randn(rng, B * T * H * D);
  std::vector<float> out(x.size(), kGarbage);
  rope_forward(out.data(), x.data(), positions.data(), table, B, T, H, D);
  std::vector<double> want(x.size());
  for (i64 b = 0; b < B; ++b)
    for (i64 t = 0; t < T; ++t)
      for (i64 h = 0; h < H; ++h)
        for (i64 k = 0; k < D / 2; ++k) {
          const double angle = positions[sz(t)] * std::pow(kTheta, -2.0 * static_cast<double>(k) / static_cast<double>(D));
          const std::size_t i = sz(((b * T + t) * H + h) * D + 2 * k);
          want[i] = x[i] * std::cos(angle) - x[i + 1] * std::sin(angle);
          want[i + 1] = x[i] * std::sin(angle) + x[i + 1] * std::cos(angle);
        }
  EXPECT_LE(rel_error(out, want), kTolForward);

  // out may alias x.
  std::vector<float> in_place = x;
  rope_forward(in_place.data(), in_place.data(), positions.data(), table, B, T, H, D);
  EXPECT_EQ(in_place, out);
}

TEST(OpsGradcheck, RopeAtPositionZeroIsIdentity) {
  const i64 B = 2, T = 3, H = 3, D = 4;
  const RopeTable table = make_rope_table(kTheta, D, 8);
  const std::vector<std::int32_t> positions(sz(T), 0);
  Rng rng(9);
  const std::vector<float> x = randn(rng, B * T * H * D);
  std::vector<float> out(x.size(), kGarbage);
  rope_forward(out.data(), x.data(), positions.data(), table, B, T, H, D);
  EXPECT_EQ(out, x);   // cos 0 = 1 and sin 0 = 0 exactly: bit for bit
}

TEST(OpsGradcheck, RopePreservesPairNorms) {
  // A rotation: |(y0, y1)| = |(x0, x1)| for every pair, up to the float table (cos² + sin² = 1 within
  // ~2ε) and the output roundings (~2ε): relative error of the squared norm well under 1e-6.
  const i64 B = 1, T = 6, H = 3, D = 4;
  const RopeTable table = make_rope_table(kTheta, D, 5000);
  const std::vector<std::int32_t> positions = {1, 7, 100, 1023, 2049, 4999};
  Rng rng(10);
  const std::vector<float> x = randn(rng, B * T * H * D);
  std::vector<float> out(x.size());
  rope_forward(out.data(), x.data(), positions.data(), table, B, T, H, D);
  for (std::size_t i = 0; i < x.size(); i += 2) {
    const double nx = static_cast<double>(x[i]) * x[i] + static_cast<double>(x[i + 1]) * x[i + 1];
    const double ny = static_cast<double>(out[i]) * out[i] + static_cast<double>(out[i + 1]) * out[i + 1];
    EXPECT_NEAR(ny, nx, 1e-6 * nx) << "pair " << i / 2;
  }
}

TEST(OpsGradcheck, RopeBackwardAtNonContiguousPositions) {
  const i64 B = 2, T = 7, H = 3, D = 4;
  const RopeTable table = make_rope_table(kTheta, D, 64);
  const std::vector<std::int32_t> positions = {5, 1, 30, 31, 8, 0, 63};
  Rng rng(11);
  std::vector<float> x = randn(rng, B * T * H * D);
  const std::vector<float> R = randn(rng, B * T * H * D);
  std::vector<float> out(x.size());
  auto loss = [&] {
    rope_forward(out.data(), x.data(), positions.data(), table, B, T, H, D);
    return weighted_sum(out, R);
  };
  const std::vector<double> fd = numeric_grad(x, loss);
  std::vector<float> dx(x.size(), kGarbage);
  rope_backward(dx.data(), R.data(), positions.data(), table, B, T, H, D);
  EXPECT_LE(rel_error(dx, fd), kTolLinearOp);

  // dx may alias dout.
  std::vector<float> in_place = R;
  rope_backward(in_place.data(), in_place.data(), positions.data(), table, B, T, H, D);
  EXPECT_EQ(in_place, dx);
}

// ---------------------------------------------------------------------------------------------
// Attention

TEST(OpsGradcheck, AttentionForwardMatchesSpec) {
  const AttentionDims d{.B = 2, .H = 3, .D = 4, .Tq = 7, .Tk = 7, .kv_batch_stride = 0};
  const i64 n = d.B * d.Tq * d.H * d.D;
  Rng rng(12);
  const std::vector<float> q = randn(rng, n), k = randn(rng, n), v = randn(rng, n);
  std::vector<float> out(sz(n), kGarbage), lse(sz(d.B * d.H * d.Tq), kGarbage);
  attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), d);
  const AttentionSpec want = attention_spec(q, k, v, d);
  EXPECT_LE(rel_error(out, want.out), kTolForward);
  EXPECT_LE(rel_error(lse, want.lse), kTolForward);
}

TEST(OpsGradcheck, AttentionCausalMask) {
  // Changing the key and value at position j (to large values) leaves every output and lse of the
  // queries before j bit for bit as they were, and changes those at and after j.
  const AttentionDims d{.B = 2, .H = 3, .D = 4, .Tq = 7, .Tk = 7, .kv_batch_stride = 0};
  const i64 C = d.H * d.D, n = d.B * d.Tq * C, j = 4;
  Rng rng(13);
  const std::vector<float> q = randn(rng, n), k = randn(rng, n), v = randn(rng, n);
  std::vector<float> out(sz(n)), lse(sz(d.B * d.H * d.Tq));
  attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), d);

  std::vector<float> k2 = k, v2 = v;
  for (i64 b = 0; b < d.B; ++b)
    for (i64 c = 0; c < C; ++c) {
      k2[sz((b * d.Tk + j) * C + c)] = static_cast<float>(50.0 * rng.normal());
      v2[sz((b * d.Tk + j) * C + c)] = static_cast<float>(1000.0 * rng.normal());
    }
  std::vector<float> out2(sz(n)), lse2(sz(d.B * d.H * d.Tq));
  attention_forward(out2.data(), lse2.data(), q.data(), k2.data(), v2.data(), d);
  for (i64 b = 0; b < d.B; ++b)
    for (i64 t = 0; t < d.Tq; ++t) {
      bool row_same = true;
      for (i64 c = 0; c < C; ++c) row_same = row_same && out2[sz((b * d.Tq + t) * C + c)] == out[sz((b * d.Tq + t) * C + c)];
      if (t < j) {
        EXPECT_TRUE(row_same) << "batch " << b << ": output at position " << t << " saw position " << j;
        for (i64 h = 0; h < d.H; ++h) EXPECT_EQ(lse2[sz((b * d.H + h) * d.Tq + t)], lse[sz((b * d.H + h) * d.Tq + t)]);
      } else {
        EXPECT_FALSE(row_same) << "batch " << b << ": output at position " << t << " ignored position " << j;
      }
    }
}

TEST(OpsGradcheck, AttentionBackward) {
  const AttentionDims d{.B = 2, .H = 3, .D = 4, .Tq = 7, .Tk = 7, .kv_batch_stride = 0};
  const i64 n = d.B * d.Tq * d.H * d.D;
  Rng rng(14);
  std::vector<float> q = randn(rng, n), k = randn(rng, n), v = randn(rng, n);
  const std::vector<float> R = randn(rng, n);
  std::vector<float> out(sz(n)), lse(sz(d.B * d.H * d.Tq));
  auto loss = [&] {
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), d);
    return weighted_sum(out, R);
  };
  const std::vector<double> fd_q = numeric_grad(q, loss), fd_k = numeric_grad(k, loss), fd_v = numeric_grad(v, loss);
  loss();   // out and lse of the unperturbed inputs

  std::vector<float> dq(sz(n), kGarbage), dk(sz(n), kGarbage), dv(sz(n), kGarbage);
  attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), d);
  EXPECT_LE(rel_error(dq, fd_q), kTolNonlinearOp);
  EXPECT_LE(rel_error(dk, fd_k), kTolNonlinearOp);
  EXPECT_LE(rel_error(dv, fd_v), kTolLinearOp);   // out is linear in v
}

TEST(OpsGradcheck, AttentionWithStridedKvCacheMatchesFullForward) {
  // Keys and values of Tk = 7 positions sit in a cache of capacity 10 per sequence (the rest NaN:
  // never read). The last Tq queries against it must give rows Tk − Tq .. Tk − 1 of the packed
  // causal forward over all Tk positions. The score and value products run with other shapes
  // (Tq rows instead of Tk), so agreement is to fp32 rounding, not bit for bit.
  const i64 B = 2, H = 3, D = 4, Tk = 7, capacity = 10, C = H * D;
  Rng rng(15);
  const std::vector<float> q = randn(rng, B * Tk * C), k = randn(rng, B * Tk * C), v = randn(rng, B * Tk * C);
  const AttentionDims full{.B = B, .H = H, .D = D, .Tq = Tk, .Tk = Tk, .kv_batch_stride = 0};
  std::vector<float> out_full(sz(B * Tk * C)), lse_full(sz(B * H * Tk));
  attention_forward(out_full.data(), lse_full.data(), q.data(), k.data(), v.data(), full);

  std::vector<float> k_cache(sz(B * capacity * C), std::numeric_limits<float>::quiet_NaN()), v_cache = k_cache;
  for (i64 b = 0; b < B; ++b)
    for (i64 i = 0; i < Tk * C; ++i) {
      k_cache[sz(b * capacity * C + i)] = k[sz(b * Tk * C + i)];
      v_cache[sz(b * capacity * C + i)] = v[sz(b * Tk * C + i)];
    }

  for (i64 Tq : {1, 3, 7}) {
    SCOPED_TRACE(testing::Message() << "Tq " << Tq);
    const AttentionDims d{.B = B, .H = H, .D = D, .Tq = Tq, .Tk = Tk, .kv_batch_stride = capacity * C};
    std::vector<float> q_part(sz(B * Tq * C));
    for (i64 b = 0; b < B; ++b)
      for (i64 i = 0; i < Tq * C; ++i) q_part[sz(b * Tq * C + i)] = q[sz((b * Tk + Tk - Tq) * C + i)];
    std::vector<float> out(sz(B * Tq * C), kGarbage), lse(sz(B * H * Tq), kGarbage);
    attention_forward(out.data(), lse.data(), q_part.data(), k_cache.data(), v_cache.data(), d);
    EXPECT_TRUE(all_finite(out));

    // query i ↔ row Tk − Tq + i of the full forward
    std::vector<float> want_out(out.size()), want_lse(lse.size());
    for (i64 b = 0; b < B; ++b)
      for (i64 i = 0; i < Tq; ++i) {
        for (i64 c = 0; c < C; ++c) want_out[sz((b * Tq + i) * C + c)] = out_full[sz((b * Tk + Tk - Tq + i) * C + c)];
        for (i64 h = 0; h < H; ++h) want_lse[sz((b * H + h) * Tq + i)] = lse_full[sz((b * H + h) * Tk + Tk - Tq + i)];
      }
    EXPECT_LE(rel_error(out, want_out), kTolForward);
    EXPECT_LE(rel_error(lse, want_lse), kTolForward);
    // and both against the spec
    const AttentionSpec spec = attention_spec(q_part, k_cache, v_cache, d);
    EXPECT_LE(rel_error(out, spec.out), kTolForward);
    EXPECT_LE(rel_error(lse, spec.lse), kTolForward);
  }
}

// The attention variants (issue 6): grouped-query and multi-query heads, a sliding window (with
// T > 16 so that queries run in several blocks, each against its own band of keys), the score
// soft-cap and dropout on the probabilities, alone and together. q is drawn with scale 2 so the
// scores (~N(0, 4)) reach the cap's bend at c = 1.5.
struct AttentionCase {
  const char* name;
  AttentionDims d;
};
const AttentionCase kAttentionVariants[] = {
    {"gqa", {.B = 2, .H = 4, .Hkv = 2, .D = 3, .Tq = 7, .Tk = 7}},
    {"mqa", {.B = 2, .H = 3, .Hkv = 1, .D = 4, .Tq = 7, .Tk = 7}},
    {"window 3, two blocks", {.B = 1, .H = 2, .D = 3, .Tq = 20, .Tk = 20, .window = 3}},
    {"window 1", {.B = 2, .H = 2, .D = 3, .Tq = 6, .Tk = 6, .window = 1}},
    {"window 17, three blocks", {.B = 1, .H = 1, .D = 2, .Tq = 40, .Tk = 40, .window = 17}},
    {"softcap", {.B = 2, .H = 3, .D = 4, .Tq = 7, .Tk = 7, .softcap = 1.5f}},
    {"dropout", {.B = 2, .H = 3, .D = 4, .Tq = 7, .Tk = 7, .dropout = {.p = 0.3, .seed = 42, .site = 6}}},
    {"gqa + window + softcap + dropout",
     {.B = 2, .H = 4, .Hkv = 2, .D = 3, .Tq = 19, .Tk = 19, .window = 4, .softcap = 1.5f,
      .dropout = {.p = 0.25, .seed = 9, .site = 3}}},
};

// Forward against the spec, then backward against finite differences.
TEST(OpsGradcheck, AttentionVariants) {
  for (const AttentionCase& c : kAttentionVariants) {
    SCOPED_TRACE(c.name);
    const AttentionDims& d = c.d;
    const i64 Hkv = d.Hkv ? d.Hkv : d.H;
    Rng rng(22);
    std::vector<float> q = randn(rng, d.B * d.Tq * d.H * d.D, 2.0), k = randn(rng, d.B * d.Tk * Hkv * d.D),
                       v = randn(rng, d.B * d.Tk * Hkv * d.D);
    const std::vector<float> R = randn(rng, static_cast<i64>(q.size()));
    std::vector<float> out(q.size(), kGarbage), lse(sz(d.B * d.H * d.Tq), kGarbage);
    auto loss = [&] {
      attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), d);
      return weighted_sum(out, R);
    };
    loss();
    const AttentionSpec want = attention_spec(q, k, v, d);
    EXPECT_LE(rel_error(out, want.out), kTolForward);
    EXPECT_LE(rel_error(lse, want.lse), kTolForward);
    const std::vector<double> fd_q = numeric_grad(q, loss), fd_k = numeric_grad(k, loss), fd_v = numeric_grad(v, loss);
    loss();
    std::vector<float> dq(q.size(), kGarbage), dk(k.size(), kGarbage), dv(v.size(), kGarbage);
    attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(),
                       d);
    EXPECT_LE(rel_error(dq, fd_q), kTolNonlinearOp);
    EXPECT_LE(rel_error(dk, fd_k), kTolNonlinearOp);
    EXPECT_LE(rel_error(dv, fd_v), kTolLinearOp);   // out is linear in v, with the mask fixed by the seed
  }
}

TEST(OpsGradcheck, AttentionWindowSeesOnlyItsBand) {
  // With W = 3, changing the key and value at position j (to large values) leaves the outputs at
  // positions < j and ≥ j + 3 bit for bit as they were and changes those at j, j + 1, j + 2. Over
  // a cache (Tq < Tk, strided), the decoded rows equal the packed forward's.
  const AttentionDims d{.B = 1, .H = 2, .Hkv = 1, .D = 4, .Tq = 24, .Tk = 24, .window = 3};
  const i64 Cq = d.H * d.D, Ckv = d.D, j = 17;
  Rng rng(23);
  const std::vector<float> q = randn(rng, d.Tq * Cq), k = randn(rng, d.Tk * Ckv), v = randn(rng, d.Tk * Ckv);
  std::vector<float> out(q.size()), lse(sz(d.H * d.Tq));
  attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), d);
  std::vector<float> k2 = k, v2 = v;
  for (i64 e = 0; e < Ckv; ++e) {
    k2[sz(j * Ckv + e)] = static_cast<float>(50.0 * rng.normal());
    v2[sz(j * Ckv + e)] = static_cast<float>(1000.0 * rng.normal());
  }
  std::vector<float> out2(q.size()), lse2(lse.size());
  attention_forward(out2.data(), lse2.data(), q.data(), k2.data(), v2.data(), d);
  for (i64 t = 0; t < d.Tq; ++t) {
    const bool same = std::equal(out.begin() + t * Cq, out.begin() + (t + 1) * Cq, out2.begin() + t * Cq);
    EXPECT_EQ(same, t < j || t >= j + d.window) << "position " << t;
  }
  // the last 2 queries against a cache of capacity 30 holding the 24 positions
  const i64 capacity = 30, Tq = 2;
  std::vector<float> k_cache(sz(capacity * Ckv), std::numeric_limits<float>::quiet_NaN()), v_cache = k_cache;
  std::copy(k.begin(), k.end(), k_cache.begin());
  std::copy(v.begin(), v.end(), v_cache.begin());
  const AttentionDims dc{.B = 1, .H = 2, .Hkv = 1, .D = 4, .Tq = Tq, .Tk = d.Tk, .kv_batch_stride = capacity * Ckv,
                         .window = 3};
  std::vector<float> out_c(sz(Tq * Cq)), lse_c(sz(d.H * Tq));
  attention_forward(out_c.data(), lse_c.data(), q.data() + (d.Tq - Tq) * Cq, k_cache.data(), v_cache.data(), dc);
  EXPECT_LE(rel_error(out_c, std::vector<float>(out.end() - Tq * Cq, out.end())), kTolForward);
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

double silu(double a) { return a / (1.0 + std::exp(-a)); }

TEST(OpsGradcheck, SwigluForwardMatchesSpec) {
  const i64 N = 5, F = 10;
  Rng rng(16);
  std::vector<float> a = randn(rng, N * F, 2.0);
  const std::vector<float> b = randn(rng, N * F);
  // saturated inputs: exp(−a) overflows to inf for a = −1000 (silu = −0, no NaN)
  a[0] = -1000.0f, a[1] = 1000.0f, a[2] = -90.0f, a[3] = 90.0f;
  std::vector<float> h(sz(N * F), kGarbage);
  swiglu_forward(h.data(), a.data(), b.data(), N * F);
  EXPECT_TRUE(all_finite(h));
  std::vector<double> want(h.size());
  for (std::size_t i = 0; i < h.size(); ++i) want[i] = silu(a[i]) * b[i];
  EXPECT_LE(rel_error(h, want), kTolForward);
  EXPECT_EQ(h[0], 0.0f);
  EXPECT_EQ(h[1], 1000.0f * b[1]);
}

TEST(OpsGradcheck, SwigluBackward) {
  const i64 N = 5, F = 10;
  Rng rng(17);
  std::vector<float> a = randn(rng, N * F, 2.0), b = randn(rng, N * F);
  const std::vector<float> R = randn(rng, N * F);
  std::vector<float> h(sz(N * F));
  auto loss = [&] {
    swiglu_forward(h.data(), a.data(), b.data(), N * F);
    return weighted_sum(h, R);
  };
  const std::vector<double> fd_a = numeric_grad(a, loss), fd_b = numeric_grad(b, loss);
  std::vector<float> da(sz(N * F), kGarbage), db(sz(N * F), kGarbage);
  swiglu_backward(da.data(), db.data(), R.data(), a.data(), b.data(), N * F);
  EXPECT_LE(rel_error(da, fd_a), kTolNonlinearOp);
  EXPECT_LE(rel_error(db, fd_b), kTolLinearOp);   // h is linear in b

  // da and db may alias a and b.
  std::vector<float> a2 = a, b2 = b;
  swiglu_backward(a2.data(), b2.data(), R.data(), a2.data(), b2.data(), N * F);
  EXPECT_EQ(a2, da);
  EXPECT_EQ(b2, db);

  // Saturated inputs give finite gradients.
  const std::vector<float> sa = {-1000.0f, 1000.0f, -90.0f, 90.0f}, sb = {1.5f, -2.0f, 3.0f, 0.5f}, sdh(4, 1.0f);
  std::vector<float> sda(4), sdb(4);
  swiglu_backward(sda.data(), sdb.data(), sdh.data(), sa.data(), sb.data(), 4);
  EXPECT_TRUE(all_finite(sda));
  EXPECT_TRUE(all_finite(sdb));
  EXPECT_EQ(sda[1], sb[1]);   // silu'(a) = 1 for large a
  EXPECT_EQ(sdb[1], 1000.0f);
}

// ---------------------------------------------------------------------------------------------
// The feed-forward variants' activations (plain and gated)

double act_spec(double x, Activation act) {
  switch (act) {
    case Activation::relu: return std::max(x, 0.0);
    case Activation::relu2: return x > 0 ? x * x : 0.0;
    case Activation::silu: return silu(x);
    case Activation::gelu: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
  }
  return 0.0;
}

// Random inputs kept 0.05 away from 0, where ReLU and ReLU² have their kink (the finite difference
// step is 1e-2).
std::vector<float> away_from_zero(Rng& rng, i64 n) {
  std::vector<float> x = randn(rng, n, 2.0);
  for (float& v : x) v = v < 0 ? v - 0.05f : v + 0.05f;
  return x;
}

TEST(OpsGradcheck, ActivationsMatchSpecAndGradcheck) {
  const i64 n = 47;
  for (Activation act : {Activation::relu, Activation::gelu, Activation::silu, Activation::relu2}) {
    SCOPED_TRACE(activation_name(act));
    Rng rng(40 + static_cast<int>(act));
    std::vector<float> x = away_from_zero(rng, n), b = randn(rng, n);
    const std::vector<float> R = randn(rng, n);
    // plain: forward against the formula, backward against finite differences
    std::vector<float> out(sz(n), kGarbage);
    activation_forward(out.data(), x.data(), n, act);
    std::vector<double> want(sz(n));
    for (i64 i = 0; i < n; ++i) want[i] = act_spec(x[i], act);
    EXPECT_LE(rel_error(out, want), kTolForward);
    auto plain_loss = [&] {
      activation_forward(out.data(), x.data(), n, act);
      return weighted_sum(out, R);
    };
    const std::vector<double> fd_x = numeric_grad(x, plain_loss);
    std::vector<float> dx(sz(n), kGarbage);
    activation_backward(dx.data(), R.data(), x.data(), n, act);
    EXPECT_LE(rel_error(dx, fd_x), kTolNonlinearOp);
    // gated: h = act(a) ⊙ b
    std::vector<float> h(sz(n), kGarbage);
    gated_forward(h.data(), x.data(), b.data(), n, act);
    for (i64 i = 0; i < n; ++i) want[i] = act_spec(x[i], act) * b[i];
    EXPECT_LE(rel_error(h, want), kTolForward);
    auto gated_loss = [&] {
      gated_forward(h.data(), x.data(), b.data(), n, act);
      return weighted_sum(h, R);
    };
    const std::vector<double> fd_a = numeric_grad(x, gated_loss), fd_b = numeric_grad(b, gated_loss);
    std::vector<float> da(sz(n), kGarbage), db(sz(n), kGarbage);
    gated_backward(da.data(), db.data(), R.data(), x.data(), b.data(), n, act);
    EXPECT_LE(rel_error(da, fd_a), kTolNonlinearOp);
    EXPECT_LE(rel_error(db, fd_b), kTolLinearOp);   // h is linear in b
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

TEST(OpsGradcheck, CrossEntropyForwardMatchesSpec) {
  const i64 N = 5, V = 11;
  Rng rng(18);
  const std::vector<float> logits = randn(rng, N * V, 3.0);
  const std::vector<std::int32_t> targets = {0, 10, 4, 4, 7};
  std::vector<float> losses(sz(N), kGarbage), lse(sz(N), kGarbage);
  const double mean = cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V);
  std::vector<double> want_loss(sz(N)), want_lse(sz(N));
  double want_mean = 0.0;
  for (i64 n = 0; n < N; ++n) {
    double sum = 0.0;
    for (i64 v = 0; v < V; ++v) sum += std::exp(static_cast<double>(logits[sz(n * V + v)]));
    want_lse[sz(n)] = std::log(sum);
    want_loss[sz(n)] = want_lse[sz(n)] - logits[sz(n * V + targets[sz(n)])];
    want_mean += want_loss[sz(n)] / static_cast<double>(N);
  }
  EXPECT_LE(rel_error(losses, want_loss), kTolForward);
  EXPECT_LE(rel_error(lse, want_lse), kTolForward);
  EXPECT_NEAR(mean, want_mean, kTolForward * want_mean);
}

TEST(OpsGradcheck, CrossEntropyBackward) {
  const i64 N = 5, V = 11;
  Rng rng(19);
  std::vector<float> logits = randn(rng, N * V, 2.0);
  const std::vector<std::int32_t> targets = {3, 0, 10, 3, 6};
  std::vector<float> losses(sz(N)), lse(sz(N));

  // (a) the mean loss, as training uses it: dlogits with scale = 1 / N.
  auto mean_loss = [&] { return cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V); };
  const std::vector<double> fd_mean = numeric_grad(logits, mean_loss);
  mean_loss();
  std::vector<float> d(sz(N * V), kGarbage);
  cross_entropy_backward(d.data(), logits.data(), lse.data(), targets.data(), N, V, 1.0f / static_cast<float>(N));
  EXPECT_LE(rel_error(d, fd_mean), kTolNonlinearOp);

  // (b) L = Σ_n loss_n R_n: one backward call per row with scale R_n.
  const std::vector<float> R = randn(rng, N);
  auto weighted = [&] {
    cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V);
    return weighted_sum(losses, R);
  };
  const std::vector<double> fd = numeric_grad(logits, weighted);
  weighted();
  std::vector<float> dw(sz(N * V), kGarbage);
  for (i64 n = 0; n < N; ++n)
    cross_entropy_backward(dw.data() + n * V, logits.data() + n * V, lse.data() + n, targets.data() + n, 1, V, R[sz(n)]);
  EXPECT_LE(rel_error(dw, fd), kTolNonlinearOp);

  // dlogits may alias logits.
  std::vector<float> in_place = logits;
  cross_entropy_backward(in_place.data(), in_place.data(), lse.data(), targets.data(), N, V, 1.0f / static_cast<float>(N));
  EXPECT_EQ(in_place, d);
}

}  // namespace

// ---- fast_exp: the vectorizable exp behind softmax, cross-entropy and the SwiGLU gate ----

namespace scratchlm {
namespace {

TEST(FastExp, WithinTwoRoundingsOfExpOverItsDomain) {
  // Every float spacing of 1e-4 over [−87.3, 88]: relative error against double exp below 2e-7
  // (Cephes' polynomial on |r| ≤ ln2/2 is accurate to ~1e-7; float arithmetic adds ~1 rounding).
  double worst = 0;
  for (double x = -87.3; x <= 88.0; x += 1e-4) {
    const float xf = static_cast<float>(x);
    const double want = std::exp(static_cast<double>(xf));
    worst = std::max(worst, std::fabs(fast_exp(xf) - want) / want);
  }
  EXPECT_LT(worst, 2e-7);
  EXPECT_EQ(fast_exp(0.0f), 1.0f);
  EXPECT_EQ(fast_exp(-88.0f), 0.0f);     // below float's normal range: 0, not a denormal
  EXPECT_EQ(fast_exp(-1000.0f), 0.0f);
  EXPECT_TRUE(std::isnan(fast_exp(std::nanf(""))));
}

TEST(FastExp, SigmoidIsStableAtEveryScale) {
  for (float a : {-1000.0f, -100.0f, -20.0f, -1.0f, 0.0f, 1.0f, 20.0f, 100.0f, 1000.0f}) {
    const double want = 1.0 / (1.0 + std::exp(-static_cast<double>(a)));
    const float got = fast_sigmoid(a);
    ASSERT_TRUE(std::isfinite(got)) << a;
    EXPECT_NEAR(got, want, 2e-7 * want + 1e-38) << a;
  }
  EXPECT_EQ(fast_sigmoid(1000.0f), 1.0f);
  EXPECT_EQ(fast_sigmoid(-1000.0f), 0.0f);
}

}  // namespace
}  // namespace scratchlm
