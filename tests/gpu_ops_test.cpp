// The CUDA ops against the CPU ops (the spec), forward and backward, on random inputs and odd shapes.
// Tolerances, from precision:
//   - fp32 storage: the GPU and the CPU differ by summation order and fast exp only: ≲ 1e-5 relative.
//   - bf16 storage: any bf16 op's error against the exact result is at least the error of rounding
//     that result to bf16 (`rounding_error`). We allow twice that (plus float noise): within the
//     issue's "twice PyTorch's own bf16 error", since PyTorch's error can only be larger. Attention,
//     whose flash-style kernels also round P (forward) and dS (backward) to bf16, is held to twice
//     the error PyTorch's own SDPA makes on the same inputs (tests/data/reference/lm-small/
//     torch_bf16_errors.json, written on the GPU machine by reference/torch_bf16_errors.py).
// The references run in fp32 with double accumulation on the bf16-rounded inputs the GPU op read.
#include <gtest/gtest.h>

#if SCRATCHLM_CUDA

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/cuda/attention_cuda.h"
#include "ops/cuda/gemm_cuda.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"
#include "tensor/device.h"
#include "tensor/gpu_buffer.h"
#include "tensor/safetensors.h"
#include "gpu_test_util.h"
#include "test_util.h"
#include "train/optimizer_cuda.h"
#include "util/files.h"
#include "util/error.h"
#include "model/params.h"
#include "train/optimizer.h"
#include <filesystem>
#include <array>

namespace scratchlm {
namespace {

using test::as_stored;
using test::bound;
using test::download;
using test::randn;
using test::round_bf16;
using test::rounding_error;
using test::upload;

// ‖a − ref‖ / ‖ref‖ (test_util.h; the RMS of a where ref is exactly zero, as dq and dk at T = 1).
double rel(const std::vector<float>& a, const std::vector<float>& ref) { return test::rel_error(a, ref); }

template <typename T> void rmsnorm_case(std::int64_t C);
void embedding_case(std::int64_t C);
template <typename T> void rope_case(std::int64_t D, std::int64_t Hkv);
template <typename T> void qk_norm_case(std::int64_t D, std::int64_t Hkv);
template <typename T> void swiglu_case(std::int64_t F);
template <typename T> void classifier_case(std::int64_t V);

template <typename T>
class GpuOp : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, Bf16>;
TYPED_TEST_SUITE(GpuOp, StorageTypes);

// Each op at two sizes: one its vectorized (16-byte) kernel takes, one only the plain kernel can.
TYPED_TEST(GpuOp, RmsNormForwardAndBackward) {
  SLM_REQUIRE_GPU();
  for (std::int64_t C : {100, 101}) rmsnorm_case<TypeParam>(C);
}

template <typename T>
void rmsnorm_case(std::int64_t C) {
  SCOPED_TRACE(str("C = ", C));
  const std::int64_t N = 37;
  const auto x = randn(N * C, 1, 2.0f), gain = randn(C, 2, 0.3f), dy = randn(N * C, 3), dx0 = randn(N * C, 4);
  std::vector<float> gain1(gain);
  for (float& g : gain1) g += 1.0f;
  GpuBuffer d_x = upload<float>(x), d_gain = upload<float>(gain1), d_out(N * C * sizeof(T)), d_rstd(N * 4);
  rmsnorm_forward_cuda(d_out.as<T>(), d_rstd.as<float>(), d_x.as<float>(), d_gain.as<float>(), N, C, nullptr);
  std::vector<float> out(N * C), rstd(N);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), gain1.data(), N, C);
  EXPECT_LT(rel(download<T>(d_out, N * C), out), bound<T>(out));
  EXPECT_LT(rel(download<float>(d_rstd, N), rstd), 1e-6);

  // backward: dx accumulates onto dx0, dgain onto a starting value
  std::vector<float> dx = dx0, dgain(C, 0.5f);
  rmsnorm_backward(dx.data(), dgain.data(), dy.data(), x.data(), gain1.data(), rstd.data(), N, C, Accumulate::yes);
  GpuBuffer d_dx = upload<float>(dx0), d_dgain = upload<float>(std::vector<float>(C, 0.5f)), d_dy = upload<float>(dy);
  GpuBuffer d_copy(N * C * sizeof(T)), d_partials(kRmsnormPartials * C * 4);
  rmsnorm_backward_cuda(d_dx.as<float>(), d_copy.as<T>(), d_dgain.as<float>(), d_partials.as<float>(), d_dy.as<float>(),
                        d_x.as<float>(), d_gain.as<float>(), d_rstd.as<float>(), N, C, nullptr);
  EXPECT_LT(rel(download<float>(d_dx, N * C), dx), 1e-5);
  EXPECT_LT(rel(download<T>(d_copy, N * C), dx), bound<T>(dx));
  // the CPU op overwrites dgain (it is a parameter gradient summed per call); ours adds 0.5 to it
  std::vector<float> dgain_gpu = download<float>(d_dgain, C);
  for (float& v : dgain_gpu) v -= 0.5f;
  std::vector<float> dgain_cpu(C, 0.0f);
  std::vector<float> scratch = dx0;
  rmsnorm_backward(scratch.data(), dgain_cpu.data(), dy.data(), x.data(), gain1.data(), rstd.data(), N, C,
                   Accumulate::yes);
  EXPECT_LT(rel(dgain_gpu, dgain_cpu), 1e-5);
}

TYPED_TEST(GpuOp, RopeRotatesQueriesAndKeysAndInvertsExactly) {
  SLM_REQUIRE_GPU();
  // multi-head, grouped and multi-query layouts; D = 16 takes the packed kernel (fp32 and bf16),
  // D = 12 the packed one in fp32 and the plain one in bf16, D = 10 the plain one in both
  for (std::int64_t D : {16, 12, 10})
    for (std::int64_t Hkv : {6, 2, 1}) rope_case<TypeParam>(D, Hkv);
}

// The q columns (N, H·D) or k columns (N, Hkv·D) of qkv (N, H·D + 2·Hkv·D), and all of its v columns.
std::vector<float> qkv_columns(const std::vector<float>& qkv, std::int64_t N, std::int64_t row, std::int64_t first,
                               std::int64_t width) {
  std::vector<float> r(static_cast<std::size_t>(N * width));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < width; ++c) r[n * width + c] = qkv[n * row + first + c];
  return r;
}

template <typename T>
void rope_case(std::int64_t D, std::int64_t Hkv) {
  SCOPED_TRACE(str("D = ", D, ", Hkv = ", Hkv));
  const GpuAttentionShape s{.B = 3, .T = 19, .H = 6, .D = D, .Hkv = Hkv};
  const std::int64_t N = s.B * s.T, row = s.qkv_row(), H = s.H;
  const auto qkv = as_stored<T>(randn(N * row, 5));
  const RopeTable table = make_rope_table(10000.0, D, s.T);
  std::vector<std::int32_t> pos(s.T);
  for (std::int64_t t = 0; t < s.T; ++t) pos[t] = static_cast<std::int32_t>(t);
  GpuBuffer d_cos = upload<float>(table.cos), d_sin = upload<float>(table.sin);
  for (RopeDirection dir : {RopeDirection::forward, RopeDirection::inverse}) {
    const bool fwd = dir == RopeDirection::forward;
    GpuBuffer d_qkv = upload<T>(qkv);
    rope_qk_cuda(d_qkv.as<T>(), d_cos.as<float>(), d_sin.as<float>(), s, dir, nullptr);
    const auto got = download<T>(d_qkv, N * row);
    // q: H heads from column 0; k: Hkv heads from column H·D; both rotated (the inverse is RoPE's
    // backward, the CPU's rope_backward); v: untouched, exactly.
    for (auto [first, heads] : {std::pair{std::int64_t{0}, H}, std::pair{H * D, Hkv}}) {
      const auto in = qkv_columns(qkv, N, row, first, heads * D);
      std::vector<float> ref(in.size());
      if (fwd) rope_forward(ref.data(), in.data(), pos.data(), table, s.B, s.T, heads, D);
      else rope_backward(ref.data(), in.data(), pos.data(), table, s.B, s.T, heads, D);
      const auto mine = qkv_columns(got, N, row, first, heads * D);
      EXPECT_LT(rel(mine, ref), bound<T>(ref)) << (first == 0 ? "q" : "k") << (fwd ? " forward" : " inverse");
    }
    EXPECT_EQ(qkv_columns(got, N, row, (H + Hkv) * D, Hkv * D), qkv_columns(qkv, N, row, (H + Hkv) * D, Hkv * D))
        << "v";
  }
}

// QK-norm: q and k of each head normalised over its D values, in place in qkv, against the CPU's
// rmsnorm_forward/backward over (N·H, D) rows of q and (N·Hkv, D) rows of k; the backward takes the
// raw values and rstd the forward saved, as the model will. D = 12 and 40 leave lanes idle.
TYPED_TEST(GpuOp, QkNormForwardAndBackwardPerHead) {
  SLM_REQUIRE_GPU();
  for (auto [D, Hkv] : {std::pair<std::int64_t, std::int64_t>{16, 2}, {12, 6}, {40, 1}}) qk_norm_case<TypeParam>(D, Hkv);
}

