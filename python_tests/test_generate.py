"""apd_ext.generate: golden replays of the authors' runs, batching, policies, EOS, errors."""

import pytest
import torch

import apd_ext
import golden
from apd_ext.decode.driver import generate
from apd_ext.models.runners import DllmRunner, VerifierRunner

V = 384


@pytest.fixture(scope="module")
def models():
    return (DllmRunner.from_pretrained(golden.path("dream_tiny")),
            VerifierRunner.from_pretrained(golden.path("qwen2_tiny")))


def _replay_noise(t, width):
    """noise_fn handing each step the authors' recorded uniforms (rows past K are unused)."""
    U, km = t["uniform_noise"], t["step_num_masked"]
    starts = torch.cumsum(km, 0) - km

    def noise_fn(step, valid):
        out = torch.full((1, width, V), 0.5, dtype=torch.float64)
        k = int(km[step])
        out[0, :k] = U[int(starts[step]) : int(starts[step]) + k]
        return out

    return noise_fn


@pytest.mark.parametrize("run", golden.runs(), ids=lambda r: r["file"].removesuffix(".safetensors"))
def test_golden_runs_replay_exactly(models, run):
    if "missing" in run:
        pytest.fail(f"golden data missing: {run['missing']} (see python_tests/golden.py)")
    t, meta = golden.load("apd_runs/" + run["file"])
    P = t["input_ids"].shape[1]
    L = run["max_length"]
    width = min(run["max_lookahead"] or L, L - P)
    T = run["temperature"]
    out = generate(*models, t["input_ids"], max_new_tokens=L - P, mixture_weight=run["apd_mixture_weight"],
                   kv_window=run["kv_window"], max_lookahead=run["max_lookahead"], temperature=T,
                   top_k=None if not run["top_k_passed"] else 0, authors_compat=True,
                   noise_fn=_replay_noise(t, width) if T > 0 else None, seed=0)
    s = out.stats
    assert s["acceptance_counts"][0].tolist() == t["acceptance_counts"].tolist()
    assert s["dllm_forwards"] == int(t["num_forward_evals"]) == s["steps"]
    assert s["spans"][0, :, 0].tolist() == t["step_left_idx"].tolist()
    assert s["spans"][0, :, 1].tolist() == t["step_right_idx"].tolist()
    seq, ref = out.sequences[0], t["sequences"][0]
    gen = ref[P:]
    eos_at = (gen == 382).nonzero()
    end = P + (int(eos_at[0]) + 1 if len(eos_at) else len(gen))
    assert seq[:end].tolist() == ref[:end].tolist()
    assert bool(len(eos_at)) == (meta.get("eos_hit") == "True" or run["eos_hit"])


def _prompts(n, length, seed):
    g = torch.Generator().manual_seed(seed)
    return [[381] + torch.randint(0, 381, (length + 3 * i,), generator=g).tolist() for i in range(n)]


@pytest.mark.parametrize("kv_window,max_lookahead", [(4, 8), (None, None), (2, 3)])
def test_batch_rows_equal_single_runs(models, kv_window, max_lookahead):
    prompts = _prompts(3, 10, 1)
    kw = dict(max_new_tokens=12, mixture_weight=0.8, kv_window=kv_window, max_lookahead=max_lookahead, seed=100,
              temperature=1.0)
    batch = generate(*models, prompts, **kw)
    for b, p in enumerate(prompts):
        single = generate(*models, [p], **{**kw, "seed": 100 + b})
        n = int(single.num_generated[0])
        assert int(batch.num_generated[b]) == n
        assert batch.sequences[b, : len(p) + n].tolist() == single.sequences[0, : len(p) + n].tolist()


def test_per_row_seed_tensor_and_padding_mask(models):
    prompts = _prompts(2, 8, 2)
    P = max(len(p) for p in prompts)
    ids = torch.full((2, P), 382)
    mask = torch.zeros(2, P, dtype=torch.bool)
    for b, p in enumerate(prompts):  # left padding
        ids[b, P - len(p):] = torch.tensor(p)
        mask[b, P - len(p):] = True
    a = generate(*models, ids, attention_mask=mask, max_new_tokens=8, seed=torch.tensor([5, 9]), temperature=1.0)
    b = generate(*models, prompts, max_new_tokens=8, seed=torch.tensor([5, 9]), temperature=1.0)
    assert torch.equal(a.sequences, b.sequences)


def test_weight_one_accepts_whole_windows(models):
    out = generate(*models, _prompts(2, 6, 3), max_new_tokens=15, mixture_weight=1.0, kv_window=4, temperature=1.0,
                   max_lookahead=5, seed=1, eos_token_id=[])
    acc = out.stats["acceptance_counts"]
    assert acc[:, :3].tolist() == [[5, 5, 5], [5, 5, 5]]
    assert out.stats["steps"] == 3 and out.num_generated.tolist() == [15, 15]


