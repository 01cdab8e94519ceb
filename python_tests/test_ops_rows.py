"""Per-row knobs (issue 19): temperature, top_k, top_p and mixture_weight given as [B] tensors.

Row b of a mixed batch must equal, bit for bit, the scalar op run on row b alone with row b's knobs
(reference.py's "Per-row knobs" bullet), on every backend that runs here (the Triton kernels:
test_triton_rows.py), for the full and the vocabulary-parallel partial ops, and under VocabParallel on
2 gloo ranks; bad knob tensors are refused naming the argument (and the row, where the host can read
it)."""

from __future__ import annotations

import pytest
import torch

import apd_ext
from apd_ext import backends, ops
from apd_ext.parallel import VocabShard
from apd_ext.parallel.vocab import VocabParallel
from distributed import run_ranks
from helpers import backend_device, backend_params, make_logits

BACKENDS = [p for p in backend_params(("cpu", "cuda"))] + [pytest.param("reference", id="reference")]

# knob values each row draws from: greedy beside sampled, filters off (0, 1, >= V) and on, w at its ends
TEMPERATURES = (0.0, 0.0, 0.5, 1.0, 1.7)
TOP_PS = (1.0, 1.0, 0.9, 0.35)
WEIGHTS = (0.0, 1.0, 0.3, 0.7)


def _knobs(B: int, V: int, g: torch.Generator, device) -> dict:
    pick = lambda vals: torch.tensor([vals[i] for i in torch.randint(0, len(vals), (B,), generator=g)],  # noqa: E731
                                     dtype=torch.float64, device=device)
    top_ks = (0, 1, 5, V, V + 7)
    k = torch.tensor([top_ks[i] for i in torch.randint(0, len(top_ks), (B,), generator=g)], device=device)
    return dict(temperature=pick(TEMPERATURES), top_k=k, top_p=pick(TOP_PS), mixture_weight=pick(WEIGHTS))


def _row(knobs: dict, b: int) -> dict:
    """Row b's knobs as the Python scalars a single-row call takes."""
    return {n: (int(v[b]) if n == "top_k" else float(v[b])) for n, v in knobs.items()}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equality of values, NaN equal to NaN (log-probs of out-of-range drafts are NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.dtype.is_floating_point:
        return torch.equal(a, b)
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(nan=0.0), b.nan_to_num(nan=0.0))


# (kind, B, K, V, dtype, explicit uniforms, ragged valid lengths, greedy_target)
CASES = [
    ("flat", 6, 4, 1001, torch.float32, False, False, False),
    ("peaky", 7, 3, 4099, torch.bfloat16, False, True, False),
    ("inf", 5, 3, 517, torch.float16, True, False, False),
    ("ties", 6, 2, 300, torch.bfloat16, False, True, False),
    ("peaky", 4, 3, 777, torch.float32, False, False, True),
]


def _case(case, i: int, device):
    kind, B, K, V, dtype, explicit, ragged, greedy_target = case
    g = torch.Generator().manual_seed(4242 + i)
    D = make_logits(kind, B, K, V, dtype, generator=g).to(device)
    A = make_logits("flat" if kind != "ties" else "ties", B, K, V, dtype, generator=g).to(device)
    knobs = _knobs(B, V, g, device)
    seeds = torch.randint(-(2**62), 2**62, (B,), generator=g).to(device)
    u = torch.rand(B, K, V, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12).to(device) if explicit else None
    valid = torch.randint(0, K + 1, (B,), generator=g).to(device) if ragged else None
    return D, A, knobs, seeds, u, valid, greedy_target


def _same_row(got: torch.Tensor, want: torch.Tensor, name: str, alone: bool) -> bool:
    """Row outputs equal. Against a call on the row alone, the CUDA kernels' log-probs may differ in
    the last bits: they split each vocabulary row across blocks by the number of rows (B * K), and
    merge the splits' log-sum-exps in that order; tokens, targets and accepted counts stay exact."""
    if alone and name == "cuda" and got.dtype.is_floating_point:
        return torch.allclose(got, want, atol=1e-5, rtol=1e-6, equal_nan=True)
    return _same(got, want)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("i", range(len(CASES)))
