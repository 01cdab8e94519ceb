"""apd_ext's decoding loop side by side with the authors' released loop on the golden tiny pair
(bench/bench_loop.py --golden-pair).

    PYTHONPATH=. python bench/bench_loop.py --golden-pair --authors-repo DIR --authors-pythonpath TF454_DIR

Models: the golden tiny Dream / Qwen2 pair (V = 384, hidden 64, 2 layers; APD_EXT_GOLDEN, else
../shared/golden), CPU, float32, one thread in both processes (--threads). Runs: the golden APD runs
at T = 1 without top-k for two settings, kv_window 4 / max_lookahead 12 and no cache (kv_window
None, max_lookahead None): three runs each (two prompts of 40 tokens, 24 new, w 0.3 / 0.7 / 0.95,
12-24 steps). Every run is decoded by
  authors   their unmodified diffusion_generate(alg="apd") in a child process (bench/authors_loop.py),
  eager     apd_ext.generate(..., authors_compat=True) stepping eagerly,
  compiled  the same with compile=True (the steady step through torch.compile / Inductor),
all three fed the run's recorded uniforms (theirs through torch.rand_like, apd_ext's through
noise_fn), and their tokens must be equal (to each other and to the golden sequences).

Timing: one warm-up of each run and implementation (the compiled one compiles there: its extra
time is the compile_s column), then --repeats rounds; each round runs every run once with each
implementation, alternating (authors, eager, compiled, in an order rotated every round), so that the
slow spells of a shared CPU hit them alike. Per step, as each loop reports it: the gap between
consecutive per-step callbacks (theirs: generation_tokens_hook_func; apd_ext: stream), so host work
between steps counts. steady ms/step: median over every step after the first (the steady step) of
all runs and rounds, with its 25th-75th percentiles; steady CPU ms/step: the same median of the
process's CPU time (time.process_time; one thread per process), which time spent waiting for a
core does not inflate: on a busy shared machine the wall-time figures of the longer steps are hit
by more preemptions, so the CPU figures are the fairer comparison there; loop ms/step: the whole
call (setup, step 0, prefill) over the steps, median over rounds; tok/s: tokens over whole-call
time, median over rounds. speed-up: the authors' figure over the implementation's.

Writes one CSV row per setting and implementation to bench/results/loop_authors_<device>.csv.
Without --authors-repo the apd_ext rows are measured alone and the table says the baseline is missing.
"""

from __future__ import annotations

import inspect
import json
import os
import statistics
import time
from pathlib import Path

import torch

import authors_loop
import common

SETTINGS = (("kv_window 4, max_lookahead 12", 4, 12), ("no cache", None, None))
IMPLS = ("authors", "eager", "compiled")
CSV_FIELDS = ("setting", "kv_window", "max_lookahead", "impl", "runs", "steps", "steady_ms_per_step", "steady_p25_ms",
              "steady_p75_ms", "steady_cpu_ms_per_step", "loop_ms_per_step", "tokens_per_s", "speedup_steady",
              "speedup_steady_cpu", "speedup_loop", "compile_s",
              "tokens_equal", "repeats", "threads", "device", "timestamp", "torch_version", "authors_transformers")


def add_arguments(p) -> None:
    g = p.add_argument_group("--golden-pair (apd_ext beside the authors' loop; see bench/golden_pair.py)")
    g.add_argument("--golden-pair", action="store_true", help="run the side-by-side comparison instead")
    g.add_argument("--authors-repo", default=os.environ.get("APD_AUTHORS_REPO"),
                   help="checkout of github.com/danielmisrael/apd (env APD_AUTHORS_REPO)")
    g.add_argument("--authors-python", default=os.environ.get("APD_AUTHORS_PYTHON"),
                   help="interpreter for their loop (env APD_AUTHORS_PYTHON; default: this one)")
    g.add_argument("--authors-pythonpath", default=os.environ.get("APD_AUTHORS_PYTHONPATH"),
                   help="directory put first on their PYTHONPATH, holding transformers 4.54 "
                        "(env APD_AUTHORS_PYTHONPATH; bench/authors_loop.py says how to make it)")
    g.add_argument("--golden", default=None, help="golden directory (default: APD_EXT_GOLDEN, else ../shared/golden)")
    g.add_argument("--no-compile", action="store_true", help="leave out the compiled apd_ext rows")


def golden_root(arg: str | None) -> Path:
    root = Path(arg or os.environ.get("APD_EXT_GOLDEN") or Path(__file__).resolve().parents[2] / "shared" / "golden")
    for need in ("dream_tiny", "qwen2_tiny", "apd_runs/index.json"):
        if not (root / need).exists():
            raise SystemExit(f"error: golden data missing: {root / need} (pass --golden DIR or set APD_EXT_GOLDEN)")
    return root


def golden_runs(root: Path, kv_window, max_lookahead) -> list[dict]:
    """The golden runs of one setting at T = 1 without top-k filtering."""
    index = json.loads((root / "apd_runs" / "index.json").read_text())["runs"]
    return [r for r in index if r["temperature"] == 1.0 and r["top_k"] is None and r["kv_window"] == kv_window
            and r["max_lookahead"] == max_lookahead]


