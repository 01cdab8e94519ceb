"""The vocabulary-parallel partial ops of the CPU backend (torch.ops.apd_ext.sample_draft_partial /
mixture_accept_partial) against apd_ext/reference.py, exactly: tokens equal, stats equal up to
float rounding (rtol 1e-5) with -inf and 0 exactly where the reference has them. Also: partials of
2 or 3 slices of a vocabulary, combined (highest score, lowest global id on ties; log-sum-exp
states summed), give the full CPU ops' tokens, targets, accepted prefixes and log-probs; every
CPU instruction-set variant (each in its own process, since the choice is made once per process);
and the errors of bad arguments."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from apd_ext import backends, reference
from apd_ext.backends import Filter, Noise
from helpers import make_logits

pytestmark = pytest.mark.skipif(backends.extension() is None, reason="extension apd_ext._C not built")

HERE = Path(__file__).resolve().parent
NEG_INF = float("-inf")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KINDS = ["flat", "ties", "nan", "inf"]
OFFSETS = [0, 4, 64, 252]
# (temperature, top_k, top_p, given threshold): None = the filters over the slice, "ref" = the
# reference's threshold of the whole row, a float = that threshold everywhere.
FILTERS = [(0.0, 0, 1.0, None), (1.0, 0, 1.0, None), (0.7, 5, 1.0, None), (0.0, 7, 0.8, None),
           (1.3, 0, 0.9, None), (1.0, 5, 1.0, "ref"), (0.0, 0, 0.9, "ref"), (0.7, 0, 1.0, 1.0),
           (0.0, 0, 1.0, 1.0)]


def _cpu():
    return backends.get("cpu", torch.device("cpu"))


def _logits(kind, B, K, V, dtype, gen):
    """[B, K, V + 3] logits (3 columns past the vocabulary that the ops must not read): helpers'
    kinds, plus "nan" (flat with 20% NaN entries)."""
    x = make_logits("flat" if kind == "nan" else kind, B, K, V + 3, torch.float32, gen)
    if kind == "nan":
        x[torch.rand(x.shape, generator=gen) < 0.2] = float("nan")
    x[..., V:] = 1e4  # would win every argmax if read
    return x.to(dtype)


def _noise(case: int, B, K, V, gen) -> Noise:
    """The noise sources in turn: int seed and offset, per-row seed tensor and offset tensor,
    explicit float32 uniforms, explicit float64 uniforms ([B, K, V + 2], local columns)."""
    kind = case % 4
    if kind == 0:
        return Noise(None, 1234 + case, None, 7)
    if kind == 1:
        seeds = torch.randint(-(2**62), 2**62, (B,), generator=gen, dtype=torch.int64)
        return Noise(seeds, 0, torch.tensor([2**40 + case], dtype=torch.int64), 0)
    dtype = torch.float32 if kind == 2 else torch.float64
    u = torch.rand(B, K, V + 2, generator=gen, dtype=dtype).clamp(1e-7, 1 - 1e-7)
    return Noise(None, 0, None, 0, u)


def _threshold(spec, D, V, filt) -> torch.Tensor | None:
    if spec is None:
        return None
    if spec == "ref":
        x = reference.scaled(reference._clean(D, V), filt.temperature)
        return reference.filter_threshold(x, filt.top_k, filt.top_p)
    return torch.full(D.shape[:2], float(spec), dtype=torch.float32)


def assert_stats_equal(got: torch.Tensor, want: torch.Tensor, what: str = ""):
    """float32 stats: -inf, +inf and 0 exactly where the reference has them, NaN where it has NaN,
    every other entry within rtol 1e-5 (plus 1e-6 absolute for values near 0)."""
    assert got.shape == want.shape and got.dtype == torch.float32, (got.shape, got.dtype)
    exact = torch.isinf(want) | (want == 0)
    assert torch.equal(got[exact], want[exact]), f"{what}: inf / 0 entries differ:\n{got}\n{want}"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _drafts(B, K, V, off, gen) -> torch.Tensor:
    """Global draft ids: most inside the slice [off, off + V), some before it, after it, at its
    edges, negative or past any vocabulary."""
    inside = torch.randint(0, V, (B, K), generator=gen) + off
    pick = torch.randint(0, 8, (B, K), generator=gen)
    out = torch.where(pick == 0, torch.full_like(inside, off + V), inside)
    out = torch.where(pick == 1, torch.full_like(inside, max(off - 1, -1)), out)
    out = torch.where(pick == 2, torch.full_like(inside, off), out)
    out = torch.where(pick == 3, torch.full_like(inside, off + V - 1), out)
    return torch.where(pick == 4, torch.full_like(inside, 10**9), out)


def _check_slice_ops(kind, dtype, V, B, K, seed):
    """Both partial ops against the reference over every offset / filter / noise / weight case."""
    gen = torch.Generator().manual_seed(seed)
    cpu = _cpu()
    case = 0
    for off in OFFSETS:
        D = _logits(kind, B, K, V, dtype, gen)
        A = _logits("flat" if kind == "ties" else kind, B, K, V, dtype, gen)
        for T, top_k, top_p, spec in FILTERS:
            case += 1
            filt = Filter(T, top_k, top_p)
            noise = _noise(case, B, K, V, gen)
            thr = _threshold(spec, D, V, filt)
            what = f"{kind} {dtype} V={V} off={off} filt={filt} thr={spec} noise={case % 4}"
            tok, st = cpu.sample_draft_partial(D, V, off, filt, noise, thr)
            rtok, rst = reference.sample_draft_partial(D, V, off, filt, noise, thr)
            assert tok.dtype == torch.int64 and tok.shape == (B, K) and st.shape == (B, K, len(backends.DRAFT_STATS))
            assert torch.equal(tok, rtok), f"draft {what}: {tok} vs {rtok}"
            assert_stats_equal(st, rst, f"draft {what}")
            draft = _drafts(B, K, V, off, gen)
            weight = (0.0, 1.0, 0.7)[case % 3]
            greedy = case % 4 == 1
            valid = None if case % 2 else torch.randint(-1, K + 2, (B,), generator=gen)
            got = cpu.mixture_accept_partial(D, A, draft, V, off, weight, greedy, valid, filt, noise, thr)
            want = reference.mixture_accept_partial(D, A, draft, V, off, weight, greedy, valid, filt, noise, thr)
            what = f"mixture {what} w={weight} greedy={greedy} valid={valid}"
            assert got[1].shape == (B, K, len(backends.MIXTURE_STATS)), what
            assert torch.equal(got[0], want[0]), f"{what}: {got[0]} vs {want[0]}"
            assert_stats_equal(got[1], want[1], what)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_partial_ops_match_reference(kind, dtype):
    _check_slice_ops(kind, dtype, V=111, B=2, K=3, seed=zlib.crc32(f"{kind} {dtype}".encode()))


@pytest.mark.parametrize("V", [1, 5, 333, 1027])
def test_partial_ops_odd_vocab_sizes(V):
    for kind in ("flat", "ties"):
        _check_slice_ops(kind, torch.bfloat16, V=V, B=2, K=2, seed=V)


# Every instruction-set variant (generated noise, whose counters carry the offset, is computed
# differently in each): the reference comparison in a process per variant.
ISA_CHECK = r"""
import torch
import test_ops_partial as t
for kind in t.KINDS:
    for dtype, V in ((torch.float32, 333), (torch.bfloat16, 130), (torch.float16, 67)):
        t._check_slice_ops(kind, dtype, V=V, B=2, K=2, seed=V)
