"""The steady decoding step compiled by torch.compile (Inductor): `compile_step(step)`.

The steady step (every step after the first) is one function of tensors with the same shapes at
every call, free of host synchronisation and of branches on tensor values (what a CUDA graph needs,
python_tests/test_capture.py checks it). So Inductor can compile it whole: on CPU into generated
C++ loops that fuse the elementwise work of both models, the mask and position arithmetic and the
commit, leaving the matrix products, attention and the apd_ext sampling ops as library calls. On
the golden tiny pair (CPU, fp32, one thread) that removes most of the per-op dispatch that
dominates an eager step (bench/bench_loop.py --golden-pair measures it beside the authors' loop).

What it costs: the first call of a new shape or configuration compiles (tens of seconds on a
2-core CPU when nothing is cached: 30-70 s for the golden pair's first graph; a few seconds when
Inductor's on-disk cache already holds the same graph or its kernels, e.g. a second process).
Compilation is therefore opt-in: worth it for long runs and benchmarks, not for a short demo. The
sampling knobs (temperature, top_k, top_p, mixture_weight) are per-row State tensors, inputs of
the graph, not constants: any mix of them runs the same compiled code without recompiling.

Caching: one compiled function per configuration of the step (its `key`, see
apd_ext/decode/steps/base.py), shared by every step object of that configuration: the step object,
the state and the runners are arguments of the compiled function, so a new step object of the same
configuration (a new `generate` call) reuses the compiled code, guarded by torch.compile's own
checks (tensor shapes, dtypes, devices and the step's attributes). Each configuration gets its
own copy of the function's code object, so it has its own torch.compile recompile budget (a sweep
over many shape knobs never exhausts a shared one and silently falls back to eager). Calls with
the same shapes never recompile (python_tests/test_decode_compiled.py checks it with
torch._dynamo's error_on_recompile).

Numerics: Inductor fuses and reorders float arithmetic (RMSNorm, RoPE, the bias), so logits may
differ from eager mode in the last bits; tokens are the same unless two candidates are that close
(never on the golden runs, whose margins are >= 3e-4 logits; see the golden README).
"""

from __future__ import annotations

import contextlib
import types
import weakref
from collections import OrderedDict
from typing import Callable

import torch

# Inductor options for steps on the CPU: the whole graph as one C++ function (a C++ wrapper calling
# the generated kernels and library ops) instead of a Python wrapper calling each kernel; measured
# about 17% off the compiled steady step on the golden tiny pair (0.33 vs 0.40 ms, CPU time).
CPU_OPTIONS = {"cpp_wrapper": True}
_MAX_CONFIGS = 32  # compiled functions kept (least recently used dropped first)
_FUNCTIONS: "OrderedDict[tuple, Callable]" = OrderedDict()
_WRAPPERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _steady(step, st, dllm, verifier, u):
    """The function torch.compile sees: the steady step (first=False, untimed) on the state `st`,
    with the explicit uniforms `u` ([B, K, >= V] float, or None for the step's own generator)."""
    noise = None if u is None else (lambda valid: u)
    return step(st, dllm, verifier, first=False, noise=noise)


def _config_key(step) -> tuple:
    """One compiled function per distinct key: the step's type and its `key` (what its computation
    depends on besides tensor contents; apd_ext/decode/steps/base.py). Tensors and other objects are
    left to torch.compile's guards."""
    return (type(step).__module__, type(step).__qualname__, step.key)


def _compiled_function(step, backend: str, options: dict | None) -> Callable:
    key = _config_key(step) + (backend, repr(sorted((options or {}).items())))
    fn = _FUNCTIONS.get(key)
    if fn is None:
        # a fresh code object per configuration: its own torch.compile cache and recompile budget
        code = _steady.__code__.replace()
        fresh = types.FunctionType(code, _steady.__globals__, _steady.__name__, _steady.__defaults__,
                                   _steady.__closure__)
        fn = torch.compile(fresh, fullgraph=True, dynamic=False, backend=backend, options=options)
        _FUNCTIONS[key] = fn
        while len(_FUNCTIONS) > _MAX_CONFIGS:
            _FUNCTIONS.popitem(last=False)
    _FUNCTIONS.move_to_end(key)
    return fn


class CompiledStep:
    """The compiled steady step of one step object, with the step's call signature:
    `(st, dllm, verifier, first=False, noise=None, clock=None) -> the step's outputs`.

    first=True runs the step eagerly (step 0 has its own shapes and runs once). `noise`
    (callable(valid int64 [B]) -> uniforms [B, K, >= V]) is evaluated eagerly, on the step's
    `valid(st)`, and its tensor passed into the compiled step. `clock` (an object with
    phase(name) -> context manager, or None) times the whole compiled call as one phase,
    "compiled_step"."""

    def __init__(self, step, backend: str = "inductor", options: dict | None = None):
        self.step, self.backend = step, backend
        self.options = dict(options) if options else None
        self.fn = _compiled_function(step, backend, self.options)

    def __call__(self, st, dllm, verifier, first: bool = False, noise=None, clock=None):
        if first:
            return self.step(st, dllm, verifier, first=True, noise=noise,
                             **({"clock": clock} if clock is not None else {}))
        u = None if noise is None else noise(self.step.valid(st))  # int64 [B] lengths the step drafts
        phase = clock.phase("compiled_step") if clock is not None else contextlib.nullcontext()
        with phase:
            return self.fn(self.step, st, dllm, verifier, u)


def compile_step(step, backend: str = "inductor", options: dict | None = None) -> CompiledStep:
    """The compiled form of `step` (a step object called as step(st, dllm, verifier, first=...,
    noise=..., clock=...)), cached per step object; compilation itself happens at the first steady
    call and is shared by steps of the same configuration (see the module docstring).

    backend: torch.compile's backend ("inductor"; "aot_eager" traces the same graph without
        code generation, for quick checks). options: its options; None = CPU_OPTIONS for Inductor
        on a CPU step (step.device), else torch.compile's defaults; {} = Inductor's defaults.
    """
    if not callable(step) or not hasattr(step, "key"):
        raise TypeError(f"compile_step: step must be a step object (apd_ext.decode.steps), got {type(step).__name__}")
    if not isinstance(backend, str):
        raise TypeError(f"compile_step: backend must be a torch.compile backend name, got {backend!r}")
    if options is None and backend == "inductor" and torch.device(getattr(step, "device", "cpu")).type == "cpu":
        options = CPU_OPTIONS
    cached = _WRAPPERS.get(step)
    if cached is not None and (cached.backend, cached.options) == (backend, dict(options) if options else None):
        return cached
    wrapper = CompiledStep(step, backend, options)
    _WRAPPERS[step] = wrapper
    return wrapper


def clear_compiled() -> None:
    """Forget every compiled function (their code is freed with them)."""
    _FUNCTIONS.clear()
    _WRAPPERS.clear()
