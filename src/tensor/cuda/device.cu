// CUDA device discovery (compiled only when CMake finds nvcc).
#include <cuda_runtime.h>

#include <cstdio>

#include "tensor/device.h"

namespace scratchlm {

bool cuda_compiled() { return true; }

int cuda_device_count() {
  int count = 0;
  // No driver or no GPU is not an error here: the CPU path runs instead.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error
    return 0;
  }
  return count;
}

std::string cuda_device_description(int index) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) return "unavailable";
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                static_cast<double>(prop.totalGlobalMem) / (1ull << 30));
  return buf;
}

}  // namespace scratchlm
