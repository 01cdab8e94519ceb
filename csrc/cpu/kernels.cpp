// Instantiates the row kernels twice, for baseline x86-64 and for AVX2+FMA, and picks one at
// run time. Everything the kernels call is inline and internal, so no AVX2 code can leak into
// the baseline path through a shared symbol.
#include "cpu/kernels.h"

#include <cmath>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#endif

#include "apd/math.h"
#include "apd/philox.h"

namespace apd::cpu {
namespace {

struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

#define APD_VARIANT generic
#include "cpu/row_kernels.inc"
#undef APD_VARIANT

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define APD_HAVE_AVX2_VARIANT 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define APD_VARIANT avx2
#define APD_VARIANT_AVX2 1
#include "cpu/row_kernels.inc"
#undef APD_VARIANT_AVX2
#undef APD_VARIANT
#pragma GCC pop_options
#endif

bool use_avx2() {
#if defined(APD_HAVE_AVX2_VARIANT)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

template <typename F>
auto with_dtype(const void* p, apd_dtype dtype, F&& f) {
  switch (dtype) {
    case APD_FLOAT16:
      return f(static_cast<const F16*>(p));
    case APD_BFLOAT16:
      return f(static_cast<const Bf16*>(p));
    default:
      return f(static_cast<const float*>(p));
  }
}

}  // namespace

DraftRow draft_row(const void* row, apd_dtype dtype, int64_t vocab, const RowMath& rm, const NoiseRow& nr) {
  return with_dtype(row, dtype, [&](auto* r) {
#if defined(APD_HAVE_AVX2_VARIANT)
    if (use_avx2()) return avx2::draft_row(r, vocab, rm, nr);
#endif
    return generic::draft_row(r, vocab, rm, nr);
  });
}

MixtureRow mixture_row(const void* drow, apd_dtype dtype_d, const void* arow, apd_dtype dtype_a,
                       int64_t vocab, const RowMath& rm, const MixMath& mm, const NoiseRow& nr) {
  return with_dtype(drow, dtype_d, [&](auto* d) {
    return with_dtype(arow, dtype_a, [&](auto* a) {
#if defined(APD_HAVE_AVX2_VARIANT)
      if (use_avx2()) return avx2::mixture_row(d, a, vocab, rm, mm, nr);
#endif
      return generic::mixture_row(d, a, vocab, rm, mm, nr);
    });
  });
}

float load_entry(const void* row, apd_dtype dtype, int64_t j) {
  return nan_to_neginf(with_dtype(row, dtype, [&](auto* r) { return generic::load(r, j); }));
}

}  // namespace apd::cpu
