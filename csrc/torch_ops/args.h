// Torch tensors -> the C ABI argument structs (csrc/include/apd/apd.h), with the checks that
// name the offending argument. Shared by the CPU and CUDA registrations.
#pragma once

#include <optional>

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

inline apd_noise noise_arg(const std::optional<at::Tensor>& seed, int64_t seed_value,
                           const std::optional<at::Tensor>& offset, int64_t offset_value,
                           const std::optional<at::Tensor>& noise, int64_t batch, int64_t window,
                           int64_t vocab, const at::Device& device) {
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
    TORCH_CHECK(o.scalar_type() == at::kLong && o.device() == device && o.numel() == 1,
                "offset must be a one-element int64 tensor on ", device);
    n.offset = o.data_ptr<int64_t>();
  }
  if (noise.has_value()) {
    const at::Tensor& u = *noise;
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

inline void check_message(const char* msg) { TORCH_CHECK(msg == nullptr, "apd_ext: ", msg ? msg : ""); }

struct SampleDraftCall {
  apd_sample_draft_args args;
  at::Tensor tokens, logprobs;
};

inline SampleDraftCall sample_draft_call(const at::Tensor& dllm, int64_t vocab, double temperature, int64_t top_k,
                                         double top_p, const std::optional<at::Tensor>& seed, int64_t seed_value,
                                         const std::optional<at::Tensor>& offset, int64_t offset_value,
                                         const std::optional<at::Tensor>& noise) {
  const at::Device device = dllm.device();
  SampleDraftCall c;
  c.args = apd_sample_draft_args{};
  c.args.dllm = logits_arg(dllm, "dllm_logits", device);
  c.args.batch = dllm.size(0);
  c.args.window = dllm.size(1);
  c.args.vocab = vocab;
  TORCH_CHECK(vocab >= 1 && vocab <= dllm.size(2), "vocab_size must be in [1, ", dllm.size(2), "], got ", vocab);
  c.args.filter = apd_filter{temperature, top_k, top_p};
  c.args.noise = noise_arg(seed, seed_value, offset, offset_value, noise, c.args.batch, c.args.window, vocab, device);
  c.tokens = at::empty({c.args.batch, c.args.window}, dllm.options().dtype(at::kLong));
  c.logprobs = at::empty({c.args.batch, c.args.window}, dllm.options().dtype(at::kFloat));
  c.args.tokens = c.tokens.data_ptr<int64_t>();
  c.args.logprobs = c.logprobs.data_ptr<float>();
  check_message(check_args(c.args));
  return c;
}

struct MixtureAcceptCall {
  apd_mixture_accept_args args;
  at::Tensor num_accepted, target_tokens, logp_dllm, logp_verifier, logp_mixture;
};

inline MixtureAcceptCall mixture_accept_call(
    const at::Tensor& dllm, const at::Tensor& verifier, const at::Tensor& draft, int64_t vocab,
    double mixture_weight, double temperature, int64_t top_k, double top_p,
    const std::optional<at::Tensor>& valid_lengths, bool greedy_target, const std::optional<at::Tensor>& seed,
    int64_t seed_value, const std::optional<at::Tensor>& offset, int64_t offset_value,
    const std::optional<at::Tensor>& noise) {
  const at::Device device = dllm.device();
  MixtureAcceptCall c;
  apd_mixture_accept_args& a = c.args;
  a = apd_mixture_accept_args{};
  a.dllm = logits_arg(dllm, "dllm_logits", device);
  a.verifier = logits_arg(verifier, "verifier_logits", device);
  a.batch = dllm.size(0);
  a.window = dllm.size(1);
  a.vocab = vocab;
  TORCH_CHECK(verifier.size(0) == a.batch && verifier.size(1) == a.window,
              "verifier_logits must be [B, K, V2] with the dllm's B and K, got ", verifier.sizes());
  TORCH_CHECK(vocab >= 1 && vocab <= dllm.size(2) && vocab <= verifier.size(2),
              "vocab_size must be in [1, min(V, V2)], got ", vocab);
  TORCH_CHECK(draft.scalar_type() == at::kLong && draft.device() == device && draft.dim() == 2 &&
                  draft.size(0) == a.batch && draft.size(1) == a.window && draft.stride(1) == 1,
              "draft_tokens must be int64 [B, K] on ", device, " with contiguous rows");
  a.draft_tokens = draft.data_ptr<int64_t>();
  a.draft_stride_b = draft.stride(0);
  if (valid_lengths.has_value()) {
    const at::Tensor& v = *valid_lengths;
    TORCH_CHECK(v.scalar_type() == at::kLong && v.device() == device && v.dim() == 1 && v.size(0) == a.batch &&
                    v.is_contiguous(),
                "valid_lengths must be a contiguous int64 [B] tensor on ", device);
    a.valid_lengths = v.data_ptr<int64_t>();
  }
  a.mixture_weight = mixture_weight;
  a.greedy_target = greedy_target ? 1 : 0;
  a.filter = apd_filter{temperature, top_k, top_p};
  a.noise = noise_arg(seed, seed_value, offset, offset_value, noise, a.batch, a.window, vocab, device);
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

}  // namespace apd::torch_ops