def test_mixed_rows_equal_single_row_calls(name, i):
    """Row b of the mixed call against the scalar op with row b's knobs, run on row b alone and on
    the whole batch (the same shapes: bit for bit on every backend)."""
    device = backend_device(name)
    D, A, knobs, seeds, u, valid, greedy_target = _case(CASES[i], i, device)
    B = D.shape[0]
    filt = {n: knobs[n] for n in ("temperature", "top_k", "top_p")}
    rng = dict(seed=seeds, offset=3, noise=u)
    tokens, logp = apd_ext.sample_draft(D, backend=name, **filt, **rng)
    out = apd_ext.mixture_accept(D, A, tokens, mixture_weight=knobs["mixture_weight"], valid_lengths=valid,
                                 greedy_target=greedy_target, backend=name, **filt, **rng)
    for b in range(B):
        one = _row(knobs, b)
        w = one.pop("mixture_weight")
        rows = slice(b, b + 1)
        for alone in (True, False):
            sel = rows if alone else slice(None)
            rng_b = dict(seed=seeds[sel], offset=3, noise=None if u is None else u[sel])
            t1, l1 = apd_ext.sample_draft(D[sel], backend=name, **one, **rng_b)
            t1, l1 = (t1, l1) if alone else (t1[rows], l1[rows])
            assert _same(t1, tokens[rows]), f"row {b} {one} alone={alone}: draft tokens differ"
            assert _same_row(l1, logp[rows], name, alone), f"row {b} {one} alone={alone}: draft log-probs differ"
            o1 = apd_ext.mixture_accept(D[sel], A[sel], tokens[sel], mixture_weight=w,
                                        valid_lengths=None if valid is None else valid[sel],
                                        greedy_target=greedy_target, backend=name, **one, **rng_b)
            for j, (got, want) in enumerate(zip(out, o1)):
                want = want if alone else want[rows]
                assert _same_row(got[rows], want, name, alone), \
                    f"row {b} {one} w={w} alone={alone}: output {j} differs: {got[rows]} vs {want}"


@pytest.mark.parametrize("name", BACKENDS)
def test_partial_ops_rows_equal_single_row_calls(name):
    """The vocabulary-parallel partial ops on a slice at vocab_offset 64, with and without a given
    threshold: per-row knobs (including per-row weights) row by row."""
    device = backend_device(name)
    D, A, knobs, seeds, u, valid, _ = _case(("peaky", 6, 3, 510, torch.bfloat16, False, True, False), 9, device)
    B, K, V = D.shape
    filt = {n: knobs[n] for n in ("temperature", "top_k", "top_p")}
    draft = torch.randint(0, V + 128, (B, K), generator=torch.Generator().manual_seed(1)).to(device)
    for threshold in (None, torch.randn(B, K, generator=torch.Generator().manual_seed(2)).to(device)):
        tok, st = apd_ext.sample_draft_partial(D, vocab_offset=64, threshold=threshold, seed=seeds, offset=5,
                                               backend=name, **filt)
        tgt, mst = apd_ext.mixture_accept_partial(D, A, draft, mixture_weight=knobs["mixture_weight"], vocab_offset=64,
                                                  threshold=threshold, valid_lengths=valid, seed=seeds, offset=5,
                                                  backend=name, **filt)
        for b in range(B):
            one = _row(knobs, b)
            w = one.pop("mixture_weight")
            tb = None if threshold is None else threshold[b:b + 1]
            t1, s1 = apd_ext.sample_draft_partial(D[b:b + 1], vocab_offset=64, threshold=tb, seed=seeds[b:b + 1],
                                                  offset=5, backend=name, **one)
            assert _same(t1, tok[b:b + 1]) and _same_row(s1, st[b:b + 1], name, True), f"row {b} {one}"
            g1, m1 = apd_ext.mixture_accept_partial(D[b:b + 1], A[b:b + 1], draft[b:b + 1], mixture_weight=w,
                                                    vocab_offset=64, threshold=tb, valid_lengths=valid[b:b + 1],
                                                    seed=seeds[b:b + 1], offset=5, backend=name, **one)
            assert _same(g1, tgt[b:b + 1]) and _same_row(m1, mst[b:b + 1], name, True), f"row {b} {one} w={w}"


