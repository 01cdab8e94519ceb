"""The Triton backend's vocabulary-parallel partial ops (sample_draft_partial, mixture_accept_partial)
against apd_ext/reference.py: tokens exact, stats to float32 rounding (-inf and 0 exactly), on
slices at several vocab offsets, with generated and explicit noise, a given global threshold or
the slice's own filter, valid_lengths and greedy_target; and a vocabulary cut into two slices
whose partials, combined (highest score, then lowest global id), give the full op's tokens.

On machines without a GPU the kernels run through the Triton interpreter (slow): sizes are small.
"""

from __future__ import annotations

import pytest
import torch

from apd_ext import backends, reference
from apd_ext.backends import Filter, Noise

from helpers import backend_device, make_logits

pytestmark = pytest.mark.skipif("triton" not in backends.available(backend_device("triton").type),
                                reason="the triton backend cannot run here")

DEV = backend_device("triton")
B, K = 2, 3


@pytest.fixture(scope="module")
def triton_backend():
    return backends.get("triton", DEV)


def _logits(kind, V, dtype, seed, width=None):
    """[B, K, V] logits as a view of a wider [B, K, width] buffer (rows read through strides), with
    NaN entries mixed in (they count as -inf)."""
    g = torch.Generator().manual_seed(seed)
    x = make_logits(kind, B, K, width or V + 5, generator=g)
    x[0, 1, 3] = float("nan")
    x[1, 2, V // 2] = float("nan")
    return x.to(dtype).to(DEV)[..., :V]


def _noise(kind, V, seed=11):
    """A Noise: "int" (scalar seed/offset), "tensor" ([B] seeds, offset tensor), "uniform"/"uniform64"
    (explicit uniforms of width V, strictly inside (0, 1))."""
    if kind == "int":
        return Noise(None, 1234 + seed, None, 2**33 + 5)
    if kind == "tensor":
        return Noise(torch.tensor([7, -3], device=DEV), 0, torch.tensor([2**40 + 1], device=DEV), 0)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, K, V, generator=g, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
    return Noise(None, 0, None, 0, u.to(torch.float64 if kind == "uniform64" else torch.float32).to(DEV))


def _slice_noise(noise: Noise, lo: int, hi: int) -> Noise:
    """The noise of global columns [lo, hi), as apd_ext/parallel/vocab.py hands it to a rank."""
    return noise if noise.uniform is None else noise._replace(uniform=noise.uniform[..., lo:hi])


def _threshold(D, filt):
    """The global threshold of the filter (x units), as the combine would pass it."""
    x = reference.scaled(reference._clean(D, D.shape[-1]), filt.temperature)
    return reference.filter_threshold(x, filt.top_k, filt.top_p)


def assert_stats(got, ref):
    """float32 stats equal to the reference's: -inf, +inf and 0 at the same places exactly, NaN at
    the same places, the rest to float32 rounding (the noise's log is an approximation)."""
    got, ref = got.cpu(), ref.cpu()
    assert got.dtype == torch.float32 and got.shape == ref.shape
    for special in (float("-inf"), float("inf"), 0.0):
        assert torch.equal(got == special, ref == special), f"{special} entries differ:\n{got}\n{ref}"
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, equal_nan=True)


# --- sample_draft_partial ---------------------------------------------------------------------------

DRAFT_CASES = [  # (kind, dtype, V, offset, temperature, top_k, top_p, threshold given, noise)
    ("flat", torch.float32, 200, 0, 0.0, 0, 1.0, False, "int"),
    ("ties", torch.bfloat16, 200, 64, 0.0, 0, 1.0, False, "int"),  # ties: lowest index
    ("flat", torch.float32, 200, 4, 0.8, 0, 1.0, False, "int"),
    ("inf", torch.bfloat16, 132, 64, 1.0, 0, 1.0, False, "tensor"),
    ("flat", torch.float32, 30, 4, 0.7, 0, 1.0, False, "int"),  # one program per row (no split merge)
    ("ties", torch.float32, 200, 64, 0.6, 0, 1.0, False, "uniform"),
    ("flat", torch.bfloat16, 200, 4, 0.9, 20, 1.0, False, "int"),  # the slice's own top-k
    ("flat", torch.float32, 200, 64, 0.9, 20, 0.8, True, "int"),  # a given threshold
    ("flat", torch.float32, 30, 0, 0.0, 5, 1.0, True, "int"),
    ("flat", torch.float32, 200, 0, 0.7, 0, 1.0, False, "uniform64"),
    ("peaky", torch.bfloat16, 200, 64, 0.9, 0, 0.9, False, "int"),  # the slice's own top-p
]


