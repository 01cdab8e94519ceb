"""Builds apd_ext._C: the CPU ops always, the CUDA ops when a CUDA toolkit and a CUDA build of
torch are present. APD_EXT_CUDA=1 forces CUDA (and fails without it), APD_EXT_CUDA=0 skips it.
APD_EXT_CUDA_ARCHS overrides the targets (default "80;90", plus PTX of the newest for later GPUs).

    pip install --no-build-isolation .      # builds the extension against the installed torch, ships the tiny pair
    make build                              # what `make test` / `make demo` do: the extension built in place
                                            # (incremental), then an editable install of the checkout

APD_EXT_EXTENSION=0 leaves the extension out of the build: the Makefile's editable install uses it,
since `build_ext --inplace` has already put apd_ext/_C*.so beside the sources (an editable build
would compile everything again in a temporary directory).
"""

import glob
import os
import shutil

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home() -> str | None:
    """The toolkit root above nvcc's bin/, following links and wrapper scripts (torch's own guess
    stops at a wrapper's directory, e.g. /usr/local for /usr/local/bin/nvcc)."""
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            with open(nvcc, "rb") as f:
                head = f.read(4096)
            if head.startswith(b"#!"):
                for word in head.decode(errors="ignore").split():
                    if word.endswith("/bin/nvcc") and os.path.isabs(word):
                        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(word))))
        except OSError:
            pass
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if os.path.exists(os.path.join(c, "include", "cuda_runtime.h")):
            return os.path.realpath(c)
    return None


if not os.environ.get("CUDA_HOME") and os.environ.get("APD_EXT_CUDA") != "0":
    _home = _find_cuda_home()
    if _home:
        os.environ["CUDA_HOME"] = _home

from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda() -> bool:
    forced = os.environ.get("APD_EXT_CUDA")
    if forced == "0":
        return False
    import torch

    found = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and (
        shutil.which("nvcc") or os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    )
    if forced == "1" and not found:
        raise RuntimeError("APD_EXT_CUDA=1 but no CUDA toolkit (CUDA_HOME/nvcc) or CUDA build of torch")
    return bool(found)


def _cuda_arch_flags() -> list[str]:
    archs = [a.strip() for a in os.environ.get("APD_EXT_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def _extension():
    include = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    sources = _rel("csrc/cpu/*.cpp") + _rel("csrc/capi/*.cpp") + ["csrc/torch_ops/bindings.cpp"]
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    link = ["-fopenmp"]
    if not _want_cuda():
        return cpp_extension.CppExtension(
            "apd_ext._C", sources, include_dirs=include,
            extra_compile_args={"cxx": cxx}, extra_link_args=link,
        )
    sources += ["csrc/torch_ops/cuda_ops.cpp"] + _rel("csrc/cuda/*.cu")
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DAPD_WITH_CUDA"]
    return cpp_extension.CUDAExtension(
        "apd_ext._C", sources, include_dirs=include,
        extra_compile_args={"cxx": cxx + ["-DAPD_WITH_CUDA"], "nvcc": nvcc + _cuda_arch_flags()},
        extra_link_args=link,
    )


# lm-evaluation-harness finds the "apd" model and apd_ext's tasks through _apd_ext_lm_eval.py, which
# this .pth imports at interpreter start (lm-eval 0.4 has no plug-in discovery). The .pth must sit
# at the root of site-packages, in the regular wheel and in the editable one alike.
HOOK_PTH = "_apd_ext_lm_eval.pth"
HOOK_LINE = "import _apd_ext_lm_eval\n"


class BuildPyWithHook(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            with open(os.path.join(self.build_lib, HOOK_PTH), "w") as f:
                f.write(HOOK_LINE)

    def get_outputs(self, include_bytecode=1):
        extra = [] if self.editable_mode else [os.path.join(self.build_lib, HOOK_PTH)]
        return super().get_outputs(include_bytecode) + extra


class EditableWheelWithHook(editable_wheel):
    """The editable wheel gets the same .pth (its strategy writes only the package's own finder)."""

    def _select_strategy(self, name, tag, build_lib):
        strategy = super()._select_strategy(name, tag, build_lib)
        return _StrategyWithHook(strategy)


class _StrategyWithHook:
    def __init__(self, inner):
        self.inner = inner

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def __call__(self, wheel, files, mapping):
        self.inner(wheel, files, mapping)
        wheel.writestr(HOOK_PTH, HOOK_LINE)


setup(
    name="apd_ext",
    version="0.1.0",
    description="Fused Adaptive Parallel Decoding kernels for diffusion LLMs (CPU, CUDA, Triton)",
    packages=find_namespace_packages(include=["apd_ext", "apd_ext.*"], exclude=["*.__pycache__"]),
    py_modules=["_apd_ext_lm_eval"],
    package_data={"apd_ext.tiny": ["assets/*/*.json", "assets/*/*.safetensors", "assets/*.md"],
                  "apd_ext.harness": ["tasks/*.yaml", "tasks/*.jsonl", "tasks/*.md"]},
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=["torch>=2.11", "numpy"],
    # `pip install apd_ext[eval]`: the lm-evaluation-harness model "apd" (apd_ext/harness)
    # `pip install apd_ext[serve]`: the OpenAI-compatible server `python -m apd_ext serve` (apd_ext/serve)
    extras_require={"eval": ["lm_eval>=0.4.13,<0.5"],
                    "serve": ["fastapi>=0.110", "uvicorn>=0.29", "prometheus_client>=0.20"]},
    ext_modules=[] if os.environ.get("APD_EXT_EXTENSION") == "0" else [_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True), "build_py": BuildPyWithHook,
              "editable_wheel": EditableWheelWithHook},
)
