// sample_draft (reference.py: sample_draft): per row, token = first argmax of x + g over the kept
// entries (x = D * inv_T, plain x when T == 0; kept: x >= tau), logprob = D[token] - lse(kept D).
// Per-row temperatures: each row its own inv_T, rows with T = 0 in the argmax kernel's launch.
//
// Grid: rows * splits blocks of kThreads; block (row, split) scans chunks
// [split * chunks_per_split, ...) of the row, U chunks (16-byte loads) in flight per thread, with
// per-thread online (max, sum-exp) and (score, index) states, merged per warp and then per block.
// splits == 1: thread 0 writes the row's outputs; else the partial goes to the workspace and
// draft_finalize_kernel merges the splits of each row in split order.
// Noise is generated per group of 4 entries, and skipped for groups that cannot win (noise.cuh).
// Partial op (p.stats != null): the same, the token written as a global id with its score, the
// row's (max, sum) of the kept D and the kept D at the token (apd_draft_stat) instead of a log-prob.
#pragma once

#include "kernels.cuh"

namespace apd::cuda {

// Chunks per thread in flight (16 bytes each): 4, or 2 with noise (Philox needs the registers;
// 3 blocks of 256 threads per SM still keep 24 KB per SM in flight).
constexpr int kDraftUnroll = 4;
constexpr int kDraftUnrollSampled = 2;

// The row's inv_T (per-row temperatures replace the call's; a greedy row's is 1).
__device__ __forceinline__ float draft_inv_t(const DraftParams& p, int64_t b) {
  return p.temperature_rows != nullptr ? inv_temperature(row_temperature(p.temperature_rows, b)) : p.inv_t;
}

template <class F>
__device__ __forceinline__ void draft_output(const DraftParams& p, int64_t row, const typename F::T* rowp,
                                             float tau, float inv_t, Lse lse, Best best) {
  const int64_t tok = best.index;
  const float d = load_entry<F>(rowp, tok);
  const bool keep = __fmul_rn(d, inv_t) >= tau;
  if (p.stats != nullptr) {  // partial op: global id and stats (apd_draft_stat)
    p.tokens[row] = p.vocab_offset + tok;
    float* st = p.stats + row * APD_DRAFT_NSTATS;
    st[APD_DRAFT_STAT_SCORE] = best.score;
    st[APD_DRAFT_STAT_LSE_MAX] = lse.max;
    st[APD_DRAFT_STAT_LSE_SUM] = lse.sum;
    st[APD_DRAFT_STAT_VALUE] = keep ? d : kNegInf;
    return;
  }
  p.tokens[row] = tok;
  p.logprobs[row] = log_prob(keep ? d : kNegInf, lse);
}

// Block (row, split) of draft_partial_kernel with the row's inv_t (kSampled = false: argmax
// without noise, also the body of a greedy row of a sampled call).
template <class F, bool kSampled>
__device__ __forceinline__ void draft_block(const DraftParams& p, int64_t row, int split, int64_t b, int64_t i,
                                            const float inv_t) {
  using T = typename F::T;
  constexpr int CW = chunk_width<F>();
  constexpr int U = kSampled ? kDraftUnrollSampled : kDraftUnroll;

  const T* rowp = row_pointer<F>(p.dllm, b, i);
  const bool vec_ok = vector_ok<F, CW>(rowp);
  const int64_t V = p.vocab;
  const float tau = p.tau != nullptr ? p.tau[row] : kNegInf;
  const int64_t nchunks = ceil_div(V, CW);
  const int64_t c0 = split * p.chunks_per_split;
  const int64_t c1 = c0 + p.chunks_per_split < nchunks ? c0 + p.chunks_per_split : nchunks;
  RowNoise rn{};
  if constexpr (kSampled) rn = row_noise(p.noise, b, i, p.vocab_offset);

  Lse lse[1] = {lse_init()};
  Best best = best_init();
  // Noise skipping bound (noise.cuh): the best score published by any warp of this block.
  __shared__ unsigned s_bound;
  float bound = kNegInf;
  if constexpr (kSampled) {
    if (threadIdx.x == 0) s_bound = ordered_key(kNegInf);
    __syncthreads();
  }

  // Block-uniform trip count (the warp shuffles below need every lane).
  for (int64_t base = c0; base < c1; base += static_cast<int64_t>(U) * kThreads) {
    float d[U][CW];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = base + u * kThreads + threadIdx.x;
      if (c < c1) load_chunk<F, CW>(rowp, c, V, vec_ok, d[u]);
    }
    if constexpr (kSampled) {
      if (base == c0 && rn.generated()) {  // block-uniform
        float xm = kNegInf;
        int64_t vm = 0;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t c = base + u * kThreads + threadIdx.x;
          if (c >= c1) continue;
#pragma unroll
          for (int j = 0; j < CW; ++j) {
            const float x = __fmul_rn(d[u][j], inv_t);
            if (x >= tau && x > xm) {
              xm = x;
              vm = c * CW + j;
            }
          }
        }
        bound = fmaxf(bound, warp_pilot(xm, vm, rn));
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = base + u * kThreads + threadIdx.x;
      if (c >= c1) continue;
      float dk[CW], xs[CW];
#pragma unroll
      for (int j = 0; j < CW; ++j) {
        const float x = __fmul_rn(d[u][j], inv_t);
        const bool keep = x >= tau;
        dk[j] = keep ? d[u][j] : kNegInf;
        xs[j] = keep ? x : kNegInf;
      }
      lse_add(lse[0], dk);
      if constexpr (kSampled) {
#pragma unroll
        for (int g = 0; g < CW / 4; ++g) gumbel_max_group(best, xs + 4 * g, c * CW + 4 * g, rn, bound);
      } else {
        best_add(best, xs, c * CW);
      }
    }
    if constexpr (kSampled) bound = share_bound(best.score, bound, &s_bound);
  }