class OurLoop:
    """apd_ext.generate on the golden pair, fed a golden run's recorded uniforms through noise_fn."""

    def __init__(self, root: Path):
        import apd_ext
        from safetensors.torch import load_file

        self.root, self.load_file = root, load_file
        self.dllm = apd_ext.DllmRunner.from_pretrained(root / "dream_tiny")
        self.verifier = apd_ext.VerifierRunner.from_pretrained(root / "qwen2_tiny")
        self.generate = apd_ext.generate
        self.can_compile = "compile" in inspect.signature(self.generate).parameters
        self.cache: dict[str, tuple] = {}

    def _golden(self, run: dict):
        if run["file"] not in self.cache:
            t = self.load_file(str(self.root / "apd_runs" / run["file"]))
            P, L, V = t["input_ids"].shape[1], run["max_length"], 384
            width = min(run["max_lookahead"] or L - P, L - P)
            slabs, start = [], 0
            for k in t["step_num_masked"].tolist():  # step s: its K rows, padded to the window width
                slab = torch.full((1, width, V), 0.5, dtype=torch.float64)
                slab[0, :k] = t["uniform_noise"][start: start + k]
                slabs.append(slab)
                start += k
            self.cache[run["file"]] = (t, slabs)
        return self.cache[run["file"]]

    def run(self, run: dict, compile: bool) -> dict:
        t, slabs = self._golden(run)
        P = t["input_ids"].shape[1]
        stamps: list[float] = []
        kw = {"compile": True} if compile else {}
        t0, c0 = time.perf_counter(), time.process_time()
        out = self.generate(self.dllm, self.verifier, t["input_ids"], max_new_tokens=run["max_length"] - P,
                            mixture_weight=run["apd_mixture_weight"], kv_window=run["kv_window"],
                            max_lookahead=run["max_lookahead"], temperature=1.0, top_k=0, authors_compat=True,
                            seed=0, noise_fn=lambda step, valid: slabs[step],
                            stream=lambda tokens: stamps.append((time.perf_counter(), time.process_time())), **kw)
        total = time.perf_counter() - t0
        stamps.insert(0, (t0, c0))
        return {"sequences": out.sequences[0].tolist(), "acceptance_counts": out.stats["acceptance_counts"][0].tolist(),
                "step_s": [b[0] - a[0] for a, b in zip(stamps, stamps[1:])],
                "step_cpu_s": [b[1] - a[1] for a, b in zip(stamps, stamps[1:])], "total_s": total,
                "golden": t["sequences"][0].tolist()}


def _check_tokens(run: dict, results: dict) -> None:
    """Every implementation's tokens and acceptance counts equal the golden run's."""
    golden = results["eager"]["golden"]
    for impl, r in results.items():
        if r["sequences"] != golden or r["acceptance_counts"] != run["acceptance_counts"]:
            raise SystemExit(f"error: {run['file']}: {impl} tokens differ from the golden run "
                             f"(acceptance {r['acceptance_counts']} vs {run['acceptance_counts']})")


