"""Paths and loaders for ../shared/golden (written by the authors' reference code)."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"


def path(name: str) -> Path:
    p = GOLDEN / name
    if not p.exists():
        pytest.fail(f"golden data missing: {p} (shared/ must sit beside the checkout)")
    return p


def load(name: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a golden safetensors file."""
    with safe_open(str(path(name)), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def runs() -> list[dict]:
    return json.loads(path("apd_runs/index.json").read_text())["runs"]
