"""Per-row RNG offsets (the server's continuous batching: each row counts its own steps from the step
it joined at, so a request's noise does not depend on when it arrived).

`offset` takes one value or a [B] int64 tensor. Row b of a call with per-row offsets must equal, bit
for bit, the call on row b alone with offset[b], on every backend that runs here, for the full and
the vocabulary-parallel partial ops; a per-row offset tensor of the wrong size is refused."""

from __future__ import annotations

import pytest
import torch

import apd_ext
from apd_ext import reference
from helpers import backend_device, backend_params, make_logits

BACKENDS = [p for p in backend_params(("cpu", "cuda"))] + [pytest.param("reference", id="reference")]


def _inputs(B: int, K: int, V: int, dtype, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    D = make_logits("peaky", B, K, V, dtype, generator=g).to(device)
    A = make_logits("flat", B, K, V, dtype, generator=g).to(device)
    seeds = torch.randint(-(2**62), 2**62, (B,), generator=g).to(device)
    # small offsets as an engine's step counts, beside ones past 2^32 and negative (two's complement)
    offsets = torch.tensor([0, 1, 7, 2**33 + 5, -3, 12, 3][:B], dtype=torch.int64, device=device)
    return D, A, seeds, offsets


# Triton: one small case in the interpreter (the offset mode is a runtime argument of the kernels the
# AOT check compiles; no specialisation of its own)
CASES = [pytest.param(n.values[0], *case, id=f"{n.id}-{tag}", marks=n.marks) for n in BACKENDS
         for tag, case in (("fp32", (5, 3, 1001, torch.float32, 1.0)), ("bf16", (7, 4, 517, torch.bfloat16, 0.7)))] + \
        [pytest.param(n.values[0], 4, 2, 200, torch.float32, 1.5, id=f"{n.id}-small", marks=n.marks)
         for n in backend_params(("triton",))]


@pytest.mark.parametrize("name, B, K, V, dtype, temperature", CASES)
def test_per_row_offsets_equal_single_row_calls(name, B, K, V, dtype, temperature):
    device = backend_device(name)
    D, A, seeds, offsets = _inputs(B, K, V, dtype, 11 + B, device)
    kw = dict(temperature=temperature, backend=name)
    tokens, logp = apd_ext.sample_draft(D, seed=seeds, offset=offsets, **kw)
    out = apd_ext.mixture_accept(D, A, tokens, mixture_weight=0.6, seed=seeds, offset=offsets, **kw)
    shared = apd_ext.sample_draft(D, seed=seeds, offset=offsets[:1], **kw)[0]
    assert not torch.equal(shared, tokens), "per-row offsets drew the same noise as one shared offset"
    for b in range(B):
        rng = dict(seed=seeds[b:b + 1], offset=int(offsets[b]))
        t1, l1 = apd_ext.sample_draft(D[b:b + 1], **rng, **kw)
        assert torch.equal(t1, tokens[b:b + 1]), f"row {b} offset {int(offsets[b])}: draft tokens differ"
        o1 = apd_ext.mixture_accept(D[b:b + 1], A[b:b + 1], tokens[b:b + 1], mixture_weight=0.6, **rng, **kw)
        for j, (got, want) in enumerate(zip(out, o1)):
            assert _same(got[b:b + 1], want, name), f"row {b}: mixture output {j} differs"


def _same(got: torch.Tensor, want: torch.Tensor, name: str) -> bool:
    """Tokens and counts exactly; log-probs exactly too, except on the GPU backends, whose kernels
    split a vocabulary row by the call's B * K and so may round a one-row call's differently in the
    last bits (as test_ops_rows.py states)."""
    if name in ("triton", "cuda") and got.dtype.is_floating_point:
        return torch.allclose(got, want, atol=1e-5, rtol=1e-6, equal_nan=True)
    return torch.equal(got, want)


@pytest.mark.parametrize("name", BACKENDS)
def test_partial_ops_take_per_row_offsets(name):
    """A vocabulary slice's noise at per-row offsets equals each row's call alone (global token ids)."""
    device = backend_device(name)
    B, K, V = 4, 3, 640
    D, A, seeds, offsets = _inputs(B, K, V, torch.float32, 5, device)
    lo = 128
    kw = dict(temperature=1.0, backend=name)
    part = apd_ext.sample_draft_partial(D[..., lo:lo + 256], vocab_offset=lo, seed=seeds, offset=offsets, **kw)
    for b in range(B):
        one = apd_ext.sample_draft_partial(D[b:b + 1, :, lo:lo + 256], vocab_offset=lo, seed=seeds[b:b + 1],
                                           offset=int(offsets[b]), **kw)
        for j, (got, want) in enumerate(zip(part, one)):
            assert torch.equal(got[b:b + 1], want), f"row {b}: partial output {j} differs"


def test_reference_noise_at_per_row_offsets_is_each_rows_noise():
    seeds = torch.tensor([3, -9, 2**40])
    offsets = torch.tensor([0, 5, 2**35 + 1])
    u = reference.noise_uniform(seeds, offsets, 3, 2, 50)
    for b in range(3):
        assert torch.equal(u[b], reference.noise_uniform(seeds[b:b + 1], int(offsets[b]), 1, 2, 50)[0])


@pytest.mark.parametrize("name", BACKENDS)
def test_bad_offset_tensors_are_refused(name):
    device = backend_device(name)
    D, _, seeds, _ = _inputs(5, 2, 300, torch.float32, 1, device)
    with pytest.raises(ValueError, match="offset tensor must hold 1 or B=5 values"):
        apd_ext.sample_draft(D, temperature=1.0, seed=seeds, offset=torch.zeros(3, dtype=torch.int64, device=device),
                             backend=name)
    with pytest.raises((TypeError, ValueError), match="offset"):
        apd_ext.sample_draft(D, temperature=1.0, seed=seeds, offset=torch.zeros(5, device=device), backend=name)


def test_torch_op_checks_offset_tensors():
    if not hasattr(torch.ops.apd_ext, "sample_draft"):
        pytest.skip("the compiled extension is not built")
    D = torch.randn(4, 2, 100)
    seeds = torch.arange(4)
    bad = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="offset must hold 1 or B=4 values"):
        torch.ops.apd_ext.sample_draft(D, 100, 1.0, 0, 1.0, None, None, None, seeds, 0, bad, 0, None)
