"""What bench_ops.py times: the synthetic logits (D, A) and each provider's three calls
(sample_draft, mixture_accept, draft+accept) with the run's fixed settings; see bench_ops.py's
docstring for the logit kinds and the settings.
"""

from __future__ import annotations

import math

import torch

import apd_ext
import authors_baseline
from ops_faults import inject, with_injection

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
KINDS = ("flat", "llm")
TEMPERATURE, MIXTURE_WEIGHT, CORRELATION = 1.0, 0.7, 0.9
SEED, OFFSET = 1234, 7


def make_logits(kind: str, B: int, K: int, V: int, device: torch.device, seed: int = 0):
    """(D, A) float32 [B, K, V] on `device` (generated there: a fixed seed per device type); see
    the module docstring."""
    g = torch.Generator(device=device).manual_seed(seed)
    scale = 1.0 if kind == "flat" else 2.5
    D = torch.randn(B, K, V, generator=g, device=device).mul_(scale)
    if kind == "llm":
        p = torch.rand(B, K, 1, generator=g, device=device) * 0.6 + 0.3  # top probability per row
        share = torch.tensor([0.6, 0.3, 0.1], device=device) * 0.6 * (1 - p)  # [B, K, 3] runner-ups
        probs = torch.cat([p, share], dim=-1)  # [B, K, 4]
        total = torch.logsumexp(D, -1, keepdim=True) - torch.log(0.4 * (1 - p))  # log of the row's total mass
        ids = torch.randint(0, V, (B, K, 4), generator=g, device=device)
        D.scatter_(-1, ids, torch.log(probs) + total)
    noise = torch.randn(B, K, V, generator=g, device=device).mul_(scale * math.sqrt(1 - CORRELATION**2))
    return D, noise.add_(D, alpha=CORRELATION)


def max_softmax(x: torch.Tensor, rows: int = 64) -> tuple[float, float, float]:
    """p10 / p50 / p90 over (up to `rows`) rows of the largest softmax probability."""
    m = torch.softmax(x.reshape(-1, x.shape[-1])[:rows].float(), -1).amax(-1).cpu()
    return tuple(torch.quantile(m, torch.tensor([0.1, 0.5, 0.9])).tolist())


def baseline_calls(D, A):
    """The three timed calls of the authors' eager baseline (bench/authors_baseline.py)."""
    inject("baseline", None)
    x0 = authors_baseline.draft(D, TEMPERATURE)
    return with_injection("baseline", {
        "sample_draft": lambda: authors_baseline.draft(D, TEMPERATURE),
        "mixture_accept": lambda: authors_baseline.accept(D, A, x0, MIXTURE_WEIGHT, D.shape[-1]),
        "draft+accept": lambda: authors_baseline.draft_and_accept(D, A, MIXTURE_WEIGHT, TEMPERATURE, D.shape[-1]),
    })


def apd_calls(D, A, backend: str, per_row: bool = False):
    """The three timed calls of an apd_ext backend; raises when its first results are wrong.

    per_row: pass every knob as a per-row [B] tensor holding the same values (what an engine batching
    mixed requests passes; the loop's state does too), to time the per-row path against the scalar one
    in the same run. Its first results must equal the scalar call's exactly. Fault injection
    (APD_BENCH_FAIL) names the provider: backend, or "<backend>+rows" when per_row."""
    provider = f"{backend}+rows" if per_row else backend
    inject(provider, None)
    B, K, V = D.shape
    # int64 tensors: no host sync on CUDA, and what a CUDA-graph-captured loop passes
    seed = torch.tensor([SEED], dtype=torch.int64, device=D.device)
    offset = torch.tensor([OFFSET], dtype=torch.int64, device=D.device)
    kw = dict(temperature=TEMPERATURE, vocab_size=V, seed=seed, offset=offset, backend=backend)
    weight = MIXTURE_WEIGHT
    scalar = dict(kw)
    if per_row:
        rows = lambda v, dtype=torch.float64: torch.full((B,), v, dtype=dtype, device=D.device)  # noqa: E731
        kw.update(temperature=rows(TEMPERATURE), top_k=rows(0, torch.int64), top_p=rows(1.0))
        weight = rows(MIXTURE_WEIGHT)

    def draft():
        return apd_ext.sample_draft(D, **kw)

    def accept(tokens):
        return apd_ext.mixture_accept(D, A, tokens, mixture_weight=weight, **kw)

    tokens = draft()[0]
    if not bool(((tokens >= 0) & (tokens < V)).all()):
        raise RuntimeError(f"{backend}: sample_draft tokens outside [0, {V})")
    num_accepted = accept(tokens)[0]
    if not bool(((num_accepted >= 1) & (num_accepted <= K)).all()):
        raise RuntimeError(f"{backend}: num_accepted {num_accepted.tolist()} outside [1, {K}]")
    if per_row:
        want = apd_ext.sample_draft(D, **scalar)[0]
        n_want = apd_ext.mixture_accept(D, A, want, mixture_weight=MIXTURE_WEIGHT, **scalar)[0]
        if not (torch.equal(tokens, want) and torch.equal(num_accepted, n_want)):
            raise RuntimeError(f"{provider}: per-row knobs give other tokens than the same scalars")
    return with_injection(provider, {
        "sample_draft": draft,
        "mixture_accept": lambda: accept(tokens),
        "draft+accept": lambda: accept(draft()[0]),
    })