template <typename T>
void qk_norm_case(std::int64_t D, std::int64_t Hkv) {
  SCOPED_TRACE(str("D = ", D, ", Hkv = ", Hkv));
  const GpuAttentionShape s{.B = 2, .T = 13, .H = 6, .D = D, .Hkv = Hkv};
  const std::int64_t N = s.B * s.T, row = s.qkv_row(), H = s.H, heads = H + Hkv;
  const auto qkv = as_stored<T>(randn(N * row, 11, 2.0f)), dy = as_stored<T>(randn(N * row, 12));
  std::vector<float> q_gain = randn(D, 13, 0.3f), k_gain = randn(D, 14, 0.3f);
  for (float& g : q_gain) g += 1.0f;
  for (float& g : k_gain) g += 1.0f;
  GpuBuffer d_qkv = upload<T>(qkv), d_raw = upload<T>(std::vector<float>(N * heads * D, NAN));
  GpuBuffer d_rstd = upload<float>(std::vector<float>(N * heads, NAN));
  GpuBuffer d_qg = upload<float>(q_gain), d_kg = upload<float>(k_gain);
  qk_norm_forward_cuda(d_qkv.as<T>(), d_raw.as<T>(), d_rstd.as<float>(), d_qg.as<float>(), d_kg.as<float>(), s,
                       nullptr);
  const auto got = download<T>(d_qkv, N * row), raw = download<T>(d_raw, N * heads * D);
  const auto rstd = download<float>(d_rstd, N * heads);
  EXPECT_EQ(raw, qkv_columns(qkv, N, row, 0, heads * D)) << "the raw q and k, exactly";
  EXPECT_EQ(qkv_columns(got, N, row, heads * D, Hkv * D), qkv_columns(qkv, N, row, heads * D, Hkv * D)) << "v";

  // Per part (q: H heads from column 0; k: Hkv heads from column H·D) the CPU op on (N·heads, D).
  GpuBuffer d_dqkv = upload<T>(dy), d_dqg = upload<float>(std::vector<float>(D, 0.5f));
  GpuBuffer d_dkg = upload<float>(std::vector<float>(D, 0.5f)), d_partials(2 * kRmsnormPartials * D * 4);
  qk_norm_backward_cuda(d_dqkv.as<T>(), d_dqg.as<float>(), d_dkg.as<float>(), d_partials.as<float>(), d_raw.as<T>(),
                        d_rstd.as<float>(), d_qg.as<float>(), d_kg.as<float>(), s, nullptr);
  const auto dgot = download<T>(d_dqkv, N * row);
  const std::vector<float> dgain_got[2] = {download<float>(d_dqg, D), download<float>(d_dkg, D)};
  for (int part = 0; part < 2; ++part) {
    const std::int64_t first = part == 0 ? 0 : H * D, nh = part == 0 ? H : Hkv;
    const std::vector<float>& gain = part == 0 ? q_gain : k_gain;
    const char* name = part == 0 ? "q" : "k";
    const auto x = qkv_columns(qkv, N, row, first, nh * D);
    std::vector<float> y(x.size()), r(static_cast<std::size_t>(N * nh));
    rmsnorm_forward(y.data(), r.data(), x.data(), gain.data(), N * nh, D);
    EXPECT_LT(rel(qkv_columns(got, N, row, first, nh * D), y), bound<T>(y)) << name;
    std::vector<float> r_got(r.size());   // (N, heads) → this part's (N·nh)
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t h = 0; h < nh; ++h) r_got[n * nh + h] = rstd[n * heads + (part == 0 ? 0 : H) + h];
    EXPECT_LT(rel(r_got, r), 1e-6) << name;

    const auto dy_part = qkv_columns(dy, N, row, first, nh * D);
    std::vector<float> dx(x.size()), dgain(D, 0.5f);
    rmsnorm_backward(dx.data(), dgain.data(), dy_part.data(), x.data(), gain.data(), r.data(), N * nh, D,
                     Accumulate::no);
    EXPECT_LT(rel(qkv_columns(dgot, N, row, first, nh * D), dx), bound<T>(dx)) << name;
    EXPECT_LT(rel(dgain_got[part], dgain), 1e-5) << name;   // both accumulate onto 0.5
  }
  EXPECT_EQ(qkv_columns(dgot, N, row, heads * D, Hkv * D), qkv_columns(dy, N, row, heads * D, Hkv * D)) << "dv";

  // The dgain sums repeat bit for bit.
  GpuBuffer d_again = upload<T>(dy), d_dqg2 = upload<float>(std::vector<float>(D, 0.5f));
  GpuBuffer d_dkg2 = upload<float>(std::vector<float>(D, 0.5f));
  qk_norm_backward_cuda(d_again.as<T>(), d_dqg2.as<float>(), d_dkg2.as<float>(), d_partials.as<float>(),
                        d_raw.as<T>(), d_rstd.as<float>(), d_qg.as<float>(), d_kg.as<float>(), s, nullptr);
  EXPECT_EQ(download<float>(d_dqg2, D), dgain_got[0]);
  EXPECT_EQ(download<float>(d_dkg2, D), dgain_got[1]);
  EXPECT_EQ(download<T>(d_again, N * row), dgot);
}

TYPED_TEST(GpuOp, SwigluForwardAndBackward) {
  SLM_REQUIRE_GPU();
  for (std::int64_t F : {128, 143}) swiglu_case<TypeParam>(F);
}

template <typename T>
void swiglu_case(std::int64_t F) {
  SCOPED_TRACE(str("F = ", F));
  const std::int64_t N = 7, n = N * F;
  const auto a = as_stored<T>(randn(n, 6, 3.0f)), b = as_stored<T>(randn(n, 7)), dh = as_stored<T>(randn(n, 8));
  // ab (N, 2F) = [a | b] row by row, as the fused up-projection writes it
  std::vector<float> ab(2 * n);
  for (std::int64_t r = 0; r < N; ++r)
    for (std::int64_t f = 0; f < F; ++f) {
      ab[r * 2 * F + f] = a[r * F + f];
      ab[r * 2 * F + F + f] = b[r * F + f];
    }
  GpuBuffer d_ab = upload<T>(ab), d_dh = upload<T>(dh), d_h(n * sizeof(T)), d_dab(2 * n * sizeof(T));
  swiglu_forward_cuda(d_h.as<T>(), d_ab.as<T>(), N, F, nullptr);
  swiglu_backward_cuda(d_dab.as<T>(), d_dh.as<T>(), d_ab.as<T>(), N, F, nullptr);
  std::vector<float> h(n), da(n), db(n);
  swiglu_forward(h.data(), a.data(), b.data(), n);
  swiglu_backward(da.data(), db.data(), dh.data(), a.data(), b.data(), n);
  const auto dab = download<T>(d_dab, 2 * n);
  std::vector<float> got_da(n), got_db(n);
  for (std::int64_t r = 0; r < N; ++r)
    for (std::int64_t f = 0; f < F; ++f) {
      got_da[r * F + f] = dab[r * 2 * F + f];
      got_db[r * F + f] = dab[r * 2 * F + F + f];
    }
  EXPECT_LT(rel(download<T>(d_h, n), h), bound<T>(h));
  EXPECT_LT(rel(got_da, da), bound<T>(da));
  EXPECT_LT(rel(got_db, db), bound<T>(db));
}

TYPED_TEST(GpuOp, FusedClassifierGivesLossesAndGradientInPlace) {
  SLM_REQUIRE_GPU();
  for (std::int64_t V : {1008, 1001}) classifier_case<TypeParam>(V);
}

template <typename T>
void classifier_case(std::int64_t V) {
  SCOPED_TRACE(str("V = ", V));
  const std::int64_t N = 13;
  const auto logits = as_stored<T>(randn(N * V, 9, 10.0f));   // large logits: stability
  std::vector<std::int32_t> targets(N);
  for (std::int64_t n = 0; n < N; ++n) targets[n] = static_cast<std::int32_t>((n * 97) % V);
  std::vector<float> losses(N), lse(N), dlogits(N * V);
  cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V);
  const float scale = 0.37f;
  cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), N, V, scale);
  GpuBuffer d_logits = upload<T>(logits), d_losses(N * 4), d_targets(N * 4);
  copy_to_gpu(d_targets.data(), targets.data(), N * 4);
  classifier_cuda(d_logits.as<T>(), d_losses.as<float>(), d_targets.as<std::int32_t>(), N, V, 0.0f, nullptr);
  EXPECT_EQ(download<T>(d_logits, N * V), logits) << "grad_scale 0 leaves the logits alone";
  classifier_cuda(d_logits.as<T>(), d_losses.as<float>(), d_targets.as<std::int32_t>(), N, V, scale, nullptr);
  EXPECT_LT(rel(download<float>(d_losses, N), losses), 1e-5);
  EXPECT_LT(rel(download<T>(d_logits, N * V), dlogits), bound<T>(dlogits));
}

TEST(GpuOps, EmbeddingForwardAndDeterministicBackward) {
  SLM_REQUIRE_GPU();
  for (std::int64_t C : {33, 132}) {   // the plain kernel; the wide one (C % 4 == 0): one token ~400 times
    SCOPED_TRACE(str("C = ", C));
    embedding_case(C);
  }
}

