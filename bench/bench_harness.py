"""Accuracy and speed of decoding policies through lm-evaluation-harness: the bundled tiny pair on
the local task apd_tiny_arith, each policy run end to end by `lm_eval.simple_evaluate` with the
"apd" model (apd_ext.harness.model.ApdLM).

    PYTHONPATH=. python bench/bench_harness.py [--limit 200] [--batch-size 1] [--threads 1] \\
        [--policies "policy=dllm_fixed,k=1" "policy=apd,mixture_weight=0.9" ...] [--out PATH] [--quick] [--block]

Policies (default, in this order; every knob not named keeps the library's default, e.g. kv_window
16 and max_lookahead 100):
    dLLM k=1        policy=dllm_fixed,k=1           (the baseline: one token per dLLM forward)
    APD w=0.5       policy=apd,mixture_weight=0.5
    APD w=0.7       policy=apd,mixture_weight=0.7
    APD w=0.9       policy=apd,mixture_weight=0.9
    fixed k=4       policy=dllm_fixed,k=4
    verifier alone  policy=ar
--policies replaces the list with model_args strings, parsed as lm_eval's --model_args are (a
policy's label is then its string). The first policy of the list is the baseline the ratios are
taken against, measured in the same run.

Per policy: a fresh ApdLM(**model_args, batch_size=B, threads=T, device=D); one warm-up
simple_evaluate on the first max(2, B) problems (its statistics discarded); then one
simple_evaluate(model=lm, tasks=["apd_tiny_arith"], limit=N, batch_size=B). accuracy is the task's
"exact_match,final-answer" (exact match of the "#### N" answer, as eval-tiny scores it); the speed
figures are lm.summary() of the timed call: tokens are counted per answer up to its first EOS (as
eval-tiny counts them), tokens_per_s = tokens / wall time of the decoding calls (the harness's own
work outside them is in eval_wall_s), tokens_per_dllm_forward = tokens / dLLM forwards ("-" for the
verifier alone, which makes none), tokens_per_step = tokens / decoding steps. At batch size B > 1 a
row takes part in every forward of its batch (rows wait for the batch's longest), so tokens per
forward drop, and tokens/s rise only where one forward does not already keep the CPU busy (on the
tiny pair: the verifier alone); the answers, hence accuracy, do not depend on B.

Ratios vs the baseline: speedup_tokens_per_s = tokens_per_s / the baseline's, and
speedup_tokens_per_forward = tokens_per_dllm_forward / the baseline's (the baseline's own are 1).

Prints a Markdown table; writes one CSV row per policy (with the machine, torch threads, device,
lm_eval version, N and B) to --out, default bench/results/harness_tiny_<device>.csv (--quick:
bench/results/harness_tiny_<device>_quick.csv.tmp, git-ignored). The file is replaced, not
appended to: rewritten through PATH.partial + os.replace after every policy, so a killed run leaves
the rows measured so far. No network: HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 are set before
lm_eval is imported (the task's data is a local JSONL file).
"""

from __future__ import annotations

import os

# before lm_eval (and datasets / huggingface_hub under it) is imported: nothing here may reach the network
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import importlib.metadata  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import common  # noqa: E402  (bench/common.py: the script's directory is on sys.path)

try:
    import apd_ext
    from apd_ext.cli.demo import TINY_THREADS
except ModuleNotFoundError as e:
    if e.name != "apd_ext":
        raise
    sys.exit("apd_ext is not importable: run from the repository root with PYTHONPATH=. "
             "after `python setup.py build_ext --inplace` (or pip install -e .)")
try:
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import simple_parse_args_string
except ModuleNotFoundError as e:
    if not (e.name or "").startswith("lm_eval"):
        raise
    sys.exit("lm-evaluation-harness is not installed: pip install 'apd_ext[eval]'")

from apd_ext.harness import TASKS_DIR  # noqa: E402
from apd_ext.harness.model import ApdLM  # noqa: E402

