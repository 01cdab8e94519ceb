"""Per-row sampling knobs (issue 19) on the Triton backend: temperature, top_k, top_p and
mixture_weight given as [B] tensors. Row b of a mixed batch must equal, bit for bit, the Triton
call on row b alone with row b's values as Python scalars (tokens, accepted counts, log-probs and
stats), and match apd_ext/reference.py's per-row results (tokens exactly, floats to rounding).

The mixes put greedy rows (T = 0) beside sampled ones, top_k 0 / 1 / small / > the filter's chunk
/ >= vocab, top_p 1 / small, weights 0 / 1 / between, on float32 and bf16 logits, with generated
noise and explicit uniforms, for the full and the vocabulary-parallel partial ops.

The split plan (how many programs scan a row) depends on the number of rows, and a different plan
merges the log-sum-exps in another order; so that a batch and its single rows are planned alike,
each case fixes the plan (`same_plan`: one split, or two, so that both merge paths run).

Runs through the Triton interpreter on machines without a GPU (slow): sizes are small.
"""

from __future__ import annotations

import pytest
import torch
import triton

from apd_ext import backends, ops, reference

from helpers import backend_device, make_logits

pytestmark = [
    pytest.mark.skipif("triton" not in backends.available(backend_device("triton").type),
                       reason="the triton backend cannot run here"),
    # the interpreter evaluates both sides of tl.where (inf - inf, log(0) in discarded lanes)
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

DEV = backend_device("triton")
F64 = torch.float64


def same_plan(monkeypatch, want: int):
    """Installs a split plan that does not depend on the number of rows: `want` programs per row
    (fewer when the row has fewer chunks)."""
    import importlib

    def plan(rows, vocab, cfg):
        nchunks = triton.cdiv(vocab, cfg.block_v)
        cps = triton.cdiv(nchunks, min(want, nchunks))
        return triton.cdiv(nchunks, cps), cps

    for mod in ("sample_draft", "mixture_accept"):  # apd_ext.triton's functions shadow the modules
        monkeypatch.setattr(importlib.import_module(f"apd_ext.triton.{mod}"), "split_plan", plan)


def _logits(kind, B, K, V, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = make_logits(kind, B, K, V, generator=g)
    x[0, 0, V // 3] = float("nan")  # counts as -inf
    return x.to(dtype).to(DEV)


# Knob rows, one value per batch row (B = 5). Each mix has greedy rows beside sampled ones.
MIXES = {
    # T = 0 beside T > 0; top_k 0 / 1 / 5 / >= vocab; top_p 1 / small
    "a": dict(T=[0.0, 0.7, 1.3, 0.0, 1.0], k=[0, 1, 5, 10_000, 0], p=[1.0, 0.9, 1.0, 0.3, 0.25],
              w=[0.0, 1.0, 0.3, 0.5, 1.0]),
    # top_k above the filter's chunk (the bound-less top-k path) and == vocab; top_p alone and with top_k
    "b": dict(T=[0.9, 0.0, 0.5, 2.0, 0.0], k=[200, 300, 0, 7, 1], p=[0.8, 1.0, 0.5, 0.95, 1.0],
              w=[0.75, 0.0, 1.0, 0.25, 0.5]),
}


def _knobs(mix, B, which):
    """The call's knobs: per-row [B] tensors for the keys in `which` (T, k, p, w), else a scalar
    (row 0's value; row 1's temperature: 0.7 in mix a, greedy 0 in mix b), so that scalar and
    per-row knobs mix."""
    m = MIXES[mix]
    out = {}
    for name, key, dtype in (("temperature", "T", F64), ("top_k", "k", torch.int64), ("top_p", "p", F64),
                             ("mixture_weight", "w", F64)):
        vals = m[key][:B]
        out[name] = torch.tensor(vals, dtype=dtype, device=DEV) if key in which else vals[1 if key == "T" else 0]
    return out


def _row(knobs, b):
    """Row b's knobs as Python scalars."""
    return {n: (v[b].item() if isinstance(v, torch.Tensor) else v) for n, v in knobs.items()}


def _noise(kind, B, K, V, seed=3):
    """(seed, offset, noise) arguments of the ops: per-row seed tensor with an offset tensor, or
    explicit float32/float64 uniforms."""
    if kind == "philox":
        return dict(seed=torch.tensor([11, -4, 2**40 + 9, 0, 77][:B], device=DEV),
                    offset=torch.tensor([2**33 + 1], device=DEV))
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, K, V, generator=g, dtype=F64).clamp(1e-9, 1 - 1e-9)
    return dict(noise=u.to(F64 if kind == "uniform64" else torch.float32).to(DEV), seed=0)


def _row_noise(noise, b):
    if "noise" in noise:
        return dict(noise=noise["noise"][b:b + 1], seed=0)
    return dict(seed=int(noise["seed"][b]), offset=noise["offset"])


def _same(got, want):
    """Bit for bit (NaN where NaN)."""
    got, want = got.cpu(), want.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.is_floating_point():
        assert torch.equal(torch.isnan(got), torch.isnan(want)), f"\n{got}\n{want}"
        got, want = torch.nan_to_num(got, nan=0.0), torch.nan_to_num(want, nan=0.0)
    assert torch.equal(got, want), f"\n{got}\n{want}"


def _close(got, want):
    """float32 to rounding, with -inf / +inf / 0 / NaN at the same places (the reference's noise
    uses an exact log, the kernels an approximation)."""
    got, want = got.cpu(), want.cpu()
    for special in (float("-inf"), float("inf"), 0.0):
        assert torch.equal(got == special, want == special), f"{special} entries differ:\n{got}\n{want}"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


# --- sample_draft / sample_draft_partial ----------------------------------------------------------

DRAFT_CASES = [  # (splits, mix, per-row knobs, logits kind, dtype, B, K, V, noise, vocab_offset or None,
    #               threshold given)
    (2, "a", "Tkp", "peaky", torch.float32, 5, 2, 67, "philox", None, False),
    (1, "b", "Tkp", "ties", torch.bfloat16, 3, 2, 300, "uniform", None, False),
    (2, "a", "T", "inf", torch.bfloat16, 4, 2, 67, "uniform64", None, False),  # T per row, scalar filter
    (1, "b", "kp", "peaky", torch.float32, 5, 1, 300, "philox", None, False),  # filter per row, scalar T
    (2, "a", "Tkp", "peaky", torch.bfloat16, 4, 2, 67, "philox", 64, False),  # partial: the slice's filter
    (1, "b", "T", "flat", torch.float32, 3, 2, 67, "uniform", 4, True),  # partial: a given threshold
]


@pytest.mark.parametrize("splits,mix,which,kind,dtype,B,K,V,noise,offset,given", DRAFT_CASES)
def test_draft_rows(monkeypatch, splits, mix, which, kind, dtype, B, K, V, noise, offset, given):
    same_plan(monkeypatch, splits)
    D = _logits(kind, B, K, V, dtype, seed=V + B)
    knobs = _knobs(mix, B, which)
    knobs.pop("mixture_weight")
    rng = _noise(noise, B, K, V)
    tau = None
    if given:  # a threshold [B, K] in x units of each row's temperature (as a global one would be)
        x = reference.scaled(reference._clean(D * 1.25, V), torch.as_tensor(knobs["temperature"], dtype=F64))
        tau = reference.filter_threshold(x, 3, 1.0)

    def call(backend, D, knobs, rng, tau):
        if offset is None:
            return ops.sample_draft(D, backend=backend, **knobs, **rng)
        return ops.sample_draft_partial(D, vocab_offset=offset, threshold=tau, backend=backend, **knobs, **rng)

    tokens, second = call("triton", D, knobs, rng, tau)
    ref_tokens, ref_second = call("reference", D, knobs, rng, tau)
    _same(tokens, ref_tokens)
    _close(second, ref_second)
    for b in range(B):  # the scalar call on row b alone
        t_b, s_b = call("triton", D[b:b + 1], _row(knobs, b), _row_noise(rng, b),
                        None if tau is None else tau[b:b + 1])
        _same(tokens[b:b + 1], t_b)
        _same(second[b:b + 1], s_b)


# --- mixture_accept / mixture_accept_partial ------------------------------------------------------

MIX_CASES = [  # (splits, mix, per-row knobs, dtype, B, K, V, noise, greedy_target, valid_lengths, vocab_offset)
    (2, "a", "Tkpw", torch.float32, 5, 3, 67, "philox", False, [3, 2, 0, 1, 3], None),
    (1, "b", "Tkpw", torch.bfloat16, 4, 2, 300, "uniform64", False, None, None),
    (2, "a", "w", torch.float32, 4, 3, 67, "uniform", False, None, None),  # w per row, T > 0 scalar
    (1, "b", "kw", torch.float32, 3, 2, 67, "philox", False, [2, 1, 2], None),  # T = 0 scalar, k and w per row
    (1, "b", "Tk", torch.bfloat16, 4, 2, 67, "philox", True, [1, 2, 2, 0], None),  # greedy target
    (2, "a", "Tpw", torch.float32, 4, 3, 67, "philox", False, [3, 1, 2, 0], 64),  # partial
    (1, "b", "Tw", torch.bfloat16, 3, 2, 67, "uniform", False, None, 4),  # partial, explicit uniforms
]


@pytest.mark.parametrize("splits,mix,which,dtype,B,K,V,noise,greedy,valid,offset", MIX_CASES)
def test_mixture_rows(monkeypatch, splits, mix, which, dtype, B, K, V, noise, greedy, valid, offset):
    same_plan(monkeypatch, splits)
    D = _logits("peaky", B, K, V, dtype, seed=V + B + 1)
    A = _logits("flat", B, K, V, dtype, seed=V + B + 2)
    knobs = _knobs(mix, B, which)
    rng = _noise(noise, B, K, V)
    draft_knobs = {n: v for n, v in knobs.items() if n != "mixture_weight"}
    draft = ops.sample_draft(D, backend="reference", **draft_knobs, **rng)[0]
    draft[:, -1] = torch.randint(0, V, (B,), generator=torch.Generator().manual_seed(1))  # some rejections
    if offset is not None:
        draft[-1, 0] = offset + V + 3  # held by another slice
    vl = None if valid is None else torch.tensor(valid, dtype=torch.int64, device=DEV)

    def call(backend, D, A, draft, knobs, rng, vl):
        if offset is None:
            return ops.mixture_accept(D, A, draft, backend=backend, greedy_target=greedy, valid_lengths=vl,
                                      **knobs, **rng)
        return ops.mixture_accept_partial(D, A, draft, vocab_offset=offset, backend=backend,
                                          greedy_target=greedy, valid_lengths=vl, **knobs, **rng)

    got = call("triton", D, A, draft, knobs, rng, vl)
    ref = call("reference", D, A, draft, knobs, rng, vl)
    for g, r in zip(got, ref):
        if g.dtype == torch.int64:
            _same(g, r)  # accepted counts and targets
        else:
            _close(g, r)
    for b in range(B):  # the scalar call on row b alone
        one = call("triton", D[b:b + 1], A[b:b + 1], draft[b:b + 1], _row(knobs, b), _row_noise(rng, b),
                   None if vl is None else vl[b:b + 1])
        for g, o in zip(got, one):
            _same(g[b:b + 1], o)


# --- a batch of per-row tensors holding one value = the scalar call on the whole batch ----------------

@pytest.mark.parametrize("T,k,p,w", [(0.0, 0, 1.0, 1.0), (0.8, 4, 0.7, 0.4)])
def test_uniform_rows_equal_scalars(T, k, p, w):
    """Per-row tensors that repeat one value give the scalar call's outputs bit for bit (same shape,
    so the same split plan), on the ROWS kernels with float32 knobs (widened by ops)."""
    B, K, V = 2, 2, 67
    D = _logits("peaky", B, K, V, torch.bfloat16, seed=9)
    A = _logits("flat", B, K, V, torch.bfloat16, seed=10)
    scalars = dict(temperature=T, top_k=k, top_p=p)
    rows = dict(temperature=torch.full((B,), T, device=DEV), top_k=torch.full((B,), k, device=DEV),
                top_p=torch.full((B,), p, device=DEV))
    rng = dict(seed=5, offset=3)
    d_rows = ops.sample_draft(D, backend="triton", **rows, **rng)
    d_scalar = ops.sample_draft(D, backend="triton", **scalars, **rng)
    for g, s in zip(d_rows, d_scalar):
        _same(g, s)
    vl = torch.tensor([2, 1], device=DEV)
    m_rows = ops.mixture_accept(D, A, d_rows[0], mixture_weight=torch.full((B,), w, device=DEV),
                                valid_lengths=vl, backend="triton", **rows, **rng)
    m_scalar = ops.mixture_accept(D, A, d_rows[0], mixture_weight=w, valid_lengths=vl, backend="triton",
                                  **scalars, **rng)
    for g, s in zip(m_rows, m_scalar):
        _same(g, s)
