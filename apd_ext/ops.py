"""Public APD sampling ops: input checks, RNG defaults and the choice of backend.

The math of both ops is apd_ext/reference.py's (the executable spec); this module only checks what
callers pass, fills in defaults and hands normalised arguments to one backend (apd_ext/backends.py).
"""

from __future__ import annotations

import math
import numbers

import torch

from apd_ext import backends

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT64_MAX = 2**63 - 1


def _check_logits(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [B, K, V], got {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if min(x.shape) == 0:
        raise ValueError(f"{name} must have non-zero B, K and V, got {tuple(x.shape)}")
    if x.stride(-1) != 1:  # rows are read in place; only a strided vocabulary needs a copy
        x = x.contiguous()
    return x


def _real(name: str, value) -> float:
    """value as a float; TypeError naming the argument for anything but a real number (str, None,
    bool, tensors)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def _integer(name: str, value, what: str) -> int:
    """value as an int; TypeError naming the argument for anything but an integer (float, str, None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    return int(value)


def _knob_rows(name: str, value: torch.Tensor, batch: int | None, device: torch.device | None,
               integer: bool) -> torch.Tensor:
    """A per-row knob tensor, checked: [B] on the logits' device, float32/float64 (returned as
    float64, exactly) or int64 for top_k."""
    want = "int64" if integer else "float32 or float64"
    if integer and value.dtype != torch.int64 or not integer and value.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} tensor must be {want} (one value per batch row), got {value.dtype}")
    if value.dim() != 1 or (batch is not None and value.shape[0] != batch):
        raise ValueError(f"{name} tensor must have shape [B={batch}] (one value per batch row), got "
                         f"{tuple(value.shape)}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} tensor is on {value.device}, the logits on {device}")
    return value.contiguous() if integer else value.to(torch.float64).contiguous()


def _check_rows(name: str, rows: torch.Tensor, ok, rule: str) -> None:
    """ValueError naming the knob, the first row whose value fails ok(value) and that value; for CPU
    tensors only (reading a CUDA tensor is a host sync, so those values are not checked; apd.h).
    The values are read as one Python list: cheaper than tensor ops for batch-sized knobs."""
    if rows.device.type != "cpu":
        return
    for b, v in enumerate(rows.tolist()):
        if not ok(v):
            raise ValueError(f"{name} must be {rule}, got {v} in row {b}")


_F32_MAX = float(torch.finfo(torch.float32).max)


def _temperature_ok(t: float) -> bool:
    return 0.0 <= t < math.inf and (t == 0.0 or 1.0 / t <= _F32_MAX)  # NaN fails the first test


def _check_filter(temperature, top_k, top_p, vocab: int | None = None, batch: int | None = None,
                  device: torch.device | None = None) -> backends.Filter:
    """The checked filter (apd_filter) of an op call. top_k >= vocab (or >= 2**63 - 1 when vocab is
    not given) keeps every entry and becomes 0, so that any integer top_k reaches the backends as int64.
    Each knob may instead be a per-row [B] tensor (backends.Filter); its values are checked here
    when it lies on the CPU."""
    if isinstance(temperature, torch.Tensor):
        temperature = _knob_rows("temperature", temperature, batch, device, integer=False)
        _check_rows("temperature", temperature, _temperature_ok,
                    "finite and >= 0, and 0 (greedy) or large enough that 1/T fits float32")
    else:
        temperature = _real("temperature", temperature)
        if not 0.0 <= temperature < math.inf:  # also rejects NaN
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        if temperature != 0.0 and 1.0 / temperature > _F32_MAX:
            raise ValueError(f"temperature {temperature} is too small; use 0 for greedy")
    if isinstance(top_k, torch.Tensor):
        top_k = _knob_rows("top_k", top_k, batch, device, integer=True)
        _check_rows("top_k", top_k, lambda k: k >= 0, "an integer >= 0 (0: no top-k filter)")
    else:
        top_k = _integer("top_k", top_k, "an integer >= 0 (0: no top-k filter)")
        if top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: no top-k filter), got {top_k}")
        if top_k >= (_INT64_MAX if vocab is None else vocab):
            top_k = 0
    if isinstance(top_p, torch.Tensor):
        top_p = _knob_rows("top_p", top_p, batch, device, integer=False)
        _check_rows("top_p", top_p, lambda p: 0.0 < p <= 1.0, "in (0, 1]")
    else:
        top_p = _real("top_p", top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    return backends.Filter(temperature, top_k, top_p)


def _check_mixture_weight(mixture_weight, batch: int | None = None, device: torch.device | None = None):
    """mixture_weight as the backends take it: a float in [0, 1], or a per-row float64 [B] tensor
    (values checked when it lies on the CPU)."""
    if isinstance(mixture_weight, torch.Tensor):
        w = _knob_rows("mixture_weight", mixture_weight, batch, device, integer=False)
        _check_rows("mixture_weight", w, lambda x: 0.0 <= x <= 1.0, "in [0, 1]")
        return w
    mixture_weight = _real("mixture_weight", mixture_weight)
    if not 0.0 <= mixture_weight <= 1.0:
        raise ValueError(f"mixture_weight must be in [0, 1], got {mixture_weight}")
    return mixture_weight


def _may_sample(filt: backends.Filter) -> bool:
    """Whether any row of the call may add noise (per-row temperatures count as sampled)."""
    return isinstance(filt.temperature, torch.Tensor) or filt.temperature > 0


def _rng_arg(name: str, value, batch: int, device: torch.device, per_row_ok: bool):
    """(tensor or None, int) for a seed/offset given as an int or an int64 tensor."""
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.int64:
            raise TypeError(f"{name} tensor must be int64, got {value.dtype}")
        if value.device != device:
            raise ValueError(f"{name} tensor is on {value.device}, the logits on {device}")
        n = value.numel()
        if not (n == 1 or (per_row_ok and n == batch)):
            allowed = f"1 or B={batch}" if per_row_ok else "1"
            raise ValueError(f"{name} tensor must hold {allowed} values, got shape {tuple(value.shape)}")
        return value.reshape(-1).contiguous(), 0
    value = _integer(name, value, "an int in [-2**63, 2**64) or an int64 tensor")
    if not -(2**63) <= value < 2**64:
        raise ValueError(f"{name} must fit in 64 bits ([-2**63, 2**64)), got {value}")
    return None, value - 2**64 if value >= 2**63 else value


def _rng(seed, offset, batch: int, device: torch.device):
    if seed is None:
        # One draw from torch's generator of this device (advancing it); no host sync on CUDA.
        seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=device)
    seed_t, seed_v = _rng_arg("seed", seed, batch, device, per_row_ok=True)
    offset_t, offset_v = _rng_arg("offset", 0 if offset is None else offset, batch, device, True)
    return seed_t, seed_v, offset_t, offset_v


def _check_noise(noise, batch: int, window: int, vocab: int, device: torch.device):
    """The explicit uniforms of a call (None: the generator's noise), checked: [B, K, >= vocab]
    float32/float64 on the logits' device, every used entry in the open interval (0, 1). The range
    check reads the values on the host (a device sync on CUDA; skipped while torch.compile traces):
    explicit noise is for replays."""
    if noise is None:
        return None
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a float32 or float64 tensor of uniforms, got {type(noise).__name__}")
    if noise.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"noise must be float32 or float64 uniforms, got {noise.dtype}")
    if noise.dim() != 3 or noise.shape[0] != batch or noise.shape[1] != window or noise.shape[2] < vocab:
        raise ValueError(f"noise must have shape [{batch}, {window}, >={vocab}], got {tuple(noise.shape)}")
    if noise.device != device:
        raise ValueError(f"noise is on {noise.device}, the logits on {device}")
    used = noise[..., :vocab]
    outside = ~((used > 0) & (used < 1))  # NaN is outside too
    # Under torch.compile (a compiled decoding step replaying uniforms) the values cannot be read
    # while tracing: the check is the eager callers' (the public ops are never traced with noise).
    if not torch.compiler.is_compiling() and bool(outside.any()):
        bad = used[outside][0].item()
        raise ValueError(f"noise must hold uniforms in the open interval (0, 1), got {bad}")
    return noise if noise.stride(-1) == 1 else noise.contiguous()


