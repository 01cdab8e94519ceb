"""What `generate` checks and prepares before any work: the runners (order, device, vocabulary,
EOS), the prompts (a `Batch`: the canvas, prompt lengths, row seeds), the length limit and the
per-row sampling knobs (`RowKnobs`). Errors name the argument (and the row) and say what it takes."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from apd_ext.decode.config import ROW_KNOBS, DecodeConfig, check_sampling_knob, knob_names


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def tensor_parallel(dllm, verifier, vocab: int):
    """(tp, shard) when the runners are sharded (apd_ext.parallel), else None. Both must be sharded
    over one group, their vocabulary slices cut on the shared vocabulary `vocab`, so that a rank's
    dLLM and verifier logits cover the same global tokens."""
    d_tp, v_tp = getattr(dllm, "tp", None), getattr(verifier, "tp", None)
    if d_tp is None and v_tp is None:
        return None
    if verifier is None:  # a dLLM-only policy: the dLLM's slices alone
        if dllm.shard.vocab != vocab:
            raise ValueError(f"the dLLM's vocabulary slices were cut on {dllm.shard.vocab} tokens, but decoding uses "
                             f"a vocabulary of {vocab}: load it with vocab_size={vocab}")
        return d_tp, dllm.shard
    if d_tp is None or v_tp is None or d_tp.group is not v_tp.group:
        raise ValueError("the dLLM and the verifier must both be loaded with the same tp= "
                         "(TensorParallel) to decode with tensor parallelism")
    d, v = dllm.shard, verifier.shard
    if d.vocab != vocab or v.vocab != vocab:
        raise ValueError(f"the runners' vocabulary slices were cut on {d.vocab} (dLLM) and {v.vocab} (verifier) "
                         f"tokens, but decoding uses a shared vocabulary of {vocab}: load both with "
                         f"vocab_size={vocab}")
    if (d.lo, d.local_vocab) != (v.lo, v.local_vocab):
        raise ValueError(f"rank {d_tp.rank}: the dLLM holds tokens [{d.lo}, {d.lo + d.local_vocab}) of the shared "
                         f"vocabulary, the verifier [{v.lo}, {v.lo + v.local_vocab})")
    return d_tp, d


LLADA_VERIFIER = ("APD needs a verifier that numbers tokens as LLaDA does (its vocabulary of {vocab}, mask "
                  "{mask}); none is public, so a LLaDA dLLM runs with the dLLM-only policies (dllm_fixed, threshold, "
                  "diffusion; verifier=None)")


def check_runners(dllm, verifier, policy: str = "apd") -> None:
    """The dLLM (with a mask token) first, the verifier second, on one device. verifier may be None
    for a policy that never calls it (dllm_fixed, threshold, diffusion). A LLaDA dLLM with a verifier
    of another vocabulary is refused for the policies that use both models (apd)."""
    d_mask = getattr(getattr(dllm, "config", None), "mask_token_id", None)
    v_mask = getattr(getattr(verifier, "config", None), "mask_token_id", None)
    if d_mask is None:
        swapped = v_mask is not None or not hasattr(verifier, "prefill")
        hint = ("the runners look swapped: pass generate(dllm, verifier, ...)" if swapped else
                "pass a DllmRunner or HFDllm (with mask_token_id) as the first argument")
        raise TypeError(f"dllm (the first argument) must be the diffusion model, got {type(dllm).__name__} "
                        f"without a mask_token_id; {hint}")
    from apd_ext.decode.steps import STEPS

    kind = STEPS[policy]
    from apd_ext.decode.config import BLOCK_POLICIES

    if policy in BLOCK_POLICIES and getattr(dllm, "block_size", None) is None:
        raise ValueError(f"policy {policy!r} is the decoding of a block-diffusion dLLM (Fast-dLLM v2, SDAR); "
                         f"this dLLM ({getattr(dllm, 'family', type(dllm).__name__)}) has no blocks")
    if policy == "diffusion" and getattr(dllm, "block_size", None) is not None:
        raise ValueError("policy 'diffusion' unmasks the whole answer at once; a block-diffusion dLLM decodes block "
                         "by block: use fast_dllm_v2 / sdar (its own decoding), apd, threshold or dllm_fixed")
    if verifier is None:
        if kind.verifier_forwards:
            raise TypeError(f"policy {policy!r} runs the verifier: pass a VerifierRunner or HFVerifier as the second "
                            f"argument (verifier=None only for the dLLM-only policies)")
        return
    if not hasattr(verifier, "prefill") or not hasattr(verifier, "step"):
        raise TypeError(f"verifier (the second argument) must be a VerifierRunner or HFVerifier, got "
                        f"{type(verifier).__name__}")
    if dllm.device != verifier.device:
        raise ValueError(f"dllm is on {dllm.device}, verifier on {verifier.device}: put both on one device")
    if (kind.dllm_forwards and kind.verifier_forwards and getattr(dllm, "family", None) == "llada"
            and verifier.vocab_size != dllm.vocab_size):
        raise ValueError(LLADA_VERIFIER.format(vocab=dllm.vocab_size, mask=d_mask) +
                         f"; this verifier's vocabulary is {verifier.vocab_size}")


def shared_vocab(dllm, verifier, vocab_size) -> int:
    """The vocabulary both models sample from (vocab_size, or the models' common size; the dLLM's
    alone without a verifier)."""
    if verifier is None:
        if vocab_size is None:
            return dllm.vocab_size
        if not _is_int(vocab_size):
            raise TypeError(f"vocab_size must be an integer or None, got {vocab_size!r}")
        if not 0 < vocab_size <= dllm.vocab_size:
            raise ValueError(f"vocab_size={vocab_size} must be in [1, {dllm.vocab_size}] (the dLLM's vocabulary)")
        return int(vocab_size)
    if vocab_size is None:
        if dllm.vocab_size != verifier.vocab_size:
            raise ValueError(
                f"dLLM vocabulary ({dllm.vocab_size}) and verifier vocabulary ({verifier.vocab_size}) differ; "
                f"pass vocab_size= the size of the tokenizer they share (e.g. 151936 for Dream + Qwen2.5)")
        return dllm.vocab_size
    if not _is_int(vocab_size):
        raise TypeError(f"vocab_size must be an integer or None, got {vocab_size!r}")
    if not 0 < vocab_size <= min(dllm.vocab_size, verifier.vocab_size):
        raise ValueError(f"vocab_size={vocab_size} must be in [1, {min(dllm.vocab_size, verifier.vocab_size)}] "
                         f"(it exceeds a model's vocabulary)")
    return int(vocab_size)


def eos_ids(dllm, verifier, eos_token_id, both_models: bool) -> list[int]:
    """eos_token_id as a list (int, list of ints, or [] for none); default: the models' EOS,
    which must agree when both models decide tokens (both_models)."""
    if eos_token_id is None:
        d_eos, v_eos = dllm.config.eos_ids, ([] if verifier is None else verifier.config.eos_ids)
        if d_eos and v_eos and set(d_eos) != set(v_eos) and both_models:
            raise ValueError(f"EOS tokens disagree: dLLM {d_eos}, verifier {v_eos}; pass eos_token_id=")
        return list(d_eos or v_eos)
    ids = [eos_token_id] if _is_int(eos_token_id) else eos_token_id
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__") or not all(_is_int(e) for e in ids):
        raise TypeError(f"eos_token_id must be an int, a list of ints or None, got {eos_token_id!r}")
    return [int(e) for e in ids]


def prompt_rows(input_ids, attention_mask=None) -> list[list[int]]:
    """The prompts as token lists: input_ids int [B, P] or [P] (attention_mask [B, P] marking real
    tokens, left or right padded) or a list of token lists (or one list of ints)."""
    if isinstance(input_ids, (str, bytes)) or (isinstance(input_ids, (list, tuple)) and input_ids
                                                and isinstance(input_ids[0], (str, bytes))):
        raise TypeError("input_ids is text: tokenize it first (tokenizer.encode(text)) and pass the token ids")
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got a {input_ids.dtype} tensor")
        ids = input_ids.unsqueeze(0) if input_ids.dim() == 1 else input_ids
        if ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, P] or [P], got shape {tuple(input_ids.shape)}")
        rows = ids.tolist()
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != ids.shape:
                raise ValueError(f"attention_mask must be a tensor of input_ids' shape {tuple(ids.shape)}")
            rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, attention_mask.tolist())]
    else:
        if attention_mask is not None:
            raise ValueError("attention_mask needs input_ids as a tensor (lists of token lists need no mask)")
        items = list(input_ids) if hasattr(input_ids, "__iter__") else None
        if items is None:
            raise TypeError(f"input_ids must be a tensor or a list of token lists, got {type(input_ids).__name__}")
        if items and all(_is_int(t) for t in items):
            items = [items]  # one flat list of ints: one prompt
        rows = []
        for r in items:
            if not hasattr(r, "__iter__") or isinstance(r, (str, bytes)):
                raise TypeError(f"input_ids must be a list of token lists, got an element {r!r}")
            rows.append(list(r))
            bad = [t for t in rows[-1] if not _is_int(t)]
            if bad:
                raise TypeError(f"input_ids must hold integer token ids, got {bad[0]!r} ({type(bad[0]).__name__})")
    if not rows:
        raise ValueError("empty batch: input_ids has no rows")
    if any(len(r) == 0 for r in rows):
        raise ValueError("input_ids: every prompt needs at least one token")
    return [[int(t) for t in r] for r in rows]


def _seed64(seed, where: str = "") -> int:
    """One seed as int64 (values from 2^63 on wrap, as the ops take them)."""
    if not _is_int(seed):
        raise TypeError(f"seed must be an int, a list of ints or an int64 tensor, got {seed!r} "
                        f"({type(seed).__name__}){where}")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must fit in 64 bits ([-2^63, 2^64)), got {seed}{where}")
    return int(seed) - 2**64 if seed >= 2**63 else int(seed)


def row_seeds(seed, batch: int) -> torch.Tensor:
    """int64 [batch] row seeds on the host: seed + b for an int (any value in [-2^63, 2^64): those
    from 2^63 on wrap to int64, as the ops take them), a list (or tuple) of `batch` such ints, or
    an int64 tensor of 1 or `batch` seeds; None draws one."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64:
            raise TypeError(f"seed tensor must be int64, got {seed.dtype}")
        s = seed.detach().to("cpu").reshape(-1)
        if s.numel() not in (1, batch):
            raise ValueError(f"seed tensor must hold 1 or {batch} (the batch size) values, got {s.numel()}")
        return s + torch.arange(batch, dtype=torch.int64) if s.numel() == 1 else s.clone()
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise ValueError(f"seed list must hold one seed per batch row (B={batch}), got {len(seed)}")
        return torch.tensor([_seed64(s, f" in row {b}") for b, s in enumerate(seed)], dtype=torch.int64)
    seed = _seed64(seed)
    return torch.tensor([seed], dtype=torch.int64) + torch.arange(batch, dtype=torch.int64)  # wraps like uint64


