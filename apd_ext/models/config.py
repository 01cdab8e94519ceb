"""Model configuration read from a Hugging Face config.json (Qwen2 / Dream / LLaMA-style)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ModelConfig:
    """The architecture of a decoder transformer of the Qwen2 family, and its special tokens.

    `model_type` picks the adapter: "qwen2" (causal verifier), "Dream" (bidirectional dLLM whose
    logits at position j predict token j + 1), "llada" (bidirectional, unshifted, no q/k/v bias).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    attention_bias: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    mask_token_id: int | None = None
    dtype: torch.dtype = torch.float32
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def eos_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        mt = d.get("model_type")
        if mt is None:
            raise ValueError("config.json has no model_type")
        known = {f for f in cls.__dataclass_fields__ if f not in ("dtype", "extra", "attention_bias", "model_type")}
        kw = {k: d[k] for k in known if k in d}
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in kw]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}")
        kw.setdefault("num_key_value_heads", kw["num_attention_heads"])
        if kw["hidden_size"] % kw["num_attention_heads"] or kw["num_attention_heads"] % kw["num_key_value_heads"]:
            raise ValueError("hidden_size must divide into heads and heads into key/value heads")
        dtype_name = d.get("dtype") or d.get("torch_dtype") or "float32"
        if dtype_name not in _DTYPES:
            raise ValueError(f"unsupported dtype {dtype_name!r} in config.json")
        bias = d.get("attention_bias", mt.lower() in ("qwen2", "dream"))
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(model_type=mt, dtype=_DTYPES[dtype_name], attention_bias=bool(bias), extra=extra, **kw)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ModelConfig":
        p = Path(path) / "config.json"
        if not p.exists():
            raise FileNotFoundError(f"no config.json in {path}")
        return cls.from_dict(json.loads(p.read_text()))

    def to_dict(self) -> dict:
        d = dict(self.extra)
        for k in self.__dataclass_fields__:
            if k in ("extra", "dtype"):
                continue
            d[k] = getattr(self, k)
        d["torch_dtype"] = {v: k for k, v in _DTYPES.items()}[self.dtype]
        return d