def _check_valid_lengths(valid_lengths, batch: int, window: int, device: torch.device):
    if valid_lengths is None:
        return None
    if not isinstance(valid_lengths, torch.Tensor):
        raise TypeError(f"valid_lengths must be an int64 tensor of shape [{batch}], got {type(valid_lengths).__name__}")
    if valid_lengths.dtype != torch.int64 or tuple(valid_lengths.shape) != (batch,):
        got = f"{valid_lengths.dtype} {tuple(valid_lengths.shape)}"
        raise ValueError(f"valid_lengths must be int64 [{batch}], got {got}")
    if valid_lengths.device != device:
        raise ValueError(f"valid_lengths is on {valid_lengths.device}, the logits on {device}")
    if device.type == "cpu" and bool(((valid_lengths < 0) | (valid_lengths > window)).any()):
        raise ValueError(f"valid_lengths must lie in [0, {window}], got {valid_lengths.tolist()}")
    return valid_lengths.contiguous()


def _check_draft(draft_tokens, batch: int, window: int, vocab: int, device: torch.device) -> torch.Tensor:
    if not isinstance(draft_tokens, torch.Tensor) or draft_tokens.dtype != torch.int64:
        raise TypeError("draft_tokens must be an int64 tensor")
    if tuple(draft_tokens.shape) != (batch, window):
        raise ValueError(f"draft_tokens must have shape [{batch}, {window}], got {tuple(draft_tokens.shape)}")
    if draft_tokens.device != device:
        raise ValueError(f"draft_tokens is on {draft_tokens.device}, the logits on {device}")
    if device.type == "cpu" and bool(((draft_tokens < 0) | (draft_tokens >= vocab)).any()):
        bad = draft_tokens[(draft_tokens < 0) | (draft_tokens >= vocab)][0].item()
        raise ValueError(f"draft_tokens holds {bad}, outside the vocabulary [0, {vocab})")
    return draft_tokens if draft_tokens.stride(-1) == 1 else draft_tokens.contiguous()


