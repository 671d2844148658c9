// The GPU mixture of experts (model/cuda/moe_cuda.h) against the CPU's moe_forward / moe_backward
// (model.cpp, the spec; itself checked by finite differences and against PyTorch): the selected
// experts, the output, the aux loss, the token counts and drops, the input gradient and every
// parameter gradient, on tiny configs: top-1 and top-2, with and without shared experts, fine-grained
// experts (Fe below d_ff), a capacity that drops assignments, and the same capacity ignored.
// Tolerances, from precision:
//   - fp32: both sides compute in fp32 (true fp32 products, no TF32) with double where the CPU uses
//     double; they differ only by summation order: ≲ 1e-6 relative, so 1e-5 is safe. The experts
//     chosen and the counts must be equal exactly (with these seeds no two probabilities of a token
//     are within float noise of each other at the k-th place).
//   - bf16: the CPU runs in fp32 on the bf16-rounded inputs, weights and dy the GPU reads. The GPU
//     also rounds to bf16 what it stores: ab and h (forward), w·dy, dh, [da | db] and the router's
//     gradient (backward). Each rounding is a relative error ≤ 2^-9 ≈ 2e-3 per element; the longest
//     chain (a weight gradient of W1: ab, h, w·dy, dh, dab) has five, so ≤ 1e-2 per element, and the
//     norm-wise error (random signs) is well below: 1e-2 is a bound no correct kernel exceeds and a
//     wrong index or a missing term (errors of order 1) cannot meet. The router probabilities come
//     from fp32 sums of the same rounded values on both sides, so the aux loss and the routing are
//     as in fp32.
#include <gtest/gtest.h>

#if SCRATCHLM_CUDA

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "model/config.h"
#include "model/cuda/moe_cuda.h"
#include "model/model.h"
#include "model/params.h"
#include "ops/cuda/gemm_cuda.h"
#include "tensor/gpu_buffer.h"
#include "test_util.h"
#include "util/error.h"
#include "util/rng.h"

namespace scratchlm {
namespace {

using test::as_stored;
using test::download;
using test::randn;
using test::upload;


struct MoeCase {
  std::int64_t E, k, S, Fe;
  double capacity_factor;
  MoeCapacity capacity;
  bool residual;   // y = residual + MoE(x) instead of MoE(x)
  bool expect_drops;
};

ModelConfig moe_config(const MoeCase& m) {
  ModelConfig c = test::model_shape(16, 24, 32, 1, 2, 64);
  c.moe = {.num_experts = m.E, .top_k = m.k, .num_shared = m.S, .d_ff_expert = m.Fe, .aux_loss = 0.01,
           .capacity_factor = m.capacity_factor};
  return c;
}

// What one GPU forward + backward gives, downloaded.
struct GpuResult {
  std::vector<float> y, dx, grads;   // grads: the whole arena (started from g0)
  std::vector<std::int32_t> expert;
  MoeLayerStats stats;
};

// Drives the GPU mixture of layer 0 over device copies of the weights in the working precision.
template <typename T>
class GpuMoeRunner {
 public:
  GpuMoeRunner(const ModelConfig& c, const ParamLayout& layout, const std::vector<float>& params, MoeCapacity largest)
      : c_(c), layout_(layout) {
    const std::int64_t C = c.d_model, Fe = c.moe.d_ff_expert;
    std::vector<std::int64_t> offset;
    if constexpr (std::is_same_v<T, float>) {
      // fp32 reads the master arena in place: w1, w2, w3 apart (two up-projection products)
      weights_ = upload<float>(params);
      for (const ParamSpec& s : layout.specs) offset.push_back(s.offset);
    } else {
      // bf16: a working copy of the table with each expert's w3 moved right after its w1 (the
      // fused [W1; W3] product), as the model's copy lays them out
      std::vector<float> copy;
      offset.assign(layout.specs.size(), -1);
      auto place = [&](std::size_t i) {
        const ParamSpec& s = layout.specs[i];
        offset[i] = static_cast<std::int64_t>(copy.size());
        copy.insert(copy.end(), params.begin() + s.offset, params.begin() + s.offset + s.numel());
      };
      for (std::size_t i = 0; i < layout.specs.size(); ++i) {
        const std::string& name = layout.specs[i].name;
        if (offset[i] >= 0 || name.ends_with("w3.weight")) continue;   // placed with its w1
        if (name.ends_with("w1.weight")) {
          place(i);
          place(layout.index.at(name.substr(0, name.size() - 9) + "w3.weight"));
        } else {
          place(i);
        }
      }
      weights_ = upload<Bf16>(copy);
    }
    w_ = moe_weights_at<T>(weights_.as<T>(), offset, layout, c, 0);
    if constexpr (std::is_same_v<T, Bf16>) {
      for (const auto& f : w_.experts) EXPECT_EQ(f.w3, f.w1 + Fe * C) << "the fused layout";
    }
    const std::int64_t N = 48;
    saved_ = GpuMoeSaved(c, N, sizeof(T), largest);
    scratch_ = GpuMoeScratch(c, N, sizeof(T), largest, true);
  }

