// The single registry of apd_ext's torch ops (schemas), their CPU implementations, and the
// Python module apd_ext._C. CUDA implementations are attached in cuda_ops.cpp.
#include <torch/extension.h>
#include <torch/library.h>

#include "apd/apd.h"
#include "torch_ops/args.h"

namespace apd::torch_ops {
namespace {

std::tuple<at::Tensor, at::Tensor> sample_draft_cpu(const at::Tensor& dllm, int64_t vocab, double temperature,
                                                    int64_t top_k, double top_p,
                                                    const std::optional<at::Tensor>& seed, int64_t seed_value,
                                                    const std::optional<at::Tensor>& offset, int64_t offset_value,
                                                    const std::optional<at::Tensor>& noise) {
  SampleDraftCall c =
      sample_draft_call(dllm, vocab, temperature, top_k, top_p, seed, seed_value, offset, offset_value, noise);
  const apd_status st = apd_sample_draft_cpu(&c.args);
  TORCH_CHECK(st == APD_OK, "apd_ext.sample_draft (cpu): ", apd_status_string(st));
  return {c.tokens, c.logprobs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_accept_cpu(
    const at::Tensor& dllm, const at::Tensor& verifier, const at::Tensor& draft, int64_t vocab,
    double mixture_weight, double temperature, int64_t top_k, double top_p,
    const std::optional<at::Tensor>& valid_lengths, bool greedy_target, const std::optional<at::Tensor>& seed,
    int64_t seed_value, const std::optional<at::Tensor>& offset, int64_t offset_value,
    const std::optional<at::Tensor>& noise) {
  MixtureAcceptCall c = mixture_accept_call(dllm, verifier, draft, vocab, mixture_weight, temperature, top_k,
                                            top_p, valid_lengths, greedy_target, seed, seed_value, offset,
                                            offset_value, noise);
  const apd_status st = apd_mixture_accept_cpu(&c.args);
  TORCH_CHECK(st == APD_OK, "apd_ext.mixture_accept (cpu): ", apd_status_string(st));
  return {c.num_accepted, c.target_tokens, c.logp_dllm, c.logp_verifier, c.logp_mixture};
}

}  // namespace
}  // namespace apd::torch_ops

TORCH_LIBRARY(apd_ext, m) {
  m.def(
      "sample_draft(Tensor dllm_logits, int vocab_size, float temperature, int top_k, float top_p, "
      "Tensor? seed, int seed_value, Tensor? offset, int offset_value, Tensor? noise) -> (Tensor, Tensor)");
  m.def(
      "mixture_accept(Tensor dllm_logits, Tensor verifier_logits, Tensor draft_tokens, int vocab_size, "
      "float mixture_weight, float temperature, int top_k, float top_p, Tensor? valid_lengths, "
      "bool greedy_target, Tensor? seed, int seed_value, Tensor? offset, int offset_value, Tensor? noise) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(apd_ext, CPU, m) {
  m.impl("sample_draft", &apd::torch_ops::sample_draft_cpu);
  m.impl("mixture_accept", &apd::torch_ops::mixture_accept_cpu);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "apd_ext compiled ops (registered as torch.ops.apd_ext.*)";
  m.def("has_cuda", []() { return apd_has_cuda() != 0; }, "True when the CUDA kernels are built in");
  m.def("workspace_bytes", &apd_workspace_bytes, "Device workspace bytes for (batch, window, vocab)");
}
