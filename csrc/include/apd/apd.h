/* apd_ext C ABI: the Adaptive Parallel Decoding sampling ops for engines that do not use PyTorch.
 *
 * Semantics are apd_ext/reference.py's (the executable spec) and ../shared/APD_SPEC.md's:
 *   apd_sample_draft:   draft tokens d[b,i] = argmax_v(D[b,i,v] / T + g[b,i,v]) over the filtered
 *                       vocabulary, plus log softmax(D)[d] over that support.
 *   apd_mixture_accept: target tokens s[b,i] = argmax_v((mixture_weight D + (1 - mixture_weight) A)
 *                       / T + g) with the same g, accepted prefix length n[b], and the three
 *                       log-probs of the draft tokens (modes.h lists how the target is chosen).
 * `window` is the number of positions drafted and verified at once (K in the Python docs).
 * Layout: logits are [batch, window, vocab] rows of contiguous entries; stride_b and stride_k are
 * element strides between batch rows and window rows. Outputs are dense [batch] / [batch, window].
 * Pointers of the _cpu functions are host memory; those of the _cuda functions device memory
 * (seed/offset pointers included), and the call is asynchronous on `stream`.
 */
#ifndef APD_APD_H_
#define APD_APD_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a struct's layout changes: 2 added the per-row knob pointers (apd_filter's *_rows,
 * mixture_weight_rows); 3 added apd_noise.offset_per_row. Zero-initialise the argument structs so
 * that unused pointers are NULL and flags 0. */
#define APD_ABI_VERSION 3

typedef enum apd_dtype {
  APD_FLOAT32 = 0,
  APD_FLOAT16 = 1,
  APD_BFLOAT16 = 2,
  APD_FLOAT64 = 3 /* uniform noise only */
} apd_dtype;

typedef enum apd_status {
  APD_OK = 0,
  APD_ERROR_INVALID_ARGUMENT = 1,
  APD_ERROR_UNSUPPORTED = 2, /* e.g. a CUDA entry point of a build without CUDA */
  APD_ERROR_CUDA = 3,
  APD_ERROR_WORKSPACE_TOO_SMALL = 4
} apd_status;

/* A [batch, window, vocab] logit tensor read in place. */
typedef struct apd_logits {
  const void* data;
  apd_dtype dtype; /* FLOAT32, FLOAT16 or BFLOAT16 */
  int64_t stride_b;
  int64_t stride_k;
} apd_logits;

/* Where the noise comes from. With uniform == NULL, g[b,i,v] is the counter-based Gumbel noise of
 * (row seed, offset, i, v) (csrc/include/apd/philox.h). The row seed of batch row b is seeds[b]
 * when seed_per_row, else (seeds ? seeds[0] : seed_value) + b. The offset of row b is offset[b]
 * when offset_per_row (each row's own step count: a continuous-batching engine admits rows at
 * different steps), else *offset when offset is not NULL (a device pointer stays graph-safe), else
 * offset_value. With uniform != NULL,
 * g = -log(-log(u)) of the given [batch, window, >= vocab] uniforms (FLOAT32 or FLOAT64). */
typedef struct apd_noise {
  const int64_t* seeds;
  int64_t seed_value;
  int32_t seed_per_row;
  const int64_t* offset;
  int64_t offset_value;
  const void* uniform;
  apd_dtype uniform_dtype;
  int64_t uniform_stride_b;
  int64_t uniform_stride_k;
  int32_t offset_per_row; /* 1: offset points to [batch] row offsets (offset must not be NULL) */
} apd_noise;

/* Sampling filters of the dLLM distribution; top_k = 0 and top_p = 1 disable them.
 * Per-row knobs: each *_rows pointer, when not NULL, holds [batch] values (row b's knob is
 * *_rows[b]) and replaces the scalar beside it, which is then ignored; NULL gives every row the
 * scalar. One batch may thus mix greedy rows (T = 0) with sampled ones and filtered rows with
 * unfiltered ones; row b's outputs equal those of a call on row b alone with row b's knobs as
 * scalars (csrc/include/apd/knobs.h resolves them). The pointers are host memory for the _cpu
 * functions, which check every row's value (APD_ERROR_INVALID_ARGUMENT), and device memory for
 * the _cuda functions, which cannot check values without a host sync: there an out-of-range value
 * gives unspecified tokens for its row (never an out-of-bounds access). */
