"""The two fused ops on synthetic logits, timed (no models): what `python -m apd_ext demo --synthetic`
prints. A quick look at acceptance against mixture_weight and temperature; bench/bench_ops.py is
the benchmark.

    D, A = synthetic_logits(K=32, V=151936, agreement=0.9, gen=torch.Generator().manual_seed(0))
    accepted, draft_ms, accept_ms = time_ops(D, A, mixture_weight=0.7, temperature=0.0, steps=5, seed=0)
"""

from __future__ import annotations

import time

import torch

from apd_ext.ops import mixture_accept, sample_draft


def synthetic_logits(K: int, V: int, agreement: float, gen: torch.Generator):
    """(dLLM, verifier) bf16 logits [1, K, V]: Gaussian rows with 4 hot tokens per position; the
    verifier's rows have correlation `agreement` in [0, 1] with the dLLM's."""
    if K < 1 or V < 1 or not 0.0 <= agreement <= 1.0:
        raise ValueError(f"synthetic_logits takes K >= 1, V >= 1, agreement in [0, 1]; got {K}, {V}, {agreement}")
    base = torch.randn(1, K, V, generator=gen) * 2.5
    hot = torch.randint(0, V, (1, K, 4), generator=gen)
    base.scatter_add_(-1, hot, torch.full(hot.shape, 9.0))
    noise = torch.randn(1, K, V, generator=gen) * 2.5
    verifier = agreement * base + (1 - agreement**2) ** 0.5 * noise
    return base.bfloat16(), verifier.bfloat16()


def time_ops(D: torch.Tensor, A: torch.Tensor, mixture_weight: float, temperature: float, steps: int,
             seed: int = 0) -> tuple[float, float, float]:
    """Run sample_draft then mixture_accept `steps` times (offset = step) on [1, K, V] logits;
    (mean accepted tokens, mean ms of sample_draft, mean ms of mixture_accept)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    accepted, t_draft, t_accept = 0, 0.0, 0.0
    for step in range(steps):
        t0 = time.perf_counter()
        tokens, _ = sample_draft(D, temperature=temperature, seed=seed, offset=step)
        t1 = time.perf_counter()
        n, *_ = mixture_accept(D, A, tokens, mixture_weight=mixture_weight, temperature=temperature,
                               seed=seed, offset=step)
        t2 = time.perf_counter()
        accepted += int(n[0])
        t_draft += t1 - t0
        t_accept += t2 - t1
    return accepted / steps, t_draft / steps * 1e3, t_accept / steps * 1e3