  // Forward and backward on the stream (nothing downloaded): y, then dx and grads (accumulated).
  void run(float* y, const float* residual, float* dx, float* grads, const T* x, const T* dy, std::int64_t N,
           MoeCapacity capacity, double aux_scale, cudaStream_t s) {
    const GpuMoeGrads g = moe_grads_at(grads, layout_, c_, 0);
    moe_forward_cuda<T>(y, saved_, scratch_, residual, x, w_, c_, N, capacity, gemm_, s);
    moe_backward_cuda<T>(dx, g, scratch_, saved_, dy, x, w_, c_, aux_scale, gemm_, s);
  }

  GpuMoeSaved& saved() { return saved_; }

 private:
  ModelConfig c_;
  const ParamLayout& layout_;
  GpuBuffer weights_;
  GpuMoeWeights<T> w_;
  GpuMoeSaved saved_;
  GpuMoeScratch scratch_;
  GemmContext gemm_;
};

template <typename T>
void moe_case(const MoeCase& m) {
  SCOPED_TRACE(str("E = ", m.E, ", k = ", m.k, ", S = ", m.S, ", Fe = ", m.Fe, ", capacity ", m.capacity_factor,
                   m.capacity == MoeCapacity::apply ? " applied" : " ignored", m.residual ? ", residual" : ""));
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-2;
  const ModelConfig c = moe_config(m);
  const std::int64_t B = 2, T_ = 24, N = B * T_, C = c.d_model;
  const ParamLayout layout = param_layout(c);
  const auto P = static_cast<std::size_t>(layout.total);
  std::vector<float> params(P);
  Rng rng(7);
  init_params(layout, params.data(), rng);
  params = as_stored<T>(params);
  const auto x = as_stored<T>(randn(N * C, 1)), dy = as_stored<T>(randn(N * C, 2, 0.5f));
  const auto residual = randn(N * C, 3), g0 = randn(P, 4, 0.1f);
  const double aux_scale = 0.7;   // large, so that the aux loss's share of the router gradient shows

  // The CPU: forward, then backward from g0.
  Activations acts(c, B, T_);
  std::vector<float> grads = g0, y(N * C), dx(N * C);
  const ModelWeights w = model_weights(layout, params.data()), gw = model_weights(layout, grads.data());
  LayerActs& a = acts.layers[0];
  moe_forward(y.data(), a, acts, x.data(), w.layers[0], c, N, m.capacity == MoeCapacity::apply);
  moe_backward(dx.data(), gw.layers[0], acts, a, dy.data(), x.data(), w.layers[0], c, N, aux_scale);
  if (m.residual)
    for (std::int64_t i = 0; i < N * C; ++i) y[i] += residual[i];
  if (m.expect_drops) EXPECT_GT(a.moe_dropped, 0) << "the case should drop assignments";
  else EXPECT_EQ(a.moe_dropped, 0);

  // The GPU, twice: the second run must repeat the first bit for bit.
  GpuMoeRunner<T> gpu(c, layout, params, m.capacity);
  GpuBuffer d_x = upload<T>(x), d_dy = upload<T>(dy), d_res = upload<float>(residual);
  auto run = [&] {
    GpuBuffer d_y(N * C * 4), d_dx(N * C * 4), d_grads = upload<float>(g0);
    gpu.run(d_y.as<float>(), m.residual ? d_res.as<float>() : nullptr, d_dx.as<float>(), d_grads.as<float>(),
            d_x.as<T>(), d_dy.as<T>(), N, m.capacity, aux_scale, nullptr);
    GpuResult r;
    r.stats = moe_read_stats(gpu.saved(), c, nullptr);
    r.y = download<float>(d_y, N * C);
    r.dx = download<float>(d_dx, N * C);
    r.grads = download<float>(d_grads, P);
    r.expert.resize(static_cast<std::size_t>(N * m.k));
    copy_from_gpu(r.expert.data(), gpu.saved().expert.data(), N * m.k * 4);
    return r;
  };
  const GpuResult r = run();

  EXPECT_EQ(r.expert, a.moe_expert) << "the selected experts";
  EXPECT_EQ(r.stats.expert_tokens, a.expert_tokens);
  EXPECT_EQ(r.stats.dropped, a.moe_dropped);
  EXPECT_NEAR(r.stats.aux, a.moe_aux, 1e-6 * a.moe_aux);
  EXPECT_LT(test::rel_error(r.y, y), tol) << "output";
  EXPECT_LT(test::rel_error(r.dx, dx), tol) << "dx";
  // Each parameter gradient's increment over g0 (the CPU's too), tensor by tensor.
  for (const ParamSpec& s : layout.specs) {
    if (s.name.find("ffn.") == std::string::npos) {   // not the mixture's: untouched
      for (std::int64_t i = 0; i < s.numel(); ++i) ASSERT_EQ(r.grads[s.offset + i], g0[s.offset + i]) << s.name;
      continue;
    }
    std::vector<double> got(s.numel()), want(s.numel());
    for (std::int64_t i = 0; i < s.numel(); ++i) {
      got[i] = static_cast<double>(r.grads[s.offset + i]) - g0[s.offset + i];
      want[i] = static_cast<double>(grads[s.offset + i]) - g0[s.offset + i];
    }
    EXPECT_LT(test::rel_error(got, want), tol) << s.name;
  }

  const GpuResult again = run();
  EXPECT_EQ(again.y, r.y);
  EXPECT_EQ(again.dx, r.dx);
  EXPECT_EQ(again.grads, r.grads);
}

template <typename T>
class GpuMoeTest : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, Bf16>;
TYPED_TEST_SUITE(GpuMoeTest, StorageTypes);

TYPED_TEST(GpuMoeTest, MatchesTheCpuForwardAndBackward) {
  SLM_REQUIRE_GPU();
  const std::vector<MoeCase> cases = {
      // top-1, dropless
      {.E = 4, .k = 1, .S = 0, .Fe = 24, .capacity_factor = 0, .capacity = MoeCapacity::apply, .residual = false,
       .expect_drops = false},
      // top-2 with a shared expert, the output added onto a residual
      {.E = 4, .k = 2, .S = 1, .Fe = 24, .capacity_factor = 0, .capacity = MoeCapacity::apply, .residual = true,
       .expect_drops = false},
      // fine-grained top-2 with two shared experts and a capacity that drops
      {.E = 6, .k = 2, .S = 2, .Fe = 12, .capacity_factor = 0.75, .capacity = MoeCapacity::apply, .residual = false,
       .expect_drops = true},
      // top-1 over capacity: drops
      {.E = 4, .k = 1, .S = 0, .Fe = 24, .capacity_factor = 0.6, .capacity = MoeCapacity::apply, .residual = false,
       .expect_drops = true},
      // the same capacity ignored (the generation rule): dropless
      {.E = 6, .k = 2, .S = 0, .Fe = 12, .capacity_factor = 0.75, .capacity = MoeCapacity::ignore, .residual = false,
       .expect_drops = false},
  };
  for (const MoeCase& m : cases) moe_case<TypeParam>(m);
}

// Forward and backward captured in a CUDA graph and replayed give the eager results: no host sync
// or host-dependent shape inside them.
TEST(GpuMoe, CapturesInACudaGraph) {
  SLM_REQUIRE_GPU();
  const MoeCase m{.E = 6, .k = 2, .S = 1, .Fe = 12, .capacity_factor = 1.0, .capacity = MoeCapacity::apply,
                  .residual = true, .expect_drops = false};
  const ModelConfig c = moe_config(m);
  const std::int64_t N = 48, C = c.d_model;
  const ParamLayout layout = param_layout(c);
  const auto P = static_cast<std::size_t>(layout.total);
  std::vector<float> params(P);
  Rng rng(9);
  init_params(layout, params.data(), rng);
  GpuMoeRunner<Bf16> gpu(c, layout, params, m.capacity);
  GpuBuffer d_x = upload<Bf16>(randn(N * C, 5)), d_dy = upload<Bf16>(randn(N * C, 6)), d_res = upload<float>(randn(N * C, 7));
  GpuBuffer d_y(N * C * 4), d_dx(N * C * 4), d_grads = upload<float>(std::vector<float>(P, 0.0f));
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  auto step = [&] {
    gpu.run(d_y.as<float>(), d_res.as<float>(), d_dx.as<float>(), d_grads.as<float>(), d_x.as<Bf16>(), d_dy.as<Bf16>(),
            N, m.capacity, 0.5, s);
  };
  step();   // eager (also warms the product cache)
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  const auto y = download<float>(d_y, N * C), dx = download<float>(d_dx, N * C), g1 = download<float>(d_grads, P);
  copy_to_gpu(d_grads.data(), std::vector<float>(P, 0.0f).data(), static_cast<std::int64_t>(P * 4));
  copy_to_gpu(d_y.data(), std::vector<float>(N * C, 0.0f).data(), N * C * 4);
  copy_to_gpu(d_dx.data(), std::vector<float>(N * C, 0.0f).data(), N * C * 4);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  step();
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(download<float>(d_y, N * C), y);
  EXPECT_EQ(download<float>(d_dx, N * C), dx);
  EXPECT_EQ(download<float>(d_grads, P), g1);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

TEST(GpuMoe, RefusesExpertsItDoesNotImplementByName) {
  // Host-side checks only: no GPU needed.
  MoeCase m{.E = 4, .k = 2, .S = 0, .Fe = 16, .capacity_factor = 0, .capacity = MoeCapacity::apply,
            .residual = false, .expect_drops = false};
  auto expect_refused = [&](const ModelConfig& c, const std::string& field) {
    try {
      moe_check_supported_cuda(c);
      ADD_FAILURE() << "accepted " << field;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  ModelConfig c = moe_config(m);
  c.ffn = FfnKind::geglu;
  expect_refused(c, "\"ffn\": \"geglu\"");
  c = moe_config(m);
  c.bias = true;
  expect_refused(c, "\"bias\"");
  c = moe_config(m);
  EXPECT_NO_THROW(moe_check_supported_cuda(c));
}

TEST(GpuMoe, ExpertRowsFollowTheCpuCapacityRule) {
  MoeConfig moe{.num_experts = 6, .top_k = 2, .num_shared = 0, .d_ff_expert = 8, .aux_loss = 0.01,
                .capacity_factor = 0.75};
  EXPECT_EQ(moe_expert_rows(moe, 48, MoeCapacity::apply), 12);    // ceil(0.75·48·2/6) = 12
  EXPECT_EQ(moe_expert_rows(moe, 49, MoeCapacity::apply), 13);    // ceil(12.25)
  EXPECT_EQ(moe_expert_rows(moe, 48, MoeCapacity::ignore), 48);   // dropless: a token per row at most
  moe.capacity_factor = 10;
  EXPECT_EQ(moe_expert_rows(moe, 48, MoeCapacity::apply), 48);    // never more rows than tokens
  moe.capacity_factor = 0;
  EXPECT_EQ(moe_expert_rows(moe, 48, MoeCapacity::apply), 48);
}

}  // namespace
}  // namespace scratchlm

#endif  // SCRATCHLM_CUDA
