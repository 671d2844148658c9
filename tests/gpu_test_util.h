// Helpers of the GPU tests (built with CUDA only): the skip without a GPU, random inputs, bf16
// rounding, and copies of float vectors to and from device buffers of either storage type.
#pragma once

#include <random>
#include <type_traits>
#include <vector>

#include "tensor/bf16.h"
#include "tensor/gpu_buffer.h"
#include "tensor/device.h"
#include "test_util.h"

// The first line of every GPU test: skips it on a machine without a GPU (CI, this build machine).
#define SLM_REQUIRE_GPU() \
  if (::scratchlm::cuda_device_count() == 0) GTEST_SKIP() << "no GPU on this machine"

namespace scratchlm::test {

inline std::vector<float> randn(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = to_float(to_bf16(x));
  return v;
}

// ‖bf16(ref) − ref‖ / ‖ref‖: the error of rounding the exact result to bf16, which no op that
// stores bf16 can beat.
inline double rounding_error(const std::vector<float>& ref) { return rel_error(round_bf16(ref), ref); }

// What a GPU op of storage type T reads: the values themselves in fp32, their bf16 rounding in bf16.
template <typename T>
std::vector<float> as_stored(const std::vector<float>& v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return round_bf16(v);
}

template <typename T>
GpuBuffer upload(const std::vector<float>& v) {
  GpuBuffer b(static_cast<std::int64_t>(v.size() * sizeof(T)));
  if constexpr (std::is_same_v<T, float>) {
    copy_to_gpu(b.data(), v.data(), b.bytes());
  } else {
    std::vector<Bf16> h(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) h[i] = to_bf16(v[i]);
    copy_to_gpu(b.data(), h.data(), b.bytes());
  }
  return b;
}

template <typename T>
std::vector<float> download(const GpuBuffer& b, std::size_t n) {
  std::vector<float> v(n);
  if constexpr (std::is_same_v<T, float>) {
    copy_from_gpu(v.data(), b.data(), static_cast<std::int64_t>(n * 4));
  } else {
    std::vector<Bf16> h(n);
    copy_from_gpu(h.data(), b.data(), static_cast<std::int64_t>(n * 2));
    for (std::size_t i = 0; i < n; ++i) v[i] = to_float(h[i]);
  }
  return v;
}

}  // namespace scratchlm::test
