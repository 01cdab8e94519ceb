// top-k / top-p threshold of each row (reference.py: filter_threshold), one block per row at a time.
// Runs only when a filter is active; the unfiltered path never launches it. With per-row knobs
// each row takes its own inv_T, top_k and top_p; a row whose filter is inactive gets tau = -inf
// (no pass over its logits), and top_p <= 0 (unchecked per-row value) ends the top-p search at
// its first pass with tau = M.
//
// Method: radix select on the order-preserving uint32 key of x = D * inv_T (-0 folded into +0,
// so key order is float order and equal floats have equal keys), 4 bits per pass from the top,
// 8 passes per phase over the row:
// * top-k: per pass a 16-bin histogram of the entries matching the key prefix found so far;
//   walking the bins from the top picks the bin that holds the k-th largest. After 8 passes the
//   prefix is the key of the k-th largest x: tau_k (ties at tau_k kept by keep = x >= tau).
// * top-p (over K = {x >= tau_k, x > -inf}): the same, with the bins holding probability mass
//   exp(x - M) (M = max x, found in the first top-k pass or in one extra pass). An entry v is
//   kept iff mass(K, x > x_v) < top_p * Z; the kept set is an upper set, and the pass picks the
//   lowest non-empty bin whose top entry is still kept. After 8 passes the prefix is the key of
//   the smallest kept x. Entries whose mass underflows to 0 are never kept (mass above them is
//   Z, and top_p < 1), so "non-empty" is tested as mass > 0.
// Histograms are per thread (shared memory [bin][thread], conflict-free, no atomics) and summed
// in a fixed order, so thresholds are run-to-run identical. Masses: expf per entry, float per
// thread, double across threads.
// tau = +inf when K is empty (every x = -inf) or when M = +inf (reference: NaN probabilities).
//
// Memory traffic: a row is read 8 (top-k or top-p), 9 (top-p alone: one max pass) or 16 times
// (both). Only the first read should come from HBM, the others from L2; that needs every row in
// flight to stay in L2 until its last pass. One block per row would put as many rows in flight
// as fit on the device (__launch_bounds__(512, 2): 264 rows on an H100/H200 = 80 MB of bf16 rows
// of 151936, 160 MB of float32 ones) against 50 MB (H100) / 60 MB (H200) of L2, so at B*K in
// the hundreds every pass would go to HBM. Instead the grid is capped (filter_blocks,
// kernels.cuh): blocks loop over rows (block g takes rows g, g + grid, ...) and the grid is the
// largest for which rows in flight * row bytes <= half the L2 (cudaDevAttrL2CacheSize; half
// because H100-class L2s are two partitions that may both hold a line read from the far one,
// and the other blocks' lines and the tau writes need room too), balanced so that every block
// gets the same number of rows (+-1). Examples, bf16 V = 151936 (297 KiB/row): H200 (60 MiB)
// <= 103 rows in flight, B*K = 800 -> 100 blocks of 8 rows, B*K = 100 -> 100 blocks of 1;
// H100 (50 MiB) <= 86 rows, B*K = 100 -> 50 blocks of 2. Fewer blocks than SMs keep fewer loads
// in flight, so each thread keeps kFilterUnroll = 4 chunks (16 B each) in flight: 32 KB per
// block. A row's result does not depend on the grid (one block computes it, in the same
// per-thread order as ever), so thresholds are identical to those of one block per row.
// (Staging the row in shared memory is not possible at these sizes: 297 KiB of bf16 > 227 KiB.)
#pragma once

#include "kernels.cuh"