@pytest.mark.parametrize("kind,dtype,V,offset,T,top_k,top_p,given,noise", DRAFT_CASES)
def test_draft_partial_matches_reference(triton_backend, kind, dtype, V, offset, T, top_k, top_p, given, noise):
    D = _logits(kind, V, dtype, seed=V + offset)
    filt = Filter(T, top_k, top_p)
    rng = _noise(noise, V)
    # a given threshold: not the slice's own (from a wider row), so that it visibly overrides the filter
    tau = _threshold(D * 1.25, filt) if given else None
    tokens, stats = triton_backend.sample_draft_partial(D, V, offset, filt, rng, tau)
    ref_tokens, ref_stats = reference.sample_draft_partial(D, V, offset, filt, rng, tau)
    assert tokens.dtype == torch.int64 and tokens.shape == (B, K)
    assert torch.equal(tokens.cpu(), ref_tokens.cpu())
    assert ((tokens >= offset) & (tokens < offset + V)).all()
    assert_stats(stats, ref_stats)


# --- mixture_accept_partial -------------------------------------------------------------------------

MIX_CASES = [  # (kind, dtype, V, offset, T, top_k, top_p, threshold given, weight, greedy, valid, noise)
    ("flat", torch.float32, 200, 0, 0.0, 0, 1.0, False, 0.5, False, None, "int"),
    ("ties", torch.bfloat16, 200, 64, 0.0, 0, 1.0, False, 0.5, False, [3, 1], "int"),
    ("flat", torch.float32, 200, 4, 0.8, 0, 1.0, False, 0.3, False, [2, 0], "int"),
    ("inf", torch.bfloat16, 132, 64, 1.0, 0, 1.0, False, 1.0, False, None, "tensor"),
    ("flat", torch.float32, 200, 64, 0.7, 20, 1.0, False, 0.0, False, [3, 2], "int"),  # the slice's own top-k
    ("peaky", torch.bfloat16, 200, 64, 0.9, 0, 0.9, False, 0.5, False, None, "int"),  # the slice's own top-p
    ("flat", torch.float32, 200, 4, 0.7, 20, 1.0, True, 0.5, False, None, "uniform"),  # a given threshold
    ("peaky", torch.bfloat16, 200, 64, 0.9, 20, 1.0, True, 0.5, True, [1, 3], "int"),  # greedy target
    ("flat", torch.float32, 30, 4, 0.6, 0, 1.0, False, 0.5, False, None, "uniform64"),
]


def _draft_tokens(V, offset, seed):
    """Global draft ids: inside this slice, before it, after it, and out of range (-1)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randint(offset, offset + V, (B, K), generator=g)
    d[0, 1] = offset + V  # the next slice's first token
    d[1, 0] = offset - 1 if offset else -1
    return d.to(DEV)


@pytest.mark.parametrize("kind,dtype,V,offset,T,top_k,top_p,given,w,greedy,valid,noise", MIX_CASES)
def test_mixture_partial_matches_reference(triton_backend, kind, dtype, V, offset, T, top_k, top_p, given, w,
                                           greedy, valid, noise):
    D = _logits(kind, V, dtype, seed=V + offset)
    A = _logits("flat", V, dtype, seed=V + offset + 1)
    draft = _draft_tokens(V, offset, seed=offset)
    filt = Filter(T, top_k, top_p)
    rng = _noise(noise, V)
    tau = _threshold(D * 1.25, filt) if given else None
    vl = None if valid is None else torch.tensor(valid, dtype=torch.int64, device=DEV)
    target, stats = triton_backend.mixture_accept_partial(D, A, draft, V, offset, w, greedy, vl, filt, rng, tau)
    ref_target, ref_stats = reference.mixture_accept_partial(D, A, draft, V, offset, w, greedy, vl, filt, rng, tau)
    assert target.dtype == torch.int64 and target.shape == (B, K)
    assert torch.equal(target.cpu(), ref_target.cpu())
    assert_stats(stats, ref_stats)
    if vl is not None:  # padded positions: target -1 and the empty stats
        pad = torch.arange(K).view(1, K) >= torch.tensor(valid).view(B, 1)
        assert (target.cpu()[pad] == -1).all()
        empty = torch.tensor([float("-inf")] + [float("-inf"), 0.0] * 3 + [float("-inf")] * 3)
        assert torch.equal(stats.cpu()[pad], empty.expand(int(pad.sum()), 10))


# --- two slices combined = the full op ----------------------------------------------------------------

SPLIT = 128  # slices [0, 128) and [128, 200) of a 200-token vocabulary (a multiple of 4, as VocabShard's 64)


def _combine(tokens, scores):
    """The combine's winner per (b, i): highest score, then the lowest global id."""
    t, s = torch.stack([x.cpu() for x in tokens]), torch.stack([x.cpu() for x in scores])
    best = s.amax(dim=0)
    return torch.where(s == best, t, torch.iinfo(torch.int64).max).amin(dim=0), best


