// mixture_accept (reference.py: mixture_accept): per row (b, i) with i < L(b), with
//   x = D * inv_T, keep = x >= tau && D > -inf, mix = w*D + (1-w)*A (D when w == 1, A when
//   w == 0, NaN -> -inf), mix_kept = keep ? mix : -inf,
// the target (first argmax of mix [greedy_target], of mix_kept [T == 0], or of
// mix_kept * inv_T + g [the draft's g]) and the three log-sum-exps (kept D, all A, mix_kept);
// then per batch row the draft tokens' log-probs and the accepted prefix length.
//
// Grid of the partial kernel: rows * splits blocks of kThreads; block (row, split) reads chunk
// range [split * chunks_per_split, ...) of both rows (one 16-byte load per row and chunk when
// aligned, U chunks in flight per thread) and writes one MixPartial. The finalize kernel runs one
// block per batch row: each thread merges the splits of its positions in split order, writes
// target / log-probs, and a block min over the first failing position gives num_accepted.
// Rows at i >= L(b) are not read at all.
//
// Partial op (p.stats != null): mixture_partial_finalize_kernel replaces the finalize (one thread
// per row: global target id, score, the three (max, sum) states, values at the global draft token).
//
// The two logit tensors may have different dtypes (all 9 pairs are instantiated); a chunk is
// then 4 entries (16 bytes of the float32 row, 8 of the 16-bit one).
//
// Per-row knobs (kernels.cuh): row_knobs gives each block its row's inv_T and weight (the
// kPerRow kernels); the finalize kernels resolve them per row the same way.
#pragma once

#include "kernels.cuh"

