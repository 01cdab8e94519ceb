// Torch tensors -> the C ABI argument structs (csrc/include/apd/apd.h), with the checks that
// name the offending argument, and the two op functions with the flat schema arguments, written
// once for the CPU (bindings.cpp) and CUDA (cuda_ops.cpp) registrations.
#pragma once

#include <algorithm>
#include <optional>
#include <tuple>

#include <torch/library.h>
#include <ATen/ATen.h>

#include "apd/apd.h"
#include "apd/validate.h"

namespace apd::torch_ops {

inline apd_dtype to_apd_dtype(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kFloat:
      return APD_FLOAT32;
    case at::kHalf:
      return APD_FLOAT16;
    case at::kBFloat16:
      return APD_BFLOAT16;
    case at::kDouble:
      return APD_FLOAT64;
    default:
      TORCH_CHECK(false, name, ": unsupported dtype ", t);
  }
}

inline apd_logits logits_arg(const at::Tensor& x, const char* name, const at::Device& device) {
  TORCH_CHECK(x.dim() == 3, name, " must be [B, K, V], got ", x.sizes());
  TORCH_CHECK(x.device() == device, name, " is on ", x.device(), ", expected ", device);
  TORCH_CHECK(x.stride(2) == 1, name, " rows must be contiguous (stride(-1) == 1)");
  const apd_dtype dt = to_apd_dtype(x.scalar_type(), name);
  TORCH_CHECK(is_logit_dtype(dt), name, " must be float32, float16 or bfloat16, got ", x.scalar_type());
  return apd_logits{x.data_ptr(), dt, x.stride(0), x.stride(1)};
}

// A per-row knob tensor (schema: Tensor? *_rows): [batch] contiguous, of `dtype`, on `device`.
template <class T>
const T* knob_rows_arg(const std::optional<at::Tensor>& rows, const char* name, at::ScalarType dtype, int64_t batch,
                       const at::Device& device) {
  if (!rows.has_value()) return nullptr;
  const at::Tensor& t = *rows;
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, name, " is on ", t.device(), ", the logits on ", device);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch && t.is_contiguous(), name, " must be a contiguous [B] = [", batch,
              "] tensor, got ", t.sizes());
  return t.data_ptr<T>();
}

// The op schemas' flat filter arguments (temperature, top_k, top_p, then their optional per-row
// tensors: float64, int64, float64 [B]) as the C ABI's apd_filter.
struct FilterTensors {
  double temperature;
  int64_t top_k;
  double top_p;
  const std::optional<at::Tensor>& temperature_rows;
  const std::optional<at::Tensor>& top_k_rows;
  const std::optional<at::Tensor>& top_p_rows;

  apd_filter to_apd(int64_t batch, const at::Device& device) const {
    apd_filter f{};
    f.temperature = temperature;
    f.top_k = top_k;
    f.top_p = top_p;
    f.temperature_rows = knob_rows_arg<double>(temperature_rows, "temperature", at::kDouble, batch, device);
    f.top_k_rows = knob_rows_arg<int64_t>(top_k_rows, "top_k", at::kLong, batch, device);
    f.top_p_rows = knob_rows_arg<double>(top_p_rows, "top_p", at::kDouble, batch, device);
    return f;
  }
};

// Per-row knob values, where the host can read them (CPU tensors): an error naming the knob and
// the first bad row. CUDA tensors are not read (that would be a host sync; apd.h).
inline void check_rows_arg(const apd_filter& f, const double* mixture_weight_rows, int64_t batch,
                           const at::Device& device) {
  if (!device.is_cpu()) return;
  int64_t row = 0;
  const char* e = apd::check_rows(f, mixture_weight_rows, batch, &row);
  TORCH_CHECK(e == nullptr, "apd_ext: ", e ? e : "", " (row ", row, ")");
}