namespace apd::cuda {

constexpr int kBins = 16;
constexpr int kFilterWarps = kFilterThreads / 32;
static_assert(kFilterWarps == kBins, "one warp reduces one bin");
constexpr uint32_t kKeyNegInf = 0x007fffffu;    // ordered_key(-inf)
constexpr uint32_t kKeyFiniteMin = 0x00800000u;  // ordered_key(-FLT_MAX): keys of x > -inf

// Bits [shift, shift + 4) of key when its bits above shift + 4 equal prefix, else -1.
__device__ __forceinline__ int digit(uint32_t key, int shift, uint32_t prefix) {
  // 64-bit shift: the first pass shifts by 32 and compares with prefix 0.
  if (static_cast<uint32_t>(static_cast<uint64_t>(key) >> (shift + 4)) != prefix) return -1;
  return static_cast<int>((key >> shift) & 15u);
}

constexpr int kFilterUnroll = 4;  // chunks in flight per thread

// The threshold of one row; called by all threads of the block.
template <class F>
__device__ __forceinline__ void filter_row(const FilterParams& p, int64_t row) {
  using T = typename F::T;
  constexpr int CW = chunk_width<F>();
  constexpr int U = kFilterUnroll;

  const int64_t b = row / p.window, i = row - b * p.window;
  if (i >= valid_length(p.valid_lengths, b, p.window)) return;  // block-uniform
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // The row's knobs (per-row knobs replace the scalars; kernels.cuh: out-of-range values).
  float inv_t = p.inv_t;
  int64_t top_k = p.top_k;
  double top_p = p.top_p;
  if (p.temperature_rows != nullptr) inv_t = inv_temperature(row_temperature(p.temperature_rows, b));
  if (p.top_k_rows != nullptr) top_k = active_top_k(p.top_k_rows[b], p.vocab);
  if (p.top_p_rows != nullptr) top_p = p.top_p_rows[b];
  const bool use_k = top_k > 0;
  const bool use_p = top_p < 1.0;
  if (!use_k && !use_p) {  // block-uniform: this row keeps every entry, its logits are not read
    if (tid == 0) p.tau[row] = kNegInf;
    return;
  }
  const T* rowp = row_pointer<F>(p.logits, b, i);
  const bool vec_ok = vector_ok<F, CW>(rowp);
  const int64_t V = p.vocab;
  const int64_t nchunks = ceil_div(V, CW);

  __shared__ union {
    uint32_t count[kBins][kFilterThreads];
    float mass[kBins][kFilterThreads];
  } hist;
  __shared__ unsigned long long s_count[kBins];
  __shared__ double s_mass[kBins];
  __shared__ uint32_t s_max[kFilterWarps];

  // fn(x) for every entry v < vocab of the row, x = D * inv_T with NaN -> -inf, in a fixed
  // per-thread order.
  auto for_each_x = [&](auto&& fn) {
    for (int64_t base = 0; base < nchunks; base += static_cast<int64_t>(U) * kFilterThreads) {
      RawChunk<F, CW> raw[U];  // packed until used
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t c = base + u * kFilterThreads + tid;
        if (c < nchunks) raw[u] = load_raw_chunk<F, CW>(rowp, c, V, vec_ok);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t c = base + u * kFilterThreads + tid;
        if (c >= nchunks) continue;
        float d[CW];
        unpack_chunk(raw[u], d);
#pragma unroll
        for (int j = 0; j < CW; ++j)
          if (c * CW + j < V) fn(__fmul_rn(d[j], inv_t));
      }
    }
  };

  // Block max of per-thread maxima (all threads return it).
  auto block_max_key = [&](uint32_t mk) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const uint32_t t = __shfl_xor_sync(kFullMask, mk, o);
      mk = t > mk ? t : mk;
    }
    if (lane == 0) s_max[warp] = mk;
    __syncthreads();
    uint32_t m = s_max[0];
