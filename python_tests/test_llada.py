"""LLaDA checkpoints (model_type "llada": LLaDA's own config keys and tensor names, unshifted logits)
loaded into the native transformer by DllmRunner.from_pretrained, against logits written by LLaDA's
own modelling code (scripts/make_llada_golden.py; python_tests/data/llada_tiny): two small random
checkpoints, `base` (LLaDA-8B's layout with grouped K/V heads) and `tied` (weight tying, q/k/v
biases, an embedding larger than the tokenizer's vocabulary). Also: the config and tensor-name
mapping and its round trip through save_checkpoint, generate with every dLLM-only policy, tensor
parallelism (one world-2 spawn), and the errors for unknown families and broken LLaDA checkpoints."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from apd_ext.decode import generate
from apd_ext.models import HFVerifier
from apd_ext.models.checkpoint import checkpoint_names, save_checkpoint
from apd_ext.models.config import SUPPORTED, CheckpointError, ModelConfig
from apd_ext.models.runners import DllmRunner, VerifierRunner

DATA = Path(__file__).resolve().parent / "data" / "llada_tiny"
NAMES = ("base", "tied")
ATOL, RTOL = 2e-5, 1e-5  # fp32, as the golden Dream test


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "reference.safetensors"))


@pytest.fixture(scope="module")
def runners() -> dict[str, DllmRunner]:
    return {n: DllmRunner.from_pretrained(DATA / n, dtype=torch.float32) for n in NAMES}


def _full(runner: DllmRunner, ids: torch.Tensor) -> torch.Tensor:
    """[B, S, V] logits of the whole canvas ids [B, S] in one window [0, S): D row i = position i."""
    B, S = ids.shape
    runner.setup(B, S)
    z = torch.zeros(B, dtype=torch.int64)
    return runner.window_logits(ids, z, torch.full((B,), S), z, S, S)


def _raw(runner: DllmRunner, ids: torch.Tensor) -> torch.Tensor:
    """[B, S, V]: the model's own logit rows of ids [B, S] (full bidirectional attention), read
    without the runner's window logic (so without its shift convention)."""
    B, S = ids.shape
    runner.setup(B, S)
    mask = (torch.arange(runner.model.cache_slots) < S).view(1, 1, 1, -1).expand(B, 1, 1, -1)
    with torch.no_grad():
        return runner.model(ids, torch.arange(S).expand(B, S), mask)


def _llada_json(name: str) -> dict:
    return json.loads((DATA / name / "config.json").read_text())


