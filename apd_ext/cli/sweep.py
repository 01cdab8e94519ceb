"""`sweep`: accuracy against tokens per forward over a grid of policies (apd_ext.tiny.sweep), written
to OUT.csv (one row per policy) and OUT.png (names: apd_ext.tiny.sweep.output_paths); `--replot`
redraws OUT.png from OUT.csv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apd_ext.cli import common
from apd_ext.cli.common import CliError, Interrupted, nonneg_int, positive_int

HELP = "accuracy vs tokens per forward over a grid of policies (CSV + PNG)"


def _temperature(text: str) -> float:
    value = common.finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"takes a number > 0 (the sampled families), got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help=HELP, description=HELP)
    p.add_argument("--num-problems", type=positive_int, default=50)
    p.add_argument("--seed", type=nonneg_int, default=0, help="held-out set; problem i decodes with seed + i")
    p.add_argument("--out", default="bench/results/sweep_tiny",
                   help="writes OUT.csv and OUT.png (its directory must exist; a .csv or .png suffix of OUT is "
                        "dropped; a directory holds sweep_tiny.csv and sweep_tiny.png; default %(default)s)")
    p.add_argument("--assets", default=None, help="directory with dllm/ and verifier/ (default: the bundled pair)")
    p.add_argument("--quick", action="store_true", help="a smaller grid")
    p.add_argument("--block", action="store_true",
                   help="the block-diffusion dLLM (ASSETS/block_dllm/) with the same verifier, on its own grid "
                        "(apd_ext.tiny.sweep.BLOCK_FAMILIES; --families picks among them)")
    p.add_argument("--policies", nargs="+", default=None, help="policy specs instead of the default grid")
    p.add_argument("--families", nargs="+", default=None, metavar="FAMILY",
                   help="the grid's families (default: all: apd, apd_grid, dllm_fixed, diffusion, ar, apd_sampled, "
                        "apd_compat, threshold; the recorded bench/results/sweep_tiny.csv has all but threshold, "
                        "bench/results/sweep_tiny_threshold.csv the threshold family)")
    p.add_argument("--temperature", type=_temperature, default=0.5,
                   help="of the apd_sampled / apd_compat families (%(default)s)")
    p.add_argument("--replot", action="store_true", help="only redraw OUT.png from OUT.csv")
    common.add_threads(p, "1")


def run(args) -> None:
    from apd_ext.tiny import sweep

    try:
        csv_path, png_path = sweep.output_paths(args.out)
    except ValueError as e:
        raise CliError(f"--out {e}") from None
    if args.replot:
        common.check_file(csv_path, "--replot: --out")
        common.check_writable(png_path, "--out")
        _plot(sweep, sweep.read_rows(csv_path), png_path)
        return
    from apd_ext.tiny import ASSETS, evaluate as ev, task

    if args.policies and args.families:
        raise CliError("--policies and --families: choose one (--families picks parts of the default grid)")
    try:
        if args.block:
            policies = args.policies or sweep.block_configurations(args.quick,
                                                                   tuple(args.families or sweep.BLOCK_FAMILIES))
        else:
            policies = args.policies or sweep.configurations(args.quick, args.temperature,
                                                             tuple(args.families or sweep.FAMILIES))
    except ValueError as e:
        raise CliError(f"--families: {e}") from None
    common.check_policies(policies, ev.TASK_CONFIG)
    need = ("block_dllm", "verifier") if args.block else ("dllm", "verifier")
    assets = common.check_dir(args.assets, "--assets", need) if args.assets else ASSETS
    for path in (csv_path, png_path, sweep.partial_path(csv_path)):
        common.check_writable(path, "--out")
    common.set_threads(args, 1)
    pair = ev.load_pair(assets, block=args.block)
    problems = task.eval_problems(args.seed, args.num_problems)
    done: list[dict] = []
    try:
        rows = sweep.run(pair, problems, policies, csv_path, seed=args.seed, on_row=done.append)
    except KeyboardInterrupt:
        raise Interrupted(f"sweep stopped after {len(done)} of {len(policies)} policies; their rows are in "
                          f"{sweep.partial_path(csv_path)}, {csv_path} was not written") from None
    print(ev.format_table(rows))
    _plot(sweep, rows, png_path, csv_path)


def _plot(sweep, rows, png_path: Path, csv_path: Path | None = None) -> None:
    try:
        sweep.plot(rows, png_path)
    except ImportError:
        if csv_path is None:
            raise CliError("--replot needs matplotlib", 1) from None
        print(f"wrote {csv_path} (no matplotlib: no plot)", file=sys.stderr)
        return
    print("wrote " + (f"{csv_path} and " if csv_path else "") + str(png_path), file=sys.stderr)
