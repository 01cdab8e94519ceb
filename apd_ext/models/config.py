"""Model configuration read from a Hugging Face config.json, checked when it is built: every error
names the file (or "ModelConfig" for one built in code) and the key, and says what the key takes, so
a bad checkpoint fails at load, not inside a forward.

Families (config.json's model_type, any case), all loaded into the one native transformer:
    "Dream"          dLLM: Dream and its derivatives that keep Dream's architecture (bidirectional
                     Qwen2, q/k/v biases); logits at position j predict token j + 1
    "llada"          dLLM: LLaDA (LLaDA-8B-Base/Instruct, LLaDA-1.5): its own config keys (d_model,
                     n_heads, ...) are translated here (`llada_to_native`); unshifted logits
    "Fast_dLLM_Qwen" block-diffusion dLLM: Fast-dLLM v2 (NVlabs, adapted from Qwen2.5): Qwen2 keys,
                     q/k/v biases, block size `bd_size`; logits at position j predict token j + 1
    "sdar"           block-diffusion dLLM: SDAR (JetLM, adapted from Qwen3): Qwen3 keys (explicit
                     head_dim, q/k RMSNorm), block size `block_size`; unshifted logits
    "qwen2", "llama", "qwen3"  causal verifiers (Hugging Face Qwen2 / Llama / Qwen3 configs)
Any other model_type raises CheckpointError naming the file and listing these (`SUPPORTED`); a
variant the native transformer does not implement (another activation, sliding-window layers, a
scaled RoPE, a block model without its block size) raises CheckpointError naming the config key.

Block-diffusion models attend block-causally: blocks of `block_size` positions counted from
position 0; a query attends every key of its own block and of the blocks before it (runners.py).
"""

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