void embedding_case(std::int64_t C) {
  const std::int64_t N = 500, V = 40;
  std::vector<std::int32_t> ids(N);
  for (std::int64_t n = 0; n < N; ++n) ids[n] = n % 5 == 0 ? static_cast<std::int32_t>((n * n + 3) % 17) : 7;
  ids[1] = 30;   // tokens seen once, twice and 8 times (the short path)
  ids[2] = ids[3] = 31;
  for (std::int64_t n = 11; n < 19; ++n) ids[n] = 32;
  const auto table = randn(V * C, 10), dx = randn(N * C, 11);
  GpuBuffer d_table = upload<float>(table), d_x(N * C * 4), d_ids(N * 4);
  copy_to_gpu(d_ids.data(), ids.data(), N * 4);
  embedding_forward_cuda(d_x.as<float>(), d_ids.as<std::int32_t>(), d_table.as<float>(), N, C, nullptr);
  std::vector<float> x(N * C);
  embedding_forward(x.data(), ids.data(), table.data(), N, C);
  EXPECT_EQ(download<float>(d_x, N * C), x);

  std::vector<std::int32_t> groups(3 * N + 2), counts(V);
  group_tokens(groups.data(), groups.data() + N, groups.data() + 2 * N + 1, groups.data() + 3 * N + 1, ids.data(), N,
               counts.data(), V);
  GpuBuffer d_groups(static_cast<std::int64_t>(groups.size()) * 4), d_dx = upload<float>(dx), d_dtable = upload<float>(table);
  copy_to_gpu(d_groups.data(), groups.data(), d_groups.bytes());
  const std::int32_t* g = d_groups.as<std::int32_t>();
  embedding_backward_cuda(d_dtable.as<float>(), d_dx.as<float>(), {g, g + N, g + 2 * N + 1, g + 3 * N + 1}, N, C,
                          nullptr);
  std::vector<float> dtable = table;
  embedding_backward(dtable.data(), dx.data(), ids.data(), N, C);
  EXPECT_LT(rel(download<float>(d_dtable, V * C), dtable), 1e-6);
}

TEST(GpuOps, GemmMatchesTheCpuInEveryTranspositionAndType) {
  SLM_REQUIRE_GPU();
  GemmContext ctx;
  const std::int64_t M = 37, N = 45, K = 29;
  for (Transpose ta : {Transpose::no, Transpose::yes})
    for (Transpose tb : {Transpose::no, Transpose::yes}) {
      const auto a = round_bf16(randn(M * K, 12)), b = round_bf16(randn(K * N, 13)), c0 = randn(M * N, 14);
      const std::int64_t lda = ta == Transpose::no ? K : M, ldb = tb == Transpose::no ? N : K;
      std::vector<float> ref = c0;   // D = A·B + C
      gemm(ref.data(), N, a.data(), lda, ta, b.data(), ldb, tb, M, N, K, 1.0f, Accumulate::yes);
      const GemmShape s{M, N, K, ta, tb, lda, ldb, N};
      {  // fp32 operands one float past a 16-byte boundary (views into the arenas can be)
        GpuBuffer d_a = upload<float>(std::vector<float>(M * K + 1)), d_b = upload<float>(std::vector<float>(K * N + 1)),
                  d_d = upload<float>(std::vector<float>(M * N + 1));
        copy_to_gpu(d_a.as<float>() + 1, a.data(), M * K * 4);
        copy_to_gpu(d_b.as<float>() + 1, b.data(), K * N * 4);
        copy_to_gpu(d_d.as<float>() + 1, c0.data(), M * N * 4);
        scratchlm::gemm(ctx, d_d.as<float>() + 1, static_cast<const float*>(d_a.as<float>() + 1),
                        static_cast<const float*>(d_b.as<float>() + 1), s, 1.0f, 1.0f, nullptr);
        std::vector<float> got(M * N);
        copy_from_gpu(got.data(), d_d.as<float>() + 1, M * N * 4);
        EXPECT_LT(rel(got, ref), 1e-6);
      }
      {  // fp32 in, fp32 out, C separate from D
        GpuBuffer d_a = upload<float>(a), d_b = upload<float>(b), d_c = upload<float>(c0), d_d(M * N * 4);
        scratchlm::gemm(ctx, d_d.as<float>(), d_a.as<float>(), d_b.as<float>(), s, 1.0f, 1.0f, nullptr,
                        static_cast<const float*>(d_c.as<float>()));
        EXPECT_LT(rel(download<float>(d_d, M * N), ref), 1e-6);
      }
      {  // bf16 in, fp32 out, accumulating into D
        GpuBuffer d_a = upload<Bf16>(a), d_b = upload<Bf16>(b), d_d = upload<float>(c0);
        scratchlm::gemm(ctx, d_d.as<float>(), d_a.as<Bf16>(), d_b.as<Bf16>(), s, 1.0f, 1.0f, nullptr);
        EXPECT_LT(rel(download<float>(d_d, M * N), ref), 1e-6);
      }
      {  // bf16 in, bf16 out
        std::vector<float> prod(M * N, 0.0f);
        gemm(prod.data(), N, a.data(), lda, ta, b.data(), ldb, tb, M, N, K, 1.0f, Accumulate::no);
        GpuBuffer d_a = upload<Bf16>(a), d_b = upload<Bf16>(b), d_d(M * N * 2);
        scratchlm::gemm(ctx, d_d.as<Bf16>(), d_a.as<Bf16>(), d_b.as<Bf16>(), s, 1.0f, 0.0f, nullptr);
        EXPECT_LT(rel(download<Bf16>(d_d, M * N), prod), bound<Bf16>(prod));
      }
    }
}

// ---- attention ------------------------------------------------------------------------------------

// (B, H, T, D) ↔ (B, T, H, D), and packing q, k, v into (B, T, 3, H, D).
std::vector<float> bhtd_to_bthd(const std::vector<float>& x, std::int64_t B, std::int64_t H, std::int64_t T,
                                std::int64_t D) {
  std::vector<float> y(x.size());
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t d = 0; d < D; ++d) y[((b * T + t) * H + h) * D + d] = x[((b * H + h) * T + t) * D + d];
  return y;
}

struct AttentionResult {
  std::vector<float> out, lse, dq, dk, dv;
};

enum class AttentionKernel { cuda_cores, tensor_cores };

// q, k, v, dout in (B, T, H, D).
template <typename T>
AttentionResult run_gpu_attention(AttentionKernel kernel, const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v, const std::vector<float>& dout, std::int64_t B,
                                  std::int64_t Tn, std::int64_t H, std::int64_t D) {
  const std::int64_t C = H * D, N = B * Tn;
  std::vector<float> qkv(N * 3 * C);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c) {
      qkv[n * 3 * C + c] = q[n * C + c];
      qkv[n * 3 * C + C + c] = k[n * C + c];
      qkv[n * 3 * C + 2 * C + c] = v[n * C + c];
    }
  GpuBuffer d_qkv = upload<T>(qkv), d_dout = upload<T>(dout);
  // Poisoned outputs: every element must be written.
  GpuBuffer d_out = upload<T>(std::vector<float>(N * C, NAN)), d_lse = upload<float>(std::vector<float>(B * H * Tn, NAN));
  const GpuAttentionShape s{B, Tn, H, D};
  GpuBuffer d_dqkv = upload<T>(std::vector<float>(N * 3 * C, NAN)), d_delta(attention_backward_scratch_floats(s) * 4);
  if constexpr (std::is_same_v<T, Bf16>) {
    if (kernel == AttentionKernel::tensor_cores) {
      attention_forward_mma(d_out.as<Bf16>(), d_lse.as<float>(), d_qkv.as<Bf16>(), s, nullptr);
      attention_backward_mma(d_dqkv.as<Bf16>(), d_delta.as<float>(), d_dout.as<Bf16>(), d_qkv.as<Bf16>(),
                             d_out.as<Bf16>(), d_lse.as<float>(), s, nullptr);
    }
  }
  if (kernel == AttentionKernel::cuda_cores) {
    attention_forward_cuda(d_out.as<T>(), d_lse.as<float>(), d_qkv.as<T>(), s, nullptr);
    attention_backward_cuda(d_dqkv.as<T>(), d_delta.as<float>(), d_dout.as<T>(), d_qkv.as<T>(), d_out.as<T>(),
                            d_lse.as<float>(), s, nullptr);
  }
  AttentionResult r;
  r.out = download<T>(d_out, N * C);
  r.lse = download<float>(d_lse, B * H * Tn);
  const auto dqkv = download<T>(d_dqkv, N * 3 * C);
  r.dq.resize(N * C);
  r.dk.resize(N * C);
  r.dv.resize(N * C);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c) {
      r.dq[n * C + c] = dqkv[n * 3 * C + c];
      r.dk[n * C + c] = dqkv[n * 3 * C + C + c];
      r.dv[n * C + c] = dqkv[n * 3 * C + 2 * C + c];
    }
  return r;
}

// The CPU op on the same inputs: the exact result (fp32 with double sums, ≲1e-6 from fp64).
AttentionResult cpu_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                              const std::vector<float>& dout, std::int64_t B, std::int64_t Tn, std::int64_t H,
                              std::int64_t D) {
  const std::int64_t N = B * Tn, C = H * D;
  AttentionResult r;
  r.out.resize(N * C);
  r.lse.resize(B * H * Tn);
  r.dq.resize(N * C);
  r.dk.resize(N * C);
  r.dv.resize(N * C);
  const AttentionDims dims{.B = B, .H = H, .D = D, .Tq = Tn, .Tk = Tn, .kv_batch_stride = 0};
  attention_forward(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), dims);
  attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), q.data(), k.data(), v.data(), r.out.data(),
                     r.lse.data(), dims);
  return r;
}

std::string test_shape(std::int64_t B, std::int64_t T, std::int64_t H, std::int64_t D) {
  return str("B ", B, " T ", T, " H ", H, " D ", D);
}

