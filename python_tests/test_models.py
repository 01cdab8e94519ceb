"""Model runners: real checkpoint loading and logits against the authors' Dream code (golden) and
transformers' Qwen2ForCausalLM, to fp32 tolerance; checkpoints round-trip; bad checkpoints fail."""

import json
import shutil

import pytest
import torch

import golden
from apd_ext.models.checkpoint import load_weights, save_checkpoint
from apd_ext.models.config import ModelConfig
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.models.transformer import Transformer


@pytest.fixture(scope="module")
def dream():
    return DllmRunner.from_pretrained(golden.path("dream_tiny"))


@pytest.fixture(scope="module")
def qwen():
    return VerifierRunner.from_pretrained(golden.path("qwen2_tiny"))


def _window(runner, ids, left, right, L=48):
    """Raw (unshifted) logits of positions [left, right) through the cached window path."""
    model = runner.model
    pos = torch.arange(left, right).unsqueeze(0)
    mask = (torch.arange(runner.max_len + 1) < right).view(1, 1, 1, -1).expand(1, 1, right - left, -1)
    with torch.no_grad():
        return model(ids[:, left:right], pos, mask)


def test_dream_full_forward_matches_golden(dream):
    t, _ = golden.load("dream_logits.safetensors")
    dream.setup(1, 48)
    for b in range(4):
        got = _window(dream, t["full.input_ids"][b : b + 1], 0, 48)
        torch.testing.assert_close(got, t["full.logits"][b : b + 1], atol=2e-5, rtol=1e-5)


def test_dream_windowed_cache_matches_golden(dream):
    """First call without cache, then a window [left, right) over the stale cache (APD_SPEC)."""
    t, _ = golden.load("dream_logits.safetensors")
    dream.setup(1, 48)
    for i in range(4):
        p = f"window{i}."
        r1, left, r2 = int(t[p + "right_idx_first"]), int(t[p + "left_idx"]), int(t[p + "right_idx_second"])
        torch.testing.assert_close(_window(dream, t[p + "x_first"], 0, r1), t[p + "logits_first"], atol=2e-5, rtol=1e-5)
        got = _window(dream, t[p + "x_second"], left, r2)
        torch.testing.assert_close(got, t[p + "logits_second"], atol=2e-5, rtol=1e-5)


def test_window_logits_are_shifted_rows_of_the_window(dream):
    """D[i] (position curr + i) is the raw logit row at position curr + i - 1 (Dream's shift)."""
    t, _ = golden.load("dream_logits.safetensors")
    ids, curr = t["full.input_ids"][2:3], int(t["full.prompt_len"][2])
    dream.setup(1, 48)
    canvas = torch.cat([ids, torch.full((1, 1), dream.mask_token_id)], 1)
    D = dream.window_logits(canvas, torch.tensor([0]), torch.tensor([48]), torch.tensor([curr]), 5, 48)
    torch.testing.assert_close(D[0], t["full.logits"][2, curr - 1 : curr + 4], atol=2e-5, rtol=1e-5)


def test_qwen2_matches_transformers(qwen):
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2ForCausalLM.from_pretrained(str(golden.path("qwen2_tiny"))).eval()
    ids = torch.randint(0, 381, (2, 30), generator=torch.Generator().manual_seed(0))
    qwen.setup(2, 40)
    pos = torch.arange(30).expand(2, 30)
    mask = (torch.arange(41).view(1, 1, 1, -1) <= pos.view(2, 1, 30, 1))
    with torch.no_grad():
        got = qwen.model(ids, pos, mask)
        want = hf(ids).logits
    torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-5)
    # the cached path: prefill 20 tokens, then 10 more, equals the full forward
    qwen.setup(2, 40)
    last = qwen.prefill(torch.cat([ids, torch.zeros(2, 11, dtype=torch.int64)], 1), torch.tensor([20, 20]), 20)
    torch.testing.assert_close(last, want[:, 19], atol=5e-5, rtol=1e-5)
    step = qwen.step(ids[:, 20:30], torch.tensor([20, 20]), torch.tensor([10, 10]))
    torch.testing.assert_close(step, want[:, 20:30], atol=5e-5, rtol=1e-5)


