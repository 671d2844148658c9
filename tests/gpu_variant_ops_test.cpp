// The variant ops on the GPU (ops/cuda/variant_ops_cuda.h) against the CPU ops (the spec), forward
// and backward, on random inputs with ragged sizes (rows not a multiple of the 8 rows of a block,
// columns not a multiple of 32). Tolerances, from precision:
//   - fp32: the GPU computes in fp32 where the CPU accumulates in double. A row or column sum of m
//     terms in the fixed GPU order (a serial run per lane or chunk, then a handful of tree levels)
//     has rounding error ~ √(levels)·2^-24 relative to the sum's typical size for random-sign terms,
//     and the element-wise functions (expf, erfcf, tanhf) are within 2 ulp: 1e-5 norm-relative
//     error leaves an order of magnitude of room, and bugs (a wrong term, a missed row) are O(1).
//   - bf16: an op that stores its output in bf16 cannot beat rounding the exact result to bf16
//     (`rounding_error`); we allow twice that, plus float noise. The CPU reference runs on the
//     bf16-rounded inputs the GPU op read (`as_stored`), so input rounding is not counted against it.
//   - exact: dropout (the same hash, the same fp32 product and sum, no FMA), the bias and position
//     adds (one fp32 add, then one rounding to the storage type) must equal the CPU bit for bit.
// Every test skips without a GPU (SLM_REQUIRE_GPU), as on the build machine and in CI.
#include <gtest/gtest.h>

#if SCRATCHLM_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "model/config.h"
#include "ops/activation.h"
#include "ops/cross_entropy.h"
#include "ops/cuda/variant_ops_cuda.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/layernorm.h"
#include "tensor/gpu_buffer.h"
#include "gpu_test_util.h"
#include "test_util.h"
#include "util/error.h"

namespace scratchlm {
namespace {

using test::as_stored;
using test::bound;   // fp32: the given bound; bf16: twice the rounding error (see the top of the file)
using test::download;
using test::randn;
using test::upload;

double rel(const std::vector<float>& a, const std::vector<float>& ref) { return test::rel_error(a, ref); }

std::vector<float> plus(std::vector<float> v, float c) {
  for (float& x : v) x += c;
  return v;
}

// [a | b] row by row: the fused up-projection's (N, 2F) layout; and its halves back.
std::vector<float> interleave(const std::vector<float>& a, const std::vector<float>& b, std::int64_t N, std::int64_t F) {
  std::vector<float> ab(static_cast<std::size_t>(2 * N * F));
  for (std::int64_t r = 0; r < N; ++r)
    for (std::int64_t f = 0; f < F; ++f) {
      ab[r * 2 * F + f] = a[r * F + f];
      ab[r * 2 * F + F + f] = b[r * F + f];
    }
  return ab;
}
std::vector<float> half_of(const std::vector<float>& ab, std::int64_t N, std::int64_t F, int which) {
  std::vector<float> h(static_cast<std::size_t>(N * F));
  for (std::int64_t r = 0; r < N; ++r)
    for (std::int64_t f = 0; f < F; ++f) h[r * F + f] = ab[r * 2 * F + which * F + f];
  return h;
}

template <typename T>
class GpuVariantOp : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, Bf16>;
TYPED_TEST_SUITE(GpuVariantOp, StorageTypes);

// ---- LayerNorm ---------------------------------------------------------------------------------

struct LnCase {
  std::int64_t N, C;
  bool bias;
};

template <typename T>
void layernorm_case(const LnCase& k) {
  SCOPED_TRACE(str("N = ", k.N, ", C = ", k.C, k.bias ? ", bias" : ", no bias"));
  const std::int64_t N = k.N, C = k.C;
  // Rows with mean 3 and std 2: the two-pass variance matters.
  const auto x = plus(randn(N * C, 21, 2.0f), 3.0f), weight = plus(randn(C, 22, 0.3f), 1.0f);
  const auto bias = randn(C, 23, 0.2f), dy = randn(N * C, 24), dx0 = randn(N * C, 25);
  const float* bias_cpu = k.bias ? bias.data() : nullptr;
  GpuBuffer d_x = upload<float>(x), d_w = upload<float>(weight), d_b = upload<float>(bias);
  GpuBuffer d_out(N * C * sizeof(T)), d_mean(N * 4), d_rstd(N * 4);
  const float* d_bias = k.bias ? d_b.as<float>() : nullptr;
  layernorm_forward_cuda(d_out.as<T>(), d_mean.as<float>(), d_rstd.as<float>(), d_x.as<float>(), d_w.as<float>(),
                         d_bias, N, C, nullptr);
  std::vector<float> out(N * C), mean(N), rstd(N);
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight.data(), bias_cpu, N, C);
  EXPECT_LT(rel(download<T>(d_out, N * C), out), bound<T>(out));
  EXPECT_LT(rel(download<float>(d_mean, N), mean), 1e-5);
  EXPECT_LT(rel(download<float>(d_rstd, N), rstd), 1e-5);

