"""The ahead-of-time compile check of the Triton kernels (apd_ext/triton/aot.py): it catches code
that only the interpreter accepts, and it enumerates every specialisation the launchers produce.
The full compile (both architectures, every specialisation) is `make test`'s job; here only the
enumeration and one tiny kernel pair are compiled. The check needs the compiler, not the
interpreter, so it runs in subprocesses without TRITON_INTERPRET."""

from __future__ import annotations

import importlib
import io
import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from apd_ext import backends

pytestmark = pytest.mark.skipif(not backends.has_triton(), reason="triton is not installed")

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str | None = None, args=(), cwd=ROOT, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(cwd), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, *(["-c", code] if code is not None else []), *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    """The specialisations the check compiles for sm_90, by kernel. Enumerated once per test run:
    the pytest-xdist workers share the listing through a file under the run's common temporary
    directory (the enumeration takes tens of seconds; every worker that runs a test of this module
    would otherwise repeat it)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the directory above every worker's own
    path = shared / "triton_aot_sm90_list.jsonl"
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            path.write_text(_python(args=["-m", "apd_ext.triton.aot", "--arch", "90", "--list"]))
        out = path.read_text()
    by_kernel = defaultdict(list)
    for line in out.splitlines():
        d = json.loads(line)
        by_kernel[d["kernel"]].append(d)
    return by_kernel


def _values(specs, *names):
    return {tuple(s["constexprs"].get(n, s["pointers"].get(n)) for n in names) for s in specs}


def _module(name):  # apd_ext.triton's functions shadow the submodules of the same name
    return importlib.import_module(f"apd_ext.triton.{name}")


def test_every_kernel_is_enumerated(listed):
    kernels = {name for mod in ("filter", "mixture_accept", "sample_draft") for name in vars(_module(mod))
               if name.startswith("_") and name.endswith("_kernel")}
    assert kernels == set(listed), "a kernel the ops can launch is missing from the enumeration"


def test_every_mode_of_every_dtype(listed):
    """Every constexpr value the launchers produce, in every combination, for every logit dtype."""
    ma, modes = _module("mixture_accept"), _module("modes")

    dtypes = {"fp32", "fp16", "bf16"}
    bools = (False, True)
    noise = {int(m.value) for m in (modes.DRAFT_ARGMAX, modes.DRAFT_PHILOX, modes.DRAFT_UNIFORM)}
    targets = {int(m.value) for m in (modes.TARGET_ARGMAX_MIX, modes.TARGET_ARGMAX_KEPT, modes.TARGET_PHILOX,
                                      modes.TARGET_UNIFORM)}
    weights = {int(m.value) for m in (ma.W_MIX, ma.W_ONE, ma.W_ZERO)}
    assert len(noise) == 3 and len(targets) == 4 and len(weights) == 3

    draft = listed["_draft_partial_kernel"]
    assert _values(draft, "d_ptr", "HAS_TAU", "NOISE", "FINAL") == set(itertools.product(dtypes, bools, noise, bools))
    tensor_noise = [s for s in draft if s["constexprs"]["NOISE"] == int(modes.DRAFT_UNIFORM.value)]
    assert _values(tensor_noise, "u_ptr") == {("fp32",), ("fp64",)}
    assert _values(listed["_draft_finalize_kernel"], "d_ptr", "HAS_TAU") == set(itertools.product(dtypes, bools))

    mix = listed["_mixture_partial_kernel"]
    assert _values(mix, "d_ptr", "HAS_TAU", "W_MODE", "TARGET") == set(
        itertools.product(dtypes, bools, weights, targets))
    tensor_target = [s for s in mix if s["constexprs"]["TARGET"] == int(modes.TARGET_UNIFORM.value)]
    assert _values(tensor_target, "u_ptr") == {("fp32",), ("fp64",)}
    assert _values(mix, "d_ptr", "a_ptr") == set(itertools.product(dtypes, dtypes))  # mixed dLLM/verifier
    assert _values(listed["_mixture_finalize_kernel"], "d_ptr", "HAS_TAU", "W_MODE") == set(
        itertools.product(dtypes, bools, weights))

    # the vocabulary-parallel partial ops: draft stats written by one program per row (FINAL) or by
    # the finalize kernel; generated noise shifted to the global ids; the mixture's stats kernel
    philox_d, philox_t = int(modes.DRAFT_PHILOX.value), int(modes.TARGET_PHILOX.value)
    stats = [s for s in draft if s["constexprs"]["STATS"]]
    assert _values(stats, "d_ptr", "HAS_TAU", "NOISE", "FINAL") == set(itertools.product(dtypes, bools, noise, {True}))
    shifted = [s for s in draft if s["constexprs"]["SHIFT_NOISE"]]
    assert _values(shifted, "d_ptr", "HAS_TAU", "NOISE", "FINAL") == set(
        itertools.product(dtypes, bools, {philox_d}, bools))
    assert _values(listed["_draft_finalize_kernel"], "d_ptr", "HAS_TAU", "STATS") == set(
        itertools.product(dtypes, bools, bools))
    shifted = [s for s in mix if s["constexprs"]["SHIFT_NOISE"]]
    assert _values(shifted, "d_ptr", "HAS_TAU", "W_MODE", "TARGET") == set(
        itertools.product(dtypes, bools, weights, {philox_t}))
    assert _values(listed["_mixture_stats_kernel"], "d_ptr", "HAS_TAU", "W_MODE") == set(
        itertools.product(dtypes, bools, weights))

    scalar_filters = [s for s in listed["_filter_kernel"] if not s["constexprs"]["ROWS"]]
    filt = _values(scalar_filters, "d_ptr", "USE_K", "USE_P", "K_BOUND", "PRUNE_P")
    expect = set()
    for dt in dtypes:
        expect |= {(dt, True, False, kb, False) for kb in bools}  # top-k (k <= / > the chunk)
        expect |= {(dt, False, True, False, pr) for pr in bools}  # top-p (pruned or not)
        expect |= {(dt, True, True, kb, pr) for kb in bools for pr in bools}  # both
    assert filt == expect

    # per-row knobs (the ROWS kernels, issue 19): per-row temperatures draft in the sampled modes
    # (greedy rows inside), with or without a threshold, split or not, full or partial; the filter
    # takes every row's own knobs at run time; the mixture kernels read each row's temperature and
    # weight (W_MODE then unused, W_MIX) in every target mode
    sampled = {philox_d, int(modes.DRAFT_UNIFORM.value)}
    rows = [s for s in draft if s["constexprs"]["ROWS"]]
    assert _values(rows, "d_ptr", "HAS_TAU", "NOISE", "FINAL", "STATS", "t_ptr") == (
        set(itertools.product(dtypes, bools, sampled, bools, {False}, {"fp64"}))
        | set(itertools.product(dtypes, bools, sampled, {True}, {True}, {"fp64"})))
    assert _values([s for s in rows if s["constexprs"]["SHIFT_NOISE"]], "NOISE") == {(philox_d,)}
    assert _values([s for s in rows if s["constexprs"]["NOISE"] != philox_d], "u_ptr") == {("fp32",), ("fp64",)}
    rows = [s for s in listed["_draft_finalize_kernel"] if s["constexprs"]["ROWS"]]
    assert _values(rows, "d_ptr", "HAS_TAU", "STATS") == set(itertools.product(dtypes, {True}, bools))
    rows = [s for s in listed["_filter_kernel"] if s["constexprs"]["ROWS"]]
    assert _values(rows, "d_ptr", "USE_K", "USE_P", "K_BOUND", "PRUNE_P", "t_ptr", "k_ptr", "p_ptr") == set(
        itertools.product(dtypes, {False}, {False}, {False}, {False}, {"fp64"}, {"i64"}, {"fp64"}))
    rows = [s for s in mix if s["constexprs"]["ROWS"]]
    assert _values(rows, "d_ptr", "HAS_TAU", "W_MODE", "TARGET", "t_ptr", "w_ptr") == set(
        itertools.product(dtypes, bools, {int(ma.W_MIX.value)}, targets, {"fp64"}, {"fp64"}))
    assert _values([s for s in rows if s["constexprs"]["SHIFT_NOISE"]], "TARGET") == {(philox_t,)}
    assert _values(rows, "d_ptr", "a_ptr") == set(itertools.product(dtypes, dtypes))
    for name in ("_mixture_finalize_kernel", "_mixture_stats_kernel"):
        rows = [s for s in listed[name] if s["constexprs"]["ROWS"]]
        assert _values(rows, "d_ptr", "HAS_TAU", "W_MODE") == set(
            itertools.product(dtypes, bools, {int(ma.W_MIX.value)}))
    # the scalar kernels never see a per-row knob's pointer (float32 dummies)
    for name in ("_draft_partial_kernel", "_mixture_partial_kernel", "_filter_kernel"):
        assert _values([s for s in listed[name] if not s["constexprs"]["ROWS"]], "t_ptr") == {("fp32",)}

    # the odd shapes: an unaligned vocabulary and misaligned rows reach the compiler too
    assert any("div16=" in s["desc"] and "d_sk" not in s["desc"].split("div16=")[1] for s in mix)
    assert any("d_ptr" not in s["desc"].split("div16=")[1] for s in mix)


def test_gpu_geometry_on_meta_tensors():
    """Meta tensors are planned as on a GPU (common.META_GPU), not with the interpreter's geometry."""
    common, filter = _module("common"), _module("filter")
    meta = torch.device("meta")
    cfg = common.row_config(151936, meta)
    assert (cfg.block_g, cfg.num_warps, cfg.sms) == (256, 8, common.META_GPU.sms)
    assert common.split_plan(16, 151936, cfg)[0] > 1 and common.split_plan(1024, 151936, cfg)[0] == 1
    for rows, elem in ((800, 2), (800, 4), (5, 2), (3000, 2)):
        row_bytes = 151936 * elem
        p = filter.filter_programs(rows, row_bytes, common.META_GPU.l2_bytes)
        assert 1 <= p <= rows and p * row_bytes <= common.META_GPU.l2_bytes // 2
        per = -(-rows // p)
        assert per * (p - 1) < rows  # balanced: no program idle, at most one row apart
    assert filter.filter_programs(5, 151936 * 2, common.META_GPU.l2_bytes) == 5


BLOCK_STEP = '''
import itertools, json, torch
from apd_ext.backends import Filter, Noise
from apd_ext.parallel import VocabShard
from apd_ext.triton import aot, mixture_accept, mixture_accept_partial, sample_draft, sample_draft_partial

meta, f64, i64 = dict(device="meta"), torch.float64, torch.int64
V2 = 151936  # the verifier's (Qwen2.5 / Qwen3) vocabulary, shared
with aot.capture(90) as found:
    # the dLLM's logits row width and the window: Fast-dLLM v2 (152064, its block 32), SDAR (151936, 4), Dream (152064, 100 / 200)
    for (W, K), B, dt, world in itertools.product([(152064, 32), (151936, 4), (152064, 100), (152064, 200)], (1, 8),
                                                  (torch.bfloat16, torch.float32), (1, 2, 4)):
        filt = Filter(torch.empty(B, dtype=f64, **meta), torch.empty(B, dtype=i64, **meta),
                      torch.empty(B, dtype=f64, **meta))  # the steps pass State's per-row knobs
        rng = Noise(torch.empty(B, dtype=i64, **meta), 0, torch.empty(B, dtype=i64, **meta), 0, None)
        w, valid = torch.empty(B, dtype=f64, **meta), torch.empty(B, dtype=i64, **meta)
        for rank in range(world):
            d, v = VocabShard.of(W, V2, world, rank), VocabShard.of(V2, V2, world, rank)
            D = torch.empty(B, K, d.rows, dtype=dt, **meta)  # DllmRunner.window_logits: contiguous
            A = torch.empty(K + 1, B, v.rows, dtype=dt, **meta)[:K].transpose(0, 1)  # State.verifier_logits
            if world == 1:
                draft, _ = sample_draft(D, V2, filt, rng)
                mixture_accept(D, A, draft, V2, w, False, valid, filt, rng)
                continue
            for tau in (None, torch.empty(B, K, **meta)):
                draft, _ = sample_draft_partial(D, d.local_vocab, d.offset, filt, rng, tau)
                mixture_accept_partial(D, A, draft, d.local_vocab, d.offset, w, False, valid, filt, rng, tau)
for s in found.values():
    print(json.dumps({"kernel": s.name, "desc": s.describe()}))
'''


def test_the_block_step_is_covered(listed):
    """The sampling ops as the block-diffusion step calls them (decode/steps/window.py, native.py: a
    window of the block, K = 32 for Fast-dLLM v2 over its 152064-wide rows, K = 4 for SDAR; and Dream's
    steady APD step at max_lookahead 100 and 200 over its 152064-wide rows; per-row
    knobs; B 1 and 8; bf16 and fp32; tensor parallel over 1, 2 and 4 ranks) launch only
    specialisations that the check compiles."""
    out = _python(BLOCK_STEP)
    got = {(d["kernel"], d["desc"]) for d in map(json.loads, out.splitlines())}
    have = {(k, s["desc"]) for k, specs in listed.items() for s in specs}
    assert got and not got - have, sorted(got - have)[:5]


BROKEN = '''
import triton
import triton.language as tl

SCALE: tl.constexpr = 2.0  # annotated only: a plain float, which the compiler rejects in a kernel
GOOD_SCALE = tl.constexpr(2.0)


@triton.jit
def _bad_kernel(x_ptr, n, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(x_ptr + o, tl.load(x_ptr + o, mask=o < n) * SCALE, mask=o < n)


@triton.jit
def _good_kernel(x_ptr, n, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(x_ptr + o, tl.load(x_ptr + o, mask=o < n) * GOOD_SCALE, mask=o < n)


def launch(kernel, x):
    kernel[(1,)](x, x.numel(), BLOCK=128, num_warps=4)
'''

CHECK = '''
import io, json, sys, torch
from apd_ext.triton import aot
import broken_kernels as m

x = torch.empty(100, device="meta")
with aot.capture(80) as found:
    m.launch(m._bad_kernel, x)
    m.launch(m._good_kernel, x)
    m.launch(m._good_kernel, x)  # the same specialisation again: recorded once
specs = sorted(found.values(), key=lambda s: s.name)
results = aot.compile_specs(specs, sys.argv[1], jobs=1)
rc = aot.report(results, out=io.StringIO())
print(json.dumps({"names": [s.name for s in specs], "rc": rc, "results": results}))
'''


def test_check_fails_on_a_kernel_only_the_interpreter_accepts(tmp_path):
    (tmp_path / "broken_kernels.py").write_text(textwrap.dedent(BROKEN))
    out = _python(CHECK, args=[str(tmp_path / "cache")], cwd=tmp_path, timeout=300)
    res = json.loads(out.splitlines()[-1])
    assert res["names"] == ["_bad_kernel", "_good_kernel"]
    assert res["rc"] == 1
    bad, good = res["results"]
    assert not bad["ok"] and "SCALE" in bad["error"], bad
    assert good["ok"] and good["regs"] > 0 and good["spill_stores"] == 0 and good["arch"] == 80, good


def test_report_fails_on_spills_and_missing_figures():
    aot = _module("aot")
    good = {"kernel": "_k", "arch": 90, "desc": "", "ok": True, "regs": 40, "stack": 0, "spill_stores": 0,
            "spill_loads": 0, "shared": 0, "num_warps": 8}
    spilled = {**good, "regs": 255, "stack": 16, "spill_stores": 16, "spill_loads": 8}
    failed = {"kernel": "_k", "arch": 80, "desc": "", "ok": False, "error": "CompilationError: ..."}
    unknown = {k: v for k, v in good.items() if k not in ("regs", "spill_stores", "spill_loads", "stack")}
    out = io.StringIO()
    assert aot.report([good], out=out) == 0
    assert aot.report([good, spilled], out=out) == 1
    assert aot.report([good, spilled], out=out, allow_spills=True) == 0
    assert aot.report([good, failed], out=out, allow_spills=True) == 1
    assert aot.report([good, unknown], out=out) == 1
    assert "SPILLS _k sm90: 16 B stored" in out.getvalue()
