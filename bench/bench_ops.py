"""Microbenchmark of apd_ext's sampling ops against the authors' eager-PyTorch code.

    PYTHONPATH=. python bench/bench_ops.py [--device cpu|cuda] [--out DIR] [--quick] [...]   (--help: all flags)

For each (B, K, V) shape, logit dtype and logit kind, times on every backend that runs on the device:
  sample_draft     (reads D once)
  mixture_accept   (reads D and A once; the draft tokens come from the same backend's sample_draft)
  draft+accept     sample_draft then mixture_accept with the same seed/offset: one APD step's sampling
and the same three for the baseline (bench/authors_baseline.py: their draft, their acceptance rule,
both). The device copy bandwidth is measured first in the same run (a large copy, bytes read +
written over time); every measurement's effective GB/s (bytes of logits read / median time) is
also given as a fraction of it (goal: >= 70% for the kernels).

Each CSV row is appended (and flushed) as soon as it is measured, so a run cut short by a timeout
keeps what it measured. An exception in one provider/configuration (a Triton compile error, an
out-of-memory, a wrong num_accepted) is printed on one `ERROR` line and recorded as a row with an
`error` cell; the run goes on with the others and exits with status 1 at the end. At the end: a
Markdown table of every measurement, then the providers side by side per configuration (median ms,
% of copy bandwidth, speedup vs the baseline, time relative to the CUDA kernels).

Output: bench/results/ops_<device>.csv, or with --out DIR: DIR/ops_<device>.csv and a copy of the
printed output in DIR/ops_<device>.log. Default shapes: on CUDA the GPU grid B in {1, 8} x
K in {16, 100, 256} x V = 151936, on CPU 1x16, 1x100, 8x100 (x 151936); dtypes bf16 and fp32.

Tokens are not compared: the baseline draws other noise.

Per-row knobs: beside each apd_ext backend (the reference excepted) the provider "<backend>+rows"
makes the same calls with every knob a per-row [B] tensor of the same values (what an engine that
batches mixed requests passes, and what the decoding loop's state holds), timed right after the
scalar calls on the same logits; the CSV's vs_scalar column and the last table give its p50 over
the scalar provider's (budget: +3%). --no-per-row leaves them out.

Settings of every op: temperature 1, mixture_weight 0.7, no top-k/top-p, vocab_size = V, apd_ext in
its default (paper) semantics, i.e. the target is sampled with the draft's noise; the baseline's
target is the greedy argmax of the raw mixture (less work).

Logit kinds (D: dLLM logits, A: verifier logits, both float32 from a fixed seed on the device, then cast):
  flat  D ~ N(0, 1) iid: no peak, the worst case for the kernels' exact noise-skipping shortcuts.
  llm   bulk D ~ 2.5 * N(0, 1), plus 4 planted tokens per row at random ids whose softmax
        probabilities are exactly p, 0.36 (1-p), 0.18 (1-p), 0.06 (1-p) with p ~ U(0.3, 0.9) per row
        (the bulk keeps the last 0.4 (1-p)): max-softmax 0.3-0.9, a heavy upper tail.
  Both: A = c D + sqrt(1 - c^2) * s * N(0, 1), c = 0.9, s the bulk scale (1 or 2.5).

Fault injection (tests): APD_BENCH_FAIL="provider[:op[=kill]],..." makes that provider's setup
(no op) or that op's calls raise, like a real failure at the same place; "=kill" SIGKILLs the
process instead (what a timeout does), to check that the rows measured before it are on disk
(bench/ops_faults.py). The logits and the timed calls are made in bench/ops_calls.py, the CSV
schema and the final tables in bench/ops_report.py.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

import common
from ops_report import OPS, Recorder, one_line, summarize

try:
    import apd_ext
    from ops_calls import (CORRELATION, DTYPES, KINDS, MIXTURE_WEIGHT, OFFSET, SEED, TEMPERATURE, apd_calls,
                           baseline_calls, make_logits, max_softmax)
except ModuleNotFoundError as e:
    if e.name != "apd_ext":
        raise
    sys.exit("apd_ext is not importable: run from the repository root with PYTHONPATH=. "
             "after `python setup.py build_ext --inplace` (or pip install -e .)")

SHAPES_CPU = ((1, 16, 151936), (1, 100, 151936), (8, 100, 151936))
SHAPES_GPU = tuple((B, K, 151936) for B in (1, 8) for K in (16, 100, 256))  # the GPU run's grid
LOGIT_READS = {"sample_draft": 1, "mixture_accept": 2, "draft+accept": 3}  # logit tensors read once each
SHAPES_ERROR = "--shapes takes BxKxV triples, e.g. 1x100x151936"


def _shapes_text(shapes) -> str:
    return ",".join("x".join(map(str, s)) for s in shapes)


def build_parser() -> argparse.ArgumentParser:
    """The command line (defaults that depend on --device or --quick are None here: see parse_args)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", default=None,
                   help="comma-separated BxKxV (default on CUDA: the grid "
                        + _shapes_text(SHAPES_GPU) + "; on CPU: " + _shapes_text(SHAPES_CPU) + ")")
    p.add_argument("--dtypes", default="bf16,fp32", help="comma-separated of bf16, fp16, fp32")
    p.add_argument("--logits", default="flat,llm", help="comma-separated logit kinds: flat, llm")
    p.add_argument("--backends", default=None,
                   help="comma-separated apd_ext backends (default: all that run on the device; Triton on "
                        "CPU only runs in its interpreter and is never timed)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per measurement (default: about --budget-s worth, "
                        "at least 3 (CPU) / 10 (CUDA), at most 30 / 100)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds of timed calls per measurement when --repeats is not given "
                        "(default 2 on CPU, 0.2 on CUDA)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (CPU)")
    p.add_argument("--reference-max-elems", type=float, default=None,
                   help="time the reference backend only when B*K*V is at most this "
                        "(default 4e6 on CPU, 2e7 on CUDA; it materialises [B,K,V,4] int64 Philox words)")
    p.add_argument("--copy-mib", type=int, default=None,
                   help="MiB copied by the copy-bandwidth measurement (read + written: twice that; "
                        "default 512 on CUDA, 64 on CPU, 16 with --quick)")
    p.add_argument("--out", default=None,
                   help="directory for the CSV (ops_<device>.csv) and the log (ops_<device>.log)")
    p.add_argument("--csv", default=None,
                   help="CSV to append to (default DIR/ops_<device>.csv with --out, "
                        "else bench/results/ops_<device>.csv)")
    p.add_argument("--no-baseline", action="store_true", help="skip the authors' eager baseline")
    p.add_argument("--no-per-row", action="store_true",
                   help="skip the per-row providers (<backend>+rows: every knob a [B] tensor)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: smallest shape, 3 repeats, no reference backend, CSV to "
                        "bench/results/ops_<device>_quick.csv.tmp (git-ignored) unless --out/--csv")
    return p