  // Backward, accumulating: dx onto dx0; dweight and dbias onto 0.5 (subtracted again below; the
  // CPU op accumulates onto zeros).
  std::vector<float> dx = dx0, dw(C, 0.0f), db(C, 0.0f);
  layernorm_backward(dx.data(), dw.data(), k.bias ? db.data() : nullptr, dy.data(), x.data(), weight.data(),
                     mean.data(), rstd.data(), N, C, Accumulate::yes);
  GpuBuffer d_dx = upload<float>(dx0), d_dy = upload<float>(dy), d_copy(N * C * sizeof(T));
  GpuBuffer d_dw = upload<float>(std::vector<float>(C, 0.5f)), d_db = upload<float>(std::vector<float>(C, 0.5f));
  GpuBuffer d_partials(kRmsnormPartials * C * 4);   // the GPU model's norm_partials size
  float* d_dbias = k.bias ? d_db.as<float>() : nullptr;
  layernorm_backward_cuda(d_dx.as<float>(), d_copy.as<T>(), d_dw.as<float>(), d_dbias, d_partials.as<float>(),
                          d_dy.as<float>(), d_x.as<float>(), d_w.as<float>(), d_mean.as<float>(), d_rstd.as<float>(),
                          N, C, Accumulate::yes, nullptr);
  const auto got_dx = download<float>(d_dx, N * C);
  EXPECT_LT(rel(got_dx, dx), 1e-5);
  EXPECT_LT(rel(download<T>(d_copy, N * C), dx), bound<T>(dx)) << "dx_copy holds the accumulated dx";
  EXPECT_LT(rel(plus(download<float>(d_dw, C), -0.5f), dw), 1e-5) << "dweight";
  if (k.bias) {
    EXPECT_LT(rel(plus(download<float>(d_db, C), -0.5f), db), 1e-5) << "dbias";
  } else {
    EXPECT_EQ(download<float>(d_db, C), std::vector<float>(C, 0.5f)) << "no bias: dbias untouched";
  }

