// The CUDA switch: a CUDA build on a machine with a GPU sees it; anywhere else the GPU tests skip.
#include <gtest/gtest.h>

#include "tensor/device.h"

TEST(CudaDevice, ReportsDevicesOrSkips) {
  if (!scratchlm::cuda_compiled()) GTEST_SKIP() << "built without CUDA";
  int n = scratchlm::cuda_device_count();
  if (n == 0) GTEST_SKIP() << "no GPU on this machine";
  for (int i = 0; i < n; ++i) EXPECT_NE(scratchlm::cuda_device_description(i), "unavailable");
}
