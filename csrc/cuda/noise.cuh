// Gumbel noise of the CUDA kernels and the Gumbel-max update of a group of 4 entries.
//
// g[b, i, v] is apd/philox.h's function of (row seed, offset, i, v): one Philox4x32-10 call gives
// the 4 words of entries v0..v0+3 (v0 % 4 == 0), word v & 3 -> apd::uniform_from_bits ->
// apd::gumbel_from_uniform (apd::fast_log, ~1 ulp; __logf is not accurate near u = 1). The seeds
// and offset pointers are device pointers read in the kernel, so a captured CUDA graph replays
// with fresh noise. With an explicit uniform tensor, g = -log(-log(u)) in u's precision.
//
// Skipping work that cannot change the first argmax (exact, not a heuristic). B is a lower bound
// on the row's best score: the max of this thread's best score and `bound`, which only ever holds
// real scores of entries of the row (other lanes' and warps' bests, the draft token's score)
// or values below them. An entry whose score is < B (strictly, so index ties never matter) cannot
// be the first argmax:
// 1. group test: every generated g is < apd::kGumbelMax, so a group of 4 whose max value tm has
//    tm + kGumbelMax < B is skipped without a Philox call;
// 2. entry test: for the others, g <= -ln(1 - u) (because -ln u >= 1 - u; 1 - u is exact from
//    the Philox word), so an entry with t + (-ln(1 - u)) below B by a margin has a score < B and
//    its two fast_logs are skipped (one MUFU lg2 instead). The margin (1e-4 + 1e-6 |B|) is ~10x
//    the errors of lg2.approx and fast_log and the roundings of both sums.
// Most entries of an LLM logit row fail one of the two tests once a good score is known, so the
// noise costs about one Philox call per group or less, instead of two logs per entry. Per-entry
// (not per-group) tests keep the rare full evaluations rare per warp too (they diverge).
// Explicit uniforms are unbounded (u may round to 1), so that path never skips.
#pragma once

#include "common.cuh"

