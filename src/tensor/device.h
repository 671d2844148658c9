// Which compute devices this build can use. The CUDA path is compiled in when CMake finds nvcc
// (SCRATCHLM_CUDA); a build without it, or a machine without a GPU, reports zero CUDA devices and
// everything runs on the CPU.
#pragma once

#include <string>

namespace scratchlm {

// True if this binary was built with the CUDA path.
bool cuda_compiled();

// Number of usable CUDA devices (0 without CUDA, without a driver, or without a GPU).
int cuda_device_count();

// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for device `index` < cuda_device_count().
std::string cuda_device_description(int index);

}  // namespace scratchlm