def _vocab(vocab_size, *sizes: int, names: tuple[str, ...]) -> int:
    if vocab_size is None:
        if len(set(sizes)) != 1:
            desc = ", ".join(f"{n} has {s}" for n, s in zip(names, sizes))
            raise ValueError(f"vocabulary sizes differ ({desc}); pass vocab_size= the shared vocabulary")
        return sizes[0]
    vocab_size = _integer("vocab_size", vocab_size, "a positive integer")
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size}")
    for n, s in zip(names, sizes):
        if vocab_size > s:
            raise ValueError(f"vocab_size={vocab_size} exceeds the {s} entries of {n}")
    return int(vocab_size)


def sample_draft(
    dllm_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_size: int | None = None,
    seed=None,
    offset=None,
    noise: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draft one token per window position from the dLLM's marginals (APD_SPEC step 1).

    Args:
        dllm_logits: [B, K, V] float32/float16/bfloat16, K the window (positions drafted at once);
            row (b, i) holds the dLLM logits of window position i. Read in place (rows must be
            contiguous; batch/window strides are free).
        temperature: T >= 0. Tokens are ``argmax_v(D / T + g)``; T = 0 is greedy (no noise).
        top_k, top_p: restrict the draft distribution (0 and 1 disable them; top_k >= the vocabulary
            keeps everything); top-p mass is taken from ``softmax(D / T)`` after top-k. See
            reference.py for ties.
            Per-row knobs: temperature, top_k and top_p may each be a [B] tensor on the logits'
            device (float32 or float64; int64 for top_k) instead of a scalar, so that one batch
            mixes requests' settings (greedy beside sampled rows, filtered beside unfiltered).
            Row b's outputs equal, bit for bit, this call with row b's values as Python scalars
            (float32 values are widened to float64 exactly), on row b alone too except that the
            CUDA kernels' log-probs can differ in the last bits between batch shapes (they split
            vocabulary rows by B * K); tokens and accepted counts are exact everywhere. Shape, dtype and device
            are checked always, values only for CPU tensors (the error names the row): a CUDA
            tensor is read inside the kernels (CUDA-graph safe, no host sync) and an out-of-range
            value there gives unspecified tokens for its row.
        vocab_size: use only the first vocab_size entries of each row (default V).
        seed: int, or int64 tensor of 1 or B values on the logits' device (graph-safe). Row b's
            seed is ``seed + b`` (one value) or ``seed[b]``. Default: drawn from torch's generator.
        offset: int or one-element int64 tensor; with the seed it picks the noise (default 0).
        noise: optional [B, K, >= vocab] float32/float64 uniforms replacing the generator (replays);
            every used entry must lie in the open interval (0, 1), which is checked on the host.
        backend: "auto", "cpu", "cuda", "triton" or "reference".

    Raises TypeError / ValueError naming the argument for a wrong type or value.

    Returns:
        tokens int64 [B, K]; logprobs float32 [B, K], ``log softmax(D)[token]`` at temperature 1 over
        the entries the filters keep.

    NaN logits count as -inf (never drawn). To couple the draft with :func:`mixture_accept`, pass
    both ops the same seed and offset (or noise).
    """
    dllm_logits = _check_logits("dllm_logits", dllm_logits)
    B, K, V = dllm_logits.shape
    vocab = _vocab(vocab_size, V, names=("dllm_logits",))
    device = dllm_logits.device
    filt = _check_filter(temperature, top_k, top_p, vocab, B, device)
    noise = _check_noise(noise, B, K, vocab, device)
    impl = backends.get(backend, device)
    return impl.sample_draft(dllm_logits, vocab, filt, backends.Noise(*_rng(seed, offset, B, device), noise))


def mixture_accept(
    dllm_logits: torch.Tensor,
    verifier_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    *,
    mixture_weight: float,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_size: int | None = None,
    valid_lengths: torch.Tensor | None = None,
    greedy_target: bool = False,
    seed=None,
    offset=None,
    noise: torch.Tensor | None = None,
    backend: str = "auto",
):
    """Sample the APD target and find the accepted prefix (APD_SPEC steps 3-4) in one pass.

    Args:
        dllm_logits: [B, K, V] dLLM logits of the window's K positions (those the draft came from).
        verifier_logits: [B, K, V2] verifier logits aligned with them (row i predicts position i).
        draft_tokens: int64 [B, K], usually sample_draft's tokens.
        mixture_weight: in [0, 1]; the target samples
            ``p_dllm^mixture_weight * p_verifier^(1 - mixture_weight)``. A [B] tensor gives each
            row its own weight (per-row knobs, as in :func:`sample_draft`).
        temperature, top_k, top_p: as in :func:`sample_draft` (scalars or per-row [B] tensors);
            the filters also restrict the target.
        vocab_size: shared vocabulary; required when V != V2, at most min(V, V2).
        valid_lengths: optional int64 [B]: row b has only valid_lengths[b] real positions.
        greedy_target: the authors' released code: target =
            ``argmax(mixture_weight * D + (1 - mixture_weight) * A)``, no noise.
        seed, offset, noise: must be those of the draft, so both use the same Gumbel noise.
        backend: "auto", "cpu", "cuda", "triton" or "reference".

    Returns:
        num_accepted int64 [B] (1 <= n <= K for rows with valid positions), target_tokens int64 [B, K]
        (-1 past valid_lengths), logp_dllm, logp_verifier, logp_mixture float32 [B, K]: log-probs of the
        draft tokens at temperature 1 under the filtered dLLM, the verifier, and the normalised mixture.
    """
    dllm_logits = _check_logits("dllm_logits", dllm_logits)
    verifier_logits = _check_logits("verifier_logits", verifier_logits)
    B, K, V = dllm_logits.shape
    if verifier_logits.shape[:2] != (B, K):
        raise ValueError(
            f"verifier_logits must be [B={B}, K={K}, V2], got {tuple(verifier_logits.shape)}"
        )
    device = dllm_logits.device
    if verifier_logits.device != device:
        raise ValueError(f"verifier_logits is on {verifier_logits.device}, dllm_logits on {device}")
    vocab = _vocab(vocab_size, V, verifier_logits.shape[2], names=("dllm_logits", "verifier_logits"))
    draft_tokens = _check_draft(draft_tokens, B, K, vocab, device)
    mixture_weight = _check_mixture_weight(mixture_weight, B, device)
    filt = _check_filter(temperature, top_k, top_p, vocab, B, device)
    valid_lengths = _check_valid_lengths(valid_lengths, B, K, device)
    noise = _check_noise(noise, B, K, vocab, device)
    if _may_sample(filt) and not greedy_target and noise is None and seed is None:
        raise ValueError(
            "mixture_accept needs the seed and offset (or noise) that drew the draft: the target "
            "must reuse the draft's Gumbel noise (APD_SPEC step 3)"
        )
    impl = backends.get(backend, device)
    rng = backends.Noise(*_rng(0 if seed is None else seed, offset, B, device), noise)
    return impl.mixture_accept(dllm_logits, verifier_logits, draft_tokens, vocab, mixture_weight,
                               bool(greedy_target), valid_lengths, filt, rng)


# --- vocabulary-parallel partial ops (tensor parallelism; apd_ext/parallel/vocab.py combines them) --

def _check_slice(vocab_offset, threshold, batch: int, window: int, device: torch.device):
    vocab_offset = _integer("vocab_offset", vocab_offset, "an integer >= 0, a multiple of 4")
    if vocab_offset < 0 or vocab_offset % 4:
        raise ValueError(f"vocab_offset must be >= 0 and a multiple of 4 (the counter noise draws 4 tokens "
                         f"per call), got {vocab_offset}")
    if threshold is not None:
        if not isinstance(threshold, torch.Tensor) or threshold.dtype != torch.float32:
            raise TypeError(f"threshold must be a float32 [{batch}, {window}] tensor, got "
                            f"{getattr(threshold, 'dtype', type(threshold).__name__)}")
        if tuple(threshold.shape) != (batch, window):
            raise ValueError(f"threshold must have shape [{batch}, {window}], got {tuple(threshold.shape)}")
        if threshold.device != device:
            raise ValueError(f"threshold is on {threshold.device}, the logits on {device}")
        threshold = threshold.contiguous()
    return vocab_offset, threshold


def sample_draft_partial(dllm_logits: torch.Tensor, *, vocab_offset: int, threshold: torch.Tensor | None = None,
                         temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                         vocab_size: int | None = None, seed=None, offset=None, noise: torch.Tensor | None = None,
                         backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """sample_draft over one slice of the vocabulary, for engines that shard the LM head.

    dllm_logits [B, K, V] holds the logits of GLOBAL tokens [vocab_offset, vocab_offset + vocab_size)
    (vocab_offset a multiple of 4). The counter noise is drawn at the global ids, so the slices of
    one call together see exactly the unsharded noise; explicit `noise` uniforms are this slice's
    columns. threshold: optional float32 [B, K], the GLOBAL filter threshold in units of D / T
    (kept: D / T >= threshold), replacing top_k / top_p (which, without it, apply to this slice
    only). Other arguments as :func:`sample_draft`.

    Returns tokens int64 [B, K] (global ids of each row's best score over the slice, lowest on
    ties) and stats float32 [B, K, 4] (backends.DRAFT_STATS: score, lse_max, lse_sum, value); the
    combine across slices is apd_ext.parallel.vocab's (highest score, then lowest id; merged
    log-sum-exps).
    """
    dllm_logits = _check_logits("dllm_logits", dllm_logits)
    B, K, V = dllm_logits.shape
    vocab = _vocab(vocab_size, V, names=("dllm_logits",))
    device = dllm_logits.device
    filt = _check_filter(temperature, top_k, top_p, vocab, B, device)
    vocab_offset, threshold = _check_slice(vocab_offset, threshold, B, K, device)
    noise = _check_noise(noise, B, K, vocab, device)
    impl = backends.get(backend, device)
    return impl.sample_draft_partial(dllm_logits, vocab, vocab_offset, filt,
                                     backends.Noise(*_rng(seed, offset, B, device), noise), threshold)


def mixture_accept_partial(dllm_logits: torch.Tensor, verifier_logits: torch.Tensor, draft_tokens: torch.Tensor, *,
                           mixture_weight: float, vocab_offset: int, threshold: torch.Tensor | None = None,
                           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                           vocab_size: int | None = None, valid_lengths: torch.Tensor | None = None,
                           greedy_target: bool = False, seed=None, offset=None, noise: torch.Tensor | None = None,
                           backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """mixture_accept over one slice of the vocabulary (see :func:`sample_draft_partial`).

    draft_tokens int64 [B, K] are GLOBAL ids (any value: a token outside the slice is simply not
    held here). Returns target_tokens int64 [B, K] (global ids of the best target score over the
    slice; -1 past valid_lengths) and stats float32 [B, K, 10] (backends.MIXTURE_STATS: score, the
    (max, sum) log-sum-exp states of the kept D, of A and of the kept mixture, then those three at
    the draft token when the slice holds it, else -inf). The accepted prefix needs every slice:
    apd_ext.parallel.vocab computes it from the combined targets.
    """
    dllm_logits = _check_logits("dllm_logits", dllm_logits)
    verifier_logits = _check_logits("verifier_logits", verifier_logits)
    B, K, V = dllm_logits.shape
    if verifier_logits.shape[:2] != (B, K):
        raise ValueError(f"verifier_logits must be [B={B}, K={K}, V2], got {tuple(verifier_logits.shape)}")
    device = dllm_logits.device
    if verifier_logits.device != device:
        raise ValueError(f"verifier_logits is on {verifier_logits.device}, dllm_logits on {device}")
    vocab = _vocab(vocab_size, V, verifier_logits.shape[2], names=("dllm_logits", "verifier_logits"))
    if not isinstance(draft_tokens, torch.Tensor) or draft_tokens.dtype != torch.int64:
        raise TypeError("draft_tokens must be an int64 tensor")
    if tuple(draft_tokens.shape) != (B, K) or draft_tokens.device != device:
        raise ValueError(f"draft_tokens must be [{B}, {K}] on {device}, got {tuple(draft_tokens.shape)} on "
                         f"{draft_tokens.device}")
    mixture_weight = _check_mixture_weight(mixture_weight, B, device)
    filt = _check_filter(temperature, top_k, top_p, vocab, B, device)
    vocab_offset, threshold = _check_slice(vocab_offset, threshold, B, K, device)
    valid_lengths = _check_valid_lengths(valid_lengths, B, K, device)
    noise = _check_noise(noise, B, K, vocab, device)
    if _may_sample(filt) and not greedy_target and noise is None and seed is None:
        raise ValueError("mixture_accept_partial needs the seed and offset (or noise) that drew the draft")
    impl = backends.get(backend, device)
    rng = backends.Noise(*_rng(0 if seed is None else seed, offset, B, device), noise)
    return impl.mixture_accept_partial(dllm_logits, verifier_logits, draft_tokens.contiguous(), vocab, vocab_offset,
                                       mixture_weight, bool(greedy_target), valid_lengths, filt, rng, threshold)
