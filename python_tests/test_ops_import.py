"""`import apd_ext` loads the compiled extension, so torch.ops.apd_ext.* exist before any op call;
an unbuilt checkout still imports (and runs the reference backend); a build that fails to load
raises at import. Each case runs in a fresh interpreter on this checkout."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from apd_ext import backends

ROOT = Path(__file__).resolve().parents[1]

# Makes `import apd_ext._C` fail as given (MISSING: not built; BROKEN: a build that does not load).
_BLOCK_C = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "apd_ext._C":
            if MODE == "missing":
                raise ModuleNotFoundError("No module named 'apd_ext._C'", name="apd_ext._C")
            raise ImportError("apd_ext/_C.so: undefined symbol: _ZN3c10bogus")
        return None
sys.meta_path.insert(0, _Block())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("APD_EXT_BACKEND", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.skipif(backends.extension() is None, reason="extension not built")
def test_torch_ops_exist_right_after_import():
    r = _run("""
        import torch
        import apd_ext
        assert apd_ext.__file__.startswith(%r), apd_ext.__file__
        op = torch.ops.apd_ext.sample_draft  # AttributeError when the library is not registered
        assert "apd_ext::mixture_accept" in {str(s.name) for s in torch._C._jit_get_all_schemas()}
        print("ok")
    """ % str(ROOT))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_unbuilt_checkout_imports_and_runs_the_reference():
    r = _run("MODE = 'missing'" + _BLOCK_C + """
import torch
import apd_ext
from apd_ext import backends
assert backends.extension() is None and "cpu" not in apd_ext.available_backends("cpu")
assert not hasattr(torch.ops.apd_ext, "sample_draft")
tok, _ = apd_ext.sample_draft(torch.tensor([[[0.0, 2.0, 1.0]]]), temperature=0.0)
assert tok.tolist() == [[1]]
print("ok")
""")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_a_build_that_fails_to_load_raises_at_import():
    r = _run("MODE = 'broken'" + _BLOCK_C + "import apd_ext\n")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "undefined symbol" in r.stderr