  // Overwriting, in place of dy (post placement's dsub), no copy: the same dx without dx0; and the
  // parameter gradients again, bit for bit the same increments (a fixed order).
  std::vector<float> dx_new(N * C), scratch_w(C, 0.0f), scratch_b(C, 0.0f);
  layernorm_backward(dx_new.data(), scratch_w.data(), scratch_b.data(), dy.data(), x.data(), weight.data(), mean.data(),
                     rstd.data(), N, C, Accumulate::no);
  const auto dw_once = download<float>(d_dw, C);
  GpuBuffer d_dw2 = upload<float>(std::vector<float>(C, 0.5f));
  layernorm_backward_cuda<T>(d_dy.as<float>(), nullptr, d_dw2.as<float>(), nullptr, d_partials.as<float>(),
                             d_dy.as<float>(), d_x.as<float>(), d_w.as<float>(), d_mean.as<float>(),
                             d_rstd.as<float>(), N, C, Accumulate::no, nullptr);
  EXPECT_LT(rel(download<float>(d_dy, N * C), dx_new), 1e-5) << "dx overwritten in place of dy";
  EXPECT_EQ(download<float>(d_dw2, C), dw_once) << "dweight repeats bit for bit";
}

TYPED_TEST(GpuVariantOp, LayerNormForwardAndBackward) {
  SLM_REQUIRE_GPU();
  // ragged rows and columns; N = 600 gives the chunks of the column sums several rows (and leaves
  // the last chunks empty); C = 1030 several columns per lane
  for (const LnCase& k : {LnCase{37, 100, true}, LnCase{600, 37, false}, LnCase{5, 1030, true}, LnCase{9, 7, false}})
    layernorm_case<TypeParam>(k);
}

// ---- activations -------------------------------------------------------------------------------

constexpr Activation kActivations[] = {Activation::relu, Activation::relu2, Activation::silu, Activation::gelu};

template <typename T>
void gated_case(std::int64_t F, Activation act) {
  SCOPED_TRACE(str("F = ", F, ", ", activation_name(act)));
  const std::int64_t N = 7, n = N * F;
  const auto a = as_stored<T>(randn(n, 31, 3.0f)), b = as_stored<T>(randn(n, 32)), dh = as_stored<T>(randn(n, 33));
  GpuBuffer d_ab = upload<T>(interleave(a, b, N, F)), d_dh = upload<T>(dh), d_h(n * sizeof(T)),
            d_dab(2 * n * sizeof(T));
  gated_forward_cuda(d_h.as<T>(), d_ab.as<T>(), N, F, act, nullptr);
  gated_backward_cuda(d_dab.as<T>(), d_dh.as<T>(), d_ab.as<T>(), N, F, act, nullptr);
  std::vector<float> h(n), da(n), db(n);
  gated_forward(h.data(), a.data(), b.data(), n, act);
  gated_backward(da.data(), db.data(), dh.data(), a.data(), b.data(), n, act);
  const auto dab = download<T>(d_dab, 2 * n);
  EXPECT_LT(rel(download<T>(d_h, n), h), bound<T>(h));
  EXPECT_LT(rel(half_of(dab, N, F, 0), da), bound<T>(da)) << "da";
  EXPECT_LT(rel(half_of(dab, N, F, 1), db), bound<T>(db)) << "db";
  // in place over ab (the documented aliasing): the same values
  gated_backward_cuda(d_ab.as<T>(), d_dh.as<T>(), d_ab.as<T>(), N, F, act, nullptr);
  EXPECT_EQ(download<T>(d_ab, 2 * n), dab) << "dab in place of ab";
}

template <typename T>
void plain_case(std::int64_t n, Activation act) {
  SCOPED_TRACE(str("n = ", n, ", ", activation_name(act)));
  const auto a = as_stored<T>(randn(n, 34, 3.0f)), dh = as_stored<T>(randn(n, 35));
  GpuBuffer d_a = upload<T>(a), d_dh = upload<T>(dh), d_h(n * sizeof(T));
  activation_forward_cuda(d_h.as<T>(), d_a.as<T>(), n, act, nullptr);
  activation_backward_cuda(d_dh.as<T>(), d_dh.as<T>(), d_a.as<T>(), n, act, nullptr);   // da in place of dh
  std::vector<float> h(n), da(n);
  activation_forward(h.data(), a.data(), n, act);
  activation_backward(da.data(), dh.data(), a.data(), n, act);
  const auto got_h = download<T>(d_h, n);
  EXPECT_LT(rel(got_h, h), bound<T>(h));
  EXPECT_LT(rel(download<T>(d_dh, n), da), bound<T>(da)) << "da";
  activation_forward_cuda(d_a.as<T>(), d_a.as<T>(), n, act, nullptr);   // in place
  EXPECT_EQ(download<T>(d_a, n), got_h) << "h in place of a";
}

TYPED_TEST(GpuVariantOp, GatedActivationsOnTheFusedLayout) {
  SLM_REQUIRE_GPU();
  for (Activation act : kActivations)
    for (std::int64_t F : {128, 143}) gated_case<TypeParam>(F, act);
}

TYPED_TEST(GpuVariantOp, PlainActivations) {
  SLM_REQUIRE_GPU();
  for (Activation act : kActivations)
    for (std::int64_t n : {1, 1001}) plain_case<TypeParam>(n, act);
}

// GeLU's left tail: Φ(x) through erfc keeps its relative accuracy where an fp32 1 + erf(x/√2)
// cancels (at x = −5, Φ = 2.9e-7 is a few ulps of 1: tens of percent wrong). Element-wise relative
// error against the CPU's double formula, for x in [−5.5, −3] (where double still has ≥ 8 digits).
TEST(GpuVariantOps, GeluIsAccurateInTheLeftTail) {
  SLM_REQUIRE_GPU();
  const std::int64_t n = 26;
  std::vector<float> x(n);
  for (std::int64_t i = 0; i < n; ++i) x[i] = -3.0f - 0.1f * static_cast<float>(i);
  GpuBuffer d_x = upload<float>(x), d_h(n * 4);
  activation_forward_cuda(d_h.as<float>(), d_x.as<float>(), n, Activation::gelu, nullptr);
  std::vector<float> h(n);
  activation_forward(h.data(), x.data(), n, Activation::gelu);
  const auto got = download<float>(d_h, n);
  for (std::int64_t i = 0; i < n; ++i)
    EXPECT_NEAR(got[i], h[i], 1e-5 * std::fabs(h[i]) + 1e-40) << "x = " << x[i];
}

// ---- biases ------------------------------------------------------------------------------------

template <typename T>
void bias_case(std::int64_t N, std::int64_t F) {
  SCOPED_TRACE(str("N = ", N, ", F = ", F));
  // the second half of a fused (N, 2F) ab: leading dimension 2F, the first half untouched
  const std::int64_t ld = 2 * F;
  const auto y = as_stored<T>(randn(N * ld, 41)), bias = randn(F, 42);
  GpuBuffer d_y = upload<T>(y), d_bias = upload<float>(bias);
  bias_forward_cuda(d_y.as<T>() + F, d_bias.as<float>(), N, F, ld, nullptr);
  std::vector<float> want = y;   // one fp32 add, then the storage rounding: the same on both sides
  for (std::int64_t r = 0; r < N; ++r)
    for (std::int64_t f = 0; f < F; ++f) want[r * ld + F + f] = y[r * ld + F + f] + bias[f];
  EXPECT_EQ(download<T>(d_y, N * ld), as_stored<T>(want));

  // dbias (F) += column sums of dy: the CPU's linear_backward dbias, Σ_n dy[n] in double
  const auto dy = as_stored<T>(randn(N * ld, 43));
  std::vector<float> db(F);
  for (std::int64_t f = 0; f < F; ++f) {
    double s = 0.0;
    for (std::int64_t r = 0; r < N; ++r) s += dy[r * ld + F + f];
    db[f] = static_cast<float>(s);
  }
  GpuBuffer d_dy = upload<T>(dy), d_db = upload<float>(std::vector<float>(F, 0.5f)), d_partials(kColumnPartials * F * 4);
  bias_backward_cuda(d_db.as<float>(), d_partials.as<float>(), d_dy.as<T>() + F, N, F, ld, nullptr);
  const auto got = download<float>(d_db, F);
  EXPECT_LT(rel(plus(got, -0.5f), db), 1e-5);
  GpuBuffer d_db2 = upload<float>(std::vector<float>(F, 0.5f));
  bias_backward_cuda(d_db2.as<float>(), d_partials.as<float>(), d_dy.as<T>() + F, N, F, ld, nullptr);
  EXPECT_EQ(download<float>(d_db2, F), got) << "bit for bit from run to run";
}

TYPED_TEST(GpuVariantOp, BiasForwardAndColumnSumGradient) {
  SLM_REQUIRE_GPU();
  for (auto [N, F] : {std::pair<std::int64_t, std::int64_t>{7, 143}, {600, 33}, {3000, 5}}) bias_case<TypeParam>(N, F);
}

// ---- dropout -----------------------------------------------------------------------------------

template <typename T>
void dropout_case(double p, bool with_residual) {
  SCOPED_TRACE(str("p = ", p, with_residual ? ", + residual" : ""));
  const std::int64_t N = 37, C = 101, n = N * C;
  const Dropout d{.p = p, .seed = dropout_seed(1234, 7, 2), .site = dropout_site_ffn_out(3)};
  const auto x = randn(n, 51), res = randn(n, 52);
  // the CPU: dropout_forward, then the residual add (add_into), as model.cpp's pre placement does
  std::vector<float> want(n);
  dropout_forward(want.data(), x.data(), n, d);
  if (with_residual) {
    std::vector<float> sum = res;
    add_into(sum.data(), want.data(), n);
    want = sum;
  }
  GpuBuffer d_x = upload<float>(x), d_res = upload<float>(res), d_out(n * 4), d_copy(n * sizeof(T));
  const float* residual = with_residual ? d_res.as<float>() : nullptr;
  dropout_forward_cuda(d_out.as<float>(), d_copy.as<T>(), d_x.as<float>(), residual, n, d, nullptr);
  EXPECT_EQ(download<float>(d_out, n), want) << "bit for bit the CPU's";
  EXPECT_EQ(download<T>(d_copy, n), as_stored<T>(want)) << "the copy in T";
  // the mask itself: zeros exactly where the CPU's hash drops (x is never exactly 0)
  if (!with_residual) {
    const auto got = download<float>(d_out, n);
    std::int64_t dropped = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const bool keep = dropout_keep(d.seed, d.site, static_cast<std::uint64_t>(i), d.threshold());
      EXPECT_EQ(got[i] != 0.0f, keep) << "index " << i;
      dropped += keep ? 0 : 1;
    }
    // about p·n dropped: a loose 6σ band, to catch a threshold or scale mix-up
    const double mean = p * static_cast<double>(n), sd = std::sqrt(static_cast<double>(n) * p * (1 - p));
    EXPECT_NEAR(static_cast<double>(dropped), mean, 6 * sd);
  }
  // in place: out aliasing x, and out aliasing the residual
  dropout_forward_cuda<T>(d_x.as<float>(), nullptr, d_x.as<float>(), residual, n, d, nullptr);
  EXPECT_EQ(download<float>(d_x, n), want) << "out in place of x";
  if (with_residual) {
    GpuBuffer d_x2 = upload<float>(x);
    dropout_forward_cuda<T>(d_res.as<float>(), nullptr, d_x2.as<float>(), d_res.as<float>(), n, d, nullptr);
    EXPECT_EQ(download<float>(d_res, n), want) << "out in place of the residual";
  }
}

