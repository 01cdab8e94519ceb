"""The Triton port of the counter-based noise (apd_ext/triton/noise.py) against reference.py:
Philox words and uniforms bit-exact, fast_log and the Gumbel noise to float32 rounding, for row
seeds and offsets that use both 32-bit halves (and negative seeds, read as two's complement).
Runs through the Triton interpreter on machines without a GPU."""

from __future__ import annotations

import pytest
import torch

from apd_ext import backends, reference

pytestmark = pytest.mark.skipif(not backends.has_triton(), reason="triton is not installed")

if backends.has_triton():
    import triton
    import triton.language as tl

    from apd_ext.triton import noise

    @triton.jit
    def _noise_kernel(seed_ptr, offset_ptr, uniform_ptr, gumbel_ptr, block_ptr, i, V, BLOCK_G: tl.constexpr):
        b = tl.program_id(0)
        k0, k1, o0, o1 = noise.row_noise_key(seed_ptr, 0, 2, offset_ptr, 0, 1, b)
        g = tl.arange(0, BLOCK_G)
        zero = tl.zeros([BLOCK_G], tl.uint32)
        w0, w1, w2, w3 = noise.philox4x32_10(g.to(tl.uint32), zero + i, zero + o0, zero + o1, zero + k0, zero + k1)
        j = tl.arange(0, 4)[None, :]
        bits = tl.where(j == 0, w0[:, None], tl.where(j == 1, w1[:, None], tl.where(j == 2, w2[:, None], w3[:, None])))
        u = noise.uniform_from_bits(bits)
        v = 4 * g[:, None] + j
        m = v < V
        tl.store(uniform_ptr + b * V + v, u, mask=m)
        tl.store(gumbel_ptr + b * V + v, noise.gumbel_from_uniform(u), mask=m)
        tl.store(block_ptr + b * V + v, noise.philox_gumbel_block(0, i, k0, k1, o0, o1, BLOCK_G), mask=m)

    @triton.jit
    def _log_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + o, mask=o < n, other=1.0)
        tl.store(y_ptr + o, noise.fast_log(x), mask=o < n)


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("seeds,offset,i", [
    ([0, 1], 0, 0),
    ([2**40 + 3, -5, 123456789], 2**33 + 17, 5),
    ([-(2**62), 2**63 - 1], 2**64 - 1 - 2**63, 99),  # the largest int64 offset
])
def test_noise_matches_reference(seeds, offset, i):
    dev = _device()
    V = 203  # not a multiple of 4: the last group is partial
    B = len(seeds)
    seed_t = torch.tensor(seeds, dtype=torch.int64, device=dev)
    offset_t = torch.tensor([offset], dtype=torch.int64, device=dev)
    u = torch.empty(B, V, device=dev)
    g = torch.empty_like(u)
    blk = torch.empty_like(u)
    _noise_kernel[(B,)](seed_t, offset_t, u, g, blk, i, V, BLOCK_G=triton.next_power_of_2(triton.cdiv(V, 4)))
    ref_u = reference.noise_uniform(torch.tensor(seeds), offset, B, i + 1, V)[:, i]
    assert torch.equal(u.cpu(), ref_u), "uniforms differ: the Philox port or the counter layout is wrong"
    ref_g = reference.gumbel(ref_u.double()).float()
    torch.testing.assert_close(g.cpu(), ref_g, rtol=2e-6, atol=2e-6)
    assert torch.equal(blk.cpu(), g.cpu()), "philox_gumbel_block differs from its parts"


def test_fast_log_accuracy():
    """fast_log to a few ulp of the exact log over normal floats, from 2^-24 to near 1 and beyond."""
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.rand(4000, generator=gen, dtype=torch.float64).clamp_min(2**-24),
        torch.exp(torch.empty(4000, dtype=torch.float64).uniform_(-17, 20, generator=gen)),
        torch.tensor([2**-24, 0.5, 1 - 2**-24, 1.0, 2.0**0.5, 0.5**0.5], dtype=torch.float64),
    ]).float()
    dev = _device()
    y = torch.empty_like(x, device=dev)
    _log_kernel[(triton.cdiv(x.numel(), 1024),)](x.to(dev), y, x.numel(), BLOCK=1024)
    exact = torch.log(x.double())
    err = (y.cpu().double() - exact).abs()
    ulp = torch.finfo(torch.float32).eps * exact.abs().clamp_min(2**-23)
    assert float((err / ulp).max()) <= 4.0
    assert float(y[x == 1.0].abs().max()) == 0.0