def test_cpu_rows_agree_with_reference_rows():
    """The compiled per-row path against the spec's own (vectorised) per-row path: same tokens and
    accepted counts, log-probs to float rounding."""
    if "cpu" not in backends.available("cpu"):
        pytest.skip("extension apd_ext._C not built")
    for i, case in enumerate(CASES[:3]):
        D, A, knobs, seeds, u, valid, greedy_target = _case(case, i, "cpu")
        filt = {n: knobs[n] for n in ("temperature", "top_k", "top_p")}
        kw = dict(seed=seeds, offset=1, noise=u, **filt)
        got = apd_ext.sample_draft(D, backend="cpu", **kw)
        want = apd_ext.sample_draft(D, backend="reference", **kw)
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], atol=2e-4, rtol=1e-5, equal_nan=True)
        m = dict(mixture_weight=knobs["mixture_weight"], valid_lengths=valid, greedy_target=greedy_target, **kw)
        got = apd_ext.mixture_accept(D, A, want[0], backend="cpu", **m)
        want = apd_ext.mixture_accept(D, A, want[0], backend="reference", **m)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        for x, y in zip(got[2:], want[2:]):
            torch.testing.assert_close(x, y, atol=2e-4, rtol=1e-5, equal_nan=True)


def test_float32_knobs_widen_exactly():
    """float32 knob tensors are float64 ones of the same values (the ops widen them exactly)."""
    g = torch.Generator().manual_seed(5)
    D, A = torch.randn(3, 2, 300, generator=g), torch.randn(3, 2, 300, generator=g)
    t32 = torch.tensor([0.0, 0.7, 1.3])
    p32 = torch.tensor([0.9, 1.0, 0.5])
    w32 = torch.tensor([0.3, 0.7, 1.0])
    for name in ("reference", "cpu") if "cpu" in backends.available("cpu") else ("reference",):
        a = apd_ext.sample_draft(D, temperature=t32, top_p=p32, seed=4, backend=name)
        b = apd_ext.sample_draft(D, temperature=t32.double(), top_p=p32.double(), seed=4, backend=name)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        a = apd_ext.mixture_accept(D, A, a[0], mixture_weight=w32, temperature=t32, seed=4, backend=name)
        b = apd_ext.mixture_accept(D, A, b[0], mixture_weight=w32.double(), temperature=t32.double(), seed=4,
                                   backend=name)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_uniform_knob_tensors_equal_scalars():
    """A knob tensor holding one value everywhere gives the scalar call's outputs (seed + b rows)."""
    g = torch.Generator().manual_seed(6)
    D, A = torch.randn(4, 3, 777, generator=g), torch.randn(4, 3, 777, generator=g)
    for name in [p.values[0] for p in BACKENDS if not p.marks]:
        dev = backend_device(name)
        Dd, Ad = D.to(dev), A.to(dev)
        full = lambda v, dt=torch.float64: torch.full((4,), v, dtype=dt, device=dev)  # noqa: E731
        s = apd_ext.sample_draft(Dd, temperature=0.8, top_k=20, top_p=0.9, seed=11, backend=name)
        r = apd_ext.sample_draft(Dd, temperature=full(0.8), top_k=full(20, torch.int64), top_p=full(0.9), seed=11,
                                 backend=name)
        assert torch.equal(s[0], r[0]) and torch.equal(s[1], r[1])
        s = apd_ext.mixture_accept(Dd, Ad, s[0], mixture_weight=0.6, temperature=0.8, top_k=20, top_p=0.9, seed=11,
                                   backend=name)
        r = apd_ext.mixture_accept(Dd, Ad, r[0], mixture_weight=full(0.6), temperature=full(0.8),
                                   top_k=full(20, torch.int64), top_p=full(0.9), seed=11, backend=name)
        assert all(torch.equal(x, y) for x, y in zip(s, r))


# --- VocabParallel: per-row knobs on 2 gloo ranks equal the unsharded op --------------------------

def _tp_inputs(i: int):
    g = torch.Generator().manual_seed(900 + i)
    B, K, V = 5, 3, 410
    D = make_logits("peaky" if i % 2 else "ties", B, K, V, torch.float32, generator=g)
    A = make_logits("flat", B, K, V + 3, torch.float32, generator=g)
    knobs = _knobs(B, V, g, "cpu")
    filt = backends.Filter(knobs["temperature"], knobs["top_k"], knobs["top_p"])
    noise = backends.Noise(torch.randint(0, 2**40, (B,), generator=g), 0, None, 2 + i, None)
    valid = torch.randint(0, K + 1, (B,), generator=g)
    return D, A, filt, knobs["mixture_weight"], noise, valid