TYPED_TEST(GpuVariantOp, DropoutMasksEqualTheCpus) {
  SLM_REQUIRE_GPU();
  for (double p : {0.1, 0.5})
    for (bool with_residual : {false, true}) dropout_case<TypeParam>(p, with_residual);
}

// ---- positions ---------------------------------------------------------------------------------

void position_case(std::int64_t start, bool sinusoidal) {
  SCOPED_TRACE(str("start = ", start, sinusoidal ? ", sinusoidal" : ", learned"));
  const std::int64_t B = 3, T = 19, C = 38, N = B * T, P = 30;
  const auto table = sinusoidal ? sinusoidal_table(P, C) : randn(P * C, 61);
  const auto x = randn(N * C, 62), dx = randn(N * C, 63), dtable0 = randn(P * C, 64);
  std::vector<std::int32_t> positions(T);
  for (std::int64_t t = 0; t < T; ++t) positions[t] = static_cast<std::int32_t>(start + t);
  std::vector<float> want = x;
  position_add_forward(want.data(), table.data(), positions.data(), B, T, C);
  GpuBuffer d_x = upload<float>(x), d_table = upload<float>(table);
  position_add_forward_cuda(d_x.as<float>(), d_table.as<float>(), N, T, start, C, nullptr);
  EXPECT_EQ(download<float>(d_x, N * C), want) << "one fp32 add: bit for bit";

  std::vector<float> dtable = dtable0;
  position_add_backward(dtable.data(), dx.data(), positions.data(), B, T, C);
  GpuBuffer d_dx = upload<float>(dx), d_dtable = upload<float>(dtable0);
  position_add_backward_cuda(d_dtable.as<float>(), d_dx.as<float>(), N, T, start, C, nullptr);
  const auto got = download<float>(d_dtable, P * C);
  EXPECT_LT(rel(got, dtable), 1e-6);   // a sum of B = 3 terms in fp32 against double
  for (std::int64_t p = 0; p < P; ++p)
    if (p < start || p >= start + T) {
      for (std::int64_t c = 0; c < C; ++c) EXPECT_EQ(got[p * C + c], dtable0[p * C + c]) << "position " << p;
    }
}

