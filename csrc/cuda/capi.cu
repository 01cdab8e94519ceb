// The CUDA entry points of the C ABI (apd/apd.h): argument checks (apd/validate.h), the split
// plan, the workspace layout, and the launches. Asynchronous on `stream`: no host sync, no
// allocation; a failed launch or device query returns APD_ERROR_CUDA and prints the CUDA error on
// one stderr line (the C ABI has no channel for it, and e.g. "no kernel image is available" or
// "too many resources requested" on a new GPU must not be reduced to "CUDA error").
//
// Splits: a row is split across S blocks so that rows * S >= kBlocksPerSm * #SMs (the SM count
// and, for the filter's grid, the L2 size are queried once per device and cached), with at least kMinChunksPerSplit chunks per split and
// S <= split_cap(rows, vocab) (<= kMaxSplits), which bounds the workspace independently of the
// device. Example, H100 (132 SMs), B*K = 100, V = 151936 bf16: 18992 chunks of 8, S = 6 splits of 3166.
//
// Workspace layout (from the first 256-byte aligned address of `workspace`):
//   [tau: rows floats, padded to 256 B; only with an active filter]
//   [partials: rows * S DraftPartial / MixPartial; sample_draft needs none when S == 1]
// apd_workspace_bytes returns the largest size any call with these sizes needs (256 B of slack
// for the alignment, tau, rows * split_cap * sizeof(MixPartial)).
#include <atomic>
#include <climits>
#include <cstdio>

#include "apd/apd.h"
#include "apd/modes.h"
#include "apd/validate.h"
#include "kernels.cuh"

namespace apd::cuda {
namespace {

constexpr size_t kAlign = 256;
constexpr size_t kPartialBytes = sizeof(MixPartial) > sizeof(DraftPartial) ? sizeof(MixPartial) : sizeof(DraftPartial);

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// rows = batch * window, or -1 when it overflows or exceeds what one grid dimension can launch.
int64_t rows_of(int64_t batch, int64_t window) {
  if (batch > INT32_MAX / window) return -1;
  return batch * window;
}

// An attribute of the current device (SM count, L2 bytes), cached per device and attribute
// (cudaDeviceGetAttribute is not a sync, and is legal during stream capture).
template <cudaDeviceAttr kAttr>
cudaError_t device_attr(int* out) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // 0: not queried yet; queried values are stored as v + 1
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev >= 0 && dev < kMaxDevices) {
    const int n = cache[dev].load(std::memory_order_relaxed);
    if (n > 0) {
      *out = n - 1;
      return cudaSuccess;
    }
  }
  int n = 0;
  e = cudaDeviceGetAttribute(&n, kAttr, dev);
  if (e != cudaSuccess) return e;
  if (n < 0) n = 0;
  if (dev >= 0 && dev < kMaxDevices) cache[dev].store(n + 1, std::memory_order_relaxed);
  *out = n;
  return cudaSuccess;
}

cudaError_t sm_count(int* out) {
  const cudaError_t e = device_attr<cudaDevAttrMultiProcessorCount>(out);
  if (e == cudaSuccess && *out < 1) *out = 1;
  return e;
}

// Filter launch: the L2-capped grid of filter.cuh (0 L2 bytes reported: one block per row).
cudaError_t run_filter(apd_dtype dtype, const FilterParams& fp, cudaStream_t stream) {
  int l2 = 0;
  cudaError_t e = device_attr<cudaDevAttrL2CacheSize>(&l2);
  if (e != cudaSuccess) return e;
  const int64_t elem = dtype == APD_FLOAT32 ? 4 : 2;
  return launch_filter(dtype, fp, filter_blocks(fp.rows, fp.vocab, elem, l2), stream);
}

apd_status cuda_failure(const char* what, cudaError_t e) {
  std::fprintf(stderr, "apd_ext: %s failed: CUDA error %d (%s)\n", what, static_cast<int>(e), cudaGetErrorString(e));
  return APD_ERROR_CUDA;
}

struct Plan {
  int splits;
  int64_t chunks_per_split;
};

