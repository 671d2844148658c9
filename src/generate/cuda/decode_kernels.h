// The kernels of the GPU decoder (generate/gpu_decoder.h), one decoding step of up to 32 sequences:
//   decode_linear_cuda     y = x · Wᵀ for a few rows x (B ≤ 32), weights streamed once with 16-byte
//                          loads, bf16 tensor cores (mma.sync), fp32 accumulation; RMSNorm fused
//                          into its prologue and the layer's next op into its epilogue (RoPE and the
//                          KV-cache write, the residual add, SwiGLU, or a plain fp32 store);
//   decode_attention_cuda  one query per (sequence, head) against its cached keys and values,
//                          split over the keys in blocks of 64 (flash-decoding), the last block of a
//                          (sequence, head) merging the splits;
//   decode_sample_cuda     greedy or temperature + top-p sampling of each sequence's next token on
//                          the device, the stop rules, the next token's embedding (the next step's
//                          input), and a record per step for the host;
//   kv_write_cuda          the prefill's (and the cuBLASLt step's) keys and values into the cache.
// Pointers are device pointers (the record ring is host memory mapped into the device); kernels
// run on `stream`. With pdl = true a kernel is launched with programmatic dependent launch: it may
// start while the previous kernel of the stream finishes, reads only weights until that kernel is
// done (griddepcontrol.wait), and lets the next kernel start early in turn. The host header holds
// no CUDA types (like ops/cuda/ops_cuda.h).
//
// Conventions: the residual stream x (B, C) is fp32 and comes with the sums of squares of each of
// its 16-column tiles, ss (B, ceil(C/16)), written by whichever kernel wrote x, so that the next
// RMSNorm prologue has each row's rstd from ceil(C/16) partial sums instead of C values (in a
// fixed order: no atomics, the results repeat bit for bit). The KV cache of one layer is
// (B_max, Hkv, capacity, D) bf16 for keys and the same for values; position p of a sequence sits
// at row p % capacity (capacity ≥ every position today; a sliding window would make it a ring of
// `window` rows). Hkv < H is grouped-query attention (query head h reads kv head h / (H / Hkv)); the
// model has Hkv = H and window = 0 today, the kernels take both already.
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/bf16.h"

struct CUstream_st;