TASK = "apd_tiny_arith"
METRIC = "exact_match,final-answer"
FULL_LIMIT = 200  # the whole held-out file
QUICK_LIMIT = 4
WARMUP_PROBLEMS = 2
# (label, model_args); the first is the baseline
DEFAULT_POLICIES = (
    ("dLLM k=1", "policy=dllm_fixed,k=1"),
    ("APD w=0.5", "policy=apd,mixture_weight=0.5"),
    ("APD w=0.7", "policy=apd,mixture_weight=0.7"),
    ("APD w=0.9", "policy=apd,mixture_weight=0.9"),
    ("fixed k=4", "policy=dllm_fixed,k=4"),
    ("verifier alone", "policy=ar"),
)
QUICK_POLICIES = (DEFAULT_POLICIES[0], DEFAULT_POLICIES[3])
# --block: the bundled block-diffusion dLLM (apd_ext/tiny/assets/block_dllm) with the same verifier
BLOCK_POLICIES = (
    ("block k=1", "policy=dllm_fixed,k=1"),
    ("block APD w=0.7", "policy=apd,mixture_weight=0.7"),
    ("block APD w=0.9", "policy=apd,mixture_weight=0.9"),
    ("block fast_dllm_v2", "policy=fast_dllm_v2"),
    ("block threshold 0.9", "policy=threshold,threshold=0.9"),
    ("verifier alone", "policy=ar"),
)
# set by this script's flags, not by a policy's model_args
RESERVED = ("batch_size", "max_batch_size", "threads", "device")
FIELDS = ("timestamp", "label", "model_args", "config", "baseline", "task", "limit", "answers", "batch_size",
          "accuracy", "generated_tokens", "tokens_per_dllm_forward", "tokens_per_step", "dllm_forwards_per_answer",
          "verifier_forwards_per_answer", "tokens_per_s", "wall_s", "eval_wall_s", "speedup_tokens_per_s",
          "speedup_tokens_per_forward", "warmup_problems", "device", "machine", "platform", "torch_threads",
          "loadavg_1m", "torch_version", "lm_eval_version", "apd_ext_version")


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return n