def _parse_lists(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """--shapes (default: the device's grid), --dtypes and --logits as lists; p.error on bad ones."""
    if a.shapes is None:
        a.shapes = _shapes_text(SHAPES_GPU if a.device == "cuda" else SHAPES_CPU)
    try:
        a.shapes = [tuple(int(x) for x in s.lower().split("x")) for s in a.shapes.split(",") if s]
    except ValueError:
        p.error(SHAPES_ERROR)
    if any(len(s) != 3 or min(s) <= 0 for s in a.shapes):
        p.error(SHAPES_ERROR)
    a.dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    a.logits = [k.strip() for k in a.logits.split(",") if k.strip()]
    if bad := [d for d in a.dtypes if d not in DTYPES] + [k for k in a.logits if k not in KINDS]:
        p.error(f"unknown dtype/logit kind {bad}")


def _apply_defaults(a: argparse.Namespace) -> None:
    """--quick's settings, then the defaults that depend on the device (see the options' help)."""
    if a.quick:
        a.shapes = [min(a.shapes, key=math.prod)]
        a.repeats = a.repeats or 3
        a.reference_max_elems = 0
    if a.reference_max_elems is None:
        a.reference_max_elems = 2e7 if a.device == "cuda" else 4e6
    if a.budget_s is None:
        a.budget_s = 0.2 if a.device == "cuda" else 2.0
    if a.copy_mib is None:
        a.copy_mib = 16 if a.quick else 512 if a.device == "cuda" else 64
    if a.csv is None:
        if a.out:
            a.csv = Path(a.out) / f"ops_{a.device}.csv"
        else:
            a.csv = common.RESULTS / (f"ops_{a.device}_quick.csv.tmp" if a.quick else f"ops_{a.device}.csv")


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked, with shapes as (B, K, V) tuples and every default filled in."""
    p = build_parser()
    a = p.parse_args(argv)
    _parse_lists(p, a)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    _apply_defaults(a)
    return a


def version_string() -> str:
    """apd_ext's version with the git commit (+g<hash>, .dirty with uncommitted tracked changes)."""
    v = apd_ext.__version__
    root = Path(__file__).resolve().parents[1]
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        v += f"+g{head.stdout.strip()}" + (".dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return v


def recover(device: torch.device) -> None:
    """After a failure: drop what the failed call left allocated (a CUDA error may persist: the
    following calls then fail too, each on its own ERROR line)."""
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001  (the error is reported by the call that caused it)
            pass


def copy_bandwidth(device: torch.device, mib: int, timing_kw: dict) -> tuple[common.Timing, float]:
    """Timing and GB/s (bytes read + written) of copying `mib` MiB to another buffer on the device."""
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = common.time_fn(lambda: dst.copy_(src), device, **timing_kw)
    return t, 2 * src.numel() / (t.p50_ms * 1e-3) / 1e9


@dataclass
class Run:
    """What the measurements of one run share: the options, the providers timed, common.time_fn's
    keywords, the Recorder (CSV rows), the printed table's lines, and the copy bandwidth (GB/s;
    None until measured, or when its measurement failed)."""

    args: argparse.Namespace
    device: torch.device
    providers: list[str]
    timing_kw: dict
    rec: Recorder
    table: list[dict] = field(default_factory=list)
    copy_gbps: float | None = None

    def entries(self, config: dict, providers=None) -> list[dict]:
        """Row keys of every op of `providers` (default: all) at config (B, K, V, dtype, logits)."""
        return [dict(op=op, provider=p, **config) for p in (providers or self.providers) for op in OPS]


def timeable_backends(args, device: torch.device) -> list[str] | None:
    """The apd_ext backends to time (--backends, else all that run on the device except Triton on
    CPU); None (after a message on stderr) when --backends names one that cannot run here."""
    backends = [b for b in apd_ext.available_backends(device.type) if not (device.type == "cpu" and b == "triton")]
    if args.backends:
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        if missing := [b for b in wanted if b not in backends]:
            print(f"backends {missing} cannot be timed on {device.type} here (available: {backends})", file=sys.stderr)
            return None
        backends = wanted
    return backends


def print_header(run: Run, desc: str, stamp: str, version: str) -> None:
    """The run's first lines: command line, device, versions, settings, load average."""
    args, device = run.args, run.device
    print(f"=== bench_ops {stamp}: {' '.join(sys.argv[1:])}")
    print(f"device: {desc}")
    print(f"torch {torch.__version__}, apd_ext {version}, torch.get_num_threads() = {torch.get_num_threads()}")
    print(f"providers: {', '.join(run.providers)}; T = {TEMPERATURE}, w = {MIXTURE_WEIGHT}, c = {CORRELATION}, "
          f"seed/offset = {SEED}/{OFFSET}; timing: "
          + ("CUDA events, L2 flushed before each call" if device.type == "cuda" else "time.perf_counter"))
    print(f"reference backend timed only where B*K*V <= {args.reference_max_elems:.3g}; rows go to {args.csv}",
          flush=True)
    load = os.getloadavg()[0]
    noisy = load > 0.5 and device.type == "cpu"
    print(f"load average (1 min) before the run: {load:.2f}"
          + ("  WARNING: other work is running, CPU timings will be noisy" if noisy else ""))


def measure_copy(run: Run) -> None:
    """The device copy bandwidth: one CSV row, printed, kept in run.copy_gbps."""
    entry = dict(op="copy", provider="torch", B="", K="", V="", dtype="uint8", logits="-")
    try:
        t, run.copy_gbps = copy_bandwidth(run.device, run.args.copy_mib, run.timing_kw)
        run.rec.add(dict(entry, p20_ms=t.p20_ms, p50_ms=t.p50_ms, p80_ms=t.p80_ms, gbps=run.copy_gbps,
                         copy_fraction=1.0))
        print(f"copy bandwidth: {run.copy_gbps:.0f} GB/s ({run.args.copy_mib} MiB read + written, "
              f"p50 {t.p50_ms:.3f} ms)", flush=True)
    except Exception as e:  # noqa: BLE001
        run.rec.error([entry], e, "copy bandwidth")
        recover(run.device)


def measure_logits(run: Run, B: int, K: int, V: int, kind: str) -> None:
    """Every dtype and provider on one (B, K, V) shape and logit kind."""
    try:
        D32, A32 = make_logits(kind, B, K, V, run.device)
        lo, mid, hi = max_softmax(D32)
        alo, amid, ahi = max_softmax(A32)
    except Exception as e:  # noqa: BLE001
        entries = [x for dname in run.args.dtypes for x in run.entries(dict(B=B, K=K, V=V, dtype=dname, logits=kind))]
        run.rec.error(entries, e, f"{B}x{K}x{V} {kind} (making the logits)")
        recover(run.device)
        return
    print(f"\n[{B}x{K}x{V} {kind}] max softmax of D p10/p50/p90 = {lo:.2f}/{mid:.2f}/{hi:.2f}, "
          f"of A = {alo:.2f}/{amid:.2f}/{ahi:.2f}", flush=True)
    for dname in run.args.dtypes:
        measure_dtype(run, D32, A32, dict(B=B, K=K, V=V, dtype=dname, logits=kind))
    del D32, A32
    if run.device.type == "cuda":
        torch.cuda.empty_cache()


def measure_dtype(run: Run, D32: torch.Tensor, A32: torch.Tensor, config: dict) -> None:
    """Every provider on the float32 logits D32, A32 [B, K, V] cast to config["dtype"]."""
    B, K, V, dname, kind = (config[k] for k in ("B", "K", "V", "dtype", "logits"))
    try:
        D, A = D32.to(DTYPES[dname]), A32.to(DTYPES[dname])
    except Exception as e:  # noqa: BLE001
        run.rec.error(run.entries(config), e, f"{B}x{K}x{V} {kind} {dname} (cast)")
        recover(run.device)
        return
    base_ms: dict[str, float] = {}  # p50 per op of the baseline ("op") and of each provider ("provider/op")
    for provider in run.providers:
        measure_provider(run, D, A, config, provider, base_ms)


def measure_provider(run: Run, D: torch.Tensor, A: torch.Tensor, config: dict, provider: str,
                     base_ms: dict[str, float]) -> None:
    """The three ops of one provider on D, A (the reference backend is skipped above
    --reference-max-elems); a failure of its setup is recorded for all three."""
    B, K, V, dname, kind = (config[k] for k in ("B", "K", "V", "dtype", "logits"))
    shape, where = f"{B}x{K}x{V}", f"{B}x{K}x{V} {kind} {dname}"
    if provider == "reference" and B * K * V > run.args.reference_max_elems:
        for op in OPS:
            run.table.append(dict(op=op, provider=provider, shape=shape, dtype=dname, logits=kind, p50="skipped",
                                  spread=f"B*K*V > {run.args.reference_max_elems:.3g}"))
        return
    backend, _, rows = provider.partition("+")
    try:
        calls = baseline_calls(D, A) if provider == "baseline" else apd_calls(D, A, backend, per_row=rows == "rows")
    except Exception as e:  # noqa: BLE001
        entries = run.entries(config, [provider])
        run.rec.error(entries, e, f"{where} {provider} (setup: first calls)")
        run.table.extend(dict(x, shape=shape, p50="ERROR", spread=one_line(e, 60)) for x in entries)
        recover(run.device)
        return
    for op in OPS:
        measure_op(run, calls[op], dict(op=op, provider=provider, **config), D.element_size(), base_ms)


def measure_op(run: Run, call, entry: dict, element_size: int, base_ms: dict[str, float]) -> None:
    """Time call(): a CSV row, a table line and a printed line (or an ERROR). GB/s = bytes of logits
    read / p50; the speedup is over base_ms[op] (the baseline's p50, recorded here when the
    provider is the baseline); a per-row provider's vs_scalar is its p50 over its scalar backend's."""
    op, provider, B, K, V = (entry[k] for k in ("op", "provider", "B", "K", "V"))
    shape = f"{B}x{K}x{V}"
    try:
        t = common.time_fn(call, run.device, **run.timing_kw)
    except Exception as e:  # noqa: BLE001
        run.rec.error([entry], e, f"{shape} {entry['logits']} {entry['dtype']} {op} {provider}")
        run.table.append(dict(entry, shape=shape, p50="ERROR", spread=one_line(e, 60)))
        recover(run.device)
        return
    gbps = LOGIT_READS[op] * B * K * V * element_size / (t.p50_ms * 1e-3) / 1e9
    if provider == "baseline":
        base_ms[op] = t.p50_ms
    base_ms[f"{provider}/{op}"] = t.p50_ms
    speedup = base_ms[op] / t.p50_ms if op in base_ms else None
    scalar_ms = base_ms.get(f"{provider.partition('+')[0]}/{op}") if provider.endswith("+rows") else None
    vs_scalar = t.p50_ms / scalar_ms if scalar_ms else None
    frac = gbps / run.copy_gbps if run.copy_gbps else None
    run.rec.add(dict(entry, p20_ms=t.p20_ms, p50_ms=t.p50_ms, p80_ms=t.p80_ms, gbps=gbps,
                     speedup_vs_baseline=speedup, copy_fraction=frac, vs_scalar=vs_scalar))
    run.table.append(dict(
        entry, shape=shape, p50=common.fmt(t.p50_ms),
        spread=f"{common.fmt(t.p20_ms)}-{common.fmt(t.p80_ms)} ({t.repeats})",
        gbps=common.fmt(gbps), speedup=common.fmt(speedup) + ("x" if speedup else ""),
        copy="-" if frac is None else f"{100 * frac:.0f}%"))
    print(f"  {entry['dtype']} {op:<15} {provider:<10} p50 {t.p50_ms:9.3f} ms  {gbps:7.2f} GB/s"
          + ("" if frac is None else f" ({100 * frac:4.0f}% of copy)")
          + (f"  {speedup:6.1f}x" if speedup else "") + (f"  {vs_scalar:.3f} of scalar" if vs_scalar else ""),
          flush=True)


def main(argv=None) -> int:
    """Parse the options, tee the output to DIR/ops_<device>.log with --out, and run."""
    args = parse_args(argv)
    log = None
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        log = open(Path(args.out) / f"ops_{args.device}.log", "a")
        sys.stdout, sys.stderr = common.Tee(sys.stdout, log), common.Tee(sys.stderr, log)
    try:
        return run(args)
    finally:
        if log is not None:
            sys.stdout, sys.stderr = sys.stdout.stream, sys.stderr.stream
            log.close()


def run(args) -> int:
    """The whole benchmark: copy bandwidth, every configuration, the final tables. Returns the exit
    status: 0, 1 when a measurement raised, 2 when --backends names one that cannot run here."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    backends = timeable_backends(args, device)
    if backends is None:
        return 2
    desc, stamp, version = common.device_description(device), common.timestamp(), version_string()
    timing_kw = {"repeats": args.repeats, "budget_s": args.budget_s}
    if device.type == "cuda":
        timing_kw.update(warmup=3, max_repeats=100)
    rec = Recorder(args.csv, dict(device=desc, timestamp=stamp, apd_ext_version=version,
                                  torch_version=torch.__version__))
    providers = [p for b in backends for p in ([b] if args.no_per_row or b == "reference" else [b, f"{b}+rows"])]
    state = Run(args, device, ([] if args.no_baseline else ["baseline"]) + providers, timing_kw, rec)
    print_header(state, desc, stamp, version)
    measure_copy(state)
    for B, K, V in args.shapes:
        for kind in args.logits:
            measure_logits(state, B, K, V, kind)

    summarize(rec, state.table, desc, version, stamp)
    print(f"\n{len(rec.rows)} rows appended to {args.csv}")
    if rec.failed:
        print(f"\nFAILED: {len(rec.failed)} measurement(s) raised (their rows carry the error):")
        for f in rec.failed:
            print(f"  {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
