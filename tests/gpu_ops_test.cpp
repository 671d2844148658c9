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

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
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

using test::download;
using test::randn;
using test::round_bf16;
using test::rounding_error;
using test::upload;

// ‖a − ref‖ / ‖ref‖ (test_util.h; the RMS of a where ref is exactly zero, as dq and dk at T = 1).
double rel(const std::vector<float>& a, const std::vector<float>& ref) { return test::rel_error(a, ref); }

// What the GPU op reads: the input itself in fp32, its bf16 rounding in bf16.
template <typename T>
std::vector<float> as_stored(const std::vector<float>& v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return round_bf16(v);
}

// The bound for an output stored in T, given the exact reference.
template <typename T>
double bound(const std::vector<float>& ref, double fp32_bound = 1e-5) {
  if constexpr (std::is_same_v<T, float>) return fp32_bound;
  else return 2.0 * rounding_error(ref) + 1e-6;
}

template <typename T> void rmsnorm_case(std::int64_t C);
void embedding_case(std::int64_t C);
template <typename T> void rope_case(std::int64_t D);
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
  for (std::int64_t D : {16, 12}) rope_case<TypeParam>(D);
}

template <typename T>
void rope_case(std::int64_t D) {
  SCOPED_TRACE(str("D = ", D));
  const std::int64_t B = 3, Tn = 19, H = 5, C = H * D, N = B * Tn;
  const auto qkv = as_stored<T>(randn(N * 3 * C, 5));
  const RopeTable table = make_rope_table(10000.0, D, Tn);
  GpuBuffer d_cos = upload<float>(table.cos), d_sin = upload<float>(table.sin), d_qkv = upload<T>(qkv);
  rope_qk_cuda(d_qkv.as<T>(), d_cos.as<float>(), d_sin.as<float>(), B, Tn, H, D, RopeDirection::forward, nullptr);
  const auto got = download<T>(d_qkv, N * 3 * C);
  std::vector<std::int32_t> pos(Tn);
  for (std::int64_t t = 0; t < Tn; ++t) pos[t] = static_cast<std::int32_t>(t);
  for (int part = 0; part < 3; ++part) {
    std::vector<float> in(N * C), ref(N * C), mine(N * C);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t c = 0; c < C; ++c) {
        in[n * C + c] = qkv[n * 3 * C + part * C + c];
        mine[n * C + c] = got[n * 3 * C + part * C + c];
      }
    if (part < 2) rope_forward(ref.data(), in.data(), pos.data(), table, B, Tn, H, D);
    else ref = in;   // v is not rotated
    EXPECT_LT(rel(mine, ref), part < 2 ? bound<T>(ref) : 0.0 + 1e-12) << "part " << part;
  }
  // The inverse rotation is RoPE's backward: compare with the CPU's rope_backward on the same input.
  GpuBuffer d_back = upload<T>(qkv);
  rope_qk_cuda(d_back.as<T>(), d_cos.as<float>(), d_sin.as<float>(), B, Tn, H, D, RopeDirection::inverse, nullptr);
  const auto back = download<T>(d_back, N * 3 * C);
  std::vector<float> in(N * C), ref(N * C), mine(N * C);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c) {
      in[n * C + c] = qkv[n * 3 * C + C + c];   // the k part
      mine[n * C + c] = back[n * 3 * C + C + c];
    }
  rope_backward(ref.data(), in.data(), pos.data(), table, B, Tn, H, D);
  EXPECT_LT(rel(mine, ref), bound<T>(ref));
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
  GpuBuffer d_dqkv = upload<T>(std::vector<float>(N * 3 * C, NAN)), d_delta(B * H * Tn * 4);
  const GpuAttentionShape s{B, Tn, H, D};
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