namespace apd::cuda {

// apd::noise_bits4 for entry v0 of the row of r, i.e. global token r.vocab_offset + v0 (64-bit
// there: vocabularies up to 2^34, apd/validate.h).
__device__ __forceinline__ Philox4 noise_bits4_wide(const RowNoise& r, int64_t v0) {
  return noise_bits4(r.seed, r.offset, r.i, r.vocab_offset + static_cast<uint64_t>(v0));
}

// Generated Gumbel noise of entry v (the same expression as in gumbel_max_group).
__device__ __forceinline__ float generated_gumbel(const RowNoise& r, int64_t v) {
  const Philox4 bits = noise_bits4_wide(r, v & ~int64_t{3});
  const int k = static_cast<int>(v & 3);  // selects, not a dynamic index (no local memory)
  const uint32_t w = k == 0 ? bits.x[0] : k == 1 ? bits.x[1] : k == 2 ? bits.x[2] : bits.x[3];
  return gumbel_from_uniform(uniform_from_bits(w));
}

// Upper bound of the generated Gumbel noise of a Philox word (entry test of the header):
// g(u) = -ln(-ln u) <= -ln(1 - u) because -ln u >= 1 - u, and 1 - u = (n - 0.5) * 2^-23 exactly
// with n = 2^23 - (bits >> 9) in [1, 2^23]. lg2.approx errs by ~2^-22 absolute: covered by the
// caller's margin.
__device__ __forceinline__ float gumbel_upper(uint32_t bits) {
  // (1 - u) * 2^23 = n - 0.5 = n' + 0.5 with n' = 2^23 - 1 - m = (~bits) >> 9 in [0, 2^23):
  // 2^23 + n' has the bit pattern 0x4b000000 | n', and subtracting 2^23 - 0.5 is exact. (No
  // int-to-float conversion: it would share the quarter-rate pipe with MUFU.)
  const float omu = __uint_as_float(((~bits) >> 9) | 0x4b000000u) - 8388607.5f;
  return (23.0f - lg2_approx(omu)) * kLn2;
}

// Gumbel-max update with entries v0..v0+3 (v0 % 4 == 0) of values t (-inf: not a candidate;
// entries >= vocab are -inf), scanned after every lower index of this thread. `bound`: see the
// header. score = t + g rounded once (__fadd_rn), as reference.py adds two float32 tensors.
__device__ __forceinline__ void gumbel_max_group(Best& best, const float* t, int64_t v0, const RowNoise& r,
                                                 float bound) {
  const float tm = fmaxf(fmaxf(t[0], t[1]), fmaxf(t[2], t[3]));
  if (tm == kNegInf) return;
  if (r.generated()) {
    const float B = fmaxf(best.score, bound);
    if (tm + kGumbelMax < B) return;
    const Philox4 bits = noise_bits4_wide(r, v0);
    // Entries whose t + (upper bound of g) is below B by the margin are not evaluated. Margin:
    // lg2.approx and fast_log err by < 1e-5 absolute on g <= 17, each float sum by < 1.2e-7 |B|.
    const float lim = B - (1e-4f + 1e-6f * fabsf(B));  // -inf when B is -inf: no entry skipped
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (t[j] + gumbel_upper(bits.x[j]) < lim) continue;
      const float s = __fadd_rn(t[j], gumbel_from_uniform(uniform_from_bits(bits.x[j])));
      if (s > best.score) best = Best{s, v0 + j};
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (!(t[j] > kNegInf)) continue;  // never reads uniforms at v >= vocab
    float g;
    if (r.u64 != nullptr) {
      const double u = r.u64[v0 + j];
      g = static_cast<float>(-log(-log(u)));
    } else {
      const float u = r.u32[v0 + j];
      g = -logf(-logf(u));
    }
    const float s = __fadd_rn(t[j], g);
    if (s > best.score) best = Best{s, v0 + j};
  }
}

// Block-shared skip bound (sampled kernels). s_key holds ordered_key of the largest score
// published by any warp of the block (or of the initial hint); reads may see an older value,
// which only means less skipping. Returns the new bound of the calling lane. All lanes call it.
__device__ __forceinline__ float share_bound(float own_best, float bound, unsigned* s_key) {
  const float w = fmaxf(warp_max(own_best), bound);
  if ((threadIdx.x & 31) == 0) atomicMax(s_key, ordered_key(w));
  const float blk = key_to_float(*static_cast<volatile unsigned*>(s_key));
  return fmaxf(w, blk);
}

// A value <= the score of entry v that the sampled kernels compute (their rounding may differ
// from this call site's by a few ulps, so it is lowered by 1e-4 + 1e-6 |s|); -inf when unknown.
__device__ __forceinline__ float score_hint(float t, const RowNoise& r, int64_t v) {
  if (!(t > kNegInf) || !(t < -kNegInf)) return kNegInf;
  const float s = __fadd_rn(t, generated_gumbel(r, v));
  return s - (1e-4f + 1e-6f * fabsf(s));
}

// Pilot bound of a warp: the score (score_hint) of the largest value xm among the lanes' (xm at
// entry vm, -inf: none); one lane computes it. Called by all lanes, before the first noise of a
// block, so that the first groups are already tested against a good score.
__device__ __forceinline__ float warp_pilot(float xm, int64_t vm, const RowNoise& r) {
  const float wm = warp_max(xm);
  if (!(wm > kNegInf)) return kNegInf;  // warp-uniform
  const unsigned lanes = __ballot_sync(kFullMask, xm == wm);
  const int src = __ffs(static_cast<int>(lanes)) - 1;
  float s = kNegInf;
  if (static_cast<int>(threadIdx.x & 31) == src) s = score_hint(wm, r, vm);
  return __shfl_sync(kFullMask, s, src);
}

}  // namespace apd::cuda
