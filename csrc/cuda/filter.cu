// Launcher of the filter kernel (filter.cuh).
#include "filter.cuh"

namespace apd::cuda {

cudaError_t launch_filter(apd_dtype dtype, const FilterParams& p, int64_t blocks, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(blocks));
  switch (dtype) {
    case APD_FLOAT16:
      filter_kernel<F16><<<grid, kFilterThreads, 0, stream>>>(p);
      break;
    case APD_BFLOAT16:
      filter_kernel<BF16><<<grid, kFilterThreads, 0, stream>>>(p);
      break;
    default:
      filter_kernel<F32><<<grid, kFilterThreads, 0, stream>>>(p);
      break;
  }
  return cudaGetLastError();
}

}  // namespace apd::cuda
