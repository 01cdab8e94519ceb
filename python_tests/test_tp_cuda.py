"""Tensor parallelism on a GPU (skipped without one, like the other CUDA tests): a NCCL group of as
many ranks as there are GPUs (up to 2; one GPU still runs the NCCL collectives and their capture),
the golden pair sharded over it, and generate with the steady step captured as a CUDA graph gives
the eager step's tokens and the unsharded pair's."""

from __future__ import annotations

import pytest
import torch

import golden
from apd_ext import generate
from apd_ext.decode.graphs import clear_graph_cache
from apd_ext.models.runners import DllmRunner, VerifierRunner
from distributed import run_ranks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="tensor parallelism with NCCL needs a GPU")
KW = dict(max_new_tokens=16, max_lookahead=4, kv_window=3, temperature=1.0, top_k=20, eos_token_id=[], seed=3)
PROMPTS = [[5, 17, 33, 9, 120, 44, 7], [8, 250, 31, 2]]


def _decode(dllm, verifier, cuda_graphs: bool):
    clear_graph_cache()
    out = generate(dllm, verifier, PROMPTS, "apd", cuda_graphs=cuda_graphs, **KW)
    return out.sequences, out.stats["acceptance_counts"], out.stats["cuda_graph"]


def _rank_graphs(tp):
    dllm = DllmRunner.from_pretrained(golden.path("dream_tiny"), device=tp.device, tp=tp)
    verifier = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), device=tp.device, tp=tp, replicate=False)
    return _decode(dllm, verifier, False), _decode(dllm, verifier, True)


def test_tp_cuda_graph_equals_eager_and_unsharded():
    world = min(2, torch.cuda.device_count())
    dllm = DllmRunner.from_pretrained(golden.path("dream_tiny"), device="cuda")
    verifier = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), device="cuda")
    want = _decode(dllm, verifier, False)
    for rank, (eager, graph) in enumerate(run_ranks(_rank_graphs, world, backend="nccl")):
        assert graph[2] == "captured", f"rank {rank}: the steady step was not captured ({graph[2]})"
        assert torch.equal(eager[0], graph[0]), f"rank {rank}: graph and eager tokens differ"
        assert torch.equal(eager[0], want[0]), f"rank {rank}: TP={world} tokens differ from one device's"
        assert torch.equal(torch.as_tensor(graph[1]), torch.as_tensor(want[1])), f"rank {rank}: acceptance differs"
