// Instantiates the row kernels three times, for baseline x86-64, AVX2+FMA and AVX-512, and picks
// one at run time. Everything the kernels call is inline and internal, so no AVX2 code can leak into
// the baseline path through a shared symbol.
#include "cpu/kernels.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

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

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's own avx512fintrin.h (_mm512_undefined)
#define APD_VARIANT avx512
#define APD_VARIANT_AVX512 1
#include "cpu/row_kernels.inc"
#undef APD_VARIANT_AVX512
#undef APD_VARIANT
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

enum class Isa { kGeneric, kAvx2, kAvx512 };

// The best variant this CPU runs; APD_EXT_CPU_ISA=generic|avx2|avx512 caps it (tests run every
// variant through it). Read once.
Isa isa() {
  static const Isa chosen = [] {
#if defined(APD_HAVE_AVX2_VARIANT)
    Isa best = Isa::kGeneric;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
    if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      best = Isa::kAvx512;
    const char* cap = std::getenv("APD_EXT_CPU_ISA");
    if (cap != nullptr) {
      const Isa want = std::strcmp(cap, "generic") == 0 ? Isa::kGeneric
                       : std::strcmp(cap, "avx2") == 0  ? Isa::kAvx2
                                                        : Isa::kAvx512;
      if (want < best) best = want;
    }
    return best;
#else
    return Isa::kGeneric;
#endif
  }();
  return chosen;
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

DraftRow draft_row(const void* row, apd_dtype dtype, int64_t vocab, const RowMath& rm, const RowNoise& nr) {
  return with_dtype(row, dtype, [&](auto* r) {
#if defined(APD_HAVE_AVX2_VARIANT)
    if (isa() == Isa::kAvx512) return avx512::draft_row(r, vocab, rm, nr);
    if (isa() == Isa::kAvx2) return avx2::draft_row(r, vocab, rm, nr);
#endif
    return generic::draft_row(r, vocab, rm, nr);
  });
}

MixtureRow mixture_row(const void* drow, apd_dtype dtype_d, const void* arow, apd_dtype dtype_a,
                       int64_t vocab, const RowMath& rm, const MixMath& mm, const RowNoise& nr) {
  return with_dtype(drow, dtype_d, [&](auto* d) {
    return with_dtype(arow, dtype_a, [&](auto* a) {
#if defined(APD_HAVE_AVX2_VARIANT)
      if (isa() == Isa::kAvx512) return avx512::mixture_row(d, a, vocab, rm, mm, nr);
      if (isa() == Isa::kAvx2) return avx2::mixture_row(d, a, vocab, rm, mm, nr);
#endif
      return generic::mixture_row(d, a, vocab, rm, mm, nr);
    });
  });
}

float load_entry(const void* row, apd_dtype dtype, int64_t j) {
  return nan_to_neginf(with_dtype(row, dtype, [&](auto* r) { return generic::load(r, j); }));
}

}  // namespace apd::cpu