  block_reduce<1>(lse, best);
  if (threadIdx.x == 0) {
    if (p.splits == 1)
      draft_output<F>(p, row, rowp, tau, inv_t, lse[0], best);
    else
      p.partials[row * p.splits + split] = DraftPartial{lse[0], best};
  }
}

// kSampled: Gumbel-max with noise (T > 0), else argmax. Per-row temperatures (the call is then
// sampled, apd/modes.h) run both kernels, which split the rows between them: the sampled one
// takes the rows whose temperature is > 0 (each with its own inv_T), the argmax one (p.inv_t = 1)
// the rows whose temperature is 0, so greedy rows do no noise work. (One kernel with both bodies
// inlined needs more than the 80 registers of the launch bounds: ptxas spills.)
template <class F, bool kSampled>
__global__ void __launch_bounds__(kThreads, 3) draft_partial_kernel(const DraftParams p) {
  const int64_t row = blockIdx.x / p.splits;
  const int split = static_cast<int>(blockIdx.x - row * p.splits);
  const int64_t b = row / p.window, i = row - b * p.window;
  float inv_t = p.inv_t;
  if (p.temperature_rows != nullptr) {  // block-uniform
    const double t = row_temperature(p.temperature_rows, b);
    if ((t == 0.0) == kSampled) return;  // the other launch's row
    if constexpr (kSampled) inv_t = inv_temperature(t);
  }
  draft_block<F, kSampled>(p, row, split, b, i, inv_t);
}

// One thread per row: merge the row's splits in split order.
template <class F>
__global__ void __launch_bounds__(kThreads) draft_finalize_kernel(const DraftParams p, int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (row >= rows) return;
  const DraftPartial* q = p.partials + row * p.splits;
  Lse lse = q[0].lse;
  Best best = q[0].best;
  for (int s = 1; s < p.splits; ++s) {
    lse = lse_combine(lse, q[s].lse);
    best = best_combine(best, q[s].best);
  }
  const int64_t b = row / p.window, i = row - b * p.window;
  const float tau = p.tau != nullptr ? p.tau[row] : kNegInf;
  draft_output<F>(p, row, row_pointer<F>(p.dllm, b, i), tau, draft_inv_t(p, b), lse, best);
}

}  // namespace apd::cuda