namespace scratchlm {

// The decoder's state of one sequence slot, in device memory. The host writes it when a prompt
// enters the slot; from then on only the sampling kernel changes it.
enum class SlotStatus : std::int32_t { live = 0, end_of_text = 1, max_new_tokens = 2, context_length = 3, empty = 4 };
struct SlotState {
  std::int32_t status;      // SlotStatus
  std::int32_t length;      // positions of the KV cache filled: prompt + tokens fed back so far
  std::int32_t generated;   // tokens emitted
  std::int32_t max_new;     // this prompt's limit of new tokens
  std::int32_t events;      // records written for this slot so far (the ring index of the next)
  std::int32_t sequence;    // the prompt's index: the sampling RNG's stream
};
// What the sampling kernel reports for a live slot at each step: the token emitted (−1: none) and
// the slot's state after it. A ring of `ring` rows of B_max records in mapped host memory.
struct SlotRecord {
  std::int32_t token, status, generated, length;
};
// The sampling settings, in device memory (the step graph reads them, so they may change between
// calls without a new capture).
struct SampleParams {
  float temperature;           // 0 = greedy
  float top_p;                 // (0, 1]
  std::uint64_t seed;
  std::int32_t stop_id;        // −1: none
  std::int32_t context_length; // a sequence stops when its cache holds this many positions
};

// Bounds of the kernels: at most 32 sequences per step; rows of W, x and activations a multiple of
// 8 values (16 bytes); head dims 16, 32, 64, 128.
constexpr int kDecodeMaxBatch = 32;
constexpr int kDecodeTile = 16;   // rows of W per block of decode_linear_cuda = columns per ss partial
bool decode_head_dim_supported(std::int64_t D);

// ---- decode_linear_cuda -------------------------------------------------------------------------

enum class LinearInput {
  rmsnorm,   // bf16(x · rstd · gain), rstd = 1/sqrt(Σ ss / K + 1e-5): x (B, K) fp32, ss, gain (K)
  bf16,      // act (B, K) bf16 as it is
};
enum class LinearEpilogue {
  store,      // out (B, rows) fp32 = y
  residual,   // out (B, rows) fp32 += y in place, and ss_out (B, ceil(rows/16)) of the new rows
  swiglu,     // w is [W1; W3] (2·rows, K): out_bf16 (B, rows) = silu(W1 x) ⊙ (W3 x)
  qkv,        // w is [Wq; Wk; Wv] ((H + 2·Hkv)·D, K): RoPE at each live slot's position on q and k;
              // q to out (B, H·D) fp32, k and v into the cache at that position
};

struct DecodeQkvTarget {
  const SlotState* slots;          // (B): positions (length) and which slots are live
  Bf16* k_cache;                   // this layer's (B_max, Hkv, capacity, D)
  Bf16* v_cache;
  const float* rope_cos;           // (positions, D/2)
  const float* rope_sin;
  int H = 0, Hkv = 0, D = 0, capacity = 0;
};

struct DecodeLinear {
  LinearInput input = LinearInput::bf16;
  LinearEpilogue epilogue = LinearEpilogue::store;
  const Bf16* w = nullptr;   // (rows, K) row-major (a Linear weight [d_out, d_in]); 16-byte aligned
  int rows = 0, K = 0;
  int batch = 0;             // B ≤ 32 rows of x or act; the kernel's tiles are sized by this
  const float* x = nullptr;  // rmsnorm input
  const float* ss = nullptr;
  const float* gain = nullptr;
  const Bf16* act = nullptr; // bf16 input
  float* out = nullptr;
  float* ss_out = nullptr;
  Bf16* out_bf16 = nullptr;
  DecodeQkvTarget qkv{};
};
void decode_linear_cuda(const DecodeLinear& op, CUstream_st* stream, bool pdl);

// ---- decode_attention_cuda ----------------------------------------------------------------------

constexpr int kDecodeAttentionSplit = 64;   // keys per block
struct DecodeAttention {
  Bf16* out = nullptr;           // (B, H·D): zeros for slots that are not live
  const float* q = nullptr;      // (B, H·D) fp32, after RoPE
  const Bf16* k_cache = nullptr; // this layer's (B_max, Hkv, capacity, D)
  const Bf16* v_cache = nullptr;
  const SlotState* slots = nullptr;   // keys 0 .. length (the current token's included)
  float* partials = nullptr;     // scratch (B, H, splits, D + 2) for the merge
  int* counters = nullptr;       // (B, H) zeros; each left at zero again
  int batch = 0, H = 0, Hkv = 0, D = 0, capacity = 0;
  int window = 0;                // 0: every position; else the last `window` positions only
};
// Blocks of kDecodeAttentionSplit keys the grid has per (sequence, head): enough for the longest
// visible range, min(capacity, window).
int decode_attention_splits(int capacity, int window);
void decode_attention_cuda(const DecodeAttention& op, CUstream_st* stream, bool pdl);

// ---- decode_sample_cuda -------------------------------------------------------------------------

// One block per slot in [first_slot, first_slot + count). For each live slot, as generate()'s
// sample_loop does (generate.h): with after_forward its length counts the token just fed; then it
// stops at max_new tokens, or samples from its logits row (greedy: argmax, lowest id on ties;
// else softmax(logits / T) cut to top_p, drawn with a counter-based generator of (seed, sequence,
// generated)), stops at stop_id (not emitted), emits the token, and stops when the cache is full
// (context_length) or max_new is reached. A slot still live gets the token's embedding row in x
// (and its ss); every other slot's x row is zeroed. Each live slot writes one record.
struct DecodeSample {
  SlotState* slots = nullptr;           // (B_max)
  SlotRecord* records = nullptr;        // (ring, B_max), mapped host memory
  int ring = 0;
  float* x = nullptr;                   // (B_max, C)
  float* ss = nullptr;                  // (B_max, ceil(C/16))
  const float* logits = nullptr;        // (B_max, V) fp32
  const float* embedding = nullptr;     // (V, C) fp32
  const SampleParams* params = nullptr;
  int first_slot = 0, count = 0, B_max = 0;
  int V = 0, C = 0;
  bool after_forward = true;
};
void decode_sample_cuda(const DecodeSample& op, CUstream_st* stream, bool pdl);

// ---- kv_write_cuda ------------------------------------------------------------------------------

// rows of qkv ((H + 2·Hkv)·D bf16 per row; 16-byte aligned, D a multiple of 8) into the cache:
//   prefill (slots == null): row t is position t of sequence `slot`; RoPE already applied;
//   decode (slots != null): row b is slot b at position slots[b].length, live slots only; RoPE
//     applied here to q and k, q written to q_out (rows, H·D) fp32.
struct KvWrite {
  const Bf16* qkv = nullptr;
  int rows = 0;
  int slot = 0;
  const SlotState* slots = nullptr;
  float* q_out = nullptr;
  const float* rope_cos = nullptr;
  const float* rope_sin = nullptr;
  Bf16* k_cache = nullptr;   // this layer's
  Bf16* v_cache = nullptr;
  int H = 0, Hkv = 0, D = 0, capacity = 0;
};
void kv_write_cuda(const KvWrite& op, CUstream_st* stream);

// For tests: decode_sample_cuda run `rounds` times over every slot (B = slots.size(), one stream),
// on host copies of its inputs. Slot b's e-th record (counting from its `events`, which should be
// 0) is records[e · B + b]; slots, x and ss are as the last round left them.
struct SampleRounds {
  std::vector<SlotState> slots;
  std::vector<SlotRecord> records;   // (rounds, B)
  std::vector<float> x, ss;          // (B, C), (B, ceil(C/16))
};
SampleRounds decode_sample_rounds(const std::vector<float>& logits, std::vector<SlotState> slots,
                                  const std::vector<float>& embedding, int V, int C, const SampleParams& params,
                                  bool after_forward, int rounds);

// ---- the sampling generator (host copy, for tests) ---------------------------------------------

// The 64 random bits the sampling kernel draws for (seed, sequence, generated): splitmix64 steps
// over the three words. Counter-based: no state, the same draws in any batch.
std::uint64_t decode_random_bits(std::uint64_t seed, std::int64_t sequence, std::int64_t generated);

}  // namespace scratchlm
