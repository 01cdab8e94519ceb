/* The one table of the ops' modes, shared by every backend: the CPU and CUDA kernels use these
 * values, apd_ext/triton/modes.py mirrors them for the Triton kernels, and
 * python_tests/test_ops_modes.py parses this header to check that the two agree.
 *
 * A mode is fixed per call from the normalised arguments (apd_target_mode_of, apd_draft_mode_of)
 * and selects which value the kernels take the first argmax of (apd_ext/reference.py is the spec).
 * Plain C, like apd.h.
 */
#ifndef APD_MODES_H_
#define APD_MODES_H_

#include "apd/apd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* mixture_accept: how the target token of a window position is chosen. */
typedef enum apd_target_mode {
  APD_TARGET_ARGMAX_MIX = 0,  /* greedy_target: argmax of the raw mixture over the whole vocabulary */
  APD_TARGET_ARGMAX_KEPT = 1, /* T == 0: argmax of the mixture over the kept (filtered) entries */
  APD_TARGET_PHILOX = 2,      /* T > 0: argmax of kept mixture / T + g, g from the Philox generator */
  APD_TARGET_UNIFORM = 3      /* T > 0: the same, g = -log(-log(u)) of explicit uniforms u */
} apd_target_mode;

/* sample_draft: how the draft token is chosen. */
typedef enum apd_draft_mode {
  APD_DRAFT_ARGMAX = 0,  /* T == 0: argmax of the kept D */
  APD_DRAFT_PHILOX = 1,  /* T > 0: argmax of kept D / T + g, g from the Philox generator */
  APD_DRAFT_UNIFORM = 2  /* T > 0: the same with g from explicit uniforms */
} apd_draft_mode;

/* Per-row temperatures (filter->temperature_rows) choose the sampled mode of the call: its kernels
 * then take each row's temperature, and a row whose temperature is 0 is greedy (no noise). */
static inline apd_draft_mode apd_draft_mode_of(const apd_filter* filter, const apd_noise* noise) {
  if (filter->temperature_rows == NULL && filter->temperature == 0.0) return APD_DRAFT_ARGMAX;
  return noise->uniform != NULL ? APD_DRAFT_UNIFORM : APD_DRAFT_PHILOX;
}

static inline apd_target_mode apd_target_mode_of(int greedy_target, const apd_filter* filter,
                                                  const apd_noise* noise) {
  if (greedy_target) return APD_TARGET_ARGMAX_MIX;
  if (filter->temperature_rows == NULL && filter->temperature == 0.0) return APD_TARGET_ARGMAX_KEPT;
  return noise->uniform != NULL ? APD_TARGET_UNIFORM : APD_TARGET_PHILOX;
}

/* 1 when the target adds noise (either source), i.e. the mode needs a seed or uniforms. */
static inline int apd_target_sampled(apd_target_mode mode) {
  return mode == APD_TARGET_PHILOX || mode == APD_TARGET_UNIFORM;
}

/* 1 when top_k or top_p may remove entries from a row of `vocab` entries, i.e. a threshold must be
 * computed (top_k >= vocab keeps everything, like top_k = 0). Per-row top_k / top_p count as
 * active: the threshold pass then decides row by row (apd_row_filter_active). */
static inline int apd_filter_active(const apd_filter* filter, int64_t vocab) {
  if (filter->top_k_rows != NULL || filter->top_p_rows != NULL) return 1;
  return (filter->top_k > 0 && filter->top_k < vocab) || filter->top_p < 1.0;
}

/* The same for one row's scalars (a filter whose *_rows are NULL, e.g. from apd::row_filter). */
static inline int apd_row_filter_active(int64_t top_k, double top_p, int64_t vocab) {
  return (top_k > 0 && top_k < vocab) || top_p < 1.0;
}

#ifdef __cplusplus
}
#endif

#endif /* APD_MODES_H_ */
