"""Vocabulary-parallel sampling (apd_ext/parallel/vocab.py) on 2 and 3 gloo CPU processes: each rank
holds a slice of the logits, and the combined tokens, targets and accepted counts equal the
unsharded op's exactly (log-probs to float rounding), with ties, NaNs, -inf, filters, explicit
noise, ragged valid lengths and greedy targets."""

from __future__ import annotations

import itertools

import pytest
import torch

from apd_ext import backends
from apd_ext.parallel import VocabShard
from apd_ext.parallel.vocab import VocabParallel, _key, _value
from distributed import run_ranks
from helpers import backend_params, make_logits

# (kind, B, K, V, dtype, temperature, top_k, top_p, mixture_weight, greedy_target, ragged, explicit noise)
CASES = [
    ("flat", 2, 3, 410, torch.float32, 1.0, 0, 1.0, 0.7, False, False, False),
    ("ties", 2, 3, 410, torch.float32, 0.0, 0, 1.0, 0.7, False, True, False),
    ("ties", 1, 4, 384, torch.bfloat16, 1.0, 0, 1.0, 0.5, False, False, False),
    ("inf", 2, 3, 257, torch.float32, 0.7, 5, 1.0, 0.7, False, True, False),
    ("nan", 2, 2, 410, torch.float16, 1.3, 0, 0.8, 0.7, False, False, False),
    ("peaky", 2, 3, 384, torch.float32, 1.0, 40, 0.9, 0.3, False, False, False),
    ("ties", 2, 3, 300, torch.float32, 1.0, 7, 0.6, 1.0, False, False, False),
    ("flat", 2, 3, 410, torch.float32, 0.0, 3, 1.0, 0.0, False, False, False),
    ("flat", 1, 3, 410, torch.float32, 1.0, 0, 1.0, 0.7, True, False, False),
    ("peaky", 2, 3, 384, torch.float32, 1.0, 0, 0.95, 0.7, False, True, True),
]


def _inputs(case, i: int):
    """The full (unsharded) inputs of case i, the same on every process."""
    kind, B, K, V, dtype, T, top_k, top_p, w, greedy, ragged, explicit = case
    g = torch.Generator().manual_seed(1000 + i)
    D = make_logits("flat" if kind == "nan" else kind, B, K, V, dtype, generator=g)
    if kind == "nan":
        D[torch.rand(D.shape, generator=g) < 0.2] = float("nan")
    A = make_logits("ties" if kind == "ties" else "flat", B, K, V + 3, dtype, generator=g)  # a wider verifier head
    valid = torch.randint(0, K + 1, (B,), generator=g) if ragged else None
    u = torch.rand(B, K, V, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12) if explicit else None
    noise = backends.Noise(None, 77 + i, None, 5 + i, u)
    filt = backends.Filter(T, top_k, top_p)
    return D, A, valid, noise, filt


def _unsharded(impl, case, i: int):
    D, A, valid, noise, filt = _inputs(case, i)
    w, greedy = case[8], case[9]
    V = D.shape[-1]
    draft, logp = impl.sample_draft(D, V, filt, noise)
    return (draft, logp) + tuple(impl.mixture_accept(D, A, draft, V, w, greedy, valid, filt, noise))


def _rank_ops(tp, backend_name: str, cases):
    impl = backends.get(backend_name, torch.device("cpu"))
    out = []
    for i, case in enumerate(cases):
        D, A, valid, noise, filt = _inputs(case, i)
        V = D.shape[-1]
        dshard = VocabShard.of(V, V, tp.world, tp.rank)
        ashard = VocabShard.of(A.shape[-1], V, tp.world, tp.rank)
        assert (dshard.lo, dshard.local_vocab) == (ashard.lo, ashard.local_vocab)
        vp = VocabParallel(impl, tp, dshard)
        Dl, Al = D[..., dshard.lo: dshard.hi], A[..., ashard.lo: ashard.hi]
        draft, logp = vp.sample_draft(Dl, V, filt, noise)
        out.append((draft, logp) + tuple(vp.mixture_accept(Dl, Al, draft, V, case[8], case[9], valid, filt, noise)))
    return out


# the Triton interpreter runs one program at a time: a few cases of each kind of filter
TRITON_CASES = [CASES[i] for i in (1, 3, 4, 9)]


def _params():
    """(backend, world): cpu and reference on 2 and 3 ranks, Triton (interpreted here) on 2."""
    out = []
    for p in backend_params(("cpu", "triton")) + [pytest.param("reference", id="reference")]:
        for world in ((2,) if p.values[0] == "triton" else (2, 3)):
            out.append(pytest.param(p.values[0], world, id=f"{p.id}-world{world}", marks=p.marks))
    return out


