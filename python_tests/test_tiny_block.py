"""apd_ext.tiny.train_block: the block-diffusion training mask is Fast-dLLM v2's block_diff_mask, and a
3-step run writes a loadable Fast_dLLM_Qwen checkpoint with a finite loss."""

import json
import math

import pytest
import torch

from apd_ext.models.checkpoint import load_weights
from apd_ext.models.config import ModelConfig
from apd_ext.models.transformer import Transformer
from apd_ext.tiny import train_block as tb


def fast_dllm_block_diff_mask(q, kv, block_size, n):
    """Fast-dLLM v2's block_diff_mask (modeling.py), written out for one (query, key) pair."""
    x0_q, x0_kv = q >= n, kv >= n
    block_q = (q - n) // block_size if x0_q else q // block_size
    block_kv = (kv - n) // block_size if x0_kv else kv // block_size
    block_diagonal = block_q == block_kv and x0_q == x0_kv
    offset_block_causal = block_q > block_kv and x0_kv and not x0_q
    block_causal = block_q >= block_kv and x0_kv and x0_q
    return block_diagonal or offset_block_causal or block_causal


@pytest.mark.parametrize("L,bd", [(8, 2), (12, 4), (10, 4), (6, 1)])
def test_training_mask_is_block_diff_mask(L, bd):
    ref = torch.tensor([[fast_dllm_block_diff_mask(q, k, bd, L) for k in range(2 * L)] for q in range(2 * L)])
    assert torch.equal(tb.block_diff_train_mask(L, bd, 1), ref)
    # two noisy copies: each with x_0 is the same mask, and the copies never see each other
    two = tb.block_diff_train_mask(L, bd, 2)
    for c in range(2):
        idx = torch.cat([torch.arange(c * L, (c + 1) * L), torch.arange(2 * L, 3 * L)])
        assert torch.equal(two[idx][:, idx], ref)
    assert not two[:L, L:2 * L].any() and not two[L:2 * L, :L].any()
    # noisy copies cropped to positions start..L-1: the matching rows and columns of the full mask
    start = bd * ((L // 2) // bd)
    idx = torch.cat([torch.arange(start, L), torch.arange(L, 2 * L)])
    assert torch.equal(tb.block_diff_train_mask(L, bd, 1, start), ref[idx][:, idx])
    # inference: the x_0 half's rule (block-causal, blocks aligned at 0)
    assert torch.equal(tb.block_causal_mask(L, bd), ref[L:, L:])


def test_three_step_run_writes_a_loadable_block_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = tb.BlockConfig(ar_steps=3, steps=3, cont_steps=2, batch_size=4, probe_problems=0, log_every=1, warmup=1,
                         ar_warmup=1, cont_warmup=1)
    out = tmp_path / "block_dllm"
    tb.run(cfg, out, log=lambda s: None)
    mc = ModelConfig.from_pretrained(out)
    assert mc.model_type == "Fast_dLLM_Qwen"
    raw = json.loads((out / "config.json").read_text())
    assert raw["bd_size"] == 16 and raw["architectures"] == ["Fast_dLLM_QwenForCausalLM"]
    assert raw["mask_token_id"] == 2 and raw["max_position_embeddings"] == tb.MAX_POSITIONS
    model = Transformer(mc)
    load_weights(model, out)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).exists()
    info = json.loads((out / "training.json").read_text())
    curve = info["stages"]["block_diffusion"]["loss_curves"]["curve"]
    assert len(curve) == 3 and all(math.isfinite(v) for row in curve for v in row[1:])
    assert all(math.isfinite(v) for _, v in info["stages"]["ar"]["loss_curves"]["causal"])
    assert len(info["stages"]["block_diffusion_cont"]["loss_curves"]["curve"]) == 2
