"""bench_ops.py's rows and reports: the CSV schema, the Recorder that appends each row as it is
measured, and the final Markdown tables (every measurement; providers side by side; the targets).
"""

from __future__ import annotations

from pathlib import Path

import torch

import common

OPS = ("sample_draft", "mixture_accept", "draft+accept")
HEADLINE_SHAPE, TARGET_SPEEDUP = (1, 100, 151936), 10.0
BANDWIDTH_GOAL = 0.70  # of the device copy bandwidth
CSV_FIELDS = ("op", "provider", "B", "K", "V", "dtype", "logits", "p20_ms", "p50_ms", "p80_ms", "gbps",
              "speedup_vs_baseline", "device", "timestamp", "apd_ext_version", "torch_version",
              "copy_fraction", "error", "vs_scalar")
TABLE_COLUMNS = [("op", "op"), ("provider", "provider"), ("shape", "BxKxV"), ("dtype", "dtype"),
                 ("logits", "logits"), ("p50", "p50 ms"), ("spread", "p20-p80 ms (n)"), ("gbps", "GB/s"),
                 ("copy", "% of copy BW"), ("speedup", "vs baseline")]


def one_line(e: BaseException, limit: int = 400) -> str:
    """The exception as 'Type: message' on one line, cut to `limit` characters."""
    msg = " ".join(f"{type(e).__name__}: {e}".split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


class Recorder:
    """Rows: appended to the CSV one by one as they are measured, kept for the final tables."""

    def __init__(self, path, meta: dict):
        self.path, self.meta = Path(path), meta
        self.rows: list[dict] = []
        self.failed: list[str] = []

    def add(self, row: dict) -> dict:
        """Keep `row` and append it (with the run's meta columns, floats to 6 digits) to the CSV."""
        self.rows.append(row)
        out = dict(row, **self.meta)
        for k in ("p20_ms", "p50_ms", "p80_ms", "gbps", "speedup_vs_baseline", "copy_fraction", "vs_scalar"):
            if isinstance(out.get(k), float):
                out[k] = f"{out[k]:.6g}"
        common.append_csv(self.path, [out], CSV_FIELDS)
        return row

    def error(self, entries: list[dict], e: BaseException, where: str) -> None:
        """One failure: one ERROR line, a row with the error for each measurement it prevented."""
        msg = one_line(e)
        self.failed.append(f"{where}: {msg}")
        print(f"  ERROR {where}: {msg}", flush=True)
        for entry in entries:
            self.add(dict(entry, error=msg))


def summarize(rec: Recorder, table: list[dict], desc: str, version: str, stamp: str) -> None:
    """Print the final reports: `table` (one formatted line per measurement, TABLE_COLUMNS keys),
    then from rec.rows the providers side by side and the speedup and bandwidth targets."""
    print(f"\n## {desc}; torch {torch.__version__}; apd_ext {version}; {torch.get_num_threads()} threads; {stamp}\n")
    print(common.markdown_table(table, TABLE_COLUMNS))
    ok = [r for r in rec.rows if not r.get("error") and r["op"] in OPS]
    print_side_by_side(ok)
    print_speedup_target(ok)
    print_bandwidth_goal(ok)
    print_per_row_cost(ok)


PER_ROW_BUDGET = 0.03  # per-row knobs may cost at most 3% of the scalar op's time


def print_per_row_cost(ok: list[dict]) -> None:
    """The per-row providers ("<backend>+rows": every knob a [B] tensor of the same values) against
    their scalar backend measured just before on the same logits: p50 ratio, and whether it is within
    PER_ROW_BUDGET."""
    rows = [r for r in ok if r["provider"].endswith("+rows") and r.get("vs_scalar") is not None]
    if not rows:
        return
    print(f"\n### Per-row knobs vs scalar knobs (p50 ratio; budget +{100 * PER_ROW_BUDGET:.0f}%)\n")
    lines = [dict(op=r["op"], provider=r["provider"], shape=f"{r['B']}x{r['K']}x{r['V']}", dtype=r["dtype"],
                  logits=r["logits"], ratio=f"{r['vs_scalar']:.3f}",
                  within="yes" if r["vs_scalar"] <= 1 + PER_ROW_BUDGET else "NO") for r in rows]
    print(common.markdown_table(lines, [("op", "op"), ("provider", "provider"), ("shape", "BxKxV"),
                                        ("dtype", "dtype"), ("logits", "logits"), ("ratio", "per-row / scalar"),
                                        ("within", "within budget")]))


def side_by_side(ok: list[dict], providers: list[str], ref: str | None) -> list[dict]:
    """One line per (op, shape, dtype, logits): each provider's p50, and for the apd_ext providers
    their % of the copy bandwidth, speedup vs the baseline and time relative to `ref`."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in ok:
        by_key.setdefault((r["op"], r["B"], r["K"], r["V"], r["dtype"], r["logits"]), {})[r["provider"]] = r
    side = []
    for (op, B, K, V, dtype, kind), got in by_key.items():
        line = dict(op=op, shape=f"{B}x{K}x{V}", dtype=dtype, logits=kind)
        for p in providers:
            r = got.get(p)
            line[p] = common.fmt(r["p50_ms"]) if r else "-"
            if p != "baseline":
                frac = r.get("copy_fraction") if r else None
                line[p + "%"] = "-" if frac is None else f"{100 * frac:.0f}%"
                base = got.get("baseline")
                line[p + "x"] = f"{base['p50_ms'] / r['p50_ms']:.1f}x" if r and base else "-"
                if ref and p != ref:
                    rr = got.get(ref)
                    line[p + "/" + ref] = f"{r['p50_ms'] / rr['p50_ms']:.2f}" if r and rr else "-"
        side.append(line)
    return side


def print_side_by_side(ok: list[dict]) -> None:
    """The side-by-side table of the successful rows `ok` (nothing without an apd_ext provider);
    times are relative to the CUDA backend when it ran, else to the first apd_ext provider."""
    providers = list(dict.fromkeys(r["provider"] for r in ok))
    apd = [p for p in providers if p != "baseline"]
    ref = "cuda" if "cuda" in apd else (apd[0] if apd else None)
    side = side_by_side(ok, providers, ref)
    if side and apd:
        cols = [("op", "op"), ("shape", "BxKxV"), ("dtype", "dtype"), ("logits", "logits")]
        cols += [(p, f"{p} ms") for p in providers]
        cols += [(p + "%", f"{p} % copy") for p in apd]
        cols += [(p + "x", f"{p} vs baseline") for p in apd if "baseline" in providers]
        cols += [(p + "/" + ref, f"{p} time / {ref}") for p in apd if p != ref]
        print(f"\n### Side by side (p50; % of the copy bandwidth; speedup = baseline / provider)\n")
        print(common.markdown_table(side, cols))


def print_speedup_target(ok: list[dict]) -> None:
    """draft+accept's speedup over the baseline at HEADLINE_SHAPE against TARGET_SPEEDUP."""
    pairs = [r for r in ok if r["op"] == "draft+accept" and (r["B"], r["K"], r["V"]) == HEADLINE_SHAPE
             and r["provider"] != "baseline" and r.get("speedup_vs_baseline")]
    if pairs:
        print(f"\ndraft+accept at {HEADLINE_SHAPE} vs the baseline (target >= {TARGET_SPEEDUP:g}x):")
        for r in pairs:
            met = "met" if r["speedup_vs_baseline"] >= TARGET_SPEEDUP else "NOT met"
            print(f"  {r['provider']:<10} {r['dtype']} {r['logits']:<5} {r['speedup_vs_baseline']:6.1f}x  ({met})")


def print_bandwidth_goal(ok: list[dict]) -> None:
    """How many kernel (cuda, triton) measurements reach BANDWIDTH_GOAL of the copy bandwidth, and
    the ones below it."""
    kernels = [r for r in ok if r["provider"] in ("cuda", "triton") and r.get("copy_fraction") is not None]
    if kernels:
        met = sum(r["copy_fraction"] >= BANDWIDTH_GOAL for r in kernels)
        print(f"\nkernel bandwidth >= {100 * BANDWIDTH_GOAL:.0f}% of the copy bandwidth: {met} of {len(kernels)} "
              "measurements; below:")
        for r in kernels:
            if r["copy_fraction"] < BANDWIDTH_GOAL:
                print(f"  {r['provider']:<7} {r['op']:<15} {r['B']}x{r['K']}x{r['V']} {r['dtype']} {r['logits']:<5} "
                      f"{100 * r['copy_fraction']:5.1f}%")