struct AttentionErrors {
  double out, lse, dq, dk, dv;
};

AttentionErrors errors(const AttentionResult& got, const AttentionResult& ref) {
  return {rel(got.out, ref.out), rel(got.lse, ref.lse), rel(got.dq, ref.dq), rel(got.dk, ref.dk), rel(got.dv, ref.dv)};
}

TEST(GpuAttention, Fp32OnCudaCoresMatchesTheCpu) {
  SLM_REQUIRE_GPU();
  for (auto [B, Tn, H, D] : std::vector<std::array<std::int64_t, 4>>{{1, 1, 1, 8}, {3, 17, 5, 12}, {2, 70, 3, 64}}) {
    const std::int64_t n = B * Tn * H * D;
    const auto q = randn(n, 20), k = randn(n, 21), v = randn(n, 22), dout = randn(n, 23);
    const auto e = errors(run_gpu_attention<float>(AttentionKernel::cuda_cores, q, k, v, dout, B, Tn, H, D),
                          cpu_attention(q, k, v, dout, B, Tn, H, D));
    const std::string shape = test_shape(B, Tn, H, D);
    EXPECT_LT(e.out, 1e-5) << shape;
    EXPECT_LT(e.lse, 1e-6) << shape;
    EXPECT_LT(e.dq, 1e-5) << shape;
    EXPECT_LT(e.dk, 1e-5) << shape;
    EXPECT_LT(e.dv, 1e-5) << shape;
  }
}

// PyTorch's own bf16 errors, measured on the GPU machine (reference/torch_bf16_errors.py).
const std::string kTorchDir = SCRATCHLM_TEST_DATA "/reference/lm-small";
bool have_torch_errors() { return std::filesystem::exists(kTorchDir + "/torch_bf16_errors.json"); }
nlohmann::json torch_errors() { return nlohmann::json::parse(read_file(kTorchDir + "/torch_bf16_errors.json")); }

// bf16 attention against PyTorch's SDPA: the error of each output against the exact result at most
// twice PyTorch's, on the same bf16 inputs, at the tensor-core head dims and ragged T.
TEST(GpuAttention, Bf16WithinTwicePyTorchsError) {
  SLM_REQUIRE_GPU();
  if (!have_torch_errors()) GTEST_SKIP() << "no torch_bf16_errors.json: run reference/torch_bf16_errors.py on the GPU";
  const nlohmann::json torch = torch_errors();
  const SafetensorsFile cases(kTorchDir + "/attention_cases.safetensors");
  for (int c = 0; c < 4; ++c) {
    const std::string p = "case" + std::to_string(c);
    const auto shape = cases.info(p + ".q").shape;   // (B, H, T, D)
    const std::int64_t B = shape[0], H = shape[1], Tn = shape[2], D = shape[3];
    auto load = [&](const char* name) { return bhtd_to_bthd(cases.floats(p + "." + name), B, H, Tn, D); };
    const auto q = load("q"), k = load("k"), v = load("v"), dout = load("dout");
    const AttentionResult ref = cpu_attention(q, k, v, dout, B, Tn, H, D);
    for (AttentionKernel kernel : {AttentionKernel::tensor_cores, AttentionKernel::cuda_cores}) {
      const char* kname = kernel == AttentionKernel::tensor_cores ? "tensor cores" : "cuda cores";
      const auto e = errors(run_gpu_attention<Bf16>(kernel, q, k, v, dout, B, Tn, H, D), ref);
      const std::string where = test_shape(B, Tn, H, D) + ", " + kname;
      std::printf("  %s: out %.2e (torch %.2e)  dq %.2e (%.2e)  dk %.2e (%.2e)  dv %.2e (%.2e)  lse %.1e\n",
                  where.c_str(), e.out, torch[p + ".out"].get<double>(), e.dq, torch[p + ".dq"].get<double>(), e.dk,
                  torch[p + ".dk"].get<double>(), e.dv, torch[p + ".dv"].get<double>(), e.lse);
      EXPECT_LT(e.out, 2 * torch[p + ".out"].get<double>()) << where;
      EXPECT_LT(e.dq, 2 * torch[p + ".dq"].get<double>()) << where;
      EXPECT_LT(e.dk, 2 * torch[p + ".dk"].get<double>()) << where;
      EXPECT_LT(e.dv, 2 * torch[p + ".dv"].get<double>()) << where;
      EXPECT_LT(e.lse, 1e-3) << where;   // fp32 statistics of bf16 scores
    }
  }
}

// Tensor cores at the edges of their tiles: T = 1, a few rows, one past a tile, odd B and H; results
// repeat bit for bit.
TEST(GpuAttention, TensorCoreKernelsAtRaggedShapesAndRepeatably) {
  SLM_REQUIRE_GPU();
  for (std::int64_t D : {32, 64, 128}) {
    ASSERT_TRUE(attention_mma_supported(D));
    for (auto [B, Tn, H] : std::vector<std::array<std::int64_t, 3>>{{1, 1, 1}, {3, 5, 1}, {1, 65, 3}, {2, 129, 1}}) {
      const std::int64_t n = B * Tn * H * D;
      const auto q = round_bf16(randn(n, 30)), k = round_bf16(randn(n, 31)), v = round_bf16(randn(n, 32)),
                 dout = round_bf16(randn(n, 33));
      const AttentionResult ref = cpu_attention(q, k, v, dout, B, Tn, H, D);
      const AttentionResult got = run_gpu_attention<Bf16>(AttentionKernel::tensor_cores, q, k, v, dout, B, Tn, H, D);
      const auto e = errors(got, ref);
      const std::string shape = test_shape(B, Tn, H, D);
      // Outputs stored in bf16 with P (and dS) rounded to bf16 inside: a few times the output rounding.
      EXPECT_LT(e.out, 4 * rounding_error(ref.out) + 1e-6) << shape;
      // At T = 1, dq and dk are exactly zero (dS = dP − rowsum(dO ⊙ O) cancels): an absolute floor.
      const double floor = Tn == 1 ? 1e-3 : 1e-6;
      EXPECT_LT(e.dq, 6 * rounding_error(ref.dq) + floor) << shape;
      EXPECT_LT(e.dk, 6 * rounding_error(ref.dk) + floor) << shape;
      EXPECT_LT(e.dv, 4 * rounding_error(ref.dv) + 1e-6) << shape;
      EXPECT_LT(e.lse, 1e-3) << shape;
      const AttentionResult again = run_gpu_attention<Bf16>(AttentionKernel::tensor_cores, q, k, v, dout, B, Tn, H, D);
      EXPECT_EQ(got.out, again.out) << shape;
      EXPECT_EQ(got.dq, again.dq) << shape;
      EXPECT_EQ(got.dk, again.dk) << shape;
    }
  }
}

// Restores SCRATCHLM_ATTENTION (set or unset) when the test that changes it ends.
struct KeepAttentionVariable {
  const char* saved = std::getenv("SCRATCHLM_ATTENTION");
  const std::string value = saved ? saved : "";
  ~KeepAttentionVariable() {
    if (saved) setenv("SCRATCHLM_ATTENTION", value.c_str(), 1);
    else unsetenv("SCRATCHLM_ATTENTION");
  }
};

// The Hopper forward (wgmma + TMA) against the mma.sync forward on the same inputs, at ragged
// shapes (T = 1, less than a tile, one past 192, several tiles) for both of its head dims. Both
// round P to bf16 for P V and store bf16 outputs, from fp32 sums in different orders (and
// different running maxima): elements a few ulps apart. Bound per element: 2^-5·|mma| + 2^-8 (the
// lab's, which the forward met at 13 shapes on the H200) plus one bf16 ulp of the value, 2^-7·|mma|;
// an indexing or layout error is O(1). lse is fp32 arithmetic on fp32 sums: within 1e-4. Also: the
// entry point attention_forward_mma dispatches to the wgmma kernel with SCRATCHLM_ATTENTION unset
// or "auto" (bit-identical results), and to mma.sync with it "mma". Skips off Hopper (the kernel needs an sm_90 device).
TEST(GpuAttention, WgmmaForwardMatchesMmaSyncAtRaggedShapes) {
  SLM_REQUIRE_GPU();
  if (!attention_wgmma_supported({.B = 1, .T = 1, .H = 1, .D = 64}))
    GTEST_SKIP() << "the wgmma attention forward needs an sm_90 (Hopper) device";
  const KeepAttentionVariable keep;
  for (std::int64_t D : {64, 128})
    for (auto [B, Tn, H] : std::vector<std::array<std::int64_t, 3>>{{1, 1, 1}, {2, 100, 3}, {1, 193, 2}, {2, 700, 1}}) {
      const GpuAttentionShape s{.B = B, .T = Tn, .H = H, .D = D};
      ASSERT_TRUE(attention_wgmma_supported(s));
      const std::int64_t n_qkv = B * Tn * 3 * H * D, n_out = B * Tn * H * D, n_lse = B * H * Tn;
      GpuBuffer d_qkv = upload<Bf16>(randn(n_qkv, 40 + Tn + D));
      auto run = [&](auto forward) {
        GpuBuffer d_out = upload<Bf16>(std::vector<float>(n_out, NAN)), d_lse = upload<float>(std::vector<float>(n_lse, NAN));
        forward(d_out.as<Bf16>(), d_lse.as<float>(), d_qkv.as<Bf16>(), s, nullptr);
        return std::make_pair(download<Bf16>(d_out, n_out), download<float>(d_lse, n_lse));
      };
      const auto [wg_out, wg_lse] = run(attention_forward_wgmma);
      const auto [mma_out, mma_lse] = run(attention_forward_mma_sync);
      const std::string shape = test_shape(B, Tn, H, D);
      std::int64_t far = 0;
      for (std::int64_t i = 0; i < n_out; ++i) {
        const double a = wg_out[i], b = mma_out[i];
        if (!(std::fabs(a - b) <= (std::ldexp(1.0, -5) + std::ldexp(1.0, -7)) * std::fabs(b) + std::ldexp(1.0, -8))) {
          if (far < 5) ADD_FAILURE() << shape << ": out[" << i << "] = " << a << ", mma.sync " << b;
          ++far;
        }
      }
      EXPECT_EQ(far, 0) << shape;
      for (std::int64_t i = 0; i < n_lse; ++i) ASSERT_NEAR(wg_lse[i], mma_lse[i], 1e-4) << shape << " lse " << i;
      setenv("SCRATCHLM_ATTENTION", "auto", 1);
      const auto [auto_out, auto_lse] = run(attention_forward_mma);
      EXPECT_EQ(auto_out, wg_out) << shape << ": SCRATCHLM_ATTENTION=auto runs the wgmma kernel";
      setenv("SCRATCHLM_ATTENTION", "mma", 1);
      const auto [forced_out, forced_lse] = run(attention_forward_mma);
      EXPECT_EQ(forced_out, mma_out) << shape << ": SCRATCHLM_ATTENTION=mma runs mma.sync";
      unsetenv("SCRATCHLM_ATTENTION");
      EXPECT_EQ(run(attention_forward_mma).first, wg_out) << shape << ": unset runs the wgmma kernel";
    }
}