def test_checkpoint_round_trip_and_shards(tmp_path, qwen):
    save_checkpoint(qwen.model, qwen.config, tmp_path / "one")
    again = VerifierRunner.from_pretrained(tmp_path / "one")
    for (n, a), (_, b) in zip(qwen.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(a, b), n
    # sharded: split the tensors over two files with an index
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "one" / "model.safetensors"))
    names = sorted(state)
    shard = tmp_path / "sharded"
    shard.mkdir()
    shutil.copy(tmp_path / "one" / "config.json", shard / "config.json")
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(shard / fname))
        weight_map.update({k: fname for k in keys})
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = VerifierRunner.from_pretrained(shard, dtype=torch.bfloat16)
    assert sharded.model.lm_head.weight.dtype == torch.bfloat16
    torch.testing.assert_close(sharded.model.lm_head.weight.float(), qwen.model.lm_head.weight, atol=1e-2, rtol=1e-2)


def test_bad_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        VerifierRunner.from_pretrained(tmp_path)
    src = golden.path("qwen2_tiny")
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["hidden_size"] = 32
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        VerifierRunner.from_pretrained(bad)
    with pytest.raises(ValueError, match="not a supported dLLM"):
        DllmRunner.from_pretrained(src)
    with pytest.raises(ValueError, match="not a supported verifier"):
        VerifierRunner.from_pretrained(golden.path("dream_tiny"))
    missing = tmp_path / "missing"
    missing.mkdir()
    shutil.copy(src / "config.json", missing / "config.json")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        VerifierRunner.from_pretrained(missing)


def test_config_reads_both_dtype_spellings():
    base = json.loads((golden.path("qwen2_tiny") / "config.json").read_text())
    base.pop("dtype", None)
    base["torch_dtype"] = "bfloat16"
    assert ModelConfig.from_dict(base).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="lacks"):
        ModelConfig.from_dict({"model_type": "qwen2"})


def test_logits_keep_the_model_dtype_and_fill_the_callers_buffer():
    """No upcast: a bf16 model's logits are bf16. With out= (position-major [K, B, V]) the verifier
    writes into the caller's buffer and returns a view of it, equal to the plain result."""
    v = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), dtype=torch.bfloat16)
    d = DllmRunner.from_pretrained(golden.path("dream_tiny"), dtype=torch.bfloat16)
    ids = torch.randint(0, 381, (2, 30), generator=torch.Generator().manual_seed(2))
    canvas = torch.cat([ids, torch.full((2, 11), 383)], 1)
    d.setup(2, 40)
    assert d.window_logits(canvas, torch.tensor([0, 0]), torch.tensor([30, 28]), torch.tensor([20, 22]), 4,
                           40).dtype == torch.bfloat16
    v.setup(2, 40)
    buf = torch.zeros(7, 2, v.vocab_size, dtype=v.logits_dtype)
    row0 = v.prefill(canvas, torch.tensor([20, 24]), 24, out=buf[:1])
    plain = v.step(ids[:, 20:26], torch.tensor([20, 24]), torch.tensor([6, 5]))
    v.setup(2, 40)
    assert torch.equal(v.prefill(canvas, torch.tensor([20, 24]), 24), row0)
    got = v.step(ids[:, 20:26], torch.tensor([20, 24]), torch.tensor([6, 5]), out=buf[1:])
    assert got.dtype == plain.dtype == torch.bfloat16 and got.shape == (2, 6, v.vocab_size)
    assert got.data_ptr() == buf[1].data_ptr() and got.stride() == (v.vocab_size, 2 * v.vocab_size, 1)
    assert torch.equal(got, plain) and torch.equal(buf[0], row0)
