// Times the bf16 tensor-core attention kernels (attention_forward_mma / attention_backward_mma) at
// a few training shapes and at the issue-6 variants: grouped-query heads (Hkv < H), sliding windows
// (W) and logit soft-capping (c). Random inputs in the packed qkv layout, cudaEvent timing, 3
// warm-up runs and the median of 20. TFLOP/s count only the FLOPs of the visible band (the causal
// triangle, or the window's band): forward 4·D per visible (query, key) pair, backward 2.5× that
// (attention_visible_pairs) — so a kernel that skips the tiles outside a window keeps its TFLOP/s,
// and one that computed them and masked would show it dropping as W shrinks. tok/s: B·T / (fwd + bwd).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "ops/cuda/attention_cuda.h"
#include "tensor/bf16.h"
#include "tensor/gpu_buffer.h"

using namespace scratchlm;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

GpuBuffer random_bf16(std::int64_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<Bf16> h(static_cast<std::size_t>(n));
  for (auto& x : h) x = to_bf16(dist(rng));
  GpuBuffer d(n * static_cast<std::int64_t>(sizeof(Bf16)));
  copy_to_gpu(d.data(), h.data(), d.bytes());
  return d;
}

template <typename F>
double median_ms(F&& f) {
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  for (int i = 0; i < 3; ++i) f();
  check(cudaDeviceSynchronize(), "warm-up");
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    check(cudaEventRecord(a), "record");
    f();
    check(cudaEventRecord(b), "record");
    check(cudaEventSynchronize(b), "sync");
    float t = 0.f;
    check(cudaEventElapsedTime(&t, a, b), "elapsed");
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return 0.5 * (ms[9] + ms[10]);
}

}  // namespace

int main() {
  const GpuAttentionShape shapes[] = {
      // issue 5's shapes: the CS336 leaderboard's (1, 16, 16384, 64) and three training shapes
      {.B = 32, .T = 256, .H = 16, .D = 32},
      // the default model's shapes
      {.B = 32, .T = 1024, .H = 12, .D = 64},
      {.B = 128, .T = 256, .H = 16, .D = 32},
      {.B = 8, .T = 4096, .H = 16, .D = 128},
      {.B = 1, .T = 16384, .H = 16, .D = 64},
      // grouped-query attention: the same FLOPs as H = 16 heads, a quarter / a sixteenth of the K, V
      {.B = 8, .T = 2048, .H = 16, .D = 64},
      {.B = 8, .T = 2048, .H = 16, .D = 64, .Hkv = 4},
      {.B = 8, .T = 2048, .H = 16, .D = 64, .Hkv = 1},
      // sliding windows at T = 4096: full causal, then W = 1024 and 256
      {.B = 8, .T = 4096, .H = 16, .D = 64},
      {.B = 8, .T = 4096, .H = 16, .D = 64, .window = 1024},
      {.B = 8, .T = 4096, .H = 16, .D = 64, .window = 256},
      {.B = 8, .T = 4096, .H = 16, .D = 128, .window = 1024},
      {.B = 8, .T = 4096, .H = 16, .D = 128, .window = 256},
      // soft-capping (Gemma 2's c = 50), and everything at once
      {.B = 8, .T = 4096, .H = 16, .D = 64, .softcap = 50.0f},
      {.B = 8, .T = 4096, .H = 16, .D = 64, .Hkv = 4, .window = 1024, .softcap = 50.0f},
  };
  std::printf("%-36s %9s %9s %9s %9s %11s\n", "shape (B,T,H,Hkv,D) W c", "fwd ms", "fwd TF/s", "bwd ms", "bwd TF/s",
              "Mtok/s");
  for (const GpuAttentionShape& s : shapes) {
    const std::int64_t N = s.B * s.T, C = s.H * s.D, row = s.qkv_row(), BHT = s.B * s.H * s.T;
    GpuBuffer qkv = random_bf16(N * row, 1), dout = random_bf16(N * C, 2);
    GpuBuffer out(N * C * 2), dqkv(N * row * 2), lse(BHT * 4), delta(attention_backward_scratch_floats(s) * 4);
    const double fwd = median_ms([&] {
      attention_forward_mma(out.as<Bf16>(), lse.as<float>(), qkv.as<Bf16>(), s, nullptr);
    });
    const double bwd = median_ms([&] {
      attention_backward_mma(dqkv.as<Bf16>(), delta.as<float>(), dout.as<Bf16>(), qkv.as<Bf16>(), out.as<Bf16>(),
                             lse.as<float>(), s, nullptr);
    });
    check(cudaDeviceSynchronize(), "kernels");
    const double flops = 4.0 * static_cast<double>(s.D) * attention_visible_pairs(s);
    char name[80];
    std::snprintf(name, sizeof name, "(%lld,%lld,%lld,%lld,%lld) %lld %g", (long long)s.B, (long long)s.T,
                  (long long)s.H, (long long)s.kv_heads(), (long long)s.D, (long long)s.window,
                  static_cast<double>(s.softcap));
    std::printf("%-36s %9.3f %9.1f %9.3f %9.1f %11.2f\n", name, fwd, flops / fwd * 1e-9, bwd,
                2.5 * flops / bwd * 1e-9, static_cast<double>(N) / (fwd + bwd) * 1e-3);
  }
  return 0;
}
