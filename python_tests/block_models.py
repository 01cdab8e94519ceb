"""Small random block-diffusion dLLMs and verifiers written to disk in their own formats, for the
decoding tests (the golden checkpoints of the released code are in python_tests/block_golden.py).

    paths = block_models.write(tmp_path)   # {"fast": ..., "sdar": ..., "qwen2": ..., "qwen3": ...}

"fast": model_type "Fast_dLLM_Qwen" (shifted logits, q/k/v biases, bd_size 8); "sdar": model_type
"sdar" (unshifted, explicit head_dim 16 != hidden / heads, q/k norms, block_size 4); "qwen2" and
"qwen3" verifiers of the same 64-token vocabulary. Weights are drawn with a large enough spread
that the models are confident sometimes (threshold rules commit several tokens in some steps).
"""

from __future__ import annotations

from pathlib import Path

import torch

from apd_ext.models.checkpoint import save_checkpoint
from apd_ext.models.config import ModelConfig
from apd_ext.models.transformer import Transformer

VOCAB, MASK, EOS = 64, 63, 5

SPECS = {
    "fast": dict(model_type="Fast_dLLM_Qwen", mask_token_id=MASK, extra={"bd_size": 8}),
    "sdar": dict(model_type="sdar", mask_token_id=MASK, attention_bias=False, head_dim=16, extra={"block_size": 4}),
    "qwen2": dict(model_type="qwen2"),
    "qwen3": dict(model_type="qwen3", attention_bias=False, head_dim=16),
}


def build(name: str, seed: int = 0) -> tuple[Transformer, ModelConfig]:
    """The model `name` of SPECS with random weights (fp32)."""
    torch.manual_seed(seed)
    c = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256, eos_token_id=EOS, pad_token_id=EOS,
                    **SPECS[name])
    m = Transformer(c)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.normal_(0.0, 0.3 if p.dim() == 2 else 0.1)
            if n.endswith("norm.weight"):
                p.add_(1.0)
        if c.mask_token_id is not None:
            m.lm_head.weight[c.mask_token_id].zero_()  # a trained dLLM never predicts its mask token
    return m.eval(), c


def write(root: Path, names=tuple(SPECS)) -> dict[str, Path]:
    """Write each model of `names` to root/<name>; returns name -> path."""
    out = {}
    for i, name in enumerate(names):
        m, c = build(name, seed=i)
        save_checkpoint(m, c, Path(root) / name)
        out[name] = Path(root) / name
    return out
