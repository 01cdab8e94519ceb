"""`demo`: APD on a held-out problem with the bundled tiny pair, streamed, beside the same prompt
decoded one token per step and by the verifier alone; `demo --synthetic`: the fused ops on
synthetic logits (no models)."""

from __future__ import annotations

import sys

import torch

import apd_ext
from apd_ext.cli import common, parallel
from apd_ext.cli.common import nonneg_int, positive_int

HELP = "APD on a held-out problem with the bundled tiny pair (--synthetic: the ops alone)"

# The tiny pair runs fastest on one thread: at its size a second thread only adds synchronisation,
# and on a machine whose cores are busy it waits for them (2 threads measured 2-9x slower than 1
# on a loaded 2-core VM).
TINY_THREADS = 1


def add_tiny_source(p) -> None:
    """--assets, --device, --seed and the output flags shared by the commands of the bundled pair."""
    p.add_argument("--assets", default=None, help="directory with dllm/ and verifier/ (default: the bundled pair)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda[:N]")
    p.add_argument("--seed", type=nonneg_int, default=0, help="held-out set and decoding seed (default 0)")
    p.add_argument("--no-color", action="store_true", help="never colour the streamed text")
    p.add_argument("--color", action="store_true", help="colour even when stdout is not a terminal")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="time the first calls too (they allocate caches)")
    common.add_threads(p, f"{TINY_THREADS} for the bundled pair")
    parallel.add_tp(p)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help=HELP, description=HELP)
    add_tiny_source(p)
    common.add_knob_flags(p, "64 with the bundled pair (its answer region)")
    p.add_argument("--problem", type=nonneg_int, default=0, help="index in the held-out set of --seed")
    s = p.add_argument_group("--synthetic")
    s.add_argument("--synthetic", action="store_true", help="run the fused ops on synthetic logits instead")
    s.add_argument("--window", type=positive_int, default=32, help="positions per step K (32)")
    s.add_argument("--vocab", type=positive_int, default=151936, help="vocabulary V (151936)")
    s.add_argument("--steps", type=positive_int, default=5, help="timed steps per setting (5)")
    s.add_argument("--agreement", type=common.fraction, default=0.9,
                   help="correlation of the verifier's logits with the dLLM's, in [0, 1] (0.9)")


def tiny_setup(args):
    """Check --assets / --device, set the threads, join the --tp group; (pair loader, base config,
    threads)."""
    from apd_ext.tiny import ASSETS, evaluate as ev

    assets = common.check_dir(args.assets, "--assets", ("dllm", "verifier")) if args.assets else ASSETS
    device = common.resolve_device(args.device, "cpu")
    cfg = common.config_from_args(args, ev.TASK_CONFIG)
    threads = common.set_threads(args, TINY_THREADS)
    tp = parallel.setup(args, device)
    replicate = parallel.VERIFIER_MODES[args.verifier_tp]
    return (lambda: ev.load_pair(assets, device=tp.device if tp else device, tp=tp, replicate=replicate)), cfg, threads


def run(args) -> None:
    if args.synthetic:
        if args.tp != 1:
            raise common.CliError("--synthetic runs the ops alone, on one process: --tp does not apply")
        common.set_threads(args, TINY_THREADS)
        synthetic(args)
        return
    from apd_ext.cli.compare import decode_and_compare
    from apd_ext.tiny import task

    load, cfg, threads = tiny_setup(args)
    pair = load()
    problem = task.eval_problems(args.seed, args.problem + 1)[args.problem]
    ranks = f" x {args.tp} ranks (parameters per rank)" if args.tp > 1 else ""
    print(f"apd_ext demo: the bundled tiny dLLM ({_params(pair.dllm):,} parameters) drafts, the tiny causal "
          f"verifier ({_params(pair.verifier):,}) checks; policy {cfg.to_spec()}, held-out problem "
          f"(eval seed {args.seed}, #{args.problem}); {pair.dllm.device}, {threads} thread(s) (--threads N)"
          f"{ranks}. Each colour is one decoding step.\n")
    sys.stdout.write(problem.prompt)
    text = decode_and_compare(args, cfg, pair, pair.tokenizer.encode(problem.prompt), compare=("dllm_fixed", "ar"),
                              answer_of=task.extract_answer)
    got = task.extract_answer(text)
    print(f"expected {problem.answer}, got {got}: {'correct' if got == problem.answer else 'wrong'}. "
          f"`python -m apd_ext eval-tiny` measures accuracy over many problems.")


def synthetic(args) -> None:
    from apd_ext.synthetic import synthetic_logits, time_ops

    print("apd_ext demo --synthetic: the fused ops on synthetic logits")
    print(f"backends on cpu: {', '.join(apd_ext.available_backends('cpu'))}; window K={args.window}, "
          f"vocab V={args.vocab}, bf16, {torch.get_num_threads()} thread(s) (--threads N)\n")
    D, A = synthetic_logits(args.window, args.vocab, args.agreement, torch.Generator().manual_seed(args.seed))
    print(f"{'mixture_weight':>14} {'temperature':>11} {'accepted/step':>13} {'draft ms':>9} {'accept ms':>10}")
    for w in (0.0, 0.3, 0.7, 0.9, 1.0):
        for T in (0.0, 1.0):
            mean, draft_ms, accept_ms = time_ops(D, A, w, T, args.steps, seed=args.seed)
            print(f"{w:>14.2f} {T:>11.1f} {mean:>13.2f} {draft_ms:>9.2f} {accept_ms:>10.2f}")
    print("\nHigher mixture_weight trusts the dLLM: more tokens accepted per step, less verifier say.")


def _params(runner) -> int:
    return sum(p.numel() for p in runner.model.parameters())
