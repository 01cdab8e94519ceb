"""`eval-tiny`: accuracy and speed of decoding policies on held-out problems of the bundled pair's
task (apd_ext.tiny.evaluate), a table on stdout and optionally a JSON file."""

from __future__ import annotations

import json
import os
import sys

from apd_ext.cli import common, parallel
from apd_ext.cli.common import Interrupted, nonneg_int, positive_int
from apd_ext.cli.demo import TINY_THREADS

HELP = "accuracy and speed of policies on held-out problems"


def add_parser(sub) -> None:
    p = sub.add_parser("eval-tiny", help=HELP, description=HELP)
    p.add_argument("--assets", default=None, help="directory with dllm/ and verifier/ (default: the bundled pair)")
    p.add_argument("--block", action="store_true",
                   help="decode with the block-diffusion dLLM (ASSETS/block_dllm/, Fast-dLLM v2 layout) and the same "
                        "verifier; default policies: apd_ext.tiny.evaluate.BLOCK_POLICIES")
    p.add_argument("--device", default=None, help="cpu (default) or cuda[:N]")
    p.add_argument("--seed", type=nonneg_int, default=0, help="held-out set; problem i decodes with seed + i")
    p.add_argument("--num-problems", type=positive_int, default=50)
    p.add_argument("--json", default=None, help="write the results here (its directory must exist)")
    p.add_argument("--policies", nargs="+", default=None,
                   help="policy specs, knobs as DecodeConfig's fields (default: the recorded set, "
                        "apd_ext.tiny.evaluate.DEFAULT_POLICIES: dllm_fixed:k=1 and apd at mixture_weight 0.7 and "
                        "0.9 without the dLLM cache, ar, apd)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_threads(p, f"{TINY_THREADS}")
    parallel.add_tp(p)


def run(args) -> None:
    from apd_ext.tiny import ASSETS, evaluate as ev, task

    args.policies = args.policies or (ev.BLOCK_POLICIES if args.block else ev.DEFAULT_POLICIES)
    common.check_policies(args.policies, ev.TASK_CONFIG)
    need = ("block_dllm", "verifier") if args.block else ("dllm", "verifier")
    assets = common.check_dir(args.assets, "--assets", need) if args.assets else ASSETS
    device = common.resolve_device(args.device, "cpu")
    if args.json:
        common.check_writable(args.json, "--json")
    threads = common.set_threads(args, TINY_THREADS)
    tp = parallel.setup(args, device)
    pair = ev.load_pair(assets, device=tp.device if tp else device, tp=tp,
                        replicate=parallel.VERIFIER_MODES[args.verifier_tp], block=args.block)
    progress = not args.quiet and common.RANK == 0
    problems = task.eval_problems(args.seed, args.num_problems)
    results = []
    try:
        for spec in args.policies:
            results.append(ev.evaluate(pair, problems, spec, progress=progress, seed=args.seed))
    except KeyboardInterrupt:
        if results:  # what was measured is still worth a look
            print("\n" + ev.format_table(results))
        done = f"; {len(results)} of {len(args.policies)} policies done" if results else ""
        raise Interrupted(f"eval-tiny stopped{done}" + (f", {args.json} not written" if args.json else "")) from None
    print(ev.format_table(results))
    if args.json and common.RANK == 0:
        doc = {"seed": args.seed, "num_problems": args.num_problems, "threads": threads,
               "device": str(pair.dllm.device), "tp": args.tp, "dllm": pair.dllm.family, "results": results}
        tmp = f"{args.json}.partial"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