// The Hopper backward (wgmma + TMA, attention_wgmma_bwd.cuh) against the mma.sync backward on the
// same inputs and the same forward outputs (out, lse), at ragged shapes for both of its head dims:
// each gradient's error against the CPU's exact result at most twice mma.sync's (both round P and
// dS to bf16 for their products and store bf16 gradients, from fp32 sums in different orders; the
// lab measured ratios near 1 at 22 shapes on an H200) plus 1e-6 (T = 1: dq and dk are exactly 0,
// so their root-mean-square difference from the CPU's, within 1e-3). Every element is written (poisoned beforehand),
// results repeat bit for bit, and attention_backward_mma dispatches to it unless SCRATCHLM_ATTENTION=mma.
TEST(GpuAttention, WgmmaBackwardMatchesMmaSyncAtRaggedShapes) {
  SLM_REQUIRE_GPU();
  if (!attention_wgmma_supported({.B = 1, .T = 1, .H = 1, .D = 64}))
    GTEST_SKIP() << "the wgmma attention backward needs an sm_90 (Hopper) device";
  const KeepAttentionVariable keep;
  for (std::int64_t D : {64, 128})
    for (auto [B, Tn, H] :
         std::vector<std::array<std::int64_t, 3>>{{1, 1, 1}, {2, 100, 3}, {1, 193, 2}, {2, 700, 1}, {1, 1000, 2}}) {
      const GpuAttentionShape s{.B = B, .T = Tn, .H = H, .D = D};
      ASSERT_TRUE(attention_wgmma_supported(s));
      const std::int64_t n = B * Tn * H * D, C = H * D, N = B * Tn;
      const auto q = round_bf16(randn(n, 50 + Tn)), k = round_bf16(randn(n, 51 + Tn)), v = round_bf16(randn(n, 52 + Tn)),
                 dout = round_bf16(randn(n, 53 + Tn));
      const AttentionResult ref = cpu_attention(q, k, v, dout, B, Tn, H, D);
      std::vector<float> qkv(N * 3 * C);
      for (std::int64_t t = 0; t < N; ++t)
        for (std::int64_t c = 0; c < C; ++c) {
          qkv[t * 3 * C + c] = q[t * C + c];
          qkv[t * 3 * C + C + c] = k[t * C + c];
          qkv[t * 3 * C + 2 * C + c] = v[t * C + c];
        }
      GpuBuffer d_qkv = upload<Bf16>(qkv), d_dout = upload<Bf16>(dout), d_out(N * C * 2), d_lse(B * H * Tn * 4);
      attention_forward_mma_sync(d_out.as<Bf16>(), d_lse.as<float>(), d_qkv.as<Bf16>(), s, nullptr);
      auto run = [&](auto backward) {
        GpuBuffer d_dqkv = upload<Bf16>(std::vector<float>(N * 3 * C, NAN)),
                  d_scratch = upload<float>(std::vector<float>(attention_backward_scratch_floats(s), NAN));
        backward(d_dqkv.as<Bf16>(), d_scratch.as<float>(), d_dout.as<Bf16>(), d_qkv.as<Bf16>(), d_out.as<Bf16>(),
                 d_lse.as<float>(), s, nullptr);
        return download<Bf16>(d_dqkv, N * 3 * C);
      };
      // the error of each part (q, k, v) of dqkv against the CPU's gradient
      auto part_errors = [&](const std::vector<float>& dqkv) {
        std::array<std::vector<float>, 3> parts;
        for (auto& p : parts) p.resize(N * C);
        for (std::int64_t t = 0; t < N; ++t)
          for (int p = 0; p < 3; ++p)
            for (std::int64_t c = 0; c < C; ++c) parts[p][t * C + c] = dqkv[t * 3 * C + p * C + c];
        // T = 1: dq and dk are exactly 0 (dS = P (dP − delta) cancels), and the CPU's are rounding
        // residue; compare them absolutely (root mean square of the difference)
        auto err = [&](const std::vector<float>& got, const std::vector<float>& want) {
          if (Tn > 1) return rel(got, want);
          double sum = 0;
          for (std::size_t i = 0; i < got.size(); ++i) sum += (got[i] - want[i]) * static_cast<double>(got[i] - want[i]);
          return std::sqrt(sum / static_cast<double>(got.size()));
        };
        return std::array<double, 3>{err(parts[0], ref.dq), err(parts[1], ref.dk), rel(parts[2], ref.dv)};
      };
      const auto wg = run(attention_backward_wgmma);
      const auto mma = run(attention_backward_mma_sync);
      const auto wg_err = part_errors(wg), mma_err = part_errors(mma);
      const std::string shape = test_shape(B, Tn, H, D);
      std::printf("  %s: wgmma dq %.2e dk %.2e dv %.2e | mma.sync dq %.2e dk %.2e dv %.2e\n", shape.c_str(), wg_err[0],
                  wg_err[1], wg_err[2], mma_err[0], mma_err[1], mma_err[2]);
      for (int p = 0; p < 3; ++p) {
        if (Tn == 1 && p < 2) EXPECT_LE(wg_err[p], 1e-3) << shape << " d" << "qkv"[p];
        else EXPECT_LE(wg_err[p], 2 * mma_err[p] + 1e-6) << shape << " d" << "qkv"[p];
      }
      EXPECT_EQ(run(attention_backward_wgmma), wg) << shape << ": results repeat bit for bit";
      unsetenv("SCRATCHLM_ATTENTION");
      EXPECT_EQ(run(attention_backward_mma), wg) << shape << ": unset runs the wgmma kernel";
      setenv("SCRATCHLM_ATTENTION", "mma", 1);
      EXPECT_EQ(run(attention_backward_mma), mma) << shape << ": SCRATCHLM_ATTENTION=mma runs mma.sync";
      unsetenv("SCRATCHLM_ATTENTION");
    }
}

// A wrong SCRATCHLM_ATTENTION is an error naming the variable, before any CUDA call (no GPU needed).
TEST(GpuAttention, BadAttentionKernelVariableIsAnError) {
  const KeepAttentionVariable keep;
  setenv("SCRATCHLM_ATTENTION", "flash9", 1);
  std::string message;
  try {
    attention_forward_mma(nullptr, nullptr, nullptr, {.B = 1, .T = 4, .H = 1, .D = 64}, nullptr);
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("SCRATCHLM_ATTENTION"), std::string::npos) << message;
}

// ---- attention variants: grouped-query heads, sliding windows, soft-capping -----------------------
// Checked against a double-precision reference written here as plain loops over the visible band
// (independent of the CPU op). fp32 (CUDA cores): within 1e-5 of it, as every fp32 op. bf16: the
// reference also runs once with the roundings the tensor-core kernels make — inputs bf16, P rounded
// to bf16 before P V and Pᵀ dO, dS before dS K and dSᵀ Q, delta from the bf16 output, every output
// rounded to bf16 — and the kernels' error against the exact result must be within twice that
// emulation's own error (it is the error any kernel rounding at those places makes; where ours
// differs — the running max, the order of fp32 sums, exp2 and tanh approximations of ~1e-7 — it
// is far smaller). The CUDA cores in bf16 round only the outputs, so the same bound holds there.

enum class Rounding { exact, like_the_mma_kernels };

struct QkvResult {
  std::vector<float> out, lse, dqkv;   // (N, H·D), (B, H, T), (N, H·D + 2·Hkv·D)
};

std::string variant_name(const GpuAttentionShape& s) {
  return str("B ", s.B, " T ", s.T, " H ", s.H, " Hkv ", s.kv_heads(), " D ", s.D, " window ", s.window, " softcap ",
             s.softcap);
}

