"""The command line under tensor parallelism: `torchrun --nproc-per-node 2 -m apd_ext ... --tp 2`
decodes the same as one process, prints once (rank 0), writes its JSON once, and a failure every
rank meets ends in one `error:` line; a --tp that does not match the processes is a one-line error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apd_ext.cli import main as cli
from apd_ext.tiny import ASSETS, evaluate as ev, task
from test_cli import _fails

ROOT = Path(__file__).resolve().parent.parent


def _torchrun(args, cwd, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "apd_ext", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_tp_needs_torchrun(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _fails(["demo", "--tp", "2"], capsys, 2, r"torchrun --nproc-per-node 2 -m apd_ext demo --tp 2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    _fails(["eval-tiny", "--num-problems", "1"], capsys, 2, r"torchrun started 2 processes but --tp is 1: pass --tp 2")
    _fails(["demo", "--tp", "3"], capsys, 2, r"--tp 3 runs one process per rank.*WORLD_SIZE is 2")
    _fails(["demo", "--synthetic", "--tp", "2"], capsys, 2, r"--synthetic runs the ops alone")
    _fails(["generate", "--tp", "0"], capsys, 2, r"--tp")


def test_eval_tiny_tp2_equals_one_process(tmp_path):
    out = tmp_path / "tp2.json"
    policies = ["apd", "ar", "dllm_fixed:k=2"]
    r = _torchrun(["eval-tiny", "--tp", "2", "--num-problems", "3", "--quiet", "--json", out, "--policies", *policies],
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("policy") == 1, r.stdout  # one table: rank 0 prints, rank 1 is silent
    doc = json.loads(out.read_text())
    assert doc["tp"] == 2
    torch.set_num_threads(1)
    pair = ev.load_pair(ASSETS)
    problems = task.eval_problems(0, 3)
    for got in doc["results"]:
        want = ev.evaluate(pair, problems, got["policy"], progress=False, seed=0)
        for key in ("accuracy", "tokens_per_step", "tokens_per_dllm_forward"):
            assert got[key] == want[key], (got["policy"], key, got[key], want[key])


def test_a_shard_every_rank_fails_on_ends_in_one_error_line(tmp_path):
    assets = tmp_path / "assets"
    shutil.copytree(ASSETS, assets)
    st = assets / "dllm" / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])  # truncated
    r = _torchrun(["demo", "--tp", "2", "--assets", assets, "--no-color"], cwd=tmp_path)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ") or "] error: " in line]
    assert len(errors) == 1, r.stderr[-3000:]
    assert "failed on 2 of 2 ranks" in errors[0] and "model.safetensors" in errors[0], errors[0]
