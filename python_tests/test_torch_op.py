"""The ops as torch ops: schemas, fake implementations (torch.compile), opcheck, graph safety of
seed/offset tensors, and property tests of the CPU kernels on random shapes and knobs."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apd_ext
from apd_ext import backends
from helpers import assert_logprobs_close, assert_same_argmax, draft_scores, ref_mixture_accept, ref_sample_draft

needs_ext = pytest.mark.skipif(backends.extension() is None, reason="extension apd_ext._C not built")


def _args():
    gen = torch.Generator().manual_seed(0)
    D = torch.randn(2, 3, 40, generator=gen)
    A = torch.randn(2, 3, 40, generator=gen)
    d = torch.randint(0, 40, (2, 3), generator=gen)
    return D, A, d


@needs_ext
def test_opcheck_sample_draft():
    D, _, _ = _args()
    torch.library.opcheck(torch.ops.apd_ext.sample_draft.default,
                          (D, 40, 1.0, 0, 1.0, None, None, None, torch.tensor([3]), 0, torch.tensor([1]), 0, None))
    torch.library.opcheck(torch.ops.apd_ext.sample_draft.default,
                          (D.bfloat16(), 33, 0.7, 5, 0.9, None, None, None, None, 3, None, 1, None))
    # per-row knobs (float64 temperature / top_p, int64 top_k)
    rows = (torch.tensor([0.0, 0.8], dtype=torch.float64), torch.tensor([0, 7]), torch.tensor([1.0, 0.9], dtype=torch.float64))
    torch.library.opcheck(torch.ops.apd_ext.sample_draft.default, (D, 40, 1.0, 0, 1.0, *rows, torch.tensor([3, 4]), 0,
                                                                  torch.tensor([1]), 0, None))


@needs_ext
def test_opcheck_mixture_accept():
    D, A, d = _args()
    torch.library.opcheck(torch.ops.apd_ext.mixture_accept.default,
                          (D, A, d, 40, 0.7, None, 1.0, 0, 1.0, None, None, None, torch.tensor([3, 1]), False, None, 5, None, 2,
                           None))
    rows = (torch.tensor([0.0, 0.8], dtype=torch.float64), torch.tensor([0, 7]), torch.tensor([1.0, 0.9], dtype=torch.float64))
    torch.library.opcheck(torch.ops.apd_ext.mixture_accept.default,
                          (D, A, d, 40, 0.5, torch.tensor([0.3, 1.0], dtype=torch.float64), 1.0, 0, 1.0, *rows, None,
                           False, None, 5, None, 2, None))


@needs_ext
def test_fake_tensors_have_the_right_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        D = torch.empty(4, 9, 100, dtype=torch.bfloat16)
        A = torch.empty(4, 9, 120, dtype=torch.bfloat16)
        d = torch.empty(4, 9, dtype=torch.int64)
        tok, lp = torch.ops.apd_ext.sample_draft(D, 100, 1.0, 0, 1.0, None, None, None, None, 0, None, 0, None)
        out = torch.ops.apd_ext.mixture_accept(D, A, d, 100, 0.5, None, 1.0, 0, 1.0, None, None, None, None, False, None,
                                               0, None, 0, None)
    assert tok.shape == (4, 9) and tok.dtype == torch.int64 and lp.dtype == torch.float32
    assert [tuple(o.shape) for o in out] == [(4,), (4, 9), (4, 9), (4, 9), (4, 9)]
    assert out[0].dtype == torch.int64 and out[1].dtype == torch.int64


@needs_ext
def test_torch_compile_runs_the_ops():
    D, A, _ = _args()
    seed, offset = torch.tensor([7]), torch.tensor([3])

    def step(D, A, seed, offset):
        tok, _ = apd_ext.sample_draft(D, seed=seed, offset=offset, backend="cpu")
        n, *_ = apd_ext.mixture_accept(D, A, tok, mixture_weight=0.6, seed=seed, offset=offset, backend="cpu")
        return tok, n

    compiled = torch.compile(step, fullgraph=False, backend="eager")
    got = compiled(D, A, seed, offset)
    want = step(D, A, seed, offset)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_ext
def test_offset_tensor_value_is_read_at_call_time():
    """A captured step replays with fresh noise when the offset tensor's value changes."""
    D, _, _ = _args()
    offset = torch.tensor([0])
    a = apd_ext.sample_draft(D, seed=1, offset=offset)[0]
    offset.add_(1)  # in place, as a graph's device-side state would
    b = apd_ext.sample_draft(D, seed=1, offset=offset)[0]
    assert torch.equal(b, apd_ext.sample_draft(D, seed=1, offset=1)[0])
    assert not torch.equal(a, b)


