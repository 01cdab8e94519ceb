"""How the driver runs step i: eagerly (`Eager`), the steady step through torch.compile
(`Compiled`), or the steady step captured once as a CUDA graph and replayed (`Graphed`). Each is
called as run(i) -> (n, proposal, span) and owns the State the step works on (`run.state`), which
the graph cache keeps across calls."""

from __future__ import annotations

import weakref

import torch

from apd_ext.decode import graphs
from apd_ext.decode.state import State
from apd_ext.decode.stats import NO_CLOCK


def logits_width(runner) -> int:
    """Columns of the logits a runner returns: its vocabulary, or its slice of it when sharded."""
    return getattr(runner, "logits_width", runner.vocab_size)


def new_state(step, verifier, batch: int, device) -> State:
    rows = step.verifier_rows
    return State.allocate(batch, step.L, rows, logits_width(verifier) if rows else 0,
                          verifier.logits_dtype if rows else torch.float32, device)


class Eager:
    """Every step runs eagerly, its phases timed on `clock`; noise_fn(i, valid) replaces the
    generator's noise (golden replays)."""

    cuda_graph = None

    def __init__(self, step, dllm, verifier, batch: int, device, clock, noise_fn=None):
        self.step, self.dllm, self.verifier, self.clock, self.noise_fn = step, dllm, verifier, clock, noise_fn
        self.device = torch.device(device)
        self.state = self._state(batch)

    def _state(self, batch: int) -> State:
        return new_state(self.step, self.verifier, batch, self.device)

    def noise(self, i: int):
        return None if self.noise_fn is None else (lambda valid: self.noise_fn(i, valid))

    def __call__(self, i: int):
        return self.step(self.state, self.dllm, self.verifier, first=i == 0, noise=self.noise(i), clock=self.clock)


class Compiled(Eager):
    """Step 0 eagerly, the steady step through apd_ext.decode.compiled.compile_step (torch.compile
    / Inductor), which times it as one "compiled_step" phase."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        try:
            from apd_ext.decode.compiled import compile_step
        except ImportError as e:
            raise ImportError(f"compile=True needs apd_ext.decode.compiled.compile_step, which is not available "
                              f"({e}); pass compile=False") from e
        self.compiled = compile_step(self.step)

    def __call__(self, i: int):
        if i == 0:
            return super().__call__(i)
        return self.compiled(self.state, self.dllm, self.verifier, first=False, noise=self.noise(i), clock=self.clock)


class Graphed(Eager):
    """Step 0 runs eagerly. Without a cached capture, step 1 (the first of the steady shape: it
    also warms up kernels and libraries) runs eagerly on a side stream and step 2 is captured; from
    then on (from step 1 when the cache had it) the captured step is replayed. The entry and its
    State come from graphs.GRAPH_CACHE."""

    def _state(self, batch: int) -> State:
        d, v, step = self.dllm, self.verifier, self.step
        self.key = graphs.graph_key(d, v, step, batch)
        fingerprint = graphs.runner_fingerprint(d, v, step)
        entry = graphs.GRAPH_CACHE.get(self.key, d, v, fingerprint)
        self.reused = entry is not None and entry.graph is not None
        if entry is None:
            entry = graphs.CachedStep(step, new_state(step, v, batch, self.device), weakref.ref(d), graphs.ref(v),
                                      fingerprint)
            graphs.GRAPH_CACHE.put(self.key, entry)
        entry.uses += 1
        self.entry, self.step = entry, entry.step
        return entry.state

    @property
    def cuda_graph(self) -> str | None:
        return "reused" if self.reused else "captured" if self.entry.graph is not None else None

    def __call__(self, i: int):
        e = self.entry
        if i >= 1 and (e.graph is not None or i >= 2):
            if e.graph is None:
                try:
                    e.graph = graphs.capture(lambda: self.step(self.state, self.dllm, self.verifier, first=False,
                                                               clock=NO_CLOCK), self.device)
                except BaseException:
                    graphs.GRAPH_CACHE.discard(self.key)
                    raise
                e.captures += 1
            with self.clock.phase("graph_step"):
                e.graph.replay()
            return tuple(t.clone() if t is not None else None for t in e.graph.outputs)
        if i == 1 and self.device.type == "cuda":  # warm-up off the default stream, as capture wants
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = super().__call__(i)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        return super().__call__(i)
