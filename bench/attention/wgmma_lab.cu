// The wgmma attention lab: a staged check of the Hopper building blocks and the forward kernel of
// attention_wgmma.cuh, each stage printing PASS/FAIL with its errors, so that one GPU run tells
// which layer works. Run one stage per process (a trap in a kernel kills the CUDA context; the
// script bench/attention/wgmma_lab.sh does this):
//   wgmma_lab info                 device properties
//   wgmma_lab gemm   [--debug]     stage 1: wgmma alone (descriptors, swizzle, register layouts)
//   wgmma_lab tma    [--debug]     stage 2a: TMA tile loads of strided q/k/v into swizzled smem
//   wgmma_lab pipe                 stage 2b: the forward's producer/consumer rings, checksummed
//   wgmma_lab fwd    [--variant NAME] [--debug]   stage 3: forward vs CPU fp64 and attention_forward_mma_sync
//   wgmma_lab time   [--variant NAME]             stage 4: forward timing vs attention_forward_mma_sync
//   wgmma_lab bpipe  [--debug]     stage 5a: the backward's producer/consumer rings, checksummed
//   wgmma_lab bwd    [--variant NAME] [--debug]   stage 5: backward vs CPU fp64 and attention_backward_mma
//   wgmma_lab btime  [--variant NAME]             stage 6: backward and forward + backward timing
// --debug prints the first wrong elements with their indices (and, for the GEMM stage, where the
// wrong value would have been right), to map layout bugs.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#define SCRATCHLM_WGMMA_TU lab
#include "ops/cuda/attention_wgmma.cuh"
#include "ops/cuda/attention_wgmma_bwd.cuh"
#include "ops/cuda/attention_cuda.h"
#include "tensor/bf16.h"

using namespace scratchlm::wgmma;
using scratchlm::Bf16;
using scratchlm::to_bf16;
using scratchlm::to_float;

