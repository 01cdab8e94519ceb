"""Bad checkpoints, built in tmp_path from the golden tiny Qwen2 / Dream checkpoints: each fails at
load with one CheckpointError (a ValueError) or FileNotFoundError that names the file (and the key
or tensor) and says what was expected; never a raw safetensors / json / torch error, never later."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import golden
from apd_ext.models import HFDllm
from apd_ext.models.checkpoint import INDEX, load_weights
from apd_ext.models.config import CheckpointError, ModelConfig, read_json_object
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.models.transformer import Transformer


@pytest.fixture
def qwen_dir(tmp_path):
    d = tmp_path / "qwen"
    shutil.copytree(golden.path("qwen2_tiny"), d)
    return d


@pytest.fixture
def dream_dir(tmp_path):
    d = tmp_path / "dream"
    shutil.copytree(golden.path("dream_tiny"), d)
    return d


def _fails(runner_cls, path, exc, *patterns):
    """Loading `path` raises exactly `exc` (or a subclass) whose message matches every pattern."""
    with pytest.raises(exc) as info:
        runner_cls.from_pretrained(path)
    for p in patterns:
        assert re.search(p, str(info.value)), (p, str(info.value))
    return str(info.value)


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


# --- .safetensors files ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["empty", "short", "garbage", "lfs_pointer", "truncated", "header_only",
                                  "bad_header_json"])
def test_broken_safetensors_name_the_file(qwen_dir, kind):
    f = qwen_dir / "model.safetensors"
    data = f.read_bytes()
    n = 8 + int.from_bytes(data[:8], "little")
    content = {
        "empty": b"",
        "short": b"\x01\x02\x03",
        "garbage": b"this is not a checkpoint at all " * 20,
        "lfs_pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 1234\n",
        "truncated": data[: len(data) // 2],
        "header_only": data[:n],
        "bad_header_json": (20).to_bytes(8, "little") + b"{not json at all!!!}" + data[n:],
    }[kind]
    f.write_bytes(content)
    expected = {"empty": "too short", "short": "too short", "garbage": "header length", "lfs_pointer": "Git LFS",
                "truncated": "truncated", "header_only": "truncated", "bad_header_json": "not safetensors"}[kind]
    msg = _fails(VerifierRunner, qwen_dir, CheckpointError, re.escape(str(f)), expected)
    assert "safetensors" in msg or "LFS" in msg


def test_header_entry_without_offsets(qwen_dir):
    f = qwen_dir / "model.safetensors"
    header = json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [64]}}).encode()
    f.write_bytes(len(header).to_bytes(8, "little") + header)
    _fails(VerifierRunner, qwen_dir, CheckpointError, re.escape(str(f)), "'model.norm.weight'", "data_offsets")


def test_weights_path_that_is_a_directory(qwen_dir):
    f = qwen_dir / "model.safetensors"
    f.unlink()
    f.mkdir()
    _fails(VerifierRunner, qwen_dir, CheckpointError, re.escape(str(f)), "not a regular file")


def test_missing_and_misshaped_tensors_name_tensor_and_file(qwen_dir):
    f = qwen_dir / "model.safetensors"
    state = load_file(str(f))
    dropped = state.pop("model.layers.1.mlp.up_proj.weight")
    save_file(state, str(f))
    _fails(VerifierRunner, qwen_dir, CheckpointError, r"model\.layers\.1\.mlp\.up_proj\.weight", "missing",
           "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"] = dropped[:, :10].contiguous()
    save_file(state, str(f))
    _fails(VerifierRunner, qwen_dir, CheckpointError, re.escape(str(f)), r"'model\.layers\.1\.mlp\.up_proj\.weight'",
           r"shape \(128, 10\)", r"expects \(128, 64\)")
    state["model.layers.1.mlp.up_proj.weight"] = dropped
    state["model.layers.9.extra.weight"] = torch.zeros(2)
    save_file(state, str(f))
    _fails(VerifierRunner, qwen_dir, CheckpointError, re.escape(str(f)), r"'model\.layers\.9\.extra\.weight'",
           "no parameter")
    del state["model.layers.9.extra.weight"]
    state["model.norm.weight"] = torch.ones(64, dtype=torch.int64)
    save_file(state, str(f))
    _fails(VerifierRunner, qwen_dir, CheckpointError, r"'model\.norm\.weight'", "torch.int64", "floating-point")


# --- sharded checkpoints: model.safetensors.index.json -----------------------------------------------

def _shard(d):
    """Split d's model.safetensors into two shards with an index; returns (weight_map, shard names)."""
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(state)
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for fname, keys in zip(files, (names[::2], names[1::2])):
        save_file({k: state[k] for k in keys}, str(d / fname))
        weight_map.update({k: fname for k in keys})
    (d / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map, files


def test_sharded_loads_and_bad_indexes_name_the_index(qwen_dir):
    weight_map, files = _shard(qwen_dir)
    ref = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"))
    got = VerifierRunner.from_pretrained(qwen_dir)
    assert all(torch.equal(a, b) for a, b in zip(ref.model.parameters(), got.model.parameters()))
    index = qwen_dir / INDEX
    where = re.escape(str(index))
    for doc, patterns in [({"metadata": {}}, ["'weight_map'", "non-empty object"]),
                          ({"weight_map": {}}, ["'weight_map'"]),
                          ({"weight_map": ["a", "b"]}, ["'weight_map'"]),
                          ({"weight_map": {"x": 3}}, [r"weight_map\['x'\]", "shard file name"]),
                          ({"weight_map": {"x": "../elsewhere.safetensors"}}, ["same directory"])]:
        index.write_text(json.dumps(doc))
        _fails(VerifierRunner, qwen_dir, CheckpointError, where, *patterns)
    for raw, pattern in [(b"", "empty"), (b"{oops", "not valid JSON"), (b"[1, 2]", "got a JSON list"),
                         (b"\xff\xfe{}", "not UTF-8")]:
        index.write_bytes(raw)
        _fails(VerifierRunner, qwen_dir, CheckpointError, where, pattern)
    # an index pointing at a shard that is not there
    index.write_text(json.dumps({"weight_map": {**weight_map, "model.norm.weight": "model-gone.safetensors"}}))
    _fails(VerifierRunner, qwen_dir, FileNotFoundError, where, "model-gone.safetensors")
    # an index that places a tensor in a shard which does not hold it
    name = next(n for n, f in weight_map.items() if f == files[0])
    index.write_text(json.dumps({"weight_map": {**weight_map, name: files[1]}}))
    _fails(VerifierRunner, qwen_dir, CheckpointError, where, re.escape(repr(name)), files[1], "does not contain")


# --- config.json -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,pattern", [
    (b"", "empty"), (b"   \n", "empty"), (b"{\"model_type\": \"qwen2\",", "not valid JSON"),
    (b"\x89PNG\r\n\x1a\n garbage", "not UTF-8"), ("{\"model_type\": \"qw\u00e9n2\"}".encode("latin-1"), "not UTF-8"),
    (b"[1, 2, 3]", "got a JSON list"), (b"\"qwen2\"", "got a JSON string"), (b"null", "got a JSON null"),
])
def test_unreadable_config_json_names_the_file(qwen_dir, raw, pattern):
    (qwen_dir / "config.json").write_bytes(raw)
    _fails(VerifierRunner, qwen_dir, CheckpointError, re.escape(str(qwen_dir / "config.json")), pattern,
           "expected a JSON object")


