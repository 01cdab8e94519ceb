"""Under tensor parallelism the steady decoding step is still one capturable graph: on 2 gloo CPU
ranks, the step with vocabulary-parallel sampling (and the sharded models' all-reduces) traces with
torch.compile(fullgraph=True) into one graph with no host read or sync (test_capture.py's check),
holds the functional collectives, and gives the eager step's tensors. A CUDA graph captures what
that graph holds (NCCL collectives are capturable); no GPU has run it yet. Also on the block-diffusion
dLLMs of block_models.py (apd, fast_dllm_v2, sdar), in the same spawn."""

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


# block-diffusion dLLMs (block_models.py: Fast-dLLM v2 and SDAR layouts, vocabulary 64): dllm, DecodeConfig knobs
BLOCK_CONFIGS = [
    ("fast", dict(policy="apd", max_lookahead=8, temperature=1.0)),
    ("fast", dict(policy="fast_dllm_v2", threshold=0.3, small_block_size=4, temperature=0.0)),
    ("sdar", dict(policy="sdar", denoising_steps=2, threshold=0.3, temperature=1.0, top_k=5)),
]
BLOCK_P, BLOCK_L = (7, 8), 24


def _capture_one(tp, dllm, verifier, cfg: DecodeConfig, L: int, vocab: int, canvas, prompt_len, eos: int) -> dict:
    """Step 0 eagerly, then the steady step eagerly and traced from the same state: what the graph
    holds and whether it gives the eager step's tensors."""
    from test_capture import assert_capturable

    B = canvas.shape[0]
    step = make_step(cfg, length=L, vocab=vocab, eos=[eos], device="cpu",
                     parallel=tensor_parallel(dllm, verifier, vocab), block=dllm.block_size)
    dllm.setup(B, L)
    verifier.setup(B, L)
    st = State.allocate(B, L, step.verifier_rows, logits_width(verifier), verifier.logits_dtype, "cpu")
    st.fill(canvas, prompt_len, cfg.max_new_tokens, reference.row_seeds(5, B, "cpu"))
    if st.verifier_logits is not None:
        verifier.prefill(st.canvas, st.curr, int(prompt_len.max()), out=st.verifier_logits[:1])
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
    return dict(
        collectives=sorted({t for t in targets if "c10d_functional" in t}),
        partial_op=any("sample_draft_partial" in t for t in targets),
        same=all((a is None and b is None) or torch.equal(a, b) for a, b in zip(want, got))
        and all(torch.equal(a, b) for a, b in zip(after, st.tensors())))


def _rank_capture(tp, configs, block_configs=(), block_paths=None):
    import block_models

    dllm = DllmRunner.from_pretrained(golden.path("dream_tiny"), tp=tp)
    verifier = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), tp=tp, replicate=False)
    out = []
    for policy, kv_window, temperature, top_k, top_p in configs:
        L = P + NEW
        cfg = DecodeConfig(policy=policy, max_new_tokens=NEW, max_lookahead=M, kv_window=kv_window, k=2,
                           temperature=temperature, top_k=top_k, top_p=top_p)
        canvas = torch.full((B, L + 1), 383)
        canvas[:, :P] = torch.randint(0, 381, (B, P), generator=torch.Generator().manual_seed(0))
        out.append(_capture_one(tp, dllm, verifier, cfg, L, V, canvas, torch.tensor([P, P - 2]), 382))
    for name, knobs in block_configs:
        dllm = DllmRunner.from_pretrained(block_paths[name], tp=tp)
        verifier = VerifierRunner.from_pretrained(block_paths["qwen3" if name == "sdar" else "qwen2"], tp=tp,
                                                  replicate=False)
        cfg = DecodeConfig(max_new_tokens=BLOCK_L - min(BLOCK_P), **knobs)
        canvas = torch.full((len(BLOCK_P), BLOCK_L + 1), block_models.MASK)
        canvas[:, : max(BLOCK_P)] = torch.randint(6, block_models.MASK, (len(BLOCK_P), max(BLOCK_P)),
                                                  generator=torch.Generator().manual_seed(0))
        out.append(_capture_one(tp, dllm, verifier, cfg, BLOCK_L, block_models.VOCAB, canvas,
                                torch.tensor(BLOCK_P), block_models.EOS))
    return out


def test_tp_steady_step_is_one_capturable_graph(tmp_path):
    """The Dream-layout configurations, and the block-diffusion steps (exact block cache; native
    fast_dllm_v2 and sdar with the mask token's column on one rank only), in one spawn."""
    import block_models

    paths = block_models.write(tmp_path)
    configs = CONFIGS + [(name, knobs["policy"]) for name, knobs in BLOCK_CONFIGS]
    for rank, results in enumerate(run_ranks(_rank_capture, 2, CONFIGS, BLOCK_CONFIGS, paths)):
        assert len(results) == len(configs)
        for cfg, r in zip(configs, results):
            what = f"rank {rank} {cfg}"
            assert r["same"], f"{what}: the traced step differs from the eager one"
            assert r["partial_op"], f"{what}: no vocabulary-parallel op in the graph"
            assert any("all_gather" in c for c in r["collectives"]), (what, r["collectives"])
            if cfg[0] != "ar":  # the sharded dLLM's all-reduces
                assert any("all_reduce" in c for c in r["collectives"]), (what, r["collectives"])