namespace {

bool g_debug = false;

// ---- host helpers ------------------------------------------------------------------------------

template <typename T>
struct DevBuf {
  T* p = nullptr;
  std::size_t n = 0;
  DevBuf() = default;
  explicit DevBuf(std::size_t count) : n(count) { LAB_CUDA(cudaMalloc(&p, std::max<std::size_t>(count, 1) * sizeof(T))); }
  ~DevBuf() { if (p) cudaFree(p); }
  DevBuf(DevBuf&& o) noexcept : p(std::exchange(o.p, nullptr)), n(std::exchange(o.n, 0)) {}
  DevBuf& operator=(DevBuf&& o) noexcept { std::swap(p, o.p); std::swap(n, o.n); return *this; }
  DevBuf(const DevBuf&) = delete;
  std::size_t bytes() const { return n * sizeof(T); }
  void upload(const std::vector<T>& h) { LAB_CUDA(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> download() const {
    std::vector<T> h(n);
    LAB_CUDA(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

std::vector<Bf16> random_bf16(std::size_t n, std::uint32_t seed, float sigma = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, sigma);
  std::vector<Bf16> h(n);
  for (auto& x : h) x = to_bf16(dist(rng));
  return h;
}

// Parallel loop over [0, n) on all host cores (the CPU references, the big inputs).
void parallel_for(std::int64_t n, const std::function<void(std::int64_t)>& f) {
  const int workers = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  std::atomic<std::int64_t> next{0};
  for (int w = 0; w < workers; ++w)
    pool.emplace_back([&] {
      for (std::int64_t i; (i = next.fetch_add(1)) < n;) f(i);
    });
  for (auto& t : pool) t.join();
}

// Large inputs for the timing stage: a pool of 65536 normal draws indexed by a hash of the position
// (splitmix64), filled in parallel: ~1 ns per element instead of ~20 for std::normal_distribution.
std::vector<Bf16> random_bf16_fast(std::size_t n, std::uint64_t seed) {
  const std::vector<Bf16> pool = random_bf16(65536, static_cast<std::uint32_t>(seed));
  std::vector<Bf16> h(n);
  constexpr std::int64_t kChunk = 1 << 20;
  parallel_for((static_cast<std::int64_t>(n) + kChunk - 1) / kChunk, [&](std::int64_t c) {
    const std::size_t end = std::min(n, static_cast<std::size_t>(c + 1) * kChunk);
    for (std::size_t i = static_cast<std::size_t>(c) * kChunk; i < end; ++i) {
      std::uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull + seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      h[i] = pool[(z ^ (z >> 31)) & 0xFFFF];
    }
  });
  return h;
}

HangReport* g_hang_host = nullptr;

void setup_hang_report() {
  LAB_CUDA(cudaHostAlloc(&g_hang_host, sizeof(HangReport), cudaHostAllocMapped));
  std::memset(g_hang_host, 0, sizeof(HangReport));
  HangReport* dev = nullptr;
  LAB_CUDA(cudaHostGetDevicePointer(&dev, g_hang_host, 0));
  LAB_CUDA(cudaMemcpyToSymbol(g_hang_report, &dev, sizeof(dev)));
}

// After a failed synchronisation: what the watchdog saw, if it fired.
void print_hang_report() {
  if (g_hang_host != nullptr && g_hang_host->hung)
    std::printf("  WATCHDOG: block (%d, %d) thread %d waited > %.0f s on barrier 0x%x parity %u, tag %d\n",
                g_hang_host->block_x, g_hang_host->block_y, g_hang_host->thread, kWatchdogNs * 1e-9,
                g_hang_host->bar, g_hang_host->parity, g_hang_host->tag);
}

void sync_or_throw(const char* what) {
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    print_hang_report();
    throw CudaError(std::string(what) + ": " + cudaGetErrorString(e));
  }
}

struct Tally {
  int pass = 0, fail = 0;
  void add(bool ok) { (ok ? pass : fail)++; }
};

const char* verdict(bool ok) { return ok ? "PASS" : "FAIL"; }

std::uint16_t bits(Bf16 x) { return x.bits; }

__device__ __forceinline__ std::uint32_t bf16_pair_bits(const bf16* p) {
  return static_cast<std::uint32_t>(__bfloat16_as_ushort(p[0])) |
         (static_cast<std::uint32_t>(__bfloat16_as_ushort(p[1])) << 16);
}

// Fills a HeadTile<D> of `rows` rows at shared address `tile` (generic pointer `gtile`) from a
// row-major (rows × D) global matrix with ordinary stores, by the swizzle formula.
template <int D>
__device__ void fill_tile(unsigned char* gtile, int rows, const bf16* src) {
  for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
    const int r = i / D, c = i % D;
    *reinterpret_cast<bf16*>(gtile + HeadTile<D>::offset(rows, r, c)) = src[i];
  }
}

// ---- stage 1: wgmma alone ------------------------------------------------------------------------
// Block of 3 warpgroups like the forward: warpgroup 0 only helps fill shared memory, warpgroups 1
// and 2 (warps 4-11) each compute 64 of the 128 rows, so the warp-in-warpgroup indexing is exercised.

// C (128 × N) = A (128 × D) · Bᵀ, B (N × D): the Q Kᵀ product (the forward's issue_qk), both
// operands K-major from smem.
template <int D, int N>
__global__ void __launch_bounds__(384, 1) gemm_qk_kernel(const bf16* A, const bf16* B, float* C) {
  extern __shared__ unsigned char raw[];
  const std::uint32_t base = (smem_u32(raw) + 1023u) & ~1023u;
  unsigned char* gbase = raw + (base - smem_u32(raw));
  const std::uint32_t sA = base, sB = base + HeadTile<D>::bytes(128);
  fill_tile<D>(gbase, 128, A);
  fill_tile<D>(gbase + HeadTile<D>::bytes(128), N, B);
  fence_proxy_async_smem();
  __syncthreads();
  const int wg = threadIdx.x / 128;
  if (wg == 0) return;
  const int c = wg - 1, lt = threadIdx.x % 128, warp = lt / 32, g = (lt % 32) / 4, t = lt % 4;
  float acc[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) acc[i] = 0.f;
  issue_qk<D, N>(acc, sA, 128, 64 * c, sB);
  wgmma_wait<0>();
  fence_operands(acc);
#pragma unroll
  for (int i = 0; i < N / 2; ++i) C[(64 * c + acc_row(i, warp, g)) * N + acc_col(i, t)] = acc[i];
}

// C (128 × D) = A (128 × KN, fragments loaded from global straight into registers) · V (KN × D,
// MN-major from smem): the P V product (the forward's issue_pv) with the descriptor's LBO/SBO given.
template <int D, int KN>
__global__ void __launch_bounds__(384, 1) gemm_pv_kernel(const bf16* A, const bf16* V, float* C, std::uint32_t lbo,
                                                        std::uint32_t sbo) {
  extern __shared__ unsigned char raw[];
  const std::uint32_t base = (smem_u32(raw) + 1023u) & ~1023u;
  unsigned char* gbase = raw + (base - smem_u32(raw));
  fill_tile<D>(gbase, KN, V);
  fence_proxy_async_smem();
  __syncthreads();
  const int wg = threadIdx.x / 128;
  if (wg == 0) return;
  const int c = wg - 1, lt = threadIdx.x % 128, warp = lt / 32, g = (lt % 32) / 4, t = lt % 4;
  std::uint32_t a[KN / 4];
#pragma unroll
  for (int kk = 0; kk < KN / 16; ++kk)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      a[4 * kk + j] = bf16_pair_bits(A + (64 * c + afrag_row(j, warp, g)) * KN + afrag_col(kk, j, t));
  float acc[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) acc[i] = 0.f;
  issue_pv<D, KN>(acc, a, base, lbo, sbo);
  wgmma_wait<0>();
  fence_operands(acc);
#pragma unroll
  for (int i = 0; i < D / 2; ++i) C[(64 * c + acc_row(i, warp, g)) * D + acc_col(i, t)] = acc[i];
}

// O (128 × D) = bf16(Q Kᵀ) V with Q (128 × D), K, V (N × D): the forward's data path without the
// softmax, S kept in registers and turned into A fragments by acc_to_bf16_afrags.
template <int D, int N>
__global__ void __launch_bounds__(384, 1) gemm_chain_kernel(const bf16* Q, const bf16* K, const bf16* V, float* O) {
  extern __shared__ unsigned char raw[];
  const std::uint32_t base = (smem_u32(raw) + 1023u) & ~1023u;
  unsigned char* gbase = raw + (base - smem_u32(raw));
  const std::uint32_t sQ = base, sK = sQ + HeadTile<D>::bytes(128), sV = sK + HeadTile<D>::bytes(N);
  fill_tile<D>(gbase, 128, Q);
  fill_tile<D>(gbase + (sK - base), N, K);
  fill_tile<D>(gbase + (sV - base), N, V);
  fence_proxy_async_smem();
  __syncthreads();
  const int wg = threadIdx.x / 128;
  if (wg == 0) return;
  const int c = wg - 1, lt = threadIdx.x % 128, warp = lt / 32, g = (lt % 32) / 4, t = lt % 4;
  float s[N / 2], o[D / 2];
  std::uint32_t p[N / 4];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) s[i] = 0.f;
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  issue_qk<D, N>(s, sQ, 128, 64 * c, sK);
  wgmma_wait<0>();
  fence_operands(s);
  acc_to_bf16_afrags<N / 2>(p, s);
  issue_pv<D, N>(o, p, sV, mnmajor_lbo<D>(N), mnmajor_sbo<D>());
  wgmma_wait<0>();
  fence_operands(o);
#pragma unroll
  for (int i = 0; i < D / 2; ++i) O[(64 * c + acc_row(i, warp, g)) * D + acc_col(i, t)] = o[i];
}

// got vs want (rows × cols), with `scale` the sum of |terms| of each element: an element passes
// when |got − want| ≤ tol · scale + 1e-6. Debug: the first failures, and where in `want` a value
// equal to the wrong one sits (a transposed or shifted layout shows up as a pattern there).
bool check_matrix(const char* name, const std::vector<float>& got, const std::vector<double>& want,
                  const std::vector<double>& scale, int rows, int cols, double tol) {
  double max_err = 0, max_rel = 0;
  int bad = 0;
  for (int i = 0; i < rows * cols; ++i) {
    const double e = std::fabs(got[i] - want[i]);
    const bool ok = std::isfinite(got[i]) && e <= tol * scale[i] + 1e-6;
    if (!std::isfinite(got[i])) max_err = INFINITY;
    else max_err = std::max(max_err, e);
    max_rel = std::max(max_rel, e / (scale[i] + 1e-30));
    if (!ok) {
      if (g_debug && bad < 12) {
        int best = -1;
        double best_d = 1e30;
        for (int j = 0; j < rows * cols; ++j) {
          const double d = std::fabs(want[j] - got[i]);
          if (d < best_d) best_d = d, best = j;
        }
        std::printf("    [%s] C[%d][%d] = %.6g, want %.6g; nearest wanted value at C[%d][%d] (%.6g)\n", name, i / cols,
                    i % cols, got[i], want[i], best / cols, best % cols, want[best]);
      }
      ++bad;
    }
  }
  const bool ok = bad == 0;
  std::printf("STAGE gemm %-34s max_err %.3e  max_rel %.3e  wrong %6d / %d  %s\n", name, max_err, max_rel, bad,
              rows * cols, verdict(ok));
  return ok;
}

std::vector<double> to_double(const std::vector<Bf16>& x) {
  std::vector<double> d(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) d[i] = to_float(x[i]);
  return d;
}

// want = A (M × K) · B in fp64, B given (K × N) or, with b_rows_are_n, as (N × K); scale = Σ|terms|.
void reference_product(const std::vector<double>& a, const std::vector<double>& b, int M, int N, int K,
                       bool b_rows_are_n, std::vector<double>& want, std::vector<double>& scale) {
  want.assign(static_cast<std::size_t>(M) * N, 0.0);
  scale.assign(static_cast<std::size_t>(M) * N, 0.0);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0, m = 0;
      for (int k = 0; k < K; ++k) {
        const double term = a[i * K + k] * (b_rows_are_n ? b[j * K + k] : b[k * N + j]);
        s += term;
        m += std::fabs(term);
      }
      want[i * N + j] = s, scale[i * N + j] = m;
    }
}

template <int D, int N>
bool test_qk(std::uint32_t seed) {
  auto hA = random_bf16(128 * D, seed), hB = random_bf16(N * D, seed + 1);
  DevBuf<Bf16> A(hA.size()), B(hB.size());
  A.upload(hA);
  B.upload(hB);
  DevBuf<float> C(128 * N);
  LAB_CUDA(cudaMemset(C.p, 0xFF, C.bytes()));   // NaN poison
  const int smem = 1024 + HeadTile<D>::bytes(128) + HeadTile<D>::bytes(N);
  LAB_CUDA(cudaFuncSetAttribute(gemm_qk_kernel<D, N>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  gemm_qk_kernel<D, N><<<1, 384, smem>>>(reinterpret_cast<const bf16*>(A.p), reinterpret_cast<const bf16*>(B.p), C.p);
  LAB_CUDA(cudaGetLastError());
  sync_or_throw("gemm_qk_kernel");
  std::vector<double> want, scale;
  reference_product(to_double(hA), to_double(hB), 128, N, D, true, want, scale);
  const std::string name = "qk  SS K-major D=" + std::to_string(D) + " N=" + std::to_string(N) +
                           (HeadTile<D>::kRowBytes == 128 ? " sw128" : " sw64");
  return check_matrix(name.c_str(), C.download(), want, scale, 128, N, 1e-3);
}

template <int D, int KN>
bool test_pv(std::uint32_t seed, std::uint32_t lbo, std::uint32_t sbo, const char* label) {
  auto hA = random_bf16(128 * KN, seed), hV = random_bf16(KN * D, seed + 1);
  DevBuf<Bf16> A(hA.size()), V(hV.size());
  A.upload(hA);
  V.upload(hV);
  DevBuf<float> C(128 * D);
  LAB_CUDA(cudaMemset(C.p, 0xFF, C.bytes()));
  const int smem = 1024 + HeadTile<D>::bytes(KN);
  LAB_CUDA(cudaFuncSetAttribute(gemm_pv_kernel<D, KN>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  gemm_pv_kernel<D, KN><<<1, 384, smem>>>(reinterpret_cast<const bf16*>(A.p), reinterpret_cast<const bf16*>(V.p), C.p,
                                          lbo, sbo);
  LAB_CUDA(cudaGetLastError());
  sync_or_throw("gemm_pv_kernel");
  std::vector<double> want, scale;
  reference_product(to_double(hA), to_double(hV), 128, D, KN, false, want, scale);
  const std::string name = std::string("pv  RS MN-major D=") + std::to_string(D) + " K=" + std::to_string(KN) + " " + label;
  return check_matrix(name.c_str(), C.download(), want, scale, 128, D, 1e-3);
}

template <int D, int N>
bool test_chain(std::uint32_t seed) {
  auto hQ = random_bf16(128 * D, seed, 0.5f), hK = random_bf16(N * D, seed + 1, 0.5f), hV = random_bf16(N * D, seed + 2);
  DevBuf<Bf16> Q(hQ.size()), K(hK.size()), V(hV.size());
  Q.upload(hQ);
  K.upload(hK);
  V.upload(hV);
  DevBuf<float> O(128 * D);
  LAB_CUDA(cudaMemset(O.p, 0xFF, O.bytes()));
  const int smem = 1024 + HeadTile<D>::bytes(128) + 2 * HeadTile<D>::bytes(N);
  LAB_CUDA(cudaFuncSetAttribute(gemm_chain_kernel<D, N>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  gemm_chain_kernel<D, N><<<1, 384, smem>>>(reinterpret_cast<const bf16*>(Q.p), reinterpret_cast<const bf16*>(K.p),
                                            reinterpret_cast<const bf16*>(V.p), O.p);
  LAB_CUDA(cudaGetLastError());
  sync_or_throw("gemm_chain_kernel");
  // P = bf16(S) as the kernel rounds its fp32 S; fp32 and fp64 S may round to neighbouring bf16
  // values, an error of at most 2^-8 relative per term, hence the tolerance 1e-2 of Σ|P V|.
  std::vector<double> S, unused, want, scale;
  reference_product(to_double(hQ), to_double(hK), 128, N, D, true, S, unused);
  for (double& x : S) x = to_float(to_bf16(static_cast<float>(x)));
  reference_product(S, to_double(hV), 128, D, N, false, want, scale);
  const std::string name = "chain bf16(Q Kt) V D=" + std::to_string(D) + " N=" + std::to_string(N);
  return check_matrix(name.c_str(), O.download(), want, scale, 128, D, 1e-2);
}

int stage_gemm() {
  Tally tally;
  auto run = [&](const char* what, const std::function<bool()>& f) {
    try {
      tally.add(f());
    } catch (const std::exception& e) {
      std::printf("STAGE gemm %-34s ERROR %s  FAIL\n", what, e.what());
      tally.add(false);
    }
  };
  run("qk D=64", [] { return test_qk<64, 128>(11); });
  run("qk D=128", [] { return test_qk<128, 128>(12); });
  run("qk D=32", [] { return test_qk<32, 128>(13); });
  run("qk D=64 N=64", [] { return test_qk<64, 64>(14); });
  run("pv D=64", [] { return test_pv<64, 128>(21, mnmajor_lbo<64>(128), mnmajor_sbo<64>(), "lbo/sbo as forward"); });
  run("pv D=128", [] { return test_pv<128, 128>(22, mnmajor_lbo<128>(128), mnmajor_sbo<128>(), "lbo/sbo as forward"); });
  run("pv D=32", [] { return test_pv<32, 128>(23, mnmajor_lbo<32>(128), mnmajor_sbo<32>(), "lbo/sbo as forward"); });
  // The backward's shapes: tiles of 64 rows as the B operand of both forms (dK/dV's query tiles,
  // dQ's key tiles for D = 128), i.e. N = 64 K-major and K = 64 MN-major (LBO = 64-row sub-tiles).
  run("qk D=128 N=64", [] { return test_qk<128, 64>(15); });
  run("pv D=64 K=64", [] { return test_pv<64, 64>(24, mnmajor_lbo<64>(64), mnmajor_sbo<64>(), "lbo/sbo as backward"); });
  run("pv D=128 K=64", [] { return test_pv<128, 64>(25, mnmajor_lbo<128>(64), mnmajor_sbo<128>(), "lbo/sbo as backward"); });
  run("chain D=64", [] { return test_chain<64, 128>(31); });
  run("chain D=128", [] { return test_chain<128, 128>(32); });
  run("chain D=32", [] { return test_chain<32, 128>(33); });
  // The backward's chains at 64-row tiles: an accumulator of N = 64 packed into A fragments for a
  // product with a 64-row MN-major B (dSᵀ Q, Pᵀ dO of the dK/dV kernel; dS K of dQ at D = 128).
  run("chain D=64 N=64", [] { return test_chain<64, 64>(34); });
  run("chain D=128 N=64", [] { return test_chain<128, 64>(35); });
  std::printf("STAGE gemm SUMMARY %d pass, %d fail\n", tally.pass, tally.fail);
  // Probes (informative, not counted): the other reading of LBO/SBO for the MN-major operand, so a
  // failure of "pv D=128" says at once whether the two offsets are swapped.
  if (tally.fail > 0) {
    try {
      test_pv<128, 128>(22, mnmajor_sbo<128>(), mnmajor_lbo<128>(128), "PROBE lbo<->sbo swapped");
      test_pv<64, 128>(21, mnmajor_sbo<64>(), mnmajor_lbo<64>(128), "PROBE lbo<->sbo swapped");
    } catch (const std::exception& e) {
      std::printf("STAGE gemm probe ERROR %s\n", e.what());
    }
  }
  return tally.fail == 0 ? 0 : 1;
}

// ---- stage 2a: TMA loads -----------------------------------------------------------------------

// One box of `rows` rows at (col0, t0, b) of the map into shared memory, then the raw (swizzled)
// bytes out to `dump`.
template <int D>
__global__ void tma_dump_kernel(const __grid_constant__ CUtensorMap map, unsigned char* dump, int rows, int col0, int t0,
                                int b) {
  extern __shared__ unsigned char raw[];
  const std::uint32_t base = (smem_u32(raw) + 1023u) & ~1023u;
  const unsigned char* gbase = raw + (base - smem_u32(raw));
  using G = HeadTile<D>;
  const int bytes = G::bytes(rows);
  const std::uint32_t bar = base + bytes;
  if (threadIdx.x == 0) {
    mbar_init(bar, 1);
    mbar_fence_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    mbar_arrive_expect_tx(bar, bytes);
    for (int sub = 0; sub < G::kSubs; ++sub)
      tma_load_3d(base + sub * G::sub_bytes(rows), &map, bar, col0 + sub * G::kSubCols, t0, b);
  }
  mbar_wait(bar, 0, 7000000);
  for (int i = threadIdx.x; i < bytes / 16; i += blockDim.x)
    reinterpret_cast<uint4*>(dump)[i] = reinterpret_cast<const uint4*>(gbase)[i];
}

template <int D>
bool test_tma(int B, int T, int H, int rows, int b, int which, int h, int t0) {
  const std::int64_t C = static_cast<std::int64_t>(H) * D;
  auto hqkv = random_bf16(static_cast<std::size_t>(B) * T * 3 * C, 100 + D + rows + t0);
  DevBuf<Bf16> qkv(hqkv.size());
  qkv.upload(hqkv);
  const int bytes = HeadTile<D>::bytes(rows);
  DevBuf<unsigned char> dump(bytes);
  LAB_CUDA(cudaMemset(dump.p, 0xAB, dump.bytes()));
  const CUtensorMap map = make_qkv_map<D>(reinterpret_cast<const bf16*>(qkv.p), B, T, H, rows);
  const int smem = 1024 + bytes + 64;
  LAB_CUDA(cudaFuncSetAttribute(tma_dump_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const int col0 = which * static_cast<int>(C) + h * D;
  tma_dump_kernel<D><<<1, 128, smem>>>(map, dump.p, rows, col0, t0, b);
  LAB_CUDA(cudaGetLastError());
  sync_or_throw("tma_dump_kernel");
  const auto got = dump.download();
  int bad = 0;
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < D; ++c) {
      const std::uint16_t want =
          t0 + r < T ? bits(hqkv[(static_cast<std::size_t>(b) * T + t0 + r) * 3 * C + col0 + c]) : std::uint16_t{0};
      std::uint16_t g;
      std::memcpy(&g, got.data() + HeadTile<D>::offset(rows, r, c), 2);
      if (g != want) {
        if (g_debug && bad < 12)
          std::printf("    tile (%d, %d): got 0x%04x want 0x%04x (row %d of the sequence)\n", r, c, g, want, t0 + r);
        ++bad;
      }
    }
  const bool ok = bad == 0;
  std::printf("STAGE tma  D=%-3d box rows %3d  b=%d %c h=%d t0=%-4d (T=%d%s)  wrong %6d / %d  %s\n", D, rows, b,
              "qkv"[which], h, t0, T, t0 + rows > T ? ", ragged" : "", bad, rows * D, verdict(ok));
  return ok;
}

// ---- stage 2b: the forward's rings with a checksum consumer --------------------------------------
// Same configuration, shared-memory layout, barrier protocol and producer (fwd_produce) as the
// forward; the consumers, instead of wgmma, sum the tiles they receive (read through the swizzle
// formula) weighted by (row % 7) + 1, in double: exact for bf16 inputs, so any lost, repeated,
// misplaced or stale tile, or a non-zero row past T, changes the sums.
// sums (B·H, m_blocks, kWG + 2, D): slot c < kWG is the Q rows of consumer c, slot kWG all K
// rows visited, slot kWG + 1 all V rows.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    pipe_checksum_kernel(const __grid_constant__ CUtensorMap tmap_q, const __grid_constant__ CUtensorMap tmap_kv,
                         double* sums, int T, int H) {
  constexpr int D = Cfg::D;
  using G = typename Cfg::Tile;
  extern __shared__ unsigned char smem_raw[];
  const FwdSmem<Cfg> sm(smem_raw);
  const unsigned char* gbase = smem_raw + (sm.base - smem_u32(smem_raw));
  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int mb = gridDim.y - 1 - blockIdx.y;
  const int q0 = mb * Cfg::kBlockM;
  const int n_tiles = fwd_key_tiles<Cfg>(q0, T);
  fwd_init_barriers<Cfg>(sm);
  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) fwd_produce<Cfg>(sm, &tmap_q, &tmap_kv, b, h * D, H * D, q0, n_tiles);
  } else {
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    const int c = wg - 1, lt = threadIdx.x % 128;
    double* out = sums + ((static_cast<std::int64_t>(bh) * gridDim.y + mb) * (Cfg::kWG + 2)) * D;
    auto tile_val = [&](std::uint32_t tile, int rows, int r, int col) {
      const bf16 v = *reinterpret_cast<const bf16*>(gbase + (tile - sm.base) + G::offset(rows, r, col));
      return static_cast<double>(__bfloat162float(v));
    };
    mbar_wait(sm.bar_q(), 0, kTagQ);
    if (lt < D) {
      double acc = 0;
      for (int r = 0; r < 64; ++r)
        acc += tile_val(sm.q(), Cfg::kBlockM, 64 * c + r, lt) * ((q0 + 64 * c + r) % 7 + 1);
      out[c * D + lt] = acc;
    }
    double acc_k = 0, acc_v = 0;
    auto consume = [&](int it, bool is_v) {
      const int s = it % Cfg::kStages, ph = (it / Cfg::kStages) & 1;
      mbar_wait(is_v ? sm.v_full(s) : sm.k_full(s), ph, (is_v ? kTagVFull : kTagKFull) + it);
      if (c == 0 && lt < D) {
        const int n0 = (n_tiles - 1 - it) * Cfg::kBlockN;
        double acc = 0;
        for (int r = 0; r < Cfg::kBlockN; ++r)
          acc += tile_val(is_v ? sm.v(s) : sm.k(s), Cfg::kBlockN, r, lt) * ((n0 + r) % 7 + 1);
        (is_v ? acc_v : acc_k) += acc;
      }
      release(is_v ? sm.v_empty(s) : sm.k_empty(s));
    };
    consume(0, false);
    for (int it = 1; it < n_tiles; ++it) {
      consume(it, false);
      consume(it - 1, true);
    }
    consume(n_tiles - 1, true);
    if (c == 0 && lt < D) {
      out[Cfg::kWG * D + lt] = acc_k;
      out[(Cfg::kWG + 1) * D + lt] = acc_v;
    }
  }
}

template <class Cfg>
bool test_pipe(int B, int T, int H) {
  constexpr int D = Cfg::D;
  const std::int64_t C = static_cast<std::int64_t>(H) * D;
  auto hqkv = random_bf16(static_cast<std::size_t>(B) * T * 3 * C, 200 + T);
  DevBuf<Bf16> qkv(hqkv.size());
  qkv.upload(hqkv);
  const int mblocks = (T + Cfg::kBlockM - 1) / Cfg::kBlockM;
  const std::size_t nsum = static_cast<std::size_t>(B) * H * mblocks * (Cfg::kWG + 2) * D;
  DevBuf<double> sums(nsum);
  LAB_CUDA(cudaMemset(sums.p, 0xFF, sums.bytes()));
  const bf16* x = reinterpret_cast<const bf16*>(qkv.p);
  const CUtensorMap tq = make_qkv_map<D>(x, B, T, H, Cfg::kBlockM), tkv = make_qkv_map<D>(x, B, T, H, Cfg::kBlockN);
  LAB_CUDA(cudaFuncSetAttribute(pipe_checksum_kernel<Cfg>, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
  pipe_checksum_kernel<Cfg><<<dim3(B * H, mblocks), Cfg::kThreads, Cfg::kSmemBytes>>>(tq, tkv, sums.p, T, H);
  LAB_CUDA(cudaGetLastError());
  sync_or_throw("pipe_checksum_kernel");
  const auto got = sums.download();
  auto val = [&](int b, int t, int which, int h, int d) {
    return static_cast<double>(to_float(hqkv[(static_cast<std::size_t>(b) * T + t) * 3 * C + which * C + h * D + d]));
  };
  int bad = 0;
  double max_diff = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int mb = 0; mb < mblocks; ++mb) {
        const int q0 = mb * Cfg::kBlockM;
        const int n_keys = std::min(T, fwd_key_tiles<Cfg>(q0, T) * Cfg::kBlockN);
        const double* g = got.data() + ((static_cast<std::size_t>(b) * H + h) * mblocks + mb) * (Cfg::kWG + 2) * D;
        for (int d = 0; d < D; ++d) {
          std::vector<double> want(Cfg::kWG + 2, 0.0);
          for (int c = 0; c < Cfg::kWG; ++c)
            for (int r = 0; r < 64; ++r) {
              const int t = q0 + 64 * c + r;
              if (t < T) want[c] += val(b, t, 0, h, d) * (t % 7 + 1);
            }
          for (int t = 0; t < n_keys; ++t) {
            want[Cfg::kWG] += val(b, t, 1, h, d) * (t % 7 + 1);
            want[Cfg::kWG + 1] += val(b, t, 2, h, d) * (t % 7 + 1);
          }
          for (int slot = 0; slot < Cfg::kWG + 2; ++slot) {
            const double diff = std::fabs(g[slot * D + d] - want[slot]);
            max_diff = std::isfinite(diff) ? std::max(max_diff, diff) : INFINITY;
            if (!(diff <= 1e-9 * (1 + std::fabs(want[slot])))) {
              if (g_debug && bad < 12)
                std::printf("    b=%d h=%d mblock=%d slot %d (%s) d=%d: got %.9g want %.9g\n", b, h, mb, slot,
                            slot < Cfg::kWG ? "Q" : slot == Cfg::kWG ? "K" : "V", d, g[slot * D + d], want[slot]);
              ++bad;
            }
          }
        }
      }
  const bool ok = bad == 0;
  std::printf("STAGE pipe D=%-3d WG=%d BlockN=%d stages=%d %-9s B=%d T=%-5d H=%d  max_diff %.3e  wrong %5d / %zu  %s\n", D,
              Cfg::kWG, Cfg::kBlockN, Cfg::kStages, Cfg::kCausal ? "causal" : "noncausal", B, T, H, max_diff, bad, nsum,
              verdict(ok));
  return ok;
}

int stage_tma() {
  Tally tally;
  auto run = [&](const std::function<bool()>& f) {
    try {
      tally.add(f());
    } catch (const std::exception& e) {
      std::printf("STAGE tma  ERROR %s  FAIL\n", e.what());
      tally.add(false);
    }
  };
  // In-range boxes first, then ragged ones (rows past T zero-filled): a transaction count that does
  // not include the filled rows would hang those, and the watchdog's trap ends the process.
  for (int rows : {64, 128, 192}) {
    run([&] { return test_tma<64>(2, 300, 3, rows, 0, 0, 0, 0); });
    run([&] { return test_tma<128>(2, 300, 3, rows, 1, 1, 1, 64); });
    run([&] { return test_tma<32>(2, 300, 3, rows, 1, 2, 2, 100); });
  }
  for (int rows : {128, 192}) {
    run([&] { return test_tma<64>(2, 300, 3, rows, 1, 2, 2, 300 - 37); });
    run([&] { return test_tma<128>(2, 300, 3, rows, 0, 1, 0, 256); });
    run([&] { return test_tma<32>(2, 300, 3, rows, 1, 0, 1, 250); });
    run([&] { return test_tma<64>(1, 50, 2, rows, 0, 1, 1, 0); });   // T shorter than one box
  }
  std::printf("STAGE tma SUMMARY %d pass, %d fail\n", tally.pass, tally.fail);
  return tally.fail == 0 ? 0 : 1;
}

int stage_pipe() {
  Tally tally;
  auto run = [&](const std::function<bool()>& f) {
    try {
      tally.add(f());
    } catch (const std::exception& e) {
      std::printf("STAGE pipe ERROR %s  FAIL\n", e.what());
      tally.add(false);
    }
  };
  run([] { return test_pipe<FwdConfig<64, 2, 128, 2, false, true>>(2, 1000, 3); });
  run([] { return test_pipe<FwdConfig<64, 2, 128, 2, true, true>>(2, 1000, 3); });
  run([] { return test_pipe<FwdConfig<64, 3, 128, 2, true, true>>(1, 4096, 2); });
  run([] { return test_pipe<FwdConfig<128, 2, 128, 2, false, true>>(1, 4096, 2); });
  run([] { return test_pipe<FwdConfig<32, 3, 128, 2, true, true>>(3, 777, 2); });
  run([] { return test_pipe<FwdConfig<64, 2, 128, 2, true, true>>(1, 70, 1); });
  std::printf("STAGE pipe SUMMARY %d pass, %d fail\n", tally.pass, tally.fail);
  return tally.fail == 0 ? 0 : 1;
}

// ---- stage 3: the forward --------------------------------------------------------------------------

struct FwdVariant {
  const char* name;
  int D;
  void (*run)(bf16* out, float* lse, const bf16* qkv, int B, int T, int H, bool causal, cudaStream_t stream);
};

template <int D, int kWG, bool kOverlap>
void run_variant(bf16* out, float* lse, const bf16* qkv, int B, int T, int H, bool causal, cudaStream_t stream) {
  if (causal)
    attention_forward_wgmma<FwdConfig<D, kWG, 128, 2, true, kOverlap>>(out, lse, qkv, B, T, H, stream);
  else
    attention_forward_wgmma<FwdConfig<D, kWG, 128, 2, false, kOverlap>>(out, lse, qkv, B, T, H, stream);
}

// name: d<D>_wg<consumer warpgroups>_<ov: Q Kᵀ of tile j+1 overlaps the softmax of j | seq: no overlap>
const FwdVariant kVariants[] = {
    {"d64_wg2_ov", 64, run_variant<64, 2, true>},   {"d64_wg3_ov", 64, run_variant<64, 3, true>},
    {"d64_wg2_seq", 64, run_variant<64, 2, false>}, {"d128_wg2_ov", 128, run_variant<128, 2, true>},
    {"d128_wg2_seq", 128, run_variant<128, 2, false>}, {"d32_wg3_ov", 32, run_variant<32, 3, true>},
    {"d32_wg2_ov", 32, run_variant<32, 2, true>},
};

// CPU reference in double from the bf16 inputs: out row (D) and lse of query `row` of (b, h):
// s_j = q·k_j / sqrt(D) over the keys j ≤ row (causal) or all, m = max s, l = Σ exp(s − m),
// out = Σ exp(s_j − m) v_j / l, lse = m + log l.
void cpu_attention_row(const std::vector<Bf16>& qkv, int T, int H, int D, int b, int h, int row, bool causal,
                       double* out_row, double* lse) {
  const std::int64_t C = static_cast<std::int64_t>(H) * D;
  const Bf16* seq = qkv.data() + static_cast<std::size_t>(b) * T * 3 * C + h * D;   // q of token t at seq + t·3C
  const int n = causal ? row + 1 : T;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> q(D), s(n);
  for (int d = 0; d < D; ++d) q[d] = to_float(seq[static_cast<std::size_t>(row) * 3 * C + d]);
  double m = -INFINITY;
  for (int j = 0; j < n; ++j) {
    const Bf16* k = seq + static_cast<std::size_t>(j) * 3 * C + C;
    double acc = 0;
    for (int d = 0; d < D; ++d) acc += q[d] * to_float(k[d]);
    s[j] = acc * scale;
    m = std::max(m, s[j]);
  }
  double l = 0;
  for (int j = 0; j < n; ++j) l += (s[j] = std::exp(s[j] - m));
  for (int d = 0; d < D; ++d) out_row[d] = 0;
  for (int j = 0; j < n; ++j) {
    const Bf16* v = seq + static_cast<std::size_t>(j) * 3 * C + 2 * C;
    for (int d = 0; d < D; ++d) out_row[d] += s[j] * to_float(v[d]);
  }
  for (int d = 0; d < D; ++d) out_row[d] /= l;
  *lse = m + std::log(l);
}

struct RowSet {   // the (b, h, row) triples checked
  std::vector<std::array<int, 3>> rows;
};

RowSet pick_rows(int B, int H, int T, int D, std::uint32_t seed) {
  RowSet rs;
  const double work = static_cast<double>(B) * H * T * static_cast<double>(T) * D;
  if (work <= 1.2e9) {
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int t = 0; t < T; ++t) rs.rows.push_back({b, h, t});
  } else {   // sampled: the first and last rows of a few heads, and random rows
    std::mt19937 rng(seed);
    for (int i = 0; i < 4; ++i) {
      const int b = rng() % B, h = rng() % H;
      rs.rows.push_back({b, h, 0});
      rs.rows.push_back({b, h, T - 1});
    }
    for (int i = 0; i < 512; ++i) rs.rows.push_back({static_cast<int>(rng() % B), static_cast<int>(rng() % H),
                                                     static_cast<int>(rng() % T)});
  }
  return rs;
}

struct ErrStats {
  double max_abs = 0, rel = 0, lse_max = 0;
  long nonfinite = 0;
  bool guard_ok = true;
};

struct Reference {
  std::vector<double> out, lse;   // per checked row: D values, 1 value
};

Reference cpu_reference(const std::vector<Bf16>& qkv, int T, int H, int D, bool causal, const RowSet& rs) {
  Reference ref;
  ref.out.resize(rs.rows.size() * D);
  ref.lse.resize(rs.rows.size());
  parallel_for(static_cast<std::int64_t>(rs.rows.size()), [&](std::int64_t i) {
    const auto& r = rs.rows[i];
    cpu_attention_row(qkv, T, H, D, r[0], r[1], r[2], causal, &ref.out[i * D], &ref.lse[i]);
  });
  return ref;
}

constexpr int kGuard = 4096;   // poisoned elements after out and lse, to catch writes past the end

// Errors of out/lse on the checked rows against the reference; with_guard: the vectors end in
// kGuard poisoned elements that must still be poison; debug_print: show the first bad elements.
ErrStats compare(const std::vector<Bf16>& out, const std::vector<float>& lse, int T, int H, int D, const RowSet& rs,
                 const Reference& ref, bool with_guard, bool debug_print, const char* label) {
  ErrStats st;
  double num = 0, den = 0;
  int shown = 0;
  const std::int64_t C = static_cast<std::int64_t>(H) * D;
  for (std::size_t i = 0; i < rs.rows.size(); ++i) {
    const auto& r = rs.rows[i];
    const std::size_t o = (static_cast<std::size_t>(r[0]) * T + r[2]) * C + r[1] * D;
    for (int d = 0; d < D; ++d) {
      const double g = to_float(out[o + d]), w = ref.out[i * D + d];
      if (!std::isfinite(g)) ++st.nonfinite;
      const double e = std::fabs(g - w);
      st.max_abs = std::isfinite(e) ? std::max(st.max_abs, e) : INFINITY;
      num += std::isfinite(e) ? e * e : INFINITY;
      den += w * w;
      if (g_debug && debug_print && shown < 10 && !(e <= 0.03)) {
        std::printf("    [%s] out[b=%d, t=%d, h=%d, d=%d] = %.6g, want %.6g\n", label, r[0], r[2], r[1], d, g, w);
        ++shown;
      }
    }
    const double gl = lse[static_cast<std::size_t>(r[0] * H + r[1]) * T + r[2]];
    if (!std::isfinite(gl)) ++st.nonfinite;
    const double el = std::fabs(gl - ref.lse[i]);
    st.lse_max = std::isfinite(el) ? std::max(st.lse_max, el) : INFINITY;
  }
  st.rel = std::sqrt(num / std::max(den, 1e-300));
  if (with_guard) {
    for (std::size_t i = out.size() - kGuard; i < out.size(); ++i) st.guard_ok &= out[i].bits == 0xFFFF;
    for (std::size_t i = lse.size() - kGuard; i < lse.size(); ++i) {
      std::uint32_t u;
      std::memcpy(&u, &lse[i], 4);
      st.guard_ok &= u == 0xFFFFFFFFu;
    }
  }
  return st;
}

// Elements of out and lse (before the `guard` poisoned tail) still holding the poison pattern
// (0xFFFF / 0xFFFFFFFF, NaNs no kernel writes): every element must have been written.
long count_unwritten(const std::vector<Bf16>& out, const std::vector<float>& lse, std::size_t guard) {
  long n = 0;
  for (std::size_t i = 0; i + guard < out.size(); ++i) n += out[i].bits == 0xFFFF;
  for (std::size_t i = 0; i + guard < lse.size(); ++i) {
    std::uint32_t u;
    std::memcpy(&u, &lse[i], 4);
    n += u == 0xFFFFFFFFu;
  }
  return n;
}

// The whole of out against the mma kernel's out (causal only), both of them bf16 roundings of
// nearly the same fp32 values: a few ulps apart (ulp = 2^-7 relative), plus the effect of P
// rounded to bf16 from slightly different fp32 values; layout or indexing errors are O(1).
// Returns the number of elements with |mine − mma| > (2^-5 + 2^-7)·|mma| + 2^-8 (the first GPU run's
// bound 2^-5·|mma| + 2^-8 widened by one bf16 ulp of the value: it flagged one element at |out| ≈ 8
// of the peaky T = 700 case), and the max difference; the first `show` far elements are printed
// (flat index, mine, mma) so that a failure is readable from the log alone.
long count_far_from(const std::vector<Bf16>& mine, const std::vector<Bf16>& mma, std::size_t n, double* max_diff,
                    int show = 4) {
  long far = 0;
  *max_diff = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double a = to_float(mine[i]), b = to_float(mma[i]);
    const double d = std::fabs(a - b);
    *max_diff = std::isfinite(d) ? std::max(*max_diff, d) : INFINITY;
    if (!(d <= (std::ldexp(1.0, -5) + std::ldexp(1.0, -7)) * std::fabs(b) + std::ldexp(1.0, -8))) {
      if (far < show) std::printf("    far: element %zu mine %.6g mma %.6g diff %.3g\n", i, a, b, d);
      ++far;
    }
  }
  return far;
}

struct FwdCase {
  int B, H, T;
  float sigma;   // input scale (larger: peakier softmax)
};

struct Outputs {
  DevBuf<Bf16> out;
  DevBuf<float> lse;
  Outputs(std::size_t n_out, std::size_t n_lse) : out(n_out + kGuard), lse(n_lse + kGuard) {}
  void poison() {
    LAB_CUDA(cudaMemset(out.p, 0xFF, out.bytes()));
    LAB_CUDA(cudaMemset(lse.p, 0xFF, lse.bytes()));
  }
};

int stage_fwd(const std::string& only) {
  Tally tally;
  const FwdCase cases[] = {
      {1, 1, 128, 1.f}, {1, 2, 100, 1.f},  {2, 3, 333, 1.f},   {1, 1, 1, 1.f},  {1, 1, 64, 1.f},  {1, 2, 1024, 1.f},
      {4, 8, 257, 1.f}, {2, 16, 512, 1.f}, {64, 16, 128, 1.f}, {1, 4, 2048, 1.f}, {2, 2, 700, 3.f}, {3, 1, 191, 1.f},
      {1, 2, 193, 1.f},
  };
  for (const FwdVariant& v : kVariants) {
    if (!only.empty() && only != v.name) continue;
    const int D = v.D;
    for (const FwdCase& fc : cases) {
      const int B = fc.B, H = fc.H, T = fc.T;
      const std::int64_t C = static_cast<std::int64_t>(H) * D;
      const std::size_t n_qkv = static_cast<std::size_t>(B) * T * 3 * C, n_out = static_cast<std::size_t>(B) * T * C,
                        n_lse = static_cast<std::size_t>(B) * H * T;
      try {
        const std::uint32_t seed = 1000u + static_cast<std::uint32_t>(D * 7919 + B * 131 + H * 17 + T);
        const auto hqkv = random_bf16(n_qkv, seed, fc.sigma);
        DevBuf<Bf16> qkv(n_qkv);
        qkv.upload(hqkv);
        Outputs mine(n_out, n_lse), theirs(n_out, n_lse);
        const RowSet rs = pick_rows(B, H, T, D, seed);
        ErrStats mma{};
        for (bool causal : {true, false}) {
          const Reference ref = cpu_reference(hqkv, T, H, D, causal, rs);
          mine.poison();
          v.run(reinterpret_cast<bf16*>(mine.out.p), mine.lse.p, reinterpret_cast<const bf16*>(qkv.p), B, T, H, causal,
                nullptr);
          sync_or_throw(v.name);
          const auto o = mine.out.download();
          const auto l = mine.lse.download();
          const ErrStats st = compare(o, l, T, H, D, rs, ref, true, true, v.name);
          const long unwritten = count_unwritten(o, l, kGuard);
          long far = 0;
          double diff_mma = -1;
          if (causal) {   // the mma kernel (causal only) on the same inputs: the error bound
            theirs.poison();
            scratchlm::attention_forward_mma_sync(theirs.out.p, theirs.lse.p, qkv.p, scratchlm::GpuAttentionShape{B, T, H, D},
                                             nullptr);
            sync_or_throw("attention_forward_mma_sync");
            const auto mo = theirs.out.download();
            mma = compare(mo, theirs.lse.download(), T, H, D, rs, ref, true, false, "mma");
            far = count_far_from(o, mo, n_out, &diff_mma);
          }
          // Bound: twice the mma kernel's error on the same inputs (both round P to bf16; for
          // non-causal, its error on the causal problem of the same inputs); lse is fp32 arithmetic
          // on fp32 sums, whose order differs between the kernels: at least 1e-4 there.
          const double b_abs = 2 * mma.max_abs + 1e-6, b_rel = 2 * mma.rel + 1e-6,
                       b_lse = std::max(2 * mma.lse_max, 1e-4);
          const bool ok = st.nonfinite == 0 && unwritten == 0 && st.guard_ok && st.max_abs <= b_abs && st.rel <= b_rel &&
                          st.lse_max <= b_lse && far == 0;
          std::printf("STAGE fwd %-12s %-9s B=%-2d H=%-2d T=%-5d s=%.0f rows %6zu | max %.2e rel %.2e lse %.2e | mma max "
                      "%.2e rel %.2e lse %.2e | all vs mma %.1e far %ld | nan %ld unwritten %ld guard %s  %s\n",
                      v.name, causal ? "causal" : "noncausal", B, H, T, fc.sigma, rs.rows.size(), st.max_abs, st.rel,
                      st.lse_max, mma.max_abs, mma.rel, mma.lse_max, diff_mma, far, st.nonfinite, unwritten,
                      st.guard_ok ? "ok" : "HIT", verdict(ok));
          tally.add(ok);
        }
      } catch (const std::exception& e) {
        std::printf("STAGE fwd %-12s B=%d H=%d T=%d ERROR %s  FAIL\n", v.name, B, H, T, e.what());
        tally.add(false);
        if (cudaGetLastError() != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
          std::printf("STAGE fwd context lost; stopping this process\n");
          std::printf("STAGE fwd SUMMARY %d pass, %d fail\n", tally.pass, tally.fail);
          return 1;
        }
      }
    }
  }
  std::printf("STAGE fwd SUMMARY %d pass, %d fail\n", tally.pass, tally.fail);
  return tally.fail == 0 ? 0 : 1;
}

// ---- stage 4: timing -------------------------------------------------------------------------------

struct TimeShape {
  int B, H, T, D;
  bool causal;
};

// Median over 21 batches of 10 launches (each launch on the next of `copies` input sets).
double median_ms(const std::function<void(int)>& launch, int copies) {
  cudaEvent_t a, b;
  LAB_CUDA(cudaEventCreate(&a));
  LAB_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) launch(i % copies);
  sync_or_throw("warm-up");
  std::vector<float> ms;
  int k = 0;
  for (int rep = 0; rep < 21; ++rep) {
    LAB_CUDA(cudaEventRecord(a));
    for (int i = 0; i < 10; ++i) launch(k++ % copies);
    LAB_CUDA(cudaEventRecord(b));
    LAB_CUDA(cudaEventSynchronize(b));
    float t = 0;
    LAB_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t / 10);
  }
  sync_or_throw("timed runs");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int stage_time(const std::string& only) {
  const TimeShape shapes[] = {{1, 16, 16384, 64, true},  {1, 16, 16384, 64, false}, {32, 16, 256, 32, true},
                              {32, 12, 1024, 64, true},  {8, 16, 4096, 128, true},  {1, 16, 16384, 128, true},
                              {128, 16, 256, 32, true}};
  int failures = 0;
  std::vector<std::string> table;
  for (const TimeShape& sh : shapes) {
    const std::int64_t C = static_cast<std::int64_t>(sh.H) * sh.D;
    const std::size_t n_qkv = static_cast<std::size_t>(sh.B) * sh.T * 3 * C, n_out = static_cast<std::size_t>(sh.B) * sh.T * C,
                      n_lse = static_cast<std::size_t>(sh.B) * sh.H * sh.T;
    const double set_bytes = (n_qkv + n_out) * 2.0 + n_lse * 4.0;
    const int copies = static_cast<int>(std::min(8.0, std::ceil(240e6 / set_bytes)));   // > 4× the 60 MB L2
    const double flops = 4.0 * sh.B * sh.H * static_cast<double>(sh.T) * sh.T * sh.D / (sh.causal ? 2 : 1);
    char shape_name[96];
    std::snprintf(shape_name, sizeof shape_name, "(%d,%d,%d,%d) %s", sh.B, sh.H, sh.T, sh.D, sh.causal ? "causal" : "noncausal");
    try {
      std::vector<DevBuf<Bf16>> qkv, out;
      std::vector<DevBuf<float>> lse;
      for (int i = 0; i < copies; ++i) {
        qkv.emplace_back(n_qkv);
        qkv.back().upload(random_bf16_fast(n_qkv, 5000 + i));
        out.emplace_back(n_out);
        lse.emplace_back(n_lse);
      }
      // Reference for the checks: the mma kernel (causal) on copy 0, and 16 rows by the CPU.
      std::vector<Bf16> mma_out;
      if (sh.causal) {
        scratchlm::attention_forward_mma_sync(out[0].p, lse[0].p, qkv[0].p, scratchlm::GpuAttentionShape{sh.B, sh.T, sh.H, sh.D},
                                         nullptr);
        sync_or_throw("attention_forward_mma_sync");
        mma_out = out[0].download();
        const double t = median_ms(
            [&](int i) {
              scratchlm::attention_forward_mma_sync(out[i].p, lse[i].p, qkv[i].p,
                                               scratchlm::GpuAttentionShape{sh.B, sh.T, sh.H, sh.D}, nullptr);
            },
            copies);
        char line[256];
        std::snprintf(line, sizeof line, "%-30s %-14s %9.4f ms %7.1f TFLOP/s", shape_name, "mma (today)", t, flops / t * 1e-9);
        std::printf("STAGE time %s\n", line);
        table.push_back(line);
      }
      std::vector<Bf16> h0;
      RowSet rs;
      Reference ref;
      bool have_ref = false;
      for (const FwdVariant& v : kVariants) {
        if (v.D != sh.D || (!only.empty() && only != v.name)) continue;
        try {
          LAB_CUDA(cudaMemset(out[0].p, 0xFF, out[0].bytes()));
          LAB_CUDA(cudaMemset(lse[0].p, 0xFF, lse[0].bytes()));
          v.run(reinterpret_cast<bf16*>(out[0].p), lse[0].p, reinterpret_cast<const bf16*>(qkv[0].p), sh.B, sh.T, sh.H,
                sh.causal, nullptr);
          sync_or_throw(v.name);
          const auto o = out[0].download();
          double diff_mma = -1;
          long far = 0;
          if (!mma_out.empty()) far = count_far_from(o, mma_out, n_out, &diff_mma);
          if (!have_ref) {
            h0 = random_bf16_fast(n_qkv, 5000);
            rs.rows.clear();
            std::mt19937 rng(77);
            for (int i = 0; i < 16; ++i)
              rs.rows.push_back({static_cast<int>(rng() % sh.B), static_cast<int>(rng() % sh.H), static_cast<int>(rng() % sh.T)});
            rs.rows.push_back({sh.B - 1, sh.H - 1, sh.T - 1});
            ref = cpu_reference(h0, sh.T, sh.H, sh.D, sh.causal, rs);
            have_ref = true;
          }
          const std::vector<float> l = lse[0].download();
          const ErrStats st = compare(o, l, sh.T, sh.H, sh.D, rs, ref, false, true, v.name);
          const long unwritten = count_unwritten(o, l, 0);
          // Sampled check at the timing shapes: bf16 outputs of magnitude < 1 with P rounded to bf16
          // are within ~1e-2 of fp64 (the mma kernel's own error there is a few 1e-3), and the whole
          // output within a few ulps of the mma kernel's (count_far_from).
          const bool ok = st.nonfinite == 0 && unwritten == 0 && st.max_abs < 2e-2 && far == 0;
          const double t = median_ms(
              [&](int i) {
                v.run(reinterpret_cast<bf16*>(out[i].p), lse[i].p, reinterpret_cast<const bf16*>(qkv[i].p), sh.B, sh.T,
                      sh.H, sh.causal, nullptr);
              },
              copies);
          char line[320];
          std::snprintf(line, sizeof line,
                        "%-30s %-14s %9.4f ms %7.1f TFLOP/s  check: cpu max %.1e, vs mma max %.1e far %ld, unwritten %ld %s",
                        shape_name, v.name, t, flops / t * 1e-9, st.max_abs, diff_mma, far, unwritten, verdict(ok));
          std::printf("STAGE time %s\n", line);
          table.push_back(line);
          failures += ok ? 0 : 1;
        } catch (const std::exception& e) {
          std::printf("STAGE time %-30s %-14s ERROR %s\n", shape_name, v.name, e.what());
          ++failures;
          if (cudaDeviceSynchronize() != cudaSuccess) {
            std::printf("STAGE time context lost; stopping\n");
            return 1;
          }
        }
      }
    } catch (const std::exception& e) {
      std::printf("STAGE time %-30s ERROR %s\n", shape_name, e.what());
      ++failures;
      if (cudaDeviceSynchronize() != cudaSuccess) return 1;
    }
  }
  std::printf("\nSTAGE time TABLE (median of 21 batches of 10, inputs rotated over > 240 MB)\n");
  for (const auto& l : table) std::printf("  %s\n", l.c_str());
  return failures == 0 ? 0 : 1;
}

// ---- stage 5a: the backward's rings with checksum consumers ------------------------------------------
// The backward kernels' configurations, shared-memory layouts, barrier protocols and producers
// (dkdv_produce, dq_produce), with consumers that sum (in double, exactly) what they receive,
// weighted by (row % 7) + 1, and the lse2/delta rows of each tile: catches lost, repeated,
// misplaced or stale tiles, non-zero rows past T and wrong stat rows. Both consumer warpgroups wait
// and release every tile (the empty barriers count 8 arrivals); warpgroup 0 (threads < D) sums.
// sums per block: [resident tile 1 (D) | resident tile 2 (D) | ring tile 1 (D) | ring tile 2 (D) |
// Σ w·lse2 over finite rows, count of +inf rows, Σ w·delta] = 4·D + 3 doubles.
template <class Cfg, class Smem>
__device__ double tile_sum(const Smem& sm, std::uint32_t tile, int rows, int row0, int col) {
  using G = typename Cfg::Tile;
  double acc = 0;
  for (int r = 0; r < rows; ++r) {
    const bf16 v = *reinterpret_cast<const bf16*>(sm.gbase + (tile - sm.base) + G::offset(rows, r, col));
    acc += static_cast<double>(__bfloat162float(v)) * ((row0 + r) % 7 + 1);
  }
  return acc;
}

__device__ void stat_sums(const float* l, const float* d, int rows, int row0, double* out) {
  double ls = 0, inf = 0, ds = 0;
  for (int r = 0; r < rows; ++r) {
    const double w = (row0 + r) % 7 + 1;
    if (isinf(l[r])) inf += 1;
    else ls += w * l[r];
    ds += w * d[r];
  }
  out[0] += ls, out[1] += inf, out[2] += ds;
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    bpipe_dkdv_kernel(const __grid_constant__ CUtensorMap tmap_q, const __grid_constant__ CUtensorMap tmap_kv,
                      const __grid_constant__ CUtensorMap tmap_do, const float* lse2, const float* delta, double* sums,
                      int T, int H) {
  constexpr int D = Cfg::D, kBlockM = Cfg::kBlockM, kStages = Cfg::kStages;
  extern __shared__ unsigned char smem_raw[];
  const DkdvSmem<Cfg> sm(smem_raw);
  const int bh = blockIdx.x, b = bh / H, h = bh % H, C = H * D;
  const int k0 = blockIdx.y * Cfg::kBlockK, Tp = bwd_padded_T(T);
  const int m_first = dkdv_first_tile<Cfg>(k0);
  const int n_tiles = (T + kBlockM - 1) / kBlockM - m_first;
  bwd_init_barriers<kStages, Cfg::kWG>(sm.bar_kv());
  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) dkdv_produce<Cfg>(sm, &tmap_q, &tmap_kv, &tmap_do, lse2, delta, b, h, C, bh, k0, Tp, m_first, n_tiles);
  } else {
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    const int c = wg - 1, lt = threadIdx.x % 128;
    double* out = sums + (static_cast<std::int64_t>(bh) * gridDim.y + blockIdx.y) * (4 * D + 3);
    mbar_wait(sm.bar_kv(), 0, kTagDkdvKV);
    double acc_q = 0, acc_do = 0, st[3] = {0, 0, 0};
    if (c == 0 && lt < D) {
      out[lt] = tile_sum<Cfg>(sm, sm.k(), Cfg::kBlockK, k0, lt);
      out[D + lt] = tile_sum<Cfg>(sm, sm.v(), Cfg::kBlockK, k0, lt);
    }
    for (int it = 0; it < n_tiles; ++it) {
      const int s = it % kStages, m0 = (m_first + it) * kBlockM;
      mbar_wait(sm.full(s), (it / kStages) & 1, kTagDkdvFull + it);
      if (c == 0 && lt < D) {
        acc_q += tile_sum<Cfg>(sm, sm.q(s), kBlockM, m0, lt);
        acc_do += tile_sum<Cfg>(sm, sm.dO(s), kBlockM, m0, lt);
      }
      if (c == 0 && lt == 0) stat_sums(sm.l_ptr(s), sm.dl_ptr(s), kBlockM, m0, st);
      release(sm.empty(s));
    }
    if (c == 0 && lt < D) {
      out[2 * D + lt] = acc_q;
      out[3 * D + lt] = acc_do;
    }
    if (c == 0 && lt == 0)
      for (int i = 0; i < 3; ++i) out[4 * D + i] = st[i];
  }
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    bpipe_dq_kernel(const __grid_constant__ CUtensorMap tmap_q, const __grid_constant__ CUtensorMap tmap_kv,
                    const __grid_constant__ CUtensorMap tmap_do, const float* lse2, const float* delta, double* sums, int T,
                    int H) {
  constexpr int D = Cfg::D, kBlockN = Cfg::kBlockN, kStages = Cfg::kStages;
  extern __shared__ unsigned char smem_raw[];
  const DqSmem<Cfg> sm(smem_raw);
  const int bh = blockIdx.x, b = bh / H, h = bh % H, C = H * D;
  const int mb = gridDim.y - 1 - blockIdx.y;
  const int q0 = mb * Cfg::kBlockM, Tp = bwd_padded_T(T);
  const int n_tiles = fwd_key_tiles<Cfg>(q0, T);
  bwd_init_barriers<kStages, Cfg::kWG>(sm.bar_q());
  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (threadIdx.x == 0) dq_produce<Cfg>(sm, &tmap_q, &tmap_kv, &tmap_do, lse2, delta, b, h, C, bh, q0, Tp, n_tiles);
  } else {
    setmaxnreg_inc<Cfg::kConsumerRegs>();
    const int c = wg - 1, lt = threadIdx.x % 128;
    double* out = sums + (static_cast<std::int64_t>(bh) * gridDim.y + mb) * (4 * D + 3);
    mbar_wait(sm.bar_q(), 0, kTagDqQ);
    if (c == 0 && lt < D) {
      out[lt] = tile_sum<Cfg>(sm, sm.q(), Cfg::kBlockM, q0, lt);
      out[D + lt] = tile_sum<Cfg>(sm, sm.dO(), Cfg::kBlockM, q0, lt);
    }
    if (c == 0 && lt == 0) {
      double st[3] = {0, 0, 0};
      stat_sums(sm.l_ptr(), sm.dl_ptr(), Cfg::kBlockM, q0, st);
      for (int i = 0; i < 3; ++i) out[4 * D + i] = st[i];
    }
    double acc_k = 0, acc_v = 0;
    for (int it = 0; it < n_tiles; ++it) {
      const int s = it % kStages, n0 = (n_tiles - 1 - it) * kBlockN;
      mbar_wait(sm.full(s), (it / kStages) & 1, kTagDqFull + it);
      if (c == 0 && lt < D) {
        acc_k += tile_sum<Cfg>(sm, sm.k(s), kBlockN, n0, lt);
        acc_v += tile_sum<Cfg>(sm, sm.v(s), kBlockN, n0, lt);
      }
      release(sm.empty(s));
    }
    if (c == 0 && lt < D) {
      out[2 * D + lt] = acc_k;
      out[3 * D + lt] = acc_v;
    }
  }
}

// Synthetic padded stats for the checksum: lse2 = (r % 11) − 5 + 0.25·bh for r < T, +inf past T;
// delta = (r % 13) − 6 for r < T, 0 past T (the layout bwd_stats_kernel writes).
void synthetic_stats(int BH, int T, std::vector<float>& lse2, std::vector<float>& delta) {
  const int Tp = bwd_padded_T(T);
  lse2.assign(static_cast<std::size_t>(BH) * Tp, INFINITY);
  delta.assign(lse2.size(), 0.f);
  for (int bh = 0; bh < BH; ++bh)
    for (int r = 0; r < T; ++r) {
      lse2[static_cast<std::size_t>(bh) * Tp + r] = static_cast<float>(r % 11 - 5) + 0.25f * bh;
      delta[static_cast<std::size_t>(bh) * Tp + r] = static_cast<float>(r % 13 - 6);
    }
}

// dkdv (kDkdv = true): per key block, resident K, V rows [k0, k0 + kBlockK), ring Q, dO rows and
// stats over the query tiles [m_first·kBlockM, ceil(T / kBlockM)·kBlockM); dq: per query block,
// resident Q, dO and stats of [q0, q0 + kBlockM), ring K, V over the key tiles it visits.
template <class Cfg, bool kDkdv>
bool test_bpipe(int B, int T, int H) {
  constexpr int D = Cfg::D;
  const std::int64_t C = static_cast<std::int64_t>(H) * D;
  auto hqkv = random_bf16(static_cast<std::size_t>(B) * T * 3 * C, 300 + T);
  auto hdo = random_bf16(static_cast<std::size_t>(B) * T * C, 400 + T);
  std::vector<float> hl, hd;
  synthetic_stats(B * H, T, hl, hd);
  DevBuf<Bf16> qkv(hqkv.size()), dout(hdo.size());
  DevBuf<float> l2(hl.size()), dl(hd.size());
  qkv.upload(hqkv);
  dout.upload(hdo);
  l2.upload(hl);
  dl.upload(hd);
  const int rows_per_block = [] {   // the resident block's rows
    if constexpr (kDkdv) return Cfg::kBlockK;
    else return Cfg::kBlockM;
  }();
  const int blocks = (T + rows_per_block - 1) / rows_per_block;
  const std::size_t per = 4 * D + 3, nsum = static_cast<std::size_t>(B) * H * blocks * per;
  DevBuf<double> sums(nsum);
  LAB_CUDA(cudaMemset(sums.p, 0xFF, sums.bytes()));
  const bf16* x = reinterpret_cast<const bf16*>(qkv.p);
  const bf16* y = reinterpret_cast<const bf16*>(dout.p);
  const int ring_rows = [] {   // a ring tile's rows
    if constexpr (kDkdv) return Cfg::kBlockM;
    else return Cfg::kBlockN;
  }();
  const CUtensorMap tq = make_qkv_map<D>(x, B, T, H, Cfg::kBlockM);   // dkdv: ring Q; dq: resident Q
  const CUtensorMap tkv = make_qkv_map<D>(x, B, T, H, kDkdv ? rows_per_block : ring_rows);
  const CUtensorMap tdo = make_row_map<D>(y, B, T, static_cast<std::uint64_t>(C), Cfg::kBlockM);
  auto kernel = [] {
    if constexpr (kDkdv) return bpipe_dkdv_kernel<Cfg>;
    else return bpipe_dq_kernel<Cfg>;
  }();
  LAB_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
  kernel<<<dim3(B * H, blocks), Cfg::kThreads, Cfg::kSmemBytes>>>(tq, tkv, tdo, l2.p, dl.p, sums.p, T, H);
  LAB_CUDA(cudaGetLastError());
  sync_or_throw(kDkdv ? "bpipe_dkdv_kernel" : "bpipe_dq_kernel");
  const auto got = sums.download();
  auto val = [&](int b, int t, int which, int h, int d) {   // which 0..2: q, k, v; 3: dout
    if (t >= T) return 0.0;
    if (which == 3) return static_cast<double>(to_float(hdo[(static_cast<std::size_t>(b) * T + t) * C + h * D + d]));
    return static_cast<double>(to_float(hqkv[(static_cast<std::size_t>(b) * T + t) * 3 * C + which * C + h * D + d]));
  };
  const int Tp = bwd_padded_T(T);
  int bad = 0;
  double max_diff = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int blk = 0; blk < blocks; ++blk) {
        const int bh = b * H + h, r0 = blk * rows_per_block;
        // The rows of each slot: resident [r0, r0 + rows_per_block); ring: dkdv's query tiles or dq's key tiles.
        int ring_lo, ring_hi;
        if constexpr (kDkdv) {
          ring_lo = dkdv_first_tile<Cfg>(r0) * Cfg::kBlockM;
          ring_hi = (T + Cfg::kBlockM - 1) / Cfg::kBlockM * Cfg::kBlockM;
        } else {
          ring_lo = 0;
          ring_hi = fwd_key_tiles<Cfg>(r0, T) * Cfg::kBlockN;
        }
        const int st_lo = kDkdv ? ring_lo : r0, st_hi = kDkdv ? ring_hi : r0 + rows_per_block;
        std::vector<double> want(per, 0.0);
        for (int d = 0; d < D; ++d) {
          for (int t = r0; t < r0 + rows_per_block; ++t) {
            want[d] += val(b, t, kDkdv ? 1 : 0, h, d) * (t % 7 + 1);
            want[D + d] += val(b, t, kDkdv ? 2 : 3, h, d) * (t % 7 + 1);
          }
          for (int t = ring_lo; t < ring_hi; ++t) {
            want[2 * D + d] += val(b, t, kDkdv ? 0 : 1, h, d) * (t % 7 + 1);
            want[3 * D + d] += val(b, t, kDkdv ? 3 : 2, h, d) * (t % 7 + 1);
          }
        }
        for (int t = st_lo; t < st_hi; ++t) {
          const float l = hl[static_cast<std::size_t>(bh) * Tp + t];
          if (std::isinf(l)) want[4 * D + 1] += 1;
          else want[4 * D] += (t % 7 + 1) * static_cast<double>(l);
          want[4 * D + 2] += (t % 7 + 1) * static_cast<double>(hd[static_cast<std::size_t>(bh) * Tp + t]);
        }
        const double* g = got.data() + (static_cast<std::size_t>(bh) * blocks + blk) * per;
        for (std::size_t i = 0; i < per; ++i) {
          const double diff = std::fabs(g[i] - want[i]);
          max_diff = std::isfinite(diff) ? std::max(max_diff, diff) : INFINITY;
          if (!(diff <= 1e-9 * (1 + std::fabs(want[i])))) {
            if (g_debug && bad < 12) {
              static const char* kSlots[2][5] = {{"Q", "dO", "K", "V", "stats"}, {"K", "V", "Q", "dO", "stats"}};
              std::printf("    b=%d h=%d block=%d slot %s item %zu: got %.9g want %.9g\n", b, h, blk,
                          kSlots[kDkdv ? 1 : 0][std::min<std::size_t>(i / D, 4)], i % D, g[i], want[i]);
            }
            ++bad;
          }
        }
      }
  const bool ok = bad == 0;
  std::printf("STAGE bpipe %-4s D=%-3d WG=%d tile=%d stages=%d %-9s B=%d T=%-5d H=%d  max_diff %.3e  wrong %5d / %zu  %s\n",
              kDkdv ? "dkdv" : "dq", D, Cfg::kWG, ring_rows, Cfg::kStages, Cfg::kCausal ? "causal" : "noncausal", B, T, H,
              max_diff, bad, nsum, verdict(ok));
  return ok;
}

int stage_bpipe() {
  Tally tally;
  auto run = [&](const std::function<bool()>& f) {
    try {
      tally.add(f());
    } catch (const std::exception& e) {
      std::printf("STAGE bpipe ERROR %s  FAIL\n", e.what());
      tally.add(false);
    }
  };
  run([] { return test_bpipe<DkdvConfig<64, 64, 2, true>, true>(2, 1000, 3); });
  run([] { return test_bpipe<DkdvConfig<64, 64, 2, false>, true>(1, 777, 2); });
  run([] { return test_bpipe<DkdvConfig<128, 64, 2, true>, true>(1, 2100, 2); });
  run([] { return test_bpipe<DkdvConfig<64, 64, 3, true>, true>(1, 70, 1); });
  run([] { return test_bpipe<DqConfig<64, 128, 2, true>, false>(2, 1000, 3); });
  run([] { return test_bpipe<DqConfig<64, 64, 2, false>, false>(1, 777, 2); });
  run([] { return test_bpipe<DqConfig<128, 64, 2, true>, false>(1, 2100, 2); });
  run([] { return test_bpipe<DqConfig<64, 64, 2, true, 3>, false>(1, 1000, 2); });
  run([] { return test_bpipe<DqConfig<64, 128, 3, true>, false>(1, 70, 1); });
  std::printf("STAGE bpipe SUMMARY %d pass, %d fail\n", tally.pass, tally.fail);
  return tally.fail == 0 ? 0 : 1;
}

// ---- stage 5: the backward -------------------------------------------------------------------------

struct BwdVariant {
  const char* name;
  int D;
  void (*run)(bf16* dqkv, float* scratch, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse, int B,
              int T, int H, bool causal, cudaStream_t stream);
};

template <int D, int kDkdvM, int kDqN, int kDqWG = 2, int kStages = 2>
void run_bwd_variant(bf16* dqkv, float* scratch, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse,
                     int B, int T, int H, bool causal, cudaStream_t stream) {
  if (causal)
    attention_backward_wgmma<DkdvConfig<D, kDkdvM, kStages, true>, DqConfig<D, kDqN, kStages, true, kDqWG>>(
        dqkv, scratch, dout, qkv, out, lse, B, T, H, stream);
  else
    attention_backward_wgmma<DkdvConfig<D, kDkdvM, kStages, false>, DqConfig<D, kDqN, kStages, false, kDqWG>>(
        dqkv, scratch, dout, qkv, out, lse, B, T, H, stream);
}

// name: d<D>_m<query tile of the dK/dV kernel>_n<key tile of the dQ kernel>[_q3: 3 dQ consumer
// warpgroups (192 rows)][_s3: rings of 3 stages]
const BwdVariant kBwdVariants[] = {
    {"d64_m64_n128", 64, run_bwd_variant<64, 64, 128>},
    {"d64_m64_n64", 64, run_bwd_variant<64, 64, 64>},
    {"d64_m64_n64_q3", 64, run_bwd_variant<64, 64, 64, 3>},
    {"d64_m64_n128_s3", 64, run_bwd_variant<64, 64, 128, 2, 3>},
    {"d128_m64_n64", 128, run_bwd_variant<128, 64, 64>},
};

// The forward that feeds the backward stage (the library's configurations, which passed `fwd`).
void forward_for_bwd(bf16* out, float* lse, const bf16* qkv, int B, int T, int H, int D, bool causal) {
  if (D == 64) run_variant<64, 3, true>(out, lse, qkv, B, T, H, causal, nullptr);
  else run_variant<128, 2, true>(out, lse, qkv, B, T, H, causal, nullptr);
}

// CPU fp64 gradients of one (b, h) from the bf16 inputs, written into grad (B, T, 3, H, D) like
// dqkv: P from the exact scores, delta = Σ_j P_ij dP_ij (= rowsum(dO ⊙ O) with the exact O),
// dS = P ⊙ (dP − delta), dQ = scale·dS K, dK = scale·dSᵀ Q, dV = Pᵀ dO.
void cpu_backward_head(const std::vector<Bf16>& qkv, const std::vector<Bf16>& dout, int T, int H, int D, int b, int h,
                       bool causal, std::vector<double>& grad) {
  const std::int64_t C = static_cast<std::int64_t>(H) * D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto at = [&](int t, int which, int d) {
    return static_cast<double>(to_float(qkv[(static_cast<std::size_t>(b) * T + t) * 3 * C + which * C + h * D + d]));
  };
  auto gidx = [&](int t, int which, int d) { return (static_cast<std::size_t>(b) * T + t) * 3 * C + which * C + h * D + d; };
  std::vector<double> q(static_cast<std::size_t>(T) * D), k(q.size()), v(q.size()), dO(q.size());
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < D; ++d) {
      q[t * D + d] = at(t, 0, d);
      k[t * D + d] = at(t, 1, d);
      v[t * D + d] = at(t, 2, d);
      dO[t * D + d] = to_float(dout[(static_cast<std::size_t>(b) * T + t) * C + h * D + d]);
    }
  std::vector<double> dk(q.size(), 0.0), dv(q.size(), 0.0), s(T), dp(T);
  for (int i = 0; i < T; ++i) {
    const int n = causal ? i + 1 : T;
    double m = -INFINITY;
    for (int j = 0; j < n; ++j) {
      double acc = 0;
      for (int d = 0; d < D; ++d) acc += q[i * D + d] * k[j * D + d];
      s[j] = acc * scale;
      m = std::max(m, s[j]);
    }
    double l = 0;
    for (int j = 0; j < n; ++j) l += (s[j] = std::exp(s[j] - m));
    double delta = 0;
    for (int j = 0; j < n; ++j) {
      s[j] /= l;   // P
      double acc = 0;
      for (int d = 0; d < D; ++d) acc += dO[i * D + d] * v[j * D + d];
      dp[j] = acc;
      delta += s[j] * acc;
    }
    std::vector<double> dq(D, 0.0);
    for (int j = 0; j < n; ++j) {
      const double ds = s[j] * (dp[j] - delta);
      for (int d = 0; d < D; ++d) {
        dq[d] += ds * k[j * D + d];
        dk[j * D + d] += ds * q[i * D + d];
        dv[j * D + d] += s[j] * dO[i * D + d];
      }
    }
    for (int d = 0; d < D; ++d) grad[gidx(i, 0, d)] = dq[d] * scale;
  }
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < D; ++d) {
      grad[gidx(t, 1, d)] = dk[t * D + d] * scale;
      grad[gidx(t, 2, d)] = dv[t * D + d];
    }
}

