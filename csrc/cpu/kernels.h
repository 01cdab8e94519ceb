// CPU row kernels: the one-pass loops behind apd_sample_draft_cpu / apd_mixture_accept_cpu.
#pragma once

#include <cstdint>

#include "apd/apd.h"

namespace apd::cpu {

// Per-row noise source: an explicit uniform row (float or double) or the counter-based generator.
struct NoiseRow {
  const float* uniform32;
  const double* uniform64;
  uint64_t seed;
  uint64_t offset;
  uint32_t window_index;
};

// How a row's logits D become the values that are filtered and sampled: x = D * inv_temperature
// (x = D when greedy, i.e. T == 0); entries with x < threshold are outside the filtered support.
struct RowMath {
  bool greedy;
  float inv_temperature;
  float threshold;
};

struct MixMath {
  float w, omw;  // float32(w), float32(1 - w)
  bool weight_is_one, weight_is_zero;
  bool greedy_target;
};

struct DraftRow {
  int64_t token;
  float lse_kept;  // log-sum-exp of D over the kept entries
};

struct MixtureRow {
  int64_t target;
  float lse_dllm_kept, lse_verifier, lse_mixture_kept;
};

DraftRow draft_row(const void* row, apd_dtype dtype, int64_t vocab, const RowMath& rm, const NoiseRow& nr);
MixtureRow mixture_row(const void* drow, apd_dtype dtype_d, const void* arow, apd_dtype dtype_a,
                       int64_t vocab, const RowMath& rm, const MixMath& mm, const NoiseRow& nr);

// float32 value of entry j of a row of the given dtype (NaN -> -inf).
float load_entry(const void* row, apd_dtype dtype, int64_t j);

// Filter threshold in x units (see RowMath) for top_k / top_p; -inf when neither is active.
float filter_threshold(const void* row, apd_dtype dtype, int64_t vocab, bool greedy, float inv_temperature,
                       int64_t top_k, double top_p);

}  // namespace apd::cpu
