"""Backend registry: which implementation of the ops runs for a device.

Every backend takes the same normalised arguments (already checked by apd_ext/ops.py), grouped
as the C ABI groups them (csrc/include/apd/apd.h: apd_filter, apd_noise); the Filter's fields and
mixture_weight are each a Python scalar or a per-row [B] tensor (float64; int64 for top_k):

    sample_draft(dllm, vocab, filt: Filter, noise: Noise) -> tokens, logprobs
    mixture_accept(dllm, verifier, draft, vocab, mixture_weight, greedy_target, valid_lengths,
                   filt: Filter, noise: Noise) -> num_accepted, target_tokens, logp_dllm, logp_verifier, logp_mixture

and the vocabulary-parallel partial ops (reference.py documents them; apd_ext/parallel/vocab.py
combines their outputs across ranks):

    sample_draft_partial(dllm, vocab, vocab_offset, filt, noise, threshold) -> tokens, stats [B, K, 4]
    mixture_accept_partial(dllm, verifier, draft, vocab, vocab_offset, mixture_weight, greedy_target,
                           valid_lengths, filt, noise, threshold) -> target_tokens, stats [B, K, 10]

Only the torch op schemas (csrc/torch_ops/bindings.cpp) take them flat, in the fields' order.
"auto" picks: CUDA tensors -> "cuda" when the extension has CUDA kernels, else "triton"; CPU
tensors -> "cpu" when the extension is built, else "reference". APD_EXT_BACKEND overrides "auto".

Importing this module loads the extension when it is built, so torch.ops.apd_ext.* exist right
after ``import apd_ext``; an unbuilt checkout imports and runs the Python backends, and a build
that fails to load raises at import.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from typing import NamedTuple

import torch

from apd_ext import reference

NAMES = ("auto", "cpu", "cuda", "triton", "reference")


class Filter(NamedTuple):
    """apd_filter: the sampling filters of the dLLM distribution (checked by ops._check_filter).

    Each field is a Python scalar (every row) or a per-row knob: a [B] tensor on the logits'
    device, float64 for temperature and top_p, int64 for top_k (ops convert float32 to float64,
    exactly). Row b with per-row knobs computes what the scalar call on row b alone computes with
    row b's values (csrc/include/apd/knobs.h; reference.py states the math)."""

    temperature: float | torch.Tensor  # >= 0; 0 is greedy (no noise)
    top_k: int | torch.Tensor  # >= 0; 0 (and, per row, >= vocab) disables it (ops turn a scalar >= vocab into 0)
    top_p: float | torch.Tensor  # in (0, 1]; 1 disables it

    @property
    def per_row(self) -> bool:
        """Whether any field is a per-row tensor."""
        return any(isinstance(f, torch.Tensor) for f in self)


def knob(value, default):
    """(scalar, tensor or None) of a knob as the flat torch op schemas take it: a per-row tensor
    goes in the Tensor? argument and the scalar beside it is `default` (ignored by the kernels)."""
    return (default, value) if isinstance(value, torch.Tensor) else (value, None)


def flat_filter(filt: Filter) -> tuple:
    """The schemas' flat filter arguments: temperature, top_k, top_p, then their per-row tensors."""
    (t, t_rows), (k, k_rows), (p, p_rows) = knob(filt.temperature, 1.0), knob(filt.top_k, 0), knob(filt.top_p, 1.0)
    return t, k, p, t_rows, k_rows, p_rows


class Noise(NamedTuple):
    """apd_noise: where the Gumbel noise comes from. seed_t is None or an int64 tensor of 1 or B
    row seeds on the logits' device (then seed_v is unused); offset_t likewise: 1 offset or B row
    offsets (each row's own step count, as a continuous-batching engine keeps them);
    uniform: None (counter-based noise of (row seed, offset, position, token)) or explicit
    [B, K, >= vocab] float32/float64 uniforms."""

    seed_t: torch.Tensor | None
    seed_v: int
    offset_t: torch.Tensor | None
    offset_v: int
    uniform: torch.Tensor | None = None


# Fields of the float32 stats of the partial ops, in order (csrc/include/apd/apd.h mirrors them).
DRAFT_STATS = ("score", "lse_max", "lse_sum", "value")
MIXTURE_STATS = ("score", "dllm_max", "dllm_sum", "verifier_max", "verifier_sum", "mixture_max", "mixture_sum",
                 "dllm_at", "verifier_at", "mixture_at")


class _TorchOp:
    """The C++/CUDA kernels registered as torch.ops.apd_ext.* (csrc/torch_ops/bindings.cpp), whose
    schemas take the Filter and Noise fields flat, in order."""

    def __init__(self, name: str):
        self.name = name

    def sample_draft(self, dllm, vocab, filt: Filter, noise: Noise):
        return torch.ops.apd_ext.sample_draft(dllm, vocab, *flat_filter(filt), *noise)

    def mixture_accept(self, dllm, verifier, draft, vocab, mixture_weight, greedy_target, valid_lengths,
                       filt: Filter, noise: Noise):
        return torch.ops.apd_ext.mixture_accept(
            dllm, verifier, draft, vocab, *knob(mixture_weight, 1.0), *flat_filter(filt), valid_lengths,
            greedy_target, *noise,
        )

    def sample_draft_partial(self, dllm, vocab, vocab_offset, filt: Filter, noise: Noise, threshold):
        return torch.ops.apd_ext.sample_draft_partial(dllm, vocab, vocab_offset, *flat_filter(filt), *noise,
                                                      threshold)

    def mixture_accept_partial(self, dllm, verifier, draft, vocab, vocab_offset, mixture_weight, greedy_target,
                               valid_lengths, filt: Filter, noise: Noise, threshold):
        return torch.ops.apd_ext.mixture_accept_partial(
            dllm, verifier, draft, vocab, vocab_offset, *knob(mixture_weight, 1.0), *flat_filter(filt),
            valid_lengths, greedy_target, *noise, threshold,
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
        return reference
    if name not in available(device.type):
        raise RuntimeError(
            f"backend {name!r} cannot run on {device.type} tensors here "
            f"(available: {', '.join(available(device.type))})"
        )
    if name == "triton":
        from apd_ext import triton as triton_backend

        return triton_backend
    return _TorchOp(name)


extension()  # at import: registers torch.ops.apd_ext.* (see the module docstring)
