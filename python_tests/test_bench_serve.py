"""bench/bench_serve.py --quick runs end to end against a real `python -m apd_ext serve` process and
writes well-formed rows; the requests' texts through the server equal the in-process generate
baselines' (greedy: a correctness check). Timings are not judged here."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apd_ext import backends

for module in ("openai", "fastapi", "uvicorn", "matplotlib"):
    pytest.importorskip(module)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(backends.extension() is None, reason="extension apd_ext._C not built")

COLUMNS = ["run", "mode", "concurrency", "rate_x", "rate_rps", "context_length", "max_batch_size", "policy",
           "num_requests", "completed", "errors", "output_tokens", "duration_s", "output_tok_s", "req_s",
           "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "e2e_p50_ms",
           "e2e_p99_ms", "vs_sequential", "vs_static", "mismatches", "forwards", "tokens_per_forward",
           "engine_join_forwards", "engine_joins", "engine_steps", "engine_forward_ms", "engine_busy", "threads",
           "loadavg_1m", "machine", "apd_ext_commit", "timestamp"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_serve.py"), "--quick", "--num-requests", "4",
                        "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def test_rows(quick):
    out, stdout = quick
    with open(out / "serve_cpu.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert [r["mode"] for r in rows] == ["sequential", "static", "server-closed", "server-closed", "server-poisson"]
    assert [r["concurrency"] for r in rows[:4]] == ["1", "2", "1", "2"]
    for r in rows:
        assert r["num_requests"] == r["completed"] == "4" and r["errors"] == "0" and r["mismatches"] == "0"
        assert int(r["output_tokens"]) > 0 and float(r["output_tok_s"]) > 0 and float(r["req_s"]) > 0
        for key in ("ttft", "itl", "tpot", "e2e"):
            assert 0 < float(r[f"{key}_p50_ms"]) <= float(r[f"{key}_p99_ms"])
        assert r["threads"] == "1" and r["machine"] and r["apd_ext_commit"]
        assert int(r["forwards"]) > 0
        assert float(r["tokens_per_forward"]) == pytest.approx(int(r["output_tokens"]) / int(r["forwards"]), rel=1e-4)
    # tokens are counted the same way in every mode: the same requests give the same total
    assert len({r["output_tokens"] for r in rows}) == 1
    seq = float(rows[0]["output_tok_s"])
    assert float(rows[0]["vs_sequential"]) == 1.0
    for r in rows[1:]:
        assert float(r["vs_sequential"]) == pytest.approx(float(r["output_tok_s"]) / seq, rel=1e-4)
    for r in rows[2:]:  # the server's engine counters were read
        assert int(r["forwards"]) == int(r["engine_steps"]) + int(r["engine_join_forwards"])
        assert int(r["engine_steps"]) > 0 and 1 <= int(r["engine_join_forwards"]) <= int(r["engine_joins"]) == 4
        assert float(r["engine_busy"]) > 0 and float(r["engine_forward_ms"]) > 0
        assert r["context_length"] == "256" and r["max_batch_size"] == "8"
    assert rows[2]["vs_static"] == rows[2]["vs_sequential"]  # static at c=1 is the sequential baseline
    assert float(rows[4]["rate_rps"]) == pytest.approx(2 * float(rows[0]["req_s"]), rel=1e-4)
    assert (out / "serve_cpu.png").stat().st_size > 0 and (out / "serve_cpu.log").read_text().strip()
    assert "target at concurrency" not in stdout  # no concurrency-8 run in --quick: no target line
    assert "| sequential" in stdout  # the table


def test_server_texts_equal_generate(quick):
    """The server's streamed texts (greedy requests) equal sequential generate calls', and the static
    batches' tokens equal the sequential calls', request by request."""
    out, _ = quick
    data = json.loads((out / "serve_cpu.json").read_text())
    assert data["meta"]["token_count"].startswith("answer tokens up to and excluding")
    reqs = data["requests"]
    seq = {r["index"]: r for r in reqs["sequential"]}
    assert len(seq) == 4 and all(r["text"] and r["token_ids"] for r in seq.values())
    for i, r in seq.items():
        assert r["tokens"] == len(r["token_ids"])
    assert {r["index"]: r["token_ids"] for r in reqs["static c=2"]} == {i: r["token_ids"] for i, r in seq.items()}
    server_runs = [name for name in reqs if name.startswith("server")]
    assert len(server_runs) == 3
    for name in server_runs:
        got = {r["index"]: (r["text"], r["tokens"]) for r in reqs[name]}
        assert got == {i: (r["text"], r["tokens"]) for i, r in seq.items()}, name