TEST(GpuVariantOps, PositionEmbeddingsForwardAndBackward) {
  SLM_REQUIRE_GPU();
  position_case(0, false);
  position_case(5, false);
  position_case(0, true);
}

// ---- classifier with soft-capping and z-loss ---------------------------------------------------

template <typename T>
void classifier_extras_case(std::int64_t V, const SoftmaxExtras& extras) {
  SCOPED_TRACE(str("V = ", V, ", z_loss = ", extras.z_loss, ", softcap = ", extras.softcap));
  const std::int64_t N = 13;
  const auto raw = as_stored<T>(randn(N * V, 71, 10.0f));   // large logits: stability
  std::vector<std::int32_t> targets(N);
  for (std::int64_t n = 0; n < N; ++n) targets[n] = static_cast<std::int32_t>((n * 97) % V);
  // the CPU: softcap_forward on the logits, cross_entropy_forward, cross_entropy_backward with extras
  std::vector<float> z = raw, losses(N), lse(N), dlogits(N * V);
  if (extras.softcap != 0.0f) softcap_forward(z.data(), N * V, extras.softcap);
  cross_entropy_forward(losses.data(), lse.data(), z.data(), targets.data(), N, V);
  const float scale = 0.37f;
  cross_entropy_backward(dlogits.data(), z.data(), lse.data(), targets.data(), N, V, scale, extras);

  GpuBuffer d_logits = upload<T>(raw), d_losses(N * 4), d_lse(N * 4), d_targets(N * 4);
  copy_to_gpu(d_targets.data(), targets.data(), N * 4);
  classifier_extras_cuda(d_logits.as<T>(), d_losses.as<float>(), d_lse.as<float>(), d_targets.as<std::int32_t>(), N,
                         V, 0.0f, extras, nullptr);
  EXPECT_EQ(download<T>(d_logits, N * V), raw) << "grad_scale 0 leaves the logits alone";
  EXPECT_LT(rel(download<float>(d_losses, N), losses), 1e-5);
  classifier_extras_cuda(d_logits.as<T>(), d_losses.as<float>(), nullptr, d_targets.as<std::int32_t>(), N, V, scale,
                         extras, nullptr);
  EXPECT_LT(rel(download<float>(d_losses, N), losses), 1e-5);
  EXPECT_LT(rel(download<float>(d_lse, N), lse), 1e-5);
  EXPECT_LT(rel(download<T>(d_logits, N * V), dlogits), bound<T>(dlogits));
}

