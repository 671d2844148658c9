// Attention on the CPU: one (batch, head) pair per OpenMP iteration, its score matrix in a
// per-thread scratch buffer, the products through sgemm (single-threaded inside the parallel loop).
// Scores of masked keys are never read: each row's softmax stops at its last visible key.
#include "ops/attention.h"

#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/fast_exp.h"
#include "ops/linear.h"

namespace scratchlm {

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const AttentionDims& d) {
  const std::int64_t B = d.B, H = d.H, D = d.D, Tq = d.Tq, Tk = d.Tk;
  const std::int64_t C = H * D;   // row stride of q, k, v and out: heads are interleaved per token
  const std::int64_t kv_stride = d.kv_batch_stride ? d.kv_batch_stride : Tk * C;
  const std::int64_t offset = Tk - Tq;   // position of query 0
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
#pragma omp parallel
  {
    std::vector<float> s(static_cast<std::size_t>(Tq * Tk));   // (Tq, Tk) scores, then probabilities
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t h = 0; h < H; ++h) {
        const float* qh = q + b * Tq * C + h * D;          // (Tq, D), row stride C
        const float* kh = k + b * kv_stride + h * D;       // (Tk, D), row stride C
        const float* vh = v + b * kv_stride + h * D;
        float* oh = out + b * Tq * C + h * D;
        // S = Q Kᵀ · scale
        gemm(s.data(), Tk, qh, C, Transpose::no, kh, C, Transpose::yes, Tq, Tk, D, scale, Accumulate::no);
        for (std::int64_t i = 0; i < Tq; ++i) {
          float* row = s.data() + i * Tk;
          const std::int64_t visible = offset + i + 1;   // keys 0 .. offset+i
          float max = row[0];
          for (std::int64_t j = 1; j < visible; ++j) max = row[j] > max ? row[j] : max;
          double sum = 0.0;
#pragma omp simd reduction(+ : sum)
          for (std::int64_t j = 0; j < visible; ++j) {
            row[j] = fast_exp(row[j] - max);
            sum += row[j];
          }
          const float inv = static_cast<float>(1.0 / sum);
          for (std::int64_t j = 0; j < visible; ++j) row[j] *= inv;
          for (std::int64_t j = visible; j < Tk; ++j) row[j] = 0.0f;   // the causal mask
          lse[(b * H + h) * Tq + i] = static_cast<float>(max + std::log(sum));
        }
        // out = P V
        gemm(oh, C, s.data(), Tk, Transpose::no, vh, C, Transpose::no, Tq, D, Tk, 1.0f, Accumulate::no);
      }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const AttentionDims& d) {
  const std::int64_t B = d.B, H = d.H, D = d.D, T = d.Tq;
  const std::int64_t C = H * D;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
#pragma omp parallel
  {
    std::vector<float> p(static_cast<std::size_t>(T * T));    // (T, T) probabilities, then dS
    std::vector<float> dp(static_cast<std::size_t>(T * T));   // (T, T)
#pragma omp for collapse(2) schedule(static)
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t h = 0; h < H; ++h) {
        const std::int64_t base = b * T * C + h * D;   // (T, D) slices with row stride C
        const float* lse_h = lse + (b * H + h) * T;
        // P = exp(S − lse), recomputed from the saved log-sum-exp
        gemm(p.data(), T, q + base, C, Transpose::no, k + base, C, Transpose::yes, T, T, D, scale, Accumulate::no);
        for (std::int64_t i = 0; i < T; ++i) {
          float* row = p.data() + i * T;
          const float l = lse_h[i];
          for (std::int64_t j = 0; j <= i; ++j) row[j] = fast_exp(row[j] - l);
          for (std::int64_t j = i + 1; j < T; ++j) row[j] = 0.0f;
        }
        // dV = Pᵀ dO
        gemm(dv + base, C, p.data(), T, Transpose::yes, dout + base, C, Transpose::no, T, D, T, 1.0f, Accumulate::no);
        // dP = dO Vᵀ
        gemm(dp.data(), T, dout + base, C, Transpose::no, v + base, C, Transpose::yes, T, T, D, 1.0f, Accumulate::no);
        // dS = P ⊙ (dP − Δ), Δ_i = Σ_j P_ij dP_ij = dO_i · O_i
        for (std::int64_t i = 0; i < T; ++i) {
          const float* o_i = out + base + i * C;
          const float* do_i = dout + base + i * C;
          double delta = 0.0;
          for (std::int64_t e = 0; e < D; ++e) delta += static_cast<double>(o_i[e]) * do_i[e];
          float* row = p.data() + i * T;
          const float* dp_row = dp.data() + i * T;
          for (std::int64_t j = 0; j <= i; ++j) row[j] = row[j] * (dp_row[j] - static_cast<float>(delta));
        }
        // dQ = dS K · scale;  dK = dSᵀ Q · scale
        gemm(dq + base, C, p.data(), T, Transpose::no, k + base, C, Transpose::no, T, D, T, scale, Accumulate::no);
        gemm(dk + base, C, p.data(), T, Transpose::yes, q + base, C, Transpose::no, T, D, T, scale, Accumulate::no);
      }
  }
}

}  // namespace scratchlm
