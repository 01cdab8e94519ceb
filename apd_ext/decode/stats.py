"""Timing and statistics of a `generate` call: the per-phase clock the steps write to (`Clock`, or
`NO_CLOCK` inside a captured or compiled step) and the collector that builds the stats dict
(`Stats`)."""

from __future__ import annotations

import contextlib
import time

import torch


class NoClock:
    """The clock of a step captured into a CUDA graph, compiled or traced: phases are not timed."""

    def phase(self, name: str):
        return contextlib.nullcontext()


NO_CLOCK = NoClock()


class _Phase:
    def __init__(self, clock: "Clock", name: str):
        self.clock, self.name = clock, name

    def __enter__(self):
        if self.clock.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start = time.perf_counter()

    def __exit__(self, *exc):
        if self.clock.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.clock.events.append((self.name, self.start, end))
        else:
            totals = self.clock.totals
            totals[self.name] = totals.get(self.name, 0.0) + time.perf_counter() - self.start


class Clock:
    """Wall time per named phase (`with clock.phase("dllm"): ...`); on CUDA through events that are
    read once at the end (no synchronisation per step)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}
        self.events: list[tuple[str, object, object]] = []

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)

    def result(self) -> dict[str, float]:
        """Seconds per phase (synchronises a CUDA device once)."""
        if self.cuda:
            torch.cuda.synchronize()
            for name, a, b in self.events:
                self.totals[name] = self.totals.get(name, 0.0) + a.elapsed_time(b) / 1e3
            self.events.clear()
        return dict(self.totals)


def tokens_per_step(acc: torch.Tensor, num_generated: torch.Tensor) -> float:
    """Generated tokens per step of a row still decoding: num_generated int64 [B] (each row's tokens
    up to and including its EOS) summed, over the (row, step) pairs in which the row committed
    something, acc int64 [B, steps] (acceptance counts). Positions a step commits after the row's
    EOS (threshold and diffusion fill the whole answer region; the output pads them) count in acc
    but not here; where every commit is part of the answer (apd, dllm_fixed, ar: acc's rows sum
    to num_generated) this is the mean of acc's positive entries. 0.0 when nothing was committed."""
    active = int((acc > 0).sum())
    return int(num_generated.sum()) / active if active else 0.0


class Stats:
    """Collects what each step returns and builds `GenerateOutput.stats`.

    record(n, span) once per step: n int64 [B] tokens the step committed per row, span int64 [B, 2]
    the dLLM's [left, right) input range (None when the step runs no dLLM).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.clock = Clock(device)
        self.accepted: list[torch.Tensor] = []
        self.spans: list[torch.Tensor] = []
        self.t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def record(self, n: torch.Tensor, span: torch.Tensor | None) -> None:
        self.accepted.append(n)
        if span is not None:
            self.spans.append(span)

    @property
    def steps(self) -> int:
        return len(self.accepted)

    def drop_idle_tail(self) -> None:
        """Leave out the trailing steps in which no row committed anything: with a lagged progress
        check (CUDA) the loop may run one step past the end of every row (it changes nothing)."""
        while len(self.accepted) > 1 and not bool(self.accepted[-1].any()):
            self.accepted.pop()
            del self.spans[len(self.accepted):]

    def build(self, step, num_generated: torch.Tensor, cuda_graph: str | None) -> dict:
        """The stats dict (see `generate`); step: the policy's step object (its forwards per step)."""
        total = time.perf_counter() - self.t0
        B = num_generated.shape[0]
        acc = torch.stack(self.accepted, 1).cpu() if self.accepted else torch.zeros(B, 0, dtype=torch.int64)
        times = self.clock.result()
        times["total"] = total
        times["other"] = max(0.0, total - sum(v for k, v in times.items() if k not in ("total", "other")))
        positive = acc[acc > 0]
        steps = self.steps
        return dict(
            steps=steps,
            dllm_forwards=steps * step.dllm_forwards,
            verifier_forwards=steps * step.verifier_forwards + int(step.verifier_rows > 0),  # + the prefill
            acceptance_counts=acc,
            tokens_per_step=tokens_per_step(acc, num_generated),
            tokens_per_step_histogram=torch.bincount(positive).tolist() if positive.numel() else [],
            spans=torch.stack(self.spans, 1).cpu() if self.spans else None,
            time_s=times,
            tokens_per_s=int(num_generated.sum()) / total if total > 0 else 0.0,
            peak_memory_bytes=torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            cuda_graph=cuda_graph,
        )
