"""What a client asks of the serving engine (`Request`), what it gets back after each forward
(`Event`), the engine's refusals, and the checks of a request against the engine's models."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apd_ext.decode import inputs
from apd_ext.decode.config import DecodeConfig, check_sampling_knob

KNOBS = ("temperature", "top_k", "top_p", "mixture_weight")


class RequestError(ValueError):
    """A request the engine cannot take; `field` names the request field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class QueueFull(RuntimeError):
    """max_queue requests are already waiting."""


class EngineClosed(RuntimeError):
    """The engine is shutting down (draining) or stopped: no new requests."""


@dataclass
class Request:
    """One generation request. prompt: token ids (>= 1); max_tokens: tokens to generate at most
    (>= 1); temperature / top_k / top_p / mixture_weight: this request's sampling knobs (None: the
    engine config's); seed: the row seed (None: a random one), as generate(seed=) for one row."""

    prompt: list[int]
    max_tokens: int
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    mixture_weight: float | None = None
    seed: int | None = None


@dataclass
class Event:
    """What one forward did for one request. tokens: the ids it committed, in order (never the
    EOS, nor anything after it); finish_reason: None while running, "stop" (EOS), "length"
    (max_tokens), "cancelled" or "error" (error holds the message; the request failed alone).
    step: the engine's forward index (events of one forward share it; -1 outside a forward);
    step_time_s: the forward's wall time (shared by the requests it served)."""

    request_id: int
    tokens: list[int]
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    step_time_s: float = 0.0
    step: int = -1


def check(r: Request, *, vocab: int, mask_id: int, max_tokens: int, context: int) -> None:
    """RequestError naming the field when the engine cannot take r: its prompt (token ids in
    [0, vocab), no mask token, prompt + max_tokens within the context), max_tokens in
    [1, max_tokens], its knobs by DecodeConfig's rules."""
    if not isinstance(r.prompt, (list, tuple)) or not r.prompt:
        raise RequestError("prompt", "prompt must hold at least one token")
    if not all(type(t) is int for t in r.prompt):
        raise RequestError("prompt", "prompt must be a list of token ids (ints)")
    bad = [t for t in r.prompt if not 0 <= t < vocab]
    if bad:
        raise RequestError("prompt", f"prompt token {bad[0]} is outside the vocabulary [0, {vocab})")
    if mask_id in r.prompt:
        raise RequestError("prompt", f"the prompt contains the mask token (id {mask_id}), which the dLLM reserves "
                                     f"for undecided positions")
    if type(r.max_tokens) is not int or not 1 <= r.max_tokens <= max_tokens:
        raise RequestError("max_tokens", f"max_tokens must be an integer in [1, {max_tokens}], got {r.max_tokens!r}")
    if len(r.prompt) + r.max_tokens > context:
        raise RequestError("prompt", f"prompt ({len(r.prompt)} tokens) + max_tokens ({r.max_tokens}) exceeds the "
                                     f"context length {context}")
    for name in KNOBS:
        value = getattr(r, name)
        if value is not None:
            try:
                check_sampling_knob(name, value)
            except (TypeError, ValueError) as e:
                raise RequestError(name, str(e)) from None


def row_knobs(r: Request, config: DecodeConfig, vocab: int) -> inputs.RowKnobs:
    """r's sampling knobs as one row of the State (the config's where r leaves one out)."""
    given = {n: [getattr(r, n)] for n in KNOBS if getattr(r, n) is not None}
    return inputs.row_knobs(config, vocab, 1, given)


def row_seed(r: Request, knobs_of) -> int:
    """r's row seed as int64 (a random one when r.seed is None), after resolving its knobs with
    knobs_of(r) (what a knob mix may still refuse: a temperature too small for authors_compat's T^2);
    RequestError naming the field."""
    try:
        knobs_of(r)
        if r.seed is None:
            return int(torch.randint(0, 2**62, (1,)))
        return int(inputs.row_seeds(r.seed, 1)[0])
    except (TypeError, ValueError) as e:
        raise RequestError("seed" if "seed" in str(e) else "temperature", str(e).replace(" in row 0", "")) from None
