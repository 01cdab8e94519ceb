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
process instead (what a timeout does), to check that the rows measured before it are on disk.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

import authors_baseline
import common

try:
    import apd_ext
except ModuleNotFoundError as e:
    if e.name != "apd_ext":
        raise
    sys.exit("apd_ext is not importable: run from the repository root with PYTHONPATH=. "
             "after `python setup.py build_ext --inplace` (or pip install -e .)")

SHAPES_CPU = ((1, 16, 151936), (1, 100, 151936), (8, 100, 151936))
SHAPES_GPU = tuple((B, K, 151936) for B in (1, 8) for K in (16, 100, 256))  # the GPU run's grid
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
KINDS = ("flat", "llm")
OPS = ("sample_draft", "mixture_accept", "draft+accept")
LOGIT_READS = {"sample_draft": 1, "mixture_accept": 2, "draft+accept": 3}  # logit tensors read once each
TEMPERATURE, MIXTURE_WEIGHT, CORRELATION = 1.0, 0.7, 0.9
SEED, OFFSET = 1234, 7
HEADLINE_SHAPE, TARGET_SPEEDUP = (1, 100, 151936), 10.0
BANDWIDTH_GOAL = 0.70  # of the device copy bandwidth
CSV_FIELDS = ("op", "provider", "B", "K", "V", "dtype", "logits", "p20_ms", "p50_ms", "p80_ms", "gbps",
              "speedup_vs_baseline", "device", "timestamp", "apd_ext_version", "torch_version",
              "copy_fraction", "error")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", default=None,
                   help="comma-separated BxKxV (default on CUDA: the grid "
                        + ",".join("x".join(map(str, s)) for s in SHAPES_GPU) + "; on CPU: "
                        + ",".join("x".join(map(str, s)) for s in SHAPES_CPU) + ")")
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
    p.add_argument("--out", default=None, help="directory for the CSV (ops_<device>.csv) and the log (ops_<device>.log)")
    p.add_argument("--csv", default=None,
                   help="CSV to append to (default DIR/ops_<device>.csv with --out, else bench/results/ops_<device>.csv)")
    p.add_argument("--no-baseline", action="store_true", help="skip the authors' eager baseline")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: smallest shape, 3 repeats, no reference backend, CSV to "
                        "bench/results/ops_<device>_quick.csv.tmp (git-ignored) unless --out/--csv")
    a = p.parse_args(argv)
    if a.shapes is None:
        a.shapes = ",".join("x".join(map(str, s)) for s in (SHAPES_GPU if a.device == "cuda" else SHAPES_CPU))
    try:
        a.shapes = [tuple(int(x) for x in s.lower().split("x")) for s in a.shapes.split(",") if s]
    except ValueError:
        p.error("--shapes takes BxKxV triples, e.g. 1x100x151936")
    if any(len(s) != 3 or min(s) <= 0 for s in a.shapes):
        p.error("--shapes takes BxKxV triples, e.g. 1x100x151936")
    a.dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    a.logits = [k.strip() for k in a.logits.split(",") if k.strip()]
    if bad := [d for d in a.dtypes if d not in DTYPES] + [k for k in a.logits if k not in KINDS]:
        p.error(f"unknown dtype/logit kind {bad}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
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
    return a


def make_logits(kind: str, B: int, K: int, V: int, device: torch.device, seed: int = 0):
    """(D, A) float32 [B, K, V] on `device` (generated there: a fixed seed per device type); see
    the module docstring."""
    g = torch.Generator(device=device).manual_seed(seed)
    scale = 1.0 if kind == "flat" else 2.5
    D = torch.randn(B, K, V, generator=g, device=device).mul_(scale)
    if kind == "llm":
        p = torch.rand(B, K, 1, generator=g, device=device) * 0.6 + 0.3  # top probability per row
        share = torch.tensor([0.6, 0.3, 0.1], device=device) * 0.6 * (1 - p)  # [B, K, 3] runner-ups
        probs = torch.cat([p, share], dim=-1)  # [B, K, 4]
        total = torch.logsumexp(D, -1, keepdim=True) - torch.log(0.4 * (1 - p))  # log of the row's total mass
        ids = torch.randint(0, V, (B, K, 4), generator=g, device=device)
        D.scatter_(-1, ids, torch.log(probs) + total)
    noise = torch.randn(B, K, V, generator=g, device=device).mul_(scale * math.sqrt(1 - CORRELATION**2))
    return D, noise.add_(D, alpha=CORRELATION)


def max_softmax(x: torch.Tensor, rows: int = 64) -> tuple[float, float, float]:
    """p10 / p50 / p90 over (up to `rows`) rows of the largest softmax probability."""
    m = torch.softmax(x.reshape(-1, x.shape[-1])[:rows].float(), -1).amax(-1).cpu()
    return tuple(torch.quantile(m, torch.tensor([0.1, 0.5, 0.9])).tolist())


class InjectedFailure(RuntimeError):
    """Raised where APD_BENCH_FAIL asks for it (see the module docstring)."""


def injected_failures() -> dict[tuple[str, str | None], str]:
    """APD_BENCH_FAIL parsed: {(provider, op or None): "raise" | "kill"}."""
    out = {}
    for item in filter(None, (x.strip() for x in os.environ.get("APD_BENCH_FAIL", "").split(","))):
        what, _, action = item.partition("=")
        provider, _, op = what.partition(":")
        out[(provider, op or None)] = action or "raise"
    return out


def inject(provider: str, op: str | None) -> None:
    action = injected_failures().get((provider, op))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action is not None:
        raise InjectedFailure(f"APD_BENCH_FAIL: injected failure of {provider}" + (f" {op}" if op else " setup"))


def with_injection(provider: str, calls: dict) -> dict:
    """calls with APD_BENCH_FAIL's failures of this provider's ops raised from inside the call."""
    def wrap(op, fn):
        def call():
            inject(provider, op)
            return fn()
        return call
    return {op: wrap(op, fn) for op, fn in calls.items()}


def baseline_calls(D, A):
    inject("baseline", None)
    x0 = authors_baseline.draft(D, TEMPERATURE)
    return with_injection("baseline", {
        "sample_draft": lambda: authors_baseline.draft(D, TEMPERATURE),
        "mixture_accept": lambda: authors_baseline.accept(D, A, x0, MIXTURE_WEIGHT, D.shape[-1]),
        "draft+accept": lambda: authors_baseline.draft_and_accept(D, A, MIXTURE_WEIGHT, TEMPERATURE, D.shape[-1]),
    })


def apd_calls(D, A, backend: str):
    """The three timed calls of an apd_ext backend; raises when its first results are wrong."""
    inject(backend, None)
    B, K, V = D.shape
    # int64 tensors: no host sync on CUDA, and what a CUDA-graph-captured loop passes
    seed = torch.tensor([SEED], dtype=torch.int64, device=D.device)
    offset = torch.tensor([OFFSET], dtype=torch.int64, device=D.device)
    kw = dict(temperature=TEMPERATURE, vocab_size=V, seed=seed, offset=offset, backend=backend)

    def draft():
        return apd_ext.sample_draft(D, **kw)

    def accept(tokens):
        return apd_ext.mixture_accept(D, A, tokens, mixture_weight=MIXTURE_WEIGHT, **kw)

    tokens = draft()[0]
    if not bool(((tokens >= 0) & (tokens < V)).all()):
        raise RuntimeError(f"{backend}: sample_draft tokens outside [0, {V})")
    num_accepted = accept(tokens)[0]
    if not bool(((num_accepted >= 1) & (num_accepted <= K)).all()):
        raise RuntimeError(f"{backend}: num_accepted {num_accepted.tolist()} outside [1, {K}]")
    return with_injection(backend, {
        "sample_draft": draft,
        "mixture_accept": lambda: accept(tokens),
        "draft+accept": lambda: accept(draft()[0]),
    })


def version_string() -> str:
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


def one_line(e: BaseException, limit: int = 400) -> str:
    msg = " ".join(f"{type(e).__name__}: {e}".split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def recover(device: torch.device) -> None:
    """After a failure: drop what the failed call left allocated (a CUDA error may persist: the
    following calls then fail too, each on its own ERROR line)."""
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001  (the error is reported by the call that caused it)
            pass


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


def copy_bandwidth(device: torch.device, mib: int, timing_kw: dict) -> tuple[common.Timing, float]:
    """Timing and GB/s (bytes read + written) of copying `mib` MiB to another buffer on the device."""
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t = common.time_fn(lambda: dst.copy_(src), device, **timing_kw)
    return t, 2 * src.numel() / (t.p50_ms * 1e-3) / 1e9


class Recorder:
    """Rows: appended to the CSV one by one as they are measured, kept for the final tables."""

    def __init__(self, path, meta: dict):
        self.path, self.meta = Path(path), meta
        self.rows: list[dict] = []
        self.failed: list[str] = []

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        out = dict(row, **self.meta)
        for k in ("p20_ms", "p50_ms", "p80_ms", "gbps", "speedup_vs_baseline", "copy_fraction"):
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


def main(argv=None) -> int:
    args = parse_args(argv)
    log = None
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        log = open(Path(args.out) / f"ops_{args.device}.log", "a")
        sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
    try:
        return run(args)
    finally:
        if log is not None:
            sys.stdout, sys.stderr = sys.stdout.stream, sys.stderr.stream
            log.close()


def run(args) -> int:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    backends = [b for b in apd_ext.available_backends(device.type) if not (device.type == "cpu" and b == "triton")]
    if args.backends:
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        if missing := [b for b in wanted if b not in backends]:
            print(f"backends {missing} cannot be timed on {device.type} here (available: {backends})", file=sys.stderr)
            return 2
        backends = wanted
    providers = ([] if args.no_baseline else ["baseline"]) + backends
    desc, stamp, version = common.device_description(device), common.timestamp(), version_string()
    timing_kw = {"repeats": args.repeats, "budget_s": args.budget_s}
    if device.type == "cuda":
        timing_kw.update(warmup=3, max_repeats=100)
    rec = Recorder(args.csv, dict(device=desc, timestamp=stamp, apd_ext_version=version, torch_version=torch.__version__))
    print(f"=== bench_ops {stamp}: {' '.join(sys.argv[1:])}")
    print(f"device: {desc}")
    print(f"torch {torch.__version__}, apd_ext {version}, torch.get_num_threads() = {torch.get_num_threads()}")
    print(f"providers: {', '.join(providers)}; T = {TEMPERATURE}, w = {MIXTURE_WEIGHT}, c = {CORRELATION}, "
          f"seed/offset = {SEED}/{OFFSET}; timing: "
          + ("CUDA events, L2 flushed before each call" if device.type == "cuda" else "time.perf_counter"))
    print(f"reference backend timed only where B*K*V <= {args.reference_max_elems:.3g}; rows go to {args.csv}",
          flush=True)
    load = os.getloadavg()[0]
    print(f"load average (1 min) before the run: {load:.2f}"
          + ("  WARNING: other work is running, CPU timings will be noisy" if load > 0.5 and device.type == "cpu" else ""))

    copy_gbps = None
    entry = dict(op="copy", provider="torch", B="", K="", V="", dtype="uint8", logits="-")
    try:
        t, copy_gbps = copy_bandwidth(device, args.copy_mib, timing_kw)
        rec.add(dict(entry, p20_ms=t.p20_ms, p50_ms=t.p50_ms, p80_ms=t.p80_ms, gbps=copy_gbps, copy_fraction=1.0))
        print(f"copy bandwidth: {copy_gbps:.0f} GB/s ({args.copy_mib} MiB read + written, p50 {t.p50_ms:.3f} ms)",
              flush=True)
    except Exception as e:  # noqa: BLE001
        rec.error([entry], e, "copy bandwidth")
        recover(device)

    table = []
    for B, K, V in args.shapes:
        n = B * K * V
        for kind in args.logits:
            try:
                D32, A32 = make_logits(kind, B, K, V, device)
                lo, mid, hi = max_softmax(D32)
                alo, amid, ahi = max_softmax(A32)
            except Exception as e:  # noqa: BLE001
                rec.error([dict(op=op, provider=provider, B=B, K=K, V=V, dtype=dname, logits=kind)
                           for dname in args.dtypes for provider in providers for op in OPS], e,
                          f"{B}x{K}x{V} {kind} (making the logits)")
                recover(device)
                continue
            print(f"\n[{B}x{K}x{V} {kind}] max softmax of D p10/p50/p90 = {lo:.2f}/{mid:.2f}/{hi:.2f}, "
                  f"of A = {alo:.2f}/{amid:.2f}/{ahi:.2f}", flush=True)
            for dname in args.dtypes:
                D = A = None
                try:
                    D, A = D32.to(DTYPES[dname]), A32.to(DTYPES[dname])
                except Exception as e:  # noqa: BLE001
                    rec.error([dict(op=op, provider=provider, B=B, K=K, V=V, dtype=dname, logits=kind)
                               for provider in providers for op in OPS], e, f"{B}x{K}x{V} {kind} {dname} (cast)")
                    recover(device)
                    continue
                nbytes = n * D.element_size()
                base_ms: dict[str, float] = {}
                for provider in providers:
                    where = f"{B}x{K}x{V} {kind} {dname}"
                    if provider == "reference" and n > args.reference_max_elems:
                        for op in OPS:
                            table.append(dict(op=op, provider=provider, shape=f"{B}x{K}x{V}", dtype=dname,
                                              logits=kind, p50="skipped",
                                              spread=f"B*K*V > {args.reference_max_elems:.3g}"))
                        continue
                    try:
                        calls = baseline_calls(D, A) if provider == "baseline" else apd_calls(D, A, provider)
                    except Exception as e:  # noqa: BLE001
                        entries = [dict(op=op, provider=provider, B=B, K=K, V=V, dtype=dname, logits=kind) for op in OPS]
                        rec.error(entries, e, f"{where} {provider} (setup: first calls)")
                        table.extend(dict(x, shape=f"{B}x{K}x{V}", p50="ERROR", spread=one_line(e, 60)) for x in entries)
                        recover(device)
                        continue
                    for op in OPS:
                        entry = dict(op=op, provider=provider, B=B, K=K, V=V, dtype=dname, logits=kind)
                        try:
                            t = common.time_fn(calls[op], device, **timing_kw)
                        except Exception as e:  # noqa: BLE001
                            rec.error([entry], e, f"{where} {op} {provider}")
                            table.append(dict(entry, shape=f"{B}x{K}x{V}", p50="ERROR", spread=one_line(e, 60)))
                            recover(device)
                            continue
                        gbps = LOGIT_READS[op] * nbytes / (t.p50_ms * 1e-3) / 1e9
                        if provider == "baseline":
                            base_ms[op] = t.p50_ms
                        speedup = base_ms[op] / t.p50_ms if op in base_ms else None
                        frac = gbps / copy_gbps if copy_gbps else None
                        rec.add(dict(entry, p20_ms=t.p20_ms, p50_ms=t.p50_ms, p80_ms=t.p80_ms, gbps=gbps,
                                     speedup_vs_baseline=speedup, copy_fraction=frac))
                        table.append(dict(
                            entry, shape=f"{B}x{K}x{V}", p50=common.fmt(t.p50_ms),
                            spread=f"{common.fmt(t.p20_ms)}-{common.fmt(t.p80_ms)} ({t.repeats})",
                            gbps=common.fmt(gbps), speedup=common.fmt(speedup) + ("x" if speedup else ""),
                            copy="-" if frac is None else f"{100 * frac:.0f}%"))
                        print(f"  {dname} {op:<15} {provider:<10} p50 {t.p50_ms:9.3f} ms  {gbps:7.2f} GB/s"
                              + ("" if frac is None else f" ({100 * frac:4.0f}% of copy)")
                              + (f"  {speedup:6.1f}x" if speedup else ""), flush=True)
                    del calls
                del D, A
            del D32, A32
            if device.type == "cuda":
                torch.cuda.empty_cache()

    summarize(rec, table, desc, version, stamp, device)
    print(f"\n{len(rec.rows)} rows appended to {args.csv}")
    if rec.failed:
        print(f"\nFAILED: {len(rec.failed)} measurement(s) raised (their rows carry the error):")
        for f in rec.failed:
            print(f"  {f}")
        return 1
    return 0


def summarize(rec: Recorder, table: list[dict], desc: str, version: str, stamp: str, device: torch.device) -> None:
    columns = [("op", "op"), ("provider", "provider"), ("shape", "BxKxV"), ("dtype", "dtype"), ("logits", "logits"),
               ("p50", "p50 ms"), ("spread", "p20-p80 ms (n)"), ("gbps", "GB/s"), ("copy", "% of copy BW"),
               ("speedup", "vs baseline")]
    print(f"\n## {desc}; torch {torch.__version__}; apd_ext {version}; {torch.get_num_threads()} threads; {stamp}\n")
    print(common.markdown_table(table, columns))

    # Providers side by side: one line per (op, shape, dtype, logits).
    ok = [r for r in rec.rows if not r.get("error") and r["op"] in OPS]
    providers = list(dict.fromkeys(r["provider"] for r in ok))
    apd = [p for p in providers if p != "baseline"]
    ref = "cuda" if "cuda" in apd else (apd[0] if apd else None)
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
    if side and apd:
        cols = [("op", "op"), ("shape", "BxKxV"), ("dtype", "dtype"), ("logits", "logits")]
        cols += [(p, f"{p} ms") for p in providers]
        cols += [(p + "%", f"{p} % copy") for p in apd]
        cols += [(p + "x", f"{p} vs baseline") for p in apd if "baseline" in providers]
        cols += [(p + "/" + ref, f"{p} time / {ref}") for p in apd if p != ref]
        print(f"\n### Side by side (p50; % of the copy bandwidth; speedup = baseline / provider)\n")
        print(common.markdown_table(side, cols))

    pairs = [r for r in ok if r["op"] == "draft+accept" and (r["B"], r["K"], r["V"]) == HEADLINE_SHAPE
             and r["provider"] != "baseline" and r.get("speedup_vs_baseline")]
    if pairs:
        print(f"\ndraft+accept at {HEADLINE_SHAPE} vs the baseline (target >= {TARGET_SPEEDUP:g}x):")
        for r in pairs:
            met = "met" if r["speedup_vs_baseline"] >= TARGET_SPEEDUP else "NOT met"
            print(f"  {r['provider']:<10} {r['dtype']} {r['logits']:<5} {r['speedup_vs_baseline']:6.1f}x  ({met})")
    kernels = [r for r in ok if r["provider"] in ("cuda", "triton") and r.get("copy_fraction") is not None]
    if kernels:
        met = sum(r["copy_fraction"] >= BANDWIDTH_GOAL for r in kernels)
        print(f"\nkernel bandwidth >= {100 * BANDWIDTH_GOAL:.0f}% of the copy bandwidth: {met} of {len(kernels)} "
              "measurements; below:")
        for r in kernels:
            if r["copy_fraction"] < BANDWIDTH_GOAL:
                print(f"  {r['provider']:<7} {r['op']:<15} {r['B']}x{r['K']}x{r['V']} {r['dtype']} {r['logits']:<5} "
                      f"{100 * r['copy_fraction']:5.1f}%")


if __name__ == "__main__":
    sys.exit(main())