typedef struct apd_filter {
  double temperature; /* >= 0; 0 is greedy (no noise) */
  int64_t top_k;      /* >= 0 (>= vocab keeps every entry, like 0) */
  double top_p;       /* in (0, 1] */
  const double* temperature_rows; /* [batch] or NULL */
  const int64_t* top_k_rows;      /* [batch] or NULL */
  const double* top_p_rows;       /* [batch] or NULL */
} apd_filter;

typedef struct apd_sample_draft_args {
  int64_t batch, window, vocab; /* vocab: entries used from each row (the shared vocabulary) */
  apd_logits dllm;
  apd_filter filter;
  apd_noise noise;
  int64_t* tokens;  /* out [batch, window] */
  float* logprobs;  /* out [batch, window] */
} apd_sample_draft_args;

typedef struct apd_mixture_accept_args {
  int64_t batch, window, vocab;
  apd_logits dllm;
  apd_logits verifier;
  const int64_t* draft_tokens; /* [batch, window], row stride draft_stride_b */
  int64_t draft_stride_b;
  const int64_t* valid_lengths; /* [batch] or NULL (all rows have `window` positions) */
  double mixture_weight;        /* in [0, 1] */
  const double* mixture_weight_rows; /* [batch] per-row weights replacing mixture_weight, or NULL */
  int32_t greedy_target;        /* 1: target = argmax of the raw mixture, the authors' released code */
  apd_filter filter;
  apd_noise noise;
  int64_t* num_accepted;  /* out [batch] */
  int64_t* target_tokens; /* out [batch, window]; -1 at positions >= valid_lengths[b] */
  float* logp_dllm;       /* out [batch, window] */
  float* logp_verifier;   /* out [batch, window] */
  float* logp_mixture;    /* out [batch, window] */
} apd_mixture_accept_args;

/* ---- Vocabulary-parallel partial ops (APD_SPEC "Vocabulary-parallel form"; reference.py:
 * sample_draft_partial / mixture_accept_partial). A rank holds the logits of GLOBAL tokens
 * [vocab_offset, vocab_offset + vocab); per (b, i) the op reports its best (score, global id) and
 * float32 statistics that a combine across ranks turns into the full op's outputs.
 * Generated noise is drawn at the global id vocab_offset + j (so vocab_offset must be a multiple
 * of 4: one Philox counter covers 4 tokens); explicit uniforms are indexed by the local column j.
 * threshold: NULL, or per row (b, i) the filter threshold in x units (x = D / T, D when T == 0;
 * kept: x >= threshold) replacing top_k / top_p (which are then ignored); NULL computes them over
 * this slice as the full ops do. Tokens of rows without a finite score are vocab_offset. */

/* Fields of the stats of apd_sample_draft_partial_* ([batch, window, APD_DRAFT_NSTATS]). */
typedef enum apd_draft_stat {
  APD_DRAFT_STAT_SCORE = 0,   /* best score (x + g over the kept entries, x when T == 0; -inf: none) */
  APD_DRAFT_STAT_LSE_MAX = 1, /* max of the kept D (-inf when nothing is kept) */
  APD_DRAFT_STAT_LSE_SUM = 2, /* sum of exp(D - max) over the kept D (0 when nothing is kept) */
  APD_DRAFT_STAT_VALUE = 3,   /* kept D at the token (-inf when not kept) */
  APD_DRAFT_NSTATS = 4
} apd_draft_stat;

/* Fields of the stats of apd_mixture_accept_partial_* ([batch, window, APD_MIXTURE_NSTATS]).
 * Positions at or beyond valid_lengths[b]: target -1, score and maxima -inf, sums 0, values -inf. */
