"""Counter-based Gumbel noise of the Triton kernels: a port of csrc/include/apd/philox.h and math.h.

g[b, i, v] = -fast_log(-fast_log(u)) with u = uniform_from_bits(word v & 3 of
philox4x32_10(counter=(v >> 2, i, offset_lo, offset_hi), key=(seed_lo, seed_hi))), seed being the
row seed (reference.row_seeds). reference.py, the CPU and the CUDA kernels compute the same
function; python_tests/test_triton_noise.py checks this port against reference.py.

Every function here is a @triton.jit helper meant to be inlined into the op kernels.

Module-level constants that kernels read are tl.constexpr objects (`X = tl.constexpr(v)`): the
compiler rejects any other global (an annotation `X: tl.constexpr = v` leaves a plain number,
which only the interpreter accepts). apd_ext/triton/aot.py compiles every kernel to catch this.
"""

from __future__ import annotations

import triton
import triton.language as tl

PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)

# Bounds of the generated Gumbel noise (apd::kGumbelMax / kGumbelMin, philox.h): every value of
# gumbel(uniform_from_bits(.)) lies strictly inside, with a margin for the log approximation.
GUMBEL_MAX = tl.constexpr(16.75)

NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32 with 10 rounds on uint32 tensors (apd::philox4x32_10); returns the four words."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, PHILOX_M0)
        lo0 = tl.mul(c0, PHILOX_M0, sanitize_overflow=False)
        hi1 = tl.umulhi(c2, PHILOX_M1)
        lo1 = tl.mul(c2, PHILOX_M1, sanitize_overflow=False)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = tl.add(k0, PHILOX_W0, sanitize_overflow=False)
        k1 = tl.add(k1, PHILOX_W1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def uniform_from_bits(bits):
    """23 random bits of a uint32 -> float32 in [2^-24, 1 - 2^-24]; exact, never 0 or 1."""
    return ((bits >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07


@triton.jit
def fast_log(x):
    """Natural log of float32 x > 0 (apd::fast_log: cephes-style, mantissa in [sqrt(1/2), sqrt(2)),
    degree-8 polynomial), ~1 ulp on normal inputs. The multiply-adds are explicit FMAs, as nvcc
    contracts them in the CUDA kernels."""
    bits = x.to(tl.uint32, bitcast=True)
    e = ((bits >> 23) & 0xFF).to(tl.int32) - 126
    m = ((bits & 0x007FFFFF) | 0x3F000000).to(tl.float32, bitcast=True)  # in [0.5, 1)
    small = m < 0.70710678118654752
    e = e - small.to(tl.int32)
    m = tl.where(small, m + m - 1.0, m - 1.0)
    z = m * m
    y = tl.fma(m, 7.0376836292e-2, -1.1514610310e-1)
    y = tl.fma(y, m, 1.1676998740e-1)
    y = tl.fma(y, m, -1.2420140846e-1)
    y = tl.fma(y, m, 1.4249322787e-1)
    y = tl.fma(y, m, -1.6668057665e-1)
    y = tl.fma(y, m, 2.0000714765e-1)
    y = tl.fma(y, m, -2.4999993993e-1)
    y = tl.fma(y, m, 3.3333331174e-1)
    y = y * m * z
    fe = e.to(tl.float32)
    y = tl.fma(fe, -2.12194440e-4, y)
    y = tl.fma(z, -0.5, y)
    return tl.fma(fe, 0.693359375, m + y)


@triton.jit
def gumbel_from_uniform(u):
    """-log(-log(u)) for the generator's float32 uniforms (apd::gumbel_from_uniform)."""
    return -fast_log(-fast_log(u))


@triton.jit
def gumbel_from_explicit(u):
    """float32 Gumbel noise of explicit uniforms, computed in u's precision (reference.gumbel):
    float64 with the accurate log, float32 with fast_log; u <= 0 gives -inf and u >= 1 +inf."""
    if u.dtype == tl.float64:
        g = (-tl.log(-tl.log(u))).to(tl.float32)
    else:
        uf = u.to(tl.float32)
        inner = tl.where((uf > 0.0) & (uf < 1.0), uf, 0.5)
        g = -fast_log(-fast_log(inner))
        g = tl.where(uf <= 0.0, NEG_INF, tl.where(uf >= 1.0, POS_INF, g))
    return g


@triton.jit
def row_noise_key(seed_ptr, seed_v, seed_mode, offset_ptr, offset_v, offset_mode, b):
    """(key0, key1, counter2, counter3) uint32 scalars of batch row b: the row seed and the offset.

    seed_mode 0: seed_v + b; 1: seed_ptr[0] + b; 2: seed_ptr[b] (reference.row_seeds, two's
    complement wrap). The offset is offset_ptr[0] when offset_mode == 1, offset_ptr[b] when
    offset_mode == 2 (per-row offsets), else offset_v. seed_ptr and
    offset_ptr point to int64 (dummies when unused). Tensors are read here, on the device, so that a
    captured CUDA graph replays with their current values. The modes are runtime values (scalar
    branches, once per program): they need no kernel specialisation of their own.
    """
    if seed_mode == 0:
        seed = seed_v.to(tl.int64) + b
    elif seed_mode == 1:
        seed = tl.load(seed_ptr) + b
    else:
        seed = tl.load(seed_ptr + b)
    if offset_mode == 1:
        offset = tl.load(offset_ptr)
    elif offset_mode == 2:
        offset = tl.load(offset_ptr + b)
    else:
        offset = offset_v.to(tl.int64)
    su = seed.to(tl.uint64, bitcast=True)
    ou = offset.to(tl.uint64, bitcast=True)
    return su.to(tl.uint32), (su >> 32).to(tl.uint32), ou.to(tl.uint32), (ou >> 32).to(tl.uint32)


@triton.jit
def philox_gumbel_block(group0, i, k0, k1, o0, o1, BLOCK_G: tl.constexpr):
    """float32 [BLOCK_G, 4] generated noise of entries v = 4 * (group0 + r) + j of window row i.

    One Philox call per group of 4 entries (counter word 0 = v >> 2), its words spread over j.
    """
    c0 = (group0 + tl.arange(0, BLOCK_G)).to(tl.uint32)
    zero = tl.zeros([BLOCK_G], tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(c0, zero + i.to(tl.uint32), zero + o0, zero + o1, zero + k0, zero + k1)
    j = tl.arange(0, 4)[None, :]
    bits = tl.where(j == 0, w0[:, None], tl.where(j == 1, w1[:, None], tl.where(j == 2, w2[:, None], w3[:, None])))
    return gumbel_from_uniform(uniform_from_bits(bits))