Plan plan_splits(int64_t rows, int64_t vocab, int chunk_width, int sms) {
  const int64_t nchunks = ceil_div(vocab, chunk_width);
  int64_t s = ceil_div(static_cast<int64_t>(kBlocksPerSm) * sms, rows);
  const int64_t by_vocab = ceil_div(nchunks, kMinChunksPerSplit);
  const int64_t cap = split_cap(rows, vocab);
  s = s < by_vocab ? s : by_vocab;
  s = s < cap ? s : cap;
  s = s < 1 ? 1 : s;
  Plan plan;
  plan.chunks_per_split = ceil_div(nchunks, s);
  plan.splits = static_cast<int>(ceil_div(nchunks, plan.chunks_per_split));  // no empty split
  return plan;
}

// Carves the workspace; returns APD_OK and sets tau / partials (null when not needed).
apd_status carve(void* workspace, size_t workspace_bytes, int64_t rows, bool filtered, int64_t partials,
                 size_t partial_bytes, float** tau, void** part) {
  *tau = nullptr;
  *part = nullptr;
  const size_t tau_bytes = filtered ? align_up(static_cast<size_t>(rows) * sizeof(float)) : 0;
  const size_t part_bytes = static_cast<size_t>(partials) * partial_bytes;
  if (tau_bytes + part_bytes == 0) return APD_OK;
  if (workspace == nullptr) return workspace_bytes == 0 ? APD_ERROR_WORKSPACE_TOO_SMALL : APD_ERROR_INVALID_ARGUMENT;
  const uintptr_t start = reinterpret_cast<uintptr_t>(workspace);
  const uintptr_t base = (start + kAlign - 1) / kAlign * kAlign;
  const size_t needed = static_cast<size_t>(base - start) + tau_bytes + part_bytes;
  if (workspace_bytes < needed) return APD_ERROR_WORKSPACE_TOO_SMALL;
  char* p = reinterpret_cast<char*>(base);
  if (filtered) *tau = reinterpret_cast<float*>(p);
  if (part_bytes > 0) *part = p + tau_bytes;
  return APD_OK;
}

// Per-row knobs: the *_rows pointers (device memory) go to the kernels, which resolve row b's
// values themselves (kernels.cuh); a scalar that a pointer replaces is unchecked and unused.
FilterParams filter_params(const apd_logits& l, int64_t rows, int64_t window, int64_t vocab, const apd_filter& f,
                           const int64_t* valid_lengths, float* tau) {
  FilterParams fp{};
  fp.logits = l;
  fp.rows = rows;
  fp.window = window;
  fp.vocab = vocab;
  fp.valid_lengths = valid_lengths;
  fp.inv_t = f.temperature_rows != nullptr ? 1.0f : inv_temperature(f.temperature);
  fp.top_k = f.top_k_rows != nullptr ? 0 : active_top_k(f.top_k, vocab);
  fp.top_p = f.top_p_rows != nullptr ? 1.0 : f.top_p;
  fp.temperature_rows = f.temperature_rows;
  fp.top_k_rows = f.top_k_rows;
  fp.top_p_rows = f.top_p_rows;
  fp.tau = tau;
  return fp;
}

// What every entry point does before its own launch: the split plan, the workspace carve-up and,
// with an active filter, the filter kernel writing tau. Args: apd_sample_draft_args,
// apd_mixture_accept_args or their _partial_ forms; single_split_partials: whether one split still
// needs partials; threshold_given: the caller's thresholds replace the filter (partial ops).
struct Prepared {
  int64_t rows;
  Plan plan;
  float* tau;
  void* partials;
};