QkvResult reference_attention(const std::vector<float>& qkv, const std::vector<float>& dout,
                              const GpuAttentionShape& s, Rounding rounding) {
  const std::int64_t B = s.B, T = s.T, H = s.H, Hkv = s.kv_heads(), D = s.D, row = s.qkv_row(), group = H / Hkv;
  const std::int64_t W = s.window == 0 ? T : s.window;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D)), c = s.softcap;
  const bool bf = rounding == Rounding::like_the_mma_kernels;
  auto rnd = [&](double x) { return bf ? static_cast<double>(to_float(to_bf16(static_cast<float>(x)))) : x; };
  QkvResult r;
  r.out.assign(static_cast<std::size_t>(B * T * H * D), 0.0f);
  r.lse.assign(static_cast<std::size_t>(B * H * T), 0.0f);
  r.dqkv.assign(static_cast<std::size_t>(B * T * row), 0.0f);
  std::vector<double> capped(static_cast<std::size_t>(T * T)), lse(static_cast<std::size_t>(T));
  std::vector<double> dq(static_cast<std::size_t>(D)), o(static_cast<std::size_t>(D));
  for (std::int64_t b = 0; b < B; ++b) {
    std::vector<double> dk(static_cast<std::size_t>(T * Hkv * D), 0.0), dv(dk.size(), 0.0);   // (T, Hkv, D)
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t kv = h / group;
      auto q = [&](std::int64_t i, std::int64_t d) { return static_cast<double>(qkv[(b * T + i) * row + h * D + d]); };
      auto k = [&](std::int64_t j, std::int64_t d) {
        return static_cast<double>(qkv[(b * T + j) * row + (H + kv) * D + d]);
      };
      auto v = [&](std::int64_t j, std::int64_t d) {
        return static_cast<double>(qkv[(b * T + j) * row + (H + Hkv + kv) * D + d]);
      };
      auto dO = [&](std::int64_t i, std::int64_t d) { return static_cast<double>(dout[(b * T + i) * H * D + h * D + d]); };
      float* out = r.out.data() + b * T * H * D + h * D;   // row i at out + i·H·D
      for (std::int64_t i = 0; i < T; ++i) {
        const std::int64_t j0 = std::max<std::int64_t>(0, i - W + 1);
        double m = -INFINITY;
        for (std::int64_t j = j0; j <= i; ++j) {
          double z = 0.0;
          for (std::int64_t d = 0; d < D; ++d) z += q(i, d) * k(j, d);
          z *= scale;
          if (c > 0) z = c * std::tanh(z / c);   // capped before the softmax
          capped[i * T + j] = z;
          m = std::max(m, z);
        }
        double l = 0.0;
        std::fill(o.begin(), o.end(), 0.0);
        for (std::int64_t j = j0; j <= i; ++j) {
          const double p = std::exp(capped[i * T + j] - m);
          l += p;
          for (std::int64_t d = 0; d < D; ++d) o[d] += rnd(p) * v(j, d);
        }
        lse[i] = m + std::log(l);
        r.lse[(b * H + h) * T + i] = static_cast<float>(lse[i]);
        for (std::int64_t d = 0; d < D; ++d) out[i * H * D + d] = static_cast<float>(rnd(o[d] / l));
      }
      for (std::int64_t i = 0; i < T; ++i) {
        double delta = 0.0;   // rowsum(dO ⊙ O), of O as stored
        for (std::int64_t d = 0; d < D; ++d) delta += dO(i, d) * out[i * H * D + d];
        std::fill(dq.begin(), dq.end(), 0.0);
        for (std::int64_t j = std::max<std::int64_t>(0, i - W + 1); j <= i; ++j) {
          const double p = std::exp(capped[i * T + j] - lse[i]);
          double dp = 0.0;
          for (std::int64_t d = 0; d < D; ++d) dp += dO(i, d) * v(j, d);
          const double t = c > 0 ? capped[i * T + j] / c : 0.0;
          const double ds = rnd(p * (dp - delta) * (1.0 - t * t));   // through the cap: 1 − tanh²
          for (std::int64_t d = 0; d < D; ++d) {
            dq[d] += ds * k(j, d);
            dk[(j * Hkv + kv) * D + d] += ds * q(i, d);
            dv[(j * Hkv + kv) * D + d] += rnd(p) * dO(i, d);
          }
        }
        for (std::int64_t d = 0; d < D; ++d) r.dqkv[(b * T + i) * row + h * D + d] = static_cast<float>(rnd(dq[d] * scale));
      }
    }
    for (std::int64_t j = 0; j < T; ++j)
      for (std::int64_t kv = 0; kv < Hkv; ++kv)
        for (std::int64_t d = 0; d < D; ++d) {
          r.dqkv[(b * T + j) * row + (H + kv) * D + d] = static_cast<float>(rnd(dk[(j * Hkv + kv) * D + d] * scale));
          r.dqkv[(b * T + j) * row + (H + Hkv + kv) * D + d] = static_cast<float>(rnd(dv[(j * Hkv + kv) * D + d]));
        }
  }
  return r;
}

// Random inputs as stored in T: qkv (N, H·D + 2·Hkv·D) with q and k of scale 2 (scores of spread ~2,
// so that a cap of 2.5 bends many of them), v and dout of scale 1.
template <typename T>
std::pair<std::vector<float>, std::vector<float>> variant_inputs(const GpuAttentionShape& s, std::uint32_t seed) {
  const std::int64_t N = s.B * s.T, row = s.qkv_row();
  std::vector<float> qkv = randn(static_cast<std::size_t>(N * row), seed);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < (s.H + s.kv_heads()) * s.D; ++c) qkv[n * row + c] *= 2.0f;
  return {as_stored<T>(qkv), as_stored<T>(randn(static_cast<std::size_t>(N * s.H * s.D), seed + 1))};
}

// The GPU op on qkv and dout (as floats, uploaded in T), outputs poisoned with NaN beforehand.
template <typename T>
QkvResult run_variant(AttentionKernel kernel, const std::vector<float>& qkv, const std::vector<float>& dout,
                      const GpuAttentionShape& s) {
  const std::int64_t N = s.B * s.T, C = s.H * s.D, BHT = s.B * s.H * s.T;
  GpuBuffer d_qkv = upload<T>(qkv), d_dout = upload<T>(dout);
  GpuBuffer d_out = upload<T>(std::vector<float>(N * C, NAN)), d_lse = upload<float>(std::vector<float>(BHT, NAN));
  GpuBuffer d_dqkv = upload<T>(std::vector<float>(qkv.size(), NAN)), d_delta = upload<float>(std::vector<float>(attention_backward_scratch_floats(s), NAN));
  if (kernel == AttentionKernel::tensor_cores) {
    if constexpr (std::is_same_v<T, Bf16>) {
      attention_forward_mma(d_out.as<Bf16>(), d_lse.as<float>(), d_qkv.as<Bf16>(), s, nullptr);
      attention_backward_mma(d_dqkv.as<Bf16>(), d_delta.as<float>(), d_dout.as<Bf16>(), d_qkv.as<Bf16>(),
                             d_out.as<Bf16>(), d_lse.as<float>(), s, nullptr);
    } else {
      ADD_FAILURE() << "the tensor-core kernels are bf16 only";
    }
  } else {
    attention_forward_cuda(d_out.as<T>(), d_lse.as<float>(), d_qkv.as<T>(), s, nullptr);
    attention_backward_cuda(d_dqkv.as<T>(), d_delta.as<float>(), d_dout.as<T>(), d_qkv.as<T>(), d_out.as<T>(),
                            d_lse.as<float>(), s, nullptr);
  }
  return {download<T>(d_out, N * C), download<float>(d_lse, BHT), download<T>(d_dqkv, qkv.size())};
}

// The q, k or v columns of a (N, H·D + 2·Hkv·D) buffer.
enum class QkvPart { q, k, v };
std::vector<float> part_of(const std::vector<float>& qkv, const GpuAttentionShape& s, QkvPart part) {
  const std::int64_t row = s.qkv_row(), N = static_cast<std::int64_t>(qkv.size()) / row;
  const std::int64_t first = part == QkvPart::q ? 0 : part == QkvPart::k ? s.H * s.D : (s.H + s.kv_heads()) * s.D;
  const std::int64_t width = part == QkvPart::q ? s.H * s.D : s.kv_heads() * s.D;
  std::vector<float> r(static_cast<std::size_t>(N * width));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < width; ++c) r[n * width + c] = qkv[n * row + first + c];
  return r;
}

struct VariantErrors {
  double out, lse, dq, dk, dv;
};
VariantErrors variant_errors(const QkvResult& got, const QkvResult& ref, const GpuAttentionShape& s) {
  return {rel(got.out, ref.out), rel(got.lse, ref.lse),
          rel(part_of(got.dqkv, s, QkvPart::q), part_of(ref.dqkv, s, QkvPart::q)),
          rel(part_of(got.dqkv, s, QkvPart::k), part_of(ref.dqkv, s, QkvPart::k)),
          rel(part_of(got.dqkv, s, QkvPart::v), part_of(ref.dqkv, s, QkvPart::v))};
}

