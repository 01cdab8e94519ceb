// Building blocks of the CUDA kernels (csrc/cuda/*.cu): logit formats and chunk loads, the
// online log-sum-exp / first-argmax states with their warp and block merges, the order-preserving
// float key of the filter, and the split plan shared by the host code and the kernels.
//
// Conventions shared by every kernel here (apd_ext/reference.py is the spec):
// * A row is `vocab` logits; it is read in "chunks" of CW consecutive entries starting at
//   v = c * CW (CW = 4 or 8, so a chunk never straddles a Philox group of 4). A chunk is one
//   8- or 16-byte vector load when the row pointer is aligned to CW * sizeof(T) and the chunk is
//   entirely inside [0, vocab); otherwise CW scalar loads (a row whose start is not aligned, e.g.
//   vocab 111 or a sliced tensor, reads scalars throughout; the tail chunk always does).
//   Entries at v >= vocab read as -inf, which is neutral for every reduction below.
// * NaN -> -inf with fmaxf(x, -inf) (fmaxf returns the non-NaN operand): one instruction.
// * Values that reference.py rounds separately (x = D * inv_T, the mixture w*D + (1-w)*A, the
//   target scale, score = x + g) use __fmul_rn / __fadd_rn so that nvcc cannot contract them
//   into FMAs: argmax ties (frequent with bf16 logits) then break exactly as in the reference.
// * Reductions are deterministic: fixed per-thread element order, xor-butterfly warp merges
//   (the merges are commutative bit for bit) and a fixed warp order in the block merge.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "apd/apd.h"
#include "apd/math.h"
#include "apd/philox.h"

namespace apd::cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---------------------------------------------------------------------------------------------
// Launch geometry and the split plan (host and device).

constexpr int kThreads = 256;          // threads of the row kernels (draft, mixture)
constexpr int kWarps = kThreads / 32;
constexpr int kFilterThreads = 512;    // threads of the filter kernel (one block per row)
constexpr int kMaxSplits = 64;         // most blocks one row is split across
constexpr int64_t kMinChunksPerSplit = 512;  // a split reads at least this many chunks (2/thread)
constexpr int64_t kMaxBlocksWanted = 4096;   // device-independent cap on rows * splits
constexpr int kBlocksPerSm = 4;        // splits are chosen so that grid >= kBlocksPerSm * #SMs

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Largest split count any call with these sizes may use (bounds the workspace; independent of
// the device and of the logit dtype: 4-entry chunks are the most numerous).
__host__ __device__ inline int split_cap(int64_t rows, int64_t vocab) {
  int64_t s = ceil_div(ceil_div(vocab, 4), kMinChunksPerSplit);
  const int64_t by_grid = ceil_div(kMaxBlocksWanted, rows);
  s = s < by_grid ? s : by_grid;
  s = s < kMaxSplits ? s : kMaxSplits;
  return static_cast<int>(s < 1 ? 1 : s);
}

// ---------------------------------------------------------------------------------------------
// Logit formats. T is the storage type; cvt converts one entry to float.

struct F32 {
  using T = float;
  static __device__ __forceinline__ float cvt(float x) { return x; }
};
struct F16 {
  using T = uint16_t;
  static __device__ __forceinline__ float cvt(uint16_t h) { return __half2float(__ushort_as_half(h)); }
};
struct BF16 {
  using T = uint16_t;
  static __device__ __forceinline__ float cvt(uint16_t h) {
    return __uint_as_float(static_cast<uint32_t>(h) << 16);
  }
};

// Entries per chunk for a row of T (one 16-byte vector).
template <class F>
constexpr int chunk_width() {
  return static_cast<int>(16 / sizeof(typename F::T));
}

// Two 16-bit entries packed in a 32-bit word (little endian: the lower half is the lower index).
template <class F>
__device__ __forceinline__ void unpack2(uint32_t w, float& lo, float& hi) {
  lo = F::cvt(static_cast<uint16_t>(w & 0xffffu));
  hi = F::cvt(static_cast<uint16_t>(w >> 16));
}
template <>
__device__ __forceinline__ void unpack2<BF16>(uint32_t w, float& lo, float& hi) {
  lo = __uint_as_float(w << 16);
  hi = __uint_as_float(w & 0xffff0000u);
}

template <class F>
__device__ __forceinline__ void unpack_words(const uint32_t* w, int nwords, float* out) {
  if constexpr (sizeof(typename F::T) == 4) {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k < nwords) out[k] = __uint_as_float(w[k]);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k < nwords) unpack2<F>(w[k], out[2 * k], out[2 * k + 1]);
  }
}

