"""The benchmark scripts run end to end (smoke runs, tiny sizes) and write well-formed rows: they
are not timed here (timings belong to bench/), only kept from rotting."""

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


def _run(script: str, *args: str, env: dict | None = None, returncode: int = 0) -> str:
    base = {k: v for k, v in os.environ.items() if k != "APD_BENCH_FAIL"}  # failures only where a test asks
    env = dict(base, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--device", "cpu", *args],
                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == returncode, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


OPS_QUICK = ("--quick", "--shapes", "1x4x4099", "--dtypes", "bf16", "--logits", "llm", "--threads", "1")


def test_bench_ops_quick(tmp_path):
    out = _run("bench_ops.py", *OPS_QUICK, "--out", str(tmp_path))
    rows = _rows(tmp_path / "ops_cpu.csv")
    assert {(r["op"], r["provider"]) for r in rows} >= {
        ("copy", "torch"), ("draft+accept", "baseline"), ("draft+accept", "cpu"), ("draft+accept", "cpu+rows")}
    assert all(float(r["p50_ms"]) > 0 and float(r["copy_fraction"]) > 0 and not r["error"] for r in rows)
    # the per-row provider is timed beside its scalar backend: p50 ratio in vs_scalar
    assert all(float(r["vs_scalar"]) > 0 for r in rows if r["provider"] == "cpu+rows")
    assert all(r["vs_scalar"] == "" for r in rows if r["provider"] != "cpu+rows")
    assert "vs baseline" in out and "copy bandwidth" in out and "Side by side" in out
    assert "Per-row knobs vs scalar knobs" in out
    assert "rows appended" in (tmp_path / "ops_cpu.log").read_text()  # --out keeps the log too


def test_bench_ops_goes_on_after_failures(tmp_path):
    # The baseline fails in its setup (its first calls), cpu's mixture_accept in its timed calls;
    # everything else is still measured, each failure is one ERROR line and error rows, exit 1.
    out = _run("bench_ops.py", *OPS_QUICK, "--csv", str(tmp_path / "ops.csv"),
               env={"APD_BENCH_FAIL": "baseline,cpu:mixture_accept"}, returncode=1)
    rows = {(r["op"], r["provider"]): r for r in _rows(tmp_path / "ops.csv")}
    failed = {k for k, r in rows.items() if r["error"]}
    assert failed == {("sample_draft", "baseline"), ("mixture_accept", "baseline"), ("draft+accept", "baseline"),
                      ("mixture_accept", "cpu")}
    assert all("InjectedFailure" in rows[k]["error"] and rows[k]["p50_ms"] == "" for k in failed)
    assert float(rows[("sample_draft", "cpu")]["p50_ms"]) > 0 and float(rows[("draft+accept", "cpu")]["p50_ms"]) > 0
    assert sum(line.lstrip().startswith("ERROR") for line in out.splitlines()) == 2
    assert "FAILED: 2 measurement(s)" in out


def test_bench_ops_rows_are_on_disk_as_measured(tmp_path):
    # SIGKILL (what a timeout does) in cpu's draft+accept: the rows measured before it are in the CSV.
    _run("bench_ops.py", *OPS_QUICK, "--csv", str(tmp_path / "ops.csv"),
         env={"APD_BENCH_FAIL": "cpu:draft+accept=kill"}, returncode=-9)
    got = [(r["op"], r["provider"]) for r in _rows(tmp_path / "ops.csv")]
    assert got == [("copy", "torch"), ("sample_draft", "baseline"), ("mixture_accept", "baseline"),
                   ("draft+accept", "baseline"), ("sample_draft", "cpu"), ("mixture_accept", "cpu")]


def test_bench_loop_quick(tmp_path):
    out = _run("bench_loop.py", "--quick", "--threads", "1", "--csv", str(tmp_path / "loop.csv"))
    rows = _rows(tmp_path / "loop.csv")
    assert {r["policy"] for r in rows} == {"apd", "dllm_fixed", "ar"}
    assert all(int(r["tokens"]) == 32 for r in rows)
    assert "host overhead" in out


# bench_e2e's columns before the model / policy ones were added at the end
E2E_OLD_FIELDS = ("batch,kv_window,max_lookahead,dllm_forward_ms,dllm_floor_ms,step_eager_ms,step_graph_ms,"
                  "graph_vs_forward,graph_reused,achieved_gbps,copy_gbps,projected_tokens_per_s,tokens_per_step,steps,"
                  "peak_eager_gb,peak_graph_gb,reserved_graph_gb,attention_backend,attention_kernel,"
                  "attention_ms_per_step,attention_share,attention_choice,device,timestamp,torch_version,tp")
E2E_ROWS = [("dream", "apd:mixture_weight=0.7"), ("fast_dllm_v2", "apd:mixture_weight=0.7,max_lookahead=8"),
            ("fast_dllm_v2", "fast_dllm_v2:threshold=0.9,small_block_size=4")]


def test_bench_e2e_quick(tmp_path):
    """Dream's APD row, then the block-diffusion dLLM's (Fast_dLLM_Qwen, bd_size 8): APD and its own
    fast_dllm_v2 decoding, on the exact block cache (input 2 * 8 positions). The CSV was written
    before the model / policy columns existed: it is upgraded in place, its row (Dream's APD row)
    keeping its cells, with empty new ones."""
    old_header = E2E_OLD_FIELDS.split(",")
    (tmp_path / "e2e.csv").write_text(",".join(old_header) + "\n" + ",".join(
        {"batch": "1", "kv_window": "16", "max_lookahead": "100", "tp": "1"}.get(k, "") for k in old_header) + "\n")
    out = _run("bench_e2e.py", "--quick", "--csv", str(tmp_path / "e2e.csv"), "--json", str(tmp_path / "e2e.json"))
    old, *rows = _rows(tmp_path / "e2e.csv")
    assert (old["kv_window"], old["max_lookahead"], old["model"], old["policy"]) == ("16", "100", "", "")
    assert [(r["model"], r["policy"]) for r in rows] == E2E_ROWS
    assert all(float(r["step_eager_ms"]) > 0 and r["step_graph_ms"] == "" and float(r["dllm_forward_ms"]) > 0
               and float(r["projected_tokens_per_s"]) > 0 for r in rows)
    dream, apd, native = rows
    assert (dream["block_size"], dream["kv_window"], dream["dllm_input"]) == ("", "4", "19")  # R + 2M - 1
    assert all((r["block_size"], r["kv_window"], r["dllm_input"]) == ("8", "", "16") for r in (apd, native))
    assert [float(r["assumed_tokens_per_forward"]) for r in rows] == [9.3, 9.3, 2.5]
    # fast_dllm_v2 commits at least one token per forward
    assert int(native["steps"]) <= 24 and float(native["tokens_per_step"]) >= 1
    assert "AR baseline" in out and (tmp_path / "e2e.json").stat().st_size > 0


def test_sweep_writes_rows_and_plot(tmp_path):
    specs = ["dllm_fixed:k=2", "apd:mixture_weight=0.7,temperature=0.5",
             "apd:mixture_weight=0.7,temperature=0.5,authors_compat=1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "apd_ext", "sweep", "--num-problems", "1", "--out",
                        str(tmp_path / "sweep"), "--policies", *specs], env=env, capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = _rows(tmp_path / "sweep.csv")
    assert [row["policy"] for row in rows] == specs
    assert [row["family"] for row in rows] == ["dllm_fixed", "apd_sampled T=0.5", "apd_compat T=0.5"]
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 and float(row["tokens_per_s"]) > 0 for row in rows)
    png = tmp_path / "sweep.png"
    assert png.stat().st_size > 10_000
    png.unlink()
    r = subprocess.run([sys.executable, "-m", "apd_ext", "sweep", "--replot", "--out", str(tmp_path / "sweep")],
                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0 and png.stat().st_size > 10_000, r.stderr[-3000:]


def test_loop_beside_the_authors_without_their_code(tmp_path):
    """bench_loop --golden-pair without the authors' repository: apd_ext's rows alone, and a line
    saying the baseline is missing and how to get it (the full comparison needs their code at run
    time: BENCHMARKS.md)."""
    env = {"APD_AUTHORS_REPO": "", "APD_AUTHORS_PYTHONPATH": ""}
    out = _run("bench_loop.py", "--golden-pair", "--quick", "--no-compile", "--csv", str(tmp_path / "gp.csv"),
               env=env)
    assert "baseline missing" in out and "--authors-repo" in out
    rows = _rows(tmp_path / "gp.csv")
    assert [r["impl"] for r in rows] == ["eager", "eager"], rows
    assert all(float(r["steady_ms_per_step"]) > 0 and r["tokens_equal"] == "yes" for r in rows), rows


def test_bench_tp_quick(tmp_path):
    """bench_tp.py: TP=1 here and TP=2 under torchrun, the same tokens and steps, four rows."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_tp.py"), "--quick", "--csv",
                        str(tmp_path / "tp.csv")], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "same tokens and steps at TP=1 and TP=2: True" in r.stdout
    rows = _rows(tmp_path / "tp.csv")
    assert sorted((r["tp"], r["policy"]) for r in rows) == [("1", "apd"), ("1", "ar"), ("2", "apd"), ("2", "ar")]
    for row in rows:
        assert float(row["tokens_per_s"]) > 0 and float(row["ms_per_step"]) > 0
    one = {r["policy"]: r for r in rows if r["tp"] == "1"}
    for row in (r for r in rows if r["tp"] == "2"):  # the dLLM is split: each rank holds about half
        assert int(row["dllm_weight_bytes_per_rank"]) < 0.6 * int(one[row["policy"]]["dllm_weight_bytes_per_rank"])


def test_bench_e2e_quick_tp2(tmp_path):
    """bench_e2e.py --tp 2 under torchrun (gloo on CPU): each model's rows with tp = 2, written by rank 0."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(ROOT / "bench" / "bench_e2e.py"), "--tp", "2", "--device", "cpu", "--quick", "--out",
                        str(tmp_path)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = _rows(tmp_path / "e2e_cpu_quick.csv")
    assert [(r["model"], r["policy"]) for r in rows] == E2E_ROWS  # the block model sharded too
    assert all(r["tp"] == "2" and float(r["step_eager_ms"]) > 0 for r in rows)
    assert r.stdout.count("## cpu") == 1  # rank 0 reports