def measure(runs: list[dict], impls: dict, repeats: int) -> tuple[dict, dict]:
    """Warm-up, then `repeats` alternating rounds. impls: name -> callable(run) -> result dict.
    Returns (samples per impl: steady step times, per-round totals/steps/tokens; compile_s per impl)."""
    names = list(impls)
    first = {n: 0.0 for n in names}
    warm = {n: [] for n in names}
    for run in runs:
        results = {}
        for n in names:
            results[n] = impls[n](run)
            first[n] += results[n]["total_s"]
        _check_tokens(run, results)
    samples = {n: {"steady": [], "steady_cpu": [], "total": [0.0] * repeats, "steps": 0, "tokens": 0} for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for run in runs:
            results = {}
            for n in order:
                results[n] = res = impls[n](run)
                s = samples[n]
                s["steady"] += res["step_s"][1:]
                s["steady_cpu"] += res["step_cpu_s"][1:]
                s["total"][r] += res["total_s"]
                if r == 0:
                    s["steps"] += len(res["step_s"])
                    s["tokens"] += sum(res["acceptance_counts"])
                    warm[n].append(res["total_s"])
            _check_tokens(run, results)
    # compile: the warm-up call's time beyond a warm call's (first round), summed over the runs
    compile_s = {n: max(0.0, first[n] - sum(warm[n])) if n == "compiled" else None for n in names}
    return samples, compile_s


def summarize(setting: str, kv, la, samples: dict, compile_s: dict, runs: int) -> list[dict]:
    rows = []
    base = samples.get("authors")
    for n, s in samples.items():
        q = statistics.quantiles(s["steady"], n=4)
        loop = statistics.median(t / s["steps"] for t in s["total"])
        row = dict(setting=setting, kv_window=kv, max_lookahead=la, impl=n, runs=runs, steps=s["steps"],
                   steady_ms_per_step=1e3 * statistics.median(s["steady"]), steady_p25_ms=1e3 * q[0],
                   steady_p75_ms=1e3 * q[2], steady_cpu_ms_per_step=1e3 * statistics.median(s["steady_cpu"]),
                   loop_ms_per_step=1e3 * loop,
                   tokens_per_s=statistics.median(s["tokens"] / t for t in s["total"]),
                   compile_s=compile_s[n], tokens_equal="yes")  # measure() stops on any difference
        rows.append(row)
    if base is not None:
        ref = rows[0]
        for row in rows:
            row["speedup_steady"] = ref["steady_ms_per_step"] / row["steady_ms_per_step"]
            row["speedup_steady_cpu"] = ref["steady_cpu_ms_per_step"] / row["steady_cpu_ms_per_step"]
            row["speedup_loop"] = ref["loop_ms_per_step"] / row["loop_ms_per_step"]
    return rows


def print_table(rows: list[dict], header: str, baseline_note: str | None) -> None:
    f = common.fmt
    table = [dict(r, steady=f"{f(r['steady_ms_per_step'])} [{f(r['steady_p25_ms'])}-{f(r['steady_p75_ms'])}]",
                  loop=f(r["loop_ms_per_step"]), tps=f(r["tokens_per_s"]),
                  sp_steady=f"{r['speedup_steady']:.2f}x" if "speedup_steady" in r else "-",
                  sp_loop=f"{r['speedup_loop']:.2f}x" if "speedup_loop" in r else "-",
                  cpu=f(r["steady_cpu_ms_per_step"]),
                  sp_cpu=f"{r['speedup_steady_cpu']:.2f}x" if "speedup_steady_cpu" in r else "-",
                  comp=f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-",
                  kv=str(r["kv_window"]), la=str(r["max_lookahead"])) for r in rows]
    columns = [("setting", "setting"), ("impl", "loop"), ("steps", "steps/round"),
               ("steady", "steady ms/step p50 [p25-p75]"), ("sp_steady", "speed-up (steady)"),
               ("cpu", "steady CPU ms/step"), ("sp_cpu", "speed-up (CPU)"),
               ("loop", "whole-call ms/step"), ("sp_loop", "speed-up (whole call)"), ("tps", "tok/s"),
               ("comp", "compile s")]
    print(f"\n## {header}\n")
    if baseline_note:
        print(f"baseline missing: {baseline_note}\n")
    print(common.markdown_table(table, columns))


def main(args) -> int:
    root = golden_root(args.golden)
    if args.device != "cpu":
        raise SystemExit("error: --golden-pair runs on CPU (--device cpu), as the comparison is defined")
    ours = OurLoop(root)
    authors, note = None, None
    try:
        repo = authors_loop.check_repo(args.authors_repo)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if repo is None:
        note = authors_loop.HOW_TO_GET
    else:
        try:
            authors = authors_loop.AuthorsLoop(repo, root, python=args.authors_python,
                                               pythonpath=args.authors_pythonpath, threads=args.threads)
        except (RuntimeError, OSError) as e:
            raise SystemExit(f"error: {e}")
    impls = {}
    if authors is not None:
        impls["authors"] = lambda run: authors.run(run["file"], run["apd_mixture_weight"], run["kv_window"],
                                                   run["max_lookahead"], run["max_length"])
    impls["eager"] = lambda run: ours.run(run, compile=False)
    if not args.no_compile:
        if ours.can_compile:
            impls["compiled"] = lambda run: ours.run(run, compile=True)
        else:
            print("note: this apd_ext.generate has no compile= option; compiled rows left out")
    desc, stamp = common.device_description(torch.device("cpu")), common.timestamp()
    tf = authors.info["transformers"] if authors else "-"
    repeats = 2 if args.quick else args.repeats or 20
    print(f"device: {desc}; torch {torch.__version__}; {args.threads} thread(s) in each process; authors' side: "
          f"{'transformers ' + tf + ' from ' + str(repo) if authors else 'missing'}; load average "
          f"{os.getloadavg()[0]:.2f}; {repeats} rounds after a warm-up", flush=True)
    rows = []
    try:
        for setting, kv, la in SETTINGS:
            runs = golden_runs(root, kv, la)
            print(f"{setting}: runs {', '.join(r['file'] for r in runs)}", flush=True)
            samples, compile_s = measure(runs, impls, repeats)
            rows += summarize(setting, kv, la, samples, compile_s, len(runs))
    finally:
        if authors is not None:
            authors.close()
    header = (f"golden tiny pair, CPU fp32, {args.threads} thread(s); {desc}; torch {torch.__version__}; "
              f"authors' transformers {tf}; {stamp}")
    print_table(rows, header, note)
    for r in rows:
        r.update(repeats=repeats, threads=args.threads, device=desc, timestamp=stamp, torch_version=torch.__version__,
                 authors_transformers=tf)
        for k, v in r.items():
            r[k] = f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)
    path = common.append_csv(args.csv, rows, CSV_FIELDS)
    print(f"\n{len(rows)} rows appended to {path}")
    return 0
