// Parameters and launchers of the CUDA kernels; capi.cu (the C ABI) is the only caller.
//
// Pipeline of one op call, everything on the caller's stream, no host sync, no allocation:
//   1. filter_kernel (filter.cu), only when top_k / top_p is active: one block per row at a time
//      computes the threshold tau of the row in x = D * inv_T units into the workspace; the grid
//      is capped so that the rows in flight stay in L2 (filter_blocks) and blocks loop over rows.
//   2. *_partial_kernel: grid rows * splits, each block scans one contiguous range of chunks of
//      one row (split s of row r is block r * splits + s) and writes a partial state.
//   3. a small finalize kernel merges the splits of each row in split order and writes the
//      outputs (sample_draft skips it when splits == 1: the partial kernel writes the outputs).
//      mixture_accept's finalize runs one block per batch row and also computes the accepted
//      prefix length.
// The vocabulary-parallel partial ops (apd_*_partial_cuda) run the same pipeline on one slice of
// the vocabulary (params with stats != null): noise drawn at global ids, a caller's threshold in
// place of step 1 when given, and outputs (score, global id, log-sum-exp states) instead of
// log-probs; mixture_accept's finalize is then one thread per row, with no accepted prefix.
//
// Performance design (H100 figures; the floor is one read of each logit row):
// * mixture_accept at (B, K, V) = (1, 100, 151936) bf16 reads 61 MB, ~20 us at ~3 TB/s. With
//   132 SMs, rows * splits >= 4 * #SMs gives S = 6 splits of 3166 chunks (25k entries) per row,
//   600 blocks of 256 threads, 3 resident per SM (launch bounds: <= 80 registers); 16-byte
//   loads, 2 chunks of each row in flight per thread (4 x 16 B), ~32 KB in flight per SM.
// * Per entry the mixture does ~30 FP32/INT instructions and 3 MUFU ex2 (three online
//   log-sum-exps, chunk max then one ex2 per entry), ~15 us of issue and ~12 us of MUFU time
//   over the row set: below the memory time, so the kernel stays memory-bound while noise
//   is skipped.
// * Noise (Philox + two fast_logs per entry, ~65 instructions) would dominate; noise.cuh skips
//   it exactly: groups that cannot reach the best known score skip Philox, entries whose
//   upper-bounded noise cannot reach it skip the logs. The best known score is seeded with the
//   score of the draft token (mixture_accept: usually the target), a per-warp pilot (the
//   warp's largest value, scored once), and shared across the block. On peaky (LLM-like) rows
//   nearly all of a row skips Philox; on flat N(0, 1) rows Philox remains (~15 instructions
//   per entry), the logs do not.
// * sample_draft reads one row (10 us floor) with 4 chunks in flight (2 when sampled).
// * The filter (top-k / top-p) is a separate kernel, one block per row at a time, 8 radix passes
//   per phase over the row, all but the first from L2 (at most half the L2 worth of rows in
//   flight: filter.cuh); the unfiltered path never launches it, and the mixture kernel has an
//   unfiltered instantiation without the threshold test.
// * Everything is deterministic: merges in fixed orders, no float atomics (the only atomic, a
//   shared-memory max of skip bounds, changes how much work is skipped, never a result).
//
// Per-row knobs (apd.h: apd_filter's temperature_rows / top_k_rows / top_p_rows,
// mixture_weight_rows; device memory, [batch]): each kernel resolves row b's values once per
// block (the finalize kernels once per row) with the host's scalar expressions (inv_temperature,
// MixKnobs::set_weight, active_top_k), so that row b equals a scalar call on row b alone bit for
// bit. Only a set pointer costs anything: the scalar path launches the same kernels with the
// knobs read from the kernel parameters (mixture_accept has separate kPerRow instantiations,
// whose knobs live in registers). Per-row temperatures make the call sampled (apd/modes.h): the
// row-split kernels then run twice, the sampled kernel on the rows with T > 0 and the greedy one
// (sample_draft's argmax kernel, mixture_accept's ARGMAX_KEPT kernel) on the rows with T = 0,
// each block returning at once on the other launch's rows (block-uniform; no noise work for a
// greedy row). Both bodies in one kernel would exceed the 80 registers of the launch bounds.
// With per-row top_k / top_p the filter kernel runs for every row and decides per row: a row
// whose own filter is inactive writes tau = -inf without reading its logits.
// Robustness: per-row values cannot be checked on the host (no sync). Out-of-range ones never
// cause an out-of-bounds access or a hang, but give unspecified tokens and log-probs for their
// row: a negative or NaN temperature is read as 0 (greedy; a negative inv_T would turn the -inf
// of entries >= vocab into +inf), top_k < 0 or >= vocab disables top-k, a NaN top_p or one > 1
// disables top-p and top_p <= 0 keeps the row's largest value(s) (the top-p search stops at its
// first pass), a tiny temperature whose 1 / T overflows float and a mixture weight outside [0, 1]
// (NaN included) only produce NaN / infinite values, which every reduction already handles
// (NaN never wins an argmax; entries >= vocab stay -inf, so every index stays inside the row).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "apd/apd.h"
#include "apd/knobs.h"
#include "apd/modes.h"
#include "common.cuh"
#include "noise.cuh"

