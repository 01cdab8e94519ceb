// Scalar math shared by the CPU kernels (and usable on the device): float conversions of the
// logit dtypes, a branch-free log/exp that compilers vectorise, the Gumbel transform, and the
// two merges every reduction here is built from (online log-sum-exp, first argmax).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "apd/philox.h"

namespace apd {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

APD_HD float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

APD_HD uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

APD_HD float bf16_bits_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// IEEE binary16 -> float, exact for normals, subnormals, inf and NaN; branch-free so loops vectorise.
APD_HD float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t rest = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent+mantissa in place
  // Rebias the exponent by multiplying with 2^112; inf/NaN are fixed up separately.
  const float scaled = bits_to_float(rest) * 5.192296858534828e+33f;  // 2^112
  const uint32_t inf_nan = (h & 0x7c00u) == 0x7c00u ? 0x7f800000u | rest : 0u;
  return bits_to_float(sign | (inf_nan ? inf_nan : float_to_bits(scaled)));
}

// Natural log for x > 0 (cephes-style: mantissa in [sqrt(1/2), sqrt(2)), degree-8 polynomial),
// ~1 ulp in the range the Gumbel transform uses. x <= 0 or non-finite inputs are not expected.
APD_HD float fast_log(float x) {
  uint32_t bits = float_to_bits(x);
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xffu) - 126;
  float m = bits_to_float((bits & 0x007fffffu) | 0x3f000000u);  // in [0.5, 1)
  const bool small = m < 0.70710678118654752f;
  e -= small ? 1 : 0;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return m + y + 0.693359375f * fe;
}

// exp(x) for x <= 0 (all callers subtract a running max); returns 0 below -87.
APD_HD float fast_exp_nonpos(float x) {
  const bool under = x < -87.0f;
  x = under ? -87.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return under ? 0.0f : p * scale;
}

APD_HD float gumbel_from_uniform(float u) { return -fast_log(-fast_log(u)); }

// Online log-sum-exp state: lse = max + log(sum), sum of exp(x - max).
struct Lse {
  float max;
  float sum;
};

APD_HD Lse lse_init() { return Lse{kNegInf, 0.0f}; }

APD_HD Lse lse_merge(Lse a, Lse b) {
  const float m = a.max > b.max ? a.max : b.max;
  if (m == kNegInf) return Lse{kNegInf, 0.0f};
  return Lse{m, a.sum * std::exp(a.max - m) + b.sum * std::exp(b.max - m)};
}

// log softmax of an entry x of the row whose state is s: (x - max) - log(sum). Never max + log(sum)
// first: at large logits (fp16 rows near 6e4, float32 near 3e38) that sum rounds at max's scale
// (or overflows) and the difference loses the log-prob. A row without finite entries gives NaN.
APD_HD float log_prob(float x, Lse s) {
  return s.max == kNegInf ? x - s.max : (x - s.max) - std::log(s.sum);
}

// First argmax: larger score wins, equal scores go to the lower index.
struct Best {
  float score;
  int64_t index;
};

APD_HD Best best_init() { return Best{kNegInf, 0}; }

// a covers indices before b's when the scan is in order; otherwise compare indices.
APD_HD Best best_merge(Best a, Best b) {
  if (b.score > a.score || (b.score == a.score && b.index < a.index && b.score != kNegInf)) return b;
  return a;
}

APD_HD float nan_to_neginf(float x) { return x != x ? kNegInf : x; }

}  // namespace apd
