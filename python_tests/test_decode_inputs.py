"""generate() on bad or edge-case input, as an adversarial user passes it: errors name the argument
(and say what it takes) before any work; limits that must work do."""

import sys

import pytest
import torch

import golden
from apd_ext import DecodeConfig, generate
from apd_ext.decode import graphs
from apd_ext.decode.steps import make_step
from apd_ext.models.runners import DllmRunner, VerifierRunner


@pytest.fixture(scope="module")
def models():
    return (DllmRunner.from_pretrained(golden.path("dream_tiny")),
            VerifierRunner.from_pretrained(golden.path("qwen2_tiny")))


def _prompts(n, length, seed):
    g = torch.Generator().manual_seed(seed)
    return [[381] + torch.randint(0, 381, (length + 3 * i,), generator=g).tolist() for i in range(n)]


def test_diffusion_random_order_rows_equal_single_runs(models):
    """Each row's random unmasking order comes from its own seed, not from row 0's."""
    prompts = _prompts(3, 6, 11)
    kw = dict(policy="diffusion", diffusion_alg="random", diffusion_steps=5, max_new_tokens=10, temperature=1.0,
              eos_token_id=[])
    batch = generate(*models, prompts, seed=torch.tensor([4, 70, 9]), **kw)
    for b, (p, s) in enumerate(zip(prompts, (4, 70, 9))):
        single = generate(*models, [p], seed=s, **kw)
        assert batch.sequences[b, : len(p) + 10].tolist() == single.sequences[0, : len(p) + 10].tolist()
    # the same loop as the other policies: one dLLM forward per step, spans over each whole row,
    # every answer position unmasked once; nothing streamed (tokens are committed out of order)
    chunks = []
    s = generate(*models, prompts, seed=1, stream=chunks.append, **kw).stats
    assert s["dllm_forwards"] == s["steps"] == 5 and s["verifier_forwards"] == 0 and not chunks
    assert s["acceptance_counts"].sum(1).tolist() == [10, 10, 10]
    assert (s["spans"][:, :, 0] == 0).all() and s["spans"][:, :, 1].tolist() == [[len(p) + 10] * 5 for p in prompts]
    # the order does depend on the seed (greedy tokens: only the order differs between seeds)
    greedy = {**kw, "temperature": 0.0}
    outs = {tuple(generate(*models, [prompts[0]], seed=s, **greedy).sequences[0].tolist()) for s in range(4)}
    assert len(outs) > 1


def test_canvas_may_fill_the_models_maximum_length(models):
    d, v = models
    limit = min(d.config.max_position_embeddings, v.config.max_position_embeddings)
    prompt = _prompts(1, limit - 7, 12)[0]  # 1 + limit - 7 tokens
    for policy in ("apd", "ar", "diffusion"):
        out = generate(d, v, [prompt], max_new_tokens=6, policy=policy, seed=1, eos_token_id=[])
        assert out.sequences.shape == (1, limit) and int(out.num_generated[0]) == 6
        assert d.config.max_position_embeddings == limit  # the limit is left as it was
    with pytest.raises(ValueError, match="max_new_tokens.*maximum length"):
        generate(d, v, [prompt], max_new_tokens=7)


def test_kv_window_is_clamped_to_the_canvas(models):
    """kv_window beyond the canvas recomputes the same positions as kv_window = L: same dLLM input
    sizes, same tokens, same captured-step key."""
    d, v = models
    prompt = _prompts(1, 43, 13)[0]  # L = 44 + 6 = 50
    sizes = []
    real = d.window_logits

    def record(canvas, left, right, curr, window, size):
        sizes.append(size)
        return real(canvas, left, right, curr, window, size)

    d.window_logits = record
    try:
        kw = dict(max_new_tokens=6, max_lookahead=2, temperature=1.0, seed=3, eos_token_id=[])
        at_l = generate(d, v, [prompt], kv_window=50, **kw)
        sizes_l, sizes[:] = list(sizes), []
        huge = generate(d, v, [prompt], kv_window=50000, **kw)
    finally:
        del d.window_logits
    assert sizes == sizes_l and max(sizes) <= 50 + 2 * 2 - 1
    assert torch.equal(huge.sequences, at_l.sequences) and torch.equal(huge.stats["spans"], at_l.stats["spans"])
    steps = [make_step(DecodeConfig(kv_window=R, max_new_tokens=6), length=50, vocab=384, eos=[], backend="cpu")
             for R in (50, 50000)]
    assert steps[1].kv_window == 50 and graphs.graph_key(d, v, steps[0], 1) == graphs.graph_key(d, v, steps[1], 1)


