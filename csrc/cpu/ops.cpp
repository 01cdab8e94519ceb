// C ABI entry points of the CPU backend: argument checks, rows in parallel (OpenMP), and the
// accepted-prefix reduction across each batch row's window.
#include <algorithm>
#include <cmath>
#include <limits>

#include "apd/apd.h"
#include "apd/math.h"
#include "apd/philox.h"
#include "apd/validate.h"
#include "cpu/kernels.h"

namespace apd::cpu {
namespace {

size_t elem_bytes(apd_dtype t) {
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

const void* row_ptr(const apd_logits& l, int64_t b, int64_t i) {
  return static_cast<const char*>(l.data) + (b * l.stride_b + i * l.stride_k) * elem_bytes(l.dtype);
}

RowMath row_math(const apd_filter& f) {
  RowMath rm;
  rm.greedy = f.temperature == 0.0;
  rm.inv_temperature = rm.greedy ? 1.0f : static_cast<float>(1.0 / f.temperature);
  rm.threshold = -std::numeric_limits<float>::infinity();
  return rm;
}

NoiseRow noise_row(const apd_noise& n, int64_t b, int64_t i) {
  NoiseRow nr{};
  if (n.uniform != nullptr) {
    const int64_t off = b * n.uniform_stride_b + i * n.uniform_stride_k;
    if (n.uniform_dtype == APD_FLOAT64)
      nr.uniform64 = static_cast<const double*>(n.uniform) + off;
    else
      nr.uniform32 = static_cast<const float*>(n.uniform) + off;
    return nr;
  }
  nr.seed = row_seed(n.seeds, n.seed_value, n.seed_per_row != 0, b);
  nr.offset = static_cast<uint64_t>(n.offset != nullptr ? *n.offset : n.offset_value);
  nr.window_index = static_cast<uint32_t>(i);
  return nr;
}

bool filter_active(const apd_filter& f, int64_t vocab) {
  return (f.top_k > 0 && f.top_k < vocab) || f.top_p < 1.0;
}

}  // namespace
}  // namespace apd::cpu

extern "C" apd_status apd_sample_draft_cpu(const apd_sample_draft_args* args) {
  using namespace apd::cpu;
  if (args == nullptr || apd::check_args(*args) != nullptr) return APD_ERROR_INVALID_ARGUMENT;
  const apd_sample_draft_args& a = *args;
  const int64_t rows = a.batch * a.window;
  const bool filtered = filter_active(a.filter, a.vocab);
#pragma omp parallel for schedule(dynamic, 1) if (rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / a.window, i = r % a.window;
    const void* row = row_ptr(a.dllm, b, i);
    RowMath rm = row_math(a.filter);
    if (filtered)
      rm.threshold = filter_threshold(row, a.dllm.dtype, a.vocab, rm.greedy, rm.inv_temperature,
                                      a.filter.top_k, a.filter.top_p);
    const DraftRow out = draft_row(row, a.dllm.dtype, a.vocab, rm, noise_row(a.noise, b, i));
    a.tokens[r] = out.token;
    // The token is outside the kept set only when every score is -inf (token 0): then -inf - lse,
    // as reference.py's log_softmax over the kept entries gives.
    const float d = load_entry(row, a.dllm.dtype, out.token);
    const float x = rm.greedy ? d : d * rm.inv_temperature;
    const bool keep = x >= rm.threshold && d > apd::kNegInf;
    a.logprobs[r] = (keep ? d : apd::kNegInf) - out.lse_kept;
  }
  return APD_OK;
}

extern "C" apd_status apd_mixture_accept_cpu(const apd_mixture_accept_args* args) {
  using namespace apd::cpu;
  if (args == nullptr || apd::check_args(*args) != nullptr) return APD_ERROR_INVALID_ARGUMENT;
  const apd_mixture_accept_args& a = *args;
  const int64_t K = a.window;
  const int64_t rows = a.batch * K;
  const bool filtered = filter_active(a.filter, a.vocab);
  auto valid_length = [&](int64_t b) {
    return a.valid_lengths == nullptr ? K : std::clamp<int64_t>(a.valid_lengths[b], 0, K);
  };
  MixMath mm;
  mm.w = static_cast<float>(a.mixture_weight);
  mm.omw = static_cast<float>(1.0 - a.mixture_weight);
  mm.weight_is_one = a.mixture_weight == 1.0;
  mm.weight_is_zero = a.mixture_weight == 0.0;
  mm.greedy_target = a.greedy_target != 0;
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
    RowMath rm = row_math(a.filter);
    if (filtered)
      rm.threshold = filter_threshold(drow, a.dllm.dtype, a.vocab, rm.greedy, rm.inv_temperature,
                                      a.filter.top_k, a.filter.top_p);
    const MixtureRow out =
        mixture_row(drow, a.dllm.dtype, arow, a.verifier.dtype, a.vocab, rm, mm, noise_row(a.noise, b, i));
    a.target_tokens[r] = out.target;
    const int64_t tok = a.draft_tokens[b * a.draft_stride_b + i];
    if (tok < 0 || tok >= a.vocab) {
      a.logp_dllm[r] = a.logp_verifier[r] = a.logp_mixture[r] = nan;
      continue;
    }
    const float d = load_entry(drow, a.dllm.dtype, tok);
    const float v = load_entry(arow, a.verifier.dtype, tok);
    const float x = rm.greedy ? d : d * rm.inv_temperature;
    const bool keep = x >= rm.threshold && d > apd::kNegInf;
    const float mix = mm.weight_is_one ? d : mm.weight_is_zero ? v : mm.w * d + mm.omw * v;
    a.logp_dllm[r] = (keep ? d : apd::kNegInf) - out.lse_dllm_kept;
    a.logp_verifier[r] = v - out.lse_verifier;
    a.logp_mixture[r] = (keep ? apd::nan_to_neginf(mix) : apd::kNegInf) - out.lse_mixture_kept;
  }

  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t L = valid_length(b);
    int64_t n = 0;
    for (int64_t i = 0; i < L; ++i) {
      const int64_t tok = a.draft_tokens[b * a.draft_stride_b + i];
      const bool ok = tok >= 0 && tok < a.vocab && (i == 0 || tok == a.target_tokens[b * K + i]);
      if (!ok) break;
      ++n;
    }
    a.num_accepted[b] = n;
  }
  return APD_OK;
}
