"""Microbenchmark of apd_ext's sampling ops against the authors' eager-PyTorch code.

    PYTHONPATH=. python bench/bench_ops.py [--device cpu|cuda] [--quick] [...]   (--help for all flags)

For each (B, K, V) shape, logit dtype and logit kind, times on every backend that runs on the device:
  sample_draft     (reads D once)
  mixture_accept   (reads D and A once; the draft tokens come from the same backend's sample_draft)
  draft+accept     sample_draft then mixture_accept with the same seed/offset: one APD step's sampling
and the same three for the baseline (bench/authors_baseline.py: their draft, their acceptance rule,
both). Prints a Markdown table (median, p20-p80, effective GB/s = bytes of logits read / median time,
speedup = baseline median / median), appends one CSV row per measurement to
bench/results/ops_<device>.csv. Tokens are not compared: the baseline draws other noise.

Settings of every op: temperature 1, mixture_weight 0.7, no top-k/top-p, vocab_size = V, apd_ext in
its default (paper) semantics, i.e. the target is sampled with the draft's noise; the baseline's
target is the greedy argmax of the raw mixture (less work).

Logit kinds (D: dLLM logits, A: verifier logits, both float32 from a fixed seed, then cast):
  flat  D ~ N(0, 1) iid: no peak, the worst case for the kernels' exact noise-skipping shortcuts.
  llm   bulk D ~ 2.5 * N(0, 1), plus 4 planted tokens per row at random ids whose softmax
        probabilities are exactly p, 0.36 (1-p), 0.18 (1-p), 0.06 (1-p) with p ~ U(0.3, 0.9) per row
        (the bulk keeps the last 0.4 (1-p)): max-softmax 0.3-0.9, a heavy upper tail.
  Both: A = c D + sqrt(1 - c^2) * s * N(0, 1), c = 0.9, s the bulk scale (1 or 2.5).
"""

from __future__ import annotations

import argparse
import math
import os
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

SHAPES = ((1, 16, 151936), (1, 100, 151936), (8, 100, 151936))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
KINDS = ("flat", "llm")
OPS = ("sample_draft", "mixture_accept", "draft+accept")
LOGIT_READS = {"sample_draft": 1, "mixture_accept": 2, "draft+accept": 3}  # logit tensors read once each
TEMPERATURE, MIXTURE_WEIGHT, CORRELATION = 1.0, 0.7, 0.9
SEED, OFFSET = 1234, 7
HEADLINE_SHAPE, TARGET_SPEEDUP = (1, 100, 151936), 10.0
CSV_FIELDS = ("op", "provider", "B", "K", "V", "dtype", "logits", "p20_ms", "p50_ms", "p80_ms", "gbps",
              "speedup_vs_baseline", "device", "timestamp", "apd_ext_version", "torch_version")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES),
                   help="comma-separated BxKxV (default: %(default)s)")
    p.add_argument("--dtypes", default="bf16,fp32", help="comma-separated of bf16, fp16, fp32")
    p.add_argument("--logits", default="flat,llm", help="comma-separated logit kinds: flat, llm")
    p.add_argument("--backends", default=None,
                   help="comma-separated apd_ext backends (default: all that run on the device; Triton on "
                        "CPU only runs in its interpreter and is never timed)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per measurement (default: about 2 s (CPU) / 1 s (CUDA) worth, "
                        "at least 3 (CPU) / 10 (CUDA), at most 30 / 200)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (CPU)")
    p.add_argument("--reference-max-elems", type=float, default=None,
                   help="time the reference backend only when B*K*V is at most this "
                        "(default 4e6 on CPU, 2e7 on CUDA; it materialises [B,K,V,4] int64 Philox words)")
    p.add_argument("--csv", default=None, help="CSV to append to (default bench/results/ops_<device>.csv)")
    p.add_argument("--no-baseline", action="store_true", help="skip the authors' eager baseline")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: smallest shape, 3 repeats, no reference backend, CSV to "
                        "bench/results/ops_<device>_quick.csv.tmp (git-ignored)")
    a = p.parse_args(argv)
    a.shapes = [tuple(int(x) for x in s.lower().split("x")) for s in a.shapes.split(",") if s]
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
    if a.csv is None:
        a.csv = common.RESULTS / (f"ops_{a.device}_quick.csv.tmp" if a.quick else f"ops_{a.device}.csv")
    return a


def make_logits(kind: str, B: int, K: int, V: int, seed: int = 0):
    """(D, A) float32 [B, K, V] on the CPU; see the module docstring."""
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 if kind == "flat" else 2.5
    D = torch.randn(B, K, V, generator=g).mul_(scale)
    if kind == "llm":
        p = torch.rand(B, K, 1, generator=g) * 0.6 + 0.3  # top probability per row
        share = torch.tensor([0.6, 0.3, 0.1]) * 0.6 * (1 - p)  # [B, K, 3] runner-ups
        probs = torch.cat([p, share], dim=-1)  # [B, K, 4]
        total = torch.logsumexp(D, -1, keepdim=True) - torch.log(0.4 * (1 - p))  # log of the row's total mass
        ids = torch.randint(0, V, (B, K, 4), generator=g)
        D.scatter_(-1, ids, torch.log(probs) + total)
    noise = torch.randn(B, K, V, generator=g).mul_(scale * math.sqrt(1 - CORRELATION**2))
    return D, noise.add_(D, alpha=CORRELATION)


