// Test-only stand-in for cuda_fp16.h (csrc/cuda/emu): __half storage and an exact conversion.
#pragma once
#include <cstdint>
#include <cstring>
struct __half { uint16_t x; };
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline float __half2float(__half h) {  // exact IEEE binary16 -> float
  const uint32_t sign = (uint32_t)(h.x & 0x8000u) << 16;
  uint32_t e = (h.x >> 10) & 0x1f, m = h.x & 0x3ff, bits;
  if (e == 0x1f) bits = sign | 0x7f800000u | (m << 13);
  else if (e == 0) {
    float f = (float)m * 5.9604644775390625e-08f;  // 2^-24
    memcpy(&bits, &f, 4); bits |= sign;
  } else bits = sign | ((e + 112) << 23) | (m << 13);
  float f; memcpy(&f, &bits, 4); return f;
}
