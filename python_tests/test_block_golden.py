"""The block-diffusion dLLMs (Fast-dLLM v2: model_type "Fast_dLLM_Qwen", shifted logits; SDAR:
"sdar", unshifted) and the Qwen3 verifier, loaded into the native transformer, against logits
written by their released code (scripts/make_{fastdllm_v2,sdar,qwen3}_golden.py;
python_tests/data/{fastdllm_v2_tiny,sdar_tiny,qwen3_tiny}; loaders in block_golden.py):

- the full forward: the released model's rows 0..S-1 of a whole-block canvas with mask tokens
  (block-causal attention; Qwen3 causal) are window_logits(ids, left=0, right=S, curr=shifted,
  window=S, size=S) (Qwen3: the model's forward with a causal mask);
- the cached path: the first cached_k blocks written into the runner's cache by one window, then
  block cached_k + 1 read through it equals the released model's block read through its own
  cache (Qwen3: prefill + step);
- the config mapping (block size, shift, mask id, eos, explicit head_dim) and the variants the
  native transformer does not implement failing at load with CheckpointError naming the key.

Tolerance: max|diff| <= 1e-5 in float32. That is near these models' float32 noise: their heads are
"peaky" (logits up to about 13, so that threshold decoding has confidences over (0, 1)), and the
released SDAR code's own cached path differs from its own full forward by up to 1.0e-5 (bs8).
The generate replays (native policies against the recorded released generate) live elsewhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import block_golden as bg
from apd_ext.models import CheckpointError
from apd_ext.models.runners import DllmRunner, VerifierRunner

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5
BLOCK = [("fastdllm_v2_tiny", "bd4"), ("fastdllm_v2_tiny", "bd8"), ("sdar_tiny", "bs4"), ("sdar_tiny", "bs8")]
QWEN3 = ["untied", "tied"]
FAMILY = {"fastdllm_v2_tiny": ("Fast_dLLM_Qwen", True, "bd_size"), "sdar_tiny": ("sdar", False, "block_size")}


def _t(v: int, B: int) -> torch.Tensor:
    return torch.full((B,), v, dtype=torch.int64)


def _maxdiff(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape and got.dtype == torch.float32, (got.shape, want.shape, got.dtype)
    return (got - want).abs().max().item()


@pytest.fixture(scope="module")
def dllms() -> dict:
    return {(d, n): DllmRunner.from_pretrained(bg.checkpoint(d, n), dtype=torch.float32) for d, n in BLOCK}


@pytest.fixture(scope="module")
def qwen3() -> dict:
    return {n: VerifierRunner.from_pretrained(bg.checkpoint("qwen3_tiny", n), dtype=torch.float32) for n in QWEN3}


def _config(dataset: str, name: str) -> dict:
    return json.loads((bg.checkpoint(dataset, name) / "config.json").read_text())


# --- logits against the released code ---------------------------------------------------------------

@pytest.mark.parametrize("dataset, name", BLOCK)
def test_full_forward_matches_the_released_code(dllms, dataset, name):
    r = dllms[dataset, name]
    tensors, _ = bg.reference(dataset)
    ids, want = tensors[f"{name}.input_ids"], tensors[f"{name}.logits"]
    B, S = ids.shape
    assert S % r.block_size == 0
    r.setup(B, S)
    got = r.window_logits(ids, _t(0, B), _t(S, B), _t(int(r.shifted), B), S, S)
    diff = _maxdiff(got, want)
    assert diff <= ATOL, f"{dataset}/{name}: full forward max|diff| {diff:.3e}"


@pytest.mark.parametrize("dataset, name", BLOCK)
def test_cached_block_matches_the_released_cache(dllms, dataset, name):
    """Blocks [0, k) written by one window (no cache before), then block k read through the
    runner's cache: the released model's rows of block k read through its own cache."""
    r = dllms[dataset, name]
    tensors, _ = bg.reference(dataset)
    ids, want = tensors[f"{name}.input_ids"], tensors[f"{name}.cached_logits"]
    k, bs, sh = bg.cached_prefix(dataset, name), r.block_size, int(r.shifted)
    B, S = ids.shape
    r.setup(B, S)
    r.window_logits(ids, _t(0, B), _t(k * bs, B), _t(sh, B), k * bs, k * bs)
    got = r.window_logits(ids, _t(k * bs, B), _t((k + 1) * bs, B), _t(k * bs + sh, B), bs, bs)
    diff = _maxdiff(got, want)
    assert diff <= ATOL, f"{dataset}/{name}: cached block {k} max|diff| {diff:.3e}"
    # and the same rows of the full forward (the released code's two paths agree to ~1e-5)
    full = tensors[f"{name}.logits"][:, k * bs:(k + 1) * bs]
    assert _maxdiff(got, full) <= ATOL


@pytest.mark.parametrize("name", QWEN3)
def test_qwen3_full_forward_matches_transformers(qwen3, name):
    r = qwen3[name]
    tensors, _ = bg.reference("qwen3_tiny")
    ids, want = tensors[f"{name}.input_ids"], tensors[f"{name}.logits"]
    B, S = ids.shape
    r.setup(B, S)
    pos = torch.arange(S).expand(B, S)
    mask = torch.arange(S + 1).view(1, 1, 1, -1) <= pos.view(B, 1, S, 1)
    with torch.no_grad():
        got = r.model(ids, pos, mask)
    diff = _maxdiff(got, want)
    assert diff <= ATOL, f"qwen3/{name}: full forward max|diff| {diff:.3e}"


@pytest.mark.parametrize("name", QWEN3)
def test_qwen3_prefill_and_step_match_transformers_cache(qwen3, name):
    r = qwen3[name]
    tensors, _ = bg.reference("qwen3_tiny")
    ids, full, want = tensors[f"{name}.input_ids"], tensors[f"{name}.logits"], tensors[f"{name}.cached_logits"]
    k = bg.cached_prefix("qwen3_tiny", name)
    B, S = ids.shape
    r.setup(B, S)
    last = r.prefill(ids, _t(k, B), k)
    assert _maxdiff(last, full[:, k - 1]) <= ATOL
    got = r.step(ids[:, k:], _t(k, B), _t(S - k, B))
    diff = _maxdiff(got, want)
    assert diff <= ATOL, f"qwen3/{name}: cached rows max|diff| {diff:.3e}"


# --- the config mapping ------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, name", BLOCK)
def test_runner_reads_the_block_config(dllms, dataset, name):
    r, cfg = dllms[dataset, name], _config(dataset, name)
    model_type, shifted, key = FAMILY[dataset]
    assert cfg["model_type"] == model_type and r.family == model_type.lower()
    assert r.shifted is shifted and r.block_size == cfg[key]
    assert r.mask_token_id == cfg["mask_token_id"] == 250
    assert r.config.eos_ids == [cfg["eos_token_id"]] and r.vocab_size == 256
    if dataset == "sdar_tiny":  # explicit head_dim, not hidden_size / num_attention_heads
        assert r.config.head_dim == cfg["head_dim"] != cfg["hidden_size"] // cfg["num_attention_heads"]
    else:
        assert r.config.attention_bias  # Fast-dLLM's attention always has q/k/v biases


def test_qwen3_config(qwen3):
    for name, r in qwen3.items():
        cfg = _config("qwen3_tiny", name)
        assert r.config.head_dim == cfg["head_dim"] != cfg["hidden_size"] // cfg["num_attention_heads"]
        assert r.config.attention_bias == cfg["attention_bias"] == (name == "tied")
        assert r.config.tie_word_embeddings == cfg["tie_word_embeddings"] == (name == "tied")


# --- variants the native transformer does not implement ------------------------------------------

def _edited_copy(tmp_path: Path, dataset: str, name: str, **changes) -> Path:
    """A writable copy of a golden checkpoint with config.json keys changed (None deletes)."""
    dst = tmp_path / f"{dataset}_{name}"
    shutil.copytree(bg.checkpoint(dataset, name), dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    cfg = _config(dataset, name)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("dataset, name, key, changes", [
    ("sdar_tiny", "bs4", "use_sliding_window", {"use_sliding_window": True, "sliding_window": 8}),
    ("sdar_tiny", "bs8", "hidden_act", {"hidden_act": "gelu"}),
    ("sdar_tiny", "bs4", "block_size", {"block_size": None}),
    ("sdar_tiny", "bs4", "rope_scaling", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
    ("fastdllm_v2_tiny", "bd4", "layer_types", {"layer_types": ["full_attention", "sliding_attention"]}),
    ("fastdllm_v2_tiny", "bd8", "bd_size", {"bd_size": None}),
    ("fastdllm_v2_tiny", "bd4", "use_sliding_window", {"use_sliding_window": True}),
])
def test_unsupported_block_variant_fails_at_load_naming_the_key(tmp_path, dataset, name, key, changes):
    path = _edited_copy(tmp_path, dataset, name, **changes)
    with pytest.raises(CheckpointError, match=key):
        DllmRunner.from_pretrained(path)


@pytest.mark.parametrize("key, changes", [("use_sliding_window", {"use_sliding_window": True}),
                                          ("hidden_act", {"hidden_act": "gelu_pytorch_tanh"})])
def test_unsupported_qwen3_variant_fails_at_load_naming_the_key(tmp_path, key, changes):
    path = _edited_copy(tmp_path, "qwen3_tiny", "untied", **changes)
    with pytest.raises(CheckpointError, match=key):
        VerifierRunner.from_pretrained(path)


# --- the recorded generate cases (the data the replay tests read) -----------------------------------

@pytest.mark.parametrize("dataset, name", BLOCK)
def test_generate_cases_are_complete(dataset, name):
    cases = bg.generate_cases(dataset, name)
    cfg = _config(dataset, name)
    _, _, key = FAMILY[dataset]
    bs, mask, eos = cfg[key], cfg["mask_token_id"], cfg["eos_token_id"]
    assert len(cases) >= 6 and cases[0].stopped
    lengths = {len(c.prompt) for c in cases}
    assert any(P < bs for P in lengths) and any(P > bs and P % bs for P in lengths)
    assert any(P > bs and P % bs == 0 for P in lengths) and bs not in lengths  # P == bs: see the script
    assert any(n > 1 for c in cases for block in c.commits for n in block)
    for c in cases:
        P = len(c.prompt)
        assert c.prompt.dtype == c.output.dtype == torch.int64
        rewritten = {pos for _, _, pos, _, _ in c.overwrites}
        assert all(c.output[i] == c.prompt[i] for i in range(P) if i not in rewritten)
        if dataset == "fastdllm_v2_tiny":
            assert c.args["block_size"] == bs and c.args["mask_id"] == mask and c.args["stop_token"] == eos
            assert c.args["temperature"] == 0 and not (c.output == mask).any()
        else:
            assert c.args["block_length"] == bs and c.args["mask_id"] == mask
            assert c.args["stopping_criteria_idx"] == [eos] and len(c.output) % bs == 0
            assert {c.args["remasking_strategy"] for c in cases} == {"low_confidence_dynamic", "low_confidence_static"}
        assert min(v for v in c.margins.values() if v is not None) > 1e-5


# --- the native policies replay the released generate functions ------------------------------------


def _answer(tokens: list[int], stops: list[int]) -> list[int]:
    """The answer cut after its first stop token."""
    cut = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
    return tokens[:cut]


@pytest.mark.parametrize("name", bg.DATASETS["fastdllm_v2_tiny"])
def test_fast_dllm_v2_policy_replays_the_released_generate(dllms, name):
    """policy fast_dllm_v2 (greedy) equals Fast-dLLM v2's released `generate` token for token on every
    recorded case: thresholds 0.2..1.0, sub-blocks of 2..8, prompts ending mid-block and at a block's
    end, stops mid-answer. The replay decodes to the end of the released answer's last block (the
    released code decodes whole blocks; a row here ends at prompt + max_new_tokens)."""
    from apd_ext import generate

    dllm = dllms[("fastdllm_v2_tiny", name)]
    for case in bg.generate_cases("fastdllm_v2_tiny", name):
        a, P = case.args, len(case.prompt)
        assert a["block_size"] == dllm.block_size and a["mask_id"] == dllm.mask_token_id
        want = _answer(case.output[P:].tolist(), [a["stop_token"]])
        bs = dllm.block_size  # the released code decodes the last block whole: so does the replay
        n = -(-(P + len(want)) // bs) * bs - P
        out = generate(dllm, None, [case.prompt.tolist()], "fast_dllm_v2", threshold=a["threshold"],
                       small_block_size=a["small_block_size"], max_new_tokens=n, eos_token_id=[a["stop_token"]])
        got = out.sequences[0, P: P + int(out.num_generated[0])].tolist()
        assert got[: len(want)] == want, f"case {case.index} {a}"
        assert (len(got) == len(want)) == (want[-1] == a["stop_token"]) or len(got) == len(want) == n


@pytest.mark.parametrize("name", bg.DATASETS["sdar_tiny"])
def test_sdar_policy_replays_the_released_generate(dllms, name):
    """policy sdar (greedy) equals SDAR's released `block_diffusion_generate` token for token on every
    recorded case (dynamic and static remasking, denoising_steps at and below the block size); where
    the released topk rewrote a committed token (fewer masks left than scheduled), the replay equals
    it up to that position and keeps the committed token there (decode/steps/native.py)."""
    from apd_ext import generate

    dllm = dllms[("sdar_tiny", name)]
    for case in bg.generate_cases("sdar_tiny", name):
        a, P = case.args, len(case.prompt)
        assert a["block_length"] == dllm.block_size and a["mask_id"] == dllm.mask_token_id
        stops = a["stopping_criteria_idx"]
        want = _answer(case.output[P: P + a["gen_length"]].tolist(), stops)
        out = generate(dllm, None, [case.prompt.tolist()], "sdar", threshold=a["confidence_threshold"],
                       denoising_steps=a["denoising_steps"],
                       remasking=a["remasking_strategy"], max_new_tokens=len(case.output) - P, eos_token_id=stops)
        got = out.sequences[0, P: P + int(out.num_generated[0])].tolist()[: len(want)]  # its canvas is whole blocks
        if not case.overwrites:
            assert got == want, f"case {case.index} {a}"
            continue
        first = min(pos for _, _, pos, _, _ in case.overwrites) - P
        assert got[:first] == want[:first], f"case {case.index}: differs before the released overwrite"
        old = next(o for _, _, pos, o, _ in case.overwrites if pos - P == first)
        assert got[first] == old != want[first], f"case {case.index}: the committed token is kept"