@pytest.mark.parametrize("name, world", _params())
def test_vocab_parallel_equals_unsharded(name, world):
    impl = backends.get(name, torch.device("cpu"))
    if not hasattr(impl, "sample_draft_partial"):
        pytest.fail(f"backend {name} has no partial ops")
    cases = TRITON_CASES if name == "triton" else CASES
    results = run_ranks(_rank_ops, world, name, cases)
    for i, case in enumerate(cases):
        want = _unsharded(impl, case, i)  # case i of `cases`: inputs seeded by i
        for rank in range(world):
            got = results[rank][i]
            what = f"case {i} {case[:4]} rank {rank}"
            assert torch.equal(got[0], want[0]), f"{what}: draft tokens differ"
            assert torch.equal(got[2], want[2]), f"{what}: accepted counts differ"
            assert torch.equal(got[3], want[3]), f"{what}: target tokens differ"
            for j in (1, 4, 5, 6):
                torch.testing.assert_close(got[j], want[j], atol=2e-5, rtol=1e-5, equal_nan=True,
                                           msg=lambda m: f"{what}: log-probs {j}: {m}")


def test_float_keys_are_ordered_and_invertible():
    x = torch.tensor([float("-inf"), -3.4e38, -1.0, -1e-45, -0.0, 0.0, 1e-45, 2.0, 3.4e38, float("inf")])
    k = _key(x)
    assert torch.all(k[1:] > k[:-1])
    assert torch.equal(_value(k).view(torch.int32), x.view(torch.int32))


def _rank_bad_vocab(tp):
    shard = VocabShard.of(410, 410, tp.world, tp.rank)
    vp = VocabParallel(backends.get("reference", torch.device("cpu")), tp, shard)
    D = torch.zeros(1, 2, shard.rows)
    noise, filt = backends.Noise(None, 0, None, 0, None), backends.Filter(1.0, 0, 1.0)
    errors = []
    for call in (lambda: vp.sample_draft(D, 409, filt, noise), lambda: vp.sample_draft(D[..., :3], 410, filt, noise)):
        with pytest.raises(ValueError) as e:
            call()
        errors.append(str(e.value))
    return errors


def test_vocab_parallel_bad_inputs():
    errors = run_ranks(_rank_bad_vocab, 2)[0]
    assert "not the shared vocabulary 410" in errors[0]
    assert "slice of the vocabulary" in errors[1]


@pytest.mark.parametrize("kw, err, match", [
    ({"vocab_offset": 6}, ValueError, "multiple of 4"),
    ({"vocab_offset": -4}, ValueError, "multiple of 4"),
    ({"vocab_offset": 4.0}, TypeError, "vocab_offset"),
    ({"vocab_offset": 0, "threshold": torch.zeros(2, 3, dtype=torch.float64)}, TypeError, "float32"),
    ({"vocab_offset": 0, "threshold": torch.zeros(3, 2)}, ValueError, r"\[2, 3\]"),
    ({"vocab_offset": 0, "threshold": [0.0]}, TypeError, "threshold"),
])
def test_public_partial_ops_reject_bad_slices(kw, err, match):
    import apd_ext

    D = torch.randn(2, 3, 64)
    with pytest.raises(err, match=match):
        apd_ext.sample_draft_partial(D, seed=1, backend="reference", **kw)
    with pytest.raises(err, match=match):
        apd_ext.mixture_accept_partial(D, D, torch.zeros(2, 3, dtype=torch.int64), mixture_weight=0.5, seed=1,
                                       backend="reference", **kw)


def test_public_partial_ops_are_the_backends():
    """The checked public ops hand their arguments to the backend unchanged (reference here)."""
    import apd_ext
    from apd_ext import reference

    g = torch.Generator().manual_seed(3)
    D, A = torch.randn(2, 3, 100, generator=g), torch.randn(2, 3, 100, generator=g)
    tau = torch.full((2, 3), 0.5)
    tok, stats = apd_ext.sample_draft_partial(D, vocab_offset=64, threshold=tau, seed=9, offset=2, backend="reference")
    noise = backends.Noise(torch.tensor([9]), 0, None, 2, None)
    want = reference.sample_draft_partial(D, 100, 64, backends.Filter(1.0, 0, 1.0), noise, tau)
    assert torch.equal(tok, want[0]) and torch.equal(stats, want[1])
    assert bool((tok >= 64).all()) and bool((tok < 164).all())
    draft = tok.clone()
    got = apd_ext.mixture_accept_partial(D, A, draft, mixture_weight=0.6, vocab_offset=64, threshold=tau, seed=9,
                                         offset=2, backend="reference")
    want = reference.mixture_accept_partial(D, A, draft, 100, 64, 0.6, False, None, backends.Filter(1.0, 0, 1.0),
                                            noise, tau)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
