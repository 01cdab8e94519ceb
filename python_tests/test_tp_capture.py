"""Under tensor parallelism the steady decoding step is still one capturable graph: on 2 gloo CPU
ranks, the step with vocabulary-parallel sampling (and the sharded models' all-reduces) traces with
torch.compile(fullgraph=True) into one graph with no host read or sync (test_capture.py's check),
holds the functional collectives, and gives the eager step's tensors. A CUDA graph captures what
that graph holds (NCCL collectives are capturable); no GPU has run it yet."""

from __future__ import annotations

import pytest
import torch

import golden
from apd_ext import reference
from apd_ext.decode import DecodeConfig
from apd_ext.decode.execute import logits_width
from apd_ext.decode.inputs import tensor_parallel
from apd_ext.decode.state import State
from apd_ext.decode.steps import make_step
from apd_ext.models.runners import DllmRunner, VerifierRunner
from distributed import run_ranks

V, B, P, NEW, M = 384, 2, 7, 12, 4
CONFIGS = [  # policy, kv_window, temperature, top_k, top_p
    ("apd", 3, 0.0, 0, 1.0),
    ("apd", None, 1.0, 5, 0.9),
    ("dllm_fixed", 3, 1.0, 0, 1.0),
    ("ar", None, 1.0, 0, 0.8),
]


def _rank_capture(tp, configs):
    from test_capture import assert_capturable

    dllm = DllmRunner.from_pretrained(golden.path("dream_tiny"), tp=tp)
    verifier = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), tp=tp, replicate=False)
    out = []
    for policy, kv_window, temperature, top_k, top_p in configs:
        L = P + NEW
        cfg = DecodeConfig(policy=policy, max_new_tokens=NEW, max_lookahead=M, kv_window=kv_window, k=2,
                           temperature=temperature, top_k=top_k, top_p=top_p)
        step = make_step(cfg, length=L, vocab=V, eos=[382], device="cpu",
                         parallel=tensor_parallel(dllm, verifier, V))
        dllm.setup(B, L)
        verifier.setup(B, L)
        st = State.allocate(B, L, step.verifier_rows, logits_width(verifier), verifier.logits_dtype, "cpu")
        canvas = torch.full((B, L + 1), 383)
        canvas[:, :P] = torch.randint(0, 381, (B, P), generator=torch.Generator().manual_seed(0))
        st.fill(canvas, torch.tensor([P, P - 2]), NEW, reference.row_seeds(5, B, "cpu"))
        if st.verifier_logits is not None:
            verifier.prefill(st.canvas, st.curr, P, out=st.verifier_logits[:1])
        step(st, dllm, verifier, first=True)
        saved = [t.clone() for t in st.tensors()]
        caches = [(t, t.clone()) for r in (dllm, verifier) for layer in r.model.model.layers
                  for t in (layer.self_attn.k_cache, layer.self_attn.v_cache)]
        want = step(st, dllm, verifier)  # eager
        after = [t.clone() for t in st.tensors()]
        for t, s in zip(st.tensors(), saved):
            t.copy_(s)
        for t, s in caches:
            t.copy_(s)
        gm, got = assert_capturable(lambda s: step(s, dllm, verifier), st)
        targets = {str(n.target) for n in gm.graph.nodes}
        out.append(dict(
            collectives=sorted({t for t in targets if "c10d_functional" in t}),
            partial_op=any("sample_draft_partial" in t for t in targets),
            same=all((a is None and b is None) or torch.equal(a, b) for a, b in zip(want, got))
            and all(torch.equal(a, b) for a, b in zip(after, st.tensors()))))
    return out


def test_tp_steady_step_is_one_capturable_graph():
    for rank, results in enumerate(run_ranks(_rank_capture, 2, CONFIGS)):
        for cfg, r in zip(CONFIGS, results):
            what = f"rank {rank} {cfg}"
            assert r["same"], f"{what}: the traced step differs from the eager one"
            assert r["partial_op"], f"{what}: no vocabulary-parallel op in the graph"
            assert any("all_gather" in c for c in r["collectives"]), (what, r["collectives"])
            if cfg[0] != "ar":  # the sharded dLLM's all-reduces
                assert any("all_reduce" in c for c in r["collectives"]), (what, r["collectives"])