// The cases: every GQA ratio of 16 heads (1, 2, 4, 16), windows of 1, under a tile (17), not a
// multiple of a tile (100), one tile (64), T and more, soft-capping on and off, ragged T.
std::vector<GpuAttentionShape> variant_cases(std::int64_t D) {
  return {
      {.B = 2, .T = 130, .H = 4, .D = D},                                         // the default
      {.B = 1, .T = 200, .H = 16, .D = D, .Hkv = 8, .window = 1},                 // ratio 2, W = 1
      {.B = 2, .T = 77, .H = 8, .D = D, .Hkv = 2, .window = 17, .softcap = 2.5f},  // ratio 4, W < tile
      {.B = 1, .T = 257, .H = 16, .D = D, .Hkv = 1, .window = 100},               // multi-query, W ragged
      {.B = 1, .T = 65, .H = 2, .D = D, .window = 65, .softcap = 2.5f},           // W = T
      {.B = 1, .T = 40, .H = 2, .D = D, .Hkv = 1, .window = 1000},                // W > T
      {.B = 1, .T = 300, .H = 3, .D = D, .window = 64, .softcap = 2.5f},          // W one tile, capped
      {.B = 2, .T = 190, .H = 16, .D = D, .Hkv = 4, .softcap = 2.5f},             // ratio 4, capped, full
      {.B = 3, .T = 1, .H = 2, .D = D, .Hkv = 1, .window = 5, .softcap = 2.5f},   // T = 1
  };
}

// bf16 outputs against the exact reference, within twice the emulated kernels' error; an output
// that is exactly zero (dq and dk when every query sees only itself: W = 1 or T = 1) gets an
// absolute floor on its RMS instead, for the fp32 cancellation of dP − delta.
void expect_bf16_variant(const QkvResult& got, const QkvResult& exact, const QkvResult& emulated,
                         const GpuAttentionShape& s, const std::string& where) {
  const VariantErrors e = variant_errors(got, exact, s), b = variant_errors(emulated, exact, s);
  std::printf("  %s: out %.2e (emulated %.2e)  dq %.2e (%.2e)  dk %.2e (%.2e)  dv %.2e (%.2e)  lse %.1e\n",
              where.c_str(), e.out, b.out, e.dq, b.dq, e.dk, b.dk, e.dv, b.dv, e.lse);
  const bool zero_dqdk = s.T == 1 || s.window == 1;
  const double floor = zero_dqdk ? 1e-4 : 1e-6;
  EXPECT_LT(e.out, 2 * b.out + 1e-6) << where;
  EXPECT_LT(e.dq, 2 * b.dq + floor) << where;
  EXPECT_LT(e.dk, 2 * b.dk + floor) << where;
  EXPECT_LT(e.dv, 2 * b.dv + 1e-6) << where;
  // lse is an fp32 statistic of exact products of bf16 inputs: fp32 sums of ≤ T terms.
  EXPECT_LT(e.lse, 1e-5) << where;
}

TEST(GpuAttentionVariants, ShapeErrorsNameTheField) {
  // Runs without a GPU: the checks come before any CUDA call.
  const auto message = [](const GpuAttentionShape& s) {
    try {
      check_attention_shape(s, "op");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(message({.B = 1, .T = 8, .H = 4, .D = 32, .Hkv = 2, .window = 3, .softcap = 1.0f}), "");
  EXPECT_NE(message({.B = 1, .T = 8, .H = 4, .D = 32, .Hkv = 3}).find("Hkv = 3"), std::string::npos);
  EXPECT_NE(message({.B = 1, .T = 8, .H = 4, .D = 32, .Hkv = -1}).find("Hkv"), std::string::npos);
  EXPECT_NE(message({.B = 1, .T = 8, .H = 4, .D = 32, .window = -2}).find("window = -2"), std::string::npos);
  EXPECT_NE(message({.B = 1, .T = 8, .H = 4, .D = 32, .softcap = -1.0f}).find("softcap"), std::string::npos);
  EXPECT_NE(message({.B = 1, .T = 8, .H = 4, .D = 32, .softcap = NAN}).find("softcap"), std::string::npos);
  EXPECT_NE(message({.B = 0, .T = 8, .H = 4, .D = 32}).find("shape"), std::string::npos);
  // The band's pairs: T(T+1)/2 for full attention, W(W+1)/2 + (T − W)·W with a window.
  EXPECT_EQ(attention_visible_pairs({.B = 2, .T = 10, .H = 3, .D = 8}), 6 * 55.0);
  EXPECT_EQ(attention_visible_pairs({.B = 1, .T = 10, .H = 1, .D = 8, .window = 3}), 6.0 + 7 * 3);
  EXPECT_EQ(attention_visible_pairs({.B = 1, .T = 10, .H = 1, .D = 8, .window = 10}), 55.0);
}

// The reference itself, on the CPU (no GPU needed): the CPU op's result in the default case, and
// its backward against central finite differences of its forward with every variant on.
TEST(GpuAttentionVariants, TheReferenceMatchesTheCpuOpAndItsFiniteDifferences) {
  {
    const GpuAttentionShape s{.B = 2, .T = 19, .H = 3, .D = 8};
    const auto [qkv, dout] = variant_inputs<float>(s, 90);
    const QkvResult r = reference_attention(qkv, dout, s, Rounding::exact);
    const AttentionResult cpu = cpu_attention(part_of(qkv, s, QkvPart::q), part_of(qkv, s, QkvPart::k),
                                              part_of(qkv, s, QkvPart::v), dout, s.B, s.T, s.H, s.D);
    EXPECT_LT(rel(r.out, cpu.out), 1e-6);
    EXPECT_LT(rel(r.lse, cpu.lse), 1e-6);
    EXPECT_LT(rel(part_of(r.dqkv, s, QkvPart::q), cpu.dq), 1e-5);
    EXPECT_LT(rel(part_of(r.dqkv, s, QkvPart::k), cpu.dk), 1e-5);
    EXPECT_LT(rel(part_of(r.dqkv, s, QkvPart::v), cpu.dv), 1e-5);
  }
  // loss = Σ out ⊙ dout; its gradient is dqkv. Steps of 1e-2 on inputs of scale 1-2: the central
  // difference's truncation error is ~h² = 1e-4 of the curvature, and the float outputs add
  // ~1e-7·|loss| / h ≈ 1e-5; a missing term (the cap's slope, a group's head, a window edge) is O(1).
  const GpuAttentionShape s{.B = 1, .T = 9, .H = 4, .D = 4, .Hkv = 2, .window = 3, .softcap = 1.5f};
  auto [qkv, dout] = variant_inputs<float>(s, 91);
  const QkvResult r = reference_attention(qkv, dout, s, Rounding::exact);
  auto loss = [&](const std::vector<float>& x) {
    const QkvResult y = reference_attention(x, dout, s, Rounding::exact);
    double l = 0.0;
    for (std::size_t i = 0; i < y.out.size(); ++i) l += static_cast<double>(y.out[i]) * dout[i];
    return l;
  };
  double worst = 0.0;
  for (std::size_t i = 0; i < qkv.size(); ++i) {
    std::vector<float> plus = qkv, minus = qkv;
    plus[i] += 1e-2f;
    minus[i] -= 1e-2f;
    const double fd = (loss(plus) - loss(minus)) / (static_cast<double>(plus[i]) - minus[i]);
    worst = std::max(worst, std::abs(fd - r.dqkv[i]) / (1.0 + std::abs(fd)));
  }
  EXPECT_LT(worst, 2e-3);
}

TEST(GpuAttentionVariants, Fp32OnCudaCoresMatchesTheDoubleReference) {
  SLM_REQUIRE_GPU();
  for (std::int64_t D : {12, 40, 64}) {
    for (GpuAttentionShape s : variant_cases(D)) {
      s.T = std::min<std::int64_t>(s.T, 90);   // CUDA cores: smaller T keeps the test quick
      const auto [qkv, dout] = variant_inputs<float>(s, 50);
      const QkvResult got = run_variant<float>(AttentionKernel::cuda_cores, qkv, dout, s);
      const VariantErrors e = variant_errors(got, reference_attention(qkv, dout, s, Rounding::exact), s);
      const std::string where = variant_name(s);
      EXPECT_LT(e.out, 1e-5) << where;
      EXPECT_LT(e.lse, 1e-6) << where;
      EXPECT_LT(e.dq, 1e-5) << where;
      EXPECT_LT(e.dk, 1e-5) << where;
      EXPECT_LT(e.dv, 1e-5) << where;
    }
  }
}

TEST(GpuAttentionVariants, Bf16OnTensorCoresWithinTwiceTheEmulatedRoundingAndRepeatably) {
  SLM_REQUIRE_GPU();
  for (std::int64_t D : {32, 64, 128}) {
    ASSERT_TRUE(attention_mma_supported(D));
    for (const GpuAttentionShape& s : variant_cases(D)) {
      const auto [qkv, dout] = variant_inputs<Bf16>(s, 60);
      const QkvResult got = run_variant<Bf16>(AttentionKernel::tensor_cores, qkv, dout, s);
      const std::string where = variant_name(s) + ", tensor cores";
      expect_bf16_variant(got, reference_attention(qkv, dout, s, Rounding::exact),
                          reference_attention(qkv, dout, s, Rounding::like_the_mma_kernels), s, where);
      // Bit for bit again (no atomics; dK/dV's group sum in head order).
      const QkvResult again = run_variant<Bf16>(AttentionKernel::tensor_cores, qkv, dout, s);
      EXPECT_EQ(got.out, again.out) << where;
      EXPECT_EQ(got.lse, again.lse) << where;
      EXPECT_EQ(got.dqkv, again.dqkv) << where;
    }
  }
}

TEST(GpuAttentionVariants, Bf16OnCudaCoresAtOddHeadDims) {
  SLM_REQUIRE_GPU();
  for (std::int64_t D : {48, 20}) {
    for (GpuAttentionShape s : variant_cases(D)) {
      s.T = std::min<std::int64_t>(s.T, 90);
      const auto [qkv, dout] = variant_inputs<Bf16>(s, 70);
      const QkvResult got = run_variant<Bf16>(AttentionKernel::cuda_cores, qkv, dout, s);
      expect_bf16_variant(got, reference_attention(qkv, dout, s, Rounding::exact),
                          reference_attention(qkv, dout, s, Rounding::like_the_mma_kernels), s,
                          variant_name(s) + ", cuda cores");
      const QkvResult again = run_variant<Bf16>(AttentionKernel::cuda_cores, qkv, dout, s);
      EXPECT_EQ(got.dqkv, again.dqkv) << variant_name(s);
    }
  }
}

// Properties that need no reference: grouped-query attention is multi-head attention over kv heads
// repeated for their groups (out, lse and dq the same bit for bit, dk and dv the sums over each
// group); a window of 1 gives out = v of the query's own token exactly (P = 1) and a window of T
// or more is full attention bit for bit.
TEST(GpuAttentionVariants, GroupsAreRepeatedHeadsAndWindowsOfOneAndOfTAreExact) {
  SLM_REQUIRE_GPU();
  for (AttentionKernel kernel : {AttentionKernel::tensor_cores, AttentionKernel::cuda_cores}) {
    const char* kname = kernel == AttentionKernel::tensor_cores ? "tensor cores" : "cuda cores";
    for (const float softcap : {0.0f, 2.5f}) {
      const GpuAttentionShape gqa{.B = 2, .T = 150, .H = 8, .D = 64, .Hkv = 2, .window = 40, .softcap = softcap};
      GpuAttentionShape mha = gqa;
      mha.Hkv = 0;
      const std::int64_t N = gqa.B * gqa.T, D = gqa.D, H = gqa.H, Hkv = gqa.Hkv, group = H / Hkv;
      const auto [qkv, dout] = variant_inputs<Bf16>(gqa, 80);
      std::vector<float> qkv_mha(static_cast<std::size_t>(N * mha.qkv_row()));
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t h = 0; h < H; ++h)
          for (std::int64_t d = 0; d < D; ++d) {
            qkv_mha[n * mha.qkv_row() + h * D + d] = qkv[n * gqa.qkv_row() + h * D + d];
            qkv_mha[n * mha.qkv_row() + (H + h) * D + d] = qkv[n * gqa.qkv_row() + (H + h / group) * D + d];
            qkv_mha[n * mha.qkv_row() + (2 * H + h) * D + d] = qkv[n * gqa.qkv_row() + (H + Hkv + h / group) * D + d];
          }
      const std::string where = str(kname, " softcap ", softcap);
      const QkvResult g = run_variant<Bf16>(kernel, qkv, dout, gqa), m = run_variant<Bf16>(kernel, qkv_mha, dout, mha);
      EXPECT_EQ(g.out, m.out) << where;
      EXPECT_EQ(g.lse, m.lse) << where;
      EXPECT_EQ(part_of(g.dqkv, gqa, QkvPart::q), part_of(m.dqkv, mha, QkvPart::q)) << where;
      // dk, dv: the group sums of the repeated heads' (each rounded to bf16 before this sum, so
      // within a few bf16 roundings of the sum: 4 · 2^-9 relative).
      for (QkvPart part : {QkvPart::k, QkvPart::v}) {
        const auto got = part_of(g.dqkv, gqa, part), rep = part_of(m.dqkv, mha, part);
        std::vector<float> sum(got.size(), 0.0f);
        for (std::int64_t n = 0; n < N; ++n)
          for (std::int64_t h = 0; h < H; ++h)
            for (std::int64_t d = 0; d < D; ++d) sum[(n * Hkv + h / group) * D + d] += rep[(n * H + h) * D + d];
        EXPECT_LT(rel(got, sum), 4.0 / 512) << where << (part == QkvPart::k ? " dk" : " dv");
      }

      GpuAttentionShape one = gqa;
      one.window = 1;
      std::vector<float> own_v(static_cast<std::size_t>(N * H * D));   // (N, H, D): v of each head's kv head
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t h = 0; h < H; ++h)
          for (std::int64_t d = 0; d < D; ++d)
            own_v[(n * H + h) * D + d] = qkv[n * gqa.qkv_row() + (H + Hkv + h / group) * D + d];
      EXPECT_EQ(run_variant<Bf16>(kernel, qkv, dout, one).out, own_v) << where;

      GpuAttentionShape full = gqa, wide = gqa;
      full.window = 0;
      wide.window = gqa.T;
      const QkvResult f = run_variant<Bf16>(kernel, qkv, dout, full), w = run_variant<Bf16>(kernel, qkv, dout, wide);
      EXPECT_EQ(f.out, w.out) << where;
      EXPECT_EQ(f.dqkv, w.dqkv) << where;
    }
  }
}