namespace apd::cuda {

constexpr int kMixUnroll = 2;  // chunks per thread in flight, per row

template <class FD, class FA>
constexpr int mix_cw() {
  return chunk_width<FD>() < chunk_width<FA>() ? chunk_width<FD>() : chunk_width<FA>();
}

__device__ __forceinline__ float mix_value(const MixKnobs& k, float d, float a) {
  if (k.w_mode == kWeightOne) return d;
  if (k.w_mode == kWeightZero) return a;
  return fmaxf(__fadd_rn(__fmul_rn(k.wf, d), __fmul_rn(k.omwf, a)), kNegInf);  // NaN -> -inf
}

// One entry (D = d, A = a, NaN already -inf): kept D, mix_kept and the value whose argmax is the
// target (mix, mix_kept, or mix_kept * inv_T to which the noise is added).
struct MixEntry {
  float dk, mk, tt;
};

// kTarget: an apd_target_mode (apd/modes.h); APD_TARGET_PHILOX stands for both sampled modes.
// kFiltered = false: tau is -inf, so keep = (D > -inf) and kept D is D itself.
// k: the row's knobs (kernels.cuh: MixKnobs).
template <int kTarget, bool kFiltered = true>
__device__ __forceinline__ MixEntry mix_entry(const MixKnobs& k, float d, float a, float tau) {
  const float inv_t = k.inv_t;
  const bool keep = kFiltered ? __fmul_rn(d, inv_t) >= tau && d > kNegInf : d > kNegInf;
  const float mix = mix_value(k, d, a);
  MixEntry e;
  e.dk = kFiltered ? (keep ? d : kNegInf) : d;
  e.mk = keep ? mix : kNegInf;
  if constexpr (kTarget == APD_TARGET_ARGMAX_MIX)
    e.tt = mix;
  else if constexpr (kTarget == APD_TARGET_ARGMAX_KEPT)
    e.tt = e.mk;
  else
    e.tt = __fmul_rn(e.mk, inv_t);
  return e;
}

// Block (row, split) of mixture_partial_kernel (i < L(b)) with the row's knobs k: p.knobs itself
// on the scalar path (read from the kernel parameters), else row_knobs' registers. kPerRow only
// keeps the scalar and per-row kernels' instantiations apart: one shared instantiation (and its
// function-scope __shared__ s_bound, the likely cause) raised the scalar kernels' registers
// (ptxas, sm_80: 61 -> 76).
template <class FD, class FA, int kTarget, bool kFiltered, bool kPerRow>
__device__ __forceinline__ void mix_block(const MixParams& p, int64_t row, int split, int64_t b, int64_t i,
                                          const MixKnobs& k) {
  constexpr int CW = mix_cw<FD, FA>();
  constexpr int U = kMixUnroll;
  constexpr bool kSampled = kTarget == APD_TARGET_PHILOX;

  const auto* rowd = row_pointer<FD>(p.dllm, b, i);
  const auto* rowa = row_pointer<FA>(p.verifier, b, i);
  const bool vec_d = vector_ok<FD, CW>(rowd), vec_a = vector_ok<FA, CW>(rowa);
  const int64_t V = p.vocab;
  const float tau = p.tau != nullptr ? p.tau[row] : kNegInf;
  const int64_t nchunks = ceil_div(V, CW);
  const int64_t c0 = split * p.chunks_per_split;
  const int64_t c1 = c0 + p.chunks_per_split < nchunks ? c0 + p.chunks_per_split : nchunks;
  RowNoise rn{};
  if constexpr (kSampled) rn = row_noise(p.noise, b, i, p.vocab_offset);

  Lse st[3] = {lse_init(), lse_init(), lse_init()};  // kept D, A, kept mix
  Best best = best_init();
  // Noise skipping bound (noise.cuh), seeded with the draft token's own target score: when the
  // draft is accepted that is the row's best score, and nearly every group is skipped.
  __shared__ unsigned s_bound;
  float bound = kNegInf;
  if constexpr (kSampled) {
    if (threadIdx.x == 0) {
      float hint = kNegInf;
      // The draft token is a global id; its entry in this row is dt (partial ops: a slice).
      const int64_t dg = p.draft_tokens[b * p.draft_stride_b + i];
      const int64_t dt = dg - p.vocab_offset;
      if (rn.generated() && dg >= p.vocab_offset && dt < V) {
        const MixEntry e = mix_entry<kTarget, kFiltered>(k, load_entry<FD>(rowd, dt), load_entry<FA>(rowa, dt), tau);
        hint = score_hint(e.tt, rn, dt);
      }
      s_bound = ordered_key(hint);
    }
    __syncthreads();
    bound = key_to_float(s_bound);
  }

  for (int64_t base = c0; base < c1; base += static_cast<int64_t>(U) * kThreads) {
    // Loaded chunks stay packed until used (16-bit rows: 4 registers per chunk and row, not 8).
    RawChunk<FD, CW> rd[U];
    RawChunk<FA, CW> ra[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = base + u * kThreads + threadIdx.x;
      if (c < c1) {
        rd[u] = load_raw_chunk<FD, CW>(rowd, c, V, vec_d);
        ra[u] = load_raw_chunk<FA, CW>(rowa, c, V, vec_a);
      }
    }
    if constexpr (kSampled) {
      if (base == c0 && rn.generated()) {  // block-uniform
        float tm = kNegInf;
        int64_t vm = 0;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t c = base + u * kThreads + threadIdx.x;
          if (c >= c1) continue;
          float d[CW], a[CW];
          unpack_chunk(rd[u], d);
          unpack_chunk(ra[u], a);
#pragma unroll
          for (int j = 0; j < CW; ++j) {
            const float t = mix_entry<kTarget, kFiltered>(k, d[j], a[j], tau).tt;
            if (t > tm) {
              tm = t;
              vm = c * CW + j;
            }
          }
        }
        bound = fmaxf(bound, warp_pilot(tm, vm, rn));
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = base + u * kThreads + threadIdx.x;
      if (c >= c1) continue;
      float d[CW], a[CW];
      unpack_chunk(rd[u], d);
      unpack_chunk(ra[u], a);
      float dk[CW], mk[CW], tt[CW];
#pragma unroll
      for (int j = 0; j < CW; ++j) {
        const MixEntry e = mix_entry<kTarget, kFiltered>(k, d[j], a[j], tau);
        dk[j] = e.dk;
        mk[j] = e.mk;
        tt[j] = e.tt;
      }
      lse_add(st[0], dk);
      lse_add(st[1], a);
      if (k.w_mode != kWeightOne) lse_add(st[2], mk);  // w == 1: mix_kept == kept D
      if constexpr (kSampled) {
#pragma unroll
        for (int g = 0; g < CW / 4; ++g) gumbel_max_group(best, tt + 4 * g, c * CW + 4 * g, rn, bound);
      } else {
        best_add(best, tt, c * CW);
      }
    }
    if constexpr (kSampled) bound = share_bound(best.score, bound, &s_bound);
  }

  block_reduce<3>(st, best);
  if (threadIdx.x == 0) {
    if (k.w_mode == kWeightOne) st[2] = st[0];
    p.partials[row * p.splits + split] = MixPartial{st[0], st[1], st[2], best};
  }
}

// kFiltered = false only when p.tau is null (no top-k / top-p). kPerRow (the call has per-row
// knobs; launched with kFiltered = true, also right when tau is null): the row's knobs are
// resolved once per block (row_knobs); else the body reads p.knobs, the scalar path's code. With
// per-row temperatures a sampled call runs two launches that split the rows between them: the
// sampled kernel skips the rows whose temperature is 0, the ARGMAX_KEPT one (their target mode in
// a scalar call, no noise work) skips the others. One kernel with both bodies inlined would need
// more than the 80 registers of the launch bounds (ptxas spills).
template <class FD, class FA, int kTarget, bool kFiltered, bool kPerRow = false>
__global__ void __launch_bounds__(kThreads, 3) mixture_partial_kernel(const MixParams p) {
  const int64_t row = blockIdx.x / p.splits;
  const int split = static_cast<int>(blockIdx.x - row * p.splits);
  const int64_t b = row / p.window, i = row - b * p.window;
  if (i >= valid_length(p.valid_lengths, b, p.window)) return;  // block-uniform
  if constexpr (kPerRow) {
    bool greedy = false;
    const MixKnobs k = row_knobs(p, b, &greedy);
    if constexpr (kTarget == APD_TARGET_PHILOX) {
      if (greedy) return;  // the ARGMAX_KEPT launch's row
    } else if constexpr (kTarget == APD_TARGET_ARGMAX_KEPT) {
      if (p.temperature_rows != nullptr && !greedy) return;  // the sampled launch's row
    }
    mix_block<FD, FA, kTarget, kFiltered, true>(p, row, split, b, i, k);
  } else {
    mix_block<FD, FA, kTarget, kFiltered, false>(p, row, split, b, i, p.knobs);
  }
}

// One block per batch row b.
template <class FD, class FA>
__global__ void __launch_bounds__(kThreads) mixture_finalize_kernel(const MixParams p) {
  const int64_t b = blockIdx.x;
  const int64_t K = p.window, V = p.vocab;
  const int64_t L = valid_length(p.valid_lengths, b, K);
  const float nan = __int_as_float(0x7fc00000);
  int64_t first_fail = L;  // first position i < L whose draft token is not accepted
  bool greedy = false;
  const MixKnobs k = mix_per_row(p) ? row_knobs(p, b, &greedy) : p.knobs;

  for (int64_t i = threadIdx.x; i < K; i += kThreads) {
    const int64_t r = b * K + i;
    if (i >= L) {
      p.target_tokens[r] = -1;
      p.logp_dllm[r] = p.logp_verifier[r] = p.logp_mixture[r] = 0.0f;
      continue;
    }
    const MixPartial* q = p.partials + r * p.splits;
    MixPartial m = q[0];
    for (int s = 1; s < p.splits; ++s) {
      m.ld = lse_combine(m.ld, q[s].ld);
      m.la = lse_combine(m.la, q[s].la);
      m.lm = lse_combine(m.lm, q[s].lm);
      m.best = best_combine(m.best, q[s].best);
    }
    const int64_t target = m.best.index;
    p.target_tokens[r] = target;
    const int64_t tok = p.draft_tokens[b * p.draft_stride_b + i];
    const bool in_range = tok >= 0 && tok < V;
    if (in_range) {
      const float d = load_entry<FD>(row_pointer<FD>(p.dllm, b, i), tok);
      const float a = load_entry<FA>(row_pointer<FA>(p.verifier, b, i), tok);
      const float tau = p.tau != nullptr ? p.tau[r] : kNegInf;
      const MixEntry e = mix_entry<APD_TARGET_ARGMAX_KEPT>(k, d, a, tau);
      p.logp_dllm[r] = log_prob(e.dk, m.ld);
      p.logp_verifier[r] = log_prob(a, m.la);
      p.logp_mixture[r] = log_prob(e.mk, m.lm);
    } else {
      p.logp_dllm[r] = p.logp_verifier[r] = p.logp_mixture[r] = nan;
    }
    const bool ok = in_range && (i == 0 || tok == target);
    if (!ok && i < first_fail) first_fail = i;
  }

  __shared__ long long s_min[kWarps];
  long long m = first_fail;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const long long t = __shfl_xor_sync(kFullMask, m, o);
    m = t < m ? t : m;
  }
  if ((threadIdx.x & 31) == 0) s_min[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) m = s_min[w] < m ? s_min[w] : m;
    p.num_accepted[b] = m;
  }
}

