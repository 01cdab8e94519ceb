"""Every backend against apd_ext/reference.py (the executable spec) on fresh random inputs."""

import itertools
import zlib

import pytest
import torch

from apd_ext import reference
from helpers import (
    assert_logprobs_close, assert_same_argmax, backend_device, backend_params, draft_scores,
    gumbel, interpreted, make_logits, ref_mixture_accept, ref_sample_draft, run,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BACKENDS = backend_params()

# The grid: B in {1, 3}, K in {1, 7, 100}, V in {111, 32000, 151936}. The largest shapes
# use an explicit uniform tensor so that the reference does not spend its time in Philox.
GRID = list(itertools.product([1, 3], [1, 7, 100], [111, 32000, 151936]))


def _small(backend, B, K, V):
    """Triton's interpreter is slow: it takes the small shapes only."""
    return not interpreted(backend) or B * K * V <= 3 * 7 * 32000


# Under the Triton interpreter, each small shape of the grid runs in one dtype (rotating), the
# shape with the most rows once: every shape class (one row, split rows, many rows, large vocab)
# and every dtype still runs, at a third of the time.
_INTERPRETED_GRID = {
    (1, 1, 111): torch.bfloat16, (1, 1, 32000): torch.float16, (1, 1, 151936): torch.float32,
    (1, 7, 111): torch.float32, (1, 7, 32000): torch.bfloat16, (1, 100, 111): torch.float16,
    (3, 1, 111): torch.float16, (3, 1, 32000): torch.float32, (3, 1, 151936): torch.bfloat16,
    (3, 7, 111): torch.bfloat16, (3, 7, 32000): torch.float16,
}


def _uniforms(B, K, V, gen, dtype=torch.float32):
    return torch.rand(B, K, V, generator=gen, dtype=dtype).clamp(1e-7, 1 - 1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,K,V", GRID)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grid_both_ops(backend, B, K, V, dtype):
    if not _small(backend, B, K, V):
        pytest.skip("Triton interpreter: small shapes only")
    if interpreted(backend) and _INTERPRETED_GRID.get((B, K, V)) != dtype:
        pytest.skip("Triton interpreter: one dtype per shape")
    if B * K * V > 10**7 and dtype != torch.bfloat16:
        pytest.skip("largest shapes run in bf16 only, to bound the reference's memory and time")
    gen = torch.Generator().manual_seed(B * 1000003 + K * 1009 + V)
    dev = backend_device(backend)
    D = make_logits("peaky", B, K, V, dtype, gen)
    A = (0.8 * D.float() + 0.6 * torch.randn(B, K, V, generator=gen)).to(dtype)
    U = _uniforms(B, K, V, gen)
    tok, lp = run("sample_draft", backend, D.to(dev), noise=U.to(dev))
    ref_tok, ref_lp = ref_sample_draft(D, noise=U)
    assert_same_argmax(tok, ref_tok, draft_scores(D, 1.0, 0, 1.0, None, None, noise=U))
    assert_logprobs_close(lp, ref_lp)
    out = run("mixture_accept", backend, D.to(dev), A.to(dev), ref_tok.to(dev), mixture_weight=0.7, noise=U.to(dev))
    ref = ref_mixture_accept(D, A, ref_tok, mixture_weight=0.7, noise=U)
    _check_mixture(out, ref, D, A, ref_tok, 0.7, 1.0, U)


def _check_mixture(out, ref, D, A, draft, w, T, U=None, seed=None, offset=None, top_k=0, top_p=1.0,
                   greedy_target=False):
    n, target, lpd, lpa, lpm = (t.cpu() for t in out)
    rn, rtarget, rlpd, rlpa, rlpm = ref
    B, K, V = D.shape
    if greedy_target:
        scores = reference._mix(reference._clean(D, V), reference._clean(A, V), w)
    else:
        Dc, Ac = reference._clean(D, V), reference._clean(A, V)
        x = reference.scaled(Dc, T)
        keep = (x >= reference.filter_threshold(x, top_k, top_p).unsqueeze(-1)) & (Dc > float("-inf"))
        scores = reference.scaled(torch.where(keep, reference._mix(Dc, Ac, w), float("-inf")), T)
        if T > 0:
            scores = scores + gumbel(U, seed, offset, (B, K, V), D.device)
    valid = rtarget >= 0
    assert torch.equal(target < 0, ~valid)
    assert_same_argmax(torch.where(valid, target, 0), torch.where(valid, rtarget, 0), scores)
    if torch.equal(target, rtarget):
        assert torch.equal(n, rn)
    for got, exp in ((lpd, rlpd), (lpa, rlpa), (lpm, rlpm)):
        assert_logprobs_close(got, exp)


KNOBS = [
    dict(temperature=0.0),
    dict(temperature=0.7),
    dict(temperature=1.0, top_k=5),
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=0.5, top_k=50, top_p=0.8),
    dict(temperature=0.0, top_k=3),
    dict(temperature=2.0, top_k=1),
]


# Under the Triton interpreter (slow, the filter above all), each knob runs on one (kind, dtype)
# pair instead of eight: both dtypes and every kind across the knobs, every kind with a filter,
# ties and -inf with the greedy and the top_k = 1 paths (knobs in KNOBS order).
_INTERPRETED_KNOBS = [
    {("ties", torch.bfloat16)},
    {("inf", torch.float32)},
    {("ties", torch.bfloat16)},
    {("peaky", torch.float32)},
    {("inf", torch.bfloat16)},
    {("flat", torch.float32)},
    {("inf", torch.float32)},
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("kind", ["flat", "peaky", "inf", "ties"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_seeded_knobs(backend, knobs, kind, dtype):
    if interpreted(backend) and (kind, dtype) not in _INTERPRETED_KNOBS[KNOBS.index(knobs)]:
        pytest.skip("Triton interpreter: one kind and dtype per knob")
    B, K, V = 3, 7, 111
    gen = torch.Generator().manual_seed(zlib.crc32(repr((kind, str(dtype), knobs)).encode()))
    dev = backend_device(backend)
    D = make_logits(kind, B, K, V, dtype, gen)
    A = make_logits("peaky" if kind != "ties" else "ties", B, K, V, dtype, gen)
    seed, offset = int(torch.randint(0, 2**62, (1,), generator=gen)), 17
    T, tk, tp = knobs["temperature"], knobs.get("top_k", 0), knobs.get("top_p", 1.0)
    tok, lp = run("sample_draft", backend, D.to(dev), seed=seed, offset=offset, **knobs)
    ref_tok, ref_lp = ref_sample_draft(D, seed=seed, offset=offset, **knobs)
    assert_same_argmax(tok, ref_tok, draft_scores(D, T, tk, tp, seed, offset))
    assert_logprobs_close(lp, ref_lp)
    weights = ((0.0, False), (0.3, False), (0.7, True), (1.0, False))
    if interpreted(backend) and (tk or tp < 1.0):  # the filter, slowest in the interpreter: w in (0, 1), w = 1
        weights = weights[1::2]
    for w, greedy in weights:
        out = run("mixture_accept", backend, D.to(dev), A.to(dev), ref_tok.to(dev), mixture_weight=w,
                  seed=seed, offset=offset, greedy_target=greedy, **knobs)
        ref = ref_mixture_accept(D, A, ref_tok, mixture_weight=w, seed=seed, offset=offset,
                                       greedy_target=greedy, **knobs)
        _check_mixture(out, ref, D, A, ref_tok, w, T, seed=seed, offset=offset, top_k=tk, top_p=tp,
                       greedy_target=greedy)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,K,V", [(1, 1, 151936), (3, 7, 32000), (1, 100, 111), (2, 5, 151936)])
def test_seeded_generator_large_vocab(backend, B, K, V):
    """The in-kernel generator (no noise tensor) over large vocabularies, odd strides included."""
    if not _small(backend, B, K, V) or (interpreted(backend) and V < 32000):
        pytest.skip("Triton interpreter: the large vocabulary it can run (the many-row shape runs in test_grid_both_ops)")
    gen = torch.Generator().manual_seed(V + K)
    dev = backend_device(backend)
    big = make_logits("flat", B, K + 2, V + 3, torch.bfloat16, gen)
    D = big[:, 1 : K + 1, :V]  # strided batch/window, rows contiguous
    A = make_logits("flat", B, K, V, torch.bfloat16, gen)
    seed = torch.tensor([123456789012345 + b * 7919 for b in range(B)])
    tok, lp = run("sample_draft", backend, D.to(dev), seed=seed.to(dev), offset=2**40 + 3)
    ref_tok, ref_lp = ref_sample_draft(D, seed=seed, offset=2**40 + 3)
    assert_same_argmax(tok, ref_tok, draft_scores(D, 1.0, 0, 1.0, seed, 2**40 + 3))
    assert_logprobs_close(lp, ref_lp)
    out = run("mixture_accept", backend, D.to(dev), A.to(dev), ref_tok.to(dev), mixture_weight=0.5,
              seed=seed.to(dev), offset=2**40 + 3)
    ref = ref_mixture_accept(D, A, ref_tok, mixture_weight=0.5, seed=seed, offset=2**40 + 3)
    _check_mixture(out, ref, D, A, ref_tok, 0.5, 1.0, seed=seed, offset=2**40 + 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_lengths_and_vocab_mismatch(backend):
    """Rows shorter than K, and a verifier with a longer vocabulary (Dream 152064 vs Qwen 151936 in small)."""
    B, K, V, V2 = 4, 6, 200, 190
    gen = torch.Generator().manual_seed(7)
    dev = backend_device(backend)
    D = make_logits("peaky", B, K, V, torch.float32, gen)
    A = (D[..., :V2] + 0.3 * torch.randn(B, K, V2, generator=gen)).contiguous()
    valid = torch.tensor([6, 3, 0, 1])
    tok, _ = ref_sample_draft(D, seed=3, offset=0, vocab_size=V2)
    out = run("mixture_accept", backend, D.to(dev), A.to(dev), tok.to(dev), mixture_weight=0.9, seed=3,
              offset=0, vocab_size=V2, valid_lengths=valid.to(dev))
    ref = ref_mixture_accept(D, A, tok, mixture_weight=0.9, seed=3, offset=0, vocab_size=V2,
                                   valid_lengths=valid)
    _check_mixture(out, ref, D[..., :V2], A, tok, 0.9, 1.0, seed=3, offset=0)
    n, target = out[0].cpu(), out[1].cpu()
    assert n[2] == 0 and n[3] == 1 and 1 <= n[1] <= 3
    assert (target[1, 3:] == -1).all() and (target[2] == -1).all()
    assert (out[2].cpu()[2] == 0).all()
