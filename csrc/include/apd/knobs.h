// Per-row knobs (apd.h: apd_filter's *_rows pointers, mixture_weight_rows): row b's values as the
// scalars of a call on row b alone. Every backend resolves a row's knobs here first and then runs
// the scalar math, which is what makes row b of a mixed batch equal that call bit for bit.
// Host and device (the pointers are host memory for the CPU kernels, device memory for CUDA).
#pragma once

#include <cstdint>

#include "apd/apd.h"
#include "apd/philox.h"  // APD_HD

namespace apd {

// 1 when any knob of the call is per row.
APD_HD bool filter_per_row(const apd_filter& f) {
  return f.temperature_rows != nullptr || f.top_k_rows != nullptr || f.top_p_rows != nullptr;
}

// The filter of batch row b with scalars only (its *_rows pointers NULL).
APD_HD apd_filter row_filter(const apd_filter& f, int64_t b) {
  apd_filter r{};
  r.temperature = f.temperature_rows != nullptr ? f.temperature_rows[b] : f.temperature;
  r.top_k = f.top_k_rows != nullptr ? f.top_k_rows[b] : f.top_k;
  r.top_p = f.top_p_rows != nullptr ? f.top_p_rows[b] : f.top_p;
  return r;
}

// The mixture weight of batch row b.
APD_HD double row_mixture_weight(double mixture_weight, const double* rows, int64_t b) {
  return rows != nullptr ? rows[b] : mixture_weight;
}

}  // namespace apd
