// CUDA implementations of the torch ops: the kernels of csrc/cuda run on torch's current stream
// with a workspace from torch's caching allocator (no cudaMalloc after warm-up, capture-safe).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "apd/apd.h"
#include "torch_ops/args.h"

namespace apd::torch_ops {
namespace {

at::Tensor workspace(const at::Tensor& like, int64_t batch, int64_t window, int64_t vocab) {
  const size_t bytes = apd_workspace_bytes(batch, window, vocab);
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> sample_draft_cuda(const at::Tensor& dllm, int64_t vocab, double temperature,
                                                     int64_t top_k, double top_p,
                                                     const std::optional<at::Tensor>& seed, int64_t seed_value,
                                                     const std::optional<at::Tensor>& offset, int64_t offset_value,
                                                     const std::optional<at::Tensor>& noise) {
  const c10::cuda::CUDAGuard guard(dllm.device());
  SampleDraftCall c =
      sample_draft_call(dllm, vocab, temperature, top_k, top_p, seed, seed_value, offset, offset_value, noise);
  at::Tensor ws = workspace(dllm, c.args.batch, c.args.window, vocab);
  const apd_status st = apd_sample_draft_cuda(&c.args, ws.data_ptr(), static_cast<size_t>(ws.numel()),
                                              c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(st == APD_OK, "apd_ext.sample_draft (cuda): ", apd_status_string(st));
  return {c.tokens, c.logprobs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_accept_cuda(
    const at::Tensor& dllm, const at::Tensor& verifier, const at::Tensor& draft, int64_t vocab,
    double mixture_weight, double temperature, int64_t top_k, double top_p,
    const std::optional<at::Tensor>& valid_lengths, bool greedy_target, const std::optional<at::Tensor>& seed,
    int64_t seed_value, const std::optional<at::Tensor>& offset, int64_t offset_value,
    const std::optional<at::Tensor>& noise) {
  const c10::cuda::CUDAGuard guard(dllm.device());
  MixtureAcceptCall c = mixture_accept_call(dllm, verifier, draft, vocab, mixture_weight, temperature, top_k,
                                            top_p, valid_lengths, greedy_target, seed, seed_value, offset,
                                            offset_value, noise);
  at::Tensor ws = workspace(dllm, c.args.batch, c.args.window, vocab);
  const apd_status st = apd_mixture_accept_cuda(&c.args, ws.data_ptr(), static_cast<size_t>(ws.numel()),
                                                c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(st == APD_OK, "apd_ext.mixture_accept (cuda): ", apd_status_string(st));
  return {c.num_accepted, c.target_tokens, c.logp_dllm, c.logp_verifier, c.logp_mixture};
}

}  // namespace
}  // namespace apd::torch_ops

TORCH_LIBRARY_IMPL(apd_ext, CUDA, m) {
  m.impl("sample_draft", &apd::torch_ops::sample_draft_cuda);
  m.impl("mixture_accept", &apd::torch_ops::mixture_accept_cuda);
}
