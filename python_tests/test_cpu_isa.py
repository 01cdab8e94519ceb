"""Every instruction-set variant of the CPU kernels (generic x86-64, AVX2+FMA, AVX-512, chosen at
run time; APD_EXT_CPU_ISA caps the choice) against reference.py. Each variant runs in its own
process, since the choice is made once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apd_ext import backends

pytestmark = pytest.mark.skipif(backends.extension() is None, reason="extension apd_ext._C not built")

HERE = Path(__file__).resolve().parent

CHECK = r"""
import torch, apd_ext
from helpers import assert_logprobs_close, assert_same_argmax, draft_scores, make_logits, ref_mixture_accept, ref_sample_draft

gen = torch.Generator().manual_seed(7)
cases = [(1, 5, 111, "flat", torch.float32, 1.0, 0, 1.0), (2, 7, 1000, "peaky", torch.bfloat16, 0.7, 0, 0.9),
         (3, 4, 333, "inf", torch.float16, 1.3, 20, 1.0), (1, 3, 4099, "ties", torch.bfloat16, 0.0, 0, 1.0),
         (2, 9, 32000, "peaky", torch.float32, 1.0, 0, 1.0)]
for B, K, V, kind, dtype, T, top_k, top_p in cases:
    D = make_logits(kind, B, K, V, dtype, gen)
    A = make_logits("flat", B, K, V, dtype, gen)
    kw = dict(temperature=T, top_k=top_k, top_p=top_p, seed=5, offset=3)
    tok, lp = apd_ext.sample_draft(D, backend="cpu", **kw)
    rtok, rlp = ref_sample_draft(D, **kw)
    assert_same_argmax(tok, rtok, draft_scores(D, T, top_k, top_p, 5, 3))
    assert_logprobs_close(lp[tok == rtok], rlp[tok == rtok])
    out = apd_ext.mixture_accept(D, A, rtok, mixture_weight=0.6, backend="cpu", **kw)
    ref = ref_mixture_accept(D, A, rtok, mixture_weight=0.6, **kw)
    same = out[1] == ref[1]
    assert same.float().mean() > 0.99, (out[1], ref[1])
    for got, want in zip(out[2:], ref[2:]):
        assert_logprobs_close(got, want)
print("ok")
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_cpu_variant_matches_reference(isa):
    env = dict(os.environ, APD_EXT_CPU_ISA=isa, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