def test_eos_ends_a_row_and_pads_after_it(models):
    # a tiny vocabulary EOS gets ~2% of the mass: with many rows some stop early
    prompts = _prompts(6, 5, 4)
    out = generate(*models, prompts, max_new_tokens=20, mixture_weight=0.7, seed=3, temperature=1.0)
    stopped = 0
    for b, p in enumerate(prompts):
        n = int(out.num_generated[b])
        gen = out.sequences[b, len(p) : len(p) + n].tolist()
        if 382 in gen:
            stopped += 1
            assert gen.index(382) == n - 1  # nothing committed after the EOS
        assert (out.sequences[b, len(p) + n :] == 382).all()  # pad after the row's end
    assert stopped >= 1


@pytest.mark.parametrize("policy,k", [("ar", 1), ("dllm_fixed", 1), ("dllm_fixed", 3), ("apd", 1)])
def test_policies(models, policy, k):
    out = generate(*models, _prompts(2, 6, 5), max_new_tokens=9, policy=policy, k=k, seed=2, eos_token_id=[],
                   temperature=1.0)
    acc = out.stats["acceptance_counts"]
    assert out.num_generated.tolist() == [9, 9]
    if policy == "ar":
        assert (acc == 1).all() and out.stats["dllm_forwards"] == 0 and out.stats["verifier_forwards"] == 10
    elif policy == "dllm_fixed":
        assert acc[:, 0].tolist() == [k, k] and out.stats["verifier_forwards"] == 0
    assert out.stats["time_s"]["total"] > 0 and out.stats["tokens_per_s"] > 0


def test_stream_receives_every_committed_token(models):
    chunks = []
    prompts = _prompts(2, 6, 6)
    out = generate(*models, prompts, max_new_tokens=10, seed=4, stream=chunks.append, eos_token_id=[],
                   temperature=1.0)
    for b, p in enumerate(prompts):
        streamed = [t for step in chunks for t in step[b]]
        assert streamed == out.sequences[b, len(p) : len(p) + 10].tolist()


def test_bad_input_fails_before_any_work(models, tmp_path):
    d, v = models
    ok = _prompts(1, 4, 7)
    with pytest.raises(ValueError, match="mask token"):
        generate(d, v, [[1, 2, 383]])
    with pytest.raises(ValueError, match="empty batch"):
        generate(d, v, [])
    with pytest.raises(ValueError, match="maximum length"):
        generate(d, v, ok, max_new_tokens=600)
    with pytest.raises(ValueError, match="mixture_weight"):
        generate(d, v, ok, mixture_weight=1.5)
    with pytest.raises(ValueError, match="kv_window"):
        generate(d, v, ok, kv_window=0)
    with pytest.raises(ValueError, match="max_lookahead"):
        generate(d, v, ok, max_lookahead=0)
    with pytest.raises(ValueError, match="policy"):
        generate(d, v, ok, policy="beam")
    with pytest.raises(ValueError, match="temperature"):
        generate(d, v, ok, temperature=-1)
    with pytest.raises(ValueError, match="outside the models' vocabulary"):
        generate(d, v, [[1, 999]])
    with pytest.raises(ValueError, match="vocab_size"):
        generate(d, v, ok, vocab_size=500)


def test_slow_adapter_for_model_objects_matches_native_runners(models):
    """A transformers model in memory works through the slow adapter and gives the same text."""
    transformers = pytest.importorskip("transformers")
    from apd_ext.models.hf_adapter import HFDllm, HFVerifier

    d, v = models
    hf_verifier = transformers.Qwen2ForCausalLM.from_pretrained(str(golden.path("qwen2_tiny"))).eval()

    class DreamAsCallable(torch.nn.Module):  # the native Dream model behind a forward(input_ids) API
        def __init__(self, runner):
            super().__init__()
            self.runner = runner

        def forward(self, ids):
            S = ids.shape[1]
            self.runner.setup(1, S)
            pos = torch.arange(S).unsqueeze(0)
            mask = (torch.arange(S + 1) < S).view(1, 1, 1, -1).expand(1, 1, S, -1)
            return self.runner.model(ids, pos, mask)

    hd = HFDllm(DreamAsCallable(DllmRunner.from_pretrained(golden.path("dream_tiny"))), vocab_size=V,
                mask_token_id=383, eos_token_id=382, pad_token_id=382)
    hv = HFVerifier(hf_verifier, vocab_size=V, eos_token_id=382)
    prompts = _prompts(2, 6, 8)
    kw = dict(max_new_tokens=8, mixture_weight=0.8, kv_window=None, max_lookahead=4, seed=6, temperature=1.0)
    native = generate(d, v, prompts, **kw)
    slow = generate(hd, hv, prompts, **kw)
    assert torch.equal(native.sequences, slow.sequences)


