// Times the bf16 tensor-core attention kernels (attention_forward_mma / attention_backward_mma) at
// a few training shapes: random inputs in the packed qkv layout, cudaEvent timing, 3 warm-up runs
// and the median of 20. TFLOP/s count causal FLOPs: forward 4·B·H·T²·D / 2, backward 2.5× that.
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
  struct Shape {
    std::int64_t B, H, T, D;
  };
  const Shape shapes[] = {{32, 12, 1024, 64}, {128, 16, 256, 32}, {8, 16, 4096, 128}, {1, 16, 16384, 64}};
  std::printf("%-26s %10s %10s %10s %10s\n", "shape (B,H,T,D)", "fwd ms", "fwd TF/s", "bwd ms", "bwd TF/s");
  for (const Shape& sh : shapes) {
    const std::int64_t N = sh.B * sh.T, C = sh.H * sh.D;
    const GpuAttentionShape s{sh.B, sh.T, sh.H, sh.D};
    GpuBuffer qkv = random_bf16(N * 3 * C, 1), dout = random_bf16(N * C, 2);
    GpuBuffer out(N * C * 2), dqkv(N * 3 * C * 2), lse(sh.B * sh.H * sh.T * 4), delta(sh.B * sh.H * sh.T * 4);
    const double fwd = median_ms([&] {
      attention_forward_mma(out.as<Bf16>(), lse.as<float>(), qkv.as<Bf16>(), s, nullptr);
    });
    const double bwd = median_ms([&] {
      attention_backward_mma(dqkv.as<Bf16>(), delta.as<float>(), dout.as<Bf16>(), qkv.as<Bf16>(), out.as<Bf16>(),
                             lse.as<float>(), s, nullptr);
    });
    check(cudaGetLastError(), "kernels");
    const double flops = 4.0 * sh.B * sh.H * double(sh.T) * sh.T * sh.D / 2;
    char name[64];
    std::snprintf(name, sizeof name, "(%lld,%lld,%lld,%lld)", (long long)sh.B, (long long)sh.H, (long long)sh.T,
                  (long long)sh.D);
    std::printf("%-26s %10.3f %10.1f %10.3f %10.1f\n", name, fwd, flops / fwd * 1e-9, bwd, 2.5 * flops / bwd * 1e-9);
  }
  return 0;
}