@needs_ext
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 3), K=st.integers(1, 9), V=st.integers(1, 700),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    T=st.sampled_from([0.0, 0.3, 1.0, 1.7]), top_k=st.integers(0, 20),
    top_p=st.sampled_from([1.0, 0.95, 0.5, 0.1]), w=st.floats(0.0, 1.0),
    greedy=st.booleans(), seed=st.integers(-(2**63), 2**63 - 1), offset=st.integers(0, 2**64 - 1),
    scale=st.sampled_from([0.1, 1.0, 8.0]),
)
def test_property_cpu_matches_reference(B, K, V, dtype, T, top_k, top_p, w, greedy, seed, offset, scale):
    gen = torch.Generator().manual_seed(abs(seed) % 2**31)
    D = (torch.randn(B, K, V, generator=gen) * scale).to(dtype)
    A = (torch.randn(B, K, V, generator=gen) * scale).to(dtype)
    kw = dict(temperature=T, top_k=top_k, top_p=top_p, seed=seed, offset=offset)
    tok, lp = apd_ext.sample_draft(D, backend="cpu", **kw)
    ref_tok, ref_lp = ref_sample_draft(D, **kw)
    assert_same_argmax(tok, ref_tok, draft_scores(D, T, top_k, top_p, seed, offset))
    if torch.equal(tok, ref_tok):
        assert_logprobs_close(lp, ref_lp, atol=5e-4)
    out = apd_ext.mixture_accept(D, A, ref_tok, mixture_weight=w, greedy_target=greedy, backend="cpu", **kw)
    ref = ref_mixture_accept(D, A, ref_tok, mixture_weight=w, greedy_target=greedy, **kw)
    assert ((out[0] >= 1) & (out[0] <= K)).all()
    if torch.equal(out[1], ref[1]):
        assert torch.equal(out[0], ref[0])
        for got, exp in zip(out[2:], ref[2:]):
            assert_logprobs_close(got, exp, atol=5e-4)


def test_extension_is_built_when_required():
    """`make test` sets APD_EXT_REQUIRE_EXTENSION=1: a missing build must fail, not skip."""
    import os

    if os.environ.get("APD_EXT_REQUIRE_EXTENSION") != "1":
        pytest.skip("APD_EXT_REQUIRE_EXTENSION is not set")
    assert "cpu" in apd_ext.available_backends("cpu")
    if torch.cuda.is_available():
        assert backends.has_cuda_kernels(), "CUDA is present but the extension has no CUDA kernels"


def _copy_package(tmp_path, so_bytes: bytes | None):
    """A copy of the apd_ext package in tmp_path, its extension removed or replaced by so_bytes."""
    import shutil
    from pathlib import Path

    src = Path(apd_ext.__file__).parent
    dst = tmp_path / "apd_ext"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_C*.so", "__pycache__", "assets"))
    if so_bytes is not None:
        (dst / "_C.abi3.so").write_bytes(so_bytes)
    return tmp_path


def _probe(root):
    import subprocess
    import sys

    code = ("import torch, apd_ext; from apd_ext import backends\n"
            "print(backends.extension() is None, apd_ext.available_backends('cpu'))\n"
            "t, _ = apd_ext.sample_draft(torch.randn(1, 2, 7), temperature=0)\n"
            "print(t.tolist())")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


# The unbuilt checkout (no extension file) is tested in test_ops_import.py, with the import blocked
# by a finder: a copy of the package without _C*.so would still find an editable install's.


def test_broken_extension_build_is_loud(tmp_path):
    """An extension file that does not load is an error, never a silent fallback."""
    r = _probe(_copy_package(tmp_path, b"not an ELF file"))
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "_C" in r.stderr, r.stderr[-2000:]
