// Argument checks shared by every C++ entry point (C ABI and torch bindings): each returns
// nullptr when the arguments are usable, else a message naming the bad argument.
#pragma once

#include <cmath>

#include "apd/apd.h"
#include "apd/knobs.h"
#include "apd/modes.h"

namespace apd {

inline bool is_logit_dtype(apd_dtype t) {
  return t == APD_FLOAT32 || t == APD_FLOAT16 || t == APD_BFLOAT16;
}

// The scalar knobs of a filter (its *_rows values are checked by check_rows, where readable).
inline const char* check_filter(const apd_filter& f) {
  if (!(f.temperature >= 0.0)) return "temperature must be >= 0";
  if (f.temperature > 0.0 && !std::isfinite(static_cast<float>(1.0 / f.temperature)))
    return "temperature is too small (use 0 for greedy)";
  if (f.top_k < 0) return "top_k must be >= 0";
  if (!(f.top_p > 0.0 && f.top_p <= 1.0)) return "top_p must be in (0, 1]";
  return nullptr;
}

inline const char* check_mixture_weight(double w) {
  return w >= 0.0 && w <= 1.0 ? nullptr : "mixture_weight must be in [0, 1]";
}

// Every row's knobs (host memory: the CPU entry points; the CUDA ones cannot read them without a
// sync). On failure *bad_row is the first bad row. Messages name the knob as the scalar checks do.
inline const char* check_rows(const apd_filter& f, const double* mixture_weight_rows, int64_t batch,
                              int64_t* bad_row) {
  if (!filter_per_row(f) && mixture_weight_rows == nullptr) return nullptr;
  for (int64_t b = 0; b < batch; ++b) {
    *bad_row = b;
    if (const char* e = check_filter(row_filter(f, b))) return e;
    if (mixture_weight_rows != nullptr)
      if (const char* e = check_mixture_weight(mixture_weight_rows[b])) return e;
  }
  return nullptr;
}

inline const char* check_noise(const apd_noise& n, bool needed) {
  if (n.uniform != nullptr) {
    if (n.uniform_dtype != APD_FLOAT32 && n.uniform_dtype != APD_FLOAT64)
      return "noise.uniform must be float32 or float64";
    return nullptr;
  }
  if (needed && n.seed_per_row && n.seeds == nullptr) return "seed_per_row needs a seeds pointer";
  if (needed && n.offset_per_row && n.offset == nullptr) return "offset_per_row needs an offset pointer";
  return nullptr;
}

// The per-row mixture weights of an op's arguments (none for the draft ops).
inline const double* mixture_weight_rows_of(const apd_sample_draft_args&) { return nullptr; }
inline const double* mixture_weight_rows_of(const apd_sample_draft_partial_args&) { return nullptr; }
inline const double* mixture_weight_rows_of(const apd_mixture_accept_args& a) { return a.mixture_weight_rows; }
inline const double* mixture_weight_rows_of(const apd_mixture_accept_partial_args& a) { return a.mixture_weight_rows; }

// The filter's scalars as check_filter reads them: a scalar that a *_rows pointer replaces is not
// checked (callers may leave any value there).
inline apd_filter scalar_knobs(const apd_filter& f) {
  apd_filter s{};
  s.temperature = f.temperature_rows != nullptr ? 0.0 : f.temperature;
  s.top_k = f.top_k_rows != nullptr ? 0 : f.top_k;
  s.top_p = f.top_p_rows != nullptr ? 1.0 : f.top_p;
  return s;
}

inline const char* check_sizes(int64_t batch, int64_t window, int64_t vocab) {
  if (batch <= 0 || window <= 0 || vocab <= 0) return "batch, window and vocab must be positive";
  if (vocab > (int64_t{1} << 34)) return "vocab is too large for the noise counter";
  if (window > (int64_t{1} << 31)) return "window is too large for the noise counter";
  return nullptr;
}

inline const char* check_args(const apd_sample_draft_args& a) {
  if (const char* e = check_sizes(a.batch, a.window, a.vocab)) return e;
  if (a.dllm.data == nullptr || a.tokens == nullptr || a.logprobs == nullptr) return "null pointer argument";
  if (!is_logit_dtype(a.dllm.dtype)) return "dllm logits must be float32, float16 or bfloat16";
  if (const char* e = check_filter(scalar_knobs(a.filter))) return e;
  return check_noise(a.noise, apd_draft_mode_of(&a.filter, &a.noise) != APD_DRAFT_ARGMAX);
}

inline const char* check_args(const apd_mixture_accept_args& a) {
  if (const char* e = check_sizes(a.batch, a.window, a.vocab)) return e;
  if (a.dllm.data == nullptr || a.verifier.data == nullptr || a.draft_tokens == nullptr ||
      a.num_accepted == nullptr || a.target_tokens == nullptr || a.logp_dllm == nullptr ||
      a.logp_verifier == nullptr || a.logp_mixture == nullptr)
    return "null pointer argument";
  if (!is_logit_dtype(a.dllm.dtype)) return "dllm logits must be float32, float16 or bfloat16";
  if (!is_logit_dtype(a.verifier.dtype)) return "verifier logits must be float32, float16 or bfloat16";
  if (a.mixture_weight_rows == nullptr)
    if (const char* e = check_mixture_weight(a.mixture_weight)) return e;
  if (const char* e = check_filter(scalar_knobs(a.filter))) return e;
  return check_noise(a.noise, apd_target_sampled(apd_target_mode_of(a.greedy_target, &a.filter, &a.noise)) != 0);
}

// The vocabulary slice of a partial op: global ids [vocab_offset, vocab_offset + vocab) must have
// noise counters (vocab_offset % 4 == 0: a Philox counter covers tokens 4c .. 4c + 3).
inline const char* check_vocab_offset(int64_t vocab_offset, int64_t vocab) {
  if (vocab_offset < 0) return "vocab_offset must be >= 0";
  if (vocab_offset % 4 != 0) return "vocab_offset must be a multiple of 4 (noise is drawn 4 tokens per counter)";
  if (vocab_offset > (int64_t{1} << 34) - vocab) return "vocab_offset + vocab is too large for the noise counter";
  return nullptr;
}

inline const char* check_args(const apd_sample_draft_partial_args& a) {
  if (const char* e = check_sizes(a.batch, a.window, a.vocab)) return e;
  if (const char* e = check_vocab_offset(a.vocab_offset, a.vocab)) return e;
  if (a.dllm.data == nullptr || a.tokens == nullptr || a.stats == nullptr) return "null pointer argument";
  if (!is_logit_dtype(a.dllm.dtype)) return "dllm logits must be float32, float16 or bfloat16";
  if (const char* e = check_filter(scalar_knobs(a.filter))) return e;
  return check_noise(a.noise, apd_draft_mode_of(&a.filter, &a.noise) != APD_DRAFT_ARGMAX);
}

inline const char* check_args(const apd_mixture_accept_partial_args& a) {
  if (const char* e = check_sizes(a.batch, a.window, a.vocab)) return e;
  if (const char* e = check_vocab_offset(a.vocab_offset, a.vocab)) return e;
  if (a.dllm.data == nullptr || a.verifier.data == nullptr || a.draft_tokens == nullptr ||
      a.target_tokens == nullptr || a.stats == nullptr)
    return "null pointer argument";
  if (!is_logit_dtype(a.dllm.dtype)) return "dllm logits must be float32, float16 or bfloat16";
  if (!is_logit_dtype(a.verifier.dtype)) return "verifier logits must be float32, float16 or bfloat16";
  if (a.mixture_weight_rows == nullptr)
    if (const char* e = check_mixture_weight(a.mixture_weight)) return e;
  if (const char* e = check_filter(scalar_knobs(a.filter))) return e;
  return check_noise(a.noise, apd_target_sampled(apd_target_mode_of(a.greedy_target, &a.filter, &a.noise)) != 0);
}

}  // namespace apd
