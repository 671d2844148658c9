// Builds without CUDA: the GPU decoder is generate/cuda/gpu_decoder.cu; this stands in for it.
#include "generate/gpu_decoder.h"
#include "util/error.h"

#ifndef SCRATCHLM_CUDA
namespace scratchlm {

const char* decoder_gemm_name(DecoderGemm g) { return g == DecoderGemm::own ? "own kernels" : "cuBLASLt"; }

GpuDecoderOptions fastest_decoder_options(std::int64_t batch, std::int64_t) { return {.max_batch = batch}; }

struct GpuDecoder::Impl {};

GpuDecoder::GpuDecoder(const Model&, const GpuDecoderOptions&) {
  fail("this build of scratchlm has no CUDA; generate with --device cpu");
}
GpuDecoder::~GpuDecoder() = default;
std::vector<GenerateResult> GpuDecoder::generate(const std::vector<std::vector<std::int32_t>>&, std::int64_t,
                                                 const SampleOptions&, std::int32_t, std::uint64_t,
                                                 const std::function<void(std::int64_t, std::int32_t)>&) {
  fail("no CUDA");
}
const DecodeTimes& GpuDecoder::times() const { fail("no CUDA"); }
void GpuDecoder::set_sampling(const SampleOptions&, std::int32_t, std::uint64_t) { fail("no CUDA"); }
void GpuDecoder::start(std::int64_t, const std::vector<std::int32_t>&, std::int64_t, std::int64_t) { fail("no CUDA"); }
void GpuDecoder::step() { fail("no CUDA"); }
std::vector<GpuDecoder::SlotEvent> GpuDecoder::events(std::int64_t) { fail("no CUDA"); }
std::vector<float> GpuDecoder::logits(std::int64_t) { fail("no CUDA"); }
std::int64_t GpuDecoder::max_batch() const { fail("no CUDA"); }
std::int64_t GpuDecoder::max_length() const { fail("no CUDA"); }
std::int64_t GpuDecoder::step_weight_bytes() const { fail("no CUDA"); }
std::int64_t GpuDecoder::step_cache_bytes(std::int64_t, std::int64_t) const { fail("no CUDA"); }
std::string GpuDecoder::describe() const { fail("no CUDA"); }
std::string GpuDecoder::profile_step() { fail("no CUDA"); }
double gpu_copy_bandwidth(std::int64_t) { fail("no CUDA"); }

}  // namespace scratchlm
#endif
