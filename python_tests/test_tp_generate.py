"""Tensor-parallel decoding end to end: `generate` on 2 gloo CPU processes (both runners sharded or
the verifier replicated) gives the same tokens, acceptance counts and forward counts as one process,
for apd, dllm_fixed and ar, greedy and sampled, per-row knobs, one prompt and a ragged batch, on the bundled tiny
pair and on the golden Dream/Qwen2 checkpoints. Every rank returns the same output (and
APD_EXT_TP_CHECK=1 checks after each step that they agree)."""

from __future__ import annotations

import os

import pytest
import torch

import golden
from apd_ext import generate
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.tiny import ASSETS
from distributed import run_ranks

# (policy spec, knobs): greedy and sampled; filters on a sampled one
CASES = [
    ("apd", {}),
    ("apd:kv_window=none,max_lookahead=none", {"temperature": 1.0}),
    ("apd:mixture_weight=0.5,kv_window=2,max_lookahead=4", {"temperature": 0.8, "top_k": 20, "top_p": 0.9}),
    ("dllm_fixed:k=2", {"temperature": 1.0}),
    ("threshold:threshold=0.7,block_length=4", {"temperature": 1.0}),
    ("ar", {}),
    ("ar", {"temperature": 1.0, "top_p": 0.8}),
    # per-row knobs (lists cut to the batch): a greedy unfiltered row beside a sampled filtered one,
    # then sampled rows none of which filters (the global threshold searches are skipped)
    ("apd:kv_window=2,max_lookahead=4", {"temperature": [0.0, 0.9], "top_k": [0, 20], "top_p": [1.0, 0.9],
                                         "mixture_weight": [0.5, 0.9]}),
    ("apd", {"temperature": [1.0, 0.7], "mixture_weight": [0.7, 0.3]}),
]


def _paths(pair: str):
    if pair == "tiny":
        return ASSETS / "dllm", ASSETS / "verifier"
    return golden.path("dream_tiny"), golden.path("qwen2_tiny")


def _prompts(pair: str):
    """[one prompt], [a ragged batch of two] as token lists of the pair's vocabulary."""
    g = torch.Generator().manual_seed(5)
    hi = 300 if pair == "tiny" else 380  # below the special tokens of both pairs
    one = torch.randint(3, hi, (7,), generator=g).tolist()
    two = torch.randint(3, hi, (4,), generator=g).tolist()
    return [[one], [one, two]]


def _decode(dllm, verifier, pair: str, cases=CASES):
    out = []
    for prompts in _prompts(pair):
        for spec, knobs in cases:
            knobs = {k: v[: len(prompts)] if isinstance(v, list) else v for k, v in knobs.items()}
            r = generate(dllm, verifier, prompts, spec, seed=11, max_new_tokens=12, eos_token_id=[], **knobs)
            s = r.stats
            out.append((spec, len(prompts), r.sequences, r.num_generated, s["acceptance_counts"], s["steps"],
                        s["dllm_forwards"], s["verifier_forwards"]))
    return out


def _rank_decode(tp, pair: str, replicate, cases=CASES):
    os.environ["APD_EXT_TP_CHECK"] = "1"
    d, v = _paths(pair)
    dllm = DllmRunner.from_pretrained(d, tp=tp)
    verifier = VerifierRunner.from_pretrained(v, tp=tp, replicate=replicate)
    assert dllm.logits_width < dllm.vocab_size  # each rank really holds a slice
    return _decode(dllm, verifier, pair, cases)


@pytest.mark.parametrize("pair, replicate", [("tiny", False), ("tiny", True), ("golden", None)])
def test_tp2_generate_equals_tp1(pair, replicate):
    d, v = _paths(pair)
    want = _decode(DllmRunner.from_pretrained(d), VerifierRunner.from_pretrained(v), pair)
    results = run_ranks(_rank_decode, 2, pair, replicate)
    for rank, got in enumerate(results):
        for g, w in zip(got, want):
            what = f"rank {rank}, {w[0]}, batch {w[1]}"
            assert torch.equal(g[2], w[2]), f"{what}: sequences differ\n{g[2]}\n{w[2]}"
            assert torch.equal(g[3], w[3]), f"{what}: num_generated differ"
            assert torch.equal(torch.as_tensor(g[4]), torch.as_tensor(w[4])), f"{what}: acceptance counts differ"
            assert g[5:] == w[5:], f"{what}: step / forward counts differ: {g[5:]} vs {w[5:]}"


