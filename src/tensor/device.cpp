// The CPU-only side of device.h; with CUDA compiled in, tensor/cuda/device.cu defines these.
#include "tensor/device.h"

#ifndef SCRATCHLM_CUDA
namespace scratchlm {
bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_description(int) { return "no CUDA in this build"; }
}  // namespace scratchlm
#endif