# --- per-row sampling knobs ---------------------------------------------------------------------------

def _per_row(value) -> bool:
    return isinstance(value, (list, tuple, torch.Tensor))


def split_knobs(knobs: dict) -> tuple[dict, dict]:
    """generate's **knobs split into (scalars for DecodeConfig.replace, per-row values): a list,
    tuple or tensor of a sampling knob (config.ROW_KNOBS) is per row; one for any other knob is an
    error (those shape the step: one value per call). Unknown names stay with the scalars, for
    DecodeConfig.replace to name."""
    scalars, rows = {}, {}
    known = set(knob_names()) | {"policy"}
    for name, value in knobs.items():
        if not _per_row(value) or name not in known:
            scalars[name] = value
        elif name in ROW_KNOBS:
            rows[name] = value
        else:
            raise TypeError(f"{name} takes one value per call (it shapes the decoding step), got a "
                            f"{type(value).__name__}; per-row values are taken by {', '.join(ROW_KNOBS)} and seed")
    return scalars, rows


def sampling_rows(values: dict, batch: int) -> dict[str, list]:
    """The per-row values of split_knobs checked on the host, as lists of `batch` Python values
    (float; int or None for top_k). A knob takes a list or tuple of `batch` values (top_k's may
    hold None: as top_k=None, 0 or 50 with authors_compat: DecodeConfig.effective_top_k) or a [batch] tensor
    (float32 or float64; int64 for top_k). Errors name the knob and the row."""
    out = {}
    for name, value in values.items():
        integer = name == "top_k"
        if isinstance(value, torch.Tensor):
            want = (torch.int64,) if integer else (torch.float32, torch.float64)
            if value.dtype not in want:
                raise TypeError(f"{name} tensor must be {'int64' if integer else 'float32 or float64'} (one value per "
                                f"batch row), got {value.dtype}")
            if value.dim() != 1 or value.shape[0] != batch:
                raise ValueError(f"{name} tensor must have shape [B] = [{batch}] (one value per batch row), got "
                                 f"{tuple(value.shape)}")
            items = value.detach().to("cpu").tolist()  # float32 widens to a Python float exactly
        else:
            items = list(value)
            if len(items) != batch:
                raise ValueError(f"{name} must hold one value per batch row (B={batch}), got {len(items)}")
        rows = []
        for b, v in enumerate(items):
            try:
                rows.append(check_sampling_knob(name, v))
            except (TypeError, ValueError) as e:
                raise type(e)(f"{e} in row {b}") from None
        out[name] = rows
    return out


