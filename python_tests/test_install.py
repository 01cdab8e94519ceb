"""The package as users import it: installed into the environment (`make build` installs the
checkout in editable mode), importable from any directory, with the compiled ops registered."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import os, sys, torch
import apd_ext
print(os.path.dirname(os.path.abspath(apd_ext.__file__)))
ops = hasattr(torch.ops.apd_ext, "sample_draft") and hasattr(torch.ops.apd_ext, "mixture_accept")  # before any op call
print(apd_ext.backends.extension() is not None)
print(ops)
from apd_ext.tiny import ASSETS
print(all((ASSETS / part / "model.safetensors").is_file() for part in ("dllm", "verifier")))
"""


def test_import_from_another_directory(tmp_path):
    """From a directory outside the checkout, without PYTHONPATH: the checkout's package, its
    extension and torch.ops.apd_ext.* right after `import apd_ext`, and the bundled pair."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"`import apd_ext` failed outside the checkout (run `make build`):\n{r.stderr}"
    where, has_ext, has_ops, has_pair = r.stdout.split()
    assert Path(where) == ROOT / "apd_ext"
    if os.environ.get("APD_EXT_REQUIRE_EXTENSION") == "1":
        assert has_ext == "True", "the extension is not importable from outside the checkout"
        assert has_ops == "True", "torch.ops.apd_ext.* are not registered by `import apd_ext`"
    assert has_pair == "True"
