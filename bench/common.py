"""Timing, CSV, table and log helpers shared by the benchmarks in bench/ (no apd_ext imports here).

CPU: wall time with time.perf_counter around each call. CUDA: a pair of CUDA events around each
call, the L2 cache flushed before it (so that small inputs are read from HBM, not from L2), one
synchronize per call. Both report p20 / p50 / p80 in milliseconds over the repeats.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Timing:
    p20_ms: float
    p50_ms: float
    p80_ms: float
    repeats: int


def summarize(samples_ms: Sequence[float]) -> Timing:
    s = sorted(samples_ms)
    if len(s) == 1:
        return Timing(s[0], s[0], s[0], 1)
    q = statistics.quantiles(s, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
    return Timing(q[1], statistics.median(s), q[7], len(s))


def _auto_repeats(first_ms: float, budget_s: float, min_repeats: int, max_repeats: int) -> int:
    return max(min_repeats, min(max_repeats, int(budget_s * 1e3 / max(first_ms, 1e-3))))


def time_cpu(fn: Callable[[], object], *, repeats: int | None = None, warmup: int | None = None,
             budget_s: float = 2.0, min_repeats: int = 3, max_repeats: int = 30) -> Timing:
    """Wall-clock timing. repeats=None: about budget_s of repeats, clamped to [min, max].

    The first call is a warm-up, except for calls over a second: there it counts as one of the
    repeats (large CPU tensors are fresh mmap'ed pages on every call anyway, first or not).
    """
    t0 = time.perf_counter()
    fn()  # first call: allocations, lazy init; tells how slow fn is
    first_ms = (time.perf_counter() - t0) * 1e3
    if warmup is None:
        warmup = 0 if first_ms > 300 else 2
    for _ in range(warmup):
        fn()
    n = repeats if repeats is not None else _auto_repeats(first_ms, budget_s, min_repeats, max_repeats)
    samples = [first_ms] if first_ms > 1000 and warmup == 0 else []
    while len(samples) < n:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples)


_L2_FLUSH: dict[torch.device, torch.Tensor] = {}


def _flush_l2(device: torch.device) -> None:
    buf = _L2_FLUSH.get(device)
    if buf is None:  # 256 MiB: larger than any current GPU's L2
        buf = _L2_FLUSH[device] = torch.empty(64 * 2**20, dtype=torch.int32, device=device)
    buf.zero_()


def time_cuda(fn: Callable[[], object], *, device: torch.device | str = "cuda", repeats: int | None = None,
              warmup: int = 5, budget_s: float = 1.0, min_repeats: int = 10, max_repeats: int = 200,
              flush_l2: bool = True) -> Timing:
    """CUDA-event timing of fn's work on the current stream, L2 flushed before each call."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples: list[float] = []

    def once() -> float:
        if flush_l2:
            _flush_l2(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    first_ms = once()
    n = repeats if repeats is not None else _auto_repeats(first_ms, budget_s, min_repeats, max_repeats)
    for _ in range(n):
        samples.append(once())
    return summarize(samples)


def time_fn(fn: Callable[[], object], device: torch.device | str, **kw) -> Timing:
    device = torch.device(device)
    return time_cuda(fn, device=device, **kw) if device.type == "cuda" else time_cpu(fn, **kw)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device | str) -> str:
    """One line naming the hardware the numbers came from (no commas: it goes into CSV cells)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_model()}; {os.cpu_count()} cores; {torch.get_num_threads()} threads"


def timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def append_csv(path: Path | str, rows: Sequence[dict], fields: Sequence[str]) -> Path:
    """Append rows (dicts keyed by fields) to path, writing the header when the file is new.

    The file is closed (flushed) before returning, so rows appended one call at a time survive a
    killed run. A file whose header is a prefix of fields (columns added at the end since it was
    written) is rewritten once with the new header, its rows getting empty new cells. Raises if
    the file exists with another header (any other schema change): move the old file away.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(fields)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            old = list(csv.reader(f))
        header = old[0] if old else []
        if header != fields and header == fields[: len(header)]:
            tmp = path.with_name(path.name + ".upgrade")
            with tmp.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(fields)
                w.writerows(r + [""] * (len(fields) - len(r)) for r in old[1:])
            tmp.replace(path)
        elif header != fields:
            raise RuntimeError(f"{path} has columns {header}, this benchmark writes {fields}; move it away")
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    return path


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """rows rendered as a Markdown table; columns = [(key, header)], values already formatted."""
    cells = [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]

    def line(vals):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"

    out = [line(heads), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in cells]
    return "\n".join(out)


def fmt(x: float | None, digits: int = 3) -> str:
    """Compact number: 3 significant digits, '-' for None."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


class Tee:
    """A text stream that also appends everything to a log file (flushed on every write)."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, s):
        self.stream.write(s)
        self.log.write(s)
        self.log.flush()
        return len(s)

    def flush(self):
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)