@dataclass
class RowKnobs:
    """The sampling knobs of every row on the host, as State holds them (State.fill copies them
    in): temperature, draft_temperature (what the draft samples at: T, or T*T in float64 with
    authors_compat, as the released code does), top_p and mixture_weight float64 [B]; top_k int64
    [B] (0: no filter; None and values >= the vocabulary resolved to what the scalar ops take)."""

    temperature: torch.Tensor
    draft_temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    mixture_weight: torch.Tensor

    def filters(self, vocab: int) -> tuple[bool, bool]:
        """Whether any row's top-k, and any row's top-p, filters (what tensor parallelism's global
        threshold searches need to know: steps.make_step's `filters`)."""
        return bool(((self.top_k > 0) & (self.top_k < vocab)).any()), bool((self.top_p < 1.0).any())


def row_knobs(config: DecodeConfig, vocab: int, batch: int, rows: dict[str, list] | None = None) -> RowKnobs:
    """Each row's knobs: rows[name] (sampling_rows' lists) where given, else the config's value.
    config is the one the step reads (steps.StepBase.step_config: threshold drops authors_compat);
    values resolve as the scalar path resolves them (StepBase's filters): top_k None -> 0, or 50
    with authors_compat (DecodeConfig.effective_top_k), top_k >= vocab -> 0, the draft temperature T*T (Python float
    arithmetic, i.e. float64) under authors_compat, checked like the config's."""
    rows = rows or {}

    def column(name: str) -> list:
        return rows[name] if name in rows else [getattr(config, name)] * batch

    temps = column("temperature")
    draft = [t * t for t in temps] if config.authors_compat else list(temps)
    if "temperature" in rows:  # (the config's own value is checked by the step's scalar filters)
        for b, t in enumerate(draft):
            if t != 0.0 and 1.0 / t > 3.4028234663852886e38:
                raise ValueError(f"temperature {temps[b]} drafts at T^2 = {t} with authors_compat, which is too small "
                                 f"(1/T^2 overflows float32; use 0 for greedy) in row {b}")
    none_k = config.replace(top_k=None).effective_top_k  # 0, or 50 with authors_compat
    ks = [none_k if k is None else k for k in column("top_k")]
    f64 = dict(dtype=torch.float64)
    return RowKnobs(temperature=torch.tensor(temps, **f64), draft_temperature=torch.tensor(draft, **f64),
                    top_k=torch.tensor([0 if k >= vocab else k for k in ks], dtype=torch.int64),
                    top_p=torch.tensor(column("top_p"), **f64),
                    mixture_weight=torch.tensor(column("mixture_weight"), **f64))


