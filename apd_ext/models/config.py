"""Model configuration read from a Hugging Face config.json (Qwen2 / Dream / LLaMA-style), checked
when it is built: every error names the file (or "ModelConfig" for one built in code) and the key,
and says what the key takes, so a bad checkpoint fails at load, not inside a forward."""

from __future__ import annotations

import json
import math
from dataclasses import InitVar, dataclass, field, fields
from pathlib import Path

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# sizes that must be integers >= 1 (num_hidden_layers may be 0 only for a ModelConfig built in code)
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
          "max_position_embeddings")
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class CheckpointError(ValueError):
    """A checkpoint file (config.json, an index, a .safetensors shard, a tokenizer file) that is
    present but unusable; the message names the file, the key or tensor where there is one, and
    what was expected."""


def read_json_object(path: str | Path) -> dict:
    """The JSON object (dict) in the file `path`. Raises FileNotFoundError when it is absent and
    CheckpointError when it is not UTF-8, not JSON, or not an object, naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); expected a JSON "
                              f"object") from None
    if not text.strip():
        raise CheckpointError(f"{path}: the file is empty; expected a JSON object")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                              f"expected a JSON object") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object {{...}}, got a JSON {_json_kind(value)}")
    return value


def _json_kind(value) -> str:
    kinds = ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"), (list, "list"),
             (dict, "object"))
    return "null" if value is None else next((n for t, n in kinds if isinstance(value, t)), type(value).__name__)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ModelConfig:
    """The architecture of a decoder transformer of the Qwen2 family, and its special tokens.

    `model_type` picks the adapter: "qwen2" (causal verifier), "Dream" (bidirectional dLLM whose
    logits at position j predict token j + 1), "llada" (bidirectional, unshifted, no q/k/v bias).
    Checked on construction (`check`): sizes are positive integers, hidden_size divides into an
    even head_dim per attention head and the heads into key/value heads, mask_token_id and the
    EOS ids lie in [0, vocab_size).
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
    _source: InitVar[str] = "ModelConfig"  # where the values came from (a config.json), for error messages

    def __post_init__(self, _source: str):
        self.check(_source)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_parameters(self) -> int:
        """Parameters of the whole model this config describes (tied embeddings counted once)."""
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attention = h * (q + 2 * kv) + (q + 2 * kv if self.attention_bias else 0) + q * h
        layer = attention + 3 * h * i + 2 * h
        heads = 1 if self.tie_word_embeddings else 2
        return heads * self.vocab_size * h + self.num_hidden_layers * layer + h

    @property
    def eos_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)

    def check(self, source: str) -> None:
        """Raise CheckpointError, prefixed with `source` (a file name), on the first bad field."""
        problem = self._problem()
        if problem is not None:
            raise CheckpointError(f"{source}: {problem}")

    def _problem(self) -> str | None:
        """What is wrong with the fields (the first problem found), or None."""
        if not isinstance(self.model_type, str) or not self.model_type:
            return f"model_type must be a non-empty string, got {self.model_type!r}"
        for name in _SIZES + ("num_hidden_layers",):
            v, low = getattr(self, name), 0 if name == "num_hidden_layers" else 1
            if not _is_int(v) or v < low:
                return f"{name} must be an integer >= {low}, got {v!r}"
        if self.hidden_size % self.num_attention_heads:
            return (f"hidden_size {self.hidden_size} must be a multiple of num_attention_heads "
                    f"{self.num_attention_heads}")
        if self.head_dim % 2:
            return f"head_dim = hidden_size / num_attention_heads = {self.head_dim} must be even (rotary embedding)"
        if self.num_attention_heads % self.num_key_value_heads:
            return (f"num_attention_heads {self.num_attention_heads} must be a multiple of num_key_value_heads "
                    f"{self.num_key_value_heads}")
        for name in ("rms_norm_eps", "rope_theta"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (math.isfinite(v) and v > 0):
                return f"{name} must be a finite number > 0, got {v!r}"
        for name in ("tie_word_embeddings", "attention_bias"):
            if not isinstance(getattr(self, name), bool):
                return f"{name} must be true or false, got {getattr(self, name)!r}"
        if self.dtype not in _DTYPES.values():
            return f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}"
        return self._special_token_problem()

    def _special_token_problem(self) -> str | None:
        for name in ("bos_token_id", "pad_token_id", "mask_token_id"):
            v = getattr(self, name)
            if v is not None and not _is_int(v):
                return f"{name} must be an integer token id or null, got {v!r}"
        eos = self.eos_token_id
        if eos is not None and not (_is_int(eos) or (isinstance(eos, list) and all(_is_int(e) for e in eos))):
            return f"eos_token_id must be a token id, a list of token ids or null, got {eos!r}"
        ranged = [("mask_token_id", self.mask_token_id)] + [("eos_token_id", e) for e in self.eos_ids]
        for name, v in ranged:
            if v is not None and not 0 <= v < self.vocab_size:
                return f"{name} {v} is outside the vocabulary [0, vocab_size = {self.vocab_size})"
        return None

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        """From the dict of a config.json; `source` (the file) prefixes every error message."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: expected a JSON object {{...}}, got a JSON {_json_kind(d)}")
        mt = d.get("model_type")
        if mt is None:
            raise CheckpointError(f"{source}: no model_type (expected e.g. \"qwen2\", \"Dream\", \"llada\")")
        known = {f.name for f in fields(cls)} - {"dtype", "extra", "attention_bias", "model_type"}
        kw = {k: d[k] for k in known if k in d}
        missing = [k for k in _REQUIRED if k not in kw]
        if missing:
            raise CheckpointError(f"{source}: lacks {', '.join(missing)}")
        if not _is_int(kw["num_hidden_layers"]) or kw["num_hidden_layers"] < 1:
            raise CheckpointError(f"{source}: num_hidden_layers must be an integer >= 1, got "
                                  f"{kw['num_hidden_layers']!r}")
        kw.setdefault("num_key_value_heads", kw["num_attention_heads"])
        _read_rope(d, kw, source)
        _check_head_dim(d, source)
        dtype_name = d.get("dtype") or d.get("torch_dtype") or "float32"
        if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
            raise CheckpointError(f"{source}: dtype {dtype_name!r} is not supported (expected one of {sorted(_DTYPES)})")
        bias = d.get("attention_bias", mt.lower() in ("qwen2", "dream") if isinstance(mt, str) else None)
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(model_type=mt, dtype=_DTYPES[dtype_name], attention_bias=bias, extra=extra, _source=source, **kw)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ModelConfig":
        """From `path`/config.json (FileNotFoundError when absent, CheckpointError when unusable)."""
        p = Path(path) / "config.json"
        if not p.exists():
            raise FileNotFoundError(f"no config.json in {path}")
        return cls.from_dict(read_json_object(p), source=str(p))

    def to_dict(self) -> dict:
        d = dict(self.extra)
        for f in fields(self):
            if f.name not in ("extra", "dtype"):
                d[f.name] = getattr(self, f.name)
        d["torch_dtype"] = {v: k for k, v in _DTYPES.items()}[self.dtype]
        return d


def _read_rope(d: dict, kw: dict, source: str) -> None:
    """rope_theta from the top level or, as transformers 5 writes it, from rope_parameters; only
    plain RoPE is implemented, so a scaled variant (rope_scaling / rope_type) is refused."""
    params = d.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise CheckpointError(f"{source}: rope_parameters must be an object, got {params!r}")
    for key, value in (("rope_scaling", d.get("rope_scaling")), ("rope_parameters", params)):
        if isinstance(value, dict) and value.get("rope_type", value.get("type", "default")) != "default":
            raise CheckpointError(f"{source}: {key} {value!r} is not supported (the native transformer implements "
                                  f"plain RoPE: rope_type \"default\")")
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{source}: {key} must be an object or null, got {value!r}")
    if "rope_theta" not in kw and params and "rope_theta" in params:
        kw["rope_theta"] = params["rope_theta"]


def _check_head_dim(d: dict, source: str) -> None:
    """An explicit head_dim (Qwen3 style) must equal hidden_size / num_attention_heads."""
    hd, h, n = d.get("head_dim"), d.get("hidden_size"), d.get("num_attention_heads")
    if hd is None or not (_is_int(h) and _is_int(n) and n > 0):
        return
    if hd != h // n:
        raise CheckpointError(f"{source}: head_dim {hd!r} differs from hidden_size / num_attention_heads = {h // n}; "
                              f"only head_dim = hidden_size / num_attention_heads is supported")