t._check_combine(torch.bfloat16, 517, [0, 128, 300, 517], seed=3)
print("ok")
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_partial_ops_every_cpu_variant(isa):
    env = dict(os.environ, APD_EXT_CPU_ISA=isa, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", ISA_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


# --- Combining the partials of a sharded vocabulary gives the full op ---------------------------

def _best(tokens: list[torch.Tensor], scores: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (score, global id) all-reduce: highest score, lowest id among equal scores."""
    t, s = torch.stack(tokens), torch.stack(scores)
    best = s.amax(dim=0)
    return torch.where(s == best, t, torch.iinfo(torch.int64).max).amin(dim=0), best


def _lse(maxes: list[torch.Tensor], sums: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Combined (max, sum) of log-sum-exp states; (-inf, 0) when every slice is empty."""
    m, s = torch.stack(maxes), torch.stack(sums)
    top = m.amax(dim=0)
    scale = torch.where(m > NEG_INF, torch.exp(m - top.clamp(min=torch.finfo(torch.float32).min)), 0.0)
    return top, (s * scale).sum(dim=0)


def _log_prob(value, lse_max, lse_sum):
    return (value - lse_max) - torch.log(lse_sum)


def _check_combine(dtype, V, cuts, seed, kind="flat"):
    """For each case: the partials of slices [cuts[r], cuts[r + 1]) (the same tensors sliced, the
    global threshold given when a filter is active) combined equal the full CPU ops."""
    gen = torch.Generator().manual_seed(seed)
    cpu = _cpu()
    B, K = 2, 4
    for case, (T, top_k, top_p, _) in enumerate(FILTERS):
        D = _logits(kind, B, K, V, dtype, gen)
        A = _logits(kind, B, K, V, dtype, gen)
        filt = Filter(T, top_k, top_p)
        noise = _noise(case, B, K, V, gen)
        active = 0 < top_k < V or top_p < 1.0
        thr = _threshold("ref", D, V, filt) if active else None
        slices = list(zip(cuts[:-1], cuts[1:]))

        def part_noise(lo, hi):
            return noise if noise.uniform is None else noise._replace(uniform=noise.uniform[..., lo:hi])

        parts = [cpu.sample_draft_partial(D[..., lo:], hi - lo, lo, filt, part_noise(lo, hi), thr) for lo, hi in slices]
        token, _ = _best([p[0] for p in parts], [p[1][..., 0] for p in parts])
        m, s = _lse([p[1][..., 1] for p in parts], [p[1][..., 2] for p in parts])
        holder = [(token >= lo) & (token < hi) for lo, hi in slices]
        value = sum(torch.where(h, p[1][..., 3], 0.0) for h, p in zip(holder, parts))
        full_tok, full_lp = cpu.sample_draft(D, V, filt, noise)
        what = f"{dtype} V={V} cuts={cuts} filt={filt} noise={case % 4}"
        assert torch.equal(token, full_tok), f"draft {what}: {token} vs {full_tok}"
        torch.testing.assert_close(_log_prob(value, m, s), full_lp, rtol=1e-5, atol=2e-5, equal_nan=True)

        draft = full_tok.clone()
        draft[0, 1] = (draft[0, 1] + 1) % V  # a rejection
        draft[1, 2] = V + 3  # out of range: ends the prefix, NaN log-probs
        weight = (0.0, 1.0, 0.7)[case % 3]
        greedy = case % 4 == 1
        valid = torch.tensor([K, 2 + case % 3], dtype=torch.int64)
        parts = [cpu.mixture_accept_partial(D[..., lo:], A[..., lo:], draft, hi - lo, lo, weight, greedy, valid,
                                            filt, part_noise(lo, hi), thr) for lo, hi in slices]
        target, _ = _best([p[0] for p in parts], [p[1][..., 0] for p in parts])
        pad = torch.arange(K).unsqueeze(0) >= valid.unsqueeze(1)
        target = torch.where(pad, -1, target)
        n, full_target, *full_lps = cpu.mixture_accept(D, A, draft, V, weight, greedy, valid, filt, noise)
        what = f"mixture {what} w={weight} greedy={greedy}"
        assert torch.equal(target, full_target), f"{what}: {target} vs {full_target}"
        assert torch.equal(reference.accepted_prefix(draft, target, V, valid), n), what
        in_range = (draft >= 0) & (draft < V)
        for f, lp in zip((1, 3, 5), full_lps):
            m, s = _lse([p[1][..., f] for p in parts], [p[1][..., f + 1] for p in parts])
            at = torch.stack([p[1][..., 6 + (f + 1) // 2] for p in parts]).amax(dim=0)  # -inf where not held
            got = torch.where(in_range, _log_prob(at, m, s), float("nan"))
            got = torch.where(pad, 0.0, got)
            torch.testing.assert_close(got, lp, rtol=1e-5, atol=2e-5, equal_nan=True, msg=lambda e: f"{what} f={f}: {e}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V,cuts", [(333, [0, 200, 333]), (517, [0, 128, 300, 517]), (130, [0, 4, 64, 130]),
                                    (1027, [0, 512, 1027])])
def test_combined_partials_equal_full_op(dtype, V, cuts):
    _check_combine(dtype, V, cuts, seed=V)


@pytest.mark.parametrize("kind", ["ties", "inf", "nan"])
def test_combined_partials_equal_full_op_special_logits(kind):
    """Ties across slices (the lowest global id must win), -inf and NaN entries."""
    _check_combine(torch.bfloat16, 259, [0, 88, 176, 259], seed=11, kind=kind)


# --- Bad arguments -------------------------------------------------------------------------------

def _args(B=2, K=3, V=16):
    D = torch.randn(B, K, V)
    return D, Filter(1.0, 0, 1.0), Noise(None, 1, None, 0)


@pytest.mark.parametrize("offset,match", [(2, "multiple of 4"), (-4, "non-negative"), (6, "multiple of 4"),
                                          (2**34, "too large")])
def test_bad_vocab_offset(offset, match):
    D, filt, noise = _args()
    with pytest.raises(RuntimeError, match=match):
        _cpu().sample_draft_partial(D, 16, offset, filt, noise, None)
    with pytest.raises(RuntimeError, match=match):
        _cpu().mixture_accept_partial(D, D, torch.zeros(2, 3, dtype=torch.int64), 16, offset, 0.5, False, None,
                                      filt, noise, None)


@pytest.mark.parametrize("threshold,match", [
    (torch.zeros(2, dtype=torch.float32), r"threshold must be \[B, K\]"),
    (torch.zeros(2, 4, dtype=torch.float32), r"threshold must be \[B, K\]"),
    (torch.zeros(2, 3, 1, dtype=torch.float32), r"threshold must be \[B, K\]"),
    (torch.zeros(2, 3, dtype=torch.float64), "threshold must be float32"),
    (torch.zeros(2, 3, dtype=torch.bfloat16), "threshold must be float32"),
])
def test_bad_threshold(threshold, match):
    D, filt, noise = _args()
    with pytest.raises(RuntimeError, match=match):
        _cpu().sample_draft_partial(D, 16, 0, filt, noise, threshold)
    with pytest.raises(RuntimeError, match=match):
        _cpu().mixture_accept_partial(D, D, torch.zeros(2, 3, dtype=torch.int64), 16, 0, 0.5, False, None,
                                      filt, noise, threshold)


def test_threshold_on_another_device():
    """A threshold on another device than the logits: the CPU kernels refuse it (called through
    the CPU dispatch key: a plain call with a meta tensor would dispatch to the fake op)."""
    D, filt, noise = _args()
    thr = torch.zeros(2, 3, device="meta")
    cpu_key = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    with pytest.raises(RuntimeError, match="threshold is on meta, expected cpu"):
        torch.ops.apd_ext.sample_draft_partial.default.redispatch(
            cpu_key, D, 16, 0, *backends.flat_filter(filt), *noise, thr)
    with pytest.raises(RuntimeError, match="threshold is on meta, expected cpu"):
        torch.ops.apd_ext.mixture_accept_partial.default.redispatch(
            cpu_key, D, D, torch.zeros(2, 3, dtype=torch.int64), 16, 0, 0.5, None, *backends.flat_filter(filt), None, False,
            *noise, thr)


def test_bad_vocab_size():
    D, filt, noise = _args()
    for vocab in (0, 17):
        with pytest.raises(RuntimeError, match="vocab_size must be in"):
            _cpu().sample_draft_partial(D, vocab, 4, filt, noise, None)
        with pytest.raises(RuntimeError, match="vocab_size must be in"):
            _cpu().mixture_accept_partial(D, D, torch.zeros(2, 3, dtype=torch.int64), vocab, 4, 0.5, False, None,
                                          filt, noise, None)


def test_non_contiguous_threshold_is_read_by_row():
    """A transposed [B, K] threshold is the same threshold."""
    D, _, noise = _args(B=3, K=3, V=40)
    filt = Filter(0.0, 0, 1.0)
    thr = torch.randn(3, 3)
    a = _cpu().sample_draft_partial(D, 40, 8, filt, noise, thr.t().contiguous().t())
    b = _cpu().sample_draft_partial(D, 40, 8, filt, noise, thr.clone())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ref = reference.sample_draft_partial(D, 40, 8, filt, noise, thr)
    assert torch.equal(a[0], ref[0])


def test_fake_shapes():
    """The fake implementations (torch.compile) give the ops' output shapes and dtypes."""
    D = torch.randn(2, 3, 16, device="meta")
    tok, st = torch.ops.apd_ext.sample_draft_partial(D, 16, 4, 1.0, 0, 1.0, None, None, None, None, 1, None, 0, None,
                                                   None)
    assert tok.shape == (2, 3) and tok.dtype == torch.int64 and st.shape == (2, 3, 4) and st.dtype == torch.float32
    draft = torch.zeros(2, 3, dtype=torch.int64, device="meta")
    tgt, st = torch.ops.apd_ext.mixture_accept_partial(D, D, draft, 16, 4, 0.5, None, 1.0, 0, 1.0, None, None, None,
                                                       None, False, None, 1, None, 0, None, None)
    assert tgt.shape == (2, 3) and tgt.dtype == torch.int64 and st.shape == (2, 3, 10) and st.dtype == torch.float32
