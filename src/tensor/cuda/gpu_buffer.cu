#include "tensor/gpu_buffer.h"

#include <atomic>

#include "tensor/cuda/cuda_check.cuh"

namespace scratchlm {
namespace {
std::atomic<std::int64_t> g_bytes{0}, g_peak{0};
}

GpuBuffer::GpuBuffer(std::int64_t bytes) : bytes_(bytes) {
  if (bytes <= 0) return;
  const cudaError_t err = cudaMalloc(&ptr_, static_cast<std::size_t>(bytes));
  if (err != cudaSuccess) {
    cudaGetLastError();
    fail("cannot allocate ", bytes, " bytes of GPU memory (", cudaGetErrorString(err), ", ", gpu_buffer_bytes(),
         " bytes held already); try a smaller batch_size");
  }
  const std::int64_t now = g_bytes += bytes;
  std::int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}

GpuBuffer::~GpuBuffer() {
  if (!ptr_) return;
  cudaFree(ptr_);
  g_bytes -= bytes_;
}

std::int64_t gpu_buffer_bytes() { return g_bytes.load(); }
std::int64_t gpu_buffer_peak_bytes() { return g_peak.load(); }

void copy_to_gpu(void* dst, const void* src, std::int64_t bytes) {
  SLM_CUDA_CHECK(cudaMemcpy(dst, src, static_cast<std::size_t>(bytes), cudaMemcpyHostToDevice));
}

void copy_from_gpu(void* dst, const void* src, std::int64_t bytes) {
  SLM_CUDA_CHECK(cudaMemcpy(dst, src, static_cast<std::size_t>(bytes), cudaMemcpyDeviceToHost));
}

void gpu_synchronize() { SLM_CUDA_CHECK(cudaDeviceSynchronize()); }

std::int64_t gpu_memory_in_use() {
  std::size_t free = 0, total = 0;
  SLM_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return static_cast<std::int64_t>(total - free);
}

}  // namespace scratchlm