// ---- the optimizer ----------------------------------------------------------------------------------

TEST(GpuOptimizer, ClipAndAdamWMatchTheCpuAndSkipNonFiniteSteps) {
  SLM_REQUIRE_GPU();
  const ModelConfig c{.vocab_size = 37, .context_length = 8, .d_model = 16, .num_layers = 2, .num_heads = 2,
                      .d_ff = 24, .rope_theta = 10000.0};
  const ParamLayout layout = param_layout(c);
  const std::int64_t P = layout.total;
  AdamWOptions adamw;
  adamw.decay_norm_gains = false;
  const GpuOptimizerOptions opt{.lr_max = 1e-2, .lr_min = 1e-3, .warmup = 2, .cycle = 10, .adamw = adamw, .clip = 1.0};
  std::vector<float> params = randn(P, 40), m(P, 0.0f), v(P, 0.0f);
  AdamWState cpu_state(P);
  std::vector<float> cpu_params = params;
  GpuBuffer d_p = upload<float>(params), d_m = upload<float>(m), d_v = upload<float>(v), d_g(P * 4),
            d_copy(P * 2), d_scratch(kOptimizerScratch * 8), d_stats(sizeof(GpuStepStats)),
            d_index(sizeof(GpuStepIndex));
  const auto chunks = adamw_chunks(layout, adamw);
  GpuBuffer d_chunks(static_cast<std::int64_t>(chunks.size() * sizeof(AdamWChunk)));
  copy_to_gpu(d_chunks.data(), chunks.data(), d_chunks.bytes());
  for (std::int64_t step = 0; step < 4; ++step) {
    std::vector<float> g = randn(P, 41 + static_cast<std::uint32_t>(step), step == 1 ? 0.001f : 0.1f);   // step 1: no clipping
    copy_to_gpu(d_g.data(), g.data(), P * 4);
    const GpuStepIndex index{.step = step, .adam_step = step};
    copy_to_gpu(d_index.data(), &index, sizeof index);
    step_begin_cuda(d_stats.as<GpuStepStats>(), nullptr);
    optimizer_step_cuda<Bf16>(d_p.as<float>(), d_copy.as<Bf16>(), d_g.as<float>(), d_m.as<float>(), d_v.as<float>(), P,
                              d_chunks.as<AdamWChunk>(), static_cast<std::int64_t>(chunks.size()),
                              d_scratch.as<double>(), d_stats.as<GpuStepStats>(), d_index.as<GpuStepIndex>(), opt,
                              nullptr);
    GpuStepStats stats;
    copy_from_gpu(&stats, d_stats.data(), sizeof stats);
    const double lr = cosine_lr(step, opt.lr_max, opt.lr_min, opt.warmup, opt.cycle);
    const double norm = clip_grad_norm(g.data(), P, opt.clip);
    adamw_step(cpu_params.data(), g.data(), cpu_state, layout, lr, adamw);
    EXPECT_NEAR(stats.grad_norm, norm, 1e-12 * norm) << "step " << step;
    EXPECT_DOUBLE_EQ(stats.lr, lr) << "step " << step;
    EXPECT_EQ(stats.skipped, 0);
    EXPECT_LT(rel(download<float>(d_p, P), cpu_params), 1e-6) << "step " << step;
    EXPECT_LT(rel(download<Bf16>(d_copy, P), cpu_params), 2 * rounding_error(cpu_params)) << "step " << step;
  }
  EXPECT_LT(rel(download<float>(d_m, P), cpu_state.m), 1e-6);
  EXPECT_LT(rel(download<float>(d_v, P), cpu_state.v), 1e-6);
  // A NaN gradient: the step is skipped and nothing changes.
  const auto before = download<float>(d_p, P);
  std::vector<float> g(P, 0.1f);
  g[5] = NAN;
  copy_to_gpu(d_g.data(), g.data(), P * 4);
  step_begin_cuda(d_stats.as<GpuStepStats>(), nullptr);
  optimizer_step_cuda<Bf16>(d_p.as<float>(), d_copy.as<Bf16>(), d_g.as<float>(), d_m.as<float>(), d_v.as<float>(), P,
                            d_chunks.as<AdamWChunk>(), static_cast<std::int64_t>(chunks.size()), d_scratch.as<double>(),
                            d_stats.as<GpuStepStats>(), d_index.as<GpuStepIndex>(), opt, nullptr);
  GpuStepStats stats;
  copy_from_gpu(&stats, d_stats.data(), sizeof stats);
  EXPECT_EQ(stats.skipped, 1);
  EXPECT_EQ(download<float>(d_p, P), before);
}

}  // namespace
}  // namespace scratchlm

#endif  // SCRATCHLM_CUDA