def _rank_rows(tp, name: str, n: int):
    impl = backends.get(name, torch.device("cpu"))
    out = []
    for i in range(n):
        D, A, filt, w, noise, valid = _tp_inputs(i)
        V = D.shape[-1]
        ds, as_ = VocabShard.of(V, V, tp.world, tp.rank), VocabShard.of(A.shape[-1], V, tp.world, tp.rank)
        vp = VocabParallel(impl, tp, ds)
        Dl, Al = D[..., ds.lo: ds.hi], A[..., as_.lo: as_.hi]
        draft, logp = vp.sample_draft(Dl, V, filt, noise)
        out.append((draft, logp) + tuple(vp.mixture_accept(Dl, Al, draft, V, w, False, valid, filt, noise)))
    return out


@pytest.mark.parametrize("name", [p for p in backend_params(("cpu",))] + [pytest.param("reference", id="reference")])
def test_vocab_parallel_rows_equal_unsharded(name):
    impl = backends.get(name, torch.device("cpu"))
    n = 4
    results = run_ranks(_rank_rows, 2, name, n)
    for i in range(n):
        D, A, filt, w, noise, valid = _tp_inputs(i)
        V = D.shape[-1]
        draft, logp = impl.sample_draft(D, V, filt, noise)
        want = (draft, logp) + tuple(impl.mixture_accept(D, A, draft, V, w, False, valid, filt, noise))
        for rank in range(2):
            got = results[rank][i]
            for j in (0, 2, 3):  # draft, accepted counts, targets: exact
                assert torch.equal(got[j], want[j]), f"case {i} rank {rank} output {j}: {got[j]} vs {want[j]}"
            for j in (1, 4, 5, 6):
                torch.testing.assert_close(got[j], want[j], atol=2e-5, rtol=1e-5, equal_nan=True)


# --- bad knob tensors ------------------------------------------------------------------------------

D0 = torch.randn(3, 2, 64)


@pytest.mark.parametrize("kw, err, match", [
    ({"temperature": torch.tensor([1.0, 0.5])}, ValueError, r"temperature tensor must have shape \[B=3\]"),
    ({"temperature": torch.ones(3, 1)}, ValueError, r"temperature tensor must have shape"),
    ({"temperature": torch.ones(3, dtype=torch.float16)}, TypeError, "temperature tensor must be float32 or float64"),
    ({"temperature": torch.tensor([1.0, -0.5, 1.0])}, ValueError, r"temperature must be finite and >= 0.*, got -0.5 in row 1"),
    ({"temperature": torch.tensor([1.0, 1.0, float("nan")])}, ValueError, r"temperature .* in row 2"),
    ({"temperature": torch.tensor([1e-39, 1.0, 1.0], dtype=torch.float64)}, ValueError, r"1/T fits float32.*row 0"),
    ({"top_k": torch.tensor([1.0, 2.0, 3.0])}, TypeError, "top_k tensor must be int64"),
    ({"top_k": torch.tensor([1, -2, 3])}, ValueError, r"top_k must be an integer >= 0.*got -2 in row 1"),
    ({"top_p": torch.tensor([1.0, 0.0, 0.5])}, ValueError, r"top_p must be in \(0, 1\], got 0.0 in row 1"),
    ({"top_p": torch.tensor([1.0, 1.5, 0.5])}, ValueError, r"top_p .* in row 1"),
    ({"top_p": torch.ones(3, device="meta")}, ValueError, "top_p tensor is on meta"),
])
def test_bad_knob_tensors_are_refused(kw, err, match):
    with pytest.raises(err, match=match):
        apd_ext.sample_draft(D0, seed=1, backend="reference", **kw)
    with pytest.raises(err, match=match):
        apd_ext.mixture_accept(D0, D0, torch.zeros(3, 2, dtype=torch.int64), mixture_weight=0.5, seed=1,
                               backend="reference", **kw)


@pytest.mark.parametrize("w, err, match", [
    (torch.tensor([0.5, 1.2, 0.0]), ValueError, r"mixture_weight must be in \[0, 1\], got 1.2.* in row 1"),
    (torch.tensor([0.5, 0.2]), ValueError, r"mixture_weight tensor must have shape \[B=3\]"),
    (torch.tensor([0, 1, 1]), TypeError, "mixture_weight tensor must be float32 or float64"),
    ([0.5, 0.5, 0.5], TypeError, "mixture_weight must be a real number"),
])
def test_bad_mixture_weight_tensors_are_refused(w, err, match):
    with pytest.raises(err, match=match):
        apd_ext.mixture_accept(D0, D0, torch.zeros(3, 2, dtype=torch.int64), mixture_weight=w, seed=1,
                               backend="reference")


