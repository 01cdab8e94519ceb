// Status strings of the C ABI, and the CUDA entry points of a build without CUDA kernels.
#include "apd/apd.h"

extern "C" const char* apd_status_string(apd_status status) {
  switch (status) {
    case APD_OK:
      return "ok";
    case APD_ERROR_INVALID_ARGUMENT:
      return "invalid argument";
    case APD_ERROR_UNSUPPORTED:
      return "unsupported in this build";
    case APD_ERROR_CUDA:
      return "CUDA error";
    case APD_ERROR_WORKSPACE_TOO_SMALL:
      return "workspace too small";
  }
  return "unknown status";
}

#if !defined(APD_WITH_CUDA)
extern "C" size_t apd_workspace_bytes(int64_t, int64_t, int64_t) { return 0; }
extern "C" int apd_has_cuda(void) { return 0; }
extern "C" apd_status apd_sample_draft_cuda(const apd_sample_draft_args*, void*, size_t, cudaStream_t) {
  return APD_ERROR_UNSUPPORTED;
}
extern "C" apd_status apd_mixture_accept_cuda(const apd_mixture_accept_args*, void*, size_t, cudaStream_t) {
  return APD_ERROR_UNSUPPORTED;
}
extern "C" apd_status apd_sample_draft_partial_cuda(const apd_sample_draft_partial_args*, void*, size_t,
                                                    cudaStream_t) {
  return APD_ERROR_UNSUPPORTED;
}
extern "C" apd_status apd_mixture_accept_partial_cuda(const apd_mixture_accept_partial_args*, void*, size_t,
                                                      cudaStream_t) {
  return APD_ERROR_UNSUPPORTED;
}
#endif
