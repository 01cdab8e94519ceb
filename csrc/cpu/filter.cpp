// top-k / top-p thresholds of one row (CPU). Only runs when a filter is active.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "apd/math.h"
#include "cpu/kernels.h"

namespace apd::cpu {
namespace {

// Smallest value kept by top-p among `vals` (finite, any order; modified): keep v when the mass of
// strictly larger values is < top_p * Z. Sorts only as large a prefix as the answer needs.
float top_p_threshold(std::vector<float>& vals, double top_p) {
  const int64_t n = static_cast<int64_t>(vals.size());
  if (n == 0) return std::numeric_limits<float>::infinity();
  const float m = *std::max_element(vals.begin(), vals.end());
  // +inf entries (x = D / T overflowed) hold all the mass: only they are kept (reference.py).
  if (m == std::numeric_limits<float>::infinity()) return m;
  double z = 0.0;
  for (float v : vals) z += std::exp(static_cast<double>(v - m));
  const double target = top_p * z;
  for (int64_t prefix = std::min<int64_t>(n, 256);; prefix = std::min<int64_t>(n, prefix * 4)) {
    std::partial_sort(vals.begin(), vals.begin() + prefix, vals.end(), std::greater<float>());
    double mass_greater = 0.0;  // mass of values strictly greater than vals[j]
    double group_mass = 0.0;    // mass of the current run of equal values
    for (int64_t j = 0; j < prefix; ++j) {
      if (j > 0 && vals[j] != vals[j - 1]) {
        mass_greater += group_mass;
        group_mass = 0.0;
        if (mass_greater >= target) return vals[j - 1];
      }
      group_mass += std::exp(static_cast<double>(vals[j] - m));
    }
    if (prefix == n) return vals[n - 1];
    // The prefix ended inside the kept set (or inside a run of ties): sort a longer prefix.
  }
}

}  // namespace

float filter_threshold(const void* row, apd_dtype dtype, int64_t vocab, bool greedy, float inv_temperature,
                       int64_t top_k, double top_p) {
  const bool use_k = top_k > 0 && top_k < vocab;
  const bool use_p = top_p < 1.0;
  if (!use_k && !use_p) return kNegInf;
  thread_local std::vector<float> x;
  x.resize(static_cast<size_t>(vocab));
  for (int64_t j = 0; j < vocab; ++j) {
    const float d = load_entry(row, dtype, j);
    x[j] = greedy ? d : d * inv_temperature;
  }
  float tau = kNegInf;
  if (use_k) {
    thread_local std::vector<float> tmp;
    tmp = x;
    std::nth_element(tmp.begin(), tmp.begin() + (top_k - 1), tmp.end(), std::greater<float>());
    tau = tmp[top_k - 1];
  }
  if (use_p) {
    thread_local std::vector<float> kept;
    kept.clear();
    for (float v : x)
      if (v >= tau && v > kNegInf) kept.push_back(v);
    tau = std::max(tau, top_p_threshold(kept, top_p));
  }
  return tau;
}

}  // namespace apd::cpu
