// Test-only stand-in for cuda_runtime.h (csrc/cuda/emu): runs the CUDA kernels of csrc/cuda on the
// host, one block at a time, each thread a ucontext fiber; __syncthreads and warp shuffles are
// barriers between fibers. Enough of the CUDA API for csrc/cuda, nothing more. Never on the
// include path of a real build.
#pragma once
#include <ucontext.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
typedef int cudaError_t;
enum { cudaSuccess = 0 };
typedef struct CUstream_st* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrL2CacheSize = 38 };

namespace emu {
inline int g_sm_count = 132;
inline int g_l2_bytes = 50 << 20;
inline int g_device = 0;
inline long g_launches = 0;
inline long g_filter_launches = 0, g_filter_looped = 0;  // filter launches; those with blocks < rows
struct Fiber { ucontext_t ctx; uint3 tidx; bool done; std::vector<char> stack; };
struct Block {
  std::vector<Fiber> fibers;
  ucontext_t sched;
  uint3 bidx; uint3 bdim; uint3 gdim;
  unsigned n = 0, bar_count = 0, bar_gen = 0;
  unsigned warp_count[64] = {}, warp_gen[64] = {};
  unsigned char slot[1024][8];
};
inline Block g_block;
inline Fiber* g_cur = nullptr;
inline std::function<void()> g_fn;
inline long g_spins = 0;  // yields of the current block (reset per block): a bound, not a total
inline void yield() {
  if (++g_spins > 200000000L) { fprintf(stderr, "emu: deadlock\n"); abort(); }
  swapcontext(&g_cur->ctx, &g_block.sched);
}
inline void syncthreads() {
  const unsigned gen = g_block.bar_gen;
  if (++g_block.bar_count == g_block.n) { g_block.bar_count = 0; ++g_block.bar_gen; return; }
  while (g_block.bar_gen == gen) yield();
}
inline void syncwarp() {
  const unsigned w = g_cur->tidx.x >> 5, gen = g_block.warp_gen[w];
  if (++g_block.warp_count[w] == 32) { g_block.warp_count[w] = 0; ++g_block.warp_gen[w]; return; }
  while (g_block.warp_gen[w] == gen) yield();
}
inline void trampoline() { g_fn(); g_cur->done = true; }
inline void run(dim3 grid, dim3 block, std::function<void()> fn) {
  ++g_launches;
  if (block.x % 32 != 0 || block.y != 1 || grid.y != 1) { fprintf(stderr, "emu: unsupported launch\n"); abort(); }
  g_fn = std::move(fn);
  Block& B = g_block;
  B.n = block.x;
  B.bdim = uint3{block.x, 1, 1};
  B.gdim = uint3{grid.x, 1, 1};
  B.fibers.resize(B.n);
  for (auto& f : B.fibers) if (f.stack.empty()) f.stack.resize(256 * 1024);
  for (unsigned bx = 0; bx < grid.x; ++bx) {
    B.bidx = uint3{bx, 0, 0};
    B.bar_count = B.bar_gen = 0;
    g_spins = 0;
    memset(B.warp_count, 0, sizeof B.warp_count);
    for (unsigned t = 0; t < B.n; ++t) {
      Fiber& f = B.fibers[t];
      f.tidx = uint3{t, 0, 0};
      f.done = false;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = &B.sched;
      makecontext(&f.ctx, trampoline, 0);
    }
    for (;;) {
      bool any = false;
      for (unsigned t = 0; t < B.n; ++t) {
        Fiber& f = B.fibers[t];
        if (f.done) continue;
        any = true;
        g_cur = &f;
        swapcontext(&B.sched, &f.ctx);
      }
      if (!any) break;
    }
  }
}
template <class T>
inline T shfl_xor(T v, int o) {
  static_assert(sizeof(T) <= 8, "");
  const unsigned t = g_cur->tidx.x;
  memcpy(g_block.slot[t], &v, sizeof(T));
  syncwarp();
  T r;
  memcpy(&r, g_block.slot[t ^ static_cast<unsigned>(o)], sizeof(T));
  syncwarp();
  return r;
}
}  // namespace emu

#define threadIdx (::emu::g_cur->tidx)
#define blockIdx (::emu::g_block.bidx)
#define blockDim (::emu::g_block.bdim)
#define gridDim (::emu::g_block.gdim)

inline void __syncthreads() { emu::syncthreads(); }
template <class T> inline T __shfl_xor_sync(unsigned, T v, int o) { return emu::shfl_xor(v, o); }
inline unsigned __reduce_max_sync(unsigned, unsigned v) {
  for (int o = 16; o > 0; o >>= 1) { unsigned t = emu::shfl_xor(v, o); v = t > v ? t : v; }
  return v;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
template <class T> inline T __ldg(const T* p) { return *p; }

inline cudaError_t cudaGetDevice(int* d) { *d = emu::g_device; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrL2CacheSize ? emu::g_l2_bytes : emu::g_sm_count;
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
inline unsigned atomicMax(unsigned* p, unsigned v) { unsigned o = *p; if (v > o) *p = v; return o; }
inline unsigned __ballot_sync(unsigned, int pred) {
  unsigned mine = pred ? (1u << (emu::g_cur->tidx.x & 31)) : 0u, acc = mine;
  for (int o = 16; o > 0; o >>= 1) acc |= emu::shfl_xor(acc, o);
  return acc;
}
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T> inline T __shfl_sync(unsigned, T v, int src) {
  const unsigned t = emu::g_cur->tidx.x;
  memcpy(emu::g_block.slot[t], &v, sizeof(T));
  emu::syncwarp();
  T r; memcpy(&r, emu::g_block.slot[(t & ~31u) | (unsigned)src], sizeof(T));
  emu::syncwarp();
  return r;
}
