// CPU row kernels: the one-pass loops behind apd_sample_draft_cpu / apd_mixture_accept_cpu.
#pragma once

#include <cstdint>

#include "apd/apd.h"
#include "apd/math.h"
#include "apd/modes.h"

namespace apd::cpu {

// How a row's logits D become the values that are filtered and sampled: x = D * inv_temperature
// (x = D when greedy, i.e. T == 0); entries with x < threshold are outside the filtered support.
struct RowMath {
  bool greedy;
  float inv_temperature;
  float threshold;
};

struct MixMath {
  float w, omw;  // float32(mixture_weight), float32(1 - mixture_weight)
  bool weight_is_one, weight_is_zero;
  apd_target_mode target;  // apd/modes.h
};

struct DraftRow {
  int64_t token;  // local index of the first best score (0 when every score is -inf)
  float score;    // that score
  Lse kept;  // log-sum-exp state of D over the kept entries
};

struct MixtureRow {
  int64_t target;  // local index, as DraftRow::token
  float score;
  Lse dllm_kept, verifier, mixture_kept;  // log-sum-exp states
};

DraftRow draft_row(const void* row, apd_dtype dtype, int64_t vocab, const RowMath& rm, const RowNoise& nr);
MixtureRow mixture_row(const void* drow, apd_dtype dtype_d, const void* arow, apd_dtype dtype_a,
                       int64_t vocab, const RowMath& rm, const MixMath& mm, const RowNoise& nr);

// float32 value of entry j of a row of the given dtype (NaN -> -inf).
float load_entry(const void* row, apd_dtype dtype, int64_t j);

// Filter threshold in x units (see RowMath) for top_k / top_p; -inf when neither is active.
float filter_threshold(const void* row, apd_dtype dtype, int64_t vocab, bool greedy, float inv_temperature,
                       int64_t top_k, double top_p);

}  // namespace apd::cpu