def max_softmax(x: torch.Tensor, rows: int = 64) -> tuple[float, float, float]:
    """p10 / p50 / p90 over (up to `rows`) rows of the largest softmax probability."""
    m = torch.softmax(x.reshape(-1, x.shape[-1])[:rows].float(), -1).amax(-1)
    return tuple(torch.quantile(m, torch.tensor([0.1, 0.5, 0.9])).tolist())


def baseline_calls(D, A):
    x0 = authors_baseline.draft(D, TEMPERATURE)
    return {
        "sample_draft": lambda: authors_baseline.draft(D, TEMPERATURE),
        "mixture_accept": lambda: authors_baseline.accept(D, A, x0, MIXTURE_WEIGHT, D.shape[-1]),
        "draft+accept": lambda: authors_baseline.draft_and_accept(D, A, MIXTURE_WEIGHT, TEMPERATURE, D.shape[-1]),
    }


def apd_calls(D, A, backend: str):
    V = D.shape[-1]
    # int64 tensors: no host sync on CUDA, and what a CUDA-graph-captured loop passes
    seed = torch.tensor([SEED], dtype=torch.int64, device=D.device)
    offset = torch.tensor([OFFSET], dtype=torch.int64, device=D.device)
    kw = dict(temperature=TEMPERATURE, vocab_size=V, seed=seed, offset=offset, backend=backend)

    def draft():
        return apd_ext.sample_draft(D, **kw)

    def accept(tokens):
        return apd_ext.mixture_accept(D, A, tokens, mixture_weight=MIXTURE_WEIGHT, **kw)

    tokens = draft()[0]
    return {
        "sample_draft": draft,
        "mixture_accept": lambda: accept(tokens),
        "draft+accept": lambda: accept(draft()[0]),
    }, accept(tokens)[0]


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


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    backends = [b for b in apd_ext.available_backends(device.type) if not (device.type == "cpu" and b == "triton")]
    if args.backends:
        wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
        if missing := [b for b in wanted if b not in backends]:
            sys.exit(f"backends {missing} cannot be timed on {device.type} here (available: {backends})")
        backends = wanted
    providers = ([] if args.no_baseline else ["baseline"]) + backends
    desc, stamp, version = common.device_description(device), common.timestamp(), version_string()
    timing_kw = {"repeats": args.repeats}
    print(f"device: {desc}")
    print(f"torch {torch.__version__}, apd_ext {version}, torch.get_num_threads() = {torch.get_num_threads()}")
    print(f"providers: {', '.join(providers)}; T = {TEMPERATURE}, w = {MIXTURE_WEIGHT}, c = {CORRELATION}, "
          f"seed/offset = {SEED}/{OFFSET}; timing: "
          + ("CUDA events, L2 flushed before each call" if device.type == "cuda" else "time.perf_counter"))
    print(f"reference backend timed only where B*K*V <= {args.reference_max_elems:.3g}", flush=True)
    load = os.getloadavg()[0]
    print(f"load average (1 min) before the run: {load:.2f}"
          + ("  WARNING: other work is running, CPU timings will be noisy" if load > 0.5 else ""))

    rows, table = [], []
    for B, K, V in args.shapes:
        n = B * K * V
        copy_gbps: dict[str, float] = {}
        for kind in args.logits:
            D32, A32 = make_logits(kind, B, K, V)
            lo, mid, hi = max_softmax(D32)
            alo, amid, ahi = max_softmax(A32)
            print(f"\n[{B}x{K}x{V} {kind}] max softmax of D p10/p50/p90 = {lo:.2f}/{mid:.2f}/{hi:.2f}, "
                  f"of A = {alo:.2f}/{amid:.2f}/{ahi:.2f}", flush=True)
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                D, A = D32.to(device, dtype), A32.to(device, dtype)
                nbytes = n * D.element_size()
                if device.type == "cuda" and dname not in copy_gbps:
                    # D2D copy of a tensor the size of D and A together; read + write bytes
                    src = torch.empty(2 * n, dtype=dtype, device=device)
                    dst = torch.empty_like(src)
                    t = common.time_fn(lambda: dst.copy_(src), device, **timing_kw)
                    copy_gbps[dname] = 2 * 2 * nbytes / (t.p50_ms * 1e-3) / 1e9
                    del src, dst
                    rows.append(dict(op="d2d_copy", provider="torch", B=B, K=K, V=V, dtype=dname, logits="-",
                                     p20_ms=t.p20_ms, p50_ms=t.p50_ms, p80_ms=t.p80_ms, gbps=copy_gbps[dname]))
                    print(f"  {dname}: device copy bandwidth {copy_gbps[dname]:.0f} GB/s (read + write)")
                base_ms: dict[str, float] = {}
                for provider in providers:
                    skip = provider == "reference" and n > args.reference_max_elems
                    if skip:
                        calls = {}
                    elif provider == "baseline":
                        calls = baseline_calls(D, A)
                    else:
                        calls, num_accepted = apd_calls(D, A, provider)
                        if not bool(((num_accepted >= 1) & (num_accepted <= K)).all()):
                            raise RuntimeError(f"{provider}: num_accepted {num_accepted.tolist()} outside [1, {K}]")
                    for op in OPS:
                        entry = dict(op=op, provider=provider, B=B, K=K, V=V, dtype=dname, logits=kind)
                        if skip:
                            table.append(dict(entry, shape=f"{B}x{K}x{V}", p50="skipped",
                                              spread=f"B*K*V > {args.reference_max_elems:.3g}"))
                            continue
                        t = common.time_fn(calls[op], device, **timing_kw)
                        gbps = LOGIT_READS[op] * nbytes / (t.p50_ms * 1e-3) / 1e9
                        if provider == "baseline":
                            base_ms[op] = t.p50_ms
                        speedup = base_ms[op] / t.p50_ms if op in base_ms else None
                        row = dict(entry, p20_ms=t.p20_ms, p50_ms=t.p50_ms, p80_ms=t.p80_ms, gbps=gbps,
                                   speedup_vs_baseline=speedup)
                        rows.append(row)
                        table.append(dict(
                            entry, shape=f"{B}x{K}x{V}", p50=common.fmt(t.p50_ms),
                            spread=f"{common.fmt(t.p20_ms)}-{common.fmt(t.p80_ms)} ({t.repeats})",
                            gbps=common.fmt(gbps), speedup=common.fmt(speedup) + ("x" if speedup else ""),
                            copy=f"{100 * gbps / copy_gbps[dname]:.0f}%" if dname in copy_gbps else "-"))
                        print(f"  {dname} {op:<15} {provider:<10} p50 {t.p50_ms:9.3f} ms  {gbps:7.2f} GB/s"
                              + (f"  {speedup:6.1f}x" if speedup else ""), flush=True)
                del D, A
            del D32, A32

    columns = [("op", "op"), ("provider", "provider"), ("shape", "BxKxV"), ("dtype", "dtype"), ("logits", "logits"),
               ("p50", "p50 ms"), ("spread", "p20-p80 ms (n)"), ("gbps", "GB/s")]
    if device.type == "cuda":
        columns.append(("copy", "% of copy BW"))
    columns.append(("speedup", "vs baseline"))
    print(f"\n## {desc}; torch {torch.__version__}; apd_ext {version}; {torch.get_num_threads()} threads; {stamp}\n")
    print(common.markdown_table(table, columns))

    pairs = [r for r in rows if r["op"] == "draft+accept" and (r["B"], r["K"], r["V"]) == HEADLINE_SHAPE
             and r["provider"] != "baseline" and r.get("speedup_vs_baseline")]
    if pairs:
        print(f"\ndraft+accept at {HEADLINE_SHAPE} vs the baseline (target >= {TARGET_SPEEDUP:g}x):")
        for r in pairs:
            ok = "met" if r["speedup_vs_baseline"] >= TARGET_SPEEDUP else "NOT met"
            print(f"  {r['provider']:<10} {r['dtype']} {r['logits']:<5} {r['speedup_vs_baseline']:6.1f}x  ({ok})")
    if device.type == "cuda":
        print("\nmixture_accept bandwidth as a fraction of the device copy bandwidth (H100 target >= 70%):")
        for r in rows:
            if r["op"] == "mixture_accept" and r["provider"] != "baseline":
                frac = r["gbps"] / copy_gbps_of(rows, r)
                print(f"  {r['provider']:<10} {r['B']}x{r['K']}x{r['V']} {r['dtype']} {r['logits']:<5} {100 * frac:5.1f}%")

    for r in rows:
        r.update(device=desc, timestamp=stamp, apd_ext_version=version, torch_version=torch.__version__)
        for k in ("p20_ms", "p50_ms", "p80_ms", "gbps", "speedup_vs_baseline"):
            if isinstance(r.get(k), float):
                r[k] = f"{r[k]:.6g}"
    path = common.append_csv(args.csv, rows, CSV_FIELDS)
    print(f"\n{len(rows)} rows appended to {path}")
    return 0


def copy_gbps_of(rows, r) -> float:
    for c in rows:
        if c["op"] == "d2d_copy" and (c["B"], c["K"], c["V"], c["dtype"]) == (r["B"], r["K"], r["V"], r["dtype"]):
            return c["gbps"]
    return math.nan


if __name__ == "__main__":
    sys.exit(main())