template <class Args>
apd_status prepare(const Args& a, int chunk_width, size_t partial_bytes, bool single_split_partials,
                   const int64_t* valid_lengths, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                   Prepared* out, bool threshold_given = false) {
  if (apd::check_args(a) != nullptr) return APD_ERROR_INVALID_ARGUMENT;
  out->rows = rows_of(a.batch, a.window);
  if (out->rows < 0) return APD_ERROR_INVALID_ARGUMENT;
  int sms = 0;
  if (const cudaError_t e = sm_count(&sms); e != cudaSuccess) return cuda_failure("SM count query", e);
  out->plan = plan_splits(out->rows, a.vocab, chunk_width, sms);
  const int64_t rows = out->rows, splits = out->plan.splits;
  if (rows * splits > INT32_MAX) return APD_ERROR_INVALID_ARGUMENT;
  const bool filtered = !threshold_given && apd_filter_active(&a.filter, a.vocab) != 0;
  const int64_t partials = splits > 1 || single_split_partials ? rows * splits : 0;
  const apd_status st =
      carve(workspace, workspace_bytes, rows, filtered, partials, partial_bytes, &out->tau, &out->partials);
  if (st != APD_OK || !filtered) return st;
  const FilterParams fp = filter_params(a.dllm, rows, a.window, a.vocab, a.filter, valid_lengths, out->tau);
  if (const cudaError_t e = run_filter(a.dllm.dtype, fp, stream); e != cudaSuccess)
    return cuda_failure("filter launch", e);
  return APD_OK;
}

// The launch parameters of either form of each op (Args: apd_sample_draft_args or its partial
// form; outputs and the partial fields are set by the caller).
template <class Args>
DraftParams draft_params(const Args& a, const Prepared& w) {
  DraftParams p{};
  p.dllm = a.dllm;
  p.window = a.window;
  p.vocab = a.vocab;
  p.inv_t = a.filter.temperature_rows != nullptr ? 1.0f : inv_temperature(a.filter.temperature);
  p.temperature_rows = a.filter.temperature_rows;
  p.tau = w.tau;
  p.noise = a.noise;
  p.splits = w.plan.splits;
  p.chunks_per_split = w.plan.chunks_per_split;
  p.partials = static_cast<DraftPartial*>(w.partials);
  return p;
}

template <class Args>
MixParams mix_params(const Args& a, const Prepared& w) {
  MixParams p{};
  p.dllm = a.dllm;
  p.verifier = a.verifier;
  p.batch = a.batch;
  p.window = a.window;
  p.vocab = a.vocab;
  p.valid_lengths = a.valid_lengths;
  p.draft_tokens = a.draft_tokens;
  p.draft_stride_b = a.draft_stride_b;
  p.knobs.inv_t = a.filter.temperature_rows != nullptr ? 1.0f : inv_temperature(a.filter.temperature);
  p.knobs.set_weight(a.mixture_weight_rows != nullptr ? 1.0 : a.mixture_weight);
  p.temperature_rows = a.filter.temperature_rows;
  p.mixture_weight_rows = a.mixture_weight_rows;
  p.tau = w.tau;
  p.noise = a.noise;
  p.splits = w.plan.splits;
  p.chunks_per_split = w.plan.chunks_per_split;
  p.partials = static_cast<MixPartial*>(w.partials);
  return p;
}

}  // namespace
}  // namespace apd::cuda

extern "C" size_t apd_workspace_bytes(int64_t batch, int64_t window, int64_t vocab) {
  using namespace apd::cuda;
  if (apd::check_sizes(batch, window, vocab) != nullptr) return 0;
  const int64_t rows = rows_of(batch, window);
  if (rows < 0) return 0;
  return kAlign + align_up(static_cast<size_t>(rows) * sizeof(float)) +
         static_cast<size_t>(rows) * static_cast<size_t>(split_cap(rows, vocab)) * kPartialBytes;
}

extern "C" int apd_has_cuda(void) { return 1; }

extern "C" apd_status apd_sample_draft_cuda(const apd_sample_draft_args* args, void* workspace,
                                            size_t workspace_bytes, cudaStream_t stream) {
  using namespace apd::cuda;
  if (args == nullptr) return APD_ERROR_INVALID_ARGUMENT;
  const apd_sample_draft_args& a = *args;
  Prepared w{};
  if (const apd_status st = prepare(a, chunk_width_of(a.dllm.dtype), sizeof(DraftPartial), false, nullptr, workspace,
                                    workspace_bytes, stream, &w);
      st != APD_OK)
    return st;
  DraftParams p = draft_params(a, w);
  p.tokens = a.tokens;
  p.logprobs = a.logprobs;
  const bool sampled = apd_draft_mode_of(&a.filter, &a.noise) != APD_DRAFT_ARGMAX;
  if (const cudaError_t e = launch_sample_draft(a.dllm.dtype, sampled, p, w.rows, stream); e != cudaSuccess)
    return cuda_failure("sample_draft launch", e);
  return APD_OK;
}

