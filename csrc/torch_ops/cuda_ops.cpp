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

struct Cuda {
  static constexpr const char* name = "cuda";
  static apd_status sample_draft(SampleDraftCall& c) {
    const c10::cuda::CUDAGuard guard(c.tokens.device());
    at::Tensor ws = workspace(c.tokens, c.args.batch, c.args.window, c.args.vocab);
    return apd_sample_draft_cuda(&c.args, ws.data_ptr(), static_cast<size_t>(ws.numel()),
                                 c10::cuda::getCurrentCUDAStream().stream());
  }
  static apd_status mixture_accept(MixtureAcceptCall& c) {
    const c10::cuda::CUDAGuard guard(c.target_tokens.device());
    at::Tensor ws = workspace(c.target_tokens, c.args.batch, c.args.window, c.args.vocab);
    return apd_mixture_accept_cuda(&c.args, ws.data_ptr(), static_cast<size_t>(ws.numel()),
                                   c10::cuda::getCurrentCUDAStream().stream());
  }
  static apd_status sample_draft_partial(SampleDraftPartialCall& c) {
    const c10::cuda::CUDAGuard guard(c.tokens.device());
    at::Tensor ws = workspace(c.tokens, c.args.batch, c.args.window, c.args.vocab);
    return apd_sample_draft_partial_cuda(&c.args, ws.data_ptr(), static_cast<size_t>(ws.numel()),
                                         c10::cuda::getCurrentCUDAStream().stream());
  }
  static apd_status mixture_accept_partial(MixtureAcceptPartialCall& c) {
    const c10::cuda::CUDAGuard guard(c.target_tokens.device());
    at::Tensor ws = workspace(c.target_tokens, c.args.batch, c.args.window, c.args.vocab);
    return apd_mixture_accept_partial_cuda(&c.args, ws.data_ptr(), static_cast<size_t>(ws.numel()),
                                           c10::cuda::getCurrentCUDAStream().stream());
  }
};

}  // namespace
}  // namespace apd::torch_ops

TORCH_LIBRARY_IMPL(apd_ext, CUDA, m) {
  m.impl("sample_draft", &apd::torch_ops::sample_draft_op<apd::torch_ops::Cuda>);
  m.impl("mixture_accept", &apd::torch_ops::mixture_accept_op<apd::torch_ops::Cuda>);
  m.impl("sample_draft_partial", &apd::torch_ops::sample_draft_partial_op<apd::torch_ops::Cuda>);
  m.impl("mixture_accept_partial", &apd::torch_ops::mixture_accept_partial_op<apd::torch_ops::Cuda>);
}
