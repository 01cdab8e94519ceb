// Launchers of the mixture_accept kernels (mixture_accept.cuh): dtype and mode dispatch.
#include <type_traits>

#include "mixture_accept.cuh"

namespace apd::cuda {
namespace {

template <class FD, class FA, bool kFiltered, bool kPerRow = false>
void launch_partial(apd_target_mode target_mode, const MixParams& p, dim3 grid, cudaStream_t stream) {
  switch (target_mode) {
    case APD_TARGET_ARGMAX_MIX:
      mixture_partial_kernel<FD, FA, APD_TARGET_ARGMAX_MIX, kFiltered, kPerRow><<<grid, kThreads, 0, stream>>>(p);
      break;
    case APD_TARGET_ARGMAX_KEPT:
      mixture_partial_kernel<FD, FA, APD_TARGET_ARGMAX_KEPT, kFiltered, kPerRow><<<grid, kThreads, 0, stream>>>(p);
      break;
    default:  // APD_TARGET_PHILOX and APD_TARGET_UNIFORM: one kernel reads either noise source
      mixture_partial_kernel<FD, FA, APD_TARGET_PHILOX, kFiltered, kPerRow><<<grid, kThreads, 0, stream>>>(p);
      break;
  }
}

template <class FD, class FA>
cudaError_t launch(apd_target_mode target_mode, const MixParams& p, cudaStream_t stream) {
  const int64_t rows = p.batch * p.window;
  const dim3 grid(static_cast<unsigned>(rows * p.splits));
  // The unfiltered instantiation (no threshold test) only for equal dtypes, the common case;
  // mixed dtypes run the filtered one, which is also right with tau = -inf.
  // Per-row knobs: the kPerRow kernels (filtered instantiation only); with per-row temperatures a
  // sampled call also launches the ARGMAX_KEPT kernel for its greedy rows (mixture_accept.cuh).
  if (mix_per_row(p)) {
    launch_partial<FD, FA, true, true>(target_mode, p, grid, stream);
    if (p.temperature_rows != nullptr && apd_target_sampled(target_mode))
      launch_partial<FD, FA, true, true>(APD_TARGET_ARGMAX_KEPT, p, grid, stream);
  } else {
    bool unfiltered_done = false;
    if constexpr (std::is_same_v<FD, FA>) {
      if (p.tau == nullptr) {
        launch_partial<FD, FA, false>(target_mode, p, grid, stream);
        unfiltered_done = true;
      }
    }
    if (!unfiltered_done) launch_partial<FD, FA, true>(target_mode, p, grid, stream);
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  if (p.stats != nullptr)
    mixture_partial_finalize_kernel<FD, FA><<<static_cast<unsigned>(ceil_div(rows, kThreads)), kThreads, 0, stream>>>(p, rows);
  else
    mixture_finalize_kernel<FD, FA><<<static_cast<unsigned>(p.batch), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <class FD>
cudaError_t launch_a(apd_dtype a, apd_target_mode target_mode, const MixParams& p, cudaStream_t stream) {
  switch (a) {
    case APD_FLOAT16:
      return launch<FD, F16>(target_mode, p, stream);
    case APD_BFLOAT16:
      return launch<FD, BF16>(target_mode, p, stream);
    default:
      return launch<FD, F32>(target_mode, p, stream);
  }
}

}  // namespace

cudaError_t launch_mixture_accept(apd_dtype dllm_dtype, apd_dtype verifier_dtype, apd_target_mode target_mode,
                                  const MixParams& p, cudaStream_t stream) {
  switch (dllm_dtype) {
    case APD_FLOAT16:
      return launch_a<F16>(verifier_dtype, target_mode, p, stream);
    case APD_BFLOAT16:
      return launch_a<BF16>(verifier_dtype, target_mode, p, stream);
    default:
      return launch_a<F32>(verifier_dtype, target_mode, p, stream);
  }
}

}  // namespace apd::cuda