def _copy(tmp_path: Path, name: str = "base", **changes) -> Path:
    """A writable copy of a golden checkpoint with config.json keys changed (None deletes)."""
    dst = tmp_path / f"{name}_copy"
    shutil.copytree(DATA / name, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    cfg = _llada_json(name)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# --- logits against LLaDA's own code --------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_logits_match_lladas_own_code(runners, reference, name):
    r = runners[name]
    ids, want = reference[f"{name}.input_ids"], reference[f"{name}.logits"]
    assert not r.shifted and r.family == "llada"
    got = _full(r, ids)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(_raw(r, ids), want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", NAMES)
def test_window_over_the_cache_reads_unshifted_rows(runners, reference, name):
    """A second window [left, S) over the K/V the first call wrote for the same canvas: D row i is
    the logit row of position curr + i itself (no shift), equal to LLaDA's full forward."""
    r = runners[name]
    ids, want = reference[f"{name}.input_ids"], reference[f"{name}.logits"]
    B, S = ids.shape
    _full(r, ids)
    left, curr = torch.tensor([10, 4, 17]), torch.tensor([12, 4, 20])
    D = r.window_logits(ids, left, torch.full((B,), S), curr, 4, S - 4)
    for b in range(B):
        c = int(curr[b])
        torch.testing.assert_close(D[b], want[b, c : c + 4], atol=ATOL, rtol=RTOL)


def test_runner_reads_lladas_special_tokens_and_vocabulary(runners):
    for name, r in runners.items():
        cfg = _llada_json(name)
        assert r.mask_token_id == cfg["mask_token_id"] == r.config.mask_token_id
        assert r.config.eos_ids == [cfg["eos_token_id"]] and r.config.pad_token_id == cfg["pad_token_id"]
        # logits cover the embedding's rows (embedding_size), which may exceed the tokenizer's vocab_size
        assert r.vocab_size == r.logits_width == cfg["embedding_size"]
    assert _llada_json("tied")["vocab_size"] == 200 and runners["tied"].vocab_size == 256


def test_default_dtype_follows_the_config():
    """No dtype key: LLaDA's "precision" amp_bf16 (LLaDA-8B's config.json) loads bfloat16 weights;
    a torch_dtype key wins."""
    assert "torch_dtype" not in _llada_json("base") and _llada_json("base")["precision"] == "amp_bf16"
    assert DllmRunner.from_pretrained(DATA / "base").logits_dtype == torch.bfloat16
    assert DllmRunner.from_pretrained(DATA / "tied").logits_dtype == torch.float32


def test_bf16_logits_stay_close_to_the_reference(reference):
    r = DllmRunner.from_pretrained(DATA / "base", dtype=torch.bfloat16)
    got = _full(r, reference["base.input_ids"]).float()
    torch.testing.assert_close(got, reference["base.logits"], atol=0.1, rtol=0.05)


# --- the mapping and its round trip ---------------------------------------------------------------

def test_config_mapping():
    c = ModelConfig.from_pretrained(DATA / "base")
    want = dict(model_type="llada", vocab_size=256, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0,
                max_position_embeddings=64, tie_word_embeddings=False, attention_bias=False, eos_token_id=251,
                pad_token_id=251, mask_token_id=250, dtype=torch.bfloat16)
    assert {k: getattr(c, k) for k in want} == want
    t = ModelConfig.from_pretrained(DATA / "tied")
    assert (t.tie_word_embeddings, t.attention_bias, t.num_key_value_heads, t.vocab_size) == (True, True, 2, 256)
    # mlp_ratio * d_model when mlp_hidden_size is null; multi_query_attention without n_kv_heads: 1
    d = dict(_llada_json("base"), mlp_hidden_size=None, n_kv_heads=None, multi_query_attention=True)
    c2 = ModelConfig.from_dict(d)
    assert (c2.intermediate_size, c2.num_key_value_heads) == (4 * 48, 1)


# LLaDA-8B-Instruct's config.json (the keys that matter; the others are LLaDA's training settings)
LLADA_8B = {"model_type": "llada", "activation_type": "silu", "alibi": False, "attention_layer_norm": False,
            "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
            "embedding_size": 126464, "eos_token_id": 126081, "include_bias": False, "include_qkv_bias": False,
            "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
            "mask_token_id": 126336, "max_sequence_length": 4096, "mlp_hidden_size": 12288, "mlp_ratio": 4,
            "multi_query_attention": None, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "pad_token_id": 126081,
            "precision": "amp_bf16", "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
            "rope_theta": 500000.0, "scale_logits": False, "use_cache": False, "vocab_size": 126464,
            "weight_tying": False}


def test_llada_8b_config_maps_to_its_published_size():
    """LLaDA-8B's model.safetensors.index.json says total_size 16031162368 bytes (bf16) in 291
    tensors; the mapped config describes exactly that many parameters and tensor names."""
    from apd_ext.models.transformer import Transformer

    c = ModelConfig.from_dict(LLADA_8B)
    assert (c.vocab_size, c.mask_token_id, c.dtype, c.num_key_value_heads) == (126464, 126336, torch.bfloat16, 32)
    assert c.num_parameters() * 2 == 16031162368
    with torch.device("meta"):
        names = checkpoint_names(Transformer(c))
    assert len(names) == 291 and names["model.layers.31.mlp.up_proj.weight"] == \
        "model.transformer.blocks.31.up_proj.weight"


@pytest.mark.parametrize("name", NAMES)
def test_tensor_names_are_lladas(runners, name):
    """Every native parameter maps to a tensor of LLaDA's file, one to one (the tied head aside)."""
    model = runners[name].model
    names = checkpoint_names(model)
    tied = {names[n] for n in model.tied_parameter_names}
    with safe_open(str(DATA / name / "model.safetensors"), framework="pt") as f:
        in_file = set(f.keys())
    assert set(names.values()) - tied == in_file
    assert names["model.layers.0.mlp.gate_proj.weight"] == "model.transformer.blocks.0.ff_proj.weight"
    assert names["model.layers.0.self_attn.o_proj.weight"] == "model.transformer.blocks.0.attn_out.weight"
    assert names["lm_head.weight"] == "model.transformer.ff_out.weight"
    assert ("model.transformer.ff_out.weight" in in_file) == (name == "base")  # weight_tying: no head


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_writes_lladas_format(tmp_path, runners, reference, name):
    r = runners[name]
    out = tmp_path / "saved"
    save_checkpoint(r.model, r.config, out)
    cfg, orig = json.loads((out / "config.json").read_text()), _llada_json(name)
    for key in ("model_type", "d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "embedding_size",
                "vocab_size", "weight_tying", "include_qkv_bias", "mask_token_id", "precision", "block_type"):
        assert cfg[key] == orig[key], key
    assert cfg["torch_dtype"] == "float32" and "hidden_size" not in cfg
    saved, original = load_file(str(out / "model.safetensors")), load_file(str(DATA / name / "model.safetensors"))
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in saved)
    again = DllmRunner.from_pretrained(out)
    assert again.config.dtype == torch.float32 and not again.shifted
    same = ("vocab_size", "hidden_size", "intermediate_size", "num_key_value_heads", "tie_word_embeddings",
            "attention_bias", "mask_token_id", "eos_token_id", "rope_theta", "max_position_embeddings")
    assert all(getattr(again.config, k) == getattr(r.config, k) for k in same)
    ids = reference[f"{name}.input_ids"]
    assert torch.equal(_full(again, ids), _full(r, ids))


def test_llada_config_built_in_code_saves_as_llada(tmp_path):
    """A "llada" ModelConfig made in code (no config.json behind it) writes a complete LLaDA config."""
    from apd_ext.models.transformer import Transformer

    c = ModelConfig(model_type="llada", vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, attention_bias=False, mask_token_id=63,
                    eos_token_id=62, max_position_embeddings=32)
    torch.manual_seed(0)
    save_checkpoint(Transformer(c), c, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (cfg["d_model"], cfg["n_kv_heads"], cfg["block_type"], cfg["rope"], cfg["weight_tying"]) == \
        (16, 1, "llama", True, False)
    r = DllmRunner.from_pretrained(tmp_path / "m")
    assert (r.config.num_key_value_heads, r.mask_token_id, r.vocab_size) == (1, 63, 64)


# --- generate with the dLLM-only policies ----------------------------------------------------------

def _idle_verifier(vocab: int, eos: int) -> HFVerifier:
    """generate takes a verifier; the dLLM-only policies never call it."""
    def never(ids):
        raise AssertionError("a dLLM-only policy ran the verifier")
    return HFVerifier(never, vocab_size=vocab, eos_token_id=eos)


PROMPTS = [[5, 17, 42, 99, 3, 120, 7], [200, 11, 64, 8]]


@pytest.mark.parametrize("spec", ["dllm_fixed:k=1", "dllm_fixed:k=2", "diffusion", "diffusion:diffusion_alg=entropy",
                                  "threshold", "threshold:threshold=0.5,kv_window=none"])
def test_generate_fills_the_answer(runners, spec):
    """Every dLLM-only policy decodes with verifier=None, as with a verifier it never calls."""
    d = runners["base"]
    N = 8
    out = generate(d, None, PROMPTS, spec, max_new_tokens=N, seed=3, eos_token_id=[])
    idle = generate(d, _idle_verifier(d.vocab_size, 251), PROMPTS, spec, max_new_tokens=N, seed=3, eos_token_id=[])
    assert torch.equal(out.sequences, idle.sequences) and out.stats["steps"] == idle.stats["steps"]
    assert out.num_generated.tolist() == [N, N]
    for b, p in enumerate(PROMPTS):
        row = out.sequences[b]
        assert row[: len(p)].tolist() == p
        answer = row[len(p) : len(p) + N]
        assert ((answer >= 0) & (answer < d.vocab_size) & (answer != d.mask_token_id)).all(), answer
    assert out.stats["verifier_forwards"] == 0 and out.stats["dllm_forwards"] >= 1
    if spec == "dllm_fixed:k=2":
        assert out.stats["dllm_forwards"] == N // 2


def test_apd_refuses_a_verifier_that_numbers_tokens_otherwise(runners):
    """No public verifier numbers tokens as LLaDA does: APD (both models) refuses a verifier of
    another vocabulary, even with vocab_size= given; the verifier-alone policy and verifier=None
    for APD are errors of their own."""
    import golden

    d = runners["base"]
    qwen = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"))
    assert qwen.vocab_size != d.vocab_size
    for kw in ({}, {"vocab_size": min(d.vocab_size, qwen.vocab_size)}):
        with pytest.raises(ValueError, match="APD needs a verifier that numbers tokens as LLaDA does"):
            generate(d, qwen, PROMPTS, "apd", max_new_tokens=4, seed=0, eos_token_id=[], **kw)
    with pytest.raises(TypeError, match="runs the verifier"):
        generate(d, None, PROMPTS, "apd", max_new_tokens=4, seed=0)


def test_greedy_k1_reads_position_curr_not_curr_minus_one(runners):
    """dllm_fixed k=1, no cache, whole window, greedy: each step commits argmax of the logit row of
    the first masked position itself (LLaDA's unshifted rows), as a plain loop over full forwards."""
    d = runners["base"]
    N, prompt = 6, PROMPTS[0]
    out = generate(d, None, [prompt], "dllm_fixed:k=1", max_new_tokens=N, seed=0,
                   eos_token_id=[], kv_window=None, max_lookahead=None, temperature=0.0)
    canvas = torch.tensor([prompt + [d.mask_token_id] * N])
    for i in range(N):
        logits = _raw(d, canvas)[0, len(prompt) + i]
        canvas[0, len(prompt) + i] = int(logits.argmax())
    assert out.sequences[0, : len(prompt) + N].tolist() == canvas[0].tolist()


# --- tensor parallelism ----------------------------------------------------------------------------

def _tp_rank(tp, path, ids):
    r = DllmRunner.from_pretrained(path, dtype=torch.float32, tp=tp)
    q = r.model.model.layers[0].self_attn.q_proj.weight
    return {"shard": (r.shard.lo, r.shard.hi), "logits": _full(r, ids), "q_rows": q.shape[0]}


def test_tensor_parallel_slices_concatenate_to_the_reference(reference):
    from distributed import run_ranks

    ids = reference["base.input_ids"]
    ranks = run_ranks(_tp_rank, 2, DATA / "base", ids, timeout=240)
    assert ranks[0]["shard"][0] == 0 and ranks[0]["shard"][1] == ranks[1]["shard"][0] and ranks[1]["shard"][1] == 256
    assert [r["q_rows"] for r in ranks] == [24, 24]  # half of the 4 heads x 12 each
    got = torch.cat([r["logits"] for r in ranks], dim=-1)
    torch.testing.assert_close(got, reference["base.logits"], atol=ATOL, rtol=RTOL)


# --- errors ----------------------------------------------------------------------------------------

def test_unknown_model_type_lists_the_supported_families(tmp_path):
    bad = _copy(tmp_path, model_type="mistral")
    with pytest.raises(CheckpointError) as e:
        DllmRunner.from_pretrained(bad)
    msg = str(e.value)
    assert str(bad / "config.json") in msg and "'mistral'" in msg and SUPPORTED in msg
    for family in ("Dream", "llada", "qwen2", "llama"):
        assert family in msg
    with pytest.raises(CheckpointError, match="not a family apd_ext loads"):
        VerifierRunner.from_pretrained(bad)


def test_llada_directory_is_not_a_verifier():
    with pytest.raises(ValueError, match="'llada' is not a supported verifier"):
        VerifierRunner.from_pretrained(DATA / "base")


def test_missing_mask_token_id_is_refused_not_defaulted(tmp_path):
    """LLaDA's dataclass default (50256, GPT-2's EOS) would be a real token of LLaDA's vocabulary."""
    bad = _copy(tmp_path, mask_token_id=None)
    with pytest.raises(CheckpointError, match=re.escape(str(bad / "config.json")) + ".*mask_token_id is required"):
        DllmRunner.from_pretrained(bad)


def test_missing_tensor_is_named_as_llada_spells_it(tmp_path):
    bad = _copy(tmp_path)
    state = load_file(str(bad / "model.safetensors"))
    del state["model.transformer.blocks.1.up_proj.weight"]
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensors missing .*'model\.transformer\.blocks\.1\.up_proj\.weight'"):
        DllmRunner.from_pretrained(bad)


def test_wrong_shape_is_named_as_llada_spells_it(tmp_path):
    bad = _copy(tmp_path, n_kv_heads=4)
    with pytest.raises(CheckpointError, match=r"'model\.transformer\.blocks\.\d\.[kv]_proj\.weight' has shape"):
        DllmRunner.from_pretrained(bad)


def test_native_names_in_a_llada_directory_are_refused(tmp_path):
    """A file saved with the native (Qwen2) names under a LLaDA config: no tensor matches."""
    bad = _copy(tmp_path)
    r = DllmRunner.from_pretrained(DATA / "base", dtype=torch.float32)
    save_file({n: p.detach().contiguous() for n, p in r.model.named_parameters()}, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="has no parameter in Transformer"):
        DllmRunner.from_pretrained(bad)


@pytest.mark.parametrize("changes, words", [
    ({"block_type": "sequential"}, ["block_type 'sequential' is not supported", "'llama'"]),
    ({"rope": None}, ["rope False (LLaDA's default when the key is absent)"]),
    ({"activation_type": "swiglu"}, ["activation_type 'swiglu'"]),
    ({"layer_norm_type": "default"}, ["layer_norm_type 'default'"]),
    ({"include_bias": True}, ["include_bias True"]),
    ({"attention_layer_norm": True}, ["attention_layer_norm True"]),
    ({"scale_logits": True}, ["scale_logits"]),
    ({"block_group_size": 2}, ["block_group_size 2"]),
    ({"d_model": None}, ["LLaDA config lacks d_model"]),
    ({"n_heads": "4"}, ["n_heads must be an integer"]),
    ({"embedding_size": 128}, ["embedding_size 128 is smaller than vocab_size 256"]),
    ({"multi_query_attention": True}, ["n_kv_heads 2 contradicts multi_query_attention True"]),
    ({"n_heads": 5, "n_kv_heads": 5}, ["hidden_size 48 must be a multiple of num_attention_heads 5",
                                       "d_model = hidden_size"]),
    ({"mask_token_id": 256}, ["mask_token_id 256 is outside the vocabulary", "embedding_size"]),
])
def test_bad_llada_configs_name_file_and_key(tmp_path, changes, words):
    bad = _copy(tmp_path, **changes)
    with pytest.raises(CheckpointError) as e:
        DllmRunner.from_pretrained(bad)
    assert str(bad / "config.json") in str(e.value)
    for w in words:
        assert re.search(re.escape(w), str(e.value)), (w, str(e.value))
