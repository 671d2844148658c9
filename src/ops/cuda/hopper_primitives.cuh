// Hopper (sm_90a) building blocks for the wgmma attention lab, as thin inline-PTX wrappers:
//   shared-memory matrix descriptors for wgmma and the swizzle they assume,
//   mbarriers (init, arrive, expect-tx, parity wait with a watchdog),
//   TMA bulk tensor loads (cp.async.bulk.tensor.3d ... mbarrier::complete_tx::bytes),
//   wgmma fence / commit / wait and the register "fence" that pins accumulators in program order,
//   setmaxnreg and named barriers.
// Every address here is a 32-bit shared-memory address (cvta.to.shared), never a generic pointer.
//
// The swizzle (PTX ISA "shared memory matrix layout"; the same pattern the TMA writes with
// CU_TENSOR_MAP_SWIZZLE_128B / _64B): a tile is stored as rows of R = 128 (or 64) bytes, one row after
// the other; inside each group of 8 rows (an "atom" of 8·R bytes, 1024 or 512) the 16-byte chunk c of
// row r sits at chunk c ^ (r mod 8) (128B) or c ^ ((r / 2) mod 4) (64B). Both are the one formula
//   byte' = byte ^ (((byte >> 7) & mask) << 4),   mask = 7 (128B) or 3 (64B),
// applied to the byte offset from an atom-aligned base: the hardware applies it to the absolute
// address bits, so every tile here starts on a 1024-byte boundary.
#pragma once

#ifndef SCRATCHLM_WGMMA_TU
#error "define SCRATCHLM_WGMMA_TU (a namespace name for this file's copy of the wgmma kernels) before including"
#endif

#include <cuda.h>   // CUtensorMap (types only: the driver entry point is fetched at run time)
#include <cuda_bf16.h>

#include <cstdint>

