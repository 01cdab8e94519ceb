// The single registry of apd_ext's torch ops (schemas), their CPU implementations, and the
// Python module apd_ext._C. CUDA implementations are attached in cuda_ops.cpp.
#include <torch/extension.h>
#include <torch/library.h>

#include "apd/apd.h"
#include "torch_ops/args.h"

namespace apd::torch_ops {
namespace {

struct Cpu {
  static constexpr const char* name = "cpu";
  static apd_status sample_draft(SampleDraftCall& c) { return apd_sample_draft_cpu(&c.args); }
  static apd_status mixture_accept(MixtureAcceptCall& c) { return apd_mixture_accept_cpu(&c.args); }
  static apd_status sample_draft_partial(SampleDraftPartialCall& c) { return apd_sample_draft_partial_cpu(&c.args); }
  static apd_status mixture_accept_partial(MixtureAcceptPartialCall& c) {
    return apd_mixture_accept_partial_cpu(&c.args);
  }
};

}  // namespace
}  // namespace apd::torch_ops

// The schemas take apd_filter (temperature, top_k, top_p, then the per-row tensors
// temperature_rows float64 [B], top_k_rows int64 [B], top_p_rows float64 [B] or None) and apd_noise
// (seed, seed_value, offset, offset_value, noise) flat, in that order; mixture_weight is followed by
// mixture_weight_rows (float64 [B] or None). apd_ext/fake.py mirrors them.
TORCH_LIBRARY(apd_ext, m) {
  m.def(
      "sample_draft(Tensor dllm_logits, int vocab_size, float temperature, int top_k, float top_p, Tensor? temperature_rows, Tensor? top_k_rows, Tensor? top_p_rows, "
      "Tensor? seed, int seed_value, Tensor? offset, int offset_value, Tensor? noise) -> (Tensor, Tensor)");
  m.def(
      "mixture_accept(Tensor dllm_logits, Tensor verifier_logits, Tensor draft_tokens, int vocab_size, "
      "float mixture_weight, Tensor? mixture_weight_rows, float temperature, int top_k, float top_p, Tensor? temperature_rows, Tensor? top_k_rows, Tensor? top_p_rows, "
      "Tensor? valid_lengths, bool greedy_target, Tensor? seed, int seed_value, Tensor? offset, int offset_value, "
      "Tensor? noise) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Vocabulary-parallel partial ops (reference.py): the rank's slice [vocab_offset, + vocab_size)
  // of the vocabulary; threshold (float32 [B, K] or None) replaces top_k / top_p.
  m.def(
      "sample_draft_partial(Tensor dllm_logits, int vocab_size, int vocab_offset, float temperature, int top_k, float top_p, Tensor? temperature_rows, Tensor? top_k_rows, Tensor? top_p_rows, "
      "Tensor? seed, int seed_value, Tensor? offset, int offset_value, Tensor? noise, "
      "Tensor? threshold) -> (Tensor, Tensor)");
  m.def(
      "mixture_accept_partial(Tensor dllm_logits, Tensor verifier_logits, Tensor draft_tokens, int vocab_size, "
      "int vocab_offset, float mixture_weight, Tensor? mixture_weight_rows, float temperature, int top_k, float top_p, Tensor? temperature_rows, Tensor? top_k_rows, Tensor? top_p_rows, "
      "Tensor? valid_lengths, bool greedy_target, Tensor? seed, int seed_value, Tensor? offset, int offset_value, Tensor? noise, "
      "Tensor? threshold) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(apd_ext, CPU, m) {
  m.impl("sample_draft", &apd::torch_ops::sample_draft_op<apd::torch_ops::Cpu>);
  m.impl("mixture_accept", &apd::torch_ops::mixture_accept_op<apd::torch_ops::Cpu>);
  m.impl("sample_draft_partial", &apd::torch_ops::sample_draft_partial_op<apd::torch_ops::Cpu>);
  m.impl("mixture_accept_partial", &apd::torch_ops::mixture_accept_partial_op<apd::torch_ops::Cpu>);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "apd_ext compiled ops (registered as torch.ops.apd_ext.*)";
  m.def("has_cuda", []() { return apd_has_cuda() != 0; }, "True when the CUDA kernels are built in");
  m.def("workspace_bytes", &apd_workspace_bytes, "Device workspace bytes for (batch, window, vocab)");
}