@dataclass
class Batch:
    """The prompts of one call on the host: canvas int64 [B, L + 1] (prompt, then mask tokens;
    column L is scratch), prompt_len and seeds int64 [B], L = P_max + max_new_tokens."""

    canvas: torch.Tensor
    prompt_len: torch.Tensor
    seeds: torch.Tensor
    length: int

    @property
    def size(self) -> int:
        return self.canvas.shape[0]


def block_canvas(dllm, L: int, limit: int) -> int:
    """L rounded up to a multiple of the dLLM's block size when it is a block-diffusion model (its
    current block is always read whole, mask tokens after a row's end included, as it was
    trained); raises ValueError when that passes the models' maximum length `limit`."""
    bs = getattr(dllm, "block_size", None)
    if bs is None or L % bs == 0:
        return L
    rounded = -(-L // bs) * bs
    if rounded > limit:
        raise ValueError(f"the canvas of {L} positions rounded up to whole blocks of {bs} ({rounded}) exceeds the "
                         f"models' maximum length {limit} (max_position_embeddings)")
    return rounded


def make_batch(dllm, verifier, rows: list[list[int]], config: DecodeConfig, seed,
               canvas_length: int | None = None) -> Batch:
    """Check the prompts against the models (mask token, vocabulary, maximum length) and lay them
    out on a canvas of L = P_max + max_new_tokens positions, or `canvas_length` when larger (a row
    ends at its own prompt length + max_new_tokens either way); for a block-diffusion dLLM, L rounded
    up to whole blocks (block_canvas)."""
    mask_id = dllm.mask_token_id
    models = [dllm] if verifier is None else [dllm, verifier]
    limit_v = min(m.vocab_size for m in models)
    if any(mask_id in r for r in rows):
        raise ValueError(f"input_ids: a prompt contains the mask token {mask_id}")
    if any(t < 0 or t >= limit_v for r in rows for t in r):
        raise ValueError(f"input_ids: a prompt token is outside the models' vocabulary [0, {limit_v})")
    P, N = max(len(r) for r in rows), config.max_new_tokens
    limit = min(m.config.max_position_embeddings for m in models)
    if P + N > limit:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({N}) exceeds the models' maximum length {limit} "
                         f"(max_position_embeddings)")
    if canvas_length is not None:
        if type(canvas_length) is not int or not P + N <= canvas_length <= limit:
            raise ValueError(f"canvas_length must be an integer in [prompt + max_new_tokens, the models' maximum "
                             f"length] = [{P + N}, {limit}], got {canvas_length!r}")
    B, L = len(rows), max(P + N, canvas_length or 0)
    L = block_canvas(dllm, L, limit)
    canvas = torch.full((B, L + 1), mask_id, dtype=torch.int64)
    for b, r in enumerate(rows):
        canvas[b, : len(r)] = torch.tensor(r, dtype=torch.int64)
    prompt_len = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    return Batch(canvas, prompt_len, row_seeds(seed, B), L)