// The op schemas' noise arguments (seed, seed_value, offset, offset_value, noise), converted by
// to_apd into the C ABI's apd_noise, checked against [batch, window, vocab] logits on `device`.
struct NoiseTensors {
  const std::optional<at::Tensor>& seed;
  int64_t seed_value;
  const std::optional<at::Tensor>& offset;
  int64_t offset_value;
  const std::optional<at::Tensor>& uniform;

  apd_noise to_apd(int64_t batch, int64_t window, int64_t vocab, const at::Device& device) const {
    apd_noise n{};
    n.seed_value = seed_value;
    n.offset_value = offset_value;
    if (seed.has_value()) {
      const at::Tensor& s = *seed;
      TORCH_CHECK(s.scalar_type() == at::kLong && s.device() == device && s.is_contiguous(),
                  "seed must be a contiguous int64 tensor on ", device);
      TORCH_CHECK(s.numel() == 1 || s.numel() == batch, "seed must hold 1 or B=", batch, " values");
      n.seeds = s.data_ptr<int64_t>();
      n.seed_per_row = s.numel() == batch && batch > 1;
    }
    if (offset.has_value()) {
      const at::Tensor& o = *offset;
      TORCH_CHECK(o.scalar_type() == at::kLong && o.device() == device && o.is_contiguous(),
                  "offset must be a contiguous int64 tensor on ", device);
      TORCH_CHECK(o.numel() == 1 || o.numel() == batch, "offset must hold 1 or B=", batch, " values");
      n.offset = o.data_ptr<int64_t>();
      n.offset_per_row = o.numel() == batch && batch > 1;
    }
    if (uniform.has_value()) {
      const at::Tensor& u = *uniform;
      TORCH_CHECK(u.dim() == 3 && u.size(0) == batch && u.size(1) == window && u.size(2) >= vocab,
                  "noise must be [", batch, ", ", window, ", >=", vocab, "], got ", u.sizes());
      TORCH_CHECK(u.device() == device && u.stride(2) == 1, "noise must be on ", device, " with contiguous rows");
      TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
                  "noise must be float32 or float64");
      n.uniform = u.data_ptr();
      n.uniform_dtype = to_apd_dtype(u.scalar_type(), "noise");
      n.uniform_stride_b = u.stride(0);
      n.uniform_stride_k = u.stride(1);
    }
    return n;
  }
};

inline void check_message(const char* msg) { TORCH_CHECK(msg == nullptr, "apd_ext: ", msg ? msg : ""); }

// An op call of either backend: the C ABI arguments, the output tensors that its pointers
// point into, and the backend's name (for error messages). Built by the op functions below, which
// unpack the flat schema arguments once into apd_filter / apd_noise.
struct SampleDraftCall {
  apd_sample_draft_args args;
  at::Tensor tokens, logprobs;
};

struct MixtureAcceptCall {
  apd_mixture_accept_args args;
  at::Tensor num_accepted, target_tokens, logp_dllm, logp_verifier, logp_mixture;
};

inline void check_vocab(const at::Tensor& dllm, const at::Tensor* verifier, int64_t vocab) {
  const int64_t most = verifier == nullptr ? dllm.size(2) : std::min(dllm.size(2), verifier->size(2));
  TORCH_CHECK(vocab >= 1 && vocab <= most, "vocab_size must be in [1, ", most, "], got ", vocab);
  if (verifier != nullptr)
    TORCH_CHECK(verifier->size(0) == dllm.size(0) && verifier->size(1) == dllm.size(1),
                "verifier_logits must be [B, K, V2] with the dllm's B and K, got ", verifier->sizes());
}