def test_per_row_temperature_needs_the_draft_seed():
    with pytest.raises(ValueError, match="needs the seed"):
        apd_ext.mixture_accept(D0, D0, torch.zeros(3, 2, dtype=torch.int64), mixture_weight=0.5,
                               temperature=torch.zeros(3), backend="reference")


def test_torch_op_checks_knob_tensors():
    """The torch op itself (what an engine calling torch.ops.apd_ext.* directly meets): float64 [B]
    knob tensors, values checked on the CPU naming the row."""
    if backends.extension() is None:
        pytest.skip("extension apd_ext._C not built")
    op = torch.ops.apd_ext.sample_draft
    V = D0.shape[-1]
    with pytest.raises(RuntimeError, match="temperature must be Double"):
        op(D0, V, 1.0, 0, 1.0, torch.ones(3), None, None, None, 0, None, 0, None)
    with pytest.raises(RuntimeError, match=r"top_k must be a contiguous \[B\] = \[3\]"):
        op(D0, V, 1.0, 0, 1.0, None, torch.ones(2, dtype=torch.int64), None, None, 0, None, 0, None)
    with pytest.raises(RuntimeError, match=r"top_p must be in \(0, 1\] \(row 2\)"):
        op(D0, V, 1.0, 0, 1.0, None, None, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64), None, 0, None, 0, None)
    with pytest.raises(RuntimeError, match=r"mixture_weight must be in \[0, 1\] \(row 0\)"):
        torch.ops.apd_ext.mixture_accept(D0, D0, torch.zeros(3, 2, dtype=torch.int64), V, 0.5,
                                         torch.tensor([2.0, 0.5, 0.5], dtype=torch.float64), 1.0, 0, 1.0, None, None,
                                         None, None, False, None, 0, None, 0, None)
    # the scalar beside a per-row tensor is ignored (not checked)
    tok, _ = op(D0, V, -5.0, -1, 7.0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.int64),
                torch.ones(3, dtype=torch.float64), None, 0, None, 0, None)
    assert torch.equal(tok, D0.argmax(-1))


def test_ops_helpers_keep_scalars():
    """Scalar knobs reach the backends as Python numbers (the unchanged scalar path)."""
    f = ops._check_filter(0.7, 10**30, 0.9, 100)
    assert f == backends.Filter(0.7, 0, 0.9) and not f.per_row
    f = ops._check_filter(torch.ones(2), 5, torch.ones(2, dtype=torch.float64), 100, 2, torch.device("cpu"))
    assert f.per_row and f.temperature.dtype == torch.float64 and f.top_k == 5


class _NoCollectives:
    """A TensorParallel stand-in whose collectives must not be called."""

    world, rank = 2, 0

    def all_reduce(self, *a, **k):
        raise AssertionError("a collective ran")

    all_gather = all_reduce


def test_vocab_parallel_skips_threshold_searches_the_caller_rules_out():
    """Per-row top_k / top_p are searched (collectives) unless the caller says no row filters, as the
    loop does from the rows' knobs; the rule holds without reading the knob tensors."""
    shard = VocabShard.of(410, 410, 2, 0)
    D = torch.randn(2, 3, shard.local_vocab)
    filt = backends.Filter(torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.int64),
                           torch.ones(2, dtype=torch.float64))
    impl = backends.get("reference", torch.device("cpu"))
    assert VocabParallel(impl, _NoCollectives(), shard, filters=(False, False)).threshold(D, filt) is None
    with pytest.raises(AssertionError, match="a collective ran"):
        VocabParallel(impl, _NoCollectives(), shard).threshold(D, filt)  # no hint: searched
    with pytest.raises(AssertionError, match="a collective ran"):
        VocabParallel(impl, _NoCollectives(), shard, filters=(False, True)).threshold(D, filt)
    # scalar knobs decide for themselves
    assert VocabParallel(impl, _NoCollectives(), shard).threshold(D, backends.Filter(1.0, 0, 1.0)) is None