namespace scratchlm::wgmma {
// SCRATCHLM_WGMMA_TU names an inline namespace per including file (the library's attention_wgmma.cu:
// lib, the lab: lab), so that the two instantiate distinct kernels and watchdog report pointers:
// nothing is defined twice at link time, and each launches its own module's kernels.
inline namespace SCRATCHLM_WGMMA_TU {

// ---- swizzle ---------------------------------------------------------------------------------

// The byte offset at which the TMA (and wgmma's descriptor) put logical byte `off` of a tile whose
// rows are `row_bytes` (128 or 64) long. Host and device: the lab fills and reads tiles with it.
__host__ __device__ constexpr std::uint32_t swizzle_offset(std::uint32_t off, int row_bytes) {
  const std::uint32_t mask = row_bytes == 128 ? 7u : 3u;
  return off ^ (((off >> 7) & mask) << 4);
}

// Geometry of a (rows × D) bf16 tile as the TMA writes it: D split into column sub-tiles of
// kSubCols (64 columns = 128-byte rows, SWIZZLE_128B; for D = 32, 32 columns = 64-byte rows,
// SWIZZLE_64B), each sub-tile rows × kRowBytes, stored one after the other.
template <int D>
struct HeadTile {
  static_assert(D == 32 || D == 64 || D == 128, "head dims 32, 64, 128");
  static constexpr int kSubCols = D >= 64 ? 64 : 32;
  static constexpr int kSubs = D / kSubCols;
  static constexpr int kRowBytes = kSubCols * 2;
  static constexpr int kAtomBytes = 8 * kRowBytes;                 // SBO: 8 rows
  static constexpr std::uint64_t kDescLayout = kRowBytes == 128 ? 1 : 2;   // descriptor bits 62-63
  __host__ __device__ static constexpr int sub_bytes(int rows) { return rows * kRowBytes; }
  __host__ __device__ static constexpr int bytes(int rows) { return rows * D * 2; }
  // Byte offset of element (r, c) from the tile's base.
  __host__ __device__ static constexpr std::uint32_t offset(int rows, int r, int c) {
    return static_cast<std::uint32_t>((c / kSubCols) * sub_bytes(rows)) +
           swizzle_offset(static_cast<std::uint32_t>(r * kRowBytes + (c % kSubCols) * 2), kRowBytes);
  }
};

// ---- wgmma shared-memory descriptors -----------------------------------------------------------
// 64-bit descriptor (PTX ISA "matrix descriptor"; cute::GmmaDescriptor): bits 0-13 start address >> 4,
// 16-29 leading-dimension byte offset (LBO) >> 4, 32-45 stride-dimension byte offset (SBO) >> 4,
// 49-51 base offset (0: every tile is atom-aligned), 62-63 layout (1 = 128B swizzle, 2 = 64B).
__device__ __forceinline__ std::uint64_t make_smem_desc(std::uint32_t addr, std::uint32_t lbo_bytes,
                                                        std::uint32_t sbo_bytes, std::uint64_t layout) {
  std::uint64_t d = 0;
  d |= static_cast<std::uint64_t>((addr & 0x3FFFFu) >> 4);
  d |= static_cast<std::uint64_t>((lbo_bytes >> 4) & 0x3FFFu) << 16;
  d |= static_cast<std::uint64_t>((sbo_bytes >> 4) & 0x3FFFu) << 32;
  d |= layout << 62;
  return d;
}

// K-major operand (rows = M or N, the contiguous dimension = K): 16 columns (one k16 step `kk`) of
// the rows starting at row0 (a multiple of 8) of a HeadTile<D> with `rows` rows. Canonical K-major
// layout ((8, m), (8, 2)) : ((row_bytes, SBO), (2 B, 16 B)): SBO = one atom (8 rows) ; LBO is unused
// for swizzled K-major layouts (encoded 1, as CUTLASS does). A k16 step inside a 128-byte row is a
// +32-byte start address (the swizzle is applied to the absolute address, so this stays exact).
template <int D>
__device__ __forceinline__ std::uint64_t kmajor_desc(std::uint32_t tile, int rows, int row0, int kk) {
  using G = HeadTile<D>;
  const int col = kk * 16;
  const std::uint32_t addr = tile + static_cast<std::uint32_t>((col / G::kSubCols) * G::sub_bytes(rows) +
                                                               row0 * G::kRowBytes + (col % G::kSubCols) * 2);
  return make_smem_desc(addr, 16, G::kAtomBytes, G::kDescLayout);
}

// MN-major operand (rows = K, the contiguous dimension = N): k rows [16·kk, 16·kk + 16) of a
// HeadTile<D> with `rows` rows, all D columns as N. Canonical MN-major layout (cute
// make_gmma_desc<Major::MN>): ((W, n), (8, 2)) : ((16 B, LBO), (row_bytes, SBO)) with W = one row of a
// sub-tile; LBO = the step between column sub-tiles (only read when N > kSubCols, i.e. D = 128),
// SBO = one atom (8 rows of k). lbo/sbo are arguments so the lab can probe alternatives; the
// forward passes mnmajor_lbo/sbo.
template <int D>
__host__ __device__ constexpr std::uint32_t mnmajor_lbo(int rows) { return static_cast<std::uint32_t>(HeadTile<D>::sub_bytes(rows)); }
template <int D>
__host__ __device__ constexpr std::uint32_t mnmajor_sbo() { return static_cast<std::uint32_t>(HeadTile<D>::kAtomBytes); }
template <int D>
__device__ __forceinline__ std::uint64_t mnmajor_desc(std::uint32_t tile, int kk, std::uint32_t lbo, std::uint32_t sbo) {
  using G = HeadTile<D>;
  return make_smem_desc(tile + static_cast<std::uint32_t>(kk * 16 * G::kRowBytes), lbo, sbo, G::kDescLayout);
}

// ---- wgmma ordering --------------------------------------------------------------------------

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

// An empty asm that "reads and writes" each register: the compiler may not move accesses of these
// registers across it (cute::warpgroup_fence_operand). Used after wgmma_wait (so no read of an
// accumulator is hoisted above the wait) and before wgmma_fence (so every write lands before it).
template <int N>
__device__ __forceinline__ void fence_operands(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_operands(std::uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// Ordinary shared-memory stores made visible to the async proxy (wgmma, TMA) that reads next.
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// ---- registers and barriers --------------------------------------------------------------------

template <int N>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }

// bar.sync on a named barrier (ids 1..15; 0 is __syncthreads) among `threads` threads.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier ------------------------------------------------------------------------------------

__device__ __forceinline__ void mbar_init(std::uint32_t bar, std::uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the other threads and the async proxy (then barrier).
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// One arrival plus `bytes` more expected from async copies (the phase completes when both are in).
__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(std::uint32_t bar, std::uint32_t parity) {
  std::uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

// What a kernel that waited too long leaves for the host (mapped, pinned host memory): the host
// reads it after the launch failed, since a trap kills the context but not host memory.
struct HangReport {
  int hung;          // 1 once some thread timed out
  int tag;           // which wait (see the kernels: role · 1e6 + stage · 1e4 + iteration)
  int block_x, block_y, thread;
  unsigned bar, parity;
};
__device__ HangReport* g_hang_report = nullptr;
constexpr unsigned long long kWatchdogNs = 4000000000ull;   // 4 s: every wait here takes microseconds

__device__ __forceinline__ unsigned long long global_timer_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;\n" : "=l"(t));
  return t;
}

__device__ __noinline__ void report_hang_and_trap(int tag, std::uint32_t bar, std::uint32_t parity) {
  HangReport* r = g_hang_report;
  if (r != nullptr && atomicCAS(&r->hung, 0, 1) == 0) {
    volatile HangReport* v = r;
    v->tag = tag;
    v->block_x = static_cast<int>(blockIdx.x);
    v->block_y = static_cast<int>(blockIdx.y);
    v->thread = static_cast<int>(threadIdx.x);
    v->bar = bar;
    v->parity = parity;
    __threadfence_system();
  }
  __trap();
}

// Waits until the phase with parity `parity` of the barrier has completed. A phase k (0-based)
// completes with parity k & 1; a fresh barrier is in phase 0, and waiting on parity 1 returns at once.
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity, int tag) {
  if (mbar_try_wait(bar, parity)) return;
  const unsigned long long t0 = global_timer_ns();
  while (!mbar_try_wait(bar, parity)) {
    if (global_timer_ns() - t0 > kWatchdogNs) report_hang_and_trap(tag, bar, parity);
  }
}

// ---- TMA -------------------------------------------------------------------------------------------

__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<std::uint64_t>(map)) : "memory");
}