inline SampleDraftCall sample_draft_call(const at::Tensor& dllm, int64_t vocab, const FilterTensors& ft,
                                         const NoiseTensors& nt) {
  const at::Device device = dllm.device();
  SampleDraftCall c;
  apd_sample_draft_args& a = c.args;
  a = apd_sample_draft_args{};
  a.dllm = logits_arg(dllm, "dllm_logits", device);
  check_vocab(dllm, nullptr, vocab);
  a.batch = dllm.size(0);
  a.window = dllm.size(1);
  a.vocab = vocab;
  a.filter = ft.to_apd(a.batch, device);
  check_rows_arg(a.filter, nullptr, a.batch, device);
  a.noise = nt.to_apd(a.batch, a.window, vocab, device);
  c.tokens = at::empty({a.batch, a.window}, dllm.options().dtype(at::kLong));
  c.logprobs = at::empty({a.batch, a.window}, dllm.options().dtype(at::kFloat));
  a.tokens = c.tokens.data_ptr<int64_t>();
  a.logprobs = c.logprobs.data_ptr<float>();
  check_message(check_args(a));
  return c;
}

inline void draft_tokens_arg(apd_mixture_accept_args& a, const at::Tensor& draft, const at::Device& device) {
  TORCH_CHECK(draft.scalar_type() == at::kLong && draft.device() == device && draft.dim() == 2 &&
                  draft.size(0) == a.batch && draft.size(1) == a.window && draft.stride(1) == 1,
              "draft_tokens must be int64 [B, K] on ", device, " with contiguous rows");
  a.draft_tokens = draft.data_ptr<int64_t>();
  a.draft_stride_b = draft.stride(0);
}

inline const int64_t* valid_lengths_arg(const std::optional<at::Tensor>& valid_lengths, int64_t batch,
                                        const at::Device& device) {
  if (!valid_lengths.has_value()) return nullptr;
  const at::Tensor& v = *valid_lengths;
  TORCH_CHECK(v.scalar_type() == at::kLong && v.device() == device && v.dim() == 1 && v.size(0) == batch &&
                  v.is_contiguous(),
              "valid_lengths must be a contiguous int64 [B] tensor on ", device);
  return v.data_ptr<int64_t>();
}

inline MixtureAcceptCall mixture_accept_call(const at::Tensor& dllm, const at::Tensor& verifier,
                                             const at::Tensor& draft, int64_t vocab, double mixture_weight,
                                             const std::optional<at::Tensor>& mixture_weight_rows,
                                             const std::optional<at::Tensor>& valid_lengths, bool greedy_target,
                                             const FilterTensors& ft, const NoiseTensors& nt) {
  const at::Device device = dllm.device();
  MixtureAcceptCall c;
  apd_mixture_accept_args& a = c.args;
  a = apd_mixture_accept_args{};
  a.dllm = logits_arg(dllm, "dllm_logits", device);
  a.verifier = logits_arg(verifier, "verifier_logits", device);
  check_vocab(dllm, &verifier, vocab);
  a.batch = dllm.size(0);
  a.window = dllm.size(1);
  a.vocab = vocab;
  draft_tokens_arg(a, draft, device);
  a.valid_lengths = valid_lengths_arg(valid_lengths, a.batch, device);
  a.mixture_weight = mixture_weight;
  a.mixture_weight_rows = knob_rows_arg<double>(mixture_weight_rows, "mixture_weight", at::kDouble, a.batch, device);
  a.greedy_target = greedy_target ? 1 : 0;
  a.filter = ft.to_apd(a.batch, device);
  check_rows_arg(a.filter, a.mixture_weight_rows, a.batch, device);
  a.noise = nt.to_apd(a.batch, a.window, vocab, device);
  const auto opts = dllm.options();
  c.num_accepted = at::empty({a.batch}, opts.dtype(at::kLong));
  c.target_tokens = at::empty({a.batch, a.window}, opts.dtype(at::kLong));
  c.logp_dllm = at::empty({a.batch, a.window}, opts.dtype(at::kFloat));
  c.logp_verifier = at::empty({a.batch, a.window}, opts.dtype(at::kFloat));
  c.logp_mixture = at::empty({a.batch, a.window}, opts.dtype(at::kFloat));
  a.num_accepted = c.num_accepted.data_ptr<int64_t>();
  a.target_tokens = c.target_tokens.data_ptr<int64_t>();
  a.logp_dllm = c.logp_dllm.data_ptr<float>();
  a.logp_verifier = c.logp_verifier.data_ptr<float>();
  a.logp_mixture = c.logp_mixture.data_ptr<float>();
  check_message(check_args(a));
  return c;
}