@pytest.mark.parametrize("alg", ["confidence", "entropy", "random"])
def test_diffusion_policy_fills_the_answer(models, alg):
    prompts = _prompts(2, 6, 9)
    out = generate(*models, prompts, max_new_tokens=10, policy="diffusion", diffusion_steps=4,
                   diffusion_alg=alg, seed=5, temperature=1.0)
    assert out.stats["dllm_forwards"] == 4 and out.stats["verifier_forwards"] == 0
    for b, p in enumerate(prompts):
        n = int(out.num_generated[b])
        answer = out.sequences[b, len(p) : len(p) + n]
        assert 1 <= n <= 10 and not (answer == 383).any()  # every kept position was unmasked
        assert (answer[:-1] != 382).all()  # the answer ends at its first EOS
    with pytest.raises(ValueError, match="diffusion_alg"):
        generate(*models, prompts, policy="diffusion", diffusion_alg="best")


def test_different_vocabularies_need_vocab_size(models, tmp_path):
    """A verifier whose head has extra rows (as Dream's 152064 vs Qwen2.5's 151936): an error unless
    the caller names the shared vocabulary, then the same text as the matching pair."""
    from apd_ext.models.checkpoint import save_checkpoint

    d, v = models
    big = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"))
    cfg = big.config
    cfg.vocab_size = V + 16
    from apd_ext.models.transformer import Transformer

    wide = Transformer(cfg)
    with torch.no_grad():
        for (name, p), (_, q) in zip(wide.named_parameters(), big.model.named_parameters()):
            if p.shape == q.shape:
                p.copy_(q)
            else:
                p.zero_()
                p[:V].copy_(q)
    save_checkpoint(wide, cfg, tmp_path / "wide")
    wide_runner = VerifierRunner.from_pretrained(tmp_path / "wide")
    prompts = _prompts(1, 6, 10)
    with pytest.raises(ValueError, match="vocabulary .* differ.*vocab_size"):
        generate(d, wide_runner, prompts, max_new_tokens=6)
    a = generate(d, wide_runner, prompts, max_new_tokens=6, vocab_size=V, seed=1, temperature=1.0)
    b = generate(d, v, prompts, max_new_tokens=6, seed=1, temperature=1.0)
    assert torch.equal(a.sequences, b.sequences)


def test_state_is_updated_in_place_across_steps(models):
    """The step writes its state in place (what a captured CUDA graph needs) without aliasing the
    prompt lengths: counts, steps and lengths stay consistent over a long run."""
    ids = torch.tensor([[5, 9, 17, 33]])
    a = generate(*models, ids, max_new_tokens=24, seed=3, eos_token_id=[], kv_window=4, max_lookahead=6,
                 temperature=1.0)
    assert int(a.num_generated[0]) == 24 and a.stats["steps"] == a.stats["acceptance_counts"].shape[1]
    assert a.stats["acceptance_counts"].sum() == 24
    assert a.stats["peak_memory_bytes"] is None  # CPU


def test_cuda_graphs_need_cuda_and_generated_noise(models):
    ids = torch.tensor([[5, 9, 17]])
    with pytest.raises(ValueError, match="CUDA device"):
        generate(*models, ids, max_new_tokens=4, cuda_graphs=True)
    with pytest.raises(ValueError, match="noise_fn"):
        generate(*models, ids, max_new_tokens=4, cuda_graphs=True, noise_fn=lambda step, valid: None)
    out = generate(*models, ids, max_new_tokens=4, cuda_graphs=False, seed=1, temperature=1.0)  # eager: allowed anywhere
    assert int(out.num_generated[0]) >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("policy", ["apd", "dllm_fixed", "ar"])
