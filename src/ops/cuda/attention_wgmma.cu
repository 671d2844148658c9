// The library's entry to the Hopper (wgmma + TMA) attention forward of attention_wgmma.cuh.
// This file alone is compiled for sm_90a (CMakeLists.txt: its own object library with
// -gencode=arch=compute_90a,code=sm_90a, whatever CMAKE_CUDA_ARCHITECTURES lists), since wgmma and
// setmaxnreg exist only there; the rest of the library calls it through attention_cuda.h and only
// after attention_wgmma_supported said yes (an sm_90 device: the sm_90a code runs on compute
// capability 9.0 exactly).
// Configurations, measured on an H200 (bench/attention/WGMMA_NOTES.md, "Measured outcomes"):
//   D = 64:  3 consumer warpgroups (192 query rows per block), overlap of softmax and P V;
//   D = 128: 2 consumer warpgroups (128 rows), overlap.
// The library's attention is causal; the kernels' non-causal instantiations stay in the lab.
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <exception>

#include "ops/cuda/attention_cuda.h"
#define SCRATCHLM_WGMMA_TU lib
#include "ops/cuda/attention_wgmma.cuh"
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

void attention_forward_wgmma(Bf16* out, float* lse, const Bf16* qkv, const GpuAttentionShape& s, CUstream_st* stream) {
  check_attention_shape(s, "attention_forward_wgmma");
  SLM_CHECK(attention_wgmma_supported(s), "attention_forward_wgmma: shape or device not supported (D = ", s.D, ")");
  constexpr std::int64_t kIntMax = 2147483647;
  if (s.B * s.H > kIntMax || s.T > kIntMax / 2 || 3 * s.H * s.D > kIntMax)
    fail("attention_forward_wgmma: shape B=", s.B, " T=", s.T, " H=", s.H, " D=", s.D, " is too large");
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

}  // namespace scratchlm
