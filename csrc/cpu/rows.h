// Per-row helpers of the CPU entry points (ops.cpp: the full ops, partial_ops.cpp: the
// vocabulary-parallel partial ops): row addressing, the filter threshold of a row, kept values.
#pragma once

#include <cstddef>
#include <cstdint>

#include "apd/apd.h"
#include "apd/knobs.h"
#include "apd/math.h"
#include "apd/modes.h"
#include "apd/validate.h"
#include "cpu/kernels.h"

namespace apd::cpu {

// The arguments of a CPU entry point are usable: the shared checks plus every row's knobs (host
// memory here, so the per-row values are checked too).
template <class Args>
bool checked(const Args* a) {
  if (a == nullptr || apd::check_args(*a) != nullptr) return false;
  int64_t bad_row = 0;
  return apd::check_rows(a->filter, apd::mixture_weight_rows_of(*a), a->batch, &bad_row) == nullptr;
}

inline size_t elem_bytes(apd_dtype t) {
  switch (t) {
    case APD_FLOAT16:
    case APD_BFLOAT16:
      return 2;
    case APD_FLOAT64:
      return 8;
    default:
      return 4;
  }
}

// Row (b, i) of a [batch, window, vocab] logit tensor.
inline const void* row_ptr(const apd_logits& l, int64_t b, int64_t i) {
  return static_cast<const char*>(l.data) + (b * l.stride_b + i * l.stride_k) * elem_bytes(l.dtype);
}

// How the row's logits are filtered (f: the row's own scalars, apd::row_filter): the threshold is `given` when not null (the partial ops'
// threshold override, x units), else computed over the row's `vocab` entries when a filter is
// active, else -inf.
inline RowMath row_math(const apd_filter& f, const void* row, apd_dtype dtype, int64_t vocab,
                        const float* given = nullptr) {
  RowMath rm;
  rm.greedy = f.temperature == 0.0;
  rm.inv_temperature = rm.greedy ? 1.0f : static_cast<float>(1.0 / f.temperature);
  rm.threshold = given != nullptr ? *given
                 : apd_filter_active(&f, vocab)
                     ? filter_threshold(row, dtype, vocab, rm.greedy, rm.inv_temperature, f.top_k, f.top_p)
                     : kNegInf;
  return rm;
}

// d when the entry is in the filtered support, else -inf (reference.py: where(keep, D, -inf)).
inline float kept(float d, const RowMath& rm) {
  const float x = rm.greedy ? d : d * rm.inv_temperature;
  return x >= rm.threshold && d > kNegInf ? d : kNegInf;
}

inline MixMath mix_math(double mixture_weight, int32_t greedy_target, const apd_filter& filter,
                        const apd_noise& noise) {
  MixMath mm;
  mm.w = static_cast<float>(mixture_weight);
  mm.omw = static_cast<float>(1.0 - mixture_weight);
  mm.weight_is_one = mixture_weight == 1.0;
  mm.weight_is_zero = mixture_weight == 0.0;
  mm.target = apd_target_mode_of(greedy_target, &filter, &noise);
  return mm;
}

// The mixture logit of one entry as the row kernels compute it (NaN -> -inf).
inline float mix_value(const MixMath& mm, float d, float a) {
  return mm.weight_is_one ? d : mm.weight_is_zero ? a : nan_to_neginf(mm.w * d + mm.omw * a);
}

}  // namespace apd::cpu