@pytest.mark.parametrize("changes,patterns", [
    ({"hidden_size": "64"}, ["hidden_size", "integer >= 1", "'64'"]),
    ({"hidden_size": 64.0}, ["hidden_size", "integer"]),
    ({"hidden_size": True}, ["hidden_size", "integer"]),
    ({"num_attention_heads": 0}, ["num_attention_heads", "integer >= 1", "got 0"]),
    ({"num_attention_heads": -4}, ["num_attention_heads", ">= 1"]),
    ({"num_key_value_heads": 0}, ["num_key_value_heads", ">= 1"]),
    ({"num_key_value_heads": 3}, ["num_attention_heads 4 must be a multiple of num_key_value_heads 3"]),
    ({"num_attention_heads": 3, "num_key_value_heads": 3}, ["hidden_size 64 must be a multiple of num_attention_heads 3"]),
    ({"hidden_size": 68, "num_attention_heads": 4}, ["head_dim", "17", "even"]),
    ({"vocab_size": 0}, ["vocab_size", ">= 1"]),
    ({"intermediate_size": -1}, ["intermediate_size"]),
    ({"num_hidden_layers": 0}, ["num_hidden_layers", ">= 1"]),
    ({"max_position_embeddings": 0}, ["max_position_embeddings"]),
    ({"rms_norm_eps": -1e-6}, ["rms_norm_eps", "> 0"]),
    ({"rope_theta": "big"}, ["rope_theta", "number"]),
    ({"tie_word_embeddings": "no"}, ["tie_word_embeddings", "true or false"]),
    ({"eos_token_id": 384}, ["eos_token_id 384", r"vocab_size = 384"]),
    ({"eos_token_id": [382, -1]}, ["eos_token_id -1"]),
    ({"eos_token_id": "</s>"}, ["eos_token_id", "token id"]),
    ({"pad_token_id": 1.5}, ["pad_token_id", "integer token id"]),
    ({"dtype": "float64"}, ["float64", "not supported"]),
    ({"model_type": None}, ["model_type"]),
    ({"head_dim": 15}, ["head_dim", "15", "even"]),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, ["rope_scaling", "yarn", "plain RoPE"]),
])
def test_bad_config_values_name_file_and_key(qwen_dir, changes, patterns):
    _edit_config(qwen_dir, **changes)
    _fails(VerifierRunner, qwen_dir, CheckpointError, re.escape(str(qwen_dir / "config.json")), *patterns)


