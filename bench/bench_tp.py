"""Tensor-parallel decoding on the bundled tiny pair (CPU, gloo): tokens/s and ms/step at TP=1 and
TP=N, one torch thread per process, beside plain autoregressive decoding (the "ar" policy, the
verifier alone) at the same TP sizes.

    PYTHONPATH=. python bench/bench_tp.py [--tp 2] [--problems 8] [--repeats 3] [--csv PATH] [--quick]

The parent process measures TP=1 itself, then runs `torchrun --nproc-per-node N bench/bench_tp.py
--worker ...`, whose rank 0 writes its measurements to a JSON file the parent reads. Per policy
(apd as the tiny task runs it, and ar): generate on --problems held-out prompts of the tiny task
(same seeds), one warm-up pass, then --repeats timed passes; the pass of median time is reported.
tokens_per_s = tokens generated / wall time of the pass (every rank's generate calls, a barrier
before and after); ms_per_step = wall time / decoding steps. Also the bytes of weights each rank
holds (dLLM and verifier; with --verifier-tp replicate the verifier's body is whole on each rank).

The tiny pair (~2.7M + ~0.8M parameters) is far too small for tensor parallelism to pay on a CPU:
every layer adds two all-reduces through gloo (tens of microseconds each) to a forward of about a
millisecond. The row measures that overhead and checks the whole path; the case for TP is a 7B
dLLM on GPUs (bench/bench_e2e.py --tp under torchrun).

Appends one CSV row per (tp, policy) to --csv (default bench/results/tp_tiny_cpu.csv).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import common

try:
    from apd_ext.decode.config import DecodeConfig
    from apd_ext.tiny import ASSETS, evaluate as ev, task
    from apd_ext import generate
except ImportError as e:  # pragma: no cover - the message is the point
    sys.exit(f"bench_tp: cannot import apd_ext ({e}); run `make build` first")

FIELDS = ["timestamp", "machine", "tp", "verifier_tp", "policy", "problems", "tokens", "steps", "seconds",
          "tokens_per_s", "ms_per_step", "speedup_vs_tp1", "dllm_weight_bytes_per_rank",
          "verifier_weight_bytes_per_rank", "threads_per_rank"]
POLICIES = {"apd": ev.TASK_CONFIG, "ar": ev.TASK_CONFIG.replace(policy="ar")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tp", type=int, default=2, help="ranks of the tensor-parallel run (default 2)")
    p.add_argument("--problems", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--verifier-tp", choices=["auto", "replicate", "shard"], default="auto")
    p.add_argument("--csv", default="bench/results/tp_tiny_cpu.csv")
    p.add_argument("--quick", action="store_true", help="2 problems, 1 repeat (a smoke run)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON path: run as a torchrun rank
    args = p.parse_args(argv)
    if args.quick:
        args.problems, args.repeats = 2, 1
    return args


def weight_bytes(runner) -> int:
    f = getattr(runner, "weight_bytes", None)
    if f is not None:
        return int(f())
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in runner.model.parameters()}
    return sum(seen.values())


def measure(pair, prompts, repeats: int, barrier) -> list[dict]:
    """Per policy: the median-time pass of `repeats` (after one warm-up)."""
    rows = []
    for name, cfg in POLICIES.items():
        def one_pass():
            barrier()
            t0 = time.perf_counter()
            tokens = steps = 0
            for i, ids in enumerate(prompts):
                out = generate(pair.dllm, pair.verifier, [ids], cfg, seed=i)
                tokens += int(out.num_generated.sum())
                steps += int(out.stats["steps"])
            barrier()
            return time.perf_counter() - t0, tokens, steps

        one_pass()  # warm-up: caches allocated, kernels loaded
        passes = sorted((one_pass() for _ in range(repeats)), key=lambda r: r[0])
        seconds, tokens, steps = passes[len(passes) // 2]
        rows.append({"policy": name, "problems": len(prompts), "tokens": tokens, "steps": steps,
                     "seconds": seconds, "tokens_per_s": tokens / seconds, "ms_per_step": 1e3 * seconds / steps,
                     "dllm_weight_bytes_per_rank": weight_bytes(pair.dllm),
                     "verifier_weight_bytes_per_rank": weight_bytes(pair.verifier)})
    return rows


def prompts_of(n: int) -> list[list[int]]:
    tok = ev.load_pair(ASSETS).tok
    return [tok.encode(p.prompt) for p in task.eval_problems(0, n)]


def worker(args) -> None:
    """One torchrun rank: load the sharded pair, measure, rank 0 writes the JSON."""
    from apd_ext.parallel import TensorParallel

    torch.set_num_threads(1)
    tp = TensorParallel.init(backend="gloo", device="cpu")
    replicate = {"auto": None, "replicate": True, "shard": False}[args.verifier_tp]
    pair = ev.load_pair(ASSETS, tp=tp, replicate=replicate)
    rows = measure(pair, prompts_of(args.problems), args.repeats, tp.barrier)
    if tp.rank == 0:
        Path(args.worker).write_text(json.dumps(rows))


def run_tp(args) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "rows.json"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.tp),
               __file__, "--worker", str(out), "--problems", str(args.problems), "--repeats", str(args.repeats),
               "--verifier-tp", args.verifier_tp]
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    torch.set_num_threads(1)
    stamp, machine = common.timestamp(), common.cpu_model()
    print(f"bench_tp: tiny pair, CPU ({machine}), 1 thread per process, {args.problems} problems, "
          f"median of {args.repeats} passes; TP=1 here, TP={args.tp} under torchrun (gloo)")
    base = {r["policy"]: r for r in measure(ev.load_pair(ASSETS), prompts_of(args.problems), args.repeats,
                                            lambda: None)}
    rows = [dict(r, tp=1) for r in base.values()] + [dict(r, tp=args.tp) for r in run_tp(args)]
    for r in rows:
        r.update(timestamp=stamp, machine=machine, verifier_tp=args.verifier_tp if r["tp"] > 1 else "",
                 threads_per_rank=1, speedup_vs_tp1=base[r["policy"]]["seconds"] / r["seconds"])
    cols = [("policy", "policy"), ("tp", "TP"), ("tokens_per_s", "tokens/s"), ("ms_per_step", "ms/step"),
            ("speedup_vs_tp1", "vs TP=1"), ("steps", "steps"), ("dllm_weight_bytes_per_rank", "dLLM bytes/rank"),
            ("verifier_weight_bytes_per_rank", "verifier bytes/rank")]
    shown = [{k: (common.fmt(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    print(common.markdown_table(shown, cols))
    same = all(base[r["policy"]]["tokens"] == r["tokens"] and base[r["policy"]]["steps"] == r["steps"] for r in rows)
    print(f"same tokens and steps at TP=1 and TP={args.tp}: {same}")
    path = common.append_csv(args.csv, rows, FIELDS)
    print(f"appended {len(rows)} rows to {path}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