// Partial op (p.stats != null): one thread per row merges the row's splits in split order and
// writes the global target id and the stats (apd_mixture_stat); rows at i >= L(b) get the
// empty stats. No accepted prefix: that needs every vocabulary slice.
template <class FD, class FA>
__global__ void __launch_bounds__(kThreads) mixture_partial_finalize_kernel(const MixParams p, int64_t rows) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (r >= rows) return;
  const int64_t b = r / p.window, i = r - b * p.window;
  float* st = p.stats + r * APD_MIXTURE_NSTATS;
  if (i >= valid_length(p.valid_lengths, b, p.window)) {
    p.target_tokens[r] = -1;
#pragma unroll
    for (int f = 0; f < APD_MIXTURE_NSTATS; ++f) st[f] = kNegInf;
    st[APD_MIXTURE_STAT_DLLM_SUM] = st[APD_MIXTURE_STAT_VERIFIER_SUM] = st[APD_MIXTURE_STAT_MIXTURE_SUM] = 0.0f;
    return;
  }
  const MixPartial* q = p.partials + r * p.splits;
  MixPartial m = q[0];
  for (int s = 1; s < p.splits; ++s) {
    m.ld = lse_combine(m.ld, q[s].ld);
    m.la = lse_combine(m.la, q[s].la);
    m.lm = lse_combine(m.lm, q[s].lm);
    m.best = best_combine(m.best, q[s].best);
  }
  p.target_tokens[r] = p.vocab_offset + m.best.index;
  st[APD_MIXTURE_STAT_SCORE] = m.best.score;
  st[APD_MIXTURE_STAT_DLLM_MAX] = m.ld.max;
  st[APD_MIXTURE_STAT_DLLM_SUM] = m.ld.sum;
  st[APD_MIXTURE_STAT_VERIFIER_MAX] = m.la.max;
  st[APD_MIXTURE_STAT_VERIFIER_SUM] = m.la.sum;
  st[APD_MIXTURE_STAT_MIXTURE_MAX] = m.lm.max;
  st[APD_MIXTURE_STAT_MIXTURE_SUM] = m.lm.sum;
  const int64_t tok = p.draft_tokens[b * p.draft_stride_b + i];  // global id
  if (tok >= p.vocab_offset && tok - p.vocab_offset < p.vocab) {
    const int64_t j = tok - p.vocab_offset;
    const float d = load_entry<FD>(row_pointer<FD>(p.dllm, b, i), j);
    const float a = load_entry<FA>(row_pointer<FA>(p.verifier, b, i), j);
    const float tau = p.tau != nullptr ? p.tau[r] : kNegInf;
    bool greedy = false;
    const MixKnobs k = mix_per_row(p) ? row_knobs(p, b, &greedy) : p.knobs;
    const MixEntry e = mix_entry<APD_TARGET_ARGMAX_KEPT>(k, d, a, tau);
    st[APD_MIXTURE_STAT_DLLM_AT] = e.dk;
    st[APD_MIXTURE_STAT_VERIFIER_AT] = a;
    st[APD_MIXTURE_STAT_MIXTURE_AT] = e.mk;
  } else {
    st[APD_MIXTURE_STAT_DLLM_AT] = st[APD_MIXTURE_STAT_VERIFIER_AT] = st[APD_MIXTURE_STAT_MIXTURE_AT] = kNegInf;
  }
}

}  // namespace apd::cuda