extern "C" apd_status apd_mixture_accept_cuda(const apd_mixture_accept_args* args, void* workspace,
                                              size_t workspace_bytes, cudaStream_t stream) {
  using namespace apd::cuda;
  if (args == nullptr) return APD_ERROR_INVALID_ARGUMENT;
  const apd_mixture_accept_args& a = *args;
  Prepared w{};
  if (const apd_status st = prepare(a, mixture_chunk_width(a.dllm.dtype, a.verifier.dtype), sizeof(MixPartial), true,
                                    a.valid_lengths, workspace, workspace_bytes, stream, &w);
      st != APD_OK)
    return st;
  MixParams p = mix_params(a, w);
  p.num_accepted = a.num_accepted;
  p.target_tokens = a.target_tokens;
  p.logp_dllm = a.logp_dllm;
  p.logp_verifier = a.logp_verifier;
  p.logp_mixture = a.logp_mixture;
  const apd_target_mode mode = apd_target_mode_of(a.greedy_target, &a.filter, &a.noise);
  if (const cudaError_t e = launch_mixture_accept(a.dllm.dtype, a.verifier.dtype, mode, p, stream); e != cudaSuccess)
    return cuda_failure("mixture_accept launch", e);
  return APD_OK;
}

// Partial ops: the same kernels on one vocabulary slice (DraftParams / MixParams with stats set);
// a given threshold replaces the filter kernel's (no tau in the workspace then).
extern "C" apd_status apd_sample_draft_partial_cuda(const apd_sample_draft_partial_args* args, void* workspace,
                                                    size_t workspace_bytes, cudaStream_t stream) {
  using namespace apd::cuda;
  if (args == nullptr) return APD_ERROR_INVALID_ARGUMENT;
  const apd_sample_draft_partial_args& a = *args;
  Prepared w{};
  if (const apd_status st = prepare(a, chunk_width_of(a.dllm.dtype), sizeof(DraftPartial), false, nullptr, workspace,
                                    workspace_bytes, stream, &w, a.threshold != nullptr);
      st != APD_OK)
    return st;
  DraftParams p = draft_params(a, w);
  if (a.threshold != nullptr) p.tau = a.threshold;
  p.tokens = a.tokens;
  p.vocab_offset = a.vocab_offset;
  p.stats = a.stats;
  const bool sampled = apd_draft_mode_of(&a.filter, &a.noise) != APD_DRAFT_ARGMAX;
  if (const cudaError_t e = launch_sample_draft(a.dllm.dtype, sampled, p, w.rows, stream); e != cudaSuccess)
    return cuda_failure("sample_draft_partial launch", e);
  return APD_OK;
}

extern "C" apd_status apd_mixture_accept_partial_cuda(const apd_mixture_accept_partial_args* args, void* workspace,
                                                      size_t workspace_bytes, cudaStream_t stream) {
  using namespace apd::cuda;
  if (args == nullptr) return APD_ERROR_INVALID_ARGUMENT;
  const apd_mixture_accept_partial_args& a = *args;
  Prepared w{};
  if (const apd_status st = prepare(a, mixture_chunk_width(a.dllm.dtype, a.verifier.dtype), sizeof(MixPartial), true,
                                    a.valid_lengths, workspace, workspace_bytes, stream, &w, a.threshold != nullptr);
      st != APD_OK)
    return st;
  MixParams p = mix_params(a, w);
  if (a.threshold != nullptr) p.tau = a.threshold;
  p.target_tokens = a.target_tokens;
  p.vocab_offset = a.vocab_offset;
  p.stats = a.stats;
  const apd_target_mode mode = apd_target_mode_of(a.greedy_target, &a.filter, &a.noise);
  if (const cudaError_t e = launch_mixture_accept(a.dllm.dtype, a.verifier.dtype, mode, p, stream); e != cudaSuccess)
    return cuda_failure("mixture_accept_partial launch", e);
  return APD_OK;
}