def parse_policy(text: str) -> dict:
    """model_args string -> dict (lm_eval's parsing); ValueError for an empty one, a piece without
    '=' or a key this script sets itself."""
    pieces = [s for s in text.split(",") if s.strip()]
    if not pieces:
        raise ValueError(f"--policies: empty model_args {text!r}")
    bad = [s for s in pieces if "=" not in s]
    if bad:
        raise ValueError(f"--policies {text!r}: {bad[0]!r} is not key=value")
    args = simple_parse_args_string(text)
    taken = sorted(set(args) & set(RESERVED))
    if taken:
        raise ValueError(f"--policies {text!r}: {', '.join(taken)} set by this script's flags "
                         f"(--batch-size, --threads, --device), not per policy")
    return args


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=positive_int, default=None,
                   help=f"problems per policy (default {FULL_LIMIT}, the whole task; --quick {QUICK_LIMIT})")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="requests decoded together (default 1, as the paper measures)")
    p.add_argument("--threads", type=positive_int, default=TINY_THREADS,
                   help=f"torch threads (default {TINY_THREADS}, apd_ext.cli.demo.TINY_THREADS: the tiny pair's "
                        f"fastest)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--seed", type=int, default=0, help="the model's seed (request i decodes with seed + i)")
    p.add_argument("--policies", nargs="+", default=None, metavar="MODEL_ARGS",
                   help='model_args strings, e.g. "policy=apd,mixture_weight=0.9"; the first is the baseline '
                        '(default: the six policies of the module docstring)')
    p.add_argument("--out", default=None,
                   help="CSV to write (replaced; default bench/results/harness_tiny_<device>.csv)")
    p.add_argument("--block", action="store_true",
                   help="the bundled block-diffusion dLLM (assets/block_dllm) with the same verifier: its default "
                        "policies (one token per step, APD, its own decoding, threshold, the verifier alone), CSV "
                        "default bench/results/harness_tiny_block_<device>.csv")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: limit {QUICK_LIMIT}, two policies (dLLM k=1, APD w=0.9), CSV to "
                        f"bench/results/harness_tiny_<device>_quick.csv.tmp unless --out")
    a = p.parse_args(argv)
    if a.seed < 0:
        p.error(f"--seed must be >= 0, got {a.seed}")
    try:
        dev = torch.device(a.device)
    except (RuntimeError, TypeError):
        p.error(f"--device {a.device!r} is not a torch device (cpu, cuda, cuda:N)")
    if dev.type not in ("cpu", "cuda"):
        p.error(f"--device {a.device!r}: cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    a.device = dev
    if a.policies is not None:
        try:
            a.policy_list = [(text, text, parse_policy(text)) for text in a.policies]
        except ValueError as e:
            p.error(str(e))
    else:
        chosen = (BLOCK_POLICIES[:2] if a.quick else BLOCK_POLICIES) if a.block else (
            QUICK_POLICIES if a.quick else DEFAULT_POLICIES)
        a.policy_list = [(label, text, parse_policy(text)) for label, text in chosen]
    if a.block:  # the directories in every policy's model_args (shown in the CSV)
        from apd_ext.tiny import BLOCK_DLLM_DIR, VERIFIER_DIR

        rel = lambda d: os.path.relpath(d, common.RESULTS.parents[1])  # noqa: E731  (repository-relative in the CSV)
        dirs = f"dllm={rel(BLOCK_DLLM_DIR)},verifier={rel(VERIFIER_DIR)}"
        a.policy_list = [(label, f"{dirs},{text}", {"dllm": str(BLOCK_DLLM_DIR), "verifier": str(VERIFIER_DIR),
                                                     **args}) for label, text, args in a.policy_list]
    if a.limit is None:
        a.limit = QUICK_LIMIT if a.quick else FULL_LIMIT
    if a.out is None:
        name = f"harness_tiny_block_{dev.type}" if a.block else f"harness_tiny_{dev.type}"
        a.out = common.RESULTS / (f"{name}_quick.csv.tmp" if a.quick else f"{name}.csv")
    a.out = Path(a.out)
    return a


def config_text(lm: ApdLM) -> str:
    """The DecodeConfig the model decodes with: policy and every knob it reads, library defaults
    included (before the task's generation kwargs: max_new_tokens 64, greedy)."""
    cfg = lm.config
    return f"{cfg.policy}:" + ",".join(f"{k}={getattr(cfg, k)}" for k in cfg.knobs if k != "max_new_tokens")


def evaluate(lm: ApdLM, limit: int, batch_size: int, task_manager: TaskManager) -> tuple[float, int, float]:
    """(accuracy, answers scored, wall s) of one simple_evaluate of TASK on the first `limit` problems."""
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], limit=limit, batch_size=batch_size,
                                  task_manager=task_manager, log_samples=False)
    wall = time.perf_counter() - t0
    res = out["results"][TASK]
    if METRIC not in res:
        raise RuntimeError(f"{TASK}: no {METRIC!r} in the harness's results {sorted(res)}")
    return float(res[METRIC]), int(res.get("sample_len", limit)), wall


def measure(label: str, model_args: dict, args, task_manager: TaskManager) -> dict:
    """One policy: a fresh model, its warm-up, then the timed run; the row's measured fields."""
    lm = ApdLM(**model_args, batch_size=args.batch_size, threads=args.threads, device=str(args.device),
               seed=args.seed)
    warm = min(args.limit, max(WARMUP_PROBLEMS, args.batch_size))
    evaluate(lm, warm, args.batch_size, task_manager)  # caches allocated, first calls paid
    lm.stats.clear()  # the warm-up is not counted
    load = os.getloadavg()[0]
    accuracy, scored, eval_wall = evaluate(lm, args.limit, args.batch_size, task_manager)
    summary = lm.summary().get(TASK)
    if summary is None or summary["answers"] != args.limit or scored != args.limit:
        got = None if summary is None else summary["answers"]
        raise RuntimeError(f"{label}: {args.limit} problems asked for, {scored} scored, {got} decoded "
                           f"(the task holds {FULL_LIMIT})")
    return {"label": label, "config": config_text(lm), "accuracy": accuracy, "eval_wall_s": eval_wall,
            "warmup_problems": warm, "loadavg_1m": load, "torch_threads": torch.get_num_threads(),
            **{k: summary[k] for k in ("answers", "generated_tokens", "tokens_per_dllm_forward", "tokens_per_step",
                                       "dllm_forwards_per_answer", "verifier_forwards_per_answer", "tokens_per_s",
                                       "wall_s")}}