// The cap 30 (Gemma 2's final-logit cap) on logits of std 10 bends the largest ones (z/c up to
// tanh(32/30) ≈ 0.79) while keeping the softcap factor 1 − (z/c)² ≥ 0.37: a rounding of z is
// amplified at most 2(z/c)²/(1 − (z/c)²) ≈ 3.3 times in the gradient, inside the fp32 budget. (At
// z/c → 1 the factor is ill-conditioned for any fp32 implementation, the CPU's included.)
TYPED_TEST(GpuVariantOp, ClassifierWithSoftcapAndZLoss) {
  SLM_REQUIRE_GPU();
  for (std::int64_t V : {1001, 64})
    for (const SoftmaxExtras& e : {SoftmaxExtras{}, SoftmaxExtras{.z_loss = 1e-2f}, SoftmaxExtras{.softcap = 30.0f},
                                   SoftmaxExtras{.z_loss = 1e-2f, .softcap = 30.0f}})
      classifier_extras_case<TypeParam>(V, e);
}

TYPED_TEST(GpuVariantOp, SoftcapInPlace) {
  SLM_REQUIRE_GPU();
  using T = TypeParam;
  const std::int64_t n = 1001;
  const auto x = as_stored<T>(randn(n, 81, 30.0f));
  std::vector<float> want = x;
  softcap_forward(want.data(), n, 15.0f);
  GpuBuffer d_x = upload<T>(x);
  softcap_cuda(d_x.as<T>(), n, 15.0f, nullptr);
  // fp32: x / c, tanhf (≤ 2 ulp) and · c, about 4 ulp (5e-7) per element at worst
  EXPECT_LT(rel(download<T>(d_x, n), want), bound<T>(want, 2e-6));
}

}  // namespace
}  // namespace scratchlm

#endif  // SCRATCHLM_CUDA