// True when chunks of CW entries of this row can be read with one vector load each.
template <class F, int CW>
__device__ __forceinline__ bool vector_ok(const typename F::T* row) {
  return (reinterpret_cast<uintptr_t>(row) % (CW * sizeof(typename F::T))) == 0;
}

// Bits of -inf in the storage format of F (the value of entries at v >= vocab).
template <class F>
constexpr uint32_t neg_inf_bits() {
  if constexpr (sizeof(typename F::T) == 4) return 0xff800000u;
  else if constexpr (std::is_same_v<F, BF16>) return 0xff80u;
  else return 0xfc00u;
}

// Chunk c (entries c*CW .. c*CW+CW-1) of a row as loaded: the raw storage words (two 16-bit
// entries per word, the lower half the lower index), entries >= vocab holding -inf. Kernels that
// keep several chunks of two rows in flight hold them packed (a 16-bit chunk of 8 entries is 4
// registers, 8 once converted) and convert with unpack_chunk where they are used.
template <class F, int CW>
struct RawChunk {
  static constexpr int kWords = CW * static_cast<int>(sizeof(typename F::T)) / 4;
  static_assert(kWords == 2 || kWords == 4, "a chunk is one 8- or 16-byte vector");
  uint32_t w[kWords];
};

template <class F, int CW>
__device__ __forceinline__ RawChunk<F, CW> load_raw_chunk(const typename F::T* __restrict__ row, int64_t c,
                                                          int64_t vocab, bool vec_ok) {
  using T = typename F::T;
  RawChunk<F, CW> r;
  const int64_t v0 = c * CW;
  if (vec_ok && v0 + CW <= vocab) {
    if constexpr (RawChunk<F, CW>::kWords == 4) {
      const uint4 q = __ldg(reinterpret_cast<const uint4*>(row + v0));
      r.w[0] = q.x;
      r.w[1] = q.y;
      r.w[2] = q.z;
      r.w[3] = q.w;
    } else {
      const uint2 q = __ldg(reinterpret_cast<const uint2*>(row + v0));
      r.w[0] = q.x;
      r.w[1] = q.y;
    }
  } else if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int j = 0; j < CW; ++j) r.w[j] = v0 + j < vocab ? __float_as_uint(__ldg(row + v0 + j)) : neg_inf_bits<F>();
  } else {
#pragma unroll
    for (int k = 0; k < CW / 2; ++k) {
      const uint32_t lo = v0 + 2 * k < vocab ? __ldg(row + v0 + 2 * k) : neg_inf_bits<F>();
      const uint32_t hi = v0 + 2 * k + 1 < vocab ? __ldg(row + v0 + 2 * k + 1) : neg_inf_bits<F>();
      r.w[k] = lo | (hi << 16);
    }
  }
  return r;
}

// A raw chunk as float, NaN -> -inf.
template <class F, int CW>
__device__ __forceinline__ void unpack_chunk(const RawChunk<F, CW>& r, float (&out)[CW]) {
  unpack_words<F>(r.w, RawChunk<F, CW>::kWords, out);
#pragma unroll
  for (int j = 0; j < CW; ++j) out[j] = fmaxf(out[j], kNegInf);  // NaN -> -inf
}

// Chunk c of a row as float, NaN -> -inf, entries >= vocab -> -inf.
template <class F, int CW>
__device__ __forceinline__ void load_chunk(const typename F::T* __restrict__ row, int64_t c, int64_t vocab,
                                           bool vec_ok, float (&out)[CW]) {
  unpack_chunk<F, CW>(load_raw_chunk<F, CW>(row, c, vocab, vec_ok), out);
}

// One entry of a row as float (NaN -> -inf).
template <class F>
__device__ __forceinline__ float load_entry(const typename F::T* row, int64_t v) {
  return fmaxf(F::cvt(row[v]), kNegInf);
}

// ---------------------------------------------------------------------------------------------
// Online log-sum-exp (apd::Lse: max, sum of exp(x - max)) and first argmax (apd::Best).

// 2^x, approximate (MUFU.EX2, ~2 ulp); 2^-inf = +0.
__device__ __forceinline__ float ex2_approx(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);  // host-side emulation of the kernels (tests only)
#endif
}

// log2(x) for normal x > 0, approximate (MUFU.LG2, ~2^-22 absolute).
__device__ __forceinline__ float lg2_approx(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return log2f(x);  // host-side emulation of the kernels (tests only)
#endif
}

