// Launchers of the sample_draft kernels (sample_draft.cuh): dtype and mode dispatch.
#include "sample_draft.cuh"

namespace apd::cuda {
namespace {

template <class F>
cudaError_t launch(bool sampled, const DraftParams& p, int64_t rows, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(rows * p.splits));
  if (sampled)
    draft_partial_kernel<F, true><<<grid, kThreads, 0, stream>>>(p);
  // Per-row temperatures: the argmax kernel takes the rows whose temperature is 0 (sample_draft.cuh).
  if (!sampled || p.temperature_rows != nullptr)
    draft_partial_kernel<F, false><<<grid, kThreads, 0, stream>>>(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || p.splits == 1) return e;
  draft_finalize_kernel<F><<<static_cast<unsigned>(ceil_div(rows, kThreads)), kThreads, 0, stream>>>(p, rows);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sample_draft(apd_dtype dtype, bool sampled, const DraftParams& p, int64_t rows,
                                cudaStream_t stream) {
  switch (dtype) {
    case APD_FLOAT16:
      return launch<F16>(sampled, p, rows, stream);
    case APD_BFLOAT16:
      return launch<BF16>(sampled, p, rows, stream);
    default:
      return launch<F32>(sampled, p, rows, stream);
  }
}

}  // namespace apd::cuda
