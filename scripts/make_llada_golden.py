"""Write the LLaDA golden data (python_tests/data/llada_tiny/) with LLaDA's own modelling code.

    python scripts/make_llada_golden.py --modeling /tmp/llada_src [--out python_tests/data/llada_tiny]

--modeling: a directory holding LLaDA's published `modeling_llada.py` and `configuration_llada.py`
(as on the Hugging Face repository GSAI-ML/LLaDA-8B-Instruct; fetch them from a public copy). They
are imported from there as a package at run time and never copied into this repository.

Two small random LLaDA checkpoints are built by LLaDA's own classes (`LLaDAConfig`,
`LLaDAModelLM`), each in LLaDA's format (config.json with model_type "llada", model.safetensors
with LLaDA's tensor names "model.transformer.blocks.N.q_proj.weight", ...):

    base/  the layout of LLaDA-8B: "llama" blocks, SiLU-gated MLP (ff_proj gate, up_proj),
           RMSNorm, RoPE, no biases, untied output head (transformer.ff_out), and grouped K/V
           heads (n_kv_heads 2 of n_heads 4); 2 layers, d_model 48, vocabulary 256, mask id 250;
           "precision" "amp_bf16" and no dtype key, as LLaDA-8B's config.json
    tied/  the other branches of the mapping: weight_tying (no output head: logits from the
           embedding), q/k/v biases (include_qkv_bias), n_kv_heads = n_heads, and an embedding
           larger than the tokenizer's vocabulary (embedding_size 256 > vocab_size 200); 1 layer

Every parameter is redrawn from one seeded generator (the norms around 1, not all ones, so that a
swapped norm would show). LLaDA's forward (`LLaDAModelLM(...)(input_ids)`: full bidirectional
attention, no cache, unshifted logits) runs in float32 on CPU on a fixed batch of token ids that
includes mask tokens, and reference.safetensors stores, per checkpoint, `<name>.input_ids` int64
[B, S] and `<name>.logits` float32 [B, S, embedding_size], with the versions and the modelling
files' SHA-256 in its metadata.

Shims for transformers 5 (LLaDA's code was written for 4.x); nothing in LLaDA's files is edited:
- the files use a relative import (`from .configuration_llada import ...`), so the directory is
  registered as a package ("llada_ref") in sys.modules before importing them;
- transformers 5's PretrainedConfig drops the `use_cache` keyword that LLaDAConfig passes on, so
  `LLaDAModelLM.forward`'s fallback `self.config.use_cache` raises AttributeError: the forward is
  called with use_cache=False and return_dict=True explicitly (the values LLaDA's inference uses);
- transformers 5 does not keep `use_cache` in the config either, and adds generic keys (id2label,
  return_dict, ...): config.json keeps the keys LLaDA-8B's has (LLaDA's ModelConfig fields,
  architectures, model_type, transformers_version) and gets "use_cache": false back.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import math
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "python_tests" / "data" / "llada_tiny"
FILES = ("modeling_llada.py", "configuration_llada.py")

COMMON = dict(block_type="llama", activation_type="silu", layer_norm_type="rms", layer_norm_with_affine=True,
              rope=True, alibi=False, include_bias=False, bias_for_layer_norm=False, attention_layer_norm=False,
              input_emb_norm=False, scale_logits=False, block_group_size=1, flash_attention=False,
              attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0, rms_norm_eps=1e-5,
              init_device="cpu", init_fn="mitchell")
MODELS = {
    "base": dict(COMMON, d_model=48, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=80, mlp_ratio=4,
                 vocab_size=256, embedding_size=256, weight_tying=False, include_qkv_bias=False,
                 rope_theta=500000.0, max_sequence_length=64, mask_token_id=250, eos_token_id=251,
                 pad_token_id=251, precision="amp_bf16"),
    "tied": dict(COMMON, d_model=32, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=48, mlp_ratio=4,
                 vocab_size=200, embedding_size=256, weight_tying=True, include_qkv_bias=True,
                 rope_theta=10000.0, max_sequence_length=48, mask_token_id=190, eos_token_id=191,
                 pad_token_id=191, precision=None, dtype="float32"),
}
SEED = {"base": 1234, "tied": 4321}


def import_llada(modeling: Path):
    """(configuration module, modelling module) of LLaDA's files in `modeling`, imported as the
    package "llada_ref" (their relative import needs one)."""
    missing = [f for f in FILES if not (modeling / f).is_file()]
    if missing:
        raise SystemExit(f"{modeling}: missing {missing}; expected LLaDA's {FILES[0]} and {FILES[1]}")
    pkg = types.ModuleType("llada_ref")
    pkg.__path__ = [str(modeling)]
    sys.modules["llada_ref"] = pkg
    return (importlib.import_module("llada_ref.configuration_llada"),
            importlib.import_module("llada_ref.modeling_llada"))


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter (sorted by name) from one generator: matrices N(0, 1/fan_in) (the
    embedding N(0, 1)), norm weights 1 + N(0, 0.2^2), biases N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("wte.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def batch(kw: dict, seed: int) -> torch.Tensor:
    """int64 [3, S] token ids of the tokenizer's vocabulary with mask tokens: a prompt then an
    all-mask answer, masks scattered through the row, and a row ending in EOS padding."""
    V, mask, eos = kw["vocab_size"], kw["mask_token_id"], kw["eos_token_id"]
    S = min(24, kw["max_sequence_length"])
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, V, (3, S), generator=g)
    ids[ids == mask] = 0
    ids[0, S // 3 :] = mask
    ids[1, torch.randperm(S, generator=g)[: S // 2]] = mask
    ids[2, S // 2 : S - 4] = mask
    ids[2, S - 4 :] = eos
    return ids


def build(cfg_mod, mod, name: str, out: Path) -> dict[str, torch.Tensor]:
    kw = dict(MODELS[name])
    dtype = kw.pop("dtype", None)
    config = cfg_mod.LLaDAConfig(**kw)
    torch.manual_seed(SEED[name])
    model = mod.LLaDAModelLM(config).float().eval()
    randomise(model, SEED[name])
    ckpt = out / name
    ckpt.mkdir(parents=True, exist_ok=True)
    state = {n: t.detach().contiguous() for n, t in model.state_dict().items()}
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    # the keys of LLaDA-8B's config.json: LLaDA's ModelConfig fields and a few of transformers'
    # (not the generic ones transformers 5 adds, nor a dtype key unless the model says one)
    full = config.to_dict()
    keep = {f.name for f in dataclasses.fields(cfg_mod.ModelConfig)} | {"architectures", "model_type",
                                                                       "transformers_version"}
    doc = {k: v for k, v in full.items() if k in keep}
    doc["use_cache"] = False  # transformers 5 drops it; LLaDA-8B's config.json has it
    if dtype is not None:
        doc["torch_dtype"] = dtype
    (ckpt / "config.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    ids = batch(kw, SEED[name])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False, return_dict=True).logits.float()
    print(f"{name}: {sum(t.numel() for t in state.values())} parameters, logits {tuple(logits.shape)}, "
          f"|logits| max {logits.abs().max():.3f}")
    return {f"{name}.input_ids": ids, f"{name}.logits": logits.contiguous()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modeling", type=Path, required=True,
                    help="directory with LLaDA's modeling_llada.py and configuration_llada.py")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg_mod, mod = import_llada(args.modeling.resolve())
    import transformers

    tensors = {}
    for name in MODELS:
        tensors.update(build(cfg_mod, mod, name, args.out))
    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "dtype": "float32",
            "device": "cpu", "threads": "1"}
    meta.update({f"sha256:{f}": hashlib.sha256((args.modeling / f).read_bytes()).hexdigest() for f in FILES})
    save_file(tensors, str(args.out / "reference.safetensors"), metadata=meta)
    print(f"wrote {args.out} ({', '.join(f'{k}={v}' for k, v in meta.items())})")


if __name__ == "__main__":
    main()
