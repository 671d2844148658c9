// The library's entries to the Hopper (wgmma + TMA) attention forward of attention_wgmma.cuh and
// backward of attention_wgmma_bwd.cuh.
// This file alone is compiled for sm_90a (CMakeLists.txt: its own object library with
// -gencode=arch=compute_90a,code=sm_90a, whatever CMAKE_CUDA_ARCHITECTURES lists), since wgmma and
// setmaxnreg exist only there; the rest of the library calls it through attention_cuda.h and only
// after attention_wgmma_supported said yes (an sm_90 device: the sm_90a code runs on compute
// capability 9.0 exactly).
// Configurations, measured on an H200 (bench/attention/WGMMA_NOTES.md, "Measured outcomes"):
//   D = 64:  3 consumer warpgroups (192 query rows per block), overlap of softmax and P V;
//   D = 128: 2 consumer warpgroups (128 rows), overlap.
//   backward, D = 64: dK/dV query tiles of 64 rows, dQ key tiles of 128, rings of 2 stages
//   (d64_m64_n128: at (1, 16, 16384, 64) 3.90 ms against mma.sync's 5.45; the other variants within
//   7% of it at every shape measured); D = 128: query and key tiles of 64 (d128_m64_n64: at
//   (8, 16, 4096, 128) 4.16 ms against 7.12).
// The library's attention is causal; the kernels' non-causal instantiations stay in the lab.
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <exception>

#include "ops/cuda/attention_cuda.h"
#define SCRATCHLM_WGMMA_TU lib
#include "ops/cuda/attention_wgmma.cuh"
#include "ops/cuda/attention_wgmma_bwd.cuh"
#include "util/error.h"

namespace scratchlm {
namespace {

// The compute capability of `device` as 10·major + minor, asked of the driver once per device.
int compute_capability(int device) {
  static std::array<std::atomic<int>, 64> cache{};   // 0: not asked yet
  if (device < 0 || device >= static_cast<int>(cache.size())) return 0;
  int cc = cache[device].load(std::memory_order_relaxed);
  if (cc == 0) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
      cudaGetLastError();   // clear the (non-sticky) error so that later checks do not see it
      return 0;
    }
    cc = 10 * major + minor;
    cache[device].store(cc, std::memory_order_relaxed);
  }
  return cc;
}

}  // namespace

bool attention_wgmma_supported(const GpuAttentionShape& s) {
  const bool plain = s.kv_heads() == s.H && (s.window == 0 || s.window >= s.T) && s.softcap == 0.0f;
  if (!plain || (s.D != 64 && s.D != 128)) return false;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return compute_capability(device) == 90;
}

namespace {

void check_wgmma_shape(const GpuAttentionShape& s, const char* op) {
  check_attention_shape(s, op);
  SLM_CHECK(attention_wgmma_supported(s), op, ": shape or device not supported (D = ", s.D, ")");
  constexpr std::int64_t kIntMax = 2147483647;
  if (s.B * s.H > kIntMax || s.T > kIntMax / 2 || 3 * s.H * s.D > kIntMax)
    fail(op, ": shape B=", s.B, " T=", s.T, " H=", s.H, " D=", s.D, " is too large");
}

}  // namespace

std::int64_t attention_backward_scratch_floats(const GpuAttentionShape& s) {
  const std::int64_t Tp = (s.T + wgmma::kStatPad - 1) / wgmma::kStatPad * wgmma::kStatPad;
  return 2 * s.B * s.H * Tp;   // ≥ B·H·T, the mma_sync kernels' delta
}

void attention_forward_wgmma(Bf16* out, float* lse, const Bf16* qkv, const GpuAttentionShape& s, CUstream_st* stream) {
  check_wgmma_shape(s, "attention_forward_wgmma");
  namespace w = wgmma;
  auto* o = reinterpret_cast<w::bf16*>(out);
  const auto* x = reinterpret_cast<const w::bf16*>(qkv);
  const int B = static_cast<int>(s.B), T = static_cast<int>(s.T), H = static_cast<int>(s.H);
  try {
    if (s.D == 64)
      w::attention_forward_wgmma<w::FwdConfig<64, 3, 128, 2, true, true>>(o, lse, x, B, T, H, stream);
    else
      w::attention_forward_wgmma<w::FwdConfig<128, 2, 128, 2, true, true>>(o, lse, x, B, T, H, stream);
  } catch (const std::exception& e) {   // the launch's checks (alignment, grid, tensor map) as our error
    fail("attention_forward_wgmma: ", e.what());
  }
}

void attention_backward_wgmma(Bf16* dqkv, float* scratch, const Bf16* dout, const Bf16* qkv, const Bf16* out,
                              const float* lse, const GpuAttentionShape& s, CUstream_st* stream) {
  check_wgmma_shape(s, "attention_backward_wgmma");
  namespace w = wgmma;
  auto* dx = reinterpret_cast<w::bf16*>(dqkv);
  const auto* dy = reinterpret_cast<const w::bf16*>(dout);
  const auto* x = reinterpret_cast<const w::bf16*>(qkv);
  const auto* y = reinterpret_cast<const w::bf16*>(out);
  const int B = static_cast<int>(s.B), T = static_cast<int>(s.T), H = static_cast<int>(s.H);
  try {
    if (s.D == 64)
      w::attention_backward_wgmma<w::DkdvConfig<64, 64, 2, true>, w::DqConfig<64, 128, 2, true>>(dx, scratch, dy, x, y,
                                                                                                 lse, B, T, H, stream);
    else
      w::attention_backward_wgmma<w::DkdvConfig<128, 64, 2, true>, w::DqConfig<128, 64, 2, true>>(dx, scratch, dy, x, y,
                                                                                                  lse, B, T, H, stream);
  } catch (const std::exception& e) {
    fail("attention_backward_wgmma: ", e.what());
  }
}

}  // namespace scratchlm
