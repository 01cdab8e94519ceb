"""Tensor-parallel model runners on gloo CPU ranks (python_tests/distributed.py): the ranks' logit
slices, concatenated, equal the unsharded runner's (window_logits with and without a KV cache,
prefill, step, out= buffers); each rank reads and holds only its slices of the checkpoint; heads
that do not divide, and a file that is missing or corrupt on one rank only, fail on every rank
alike. Two spawns (world 2, world 3) keep the file's run time down: each checks several cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import golden
from apd_ext.models import HFDllm, HFVerifier
from apd_ext.models.runners import REPLICATE_BELOW, DllmRunner, VerifierRunner, _replicates
from apd_ext.models.config import ModelConfig
from apd_ext.tiny import DLLM_DIR, VERIFIER_DIR
from distributed import run_ranks

ATOL, RTOL = 2e-5, 1e-5  # fp32; the split o_proj / down_proj sums round in another order
N_CASES = 9  # the world-2 cases (fixture world2)


# --- what every case runs (in the parent unsharded, in the ranks sharded) -----------------------

def _inputs(vocab: int, mask_id: int, seed: int) -> dict:
    """Canvases of 2 rows over ids from the whole vocabulary (both ranks' slices), masks after 24."""
    g = torch.Generator().manual_seed(seed)
    canvas = torch.randint(0, vocab, (2, 40), generator=g)
    canvas[:, 24:] = torch.where(torch.rand(2, 16, generator=g) < 0.5, mask_id, canvas[:, 24:])
    return {"canvas": canvas, "tokens": torch.randint(0, vocab, (2, 6), generator=g)}


def _outputs(runner, x: dict) -> dict:
    """Logits of every runner call, [B, ..., logits_width] each."""
    t = torch.tensor
    canvas = x["canvas"]
    runner.setup(2, 40)
    if isinstance(runner, DllmRunner):
        first = runner.window_logits(canvas, t([0, 0]), t([30, 28]), t([20, 22]), 4, 30)  # no cache before
        # a later window over the cache the first call wrote (positions < left come from it)
        cached = runner.window_logits(canvas, t([20, 17]), t([36, 34]), t([26, 24]), 5, 17)
        return {"window": first.clone(), "cached_window": cached.clone()}
    prompt, valid = t([20, 24]), t([6, 5])
    prefill = runner.prefill(canvas, prompt, 24).clone()
    step = runner.step(x["tokens"], prompt, valid).clone()
    runner.setup(2, 40)
    buf = torch.full((7, 2, runner.logits_width), float("nan"), dtype=runner.logits_dtype)
    runner.prefill(canvas, prompt, 24, out=buf[:1])
    viewed = runner.step(x["tokens"], prompt, valid, out=buf[1:])
    assert viewed.data_ptr() == buf[1].data_ptr()
    return {"prefill": prefill, "step": step, "prefill_out": buf[0].clone(), "step_out": viewed.clone()}


def _load(kind: str, path, tp=None, **kw):
    cls = DllmRunner if kind == "dllm" else VerifierRunner
    return cls.from_pretrained(path, tp=tp, **kw)


# --- checkpoints made for the tests ------------------------------------------------------------

def _index_sharded_copy(src: Path, dst: Path) -> Path:
    """The checkpoint at src re-saved as two files listed by model.safetensors.index.json."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    state = load_file(str(src / "model.safetensors"))
    names, weight_map = sorted(state), {}
    for i, keys in enumerate((names[::2], names[1::2])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in keys}, str(dst / fname))
        weight_map.update(dict.fromkeys(keys, fname))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return dst


def _tied_copy(src: Path, dst: Path) -> Path:
    """The verifier at src with tie_word_embeddings (no lm_head tensor; the head is the embedding)."""
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (dst / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(src / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(dst / "model.safetensors"))
    return dst


def _truncated_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    f.chmod(0o644)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return dst


# --- world 2: logits, weights, reads ----------------------------------------------------------

def _count_all_reduces():
    """Patch the functional all_reduce to count its calls; returns (counter list, restore)."""
    import torch.distributed._functional_collectives as funcol

    real, calls = funcol.all_reduce, []

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    funcol.all_reduce = counting
    return calls, lambda: setattr(funcol, "all_reduce", real)


def _record_whole_reads():
    """Patch checkpoint.safe_open so that whole-tensor reads (get_tensor) are logged by name."""
    from apd_ext.models import checkpoint

    real, names = checkpoint.safe_open, []

    class Recording:
        def __init__(self, *a, **kw):
            self.st = real(*a, **kw)

        def __enter__(self):
            self.st.__enter__()
            return self

        def __exit__(self, *exc):
            return self.st.__exit__(*exc)

        def get_tensor(self, name):
            names.append(name)
            return self.st.get_tensor(name)

        def get_slice(self, name):
            return self.st.get_slice(name)

    checkpoint.safe_open = Recording
    return names, lambda: setattr(checkpoint, "safe_open", real)


COMPILED = (3, 6)  # cases whose split forward is also traced whole by torch.compile


def _compiled_outputs(runner, x: dict) -> dict:
    """_outputs with the model's forward traced by torch.compile in one graph (fullgraph: no break
    at the collectives; aot_eager: the traced graph run without code generation)."""
    runner.model.forward = torch.compile(runner.model.forward, backend="aot_eager", fullgraph=True, dynamic=False)
    try:
        return _outputs(runner, x)
    finally:
        del runner.model.forward


def _cases_rank(tp, cases: list, wrong_shape: Path) -> tuple[list, tuple]:
    wrong = _outcome(lambda: DllmRunner.from_pretrained(wrong_shape, tp=tp))
    out = []
    for i, (kind, path, kw, x) in enumerate(cases):
        whole_reads, restore = _record_whole_reads()
        try:
            runner = _load(kind, path, tp, **kw)
        finally:
            restore()
        calls, restore = _count_all_reduces()
        try:
            logits = _outputs(runner, x)
        finally:
            restore()
        params = {n: p.detach().clone() for n, p in runner.model.named_parameters()}
        out.append({"logits": logits, "bytes": runner.weight_bytes(), "params": params,
                    "slices": dict(runner.model.slices), "whole_reads": whole_reads, "all_reduces": len(calls),
                    "shard": (runner.shard.lo, runner.shard.hi, runner.shard.vocab), "width": runner.logits_width,
                    "replicated": getattr(runner, "replicated", False), "vocab_size": runner.vocab_size,
                    "compiled": _compiled_outputs(runner, x) if i in COMPILED else None})
    return out, wrong


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    """(cases, unsharded results, every rank's results) of the world-2 spawn."""
    tmp = tmp_path_factory.mktemp("tp2")
    dream, qwen = golden.path("dream_tiny"), golden.path("qwen2_tiny")
    tiny_x, gold_x = _inputs(410, 2, 0), _inputs(384, 383, 1)
    tied = _tied_copy(qwen, tmp / "tied")
    cases = [  # (kind, path, kwargs, inputs)
        ("dllm", DLLM_DIR, {"vocab_size": 410}, tiny_x),
        ("verifier", VERIFIER_DIR, {"vocab_size": 410}, tiny_x),  # replicate=None: replicated (small)
        ("verifier", VERIFIER_DIR, {"replicate": False}, tiny_x),
        ("dllm", dream, {"vocab_size": 381}, gold_x),  # shared vocabulary < the model's 384 rows
        ("dllm", _index_sharded_copy(dream, tmp / "indexed"), {"vocab_size": 381}, gold_x),
        ("verifier", qwen, {"vocab_size": 381, "replicate": True}, gold_x),
        ("verifier", qwen, {"vocab_size": 381, "replicate": False}, gold_x),
        ("verifier", tied, {"replicate": True}, gold_x),
        ("verifier", tied, {"replicate": False}, gold_x),
    ]
    assert len(cases) == N_CASES
    whole = []
    for kind, path, kw, x in cases:
        runner = _load(kind, path, None, vocab_size=kw.get("vocab_size"))
        whole.append({"runner": runner, "logits": _outputs(runner, x)})
    wrong = tmp / "wrong"  # the golden dLLM with a config that says intermediate_size 256 (it is 128)
    shutil.copytree(dream, wrong)
    (wrong / "config.json").chmod(0o644)
    (wrong / "config.json").write_text(json.dumps(dict(json.loads((dream / "config.json").read_text()),
                                                       intermediate_size=256)))
    ranks = run_ranks(_cases_rank, 2, cases, wrong)
    return cases, whole, [r[0] for r in ranks], [r[1] for r in ranks]


@pytest.mark.parametrize("i", range(N_CASES))
def test_sharded_logits_concatenate_to_the_unsharded(world2, i):
    cases, whole, ranks, _ = world2
    kind, path, kw, _ = cases[i]
    want = whole[i]["logits"]
    for key, w in want.items():
        got = torch.cat([r[i]["logits"][key] for r in ranks], dim=-1)
        torch.testing.assert_close(got, w, atol=ATOL, rtol=RTOL, msg=lambda m: f"{kind} {path} {kw} {key}: {m}")
    shards = [r[i]["shard"] for r in ranks]
    vocab = whole[i]["runner"].vocab_size
    assert shards[0][0] == 0 and shards[0][1] == shards[1][0] and shards[1][1] == vocab
    assert [r[i]["width"] for r in ranks] == [hi - lo for lo, hi, _ in shards]
    assert all(r[i]["vocab_size"] == vocab for r in ranks)


@pytest.mark.parametrize("i", COMPILED)
def test_split_forward_compiles_in_one_graph(world2, i):
    _, _, ranks, _ = world2
    for r in ranks:
        for key, eager in r[i]["logits"].items():
            torch.testing.assert_close(r[i]["compiled"][key], eager)


def test_dllm_and_verifier_slices_cover_the_same_tokens(world2):
    """A pair given one shared vocabulary: each rank's dLLM and verifier logits start at the same
    global token (the last rank's also hold their model's rows past it)."""
    cases, _, ranks, _ = world2
    for r in ranks:
        assert r[0]["shard"] == r[1]["shard"] == r[2]["shard"][:2] + (410,)
        assert r[3]["shard"] == r[5]["shard"] == r[6]["shard"]
        assert r[3]["shard"][2] == 381


@pytest.mark.parametrize("i", range(N_CASES))
def test_each_rank_holds_and_reads_only_its_slices(world2, i):
    """Split parameters concatenate to the unsharded ones, the others are whole on every rank; a
    split tensor is never read whole (get_slice only)."""
    cases, whole, ranks, _ = world2
    model = whole[i]["runner"].model
    tied = model.tied_parameter_names
    for name, full in model.named_parameters():
        spec = ranks[0][i]["slices"].get(name)
        parts = [r[i]["params"][name] for r in ranks]
        if spec is None and name not in tied:
            assert all(torch.equal(p, full) for p in parts), name
        elif spec is not None:
            assert spec[2] == full.shape[spec[0]], name
            assert torch.equal(torch.cat(parts, dim=spec[0]), full), name
    for r in ranks:
        assert not set(r[i]["whole_reads"]) & set(r[i]["slices"]), r[i]["whole_reads"]
    if tied and ranks[0][i]["replicated"]:  # the head is a view of the whole embedding's rows [lo, hi)
        for r in ranks:
            lo, hi, _ = r[i]["shard"]
            assert torch.equal(r[i]["params"]["lm_head.weight"], model.model.embed_tokens.weight[lo:hi])


@pytest.mark.parametrize("i", [0, 3, 6])
def test_sharded_bodies_hold_about_half_the_bytes(world2, i):
    cases, whole, ranks, _ = world2
    full = whole[i]["runner"].weight_bytes()
    assert full == sum(p.numel() * p.element_size() for p in whole[i]["runner"].model.parameters())
    assert all(r[i]["bytes"] < 0.6 * full for r in ranks), ([r[i]["bytes"] for r in ranks], full)
    replicated = sum(p.numel() * p.element_size() for n, p in ranks[0][i]["params"].items()
                     if n not in ranks[0][i]["slices"])
    assert sum(r[i]["bytes"] for r in ranks) == full + replicated  # split tensors sum to the whole


def test_replicated_verifiers_run_no_collective(world2):
    """A replicated body runs no all-reduce in its forwards; a split one runs one after the
    embedding and two per layer in each of its 4 forwards (2 prefill + 2 step)."""
    cases, whole, ranks, _ = world2
    for i, (kind, path, kw, _) in enumerate(cases):
        layers = whole[i]["runner"].config.num_hidden_layers
        replicated = ranks[0][i]["replicated"]
        assert replicated == (kind == "verifier" and kw.get("replicate", True) is not False)
        forwards = 2 if kind == "dllm" else 4
        assert all(r[i]["all_reduces"] == (0 if replicated else forwards * (1 + 2 * layers)) for r in ranks)


def test_wrong_shape_names_file_tensor_and_full_shapes(world2):
    """Shapes are checked as the full model's, not the rank's slice: down_proj (64, 128) in the file
    against the (64, 256) a config with intermediate_size 256 implies (each rank would hold 128 of
    its columns, as many as the file's whole tensor has)."""
    outcomes = world2[3]
    assert all(kind == "TensorParallelError" for kind, _ in outcomes), outcomes
    msg = outcomes[0][1]
    assert "failed on 2 of 2 ranks" in msg and "model.safetensors: tensor 'model.layers.0.mlp.down_proj" in msg, msg
    assert "has shape (64, 128); the model built from config.json expects (64, 256)" in msg, msg
    assert outcomes[1][1] == msg


def test_tied_replicated_bytes_count_the_embedding_once(world2):
    cases, whole, ranks, _ = world2
    emb = whole[7]["runner"].model.model.embed_tokens.weight
    full = whole[7]["runner"].weight_bytes()
    assert full == sum(p.numel() * p.element_size() for p in whole[7]["runner"].model.parameters())
    assert all(r[7]["bytes"] == full for r in ranks)  # whole body, head a view of the embedding rows
    assert all(r[8]["bytes"] < 0.6 * full for r in ranks) and emb.shape[0] == 384


# --- world 3: heads that do not divide, files missing or corrupt on one rank ----------------------

def _outcome(work):
    try:
        return ("ok", work())
    except Exception as e:
        return (type(e).__name__, str(e))


def _failures_rank(tp, dream, qwen, corrupt, missing, x):
    mine = lambda paths: paths[tp.rank]  # noqa: E731
    return {
        "dllm": _outcome(lambda: DllmRunner.from_pretrained(dream, tp=tp)),
        "verifier_split": _outcome(lambda: VerifierRunner.from_pretrained(qwen, tp=tp, replicate=False)),
        "verifier_auto": _outcome(lambda: _outputs(VerifierRunner.from_pretrained(qwen, tp=tp), x)),
        "corrupt": _outcome(lambda: VerifierRunner.from_pretrained(mine(corrupt), tp=tp)),
        "missing": _outcome(lambda: VerifierRunner.from_pretrained(mine(missing), tp=tp)),
        "no_config": _outcome(lambda: VerifierRunner.from_pretrained(mine([qwen, qwen, missing[2].parent]), tp=tp)),
    }


@pytest.fixture(scope="module")
def world3(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp3")
    dream, qwen = golden.path("dream_tiny"), golden.path("qwen2_tiny")
    corrupt = [qwen, _truncated_copy(qwen, tmp / "truncated"), qwen]
    gone = tmp / "nested" / "gone"
    gone.mkdir(parents=True)
    shutil.copy(qwen / "config.json", gone / "config.json")  # config but no weights
    x = _inputs(384, 383, 3)
    want = _outputs(VerifierRunner.from_pretrained(qwen), x)
    return want, run_ranks(_failures_rank, 3, dream, qwen, corrupt, [qwen, qwen, gone], x)


def test_heads_that_do_not_divide_fail_on_every_rank(world3):
    _, ranks = world3
    for r in ranks:
        for case, name in (("dllm", "dream_tiny"), ("verifier_split", "qwen2_tiny")):
            kind, msg = r[case]
            assert kind == "ValueError" and name in msg, r[case]
            assert msg.endswith("num_attention_heads (4) does not divide by the tensor-parallel size 3"), msg
        assert r["dllm"] == ranks[0]["dllm"] and r["verifier_split"] == ranks[0]["verifier_split"]


def test_verifier_whose_heads_do_not_divide_is_replicated_by_default(world3):
    want, ranks = world3
    assert all(r["verifier_auto"][0] == "ok" for r in ranks), [r["verifier_auto"] for r in ranks]
    for key, w in want.items():
        got = torch.cat([r["verifier_auto"][1][key] for r in ranks], dim=-1)
        torch.testing.assert_close(got, w, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("case, rank, words", [("corrupt", 1, "truncated"), ("missing", 2, "no *.safetensors"),
                                               ("no_config", 2, "no config.json")])
def test_a_file_bad_on_one_rank_fails_every_rank_alike(world3, case, rank, words):
    _, ranks = world3
    outcomes = [r[case] for r in ranks]
    assert all(kind == "TensorParallelError" for kind, _ in outcomes), outcomes
    # "loading <the rank's own path> failed on ...": the same text after each rank's path
    reports = [msg[msg.index(" failed on "):] for _, msg in outcomes]
    assert all(rep == reports[0] for rep in reports), reports
    assert reports[0].startswith(" failed on 1 of 3 ranks"), reports[0]
    assert f"(rank {rank}: " in reports[0] and words in reports[0], reports[0]


# --- no spawn ------------------------------------------------------------------------------------

def test_unsharded_runners_report_their_whole_vocabulary():
    d = DllmRunner.from_pretrained(golden.path("dream_tiny"), vocab_size=381)
    assert d.tp is None and d.shard is None and d.logits_width == d.vocab_size == 384
    assert d.weight_bytes() == 4 * d.config.num_parameters()
    hd = HFDllm(lambda ids: ids, vocab_size=50, mask_token_id=3)
    hv = HFVerifier(lambda ids: ids, vocab_size=60)
    assert (hd.logits_width, hv.logits_width) == (50, 60)
    with pytest.raises(ValueError, match="exceeds"):
        DllmRunner.from_pretrained(golden.path("dream_tiny"), vocab_size=385)


def test_default_replication_follows_size_and_divisibility():
    base = ModelConfig.from_pretrained(golden.path("qwen2_tiny"))
    assert _replicates(base, 2) and _replicates(base, 3)
    big = ModelConfig(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                      num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True)
    assert big.num_parameters() > REPLICATE_BELOW  # Qwen2.5-1.5B: 1.54e9
    assert not _replicates(big, 2) and not _replicates(big, 4)  # on 4 ranks each K/V head serves two
    assert _replicates(big, 8)  # 12 query heads do not split over 8 ranks


# --- K/V heads fewer than the ranks (GQA models on many GPUs): replicated, one per rank ---

def _rank_kv_replicated(tp, x):
    dllm = DllmRunner.from_pretrained(golden.path("dream_tiny"), tp=tp)
    verifier = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), tp=tp, replicate=False)
    kv = [layer.self_attn.k_proj.weight.clone() for layer in dllm.model.model.layers]
    return _outputs(dllm, x), _outputs(verifier, x), kv, dllm.model.kv_heads, dllm.weight_bytes()


def test_kv_heads_fewer_than_ranks_are_replicated():
    """The golden pair (4 heads, 2 K/V heads) on 4 ranks: each rank one query head and the K/V head
    it reads (ranks 0-1 head 0, ranks 2-3 head 1); logits concatenate to TP=1's."""
    from apd_ext.parallel import split_kv_heads

    assert [split_kv_heads(4, 2, 4, r) for r in range(4)] == [(1, 0), (1, 0), (1, 1), (1, 1)]
    assert split_kv_heads(32, 8, 16, 5) == (1, 2)  # a 32-head, 8-K/V-head model on 16 GPUs
    assert split_kv_heads(28, 4, 4, 3) == (1, 3)  # Dream-7B on 4 GPUs: split, one each
    with pytest.raises(ValueError, match="num_attention_heads"):
        split_kv_heads(28, 4, 8, 0)  # Dream-7B's 28 query heads do not split over 8
    with pytest.raises(ValueError, match="num_key_value_heads"):
        split_kv_heads(12, 3, 4, 0)  # 3 K/V heads on 4 ranks: a rank's heads would read two
    x = _inputs(384, 383, 5)
    want_d = _outputs(DllmRunner.from_pretrained(golden.path("dream_tiny")), x)
    whole = DllmRunner.from_pretrained(golden.path("dream_tiny"))
    want_v = _outputs(VerifierRunner.from_pretrained(golden.path("qwen2_tiny")), x)
    ranks = run_ranks(_rank_kv_replicated, 4, x)
    d = whole.config.head_dim
    for r, (out_d, _, kv, kv_heads, _) in enumerate(ranks):
        assert kv_heads == 1
        head = r // 2
        for layer, w in zip(whole.model.model.layers, kv):
            assert torch.equal(w, layer.self_attn.k_proj.weight[head * d: (head + 1) * d])
    for want, i in ((want_d, 0), (want_v, 1)):
        for key, w in want.items():
            got = torch.cat([r[i][key] for r in ranks], dim=-1)
            torch.testing.assert_close(got, w, atol=ATOL, rtol=RTOL, msg=lambda m: f"{key}: {m}")
