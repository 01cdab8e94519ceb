"""Fault injection for bench_ops.py (used by its tests): APD_BENCH_FAIL="provider[:op[=kill]],...".

"provider" alone fails that provider's setup (its first, checked calls); "provider:op" fails each
timed call of that op; "=kill" SIGKILLs the process instead of raising (what a timeout does), so
that a test can check that the rows measured before it are on disk.
"""

from __future__ import annotations

import os
import signal


class InjectedFailure(RuntimeError):
    """Raised where APD_BENCH_FAIL asks for it."""


def injected_failures() -> dict[tuple[str, str | None], str]:
    """APD_BENCH_FAIL parsed: {(provider, op or None): "raise" | "kill"}."""
    out = {}
    for item in filter(None, (x.strip() for x in os.environ.get("APD_BENCH_FAIL", "").split(","))):
        what, _, action = item.partition("=")
        provider, _, op = what.partition(":")
        out[(provider, op or None)] = action or "raise"
    return out


def inject(provider: str, op: str | None) -> None:
    """Raise InjectedFailure (or SIGKILL this process) when APD_BENCH_FAIL names (provider, op);
    op None: the provider's setup."""
    action = injected_failures().get((provider, op))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action is not None:
        raise InjectedFailure(f"APD_BENCH_FAIL: injected failure of {provider}" + (f" {op}" if op else " setup"))


def with_injection(provider: str, calls: dict) -> dict:
    """calls ({op: zero-argument callable}) with APD_BENCH_FAIL's failures of this provider's ops
    raised from inside the call."""
    def wrap(op, fn):
        def call():
            inject(provider, op)
            return fn()
        return call
    return {op: wrap(op, fn) for op, fn in calls.items()}