// The two torch ops with their flat schemas (bindings.cpp), the only place the flat argument
// lists are written out. Each unpacks them once into apd_filter / apd_noise, builds the call and
// hands it to Backend, a type with
//   static const char* name;                            // "cpu" or "cuda"
//   static apd_status sample_draft(SampleDraftCall&);   // runs the C ABI entry point
//   static apd_status mixture_accept(MixtureAcceptCall&);
template <class Backend>
std::tuple<at::Tensor, at::Tensor> sample_draft_op(
    const at::Tensor& dllm, int64_t vocab, double temperature, int64_t top_k, double top_p,
    const std::optional<at::Tensor>& temperature_rows, const std::optional<at::Tensor>& top_k_rows,
    const std::optional<at::Tensor>& top_p_rows, const std::optional<at::Tensor>& seed, int64_t seed_value,
    const std::optional<at::Tensor>& offset, int64_t offset_value, const std::optional<at::Tensor>& noise) {
  SampleDraftCall c = sample_draft_call(dllm, vocab,
                                        FilterTensors{temperature, top_k, top_p, temperature_rows, top_k_rows, top_p_rows},
                                        NoiseTensors{seed, seed_value, offset, offset_value, noise});
  const apd_status st = Backend::sample_draft(c);
  TORCH_CHECK(st == APD_OK, "apd_ext.sample_draft (", Backend::name, "): ", apd_status_string(st));
  return {c.tokens, c.logprobs};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_accept_op(
    const at::Tensor& dllm, const at::Tensor& verifier, const at::Tensor& draft, int64_t vocab,
    double mixture_weight, const std::optional<at::Tensor>& mixture_weight_rows, double temperature, int64_t top_k,
    double top_p, const std::optional<at::Tensor>& temperature_rows, const std::optional<at::Tensor>& top_k_rows,
    const std::optional<at::Tensor>& top_p_rows, const std::optional<at::Tensor>& valid_lengths, bool greedy_target,
    const std::optional<at::Tensor>& seed, int64_t seed_value, const std::optional<at::Tensor>& offset,
    int64_t offset_value, const std::optional<at::Tensor>& noise) {
  MixtureAcceptCall c = mixture_accept_call(
      dllm, verifier, draft, vocab, mixture_weight, mixture_weight_rows, valid_lengths, greedy_target,
      FilterTensors{temperature, top_k, top_p, temperature_rows, top_k_rows, top_p_rows},
      NoiseTensors{seed, seed_value, offset, offset_value, noise});
  const apd_status st = Backend::mixture_accept(c);
  TORCH_CHECK(st == APD_OK, "apd_ext.mixture_accept (", Backend::name, "): ", apd_status_string(st));
  return {c.num_accepted, c.target_tokens, c.logp_dllm, c.logp_verifier, c.logp_mixture};
}

// ---- Vocabulary-parallel partial ops (apd.h: apd_*_partial_args) ---------------------------------

struct SampleDraftPartialCall {
  apd_sample_draft_partial_args args;
  at::Tensor tokens, stats;
  at::Tensor threshold;  // the dense float32 [B, K] copy the args point into (undefined: none)
};

struct MixtureAcceptPartialCall {
  apd_mixture_accept_partial_args args;
  at::Tensor target_tokens, stats;
  at::Tensor threshold;
};

// The optional threshold override: float32 [batch, window] on `device`, made dense.
inline at::Tensor threshold_arg(const std::optional<at::Tensor>& threshold, int64_t batch, int64_t window,
                                const at::Device& device) {
  if (!threshold.has_value()) return at::Tensor();
  const at::Tensor& t = *threshold;
  TORCH_CHECK(t.scalar_type() == at::kFloat, "threshold must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, "threshold is on ", t.device(), ", expected ", device);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == batch && t.size(1) == window, "threshold must be [B, K] = [", batch, ", ",
              window, "], got ", t.sizes());
  return t.contiguous();
}

inline void vocab_offset_arg(int64_t vocab_offset, int64_t vocab) {
  TORCH_CHECK(vocab_offset >= 0 && vocab_offset % 4 == 0,
              "vocab_offset must be a non-negative multiple of 4 (noise is drawn 4 tokens per counter), got ",
              vocab_offset);
  check_message(apd::check_vocab_offset(vocab_offset, vocab));
}

inline SampleDraftPartialCall sample_draft_partial_call(const at::Tensor& dllm, int64_t vocab, int64_t vocab_offset,
                                                        const FilterTensors& ft, const NoiseTensors& nt,
                                                        const std::optional<at::Tensor>& threshold) {
  const at::Device device = dllm.device();
  SampleDraftPartialCall c;
  apd_sample_draft_partial_args& a = c.args;
  a = apd_sample_draft_partial_args{};
  a.dllm = logits_arg(dllm, "dllm_logits", device);
  check_vocab(dllm, nullptr, vocab);
  vocab_offset_arg(vocab_offset, vocab);
  a.batch = dllm.size(0);
  a.window = dllm.size(1);
  a.vocab = vocab;
  a.vocab_offset = vocab_offset;
  a.filter = ft.to_apd(a.batch, device);
  check_rows_arg(a.filter, nullptr, a.batch, device);
  a.noise = nt.to_apd(a.batch, a.window, vocab, device);
  c.threshold = threshold_arg(threshold, a.batch, a.window, device);
  a.threshold = c.threshold.defined() ? c.threshold.data_ptr<float>() : nullptr;
  c.tokens = at::empty({a.batch, a.window}, dllm.options().dtype(at::kLong));
  c.stats = at::empty({a.batch, a.window, APD_DRAFT_NSTATS}, dllm.options().dtype(at::kFloat));
  a.tokens = c.tokens.data_ptr<int64_t>();
  a.stats = c.stats.data_ptr<float>();
  check_message(check_args(a));
  return c;
}

inline MixtureAcceptPartialCall mixture_accept_partial_call(
    const at::Tensor& dllm, const at::Tensor& verifier, const at::Tensor& draft, int64_t vocab, int64_t vocab_offset,
    double mixture_weight, const std::optional<at::Tensor>& mixture_weight_rows,
    const std::optional<at::Tensor>& valid_lengths, bool greedy_target, const FilterTensors& ft,
    const NoiseTensors& nt, const std::optional<at::Tensor>& threshold) {
  const at::Device device = dllm.device();
  MixtureAcceptPartialCall c;
  apd_mixture_accept_partial_args& a = c.args;
  a = apd_mixture_accept_partial_args{};
  a.dllm = logits_arg(dllm, "dllm_logits", device);
  a.verifier = logits_arg(verifier, "verifier_logits", device);
  check_vocab(dllm, &verifier, vocab);
  vocab_offset_arg(vocab_offset, vocab);
  a.batch = dllm.size(0);
  a.window = dllm.size(1);
  a.vocab = vocab;
  a.vocab_offset = vocab_offset;
  TORCH_CHECK(draft.scalar_type() == at::kLong && draft.device() == device && draft.dim() == 2 &&
                  draft.size(0) == a.batch && draft.size(1) == a.window && draft.stride(1) == 1,
              "draft_tokens must be int64 [B, K] on ", device, " with contiguous rows");
  a.draft_tokens = draft.data_ptr<int64_t>();
  a.draft_stride_b = draft.stride(0);
  a.valid_lengths = valid_lengths_arg(valid_lengths, a.batch, device);
  a.mixture_weight = mixture_weight;
  a.mixture_weight_rows = knob_rows_arg<double>(mixture_weight_rows, "mixture_weight", at::kDouble, a.batch, device);
  a.greedy_target = greedy_target ? 1 : 0;
  a.filter = ft.to_apd(a.batch, device);
  check_rows_arg(a.filter, a.mixture_weight_rows, a.batch, device);
  a.noise = nt.to_apd(a.batch, a.window, vocab, device);
  c.threshold = threshold_arg(threshold, a.batch, a.window, device);
  a.threshold = c.threshold.defined() ? c.threshold.data_ptr<float>() : nullptr;
  const auto opts = dllm.options();
  c.target_tokens = at::empty({a.batch, a.window}, opts.dtype(at::kLong));
  c.stats = at::empty({a.batch, a.window, APD_MIXTURE_NSTATS}, opts.dtype(at::kFloat));
  a.target_tokens = c.target_tokens.data_ptr<int64_t>();
  a.stats = c.stats.data_ptr<float>();
  check_message(check_args(a));
  return c;
}

// The partial ops' flat schemas (bindings.cpp); Backend also has
//   static apd_status sample_draft_partial(SampleDraftPartialCall&);
//   static apd_status mixture_accept_partial(MixtureAcceptPartialCall&);
template <class Backend>
std::tuple<at::Tensor, at::Tensor> sample_draft_partial_op(
    const at::Tensor& dllm, int64_t vocab, int64_t vocab_offset, double temperature, int64_t top_k, double top_p,
    const std::optional<at::Tensor>& temperature_rows, const std::optional<at::Tensor>& top_k_rows,
    const std::optional<at::Tensor>& top_p_rows, const std::optional<at::Tensor>& seed, int64_t seed_value,
    const std::optional<at::Tensor>& offset, int64_t offset_value, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& threshold) {
  SampleDraftPartialCall c = sample_draft_partial_call(
      dllm, vocab, vocab_offset, FilterTensors{temperature, top_k, top_p, temperature_rows, top_k_rows, top_p_rows},
      NoiseTensors{seed, seed_value, offset, offset_value, noise}, threshold);
  const apd_status st = Backend::sample_draft_partial(c);
  TORCH_CHECK(st == APD_OK, "apd_ext.sample_draft_partial (", Backend::name, "): ", apd_status_string(st));
  return {c.tokens, c.stats};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> mixture_accept_partial_op(
    const at::Tensor& dllm, const at::Tensor& verifier, const at::Tensor& draft, int64_t vocab, int64_t vocab_offset,
    double mixture_weight, const std::optional<at::Tensor>& mixture_weight_rows, double temperature, int64_t top_k,
    double top_p, const std::optional<at::Tensor>& temperature_rows, const std::optional<at::Tensor>& top_k_rows,
    const std::optional<at::Tensor>& top_p_rows, const std::optional<at::Tensor>& valid_lengths, bool greedy_target,
    const std::optional<at::Tensor>& seed, int64_t seed_value, const std::optional<at::Tensor>& offset,
    int64_t offset_value, const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& threshold) {
  MixtureAcceptPartialCall c = mixture_accept_partial_call(
      dllm, verifier, draft, vocab, vocab_offset, mixture_weight, mixture_weight_rows, valid_lengths, greedy_target,
      FilterTensors{temperature, top_k, top_p, temperature_rows, top_k_rows, top_p_rows},
      NoiseTensors{seed, seed_value, offset, offset_value, noise}, threshold);
  const apd_status st = Backend::mixture_accept_partial(c);
  TORCH_CHECK(st == APD_OK, "apd_ext.mixture_accept_partial (", Backend::name, "): ", apd_status_string(st));
  return {c.target_tokens, c.stats};
}

}  // namespace apd::torch_ops
