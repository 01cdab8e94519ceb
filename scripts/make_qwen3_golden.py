"""Write the Qwen3 golden data (python_tests/data/qwen3_tiny/) with transformers' own Qwen3 code.

    python scripts/make_qwen3_golden.py [--out python_tests/data/qwen3_tiny]

The reference code is transformers' `Qwen3ForCausalLM` (transformers/models/qwen3/, the .venv's
transformers 5; its SHA-256 are in the metadata). Two small random checkpoints are built by it and
saved by its save_pretrained (Qwen3's tensor names: q_norm / k_norm, RMSNorm over each head's
head_dim):

    untied/  hidden 48, 4 heads of head_dim 16 (not 48 / 4), 2 K/V heads, 2 layers, MLP 96,
             untied head, no attention biases (every released Qwen3), rope_theta 1000000
    tied/    hidden 64, 4 heads of head_dim 24 (not 64 / 4), 1 K/V head, 2 layers, MLP 128, tied
             embeddings (no lm_head tensor), attention_bias true (q/k/v and o_proj biases: the
             branch of Qwen3's code no released checkpoint uses), rope_theta 10000

Both: vocabulary 256, bos 251, eos 252. Every parameter is redrawn from one seeded generator
(golden_shims.randomise: norms 1 + N(0, 0.2^2), biases N(0, 0.1^2), head of logit std about 3,
o_proj / down_proj scaled by 2 (untied) and 8 (tied)). float32, CPU, one thread. config.json is
rewritten with the keys of a released Qwen3 config.json (Qwen3-0.6B's: rope_theta and
rope_scaling null, torch_dtype, no transformers 5 generic keys, no rope_parameters, no layer_types).

reference.safetensors, per checkpoint <name>:
- `<name>.input_ids` int64 [3, 20] and `<name>.logits` float32 [3, 20, 256]: the causal full
  forward (`model(input_ids)`, no cache; row j predicts token j + 1).
- `<name>.cached_logits` float32 [3, 8, 256]: the first `cached_len` (12) tokens prefilled into a
  DynamicCache (`use_cache=True`), then tokens 12..19 read through it: the rows of positions
  12..19, equal to the full forward's (checked here, printed). Metadata `<name>.cached_len`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden_shims as shims  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "python_tests" / "data" / "qwen3_tiny"
BOS, EOS = 251, 252
COMMON = dict(vocab_size=256, num_hidden_layers=2, rms_norm_eps=1e-6, max_position_embeddings=128, hidden_act="silu",
              use_sliding_window=False, sliding_window=None, max_window_layers=2, attention_dropout=0.0,
              bos_token_id=BOS, eos_token_id=EOS)
MODELS = {
    "untied": dict(COMMON, hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, tie_word_embeddings=False, attention_bias=False,
                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "tied": dict(COMMON, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
                 head_dim=24, tie_word_embeddings=True, attention_bias=True,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}
SEED = {"untied": 5055, "tied": 5505}
RESID = {"untied": 2.0, "tied": 8.0}
HEAD_STD = 3.0
B, S, CACHED = 3, 20, 12
# Qwen3-0.6B's config.json keys
KEYS = ("architectures", "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id", "head_dim",
        "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings",
        "max_window_layers", "model_type", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
        "rms_norm_eps", "sliding_window", "tie_word_embeddings", "transformers_version", "use_cache",
        "use_sliding_window", "vocab_size")


def build(name: str, out: Path) -> tuple[dict, dict]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    kw = MODELS[name]
    config = Qwen3Config(**kw)
    torch.manual_seed(SEED[name])
    model = Qwen3ForCausalLM(config).float().eval()
    shims.randomise(model, SEED[name], HEAD_STD, None, RESID[name])
    ckpt = out / name
    model.save_pretrained(ckpt, safe_serialization=True)
    shims.released_config(ckpt, KEYS, {"rope_theta": kw["rope_parameters"]["rope_theta"], "rope_scaling": None,
                                       "torch_dtype": "float32"})
    reloaded = Qwen3ForCausalLM.from_pretrained(ckpt).float().eval()

    g = torch.Generator().manual_seed(SEED[name] + 1)
    ids = torch.randint(0, 250, (B, S), generator=g)
    ids[2, -3:] = EOS
    with torch.no_grad():
        logits = model(ids).logits.float()
        again = reloaded(ids).logits.float()
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        model(ids[:, :CACHED], cache=cache, use_cache=True)
        cached = model(ids[:, CACHED:], cache=cache, use_cache=True).logits.float()
    assert torch.equal(logits, again), "the saved checkpoint reloads to other logits"
    diff = (cached - logits[:, CACHED:]).abs().max().item()
    print(f"{name}: {sum(t.numel() for t in model.state_dict().values())} parameters, logits {tuple(logits.shape)}, "
          f"|logits| max {logits.abs().max():.2f}, cached rows {CACHED}..{S - 1} vs full forward max|diff| {diff:.2e}")
    tensors = {f"{name}.input_ids": ids, f"{name}.logits": logits.contiguous(),
               f"{name}.cached_logits": cached.contiguous()}
    return tensors, {f"{name}.cached_len": str(CACHED)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import transformers
    import transformers.models.qwen3 as qwen3

    meta = shims.base_metadata(MODELS)
    meta.update(shims.sha256(Path(qwen3.__file__).parent, ("modeling_qwen3.py", "configuration_qwen3.py")))
    shims.write_reference(args.out, meta, (build(name, args.out) for name in MODELS))


if __name__ == "__main__":
    main()