typedef enum apd_mixture_stat {
  APD_MIXTURE_STAT_SCORE = 0,        /* best target score */
  APD_MIXTURE_STAT_DLLM_MAX = 1,     /* (max, sum exp(x - max)) of the kept D */
  APD_MIXTURE_STAT_DLLM_SUM = 2,
  APD_MIXTURE_STAT_VERIFIER_MAX = 3, /* ... of A */
  APD_MIXTURE_STAT_VERIFIER_SUM = 4,
  APD_MIXTURE_STAT_MIXTURE_MAX = 5,  /* ... of the kept mixture */
  APD_MIXTURE_STAT_MIXTURE_SUM = 6,
  APD_MIXTURE_STAT_DLLM_AT = 7,      /* kept D, A, kept mixture at the (global) draft token when this */
  APD_MIXTURE_STAT_VERIFIER_AT = 8,  /* slice holds it, else -inf */
  APD_MIXTURE_STAT_MIXTURE_AT = 9,
  APD_MIXTURE_NSTATS = 10
} apd_mixture_stat;

typedef struct apd_sample_draft_partial_args {
  int64_t batch, window, vocab; /* vocab: entries of this slice */
  int64_t vocab_offset;         /* global id of the slice's first entry: >= 0, a multiple of 4 */
  apd_logits dllm;
  apd_filter filter;
  apd_noise noise;
  const float* threshold; /* [batch, window] dense, or NULL (top_k / top_p over this slice) */
  int64_t* tokens;        /* out [batch, window]: global ids */
  float* stats;           /* out [batch, window, APD_DRAFT_NSTATS] */
} apd_sample_draft_partial_args;

typedef struct apd_mixture_accept_partial_args {
  int64_t batch, window, vocab;
  int64_t vocab_offset;
  apd_logits dllm;
  apd_logits verifier;
  const int64_t* draft_tokens; /* [batch, window] GLOBAL ids, row stride draft_stride_b */
  int64_t draft_stride_b;
  const int64_t* valid_lengths; /* [batch] or NULL */
  double mixture_weight;
  const double* mixture_weight_rows; /* [batch] or NULL, as apd_mixture_accept_args */
  int32_t greedy_target;
  apd_filter filter;
  apd_noise noise;
  const float* threshold; /* [batch, window] dense, or NULL */
  int64_t* target_tokens; /* out [batch, window]: global ids; -1 at positions >= valid_lengths[b] */
  float* stats;           /* out [batch, window, APD_MIXTURE_NSTATS] */
} apd_mixture_accept_partial_args;

const char* apd_status_string(apd_status status);

apd_status apd_sample_draft_cpu(const apd_sample_draft_args* args);
apd_status apd_mixture_accept_cpu(const apd_mixture_accept_args* args);
apd_status apd_sample_draft_partial_cpu(const apd_sample_draft_partial_args* args);
apd_status apd_mixture_accept_partial_cpu(const apd_mixture_accept_partial_args* args);

/* CUDA entry points. cudaStream_t is declared here so that this header needs no CUDA headers. */
typedef struct CUstream_st* cudaStream_t;

/* Bytes of device workspace the _cuda calls need for these sizes (the same for both ops). */
size_t apd_workspace_bytes(int64_t batch, int64_t window, int64_t vocab);
/* 1 when this library was built with CUDA kernels. */
int apd_has_cuda(void);
apd_status apd_sample_draft_cuda(const apd_sample_draft_args* args, void* workspace,
                                 size_t workspace_bytes, cudaStream_t stream);
apd_status apd_mixture_accept_cuda(const apd_mixture_accept_args* args, void* workspace,
                                   size_t workspace_bytes, cudaStream_t stream);
/* The partial ops need no more workspace than apd_workspace_bytes(batch, window, vocab). */
apd_status apd_sample_draft_partial_cuda(const apd_sample_draft_partial_args* args, void* workspace,
                                         size_t workspace_bytes, cudaStream_t stream);
apd_status apd_mixture_accept_partial_cuda(const apd_mixture_accept_partial_args* args, void* workspace,
                                           size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* APD_APD_H_ */