@pytest.mark.parametrize("kv_window", [3, None])
def test_cuda_graph_replay_matches_eager(policy, kv_window):
    """Graph replays draw fresh noise each step (the offset tensor advances) and give the same
    tokens, counts and spans as eager mode for the same seed."""
    dllm = DllmRunner.from_pretrained(golden.path("dream_tiny"), device="cuda")
    verifier = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), device="cuda")
    ids = torch.tensor([[5, 9, 17, 33], [7, 8, 9, 10]], device="cuda")
    kw = dict(max_new_tokens=40, seed=torch.tensor([3, 11]), eos_token_id=[], kv_window=kv_window,
              max_lookahead=6, policy=policy, temperature=1.0)
    eager = generate(dllm, verifier, ids, cuda_graphs=False, **kw)
    graph = generate(dllm, verifier, ids, cuda_graphs=True, **kw)
    assert torch.equal(eager.sequences, graph.sequences)
    assert torch.equal(eager.stats["acceptance_counts"], graph.stats["acceptance_counts"])
    if policy != "ar":
        assert torch.equal(eager.stats["spans"], graph.stats["spans"])
    assert graph.stats["steps"] > 3 and "graph_step" in graph.stats["time_s"]
    assert graph.stats["peak_memory_bytes"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("policy", ["apd", "ar"])
def test_cuda_graph_is_reused_across_calls(policy):
    """A second call with the same shapes and knobs replays the first call's graph (no capture)
    on its refilled state; both match eager mode for their own prompts and seeds."""
    dllm = DllmRunner.from_pretrained(golden.path("dream_tiny"), device="cuda", dtype=torch.bfloat16)
    verifier = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), device="cuda", dtype=torch.bfloat16)
    kw = dict(max_new_tokens=40, eos_token_id=[], kv_window=3, max_lookahead=6, policy=policy, temperature=1.0)
    a = torch.tensor([[5, 9, 17, 33], [7, 8, 9, 10]], device="cuda")
    b = torch.tensor([[1, 2, 3, 4], [40, 41, 42, 43]], device="cuda")
    apd_ext.clear_graph_cache()
    first = generate(dllm, verifier, a, seed=3, cuda_graphs=True, **kw)
    second = generate(dllm, verifier, b, seed=5, cuda_graphs=True, **kw)
    assert first.stats["cuda_graph"] == "captured" and second.stats["cuda_graph"] == "reused"
    for ids, seed, out in ((a, 3, first), (b, 5, second)):
        eager = generate(dllm, verifier, ids, seed=seed, cuda_graphs=False, **kw)
        assert torch.equal(eager.sequences, out.sequences)
        assert torch.equal(eager.stats["acceptance_counts"], out.stats["acceptance_counts"])
    apd_ext.clear_graph_cache()


@pytest.mark.parametrize("spec", ["apd", "apd:kv_window=none,max_lookahead=none", "dllm_fixed:k=3",
                                  "dllm_fixed:k=1,kv_window=none,max_lookahead=none", "ar",
                                  "diffusion:diffusion_steps=8", "apd:authors_compat=1"])
def test_canvas_length_does_not_change_tokens(models, spec):
    """A canvas longer than prompt + max_new_tokens gives the same rows, counts and forwards (rows
    end at their prompt + max_new_tokens); out-of-range lengths are refused."""
    prompts = _prompts(2, 9, 4)
    kw = dict(max_new_tokens=14, seed=9, temperature=1.0)
    base = generate(*models, prompts, spec, **kw)
    P = max(map(len, prompts))
    for length in (P + 14, P + 14 + 29):
        long = generate(*models, prompts, spec, canvas_length=length, **kw)
        assert long.sequences.shape[1] == length
        assert torch.equal(long.num_generated, base.num_generated)
        for b, p in enumerate(prompts):
            end = len(p) + int(base.num_generated[b])
            assert long.sequences[b, :end].tolist() == base.sequences[b, :end].tolist()
        assert long.stats["dllm_forwards"] == base.stats["dllm_forwards"]
    limit = models[0].config.max_position_embeddings
    for bad in (P + 13, limit + 1, 30.0):
        with pytest.raises(ValueError, match="canvas_length"):
            generate(*models, prompts, spec, canvas_length=bad, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_shared_across_prompt_lengths_with_one_canvas_length():
    """Prompts of different lengths on one canvas_length replay one captured graph (what the
    harness does for lm-eval's requests), each equal to eager mode."""
    dllm = DllmRunner.from_pretrained(golden.path("dream_tiny"), device="cuda")
    verifier = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), device="cuda")
    kw = dict(max_new_tokens=24, eos_token_id=[], kv_window=3, max_lookahead=6, temperature=1.0, canvas_length=64)
    apd_ext.clear_graph_cache()
    outs = [generate(dllm, verifier, [list(range(5, 5 + n))], seed=n, cuda_graphs=True, **kw) for n in (4, 11, 17)]
    assert [o.stats["cuda_graph"] for o in outs] == ["captured", "reused", "reused"]
    for n, out in zip((4, 11, 17), outs):
        eager = generate(dllm, verifier, [list(range(5, 5 + n))], seed=n, cuda_graphs=False, **kw)
        assert torch.equal(eager.sequences, out.sequences)
    apd_ext.clear_graph_cache()
