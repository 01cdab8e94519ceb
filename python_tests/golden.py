"""Paths and loaders for the golden data written by the authors' reference code.

One setting finds it: APD_EXT_GOLDEN (a directory), else ../shared/golden beside the checkout.
The device machine gets only the checkout, so its commands copy the data into an ignored folder of
the checkout and point APD_EXT_GOLDEN there (bench/device/README.md). Nothing is read at import
time: a missing directory fails the tests that need it, not the collection of the others.
"""

import json
import os
from pathlib import Path

import pytest
from safetensors import safe_open

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "golden"


def root() -> Path:
    """The golden directory (APD_EXT_GOLDEN, else ../shared/golden); may not exist."""
    env = os.environ.get("APD_EXT_GOLDEN")
    return Path(env).resolve() if env else DEFAULT


def path(name: str) -> Path:
    p = root() / name
    if not p.exists():
        how = "APD_EXT_GOLDEN points" if os.environ.get("APD_EXT_GOLDEN") else "shared/ must sit beside the checkout, or set APD_EXT_GOLDEN"
        pytest.fail(f"golden data missing: {p} ({how} to the golden directory)")
    return p


def load(name: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a golden safetensors file."""
    with safe_open(str(path(name)), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def runs() -> list[dict]:
    """The golden runs, for parametrisation at collection time. When the data is missing this is a
    single placeholder whose test fails with the reason (the collection of other tests goes on)."""
    index = root() / "apd_runs" / "index.json"
    if not index.exists():
        return [{"file": "MISSING.safetensors", "missing": str(index)}]
    return json.loads(index.read_text())["runs"]