def test_tp4_with_kv_heads_fewer_than_ranks_equals_tp1():
    """4 ranks on the golden pair (2 K/V heads: each held by two ranks), both models split."""
    cases = [CASES[1], CASES[2], CASES[5]]
    d, v = _paths("golden")
    want = _decode(DllmRunner.from_pretrained(d), VerifierRunner.from_pretrained(v), "golden", cases)
    for rank, got in enumerate(run_ranks(_rank_decode, 4, "golden", False, cases)):
        for g, w in zip(got, want):
            what = f"rank {rank}, {w[0]}, batch {w[1]}"
            assert torch.equal(g[2], w[2]) and torch.equal(g[3], w[3]), f"{what}: sequences differ"
            assert torch.equal(torch.as_tensor(g[4]), torch.as_tensor(w[4])), f"{what}: acceptance counts differ"


def _rank_disagree(tp, first: int):
    os.environ["APD_EXT_TP_CHECK"] = "1"
    dllm = DllmRunner.from_pretrained(ASSETS / "dllm", tp=tp)
    verifier = VerifierRunner.from_pretrained(ASSETS / "verifier", tp=tp)
    # a broken setup: rank 1 alone ends rows at the first token it commits, so the ranks' canvases
    # part at step 0 (the combined sampling itself cannot disagree: every rank combines the same partials)
    generate(dllm, verifier, _prompts("tiny")[0], "apd", seed=0, max_new_tokens=12,
             eos_token_id=[first] if tp.rank == 1 else [])


def test_debug_check_catches_ranks_that_disagree():
    from distributed import RankFailed

    prompts = _prompts("tiny")[0]
    out = generate(DllmRunner.from_pretrained(ASSETS / "dllm"), VerifierRunner.from_pretrained(ASSETS / "verifier"),
                   prompts, "apd", seed=0, max_new_tokens=12, eos_token_id=[])
    assert out.stats["acceptance_counts"][0][0] > 1  # step 0 commits more than the first token
    first = int(out.sequences[0, len(prompts[0])])
    with pytest.raises(RankFailed) as e:
        run_ranks(_rank_disagree, 2, first)
    errors = e.value.errors
    assert sorted(errors) == [0, 1], errors
    for kind, msg, _ in errors.values():
        assert kind == "TensorParallelError" and "ranks disagree on the decoded tokens" in msg, msg


BLOCK_CASES = {
    "fast": [("apd:max_lookahead=6", {"temperature": 1.0}), ("fast_dllm_v2:threshold=0.3,small_block_size=4", {}),
             ("threshold:threshold=0.3", {"temperature": 0.8, "top_k": 20})],
    "sdar": [("apd", {"temperature": [1.0, 0.0], "mixture_weight": [0.5, 0.9]}),
             ("sdar:threshold=0.3,denoising_steps=2", {"temperature": 1.0, "top_p": 0.9}), ("dllm_fixed:k=2", {})],
}


def _block_decode(dllm, verifier, kind: str):
    out = []
    for prompts in ([[7, 8, 9, 10, 11]], [[7, 8, 9, 10, 11], [20, 21, 22, 23, 24, 25, 26, 27, 28]]):
        for spec, knobs in BLOCK_CASES[kind]:
            knobs = {k: v[: len(prompts)] if isinstance(v, list) else v for k, v in knobs.items()}
            r = generate(dllm, verifier, prompts, spec, seed=3, max_new_tokens=13, eos_token_id=[], **knobs)
            out.append((spec, len(prompts), r.sequences, r.num_generated, r.stats["acceptance_counts"]))
    return out


def _rank_block(tp, paths: dict, kind: str):
    os.environ["APD_EXT_TP_CHECK"] = "1"
    dllm = DllmRunner.from_pretrained(paths[kind], tp=tp)
    verifier = VerifierRunner.from_pretrained(paths["qwen3" if kind == "sdar" else "qwen2"], tp=tp, replicate=False)
    assert dllm.logits_width < dllm.vocab_size
    return _block_decode(dllm, verifier, kind)


@pytest.mark.parametrize("kind", ["fast", "sdar"])
def test_tp2_block_models_equal_tp1(tmp_path, kind):
    """Block-diffusion dLLMs (Fast-dLLM v2 and SDAR layouts, with qwen2 / qwen3 verifiers: q/k norms,
    an explicit head_dim) split over 2 ranks decode the same tokens as one process."""
    from block_models import write

    paths = {k: str(v) for k, v in write(tmp_path).items()}
    want = _block_decode(DllmRunner.from_pretrained(paths[kind]),
                         VerifierRunner.from_pretrained(paths["qwen3" if kind == "sdar" else "qwen2"]), kind)
    for rank, got in enumerate(run_ranks(_rank_block, 2, paths, kind)):
        for g, w in zip(got, want):
            what = f"rank {rank}, {w[0]}, batch {w[1]}"
            assert torch.equal(g[2], w[2]) and torch.equal(g[3], w[3]), f"{what}: sequences differ\n{g[2]}\n{w[2]}"
            assert torch.equal(torch.as_tensor(g[4]), torch.as_tensor(w[4])), f"{what}: acceptance counts differ"
