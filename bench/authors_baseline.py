"""The baseline of the op benchmarks: what the authors' released APD code does per step, in eager PyTorch.

Conventions from ../shared/golden/README.md section 1 (their sampling helper and
`apd_accept_criterion`), written as they compute it: separate passes, every intermediate
materialised, float64 noise.

    draft:  l = D / T (D's dtype); U = rand_like(l, float64); noise = (-log U) ** T;
            x0 = argmax(exp(float64(l)) / noise)          (drafts at temperature T^2, see APD_SPEC)
    accept: D sliced to the verifier's vocabulary; target = argmax(w * D + (1 - w) * A) (no noise);
            a = (x0 == target); a[0] = 1; n = min(sum(cumprod(a)), K)

Their code handles batch size 1 only; here batch rows are vectorised (the same tensor ops on
[B, K, V] instead of [1, K, V]), which on CPU and GPU is at least as fast as looping over rows.
Their implicit top-k 50 draft filter (golden README section 1) is left out, as the benchmarked
kernels run without filters too. No host sync is added; theirs syncs a few times per step.

`python bench/authors_baseline.py` checks both functions against the golden criterion data
(../shared/golden/criterion.safetensors) when it is there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

QWEN_VOCAB = 151936  # Qwen2.5's vocabulary: their criterion slices the dLLM logits to it


def draft(dllm_logits: torch.Tensor, temperature: float = 1.0, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [B, K] draft tokens from [B, K, V] logits; uniform: optional float64 [B, K, V] U."""
    if temperature == 0:
        return dllm_logits.argmax(dim=-1)
    logits = dllm_logits / temperature
    if uniform is None:
        uniform = torch.rand_like(logits, dtype=torch.float64)  # [B, K, V] float64, every step
    noise = (-torch.log(uniform)) ** temperature
    return torch.argmax(torch.exp(logits.to(torch.float64)) / noise, dim=-1)


def accept(dllm_logits: torch.Tensor, verifier_logits: torch.Tensor, draft_tokens: torch.Tensor,
           mixture_weight: float, vocab_size: int = QWEN_VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_accept int64 [B], target int64 [B, K]): the greedy-target acceptance of their code."""
    K = dllm_logits.shape[1]
    dllm = dllm_logits[..., :vocab_size]
    verifier = verifier_logits[..., :vocab_size]
    target_logits = mixture_weight * dllm + (1 - mixture_weight) * verifier  # [B, K, V]
    target = torch.argmax(target_logits, dim=-1)  # [B, K]
    acc = (draft_tokens[:, -K:] == target).to(torch.int64)
    acc[:, 0] = 1  # the first draft token is always accepted
    acc = torch.cumprod(acc, dim=1)
    return acc.sum(dim=1).clamp(max=K), target


def draft_and_accept(dllm_logits, verifier_logits, mixture_weight, temperature=1.0, vocab_size=QWEN_VOCAB):
    """One APD step's sampling work as their code does it: draft, then the acceptance rule."""
    x0 = draft(dllm_logits, temperature)
    return accept(dllm_logits, verifier_logits, x0, mixture_weight, vocab_size)


def check_golden(path: Path) -> int:
    """Compare draft/accept with the authors' recorded outputs; returns the number of mismatches."""
    from safetensors.torch import load_file

    g = load_file(str(path))
    bad = 0
    for case in range(1, 5):
        p = f"case{case}."
        D, A = g[p + "diffusion_logits"], g[p + "verifier_logits"]
        T = float(g[p + "temperature"].item())
        x0 = draft(D, T, uniform=g[p + "uniform"][None])
        bad += not torch.equal(x0[0], g[p + "x0"])
        for w in g["mixture_weights"].tolist():
            key = f"{p}w{round(w * 100):03d}."
            n, target = accept(D, A, g[p + "draft"], w, vocab_size=D.shape[-1])
            bad += not torch.equal(target, g[key + "target_samples"])
            bad += int(n.item()) != int(g[key + "num_accept"].item())
    print(f"authors_baseline vs {path}: {'OK' if bad == 0 else f'{bad} MISMATCHES'}")
    return bad


if __name__ == "__main__":
    # The golden data: APD_EXT_GOLDEN, else ../shared/golden beside the checkout (python_tests/golden.py).
    root = os.environ.get("APD_EXT_GOLDEN") or Path(__file__).resolve().parents[2] / "shared" / "golden"
    golden = Path(root) / "criterion.safetensors"
    if not golden.exists():
        print(f"{golden} not found: nothing to check")
        sys.exit(0)
    sys.exit(1 if check_golden(golden) else 0)