std::vector<double> cpu_backward(const std::vector<Bf16>& qkv, const std::vector<Bf16>& dout, int B, int T, int H, int D,
                                 bool causal) {
  std::vector<double> grad(static_cast<std::size_t>(B) * T * 3 * H * D, 0.0);
  parallel_for(static_cast<std::int64_t>(B) * H,
               [&](std::int64_t bh) { cpu_backward_head(qkv, dout, T, H, D, static_cast<int>(bh / H), static_cast<int>(bh % H), causal, grad); });
  return grad;
}

// Errors of the three parts (0 = dq, 1 = dk, 2 = dv) of a dqkv (B, T, 3, H, D) against the reference.
struct GradStats {
  double max_abs[3] = {0, 0, 0}, rel[3] = {0, 0, 0}, ref_max[3] = {0, 0, 0}, round_rel[3] = {0, 0, 0};
  long nonfinite = 0;
};

GradStats compare_grads(const std::vector<Bf16>& got, const std::vector<double>& ref, int H, int D) {
  GradStats st;
  const std::size_t C = static_cast<std::size_t>(H) * D;
  double num[3] = {0, 0, 0}, den[3] = {0, 0, 0}, rnum[3] = {0, 0, 0};
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const int part = static_cast<int>((i / C) % 3);
    const double g = to_float(got[i]), w = ref[i];
    if (!std::isfinite(g)) ++st.nonfinite;
    const double e = std::fabs(g - w);
    st.max_abs[part] = std::isfinite(e) ? std::max(st.max_abs[part], e) : INFINITY;
    num[part] += std::isfinite(e) ? e * e : INFINITY;
    den[part] += w * w;
    st.ref_max[part] = std::max(st.ref_max[part], std::fabs(w));
    const double r = to_float(to_bf16(static_cast<float>(w))) - w;
    rnum[part] += r * r;
  }
  for (int p = 0; p < 3; ++p) {
    // An all-zero reference (dq, dk at T = 1: dS = P (dP − delta) cancels exactly): the max error decides.
    st.rel[p] = den[p] > 1e-20 ? std::sqrt(num[p] / den[p]) : 0.0;
    st.round_rel[p] = den[p] > 1e-20 ? std::sqrt(rnum[p] / den[p]) : 0.0;
  }
  return st;
}