// Adds N values (any of them -inf) to a log-sum-exp state.
template <int N>
__device__ __forceinline__ void lse_add(Lse& s, const float (&v)[N]) {
  float cm = v[0];
#pragma unroll
  for (int j = 1; j < N; ++j) cm = fmaxf(cm, v[j]);
  if (cm == kNegInf) return;  // nothing to add (also keeps -inf - -inf out)
  if (cm > s.max) {
    s.sum *= ex2_approx((s.max - cm) * kLog2e);  // s.max = -inf: 0 * 0
    s.max = cm;
  }
  const float ml = s.max * kLog2e;
  float acc = 0.0f;
#pragma unroll
  for (int j = 0; j < N; ++j) acc += ex2_approx(fmaf(v[j], kLog2e, -ml));
  s.sum += acc;
}

// Commutative bit for bit (float + and * are), so xor-butterflies give every lane the same state.
__device__ __forceinline__ Lse lse_combine(Lse a, Lse b) {
  const float m = fmaxf(a.max, b.max);
  if (m == kNegInf) return Lse{kNegInf, 0.0f};
  return Lse{m, a.sum * ex2_approx((a.max - m) * kLog2e) + b.sum * ex2_approx((b.max - m) * kLog2e)};
}

// Log-probs from a merged state: apd::log_prob (apd/math.h).

// First argmax merge (apd::best_merge): larger score wins, equal scores go to the lower index.
// Every state whose score is -inf has index 0 (states start at {-inf, 0} and only move on a
// strictly larger score), so a row without a finite score yields token 0.
__device__ __forceinline__ Best best_combine(Best a, Best b) {
  if (b.score > a.score || (b.score == a.score && b.index < a.index && b.score != kNegInf)) return b;
  return a;
}

// Chunk update for a thread scanning its chunks in increasing v: strict > keeps the first index.
template <int N>
__device__ __forceinline__ void best_add(Best& best, const float (&s)[N], int64_t v0) {
  float cm = s[0];
#pragma unroll
  for (int j = 1; j < N; ++j) cm = fmaxf(cm, s[j]);
  if (cm > best.score) {
    int first = N - 1;
#pragma unroll
    for (int j = N - 1; j >= 0; --j)
      if (s[j] == cm) first = j;
    best = Best{cm, v0 + first};
  }
}

__device__ __forceinline__ Lse warp_lse(Lse s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const Lse t{__shfl_xor_sync(kFullMask, s.max, o), __shfl_xor_sync(kFullMask, s.sum, o)};
    s = lse_combine(s, t);
  }
  return s;
}

__device__ __forceinline__ Best warp_best(Best b) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const Best t{__shfl_xor_sync(kFullMask, b.score, o),
                 static_cast<int64_t>(__shfl_xor_sync(kFullMask, static_cast<long long>(b.index), o))};
    b = best_combine(b, t);
  }
  return b;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

// Block merge of NL log-sum-exp states and one argmax state; the result is valid in thread 0.
// Must be called by all kThreads threads.
template <int NL>
__device__ __forceinline__ void block_reduce(Lse (&lse)[NL], Best& best) {
  __shared__ Lse s_lse[NL][kWarps];
  __shared__ Best s_best[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < NL; ++k) lse[k] = warp_lse(lse[k]);
  best = warp_best(best);
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < NL; ++k) s_lse[k][warp] = lse[k];
    s_best[warp] = best;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < NL; ++k) {
      Lse acc = s_lse[k][0];
      for (int w = 1; w < kWarps; ++w) acc = lse_combine(acc, s_lse[k][w]);
      lse[k] = acc;
    }
    Best acc = s_best[0];
    for (int w = 1; w < kWarps; ++w) acc = best_combine(acc, s_best[w]);
    best = acc;
  }
}

// Order-preserving uint32 key of a non-NaN float (-0 folded into +0, so key order is float
// order and equal floats have equal keys), and its inverse.
__device__ __forceinline__ uint32_t ordered_key(float x) {
  const uint32_t u = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_to_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// ---------------------------------------------------------------------------------------------
// Row addressing.

// Row (b, i) of a [batch, window, vocab] logit tensor (apd_logits: data and element strides).
template <class F>
__device__ __forceinline__ const typename F::T* row_pointer(const apd_logits& l, int64_t b, int64_t i) {
  return static_cast<const typename F::T*>(l.data) + b * l.stride_b + i * l.stride_k;
}

// Number of positions of batch row b that are processed: clamp(valid_lengths[b], 0, window).
__device__ __forceinline__ int64_t valid_length(const int64_t* valid_lengths, int64_t b, int64_t window) {
  if (valid_lengths == nullptr) return window;
  const int64_t L = valid_lengths[b];
  return L < 0 ? 0 : (L > window ? window : L);
}

}  // namespace apd::cuda