namespace apd::cuda {

// ---- per-row knobs (host and device) -----------------------------------------------------------
// x = D * inv_T: 1 / T in double, rounded to float once (1 when T == 0), as the CPU backend.
__host__ __device__ inline float inv_temperature(double t) { return t == 0.0 ? 1.0f : static_cast<float>(1.0 / t); }

// Row b's temperature from temperature_rows (device memory, unchecked): negative or NaN -> 0.
__device__ __forceinline__ double row_temperature(const double* temperature_rows, int64_t b) {
  const double t = temperature_rows[b];
  return t >= 0.0 ? t : 0.0;
}

// A top_k as the filter kernel takes it: in [1, vocab), or 0 when top-k is inactive (also for
// out-of-range per-row values).
__host__ __device__ inline int64_t active_top_k(int64_t k, int64_t vocab) { return k > 0 && k < vocab ? k : 0; }

// ---- filter (filter.cu) ----------------------------------------------------------------------
struct FilterParams {
  apd_logits logits;             // device data, element strides
  int64_t rows, window, vocab;   // rows = batch * window
  const int64_t* valid_lengths;  // rows (b, i) with i >= valid length are skipped; null: none
  float inv_t;                   // x = D * inv_t (1 when T == 0)
  int64_t top_k;                 // in [1, vocab), or 0 when top-k is inactive
  double top_p;                  // in (0, 1); 1 when top-p is inactive
  // Per-row knobs ([batch] device memory, or null: the scalar above); a row whose own filter is
  // inactive gets tau = -inf.
  const double* temperature_rows;
  const int64_t* top_k_rows;
  const double* top_p_rows;
  float* tau;                    // out [rows]
};
// Blocks of the filter grid (filter.cuh): the most blocks (at most rows) with
// blocks * row bytes <= l2_bytes / 2, then balanced (rows split evenly over the blocks); rows when
// the L2 size is unknown (l2_bytes <= 0).
inline int64_t filter_blocks(int64_t rows, int64_t vocab, int64_t elem_bytes, int64_t l2_bytes) {
  if (l2_bytes <= 0) return rows;
  int64_t fit = l2_bytes / 2 / (vocab * elem_bytes);
  fit = fit < 1 ? 1 : fit;
  return ceil_div(rows, ceil_div(rows, fit));
}
// grid: `blocks` blocks (1 <= blocks <= INT32_MAX), each looping over rows.
cudaError_t launch_filter(apd_dtype dtype, const FilterParams& p, int64_t blocks, cudaStream_t stream);

// ---- sample_draft (sample_draft.cu) ------------------------------------------------------------
struct DraftPartial {
  Lse lse;  // log-sum-exp of the kept D
  Best best;
};

// The partial ops (apd_*_partial_cuda) run the same kernels with stats != null: noise at global
// ids vocab_offset + v, tokens reported as global ids, stats instead of log-probs; tau is then
// the caller's threshold when given.
struct DraftParams {
  apd_logits dllm;  // device data, element strides
  int64_t window, vocab;
  float inv_t;       // 1 when T == 0
  const double* temperature_rows;  // [batch] per-row temperatures (device), or null: inv_t
  const float* tau;  // [rows] thresholds, or null (no filter)
  apd_noise noise;  // used when sampled (T > 0); pointers are device memory
  int splits;
  int64_t chunks_per_split;  // in chunks of chunk_width<F>() entries
  DraftPartial* partials;    // [rows * splits] when splits > 1
  int64_t* tokens;           // out [rows]
  float* logprobs;           // out [rows] (full op)
  int64_t vocab_offset;      // partial op: global id of entry 0 (0 for the full op)
  float* stats;              // partial op: out [rows, APD_DRAFT_NSTATS]; null for the full op
};
cudaError_t launch_sample_draft(apd_dtype dtype, bool sampled, const DraftParams& p, int64_t rows,
                                cudaStream_t stream);

// ---- mixture_accept (mixture_accept.cu) --------------------------------------------------------
enum WeightMode : int { kWeightMix = 0, kWeightOne = 1, kWeightZero = 2 };

// The knobs of one mixture_accept row: the call's (MixParams::knobs) or a row's own (row_knobs).
struct MixKnobs {
  float inv_t;     // 1 when T == 0
  float wf, omwf;  // float32(w), float32(1 - w)
  int w_mode;      // WeightMode
  __host__ __device__ void set_weight(double w) {
    wf = static_cast<float>(w);
    omwf = static_cast<float>(1.0 - w);
    w_mode = w == 1.0 ? kWeightOne : w == 0.0 ? kWeightZero : kWeightMix;
  }
};

struct MixPartial {
  Lse ld, la, lm;  // log-sum-exp of kept D, of all A, of the kept mixture
  Best best;       // target
};

struct MixParams {
  apd_logits dllm, verifier;  // device data, element strides
  int64_t batch, window, vocab;
  const int64_t* valid_lengths;  // [batch] or null
  const int64_t* draft_tokens;
  int64_t draft_stride_b;
  MixKnobs knobs;  // the scalar knobs (those a *_rows pointer replaces are unused)
  // Per-row knobs ([batch] device memory, or null): row_knobs resolves them.
  const double* temperature_rows;
  const double* mixture_weight_rows;
  const float* tau;
  apd_noise noise;
  int splits;
  int64_t chunks_per_split;  // in chunks of mixture_chunk_width() entries
  MixPartial* partials;      // [rows * splits]
  int64_t* num_accepted;
  int64_t* target_tokens;
  float *logp_dllm, *logp_verifier, *logp_mixture;  // full op
  int64_t vocab_offset;  // partial op: global id of entry 0 (0 for the full op)
  float* stats;          // partial op: out [rows, APD_MIXTURE_NSTATS] (no num_accepted / logp_*); null: full op
};
// True when the call has per-row mixture knobs (then row_knobs, else p.knobs).
__host__ __device__ inline bool mix_per_row(const MixParams& p) {
  return p.temperature_rows != nullptr || p.mixture_weight_rows != nullptr;
}

// Knobs of batch row b (per-row knobs replace the call's). *greedy: the row's temperature is 0
// (only meaningful with temperature_rows).
__device__ __forceinline__ MixKnobs row_knobs(const MixParams& p, int64_t b, bool* greedy) {
  MixKnobs k = p.knobs;
  *greedy = false;
  if (p.temperature_rows != nullptr) {
    const double t = row_temperature(p.temperature_rows, b);
    *greedy = t == 0.0;
    k.inv_t = inv_temperature(t);
  }
  if (p.mixture_weight_rows != nullptr) k.set_weight(p.mixture_weight_rows[b]);
  return k;
}

// target_mode: apd/modes.h (both sampled modes run one kernel: RowNoise picks the noise source).
cudaError_t launch_mixture_accept(apd_dtype dllm_dtype, apd_dtype verifier_dtype, apd_target_mode target_mode,
                                  const MixParams& p, cudaStream_t stream);

// Entries per chunk (host side): 16 bytes of the widest logit dtype involved.
inline int chunk_width_of(apd_dtype t) { return t == APD_FLOAT32 ? 4 : 8; }
inline int mixture_chunk_width(apd_dtype d, apd_dtype a) {
  const int wd = chunk_width_of(d), wa = chunk_width_of(a);
  return wd < wa ? wd : wa;
}

}  // namespace apd::cuda
