// C ABI entry points of the CPU backend: argument checks, rows in parallel (OpenMP), and the
// accepted-prefix reduction across each batch row's window.
#include <algorithm>
#include <cmath>
#include <limits>

#include "apd/apd.h"
#include "apd/math.h"
#include "apd/modes.h"
#include "apd/philox.h"
#include "apd/validate.h"
#include "cpu/kernels.h"
#include "cpu/rows.h"

namespace apd::cpu {
namespace {

// The accepted prefix of batch row b (APD_SPEC step 4): draft tokens in range that equal the
// target (position 0 always agrees), at most valid_length positions.
int64_t accepted(const apd_mixture_accept_args& a, int64_t b, int64_t valid_length) {
  int64_t n = 0;
  for (int64_t i = 0; i < valid_length; ++i) {
    const int64_t tok = a.draft_tokens[b * a.draft_stride_b + i];
    if (tok < 0 || tok >= a.vocab || (i > 0 && tok != a.target_tokens[b * a.window + i])) break;
    ++n;
  }
  return n;
}

}  // namespace
}  // namespace apd::cpu

extern "C" apd_status apd_sample_draft_cpu(const apd_sample_draft_args* args) {
  using namespace apd::cpu;
  if (!checked(args)) return APD_ERROR_INVALID_ARGUMENT;
  const apd_sample_draft_args& a = *args;
  const int64_t rows = a.batch * a.window;
#pragma omp parallel for schedule(dynamic, 1) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / a.window, i = r % a.window;
    const void* row = row_ptr(a.dllm, b, i);
    const RowMath rm = row_math(apd::row_filter(a.filter, b), row, a.dllm.dtype, a.vocab);
    const DraftRow out = draft_row(row, a.dllm.dtype, a.vocab, rm, apd::row_noise(a.noise, b, i));
    a.tokens[r] = out.token;
    // The token is outside the kept set only when every score is -inf (token 0): then -inf - lse,
    // as reference.py's log_softmax over the kept entries gives.
    a.logprobs[r] = apd::log_prob(kept(load_entry(row, a.dllm.dtype, out.token), rm), out.kept);
  }
  return APD_OK;
}

extern "C" apd_status apd_mixture_accept_cpu(const apd_mixture_accept_args* args) {
  using namespace apd::cpu;
  if (!checked(args)) return APD_ERROR_INVALID_ARGUMENT;
  const apd_mixture_accept_args& a = *args;
  const int64_t K = a.window;
  const int64_t rows = a.batch * K;
  auto valid_length = [&](int64_t b) {
    return a.valid_lengths == nullptr ? K : std::clamp<int64_t>(a.valid_lengths[b], 0, K);
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();

#pragma omp parallel for schedule(dynamic, 1) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / K, i = r % K;
    if (i >= valid_length(b)) {
      a.target_tokens[r] = -1;
      a.logp_dllm[r] = a.logp_verifier[r] = a.logp_mixture[r] = 0.0f;
      continue;
    }
    const void* drow = row_ptr(a.dllm, b, i);
    const void* arow = row_ptr(a.verifier, b, i);
    const apd_filter f = apd::row_filter(a.filter, b);
    const RowMath rm = row_math(f, drow, a.dllm.dtype, a.vocab);
    const MixMath mm = mix_math(apd::row_mixture_weight(a.mixture_weight, a.mixture_weight_rows, b), a.greedy_target,
                                f, a.noise);
    const MixtureRow out =
        mixture_row(drow, a.dllm.dtype, arow, a.verifier.dtype, a.vocab, rm, mm, apd::row_noise(a.noise, b, i));
    a.target_tokens[r] = out.target;
    const int64_t tok = a.draft_tokens[b * a.draft_stride_b + i];
    if (tok < 0 || tok >= a.vocab) {
      a.logp_dllm[r] = a.logp_verifier[r] = a.logp_mixture[r] = nan;
      continue;
    }
    const float d = load_entry(drow, a.dllm.dtype, tok);
    const float v = load_entry(arow, a.verifier.dtype, tok);
    const bool keep = kept(d, rm) > apd::kNegInf;
    a.logp_dllm[r] = apd::log_prob(kept(d, rm), out.dllm_kept);
    a.logp_verifier[r] = apd::log_prob(v, out.verifier);
    a.logp_mixture[r] = apd::log_prob(keep ? mix_value(mm, d, v) : apd::kNegInf, out.mixture_kept);
  }
  for (int64_t b = 0; b < a.batch; ++b) a.num_accepted[b] = accepted(a, b, valid_length(b));
  return APD_OK;
}