def test_seeds(models):
    ids = [_prompts(1, 5, 14)[0]]
    kw = dict(max_new_tokens=5, temperature=1.0)
    with pytest.raises(TypeError, match="seed"):
        generate(*models, ids, seed=1.5, **kw)
    with pytest.raises(TypeError, match="seed"):
        generate(*models, ids, seed=True, **kw)
    with pytest.raises(TypeError, match="seed"):
        generate(*models, ids, seed=torch.tensor([1.0]), **kw)
    with pytest.raises(ValueError, match="seed"):
        generate(*models, ids, seed=2**64, **kw)
    with pytest.raises(ValueError, match="seed"):
        generate(*models, ids * 3, seed=torch.tensor([1, 2]), **kw)
    # 2^63 .. 2^64 - 1 wrap to int64 (the ops take 64-bit seeds); row b of a batch uses seed + b (wrapping)
    top = generate(*models, ids, seed=2**64 - 1, **kw)
    assert torch.equal(top.sequences, generate(*models, ids, seed=-1, **kw).sequences)
    pair = generate(*models, ids * 2, seed=2**64 - 1, **kw)
    assert torch.equal(pair.sequences[1], generate(*models, ids, seed=0, **kw).sequences[0])


def test_prompt_types(models):
    d, v = models
    with pytest.raises(TypeError, match="tokenize it first"):
        generate(d, v, "What is 2 + 3?")
    with pytest.raises(TypeError, match="tokenize it first"):
        generate(d, v, ["What is 2 + 3?"])
    with pytest.raises(TypeError, match="input_ids.*float32"):
        generate(d, v, torch.tensor([[1.0, 2.0]]))
    with pytest.raises(TypeError, match="input_ids.*2.5"):
        generate(d, v, [[1, 2.5]])
    with pytest.raises(TypeError, match="input_ids"):
        generate(d, v, 7)
    with pytest.raises(ValueError, match="input_ids"):
        generate(d, v, [[1, 2], []])
    with pytest.raises(ValueError, match="attention_mask"):
        generate(d, v, torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 2, dtype=torch.bool))
    # a flat list of ids is one prompt, as a 1-D tensor is
    flat = generate(d, v, [381, 5, 9], max_new_tokens=3, seed=2)
    assert torch.equal(flat.sequences, generate(d, v, torch.tensor([381, 5, 9]), max_new_tokens=3, seed=2).sequences)


@pytest.mark.parametrize("knob,value", [("temperature", "0.5"), ("temperature", None), ("mixture_weight", "0.7"),
                                        ("mixture_weight", None), ("top_k", float("nan")), ("top_k", float("inf")),
                                        ("max_new_tokens", 1.5), ("max_new_tokens", None), ("kv_window", 2.5),
                                        ("max_lookahead", "8"), ("policy", "beam")])
def test_bad_knobs_name_the_knob(models, knob, value):
    with pytest.raises((TypeError, ValueError), match=knob):
        generate(*models, [[381, 5]], **{knob: value})


def test_other_arguments_are_checked(models):
    d, v = models
    ids = [[381, 5, 9]]
    with pytest.raises(TypeError, match="mixture_wieght"):
        generate(d, v, ids, mixture_wieght=0.5)
    with pytest.raises(TypeError, match="vocab_size"):
        generate(d, v, ids, vocab_size=100.0)
    with pytest.raises(TypeError, match="eos_token_id"):
        generate(d, v, ids, eos_token_id="</s>")
    with pytest.raises(ValueError, match="compile=True and cuda_graphs=True"):
        generate(d, v, ids, compile=True, cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA device"):
        generate(d, v, ids, policy="diffusion", cuda_graphs=True)


def test_swapped_runners_are_named(models):
    d, v = models
    with pytest.raises(TypeError, match=r"dllm \(the first argument\).*swapped"):
        generate(v, d, [[381, 5]])
    with pytest.raises(TypeError, match="verifier"):
        generate(d, d, [[381, 5]])


def test_compile_without_the_compiled_module_says_so(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "apd_ext.decode.compiled", None)  # import fails
    with pytest.raises(ImportError, match="compile=True needs apd_ext.decode.compiled"):
        generate(*models, [[381, 5]], max_new_tokens=2, compile=True)


def test_huge_top_k_means_no_filter(models):
    """top_k of 2**63 or more (beyond any vocabulary) is no filter, as in the ops: the same tokens as
    top_k=0 (None), through the step objects that call the backends directly."""
    d, v = models
    prompt = _prompts(1, 6, 3)[0]
    kw = dict(max_new_tokens=8, temperature=1.0, seed=4, eos_token_id=[])
    ref = generate(d, v, [prompt], top_k=0, **kw).sequences
    for top_k in (384, 2**63, 2**70):
        assert torch.equal(generate(d, v, [prompt], top_k=top_k, **kw).sequences, ref)


def test_temperature_must_be_finite(models):
    with pytest.raises(ValueError, match="temperature must be finite"):
        generate(*models, [[1, 2, 3]], temperature=float("inf"))
