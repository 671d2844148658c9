// Device memory for host code that does not include CUDA headers: a move-only owner of one
// cudaMalloc'd block, and the copies in and out of it. Every call is checked (throws Error).
#pragma once

#include <cstdint>
#include <utility>

namespace scratchlm {

class GpuBuffer {
 public:
  GpuBuffer() = default;
  explicit GpuBuffer(std::int64_t bytes);
  ~GpuBuffer();
  GpuBuffer(GpuBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  GpuBuffer& operator=(GpuBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  GpuBuffer(const GpuBuffer&) = delete;
  GpuBuffer& operator=(const GpuBuffer&) = delete;

  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  void* data() const { return ptr_; }
  std::int64_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::int64_t bytes_ = 0;
};

// Synchronous copies (they wait for the default stream).
void copy_to_gpu(void* dst, const void* src, std::int64_t bytes);
void copy_from_gpu(void* dst, const void* src, std::int64_t bytes);
void gpu_synchronize();
// Device memory in use on the device (cudaMemGetInfo: total − free, so the CUDA context and
// libraries' own allocations included).
std::int64_t gpu_memory_in_use();
// Bytes held by GpuBuffers now and at most so far (what PyTorch's max_memory_allocated counts).
std::int64_t gpu_buffer_bytes();
std::int64_t gpu_buffer_peak_bytes();

}  // namespace scratchlm