#pragma unroll
    for (int w = 1; w < kFilterWarps; ++w) m = s_max[w] > m ? s_max[w] : m;
    __syncthreads();  // s_max may be reused
    return m;
  };

  uint32_t max_key = kKeyNegInf;
  uint32_t key_k = 0;  // key of tau_k (top-k)
  float tau = kNegInf;

  if (use_k) {
    uint32_t prefix = 0;
    int64_t rank = top_k;  // rank of the sought entry among those matching prefix
    for (int pass = 0; pass < 8; ++pass) {
      const int shift = 28 - 4 * pass;
#pragma unroll
      for (int bin = 0; bin < kBins; ++bin) hist.count[bin][tid] = 0;
      uint32_t mk = 0;
      for_each_x([&](float x) {
        const uint32_t key = ordered_key(x);
        mk = key > mk ? key : mk;
        const int dg = digit(key, shift, prefix);
        if (dg >= 0) hist.count[dg][tid] += 1;
      });
      __syncthreads();
      {
        unsigned long long s = 0;
#pragma unroll
        for (int k = 0; k < kFilterThreads / 32; ++k) s += hist.count[warp][lane + 32 * k];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFullMask, s, o);
        if (lane == 0) s_count[warp] = s;
      }
      __syncthreads();
      if (pass == 0) max_key = block_max_key(mk);
      int chosen = 0;
      for (int bin = kBins - 1; bin >= 0; --bin) {
        const int64_t n = static_cast<int64_t>(s_count[bin]);
        if (rank <= n) {
          chosen = bin;
          break;
        }
        rank -= n;
      }
      prefix = (prefix << 4) | static_cast<uint32_t>(chosen);
    }
    key_k = prefix;
    tau = key_to_float(key_k);
  }

  if (use_p) {
    if (!use_k) {
      uint32_t mk = 0;
      for_each_x([&](float x) {
        const uint32_t key = ordered_key(x);
        mk = key > mk ? key : mk;
      });
      max_key = block_max_key(mk);
    }
    const uint32_t kmin = use_k && key_k > kKeyFiniteMin ? key_k : kKeyFiniteMin;  // K = {key >= kmin}
    const float M = key_to_float(max_key);
    if (max_key < kmin || M == -kNegInf) {
      tau = -kNegInf;  // K empty, or +inf logits
    } else {
      uint32_t prefix = 0;
      double above = 0.0;   // mass of K above every entry matching prefix
      double target = 0.0;  // top_p * Z
      bool ok = true;
      for (int pass = 0; pass < 8; ++pass) {
        const int shift = 28 - 4 * pass;
#pragma unroll
        for (int bin = 0; bin < kBins; ++bin) hist.mass[bin][tid] = 0.0f;
        for_each_x([&](float x) {
          const uint32_t key = ordered_key(x);
          if (key < kmin) return;
          const int dg = digit(key, shift, prefix);
          if (dg >= 0) hist.mass[dg][tid] += expf(x - M);
        });
        __syncthreads();
        {
          double s = 0.0;
#pragma unroll
          for (int k = 0; k < kFilterThreads / 32; ++k) s += static_cast<double>(hist.mass[warp][lane + 32 * k]);
#pragma unroll
          for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(kFullMask, s, o);
          if (lane == 0) s_mass[warp] = s;
        }
        __syncthreads();
        if (pass == 0) {
          double z = 0.0;
          for (int bin = 0; bin < kBins; ++bin) z += s_mass[bin];
          target = top_p * z;
        }
        int chosen = -1;
        double acc = above, acc_chosen = above;
        for (int bin = kBins - 1; bin >= 0; --bin) {
          if (!(acc < target)) break;  // the top entry of this bin and below are not kept
          if (s_mass[bin] > 0.0) {
            chosen = bin;
            acc_chosen = acc;
          }
          acc += s_mass[bin];
        }
        if (chosen < 0) {  // unreachable with finite masses (the top entry of K is kept)
          ok = false;
          break;
        }
        prefix = (prefix << 4) | static_cast<uint32_t>(chosen);
        above = acc_chosen;
      }
      tau = ok ? key_to_float(prefix) : M;
    }
  }

  if (tid == 0) p.tau[row] = tau;
}

// Persistent blocks: block g computes rows g, g + gridDim.x, ... (grid: filter_blocks).
template <class F>
__global__ void __launch_bounds__(kFilterThreads, 2) filter_kernel(const FilterParams p) {
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) filter_row<F>(p, row);
}

}  // namespace apd::cuda
