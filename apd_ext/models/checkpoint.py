"""Hugging Face checkpoint files: config.json plus model.safetensors, or shards listed in
model.safetensors.index.json. Loads tensors straight into a model's parameters (no extra copy of
the state dict), converting dtype on the way."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from apd_ext.models.config import ModelConfig


def shard_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, sharded or not."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({path / f for f in weight_map.values()})
    elif (path / "model.safetensors").exists():
        files = [path / "model.safetensors"]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    missing = [f for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"shards listed in the index are missing: {[m.name for m in missing]}")
    return files


def load_weights(model: torch.nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Copy every tensor of the checkpoint into the parameter/buffer of the same name."""
    params = dict(model.named_parameters())
    seen = set()
    for f in shard_files(path):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if name not in params:
                    if strict and not name.endswith("rotary_emb.inv_freq"):
                        raise KeyError(f"{f.name}: tensor {name!r} has no parameter in {type(model).__name__}")
                    continue
                t = st.get_tensor(name)
                p = params[name]
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: checkpoint shape {tuple(t.shape)} != model {tuple(p.shape)}")
                with torch.no_grad():
                    p.copy_(t)
                seen.add(name)
    absent = [n for n in params if n not in seen]
    tied = getattr(model, "tied_parameter_names", set())
    absent = [n for n in absent if n not in tied]
    if strict and absent:
        raise KeyError(f"checkpoint {path} lacks {absent[:5]}{'...' if len(absent) > 5 else ''}")


def save_checkpoint(model: torch.nn.Module, config: ModelConfig, path: str | Path) -> None:
    """Write config.json and model.safetensors (the layout load_weights reads)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tied = getattr(model, "tied_parameter_names", set())
    state = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if n not in tied}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str) + "\n")