// One box of a 3-D tensor map at coordinates (c0 innermost, c1, c2) into shared memory at dst
// (1024-byte aligned for the swizzled maps here), completing `box bytes` of transactions on bar.
// Out-of-range rows are zero-filled and still counted.
__device__ __forceinline__ void tma_load_3d(std::uint32_t dst, const CUtensorMap* map, std::uint32_t bar, int c0,
                                            int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// A plain (non-tensor) bulk copy of `bytes` (a multiple of 16; both addresses 16-byte aligned) from
// global memory into shared memory at dst, completing `bytes` of transactions on bar.
__device__ __forceinline__ void bulk_load(std::uint32_t dst, const void* src, std::uint32_t bytes, std::uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(reinterpret_cast<std::uint64_t>(src)), "r"(bytes), "r"(bar)
               : "memory");
}

// ---- small numerics ----------------------------------------------------------------------------------

// 2^x on the MUFU unit, subnormal results flushed (as attention_mma.cu's fast_exp2).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats rounded to nearest-even bf16, lo in the low half (the lower column of a fragment).
__device__ __forceinline__ std::uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  std::uint32_t u;
  memcpy(&u, &v, 4);
  return u;
}

}  // namespace SCRATCHLM_WGMMA_TU
}  // namespace scratchlm::wgmma