def ratio(x, base) -> float | None:
    """x / base; None when either is missing or base is 0 (x / x is exactly 1.0 for the baseline)."""
    if x is None or base is None or base == 0:
        return None
    return x / base


def write_csv(path: Path, rows: list[dict]) -> None:
    """All rows to path, atomically (path.partial, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else f"{r[k]:.6g}" if isinstance(r[k], float) else r[k])
                        for k in FIELDS})
    os.replace(tmp, path)


def lm_eval_version() -> str:
    for dist in ("lm_eval", "lm-eval"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return str(getattr(lm_eval, "__version__", "unknown"))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # the harness's INFO lines would bury the table
    stamp, machine = common.timestamp(), common.device_description(args.device)
    version = lm_eval_version()
    common_fields = {"timestamp": stamp, "task": TASK, "limit": args.limit, "batch_size": args.batch_size,
                     "device": str(args.device), "machine": machine, "platform": platform.platform(),
                     "torch_version": torch.__version__, "lm_eval_version": version,
                     "apd_ext_version": apd_ext.__version__, "baseline": args.policy_list[0][0]}
    print(f"bench_harness: {TASK} via lm_eval {version} simple_evaluate, model apd (bundled tiny pair); "
          f"{args.limit} problems, batch size {args.batch_size}, {args.threads} thread(s), {machine}; "
          f"{len(args.policy_list)} policies, baseline {args.policy_list[0][0]!r}", flush=True)
    task_manager = TaskManager(include_path=str(TASKS_DIR))  # the task folder named here too, hook or not
    rows: list[dict] = []
    for label, text, model_args in args.policy_list:
        r = measure(label, model_args, args, task_manager)
        r.update(common_fields, model_args=text)
        base = rows[0] if rows else r
        r["speedup_tokens_per_s"] = ratio(r["tokens_per_s"], base["tokens_per_s"])
        r["speedup_tokens_per_forward"] = ratio(r["tokens_per_dllm_forward"], base["tokens_per_dllm_forward"])
        rows.append(r)
        write_csv(args.out, rows)
        print(f"  {label:<16} acc {r['accuracy']:.3f}  {common.fmt(r['tokens_per_dllm_forward'])} tok/dLLM fwd  "
              f"{r['tokens_per_s']:7.1f} tok/s  ({r['wall_s']:.1f} s decoding, {r['eval_wall_s']:.1f} s in the "
              f"harness)", flush=True)

    f = common.fmt
    base_label = args.policy_list[0][0]
    shown = [dict(r, accuracy=f"{r['accuracy']:.3f}", tokens_per_dllm_forward=f(r["tokens_per_dllm_forward"]),
                  tokens_per_step=f(r["tokens_per_step"]), tokens_per_s=f(r["tokens_per_s"]),
                  speedup_tokens_per_s=f(r["speedup_tokens_per_s"]),
                  speedup_tokens_per_forward=f(r["speedup_tokens_per_forward"]), wall_s=f"{r['wall_s']:.1f}")
             for r in rows]
    columns = [("label", "policy"), ("model_args", "model_args"), ("accuracy", "accuracy"),
               ("tokens_per_dllm_forward", "tok/dLLM fwd"), ("tokens_per_step", "tok/step"),
               ("tokens_per_s", "tok/s"), ("speedup_tokens_per_s", f"tok/s vs {base_label}"),
               ("speedup_tokens_per_forward", f"tok/fwd vs {base_label}"), ("wall_s", "decode s")]
    print(f"\n## {TASK}, {args.limit} problems, batch size {args.batch_size}; {machine}; torch {torch.__version__}; "
          f"lm_eval {version}; apd_ext {apd_ext.__version__}; {stamp}\n")
    print(common.markdown_table(shown, columns))
    print(f"\n{len(rows)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
