"""bench/bench_harness.py runs end to end (--quick: 4 problems, two policies, through
lm_eval.simple_evaluate) and writes well-formed rows; its timings are not judged here."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apd_ext import backends

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(backends.extension() is None, reason="extension apd_ext._C not built")

COLUMNS = {"timestamp", "label", "model_args", "config", "baseline", "task", "limit", "answers", "batch_size",
           "accuracy", "generated_tokens", "tokens_per_dllm_forward", "tokens_per_step", "dllm_forwards_per_answer",
           "verifier_forwards_per_answer", "tokens_per_s", "wall_s", "eval_wall_s", "speedup_tokens_per_s",
           "speedup_tokens_per_forward", "warmup_problems", "device", "machine", "platform", "torch_threads",
           "loadavg_1m", "torch_version", "lm_eval_version", "apd_ext_version"}


def _run(*args: str, returncode: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_harness.py"), *args], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == returncode, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_bench_harness_quick(tmp_path):
    out = tmp_path / "harness.csv"
    r = _run("--quick", "--out", str(out))
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert set(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert [row["label"] for row in rows] == ["dLLM k=1", "APD w=0.9"]  # one row per policy, in order
    assert [row["model_args"] for row in rows] == ["policy=dllm_fixed,k=1", "policy=apd,mixture_weight=0.9"]
    assert not (tmp_path / "harness.csv.partial").exists()
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        assert float(row["tokens_per_s"]) > 0 and float(row["tokens_per_dllm_forward"]) > 0
        assert int(row["limit"]) == int(row["answers"]) == 4 and row["batch_size"] == "1"
        assert row["baseline"] == "dLLM k=1" and row["task"] == "apd_tiny_arith" and row["lm_eval_version"]
        assert row["device"] == "cpu" and int(row["torch_threads"]) >= 1
    base, apd = rows
    assert float(base["speedup_tokens_per_s"]) == 1.0 and float(base["speedup_tokens_per_forward"]) == 1.0
    # the ratios are the row's figures over the baseline's (6 significant digits in the file)
    assert float(apd["speedup_tokens_per_forward"]) == pytest.approx(
        float(apd["tokens_per_dllm_forward"]) / float(base["tokens_per_dllm_forward"]), rel=1e-4)
    assert float(apd["speedup_tokens_per_s"]) == pytest.approx(
        float(apd["tokens_per_s"]) / float(base["tokens_per_s"]), rel=1e-4)
    assert "| dLLM k=1" in r.stdout and "tok/s vs dLLM k=1" in r.stdout  # the table


def test_bench_harness_rejects_reserved_policy_args(tmp_path):
    r = _run("--quick", "--policies", "policy=apd,batch_size=4", "--out", str(tmp_path / "x.csv"), returncode=2)
    assert "batch_size" in r.stderr and "--batch-size" in r.stderr
    assert not (tmp_path / "x.csv").exists()


def test_bench_harness_block_quick(tmp_path):
    """--block: the bundled block-diffusion dLLM's rows, its directories in each row's model_args."""
    out = tmp_path / "block.csv"
    _run("--block", "--limit", "2", "--policies", "policy=apd,mixture_weight=0.7", "--out", str(out))
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["label"] for row in rows] == ["policy=apd,mixture_weight=0.7"]
    for row in rows:
        assert "block_dllm" in row["model_args"] and int(row["answers"]) == 2
        assert float(row["tokens_per_dllm_forward"]) > 0
