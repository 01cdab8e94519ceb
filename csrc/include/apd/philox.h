// Counter-based noise shared by every backend (host and device).
//
// g[b, i, v] = gumbel(uniform(philox4x32_10(counter, key))[v & 3]) with
//   counter = (v >> 2, i, offset & 0xffffffff, offset >> 32)
//   key     = (row_seed & 0xffffffff, row_seed >> 32)
//   row_seed = seed[b] when one seed per row is given, else seed + b (two's complement wrap).
// apd_ext/reference.py, apd_ext/triton/noise.py, csrc/cpu and csrc/cuda implement the same
// function; python_tests/test_ops_vs_reference.py (and, for the CUDA code, csrc/cuda/emu) checks
// them against each other, python_tests/test_semantics.py against the Random123 answers.
#pragma once

#include <cmath>
#include <cstdint>

#include "apd/apd.h"

#if defined(__CUDACC__)
#define APD_HD __host__ __device__ __forceinline__
#else
#define APD_HD inline
#endif

namespace apd {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4 {
  uint32_t x[4];
};

APD_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32 with 10 rounds (Salmon et al., SC'11), the generator of cuRAND and Triton.
APD_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                             uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(kPhiloxM0, c0);
    const uint32_t lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = mulhi32(kPhiloxM1, c2);
    const uint32_t lo1 = kPhiloxM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// 23 random bits -> a float32 in [2^-24, 1 - 2^-24]; every value is exact, never 0 or 1,
// so -log(-log(u)) is finite.
APD_HD float uniform_from_bits(uint32_t bits) {
  return (static_cast<float>(bits >> 9) + 0.5f) * 1.1920928955078125e-07f;  // 2^-23
}

// Bounds of gumbel(uniform_from_bits(.)) over all 2^23 values (exact: -2.8114, 16.6355),
// widened by a margin that covers any log approximation used by the kernels. Used to skip
// noise for logits that cannot win a Gumbel-max.
constexpr float kGumbelMax = 16.75f;
constexpr float kGumbelMin = -2.85f;

// Smallest 23-bit uniform rank k = bits >> 9 whose Gumbel noise could exceed `needed` (with a
// margin for the log approximations): an entry with a smaller rank cannot gain `needed` from its
// noise, so its logs can be skipped. 0 when every rank might, 2^23 when none can.
APD_HD uint32_t min_rank_for_gumbel_above(float needed) {
  const double c = static_cast<double>(needed) - 1e-3;
  if (c <= static_cast<double>(kGumbelMin)) return 0;
  if (c >= static_cast<double>(kGumbelMax)) return 1u << 23;
  const double u = exp(-exp(-c));               // the uniform whose Gumbel is exactly c
  const double k = floor(u * 8388608.0 - 0.5);  // ranks above this have u_k > u
  return k <= 0.0 ? 0u : static_cast<uint32_t>(k);
}

// Row seed of batch row b: seeds[b] when per_row, else seed + b.
APD_HD uint64_t row_seed(const int64_t* seeds, int64_t seed_value, bool per_row, int64_t b) {
  if (seeds != nullptr) {
    return per_row ? static_cast<uint64_t>(seeds[b]) : static_cast<uint64_t>(seeds[0]) + b;
  }
  return static_cast<uint64_t>(seed_value) + static_cast<uint64_t>(b);
}

// The four uniforms' bits for vocabulary entries v0..v0+3 (v0 % 4 == 0) of window position i.
// v0 is 64-bit so that vocabularies up to 2^34 entries (validate.h) keep distinct counters.
APD_HD Philox4 noise_bits4(uint64_t seed, uint64_t offset, uint32_t i, uint64_t v0) {
  return philox4x32_10(static_cast<uint32_t>(v0 >> 2), i, static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The noise of one row (b, i) as the kernels read it: the row's explicit uniforms (u32 or u64,
// from apd_noise.uniform) or the generator's (row seed, offset, window index i).
// vocab_offset: global token id of the row's entry 0 (vocabulary-parallel partial ops; a multiple
// of 4, 0 for the full ops): generated noise is drawn at vocab_offset + v, uniforms at v.
struct RowNoise {
  uint64_t seed, offset;
  uint64_t vocab_offset;
  uint32_t i;
  const float* u32;
  const double* u64;
  APD_HD bool generated() const { return u32 == nullptr && u64 == nullptr; }
};

// Row (b, i) of an apd_noise (apd.h). Its pointers are read here: host memory for the CPU kernels,
// device memory inside the CUDA kernels.
APD_HD RowNoise row_noise(const apd_noise& n, int64_t b, int64_t i) {
  RowNoise r{};
  if (n.uniform != nullptr) {
    const int64_t off = b * n.uniform_stride_b + i * n.uniform_stride_k;
    if (n.uniform_dtype == APD_FLOAT64)
      r.u64 = static_cast<const double*>(n.uniform) + off;
    else
      r.u32 = static_cast<const float*>(n.uniform) + off;
    return r;
  }
  r.seed = row_seed(n.seeds, n.seed_value, n.seed_per_row != 0, b);
  r.offset = static_cast<uint64_t>(n.offset == nullptr ? n.offset_value : n.offset[n.offset_per_row != 0 ? b : 0]);
  r.i = static_cast<uint32_t>(i);
  return r;
}

// The same row of a vocabulary slice whose entry 0 is global token vocab_offset.
APD_HD RowNoise row_noise(const apd_noise& n, int64_t b, int64_t i, int64_t vocab_offset) {
  RowNoise r = row_noise(n, b, i);
  r.vocab_offset = static_cast<uint64_t>(vocab_offset);
  return r;
}

}  // namespace apd
