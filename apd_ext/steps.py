"""Compatibility module: the step objects live in apd_ext.decode.steps (make_step), the state in
apd_ext.decode.state, the clock in apd_ext.decode.stats."""

from apd_ext.decode.config import DecodeConfig
from apd_ext.decode.state import Progress, State
from apd_ext.decode.stats import NO_CLOCK, Clock, NoClock
from apd_ext.decode.steps import make_step


def Step(policy: str, *, window: int, length: int, kv_window, vocab: int, k: int, mixture_weight: float,
         temperature: float, top_k: int, top_p: float, authors_compat: bool, eos, backend: str, device):
    """The former Step(...) constructor (window = max_lookahead K): make_step of the DecodeConfig
    these knobs make, for a canvas of `length` positions. New code: make_step(DecodeConfig(...))."""
    config = DecodeConfig(policy=policy, max_new_tokens=length, max_lookahead=window, kv_window=kv_window, k=k,
                          mixture_weight=mixture_weight, temperature=temperature, top_k=top_k, top_p=top_p,
                          authors_compat=authors_compat)
    return make_step(config, length=length, vocab=vocab, eos=eos, backend=backend, device=device)


__all__ = ["State", "Progress", "Clock", "NoClock", "NO_CLOCK", "Step", "make_step"]