# model_type (lower case) -> whether the dLLM's logits are shifted by one (row j predicts token j + 1)
DLLM_TYPES = {"dream": True, "llada": False, "fast_dllm_qwen": True, "sdar": False}
# block-diffusion families (lower case) -> the config.json key holding the block size
BLOCK_KEYS = {"fast_dllm_qwen": "bd_size", "sdar": "block_size"}
VERIFIER_TYPES = ("qwen2", "llama", "qwen3")
# families with a per-head RMSNorm on q and k (and an o_proj bias when attention_bias)
QK_NORM_TYPES = ("qwen3", "sdar")
# Fast-dLLM v2's released generate passes mask_id=151665 ("|<MASK>|"); its config.json has no key for it
FAST_DLLM_MASK_ID = 151665
SUPPORTED = ("dLLMs: \"Dream\" (Dream and derivatives that keep its architecture), \"llada\" (LLaDA), "
             "\"Fast_dLLM_Qwen\" (Fast-dLLM v2), \"sdar\" (SDAR); verifiers: \"qwen2\", \"llama\", \"qwen3\"")


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

    `model_type` picks the family (module docstring): "qwen2" / "llama" (causal verifiers),
    "Dream" (bidirectional dLLM whose logits at position j predict token j + 1), "llada"
    (bidirectional, unshifted; read from and written to LLaDA's own config.json keys).
    Checked on construction (`check`): sizes are positive integers, hidden_size divides into an
    even head_dim per attention head and the heads into key/value heads, mask_token_id,
    pad_token_id and the EOS ids lie in [0, vocab_size).
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
    head_dim: int | None = None  # None: hidden_size / num_attention_heads (set on construction)
    dtype: torch.dtype = torch.float32
    extra: dict = field(default_factory=dict, repr=False)
    _source: InitVar[str] = "ModelConfig"  # where the values came from (a config.json), for error messages

    def __post_init__(self, _source: str):
        if self.head_dim is None and _is_int(self.hidden_size) and _is_int(self.num_attention_heads) \
                and self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.check(_source)

    @property
    def family(self) -> str:
        """model_type in lower case."""
        return self.model_type.lower()

    @property
    def qk_norm(self) -> bool:
        """Whether attention normalises q and k per head (Qwen3, SDAR)."""
        return self.family in QK_NORM_TYPES

    @property
    def o_proj_bias(self) -> bool:
        """Whether o_proj has a bias (Qwen3 / SDAR with attention_bias; Qwen2 never has one)."""
        return self.qk_norm and self.attention_bias

    @property
    def block_size(self) -> int | None:
        """The block size of a block-diffusion dLLM (config.json's BLOCK_KEYS key), else None."""
        key = BLOCK_KEYS.get(self.family)
        return None if key is None else self.extra[key]

    def num_parameters(self) -> int:
        """Parameters of the whole model this config describes (tied embeddings counted once)."""
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attention = h * (q + 2 * kv) + (q + 2 * kv if self.attention_bias else 0) + q * h
        attention += (h if self.o_proj_bias else 0) + (2 * d if self.qk_norm else 0)
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
        if self.head_dim is None:
            return (f"hidden_size {self.hidden_size} must be a multiple of num_attention_heads "
                    f"{self.num_attention_heads} (or give head_dim)")
        if not _is_int(self.head_dim) or self.head_dim < 2 or self.head_dim % 2:
            return f"head_dim must be an even integer >= 2 (rotary embedding), got {self.head_dim!r}"
        key = BLOCK_KEYS.get(self.family)
        if key is not None and (not _is_int(self.extra.get(key)) or self.extra[key] < 1):
            return (f"{key} must be an integer >= 1 (the block size of a {self.model_type} block-diffusion model), "
                    f"got {self.extra.get(key, 'nothing')!r}")
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
        # generate writes pad_token_id into `sequences` after a row's end: it must be a token too
        ranged = [("mask_token_id", self.mask_token_id), ("pad_token_id", self.pad_token_id)] + [
            ("eos_token_id", e) for e in self.eos_ids]
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
        kind = mt.lower() if isinstance(mt, str) else None
        if kind not in DLLM_TYPES and kind not in VERIFIER_TYPES:
            raise CheckpointError(f"{source}: model_type {mt!r} is not a family apd_ext loads; supported: {SUPPORTED}")
        if kind != "llada":
            return cls._from_native(d, source)
        native = llada_to_native(d, source)
        try:
            return cls._from_native(native, source)
        except CheckpointError as e:  # a native key's check: say which LLaDA key it came from
            raise CheckpointError(f"{e} ({_LLADA_KEY_NOTE})") from None

    @classmethod
    def _from_native(cls, d: dict, source: str) -> "ModelConfig":
        """From a dict in Hugging Face's Qwen2/Llama keys (model_type already checked)."""
        mt = d["model_type"]
        known = {f.name for f in fields(cls)} - {"dtype", "extra", "attention_bias", "model_type"}
        kw = {k: d[k] for k in known if k in d}
        kind = mt.lower() if isinstance(mt, str) else None
        _check_variant(d, kind, source)
        if kind == "fast_dllm_qwen" and kw.get("mask_token_id") is None and _is_int(d.get("vocab_size")) \
                and FAST_DLLM_MASK_ID < d["vocab_size"]:
            kw["mask_token_id"] = FAST_DLLM_MASK_ID  # what its released generate passes
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
        bias = d.get("attention_bias", kind in ("qwen2", "dream"))
        if kind == "fast_dllm_qwen":
            bias = True  # its attention builds q/k/v biases whatever the config says
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
        """The config.json dict of this config in its family's own format (LLaDA's keys for
        "llada", Hugging Face's Qwen2 keys otherwise); from_dict reads it back."""
        if self.model_type.lower() == "llada":
            return native_to_llada(self)
        d = {k: v for k, v in self.extra.items() if k != LLADA_SOURCE}
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
    """An explicit head_dim (Qwen3 style; it may differ from hidden_size / num_attention_heads)
    must be an even integer."""
    hd = d.get("head_dim")
    if hd is not None and (not _is_int(hd) or hd < 2 or hd % 2):
        raise CheckpointError(f"{source}: head_dim must be an even integer >= 2 (rotary embedding), got {hd!r}")


def _check_variant(d: dict, kind: str | None, source: str) -> None:
    """Refuse, naming the key, the variants of a Qwen2/Qwen3-style config.json that the native
    transformer does not implement: an activation other than SiLU, sliding-window attention, layer
    types other than full attention; a block-diffusion model without its block size."""
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (the native MLP is SiLU-gated: \"silu\")")
    if d.get("use_sliding_window") not in (None, False):
        raise CheckpointError(f"{source}: use_sliding_window {d['use_sliding_window']!r} is not supported (the native "
                              f"attention is full attention)")
    types = d.get("layer_types")
    if types is not None and (not isinstance(types, list) or any(t != "full_attention" for t in types)):
        raise CheckpointError(f"{source}: layer_types {types!r} is not supported (only \"full_attention\" layers)")
    key = BLOCK_KEYS.get(kind)
    if key is not None and key not in d:
        raise CheckpointError(f"{source}: lacks {key}, the block size of a {d['model_type']} block-diffusion model")


# --- LLaDA ------------------------------------------------------------------------------------------
# LLaDA's config.json (configuration_llada.py of GSAI-ML/LLaDA-8B-*) uses OLMo's keys. The native
# transformer is LLaDA's "llama" block: RMSNorm (attn_norm, ff_norm, ln_f), separate q/k/v projections
# (optional q/k/v bias), RoPE on halves computed in float32, bidirectional attention, attn_out, and
# the MLP ff_out(silu(ff_proj(x)) * up_proj(x)) (ff_proj is the gate); the output head is
# transformer.ff_out, or the embedding when weight_tying. Keys absent from a config.json take
# LLaDA's own defaults (its ModelConfig dataclass), so a config means what it means to LLaDA's code.

LLADA_SOURCE = "llada_config"  # extra[LLADA_SOURCE]: the config.json dict read, kept for to_dict
_LLADA_DEFAULTS = {
    "n_kv_heads": None, "multi_query_attention": None, "mlp_ratio": 4, "mlp_hidden_size": None,
    "activation_type": "swiglu", "block_type": "sequential", "block_group_size": 1, "alibi": False, "rope": False,
    "attention_layer_norm": False, "input_emb_norm": False, "layer_norm_type": "default",
    "layer_norm_with_affine": True, "rms_norm_eps": 1e-5, "max_sequence_length": 1024, "rope_theta": 10000.0,
    "include_qkv_bias": False, "include_bias": False, "bias_for_layer_norm": None, "scale_logits": False,
    "weight_tying": True,
}  # no default for the special tokens: LLaDA's (50256) is GPT-2's, never LLaDA's mask 126336
# the values the native transformer implements, for the keys that change the architecture
_LLADA_ARCH = {"block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True,
               "alibi": False, "layer_norm_with_affine": True, "include_bias": False, "attention_layer_norm": False,
               "input_emb_norm": False, "scale_logits": False, "block_group_size": 1}
# OLMo's training precision -> the dtype the weights are loaded in when config.json names none
_LLADA_PRECISION = {"amp_bf16": "bfloat16", "amp_fp16": "float16", "fp32": "float32"}
_LLADA_KEY_NOTE = ("LLaDA keys: d_model = hidden_size, n_heads = num_attention_heads, n_kv_heads = "
                   "num_key_value_heads, n_layers = num_hidden_layers, mlp_hidden_size (or mlp_ratio * d_model) = "
                   "intermediate_size, embedding_size (or vocab_size) = vocab_size, max_sequence_length = "
                   "max_position_embeddings")


def llada_to_native(d: dict, source: str = "config.json") -> dict:
    """The config.json dict of a LLaDA checkpoint (model_type "llada", LLaDA's keys) as the native
    keys from_dict reads (hidden_size, num_attention_heads, ...); the LLaDA dict itself is kept
    under extra[LLADA_SOURCE] so that to_dict writes LLaDA's format back.

    Mapping: d_model -> hidden_size; n_heads -> num_attention_heads; n_kv_heads (with
    multi_query_attention, as LLaDA's effective_n_kv_heads) -> num_key_value_heads; n_layers ->
    num_hidden_layers; mlp_hidden_size, else mlp_ratio * d_model -> intermediate_size;
    embedding_size, else vocab_size -> vocab_size (the rows of the embedding and of the logits;
    LLaDA's own vocab_size, the tokenizer's, may be smaller); max_sequence_length ->
    max_position_embeddings; include_qkv_bias -> attention_bias; weight_tying ->
    tie_word_embeddings; rope_theta, rms_norm_eps and the special token ids as they are (absent:
    none; a dLLM without mask_token_id is refused by DllmRunner, not given LLaDA's GPT-2 default). dtype:
    config.json's dtype / torch_dtype, else from LLaDA's "precision" (amp_bf16 -> bfloat16,
    amp_fp16 -> float16), else float32. Raises CheckpointError (naming `source` and the LLaDA key)
    for a missing or mistyped key and for variants the native transformer does not implement
    (another block_type, activation, norm, ALiBi, q/k norms, biases outside q/k/v, embedding or
    logit scaling, block groups)."""
    missing = [k for k in ("d_model", "n_heads", "n_layers", "vocab_size") if k not in d]
    if missing:
        raise CheckpointError(f"{source}: LLaDA config lacks {', '.join(missing)}")
    v = {**_LLADA_DEFAULTS, **d}
    for key in ("d_model", "n_heads", "n_layers", "vocab_size", "mlp_ratio", "max_sequence_length"):
        if not _is_int(v[key]) or v[key] < 1:
            raise CheckpointError(f"{source}: {key} must be an integer >= 1, got {v[key]!r}")
    for key in ("n_kv_heads", "mlp_hidden_size", "embedding_size"):
        if v.get(key) is not None and (not _is_int(v[key]) or v[key] < 1):
            raise CheckpointError(f"{source}: {key} must be an integer >= 1 or null, got {v[key]!r}")
    for key, want in _LLADA_ARCH.items():
        if v[key] != want:
            absent = " (LLaDA's default when the key is absent)" if key not in d else ""
            raise CheckpointError(f"{source}: {key} {v[key]!r}{absent} is not supported; the native transformer "
                                  f"implements LLaDA's layout with {key} {want!r} (LLaDA-8B's)")
    if v["bias_for_layer_norm"] not in (None, False):
        raise CheckpointError(f"{source}: bias_for_layer_norm {v['bias_for_layer_norm']!r} is not supported "
                              f"(RMSNorm without bias)")
    if not isinstance(v["include_qkv_bias"], bool) or not isinstance(v["weight_tying"], bool):
        key = "include_qkv_bias" if not isinstance(v["include_qkv_bias"], bool) else "weight_tying"
        raise CheckpointError(f"{source}: {key} must be true or false, got {v[key]!r}")
    embedding = d.get("embedding_size") or v["vocab_size"]  # absent or null: the vocabulary (LLaDA: `or`)
    if embedding < v["vocab_size"]:
        raise CheckpointError(f"{source}: embedding_size {embedding} is smaller than vocab_size {v['vocab_size']}")
    native = {
        "model_type": d["model_type"], "vocab_size": embedding, "hidden_size": v["d_model"],
        "intermediate_size": v["mlp_hidden_size"] or v["mlp_ratio"] * v["d_model"],
        "num_hidden_layers": v["n_layers"], "num_attention_heads": v["n_heads"],
        "num_key_value_heads": _llada_kv_heads(v, source), "rms_norm_eps": v["rms_norm_eps"],
        "rope_theta": v["rope_theta"], "max_position_embeddings": v["max_sequence_length"],
        "tie_word_embeddings": v["weight_tying"], "attention_bias": v["include_qkv_bias"],
        "eos_token_id": d.get("eos_token_id"), "pad_token_id": d.get("pad_token_id"),
        "mask_token_id": d.get("mask_token_id"),
        "dtype": d.get("dtype") or d.get("torch_dtype") or _llada_precision_dtype(d.get("precision")),
        LLADA_SOURCE: dict(d),
    }
    if d.get("bos_token_id") is not None:
        native["bos_token_id"] = d["bos_token_id"]
    return native


def _llada_precision_dtype(precision) -> str:
    """The load dtype LLaDA's training "precision" implies (amp_bf16: bfloat16, as LLaDA-8B's
    weights are stored), float32 for none or another value."""
    return _LLADA_PRECISION.get(precision, "float32") if isinstance(precision, str) else "float32"


def _llada_kv_heads(v: dict, source: str) -> int:
    """LLaDA's effective_n_kv_heads: n_kv_heads, else 1 under multi_query_attention, else n_heads;
    both given must agree."""
    n, mqa, heads = v["n_kv_heads"], v["multi_query_attention"], v["n_heads"]
    if n is None:
        return 1 if mqa is True else heads
    if mqa is not None and n != (1 if mqa else heads):
        raise CheckpointError(f"{source}: n_kv_heads {n} contradicts multi_query_attention {mqa!r} (which means "
                              f"{1 if mqa else heads} K/V heads)")
    return n


def native_to_llada(config: ModelConfig) -> dict:
    """config.json of a "llada" ModelConfig in LLaDA's own keys: the dict it was read from (if
    any), with every key the native fields decide written from them, so LLaDA's code and
    from_dict both read it back as this model."""
    d = dict(config.extra.get(LLADA_SOURCE, {}))
    d.update(_LLADA_ARCH)
    d.update({
        "model_type": config.model_type, "d_model": config.hidden_size, "n_heads": config.num_attention_heads,
        "n_kv_heads": config.num_key_value_heads, "multi_query_attention": None,
        "n_layers": config.num_hidden_layers, "mlp_hidden_size": config.intermediate_size,
        "embedding_size": config.vocab_size, "max_sequence_length": config.max_position_embeddings,
        "rope_theta": config.rope_theta, "rms_norm_eps": config.rms_norm_eps,
        "weight_tying": config.tie_word_embeddings, "include_qkv_bias": config.attention_bias,
        "bias_for_layer_norm": False, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "mask_token_id": config.mask_token_id, "torch_dtype": {v: k for k, v in _DTYPES.items()}[config.dtype],
    })
    d.pop("dtype", None)
    if not _is_int(d.get("vocab_size")) or d["vocab_size"] > config.vocab_size:
        d["vocab_size"] = config.vocab_size  # the tokenizer's vocabulary: at most the embedding's rows
    if config.bos_token_id is not None:
        d["bos_token_id"] = config.bos_token_id
    return d