// Elements of dqkv with |mine − mma| > 2^-3·|mma| + 2^-3·rms(mma part) + 1e-5: the two kernels round
// P and dS to bf16 at the same places from fp32 values a few ulps apart, so they differ by a few
// bf16 ulps of the terms, far below this; a layout or masking error is O(rms) on many elements.
long count_grad_far(const std::vector<Bf16>& mine, const std::vector<Bf16>& mma, std::size_t n, int H, int D,
                    double* max_diff, int show) {
  const std::size_t C = static_cast<std::size_t>(H) * D;
  double ss[3] = {0, 0, 0};
  std::size_t cnt[3] = {0, 0, 0};
  for (std::size_t i = 0; i < n; ++i) {
    const double b = to_float(mma[i]);
    ss[(i / C) % 3] += b * b;
    ++cnt[(i / C) % 3];
  }
  double rms[3];
  for (int p = 0; p < 3; ++p) rms[p] = std::sqrt(ss[p] / std::max<std::size_t>(cnt[p], 1));
  long far = 0;
  *max_diff = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const int part = static_cast<int>((i / C) % 3);
    const double a = to_float(mine[i]), b = to_float(mma[i]);
    const double d = std::fabs(a - b);
    *max_diff = std::isfinite(d) ? std::max(*max_diff, d) : INFINITY;
    if (!(d <= 0.125 * std::fabs(b) + 0.125 * rms[part] + 1e-5)) {
      if (far < show) {
        const std::size_t tok = i / (3 * C), col = i % C;
        std::printf("    far: d%c token %zu head %zu d %zu: mine %.6g mma %.6g\n", "qkv"[part], tok, col / D, col % D, a, b);
      }
      ++far;
    }
  }
  return far;
}

