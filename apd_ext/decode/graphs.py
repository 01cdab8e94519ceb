"""The CUDA-graph cache of `generate`.

Captured steps are kept across calls (`GRAPH_CACHE`, an LRU of 4 entries keyed by `graph_key`:
the step's own key (policy, shapes, the per-call knobs it reads, backend, device), the batch size,
the logits dtypes and the runner objects), each with its own persistent State that the next call
with the same key refills in place (prompts, seeds and the rows' sampling knobs: a new mix of
temperatures, top-k, top-p and mixture weights replays the same graph); an entry is dropped when a
runner it was captured on is gone or any tensor the step reads from the runners has moved (a
runner set up for another shape in between, say). `clear_graph_cache()` empties it.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from apd_ext.decode.state import State
from apd_ext.models.runners import DllmRunner, VerifierRunner


def graph_key(dllm, verifier, step, batch: int) -> tuple:
    """What a captured step depends on besides tensor contents: step.key (shapes, the knobs the
    step reads, EOS, backend, device), the batch size, the logits dtypes and the runner objects (by
    identity; GraphCache also checks they are alive). Prompts, prompt lengths, seeds and the rows'
    sampling knobs (temperature, top_k, top_p, mixture_weight) are not in it: they live in the
    state tensors, refilled in place."""
    return (step.key, int(batch), getattr(dllm, "logits_dtype", None), getattr(verifier, "logits_dtype", None),
            id(dllm), id(verifier))


def _none() -> None:
    return None


def ref(runner):
    """A weak reference to `runner`; for None (no verifier: a dLLM-only policy) a callable giving None."""
    return _none if runner is None else weakref.ref(runner)


def used_runners(dllm, verifier, step) -> list:
    """The runners the step calls."""
    return ([dllm] if step.dllm_forwards else []) + ([verifier] if step.verifier_forwards else [])


def runner_fingerprint(dllm, verifier, step) -> tuple[int, ...]:
    """Addresses of every tensor the step reads from the runners it uses (weights, K/V caches,
    RoPE tables, slot indices): a captured graph is valid while they are unchanged."""
    return tuple(t.data_ptr() for r in used_runners(dllm, verifier, step) for t in r.static_tensors())


def native(dllm, verifier, step) -> bool:
    """Whether the runners the step uses are the native (graph-capturable) ones, not slow adapters."""
    return all(isinstance(r, (DllmRunner, VerifierRunner)) for r in used_runners(dllm, verifier, step))


def graphs_possible(device: torch.device) -> bool:
    return device.type == "cuda"


def use_graphs(cuda_graphs: bool | None, device: torch.device, noise_fn, step, dllm, verifier) -> bool:
    """Whether to capture: cuda_graphs=None means yes on CUDA for a capturable step on native
    runners without explicit noise; True is checked (ValueError naming cuda_graphs)."""
    ok_runners = native(dllm, verifier, step)
    if cuda_graphs is None:
        return graphs_possible(device) and noise_fn is None and ok_runners and step.capturable
    if not cuda_graphs:
        return False
    if noise_fn is not None:
        raise ValueError("cuda_graphs=True cannot replay explicit noise (noise_fn): use eager mode")
    if not graphs_possible(device):
        raise ValueError(f"cuda_graphs=True needs models on a CUDA device, not {device.type}")
    if not ok_runners:
        raise ValueError("cuda_graphs=True needs the native runners (DllmRunner/VerifierRunner), not slow adapters")
    if not step.capturable:
        raise ValueError(f"cuda_graphs=True: the {step.config.policy} policy runs eagerly; pass cuda_graphs=None")
    return True


@dataclass(eq=False)
class CachedStep:
    """One GraphCache entry: the step, its persistent state and, once captured, the graph
    (`graph.replay()`) and its output tensors (`graph.outputs`: n, proposal, span), overwritten by
    every replay."""

    step: object
    state: State
    dllm_ref: weakref.ref
    verifier_ref: weakref.ref
    fingerprint: tuple[int, ...]
    graph: object | None = None  # CudaGraphStep: replay(), outputs
    captures: int = 0
    uses: int = 0


class GraphCache:
    """An LRU of CachedStep entries (default 4: each holds a graph's private memory pool, about one
    step's activations and logits, and its state)."""

    def __init__(self, size: int = 4):
        self.size = size
        self.entries: OrderedDict[tuple, CachedStep] = OrderedDict()

    def get(self, key: tuple, dllm, verifier, fingerprint: tuple[int, ...]) -> CachedStep | None:
        """The entry for key when it is still valid (same live runner objects, same tensor
        addresses), else None (an invalid entry is dropped)."""
        e = self.entries.get(key)
        if e is None:
            return None
        if e.dllm_ref() is not dllm or e.verifier_ref() is not verifier or e.fingerprint != fingerprint:
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return e

    def put(self, key: tuple, entry: CachedStep) -> None:
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def discard(self, key: tuple) -> None:
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)


GRAPH_CACHE = GraphCache(4)


def clear_graph_cache() -> None:
    """Drop every captured step (and the memory its graph holds)."""
    GRAPH_CACHE.clear()


class CudaGraphStep:
    """A step captured as a CUDA graph: replay() runs it; outputs are the captured output tensors."""

    def __init__(self, fn, device: torch.device):
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn()

    def replay(self) -> None:
        self.graph.replay()


def capture(fn, device: torch.device):
    """Capture fn (no arguments, returns a tuple of tensors or None) for replays: an object with
    replay() and outputs. Recording runs nothing: the caller replays once for the current step.
    (A seam for python_tests/test_capture.py, which checks the cache logic on CPU.)"""
    return CudaGraphStep(fn, device)
