"""`DecodeConfig`: every decoding knob, with the one set of defaults that the Python API, the
command line, eval, sweep and the benchmarks share, and the policy specs that parse into it.

    cfg = DecodeConfig()                                         # APD, the defaults below
    cfg = DecodeConfig.from_spec("apd:mixture_weight=0.9,kv_window=none")
    cfg = cfg.replace(temperature=1.0)
    cfg.to_spec()  # "apd:temperature=1.0,mixture_weight=0.9,kv_window=none"

A spec is `policy[:knob=value,...]`; knob names are the field names (no aliases), `none` sets an
optional knob to None, booleans are 0/1/true/false. Values are checked when the config is built:
the error names the knob and what it takes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

POLICIES = ("apd", "dllm_fixed", "ar", "diffusion", "threshold", "fast_dllm_v2", "sdar")
DIFFUSION_ALGS = ("confidence", "entropy", "random")
REMASKING = ("low_confidence_dynamic", "low_confidence_static")
# the policies that decode a block-diffusion dLLM's own way (they need one: runners.DllmRunner.block_size)
BLOCK_POLICIES = ("fast_dllm_v2", "sdar")

# The knobs each policy reads (the others are ignored by it, and left out of its spec).
_SAMPLING = ("max_new_tokens", "temperature", "top_k", "top_p")
POLICY_KNOBS = {
    "apd": _SAMPLING + ("mixture_weight", "kv_window", "max_lookahead", "authors_compat"),
    "dllm_fixed": _SAMPLING + ("k", "kv_window", "max_lookahead", "authors_compat"),
    "ar": _SAMPLING,
    "diffusion": _SAMPLING + ("diffusion_steps", "diffusion_alg"),
    "threshold": _SAMPLING + ("threshold", "block_length", "kv_window", "max_lookahead"),
    "fast_dllm_v2": _SAMPLING + ("threshold", "small_block_size"),
    "sdar": _SAMPLING + ("threshold", "denoising_steps", "remasking"),
}


@dataclass(frozen=True)
class DecodeConfig:
    """The decoding policy and its knobs (frozen; `replace` makes a changed copy).

    policy: "apd" (draft with the dLLM, verify with the autoregressive model, keep the agreeing
        prefix); "dllm_fixed" (k tokens per step from the dLLM alone, left to right; k = 1 is the
        quality reference); "ar" (the verifier alone); "diffusion" (the dLLM's own schedule);
        "threshold" (the dLLM alone, confidence-threshold parallel decoding as in Fast-dLLM: per
        step every masked position of the window whose confidence is >= threshold, at least the
        most confident one; apd_ext/decode/steps/threshold.py states the rule);
        "fast_dllm_v2" and "sdar" (block-diffusion dLLMs only: the released decoding of Fast-dLLM v2,
        threshold over sub-blocks, and of SDAR, a low-confidence schedule per block;
        apd_ext/decode/steps/native.py states the rules).
        On a block-diffusion dLLM (Fast-dLLM v2, SDAR) apd, dllm_fixed and threshold draft a window
        that ends at the current block's end, and the dLLM reads an exact block cache (kv_window is
        not used; apd_ext/decode/steps/window.py).
    max_new_tokens: tokens generated per row at most (>= 1).
    mixture_weight: w in [0, 1]; the target samples p_dLLM^w * p_verifier^(1 - w).
    kv_window: R >= 1 positions recomputed before the window around the dLLM's approximate KV
        cache; None: no cache, every step recomputes the whole prefix (apd, dllm_fixed, threshold).
    max_lookahead: >= 1, the window: the K positions after the committed prefix that the dLLM
        drafts per step (K = max_lookahead clipped to the row's end); None: everything up to the
        row's end (apd, dllm_fixed, threshold).
    temperature: T >= 0; 0 is greedy (the default: deterministic, as Hugging Face's generate).
    top_k: >= 0 (0: no filter); None: 0, or 50 with authors_compat (what the released code inherits).
    top_p: in (0, 1].
    k: tokens per step of "dllm_fixed" (>= 1).
    diffusion_steps: forwards of "diffusion" (None: max_new_tokens); diffusion_alg: which masked
        positions it unmasks first: "confidence", "entropy" or "random".
    threshold: confidence in (0, 1] of "threshold" (default 0.9, Fast-dLLM's): a masked position
        of the window commits when the dLLM's probability of its drafted token is >= threshold
        (1.0: one token per step unless a probability rounds to 1; near 0: the whole window).
    block_length: >= 1, "threshold"'s semi-autoregressive blocks (Fast-dLLM's block_length): only
        masked positions of the block holding the first uncommitted position may commit, blocks of
        block_length answer positions counted from the row's prompt end; None: no blocks (the
        window alone bounds the commits).
    small_block_size: >= 1, "fast_dllm_v2"'s sub-blocks (its released default 8; it must divide
        the model's block size): per step, masked positions of the sub-block holding the first
        uncommitted position commit when their confidence is > threshold, at least the most confident.
    denoising_steps: "sdar"'s forwards per block, in [1, block size] (None: the block size, one
        token per forward): the schedule commits block_size / denoising_steps tokens per forward
        (the remainder to the first forwards), more with "low_confidence_dynamic" when more
        positions are confident (> threshold; SDAR's confidence_threshold).
    remasking: "sdar"'s rule, "low_confidence_dynamic" (default) or "low_confidence_static" (the
        scheduled count of the most confident masked positions).
    authors_compat: reproduce the authors' released code (APD_SPEC, last section).
    """

    policy: str = "apd"
    max_new_tokens: int = 256
    mixture_weight: float = 0.7
    kv_window: int | None = 16
    max_lookahead: int | None = 100
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0
    k: int = 1
    diffusion_steps: int | None = None
    diffusion_alg: str = "confidence"
    authors_compat: bool = False
    threshold: float = 0.9
    block_length: int | None = None
    small_block_size: int = 8
    denoising_steps: int | None = None
    remasking: str = "low_confidence_dynamic"

    def __post_init__(self):
        if not isinstance(self.policy, str) or self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        _int("max_new_tokens", self.max_new_tokens, 1)
        check_sampling_knob("mixture_weight", self.mixture_weight)
        if self.kv_window is not None:
            _int("kv_window", self.kv_window, 1, none_ok=True)
        if self.max_lookahead is not None:
            _int("max_lookahead", self.max_lookahead, 1, none_ok=True)
        check_sampling_knob("temperature", self.temperature)
        check_sampling_knob("top_k", self.top_k)
        check_sampling_knob("top_p", self.top_p)
        _int("k", self.k, 1)
        if self.diffusion_steps is not None:
            _int("diffusion_steps", self.diffusion_steps, 1, none_ok=True)
        if self.diffusion_alg not in DIFFUSION_ALGS:
            raise ValueError(f"diffusion_alg must be one of {', '.join(DIFFUSION_ALGS)}, got {self.diffusion_alg!r}")
        _real("threshold", self.threshold, 0.0, 1.0, low_open=True)
        if self.block_length is not None:
            _int("block_length", self.block_length, 1, none_ok=True)
        _int("small_block_size", self.small_block_size, 1)
        if self.denoising_steps is not None:
            _int("denoising_steps", self.denoising_steps, 1, none_ok=True)
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {', '.join(REMASKING)}, got {self.remasking!r}")
        if not isinstance(self.authors_compat, bool):
            raise TypeError(f"authors_compat must be a bool, got {type(self.authors_compat).__name__}")
        # canonical numeric types (an int mixture_weight is a float; frozen: set through object)
        for name in ("mixture_weight", "temperature", "top_p", "threshold"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("max_new_tokens", "kv_window", "max_lookahead", "top_k", "k", "diffusion_steps", "block_length",
                     "small_block_size", "denoising_steps"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))

    # --- derived values ---------------------------------------------------------------------------

    @property
    def effective_top_k(self) -> int:
        """top_k as the ops take it: None means 0, or 50 in authors_compat mode."""
        if self.top_k is None:
            return 50 if self.authors_compat else 0
        return self.top_k

    @property
    def knobs(self) -> tuple[str, ...]:
        """The knobs this config's policy reads."""
        return POLICY_KNOBS[self.policy]

    def replace(self, **changes) -> "DecodeConfig":
        """A copy with `changes` applied (and checked); unknown names raise TypeError naming them."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown decoding knob(s) {', '.join(unknown)}; known: {', '.join(knob_names())}")
        return dataclasses.replace(self, **changes)

    # --- specs ------------------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: str, base: "DecodeConfig | None" = None) -> "DecodeConfig":
        """Parse `policy[:knob=value,...]`; knobs not in the spec keep `base`'s values (default: the
        defaults). Raises ValueError naming the knob for an unknown knob, a bad value or a knob the
        policy does not read."""
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"a policy spec is `policy[:knob=value,...]`, got {spec!r}")
        name, _, rest = spec.strip().partition(":")
        name = name.strip()
        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r} in spec {spec!r}; policies: {', '.join(POLICIES)}")
        changes: dict = {"policy": name}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for item in rest.split(","):
            if not item.strip():
                continue
            key, eq, text = (s.strip() for s in item.partition("="))
            if not eq or not key:
                raise ValueError(f"spec {spec!r}: {item.strip()!r} is not knob=value")
            if key not in types or key == "policy":
                raise ValueError(f"spec {spec!r}: unknown knob {key!r}; {name} reads: {', '.join(POLICY_KNOBS[name])}")
            if key not in POLICY_KNOBS[name]:
                raise ValueError(f"spec {spec!r}: policy {name} does not read {key!r}; it reads: "
                                 f"{', '.join(POLICY_KNOBS[name])}")
            if key in changes:
                raise ValueError(f"spec {spec!r}: {key!r} given twice")
            changes[key] = _parse_value(key, types[key], text)
        return dataclasses.replace(base or cls(), **changes)

    def to_spec(self) -> str:
        """The shortest spec that parses back to this config (the knobs of its policy that differ
        from the defaults)."""
        default = DecodeConfig()
        changed = [k for k in self.knobs if getattr(self, k) != getattr(default, k)]
        parts = [f"{k}={_format_value(getattr(self, k))}" for k in changed]
        return self.policy + (":" + ",".join(parts) if parts else "")


# The sampling knobs that generate also takes per batch row (a list of B values or a [B] tensor;
# decode/inputs.py): they change no shape, so one step serves any mix of them (decode/state.py).
ROW_KNOBS = ("temperature", "top_k", "top_p", "mixture_weight")
_FLOAT32_MAX = 3.4028234663852886e38


def check_sampling_knob(name: str, value):
    """Check one value of a sampling knob (ROW_KNOBS): the config's, or one row's (the caller adds
    the row to the message). Returns it canonical: float, or int / None for top_k."""
    if name == "top_k":
        if value is None:
            return None
        _int("top_k", value, 0, none_ok=True)
        return int(value)
    if name == "temperature":
        _real("temperature", value, 0.0, math.inf)
        if value == math.inf:
            raise ValueError("temperature must be finite (0 is greedy), got inf")
        if value != 0.0 and 1.0 / value > _FLOAT32_MAX:
            raise ValueError(f"temperature {value} is too small (1/T overflows float32); use 0 for greedy")
    elif name == "top_p":
        _real("top_p", value, 0.0, 1.0, low_open=True)
    elif name == "mixture_weight":
        _real("mixture_weight", value, 0.0, 1.0)
    else:
        raise KeyError(name)
    return float(value)


def knob_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(DecodeConfig) if f.name != "policy")


def _int(name: str, value, low: int, none_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an integer" + (" or None" if none_ok else "")
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}" + (" or None" if none_ok else "") + f", got {value}")


def _real(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    ok = (low < value if low_open else low <= value) and value <= high  # NaN fails both
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high != math.inf else f">= {low:g}"
        raise ValueError(f"{name} must be {'in ' if high != math.inf else ''}{interval}, got {value}")


def _parse_value(key: str, typ: str, text: str):
    if text.lower() == "none":
        if "None" not in str(typ):
            raise ValueError(f"{key} cannot be none")
        return None
    try:
        if "bool" in str(typ):
            if text.lower() not in ("0", "1", "true", "false"):
                raise ValueError
            return text.lower() in ("1", "true")
        if "int" in str(typ):
            return int(text)
        if "float" in str(typ):
            return float(text)
    except ValueError:
        kind = "0/1/true/false" if "bool" in str(typ) else "an integer" if "int" in str(typ) else "a number"
        raise ValueError(f"{key} takes {kind}, got {text!r}") from None
    return text


def _format_value(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)  # repr: the shortest exact float text
