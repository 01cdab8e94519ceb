"""Backend registry: which implementation of the ops runs for a device.

Every backend takes the same normalised arguments (already checked by apd_ext/ops.py):

    sample_draft(dllm, vocab, temperature, top_k, top_p, seed_t, seed_v, offset_t, offset_v, noise)
    mixture_accept(dllm, verifier, draft, vocab, mixture_weight, temperature, top_k, top_p,
                   valid_lengths, greedy_target, seed_t, seed_v, offset_t, offset_v, noise)

seed_t is None or an int64 tensor of 1 or B values (then seed_v is unused); offset_t likewise with
one value. "auto" picks: CUDA tensors -> "cuda" when the extension has CUDA kernels, else "triton";
CPU tensors -> "cpu" when the extension is built, else "reference". APD_EXT_BACKEND overrides "auto".
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache

import torch

from apd_ext import reference

NAMES = ("auto", "cpu", "cuda", "triton", "reference")


def _seed(seed_t, seed_v):
    return seed_t if seed_t is not None else seed_v


class _Reference:
    name = "reference"

    def sample_draft(self, dllm, vocab, temperature, top_k, top_p, seed_t, seed_v, offset_t, offset_v, noise):
        return reference.sample_draft(
            dllm, temperature=temperature, top_k=top_k, top_p=top_p, vocab_size=vocab,
            seed=_seed(seed_t, seed_v), offset=_seed(offset_t, offset_v), noise=noise,
        )

    def mixture_accept(self, dllm, verifier, draft, vocab, w, temperature, top_k, top_p, valid_lengths,
                       greedy_target, seed_t, seed_v, offset_t, offset_v, noise):
        return reference.mixture_accept(
            dllm, verifier, draft, mixture_weight=w, temperature=temperature, top_k=top_k, top_p=top_p,
            vocab_size=vocab, valid_lengths=valid_lengths, greedy_target=greedy_target,
            seed=_seed(seed_t, seed_v), offset=_seed(offset_t, offset_v), noise=noise,
        )


class _TorchOp:
    """The C++/CUDA kernels registered as torch.ops.apd_ext.* (csrc/torch_ops/bindings.cpp)."""

    def __init__(self, name: str):
        self.name = name

    def sample_draft(self, dllm, vocab, temperature, top_k, top_p, seed_t, seed_v, offset_t, offset_v, noise):
        return torch.ops.apd_ext.sample_draft(
            dllm, vocab, temperature, top_k, top_p, seed_t, seed_v, offset_t, offset_v, noise
        )

    def mixture_accept(self, dllm, verifier, draft, vocab, w, temperature, top_k, top_p, valid_lengths,
                       greedy_target, seed_t, seed_v, offset_t, offset_v, noise):
        return torch.ops.apd_ext.mixture_accept(
            dllm, verifier, draft, vocab, w, temperature, top_k, top_p, valid_lengths, greedy_target,
            seed_t, seed_v, offset_t, offset_v, noise,
        )


@lru_cache(maxsize=None)
def extension():
    """The compiled extension module, or None when it is not built (then only Python backends run)."""
    try:
        # import_module, not `from apd_ext import _C`: the latter turns a missing module into a
        # plain ImportError ("cannot import name"), indistinguishable from a build that fails to load.
        _C = importlib.import_module("apd_ext._C")  # registers torch.ops.apd_ext.*
    except ModuleNotFoundError as e:
        if e.name != "apd_ext._C":
            raise
        return None  # not built: the Python backends still run
    # Any other ImportError (a build that does not load) propagates: never fall back silently.
    from apd_ext import fake  # noqa: F401  (fake implementations for torch.compile)
    return _C


def has_cuda_kernels() -> bool:
    ext = extension()
    return ext is not None and bool(ext.has_cuda())


@lru_cache(maxsize=None)
def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def available(device_type: str) -> tuple[str, ...]:
    """Backends that can run on tensors of this device type."""
    names = ["reference"]
    if device_type == "cpu":
        if extension() is not None:
            names.append("cpu")
        if has_triton() and os.environ.get("TRITON_INTERPRET") == "1":
            names.append("triton")
    elif device_type == "cuda":
        if has_cuda_kernels():
            names.append("cuda")
        if has_triton():
            names.append("triton")
    return tuple(names)


def get(name: str, device: torch.device):
    """The backend object for `name` ("auto" resolved) on `device`; errors say what is missing."""
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    if name == "auto":
        name = os.environ.get("APD_EXT_BACKEND", "auto")
        if name == "auto":
            if device.type == "cuda":
                name = "cuda" if has_cuda_kernels() else "triton" if has_triton() else "reference"
            else:
                name = "cpu" if extension() is not None else "reference"
    if name == "reference":
        return _Reference()
    if name not in available(device.type):
        raise RuntimeError(
            f"backend {name!r} cannot run on {device.type} tensors here "
            f"(available: {', '.join(available(device.type))})"
        )
    if name == "triton":
        from apd_ext import triton as triton_backend

        return triton_backend
    return _TorchOp(name)
