"""Shared test helpers: which backends can run here, test logits, and token comparison that
tolerates only float-rounding near-ties."""

from __future__ import annotations

import pytest
import torch

import apd_ext
from apd_ext import backends, ops, reference

TRITON_INTERPRETED = not torch.cuda.is_available()


def backend_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "cuda" or (name == "triton" and not TRITON_INTERPRETED) else "cpu")


def interpreted(name: str) -> bool:
    """True when backend `name` runs through the Triton interpreter (slow: one program at a time)."""
    return name == "triton" and TRITON_INTERPRETED


def backend_params(names=("cpu", "triton", "cuda")):
    """pytest params for the compiled/Triton backends, skipped (with the reason) where they cannot run."""
    out = []
    for name in names:
        dev = backend_device(name)
        ok = dev.type != "cuda" or torch.cuda.is_available()
        ok = ok and name in backends.available(dev.type)
        reason = f"backend {name} is not available on this machine ({dev.type})"
        out.append(pytest.param(name, id=name, marks=() if ok else pytest.mark.skip(reason=reason)))
    return out


def make_logits(kind: str, B: int, K: int, V: int, dtype=torch.float32, generator=None, device="cpu"):
    """[B, K, V] logits: "flat" N(0,1); "peaky" an LLM-like heavy upper tail; "inf" with -inf entries;
    "ties" few distinct values (bf16-like ties everywhere)."""
    g = generator
    x = torch.randn(B, K, V, generator=g)
    if kind == "peaky":
        x = x * 2.5
        hot = torch.randint(0, V, (B, K, max(1, V // 50)), generator=g)
        x.scatter_add_(-1, hot, torch.rand(hot.shape, generator=g) * 12)
    elif kind == "inf":
        x[torch.rand(B, K, V, generator=g) < 0.3] = float("-inf")
    elif kind == "ties":
        x = torch.randint(0, 4, (B, K, V), generator=g).float()
    return x.to(dtype).to(device)


def gumbel(uniform, seed, offset, shape, device) -> torch.Tensor:
    """float32 [B, K, V] Gumbel noise of the reference for explicit uniforms (or None) and the
    seed/offset as the public ops take them."""
    rng = backends.Noise(*ops._rng(seed, offset, shape[0], torch.device(device)), uniform)
    return reference.gumbel_noise(rng, shape, device)


def draft_scores(D, temperature, top_k, top_p, seed, offset, noise=None):
    """float32 [B, K, V] of what sample_draft maximises (reference semantics)."""
    B, K, V = D.shape
    Dc = reference._clean(D, V)
    x = reference.scaled(Dc, temperature)
    keep = x >= reference.filter_threshold(x, top_k, top_p).unsqueeze(-1)
    if temperature > 0:
        x = x + gumbel(noise, seed, offset, (B, K, V), D.device)
    return torch.where(keep, x, float("-inf"))


def assert_same_argmax(tokens, ref_tokens, scores, rtol=2e-5):
    """tokens == ref_tokens, except where both are maxima of `scores` up to float rounding."""
    tokens, ref_tokens, scores = tokens.cpu(), ref_tokens.cpu(), scores.cpu()
    diff = tokens != ref_tokens
    if not diff.any():
        return
    s_tok = torch.gather(scores, -1, tokens.clamp(0, scores.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    s_ref = torch.gather(scores, -1, ref_tokens.unsqueeze(-1)).squeeze(-1)
    gap = (s_ref - s_tok).abs()
    tol = rtol * torch.maximum(s_ref.abs(), torch.ones_like(s_ref))
    bad = diff & ~(gap <= tol)
    assert not bad.any(), (
        f"{int(bad.sum())} tokens differ beyond rounding: got {tokens[bad][:5].tolist()} "
        f"expected {ref_tokens[bad][:5].tolist()} (score gaps {gap[bad][:5].tolist()})"
    )
    assert diff.float().mean() < 0.01, f"too many near-tie differences: {int(diff.sum())}"


def assert_logprobs_close(got, expected, atol=2e-4, rtol=1e-5):
    torch.testing.assert_close(got.cpu(), expected.cpu(), atol=atol, rtol=rtol, equal_nan=True)


def run(op, backend, *args, **kwargs):
    return getattr(apd_ext, op)(*args, backend=backend, **kwargs)


def ref_sample_draft(dllm_logits, **kw):
    """The reference backend (the executable spec) with the public op's keywords and checks."""
    return apd_ext.sample_draft(dllm_logits, backend="reference", **kw)


def ref_mixture_accept(dllm_logits, verifier_logits, draft_tokens, **kw):
    """The reference backend of mixture_accept with the public op's keywords and checks."""
    return apd_ext.mixture_accept(dllm_logits, verifier_logits, draft_tokens, backend="reference", **kw)
