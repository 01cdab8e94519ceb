// Emulated launchers (csrc/cuda/emu): the dispatch of csrc/cuda/{filter,sample_draft,mixture_accept}.cu
// with the <<<>>> launches replaced by the fiber emulator. Keep in step with those files.
#include <type_traits>

#include "filter.cuh"
#include "mixture_accept.cuh"
#include "sample_draft.cuh"

namespace apd::cuda {

cudaError_t launch_filter(apd_dtype dtype, const FilterParams& p, int64_t blocks, cudaStream_t) {
  const dim3 grid(static_cast<unsigned>(blocks));
  ++emu::g_filter_launches;
  emu::g_filter_looped += blocks < p.rows;
  if (blocks < 1 || blocks > p.rows) { fprintf(stderr, "emu: filter grid %ld for %ld rows\n", (long)blocks, (long)p.rows); abort(); }
  switch (dtype) {
    case APD_FLOAT16: emu::run(grid, kFilterThreads, [&] { filter_kernel<F16>(p); }); break;
    case APD_BFLOAT16: emu::run(grid, kFilterThreads, [&] { filter_kernel<BF16>(p); }); break;
    default: emu::run(grid, kFilterThreads, [&] { filter_kernel<F32>(p); }); break;
  }
  return cudaGetLastError();
}

template <class F>
static cudaError_t launch_d(bool sampled, const DraftParams& p, int64_t rows) {
  const dim3 grid(static_cast<unsigned>(rows * p.splits));
  if (sampled) emu::run(grid, kThreads, [&] { draft_partial_kernel<F, true>(p); });
  if (!sampled || p.temperature_rows != nullptr) emu::run(grid, kThreads, [&] { draft_partial_kernel<F, false>(p); });
  if (p.splits == 1) return cudaSuccess;
  emu::run(static_cast<unsigned>(ceil_div(rows, kThreads)), kThreads, [&] { draft_finalize_kernel<F>(p, rows); });
  return cudaSuccess;
}

cudaError_t launch_sample_draft(apd_dtype dtype, bool sampled, const DraftParams& p, int64_t rows, cudaStream_t) {
  switch (dtype) {
    case APD_FLOAT16: return launch_d<F16>(sampled, p, rows);
    case APD_BFLOAT16: return launch_d<BF16>(sampled, p, rows);
    default: return launch_d<F32>(sampled, p, rows);
  }
}

template <class FD, class FA, bool kFiltered, bool kPerRow = false>
static void launch_partial(apd_target_mode target_mode, const MixParams& p, dim3 grid) {
  switch (target_mode) {
    case APD_TARGET_ARGMAX_MIX: emu::run(grid, kThreads, [&] { mixture_partial_kernel<FD, FA, APD_TARGET_ARGMAX_MIX, kFiltered, kPerRow>(p); }); break;
    case APD_TARGET_ARGMAX_KEPT: emu::run(grid, kThreads, [&] { mixture_partial_kernel<FD, FA, APD_TARGET_ARGMAX_KEPT, kFiltered, kPerRow>(p); }); break;
    default: emu::run(grid, kThreads, [&] { mixture_partial_kernel<FD, FA, APD_TARGET_PHILOX, kFiltered, kPerRow>(p); }); break;
  }
}

template <class FD, class FA>
static cudaError_t launch_m(apd_target_mode target_mode, const MixParams& p) {
  const int64_t rows = p.batch * p.window;
  const dim3 grid(static_cast<unsigned>(rows * p.splits));
  if (mix_per_row(p)) {
    launch_partial<FD, FA, true, true>(target_mode, p, grid);
    if (p.temperature_rows != nullptr && apd_target_sampled(target_mode))
      launch_partial<FD, FA, true, true>(APD_TARGET_ARGMAX_KEPT, p, grid);
  } else {
    bool unfiltered_done = false;
    if constexpr (std::is_same_v<FD, FA>) {
      if (p.tau == nullptr) {
        launch_partial<FD, FA, false>(target_mode, p, grid);
        unfiltered_done = true;
      }
    }
    if (!unfiltered_done) launch_partial<FD, FA, true>(target_mode, p, grid);
  }
  if (p.stats != nullptr)
    emu::run(static_cast<unsigned>(ceil_div(rows, kThreads)), kThreads, [&] { mixture_partial_finalize_kernel<FD, FA>(p, rows); });
  else
    emu::run(static_cast<unsigned>(p.batch), kThreads, [&] { mixture_finalize_kernel<FD, FA>(p); });
  return cudaSuccess;
}
template <class FD>
static cudaError_t launch_ma(apd_dtype a, apd_target_mode t, const MixParams& p) {
  switch (a) {
    case APD_FLOAT16: return launch_m<FD, F16>(t, p);
    case APD_BFLOAT16: return launch_m<FD, BF16>(t, p);
    default: return launch_m<FD, F32>(t, p);
  }
}
cudaError_t launch_mixture_accept(apd_dtype d, apd_dtype a, apd_target_mode t, const MixParams& p, cudaStream_t) {
  switch (d) {
    case APD_FLOAT16: return launch_ma<F16>(a, t, p);
    case APD_BFLOAT16: return launch_ma<BF16>(a, t, p);
    default: return launch_ma<F32>(a, t, p);
  }
}

}  // namespace apd::cuda