// --debug: the first wrong elements of each part against the reference (with the mma value when
// there is one), as (b, t, h, d).
void print_bad_grads(const std::vector<Bf16>& got, const std::vector<double>& ref, const std::vector<Bf16>* mma, int T,
                     int H, int D, const double (&tol)[3]) {
  const std::size_t C = static_cast<std::size_t>(H) * D;
  int shown[3] = {0, 0, 0};
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const int part = static_cast<int>((i / C) % 3);
    const double g = to_float(got[i]);
    if (!(std::fabs(g - ref[i]) <= tol[part]) && shown[part] < 6) {
      const std::size_t tok = i / (3 * C), col = i % C;
      std::printf("    d%c[b=%zu, t=%zu, h=%zu, d=%zu] = %.6g, want %.6g%s", "qkv"[part], tok / T, tok % T, col / D,
                  col % D, g, ref[i], mma ? "" : "\n");
      if (mma) std::printf(", mma %.6g\n", to_float((*mma)[i]));
      ++shown[part];
    }
  }
}

struct BwdCase {
  int B, H, T;
  float sigma;
};

int stage_bwd(const std::string& only) {
  Tally tally;
  const BwdCase cases[] = {
      {1, 1, 1, 1.f},   {1, 2, 64, 1.f},  {1, 2, 100, 1.f},  {2, 1, 128, 1.f}, {1, 2, 193, 1.f}, {2, 2, 257, 1.f},
      {1, 1, 333, 1.f}, {2, 1, 700, 3.f}, {8, 4, 128, 1.f},  {1, 2, 1024, 1.f}, {1, 1, 2048, 1.f},
  };
  for (const BwdVariant& v : kBwdVariants) {
    if (!only.empty() && only != v.name) continue;
    const int D = v.D;
    for (const BwdCase& bc : cases) {
      const int B = bc.B, H = bc.H, T = bc.T;
      const std::int64_t C = static_cast<std::int64_t>(H) * D;
      const std::size_t n_qkv = static_cast<std::size_t>(B) * T * 3 * C, n_out = static_cast<std::size_t>(B) * T * C,
                        n_lse = static_cast<std::size_t>(B) * H * T;
      try {
        const std::uint32_t seed = 3000u + static_cast<std::uint32_t>(D * 7919 + B * 131 + H * 17 + T);
        const auto hqkv = random_bf16(n_qkv, seed, bc.sigma);
        const auto hdout = random_bf16(n_out, seed + 1);
        DevBuf<Bf16> qkv(n_qkv), dout(n_out), out(n_out), mine(n_qkv + kGuard), theirs(n_qkv + kGuard);
        DevBuf<float> lse(n_lse), delta(n_lse), scratch(bwd_scratch_floats(B, H, T));
        qkv.upload(hqkv);
        dout.upload(hdout);
        auto bq = [](const DevBuf<Bf16>& b) { return reinterpret_cast<const bf16*>(b.p); };
        GradStats mma_st{};
        for (bool causal : {true, false}) {
          forward_for_bwd(reinterpret_cast<bf16*>(out.p), lse.p, bq(qkv), B, T, H, D, causal);
          sync_or_throw("forward");
          const std::vector<double> ref = cpu_backward(hqkv, hdout, B, T, H, D, causal);
          auto run_mine = [&] {
            LAB_CUDA(cudaMemset(mine.p, 0xFF, mine.bytes()));
            LAB_CUDA(cudaMemset(scratch.p, 0xFF, scratch.bytes()));
            v.run(reinterpret_cast<bf16*>(mine.p), scratch.p, bq(dout), bq(qkv), bq(out), lse.p, B, T, H, causal, nullptr);
            sync_or_throw(v.name);
            return mine.download();
          };
          const auto g1 = run_mine();
          const auto g2 = run_mine();
          const bool repeat = std::memcmp(g1.data(), g2.data(), n_qkv * sizeof(Bf16)) == 0;
          const GradStats st = compare_grads(g1, ref, H, D);
          bool guard_ok = true;
          for (std::size_t i = n_qkv; i < g1.size(); ++i) guard_ok &= g1[i].bits == 0xFFFF;
          long far = 0;
          double diff_mma = -1;
          std::vector<Bf16> mg;
          if (causal) {   // the library's mma backward on the same inputs (the same out, lse)
            LAB_CUDA(cudaMemset(theirs.p, 0xFF, theirs.bytes()));
            scratchlm::attention_backward_mma_sync(theirs.p, delta.p, dout.p, qkv.p, out.p, lse.p,
                                                   scratchlm::GpuAttentionShape{B, T, H, D}, nullptr);
            sync_or_throw("attention_backward_mma_sync");
            mg = theirs.download();
            mma_st = compare_grads(mg, ref, H, D);
            far = count_grad_far(g1, mg, n_qkv, H, D, &diff_mma, 4);
          }
          // Bounds. Causal: twice the mma kernel's error on the same inputs, per part (max and
          // relative), with a floor of 1e-6. Non-causal (no mma kernel): twice its error on the causal
          // problem of the same inputs, or 6× the bf16 rounding error of the reference itself (the
          // library test's bound: P and dS rounded to bf16 inside, bf16 outputs), whichever is larger;
          // the max error also within 2^-4 of the largest |gradient| (a gross check).
          bool err_ok = true;
          double tol[3];
          for (int p = 0; p < 3; ++p) {
            const double b_rel = causal ? 2 * mma_st.rel[p] + 1e-6 : std::max(2 * mma_st.rel[p], 6 * st.round_rel[p]) + 1e-6;
            const double b_max = causal ? 2 * mma_st.max_abs[p] + 1e-6
                                        : std::max(2 * mma_st.max_abs[p], 0.0625 * st.ref_max[p]) + 1e-6;
            err_ok &= st.rel[p] <= b_rel && st.max_abs[p] <= b_max;
            tol[p] = b_max;
          }
          const bool ok = st.nonfinite == 0 && guard_ok && repeat && err_ok && far == 0;
          std::printf("STAGE bwd %-14s %-9s B=%-2d H=%-2d T=%-5d s=%.0f | dq %.2e/%.2e dk %.2e/%.2e dv %.2e/%.2e (max/rel) | "
                      "mma dq %.2e/%.2e dk %.2e/%.2e dv %.2e/%.2e | vs mma %.1e far %ld | nan %ld guard %s repeat %s  %s\n",
                      v.name, causal ? "causal" : "noncausal", B, H, T, bc.sigma, st.max_abs[0], st.rel[0], st.max_abs[1],
                      st.rel[1], st.max_abs[2], st.rel[2], mma_st.max_abs[0], mma_st.rel[0], mma_st.max_abs[1],
                      mma_st.rel[1], mma_st.max_abs[2], mma_st.rel[2], diff_mma, far, st.nonfinite,
                      guard_ok ? "ok" : "HIT", repeat ? "ok" : "DIFF", verdict(ok));
          if (!ok && g_debug) print_bad_grads(g1, ref, causal ? &mg : nullptr, T, H, D, tol);
          tally.add(ok);
        }
      } catch (const std::exception& e) {
        std::printf("STAGE bwd %-14s B=%d H=%d T=%d ERROR %s  FAIL\n", v.name, B, H, T, e.what());
        tally.add(false);
        if (cudaGetLastError() != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
          std::printf("STAGE bwd context lost; stopping this process\n");
          std::printf("STAGE bwd SUMMARY %d pass, %d fail\n", tally.pass, tally.fail);
          return 1;
        }
      }
    }
  }
  std::printf("STAGE bwd SUMMARY %d pass, %d fail\n", tally.pass, tally.fail);
  return tally.fail == 0 ? 0 : 1;
}