def _merge_lse(ms, ss):
    m = torch.stack(ms).amax(dim=0)
    mm = torch.where(torch.isfinite(m), m, 0.0)
    return m, sum(s * torch.exp(x - mm) for x, s in zip(ms, ss))


SPLIT_CASES = [  # (kind, dtype, T, top_k, noise)
    ("ties", torch.bfloat16, 0.0, 0, "int"),  # equal scores across the slices: the lower id wins
    ("flat", torch.float32, 0.8, 0, "tensor"),
    ("flat", torch.bfloat16, 0.7, 20, "uniform"),  # the global top-k threshold given to both slices
]


@pytest.mark.parametrize("kind,dtype,T,top_k,noise", SPLIT_CASES)
def test_two_slices_combine_to_the_full_draft(triton_backend, kind, dtype, T, top_k, noise):
    V = 200
    D = _logits(kind, V, dtype, seed=5)
    filt = Filter(T, top_k, 1.0)
    rng = _noise(noise, V)
    tau = _threshold(D, filt) if top_k else None
    parts = [triton_backend.sample_draft_partial(D[..., lo:hi], hi - lo, lo, filt, _slice_noise(rng, lo, hi), tau)
             for lo, hi in ((0, SPLIT), (SPLIT, V))]
    token, _ = _combine([p[0] for p in parts], [p[1][..., 0] for p in parts])
    full_tokens, full_logp = triton_backend.sample_draft(D, V, filt, rng)
    assert torch.equal(token, full_tokens.cpu())
    assert torch.equal(token, reference.sample_draft(D, V, filt, rng)[0].cpu())
    # the log-prob from the merged (max, sum) and the winner's value is the full op's
    stats = [p[1].cpu() for p in parts]
    M, S = _merge_lse([s[..., 1] for s in stats], [s[..., 2] for s in stats])
    win = (token >= SPLIT).long().unsqueeze(0)
    value = torch.gather(torch.stack([s[..., 3] for s in stats]), 0, win).squeeze(0)
    torch.testing.assert_close((value - M) - torch.log(S), full_logp.cpu(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,dtype,T,top_k,noise", SPLIT_CASES)
def test_two_slices_combine_to_the_full_target(triton_backend, kind, dtype, T, top_k, noise):
    V = 200
    D = _logits(kind, V, dtype, seed=6)
    A = _logits("ties" if kind == "ties" else "flat", V, dtype, seed=7)
    filt = Filter(T, top_k, 1.0)
    rng = _noise(noise, V)
    tau = _threshold(D, filt) if top_k else None
    vl = torch.tensor([3, 2], dtype=torch.int64, device=DEV)
    draft = triton_backend.sample_draft(D, V, filt, rng)[0]
    parts = [triton_backend.mixture_accept_partial(D[..., lo:hi], A[..., lo:hi], draft, hi - lo, lo, 0.5, False, vl,
                                                   filt, _slice_noise(rng, lo, hi), tau)
             for lo, hi in ((0, SPLIT), (SPLIT, V))]
    target, _ = _combine([p[0] for p in parts], [p[1][..., 0] for p in parts])
    full = triton_backend.mixture_accept(D, A, draft, V, 0.5, False, vl, filt, rng)
    assert torch.equal(target, full[1].cpu())
    assert torch.equal(target, reference.mixture_accept(D, A, draft, V, 0.5, False, vl, filt, rng)[1].cpu())
    # the draft token's values come from exactly the slice that holds it
    stats = [p[1].cpu() for p in parts]
    held = [(draft.cpu() >= lo) & (draft.cpu() < hi) for lo, hi in ((0, SPLIT), (SPLIT, V))]
    for s, h in zip(stats, held):
        act = torch.arange(K).view(1, K) < vl.cpu().view(B, 1)
        assert torch.isfinite(s[..., 8][h & act]).all() and (s[..., 8][~h] == float("-inf")).all()


# --- bad arguments ------------------------------------------------------------------------------------


def test_bad_offset_and_threshold_raise(triton_backend):
    D = _logits("flat", 32, torch.float32, seed=1)
    draft = torch.zeros(B, K, dtype=torch.int64, device=DEV)
    filt, rng = Filter(0.7, 0, 1.0), _noise("int", 32)
    for off in (2, -4):
        with pytest.raises(ValueError, match="vocab_offset"):
            triton_backend.sample_draft_partial(D, 32, off, filt, rng, None)
        with pytest.raises(ValueError, match="vocab_offset"):
            triton_backend.mixture_accept_partial(D, D, draft, 32, off, 0.5, False, None, filt, rng, None)
    bad = torch.zeros(B, K + 1, device=DEV)
    with pytest.raises(ValueError, match="threshold"):
        triton_backend.sample_draft_partial(D, 32, 0, filt, rng, bad)
    with pytest.raises(ValueError, match="threshold"):
        triton_backend.mixture_accept_partial(D, D, draft, 32, 0, 0.5, False, None, filt, rng, bad)
