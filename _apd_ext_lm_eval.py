"""Makes apd_ext known to lm-evaluation-harness from the moment lm_eval is imported, so that

    lm_eval --model apd --tasks apd_tiny_arith

works once apd_ext is installed. Installed beside it, `_apd_ext_lm_eval.pth` imports this module
at interpreter start (site.py runs a .pth's import lines); it imports neither lm_eval nor apd_ext
nor torch, and only watches for two lm_eval modules (an import hook on sys.meta_path):

- after `lm_eval.models` has run: the model name "apd" is registered in lm_eval's model registry
  as a lazy placeholder ("apd_ext.harness.model:ApdLM"), beside the harness's own models;
- after `lm_eval.tasks.manager` has run: every TaskManager also indexes apd_ext's task folder
  (apd_ext/harness/tasks: apd_tiny_arith), after lm_eval's own tasks and before the user's
  --include_path (which can still override a name).

lm-eval 0.4.x has no plug-in discovery (no entry-point group for models or tasks), hence this hook.
Set APD_EXT_LM_EVAL_HOOK=0 to switch it off; `import apd_ext.harness` does the same registration
explicitly. Any failure here is swallowed: a broken hook must never break an unrelated program.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

MODEL_NAME = "apd"
MODEL_TARGET = "apd_ext.harness.model:ApdLM"
_WATCHED = ("lm_eval.models", "lm_eval.tasks.manager")


def tasks_dir() -> str | None:
    """apd_ext/harness/tasks, found without importing apd_ext (None when apd_ext is not importable)."""
    spec = importlib.util.find_spec("apd_ext")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "harness", "tasks")
        if os.path.isdir(path):
            return path
    return None


def register_model(models_module=None) -> None:
    """Registers "apd" (lazily) unless a model of that name is registered already."""
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def add_task_path(manager_module) -> None:
    """Wraps TaskManager.__init__ so that apd_ext's task folder is on every manager's include path."""
    cls = manager_module.TaskManager
    if getattr(cls.__init__, "_apd_ext", False):
        return
    original = cls.__init__
    folder = tasks_dir()
    if folder is None:
        return

    def __init__(self, *args, include_path=None, **kwargs):
        paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) \
            else [include_path]
        if all(os.path.abspath(str(p)) != folder for p in paths):
            paths = [folder] + paths
        original(self, *args, include_path=paths, **kwargs)

    __init__._apd_ext = True
    __init__.__doc__ = original.__doc__
    cls.__init__ = __init__


_AFTER = {"lm_eval.models": register_model, "lm_eval.tasks.manager": add_task_path}


class _Loader(importlib.abc.Loader):
    """The real loader, then the module's hook."""

    def __init__(self, inner, after):
        self.inner, self.after = inner, after

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        try:
            self.after(module)
        except Exception as e:  # noqa: BLE001 - the harness itself must keep working
            print(f"apd_ext: could not register with lm_eval ({type(e).__name__}: {e})", file=sys.stderr)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched module it asks the finders after it and wraps the loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _AFTER:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, _AFTER[fullname])
                return spec
        return None


def install() -> None:
    """Puts the finder first on sys.meta_path (once); applies the hooks at once to watched modules
    that are already imported."""
    if os.environ.get("APD_EXT_LM_EVAL_HOOK", "1") in ("0", "false", "False"):
        return
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
    for name in _WATCHED:
        if name in sys.modules:
            _AFTER[name](sys.modules[name])


try:
    install()
except Exception:  # noqa: BLE001 - see the module docstring
    pass