// ---- stage 6: backward timing ------------------------------------------------------------------------
// Backward alone and forward + backward, ours (the library's wgmma forward configuration + a
// backward variant) against today's library (mma.sync forward + mma backward), same inputs.
// FLOPs: backward 2.5× the forward's 4·B·H·T²·D (causal: half).
int stage_btime(const std::string& only) {
  const TimeShape shapes[] = {{1, 16, 16384, 64, true}, {1, 16, 16384, 64, false}, {32, 12, 1024, 64, true},
                              {8, 16, 4096, 128, true}, {1, 16, 16384, 128, true}};
  int failures = 0;
  std::vector<std::string> table;
  for (const TimeShape& sh : shapes) {
    const std::int64_t C = static_cast<std::int64_t>(sh.H) * sh.D;
    const std::size_t n_qkv = static_cast<std::size_t>(sh.B) * sh.T * 3 * C, n_out = static_cast<std::size_t>(sh.B) * sh.T * C,
                      n_lse = static_cast<std::size_t>(sh.B) * sh.H * sh.T;
    const double set_bytes = (2.0 * n_qkv + 2.0 * n_out) * 2.0 + n_lse * 8.0;
    const int copies = static_cast<int>(std::min(8.0, std::ceil(240e6 / set_bytes)));
    const double fwd_flops = 4.0 * sh.B * sh.H * static_cast<double>(sh.T) * sh.T * sh.D / (sh.causal ? 2 : 1);
    const double bwd_flops = 2.5 * fwd_flops;
    char shape_name[96];
    std::snprintf(shape_name, sizeof shape_name, "(%d,%d,%d,%d) %s", sh.B, sh.H, sh.T, sh.D, sh.causal ? "causal" : "noncausal");
    try {
      std::vector<DevBuf<Bf16>> qkv, dout, out, dqkv;
      std::vector<DevBuf<float>> lse, delta, scratch;
      for (int i = 0; i < copies; ++i) {
        qkv.emplace_back(n_qkv);
        qkv.back().upload(random_bf16_fast(n_qkv, 7000 + i));
        dout.emplace_back(n_out);
        dout.back().upload(random_bf16_fast(n_out, 7100 + i));
        out.emplace_back(n_out);
        dqkv.emplace_back(n_qkv);
        lse.emplace_back(n_lse);
        delta.emplace_back(n_lse);
        scratch.emplace_back(bwd_scratch_floats(sh.B, sh.H, sh.T));
      }
      const scratchlm::GpuAttentionShape gs{sh.B, sh.T, sh.H, sh.D};
      auto bf = [](DevBuf<Bf16>& b) { return reinterpret_cast<bf16*>(b.p); };
      auto ours_fwd = [&](int i) { forward_for_bwd(bf(out[i]), lse[i].p, bf(qkv[i]), sh.B, sh.T, sh.H, sh.D, sh.causal); };
      // The outputs the backward reads: our forward on every copy (the mma backward reads the same).
      for (int i = 0; i < copies; ++i) ours_fwd(i);
      sync_or_throw("forward");
      std::vector<Bf16> mma_g;
      if (sh.causal) {
        auto mma_bwd = [&](int i) {
          scratchlm::attention_backward_mma_sync(dqkv[i].p, delta[i].p, dout[i].p, qkv[i].p, out[i].p, lse[i].p, gs, nullptr);
        };
        mma_bwd(0);
        sync_or_throw("attention_backward_mma_sync");
        mma_g = dqkv[0].download();
        const double tb = median_ms(mma_bwd, copies);
        const double tfb = median_ms(
            [&](int i) {
              scratchlm::attention_forward_mma_sync(out[i].p, lse[i].p, qkv[i].p, gs, nullptr);
              mma_bwd(i);
            },
            copies);
        for (int i = 0; i < copies; ++i) ours_fwd(i);   // restore our forward's out and lse
        sync_or_throw("forward");
        char line[256];
        std::snprintf(line, sizeof line, "%-30s %-16s bwd %8.4f ms %6.1f TFLOP/s | fwd+bwd %8.4f ms", shape_name,
                      "mma (today)", tb, bwd_flops / tb * 1e-9, tfb);
        std::printf("STAGE btime %s\n", line);
        table.push_back(line);
      }
      for (const BwdVariant& v : kBwdVariants) {
        if (v.D != sh.D || (!only.empty() && only != v.name)) continue;
        try {
          auto bwd = [&](int i) {
            v.run(bf(dqkv[i]), scratch[i].p, bf(dout[i]), bf(qkv[i]), bf(out[i]), lse[i].p, sh.B, sh.T, sh.H, sh.causal,
                  nullptr);
          };
          LAB_CUDA(cudaMemset(dqkv[0].p, 0xFF, dqkv[0].bytes()));
          bwd(0);
          sync_or_throw(v.name);
          const auto g = dqkv[0].download();
          long nan = 0;
          for (const Bf16& x : g) nan += !std::isfinite(to_float(x));
          double diff_mma = -1;
          long far = 0;
          if (!mma_g.empty()) far = count_grad_far(g, mma_g, n_qkv, sh.H, sh.D, &diff_mma, 4);
          const bool ok = nan == 0 && far == 0;
          const double tb = median_ms(bwd, copies);
          const double tfb = median_ms(
              [&](int i) {
                ours_fwd(i);
                bwd(i);
              },
              copies);
          char line[320];
          std::snprintf(line, sizeof line,
                        "%-30s %-16s bwd %8.4f ms %6.1f TFLOP/s | fwd+bwd %8.4f ms  check: nan %ld, vs mma max %.1e far %ld %s",
                        shape_name, v.name, tb, bwd_flops / tb * 1e-9, tfb, nan, diff_mma, far, verdict(ok));
          std::printf("STAGE btime %s\n", line);
          table.push_back(line);
          failures += ok ? 0 : 1;
        } catch (const std::exception& e) {
          std::printf("STAGE btime %-30s %-16s ERROR %s\n", shape_name, v.name, e.what());
          print_hang_report();
          ++failures;
          if (cudaDeviceSynchronize() != cudaSuccess) {
            std::printf("STAGE btime context lost; stopping\n");
            return 1;
          }
        }
      }
    } catch (const std::exception& e) {
      std::printf("STAGE btime %-30s ERROR %s\n", shape_name, e.what());
      ++failures;
      if (cudaDeviceSynchronize() != cudaSuccess) return 1;
    }
  }
  std::printf("\nSTAGE btime TABLE (median of 21 batches of 10; fwd+bwd: ours = wgmma forward (library config) + the variant)\n");
  for (const auto& l : table) std::printf("  %s\n", l.c_str());
  return failures == 0 ? 0 : 1;
}