def test_missing_keys_are_listed(qwen_dir):
    cfg = json.loads((qwen_dir / "config.json").read_text())
    del cfg["hidden_size"], cfg["num_hidden_layers"]
    (qwen_dir / "config.json").write_text(json.dumps(cfg))
    _fails(VerifierRunner, qwen_dir, CheckpointError, "config.json: lacks hidden_size, num_hidden_layers")


@pytest.mark.parametrize("mask", [384, 10_000, -1])
def test_mask_token_out_of_vocab_fails_at_load(dream_dir, mask):
    _edit_config(dream_dir, mask_token_id=mask)
    _fails(DllmRunner, dream_dir, CheckpointError, re.escape(str(dream_dir / "config.json")),
           f"mask_token_id {mask} is outside the vocabulary", r"\[0, vocab_size = 384\)")
    _edit_config(dream_dir, mask_token_id="383")
    _fails(DllmRunner, dream_dir, CheckpointError, "mask_token_id must be an integer")


def test_in_memory_adapters_check_their_special_tokens():
    with pytest.raises(CheckpointError, match=r"HFDllm: mask_token_id 384 is outside"):
        HFDllm(lambda ids: ids, vocab_size=384, mask_token_id=384)
    with pytest.raises(CheckpointError, match="HFDllm: mask_token_id is required"):
        HFDllm(lambda ids: ids, vocab_size=384, mask_token_id=None)
    with pytest.raises(CheckpointError, match="HFDllm: vocab_size must be an integer >= 1"):
        HFDllm(lambda ids: ids, vocab_size=0, mask_token_id=0)
    with pytest.raises(CheckpointError, match=r"ModelConfig: num_attention_heads must be an integer >= 1"):
        ModelConfig(model_type="qwen2", vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                    num_attention_heads=0, num_key_value_heads=1)


def test_transformers5_rope_parameters_are_read(qwen_dir):
    """transformers 5 writes rope_theta inside rope_parameters; reading only the top level would
    silently fall back to 10000."""
    cfg = json.loads((qwen_dir / "config.json").read_text())
    cfg.pop("rope_theta")
    cfg["rope_parameters"] = {"rope_theta": 1e6, "rope_type": "default"}
    (qwen_dir / "config.json").write_text(json.dumps(cfg))
    assert ModelConfig.from_pretrained(qwen_dir).rope_theta == 1e6
    cfg["rope_parameters"] = {"rope_theta": 1e6, "rope_type": "llama3", "factor": 8.0}
    (qwen_dir / "config.json").write_text(json.dumps(cfg))
    _fails(VerifierRunner, qwen_dir, CheckpointError, "rope_parameters", "llama3")


def test_read_json_object_and_strict_loading(tmp_path, qwen_dir):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_json_object(tmp_path / "absent.json")
    assert read_json_object(qwen_dir / "config.json")["model_type"] == "qwen2"
    # non-strict loading skips unknown tensors and tolerates missing ones
    config = ModelConfig.from_pretrained(qwen_dir)
    model = Transformer(config)
    state = load_file(str(qwen_dir / "model.safetensors"))
    state.pop("model.norm.weight")
    state["unrelated.weight"] = torch.zeros(3)
    save_file(state, str(qwen_dir / "model.safetensors"))
    load_weights(model, qwen_dir, strict=False)
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])
    with pytest.raises(CheckpointError, match="unrelated.weight"):
        load_weights(model, qwen_dir)


# --- runner arguments ----------------------------------------------------------------------------------

def test_dllm_without_mask_token_id_names_the_config(dream_dir):
    cfg = json.loads((dream_dir / "config.json").read_text())
    del cfg["mask_token_id"]
    (dream_dir / "config.json").write_text(json.dumps(cfg))
    _fails(DllmRunner, dream_dir, CheckpointError, re.escape(str(dream_dir / "config.json")), "mask_token_id")


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, "bfloat16"])
def test_runner_dtype_must_be_a_float_model_dtype(qwen_dir, dtype):
    with pytest.raises(TypeError, match="dtype must be one of torch.float32"):
        VerifierRunner.from_pretrained(qwen_dir, dtype=dtype)


def test_canvas_of_max_position_embeddings_fits_with_the_scratch_slot(qwen_dir):
    """The runner's scratch slot is no position: a canvas of exactly max_position_embeddings tokens
    sets up, one more does not (the error names the limit)."""
    v = VerifierRunner.from_pretrained(qwen_dir)
    limit = v.config.max_position_embeddings
    v.setup(1, limit)
    assert v.model.cache_len == limit + 1
    with pytest.raises(ValueError, match=f"max length {limit + 1} exceeds max_position_embeddings {limit}"):
        v.setup(1, limit + 1)
