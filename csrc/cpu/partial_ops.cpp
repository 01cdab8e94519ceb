// C ABI entry points of the vocabulary-parallel partial ops on the CPU (apd.h; reference.py:
// sample_draft_partial / mixture_accept_partial): the row kernels of the full ops on one
// vocabulary slice, with the noise drawn at global token ids and an optional given threshold,
// reporting the best (score, global id) and the log-sum-exp states instead of log-probs.
#include <algorithm>
#include <cstdint>

#include "apd/apd.h"
#include "apd/math.h"
#include "apd/philox.h"
#include "apd/validate.h"
#include "cpu/kernels.h"
#include "cpu/rows.h"

extern "C" apd_status apd_sample_draft_partial_cpu(const apd_sample_draft_partial_args* args) {
  using namespace apd::cpu;
  if (!checked(args)) return APD_ERROR_INVALID_ARGUMENT;
  const apd_sample_draft_partial_args& a = *args;
  const int64_t rows = a.batch * a.window;
#pragma omp parallel for schedule(dynamic, 1) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / a.window, i = r % a.window;
    const void* row = row_ptr(a.dllm, b, i);
    const RowMath rm =
        row_math(apd::row_filter(a.filter, b), row, a.dllm.dtype, a.vocab, a.threshold ? a.threshold + r : nullptr);
    const DraftRow out =
        draft_row(row, a.dllm.dtype, a.vocab, rm, apd::row_noise(a.noise, b, i, a.vocab_offset));
    a.tokens[r] = a.vocab_offset + out.token;
    float* st = a.stats + r * APD_DRAFT_NSTATS;
    st[APD_DRAFT_STAT_SCORE] = out.score;
    st[APD_DRAFT_STAT_LSE_MAX] = out.kept.max;
    st[APD_DRAFT_STAT_LSE_SUM] = out.kept.sum;
    st[APD_DRAFT_STAT_VALUE] = kept(load_entry(row, a.dllm.dtype, out.token), rm);
  }
  return APD_OK;
}

extern "C" apd_status apd_mixture_accept_partial_cpu(const apd_mixture_accept_partial_args* args) {
  using namespace apd::cpu;
  using apd::kNegInf;
  if (!checked(args)) return APD_ERROR_INVALID_ARGUMENT;
  const apd_mixture_accept_partial_args& a = *args;
  const int64_t K = a.window;
  const int64_t rows = a.batch * K;

#pragma omp parallel for schedule(dynamic, 1) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / K, i = r % K;
    float* st = a.stats + r * APD_MIXTURE_NSTATS;
    const int64_t valid = a.valid_lengths == nullptr ? K : std::clamp<int64_t>(a.valid_lengths[b], 0, K);
    if (i >= valid) {
      a.target_tokens[r] = -1;
      for (int f = 0; f < APD_MIXTURE_NSTATS; ++f) st[f] = kNegInf;
      st[APD_MIXTURE_STAT_DLLM_SUM] = st[APD_MIXTURE_STAT_VERIFIER_SUM] = st[APD_MIXTURE_STAT_MIXTURE_SUM] = 0.0f;
      continue;
    }
    const void* drow = row_ptr(a.dllm, b, i);
    const void* arow = row_ptr(a.verifier, b, i);
    const apd_filter f = apd::row_filter(a.filter, b);
    const RowMath rm = row_math(f, drow, a.dllm.dtype, a.vocab, a.threshold ? a.threshold + r : nullptr);
    const MixMath mm = mix_math(apd::row_mixture_weight(a.mixture_weight, a.mixture_weight_rows, b), a.greedy_target,
                                f, a.noise);
    const MixtureRow out = mixture_row(drow, a.dllm.dtype, arow, a.verifier.dtype, a.vocab, rm, mm,
                                       apd::row_noise(a.noise, b, i, a.vocab_offset));
    a.target_tokens[r] = a.vocab_offset + out.target;
    st[APD_MIXTURE_STAT_SCORE] = out.score;
    st[APD_MIXTURE_STAT_DLLM_MAX] = out.dllm_kept.max;
    st[APD_MIXTURE_STAT_DLLM_SUM] = out.dllm_kept.sum;
    st[APD_MIXTURE_STAT_VERIFIER_MAX] = out.verifier.max;
    st[APD_MIXTURE_STAT_VERIFIER_SUM] = out.verifier.sum;
    st[APD_MIXTURE_STAT_MIXTURE_MAX] = out.mixture_kept.max;
    st[APD_MIXTURE_STAT_MIXTURE_SUM] = out.mixture_kept.sum;
    // The draft token is a global id: this slice holds it when it lies in [vocab_offset, + vocab).
    const int64_t tok = a.draft_tokens[b * a.draft_stride_b + i];
    if (tok >= a.vocab_offset && tok - a.vocab_offset < a.vocab) {
      const int64_t j = tok - a.vocab_offset;
      const float d = load_entry(drow, a.dllm.dtype, j);
      const float v = load_entry(arow, a.verifier.dtype, j);
      const float dk = kept(d, rm);
      st[APD_MIXTURE_STAT_DLLM_AT] = dk;
      st[APD_MIXTURE_STAT_VERIFIER_AT] = v;
      st[APD_MIXTURE_STAT_MIXTURE_AT] = dk > kNegInf ? mix_value(mm, d, v) : kNegInf;
    } else {
      st[APD_MIXTURE_STAT_DLLM_AT] = st[APD_MIXTURE_STAT_VERIFIER_AT] = st[APD_MIXTURE_STAT_MIXTURE_AT] = kNegInf;
    }
  }
  return APD_OK;
}