int stage_info() {
  int dev = 0;
  LAB_CUDA(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  LAB_CUDA(cudaGetDeviceProperties(&p, dev));
  std::printf("STAGE info %s: cc %d.%d, %d SMs, L2 %d MB, smem/block opt-in %zu KB, regs/SM %d\n", p.name, p.major, p.minor,
              p.multiProcessorCount, p.l2CacheSize >> 20, p.sharedMemPerBlockOptin >> 10, p.regsPerMultiprocessor);
  int drv = 0, rt = 0;
  LAB_CUDA(cudaDriverGetVersion(&drv));
  LAB_CUDA(cudaRuntimeGetVersion(&rt));
  std::printf("STAGE info driver %d runtime %d\n", drv, rt);
  // The kernels' resource use as the driver loaded them.
  auto attrs = [](const char* name, const void* f) {
    cudaFuncAttributes a{};
    LAB_CUDA(cudaFuncGetAttributes(&a, f));
    std::printf("STAGE info %-40s regs %3d  local %zu B  static smem %zu B  max threads %d\n", name, a.numRegs,
                a.localSizeBytes, a.sharedSizeBytes, a.maxThreadsPerBlock);
  };
  attrs("fwd d64 wg2 overlap causal", reinterpret_cast<const void*>(attention_forward_wgmma_kernel<FwdConfig<64, 2, 128, 2, true, true>>));
  attrs("fwd d64 wg3 overlap causal", reinterpret_cast<const void*>(attention_forward_wgmma_kernel<FwdConfig<64, 3, 128, 2, true, true>>));
  attrs("fwd d128 wg2 overlap causal", reinterpret_cast<const void*>(attention_forward_wgmma_kernel<FwdConfig<128, 2, 128, 2, true, true>>));
  attrs("fwd d32 wg3 overlap causal", reinterpret_cast<const void*>(attention_forward_wgmma_kernel<FwdConfig<32, 3, 128, 2, true, true>>));
  attrs("bwd dkdv d64 m64 causal", reinterpret_cast<const void*>(attention_dkdv_wgmma_kernel<DkdvConfig<64, 64, 2, true>>));
  attrs("bwd dkdv d128 m64 causal", reinterpret_cast<const void*>(attention_dkdv_wgmma_kernel<DkdvConfig<128, 64, 2, true>>));
  attrs("bwd dq d64 n128 causal", reinterpret_cast<const void*>(attention_dq_wgmma_kernel<DqConfig<64, 128, 2, true>>));
  attrs("bwd dq d128 n64 causal", reinterpret_cast<const void*>(attention_dq_wgmma_kernel<DqConfig<128, 64, 2, true>>));
  return p.major == 9 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s info|gemm|tma|pipe|fwd|time|bpipe|bwd|btime [--variant NAME] [--debug]\n", argv[0]);
    return 2;
  }
  const std::string stage = argv[1];
  std::string variant;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--debug") g_debug = true;
    else if (a == "--variant" && i + 1 < argc) variant = argv[++i];
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  try {
    setup_hang_report();
    if (stage == "info") return stage_info();
    if (stage == "gemm") return stage_gemm();
    if (stage == "tma") return stage_tma();
    if (stage == "pipe") return stage_pipe();
    if (stage == "fwd") return stage_fwd(variant);
    if (stage == "time") return stage_time(variant);
    if (stage == "bpipe") return stage_bpipe();
    if (stage == "bwd") return stage_bwd(variant);
    if (stage == "btime") return stage_btime(variant);
    std::fprintf(stderr, "unknown stage %s\n", stage.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::printf("STAGE %s ERROR %s\n", stage.c_str(), e.what());
    print_hang_report();
    return 1;
  }
}
