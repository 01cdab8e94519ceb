"""Tensor parallelism (2 gloo ranks on CPU, python_tests/distributed.py) on the block-diffusion
dLLMs (Fast-dLLM v2, SDAR) and the Qwen3 verifier of block_golden.py: each rank's logits are the
vocabulary slice [lo, hi) of the reference written by the released code, for the full forward and
the cached block path (Qwen3: the causal full forward, prefill and step, its body split over the
ranks: replicate=False). One spawn runs every case."""

from __future__ import annotations

import pytest
import torch

import block_golden as bg
from distributed import run_ranks

ATOL = 2e-5  # fp32; as test_tp_models: the split o_proj / down_proj sums round in another order
BLOCK = [("fastdllm_v2_tiny", "bd4"), ("fastdllm_v2_tiny", "bd8"), ("sdar_tiny", "bs4"), ("sdar_tiny", "bs8")]
QWEN3 = ["untied", "tied"]


def _t(v: int, B: int) -> torch.Tensor:
    return torch.full((B,), v, dtype=torch.int64)


def _rank(tp, block: list, qwen3: list) -> dict:
    from apd_ext.models.runners import DllmRunner, VerifierRunner

    out = {}
    for dataset, name, path, ids, k in block:
        r = DllmRunner.from_pretrained(path, dtype=torch.float32, tp=tp)
        B, S = ids.shape
        bs, sh = r.block_size, int(r.shifted)
        r.setup(B, S)
        full = r.window_logits(ids, _t(0, B), _t(S, B), _t(sh, B), S, S).clone()
        r.setup(B, S)
        r.window_logits(ids, _t(0, B), _t(k * bs, B), _t(sh, B), k * bs, k * bs)
        cached = r.window_logits(ids, _t(k * bs, B), _t((k + 1) * bs, B), _t(k * bs + sh, B), bs, bs).clone()
        out[dataset, name] = {"shard": (r.shard.lo, r.shard.hi), "full": full, "cached": cached}
    for name, path, ids, k in qwen3:
        r = VerifierRunner.from_pretrained(path, dtype=torch.float32, tp=tp, replicate=False)
        B, S = ids.shape
        r.setup(B, S)
        pos = torch.arange(S).expand(B, S)
        mask = torch.arange(S + 1).view(1, 1, 1, -1) <= pos.view(B, 1, S, 1)
        with torch.no_grad():
            full = r.model(ids, pos, mask).clone()
        r.setup(B, S)
        last = r.prefill(ids, _t(k, B), k).clone()
        step = r.step(ids[:, k:], _t(k, B), _t(S - k, B)).clone()
        out["qwen3_tiny", name] = {"shard": (r.shard.lo, r.shard.hi), "full": full, "last": last, "cached": step,
                                   "replicated": r.replicated}
    return out


@pytest.fixture(scope="module")
def ranks():
    block = []
    for dataset, name in BLOCK:
        tensors, _ = bg.reference(dataset)
        block.append((dataset, name, bg.checkpoint(dataset, name), tensors[f"{name}.input_ids"],
                      bg.cached_prefix(dataset, name)))
    tensors, _ = bg.reference("qwen3_tiny")
    qwen3 = [(n, bg.checkpoint("qwen3_tiny", n), tensors[f"{n}.input_ids"], bg.cached_prefix("qwen3_tiny", n))
             for n in QWEN3]
    return run_ranks(_rank, 2, block, qwen3)


@pytest.mark.parametrize("dataset, name", BLOCK + [("qwen3_tiny", n) for n in QWEN3])
def test_each_rank_holds_its_slice_of_the_reference(ranks, dataset, name):
    tensors, _ = bg.reference(dataset)
    want = {"full": tensors[f"{name}.logits"], "cached": tensors[f"{name}.cached_logits"]}
    if dataset == "qwen3_tiny":
        want["last"] = tensors[f"{name}.logits"][:, bg.cached_prefix(dataset, name) - 1]
    shards = [r[dataset, name]["shard"] for r in ranks]
    V = want["full"].shape[-1]
    assert shards[0][0] == 0 and shards[0][1] == shards[1][0] and shards[1][1] == V, shards
    for rank, r in enumerate(ranks):
        got = r[dataset, name]
        lo, hi = got["shard"]
        if dataset == "qwen3_tiny":
            assert got["replicated"] is False
        for key, w in want.items():
            diff = (got[key] - w[..., lo:hi]).abs().max().item()
            assert got[key].shape == w[..., lo:hi].shape
            assert diff <= ATOL, f"{dataset}/{name} rank {rank} {key}: max|diff| {diff:.3e}"
