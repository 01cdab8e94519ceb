"""Command line of apd_ext.

    python -m apd_ext demo                    # APD on a held-out problem with the bundled tiny pair
    python -m apd_ext demo --synthetic        # the fused ops on synthetic logits (no models)
    python -m apd_ext generate --prompt "Question: Tom has 5 coins. ... now?"   # streamed, in colour
    python -m apd_ext eval-tiny --seed 0 --num-problems 100 --json out.json [--policies ar dllm_fixed:k=1 ...]
    python -m apd_ext sweep --num-problems 40 --out bench/results/sweep      # CSV + PNG

Policy specs are `name[:key=value,...]` (apd_ext/tiny/evaluate.py): "apd:w=0.7,kv_window=16",
"dllm_fixed:k=4", "diffusion:steps=16", "ar". Decoding is greedy unless `T=` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import apd_ext

COLOURS = ["\033[1;32m", "\033[1;34m", "\033[1;35m", "\033[1;36m", "\033[1;33m"]
RESET = "\033[0m"


def _synthetic_logits(K: int, V: int, agreement: float, gen: torch.Generator):
    base = torch.randn(1, K, V, generator=gen) * 2.5
    hot = torch.randint(0, V, (1, K, 4), generator=gen)
    base.scatter_add_(-1, hot, torch.full(hot.shape, 9.0))
    noise = torch.randn(1, K, V, generator=gen) * 2.5
    dllm = base
    verifier = agreement * base + (1 - agreement**2) ** 0.5 * noise
    return dllm.bfloat16(), verifier.bfloat16()


def synthetic_demo(args) -> None:
    print("apd_ext demo --synthetic: the fused ops on synthetic logits")
    print(f"backends on cpu: {', '.join(apd_ext.available_backends('cpu'))}; "
          f"window K={args.window}, vocab V={args.vocab}, bf16, {torch.get_num_threads()} threads\n")
    gen = torch.Generator().manual_seed(args.seed)
    D, A = _synthetic_logits(args.window, args.vocab, args.agreement, gen)
    print(f"{'mixture_weight':>14} {'temperature':>11} {'accepted/step':>13} {'draft ms':>9} {'accept ms':>10}")
    for w in (0.0, 0.3, 0.7, 0.9, 1.0):
        for T in (0.0, 1.0):
            counts, t_draft, t_accept = [], 0.0, 0.0
            for step in range(args.steps):
                t0 = time.perf_counter()
                tokens, _ = apd_ext.sample_draft(D, temperature=T, seed=args.seed, offset=step)
                t1 = time.perf_counter()
                n, *_ = apd_ext.mixture_accept(D, A, tokens, mixture_weight=w, temperature=T,
                                               seed=args.seed, offset=step)
                t2 = time.perf_counter()
                counts.append(int(n[0]))
                t_draft += t1 - t0
                t_accept += t2 - t1
            mean = sum(counts) / len(counts)
            print(f"{w:>14.2f} {T:>11.1f} {mean:>13.2f} {t_draft / args.steps * 1e3:>9.2f} "
                  f"{t_accept / args.steps * 1e3:>10.2f}")
    print("\nHigher mixture_weight trusts the dLLM: more tokens accepted per step, less verifier say.")


class _Streamer:
    """Prints each step's newly committed text, colours alternating by step."""

    def __init__(self, tok, colour: bool, out=None):
        self.tok, self.colour = tok, colour
        self.out = out if out is not None else sys.stdout
        self.ids: list[int] = []
        self.text = ""
        self.step = 0

    def __call__(self, rows) -> None:
        self.ids += rows[0]
        text = self.tok.decode(self.ids)
        new, self.text = text[len(self.text):], text
        if self.colour:
            c = COLOURS[self.step % len(COLOURS)]
            new = "\n".join(c + part + RESET if part else part for part in new.split("\n"))
        self.out.write(new)
        self.out.flush()
        self.step += 1


def _use_colour(args) -> bool:
    return not args.no_color and sys.stdout.isatty() or args.color


def _load(args):
    from apd_ext.tiny import evaluate as ev

    return ev.load_pair(args.assets) if args.assets else ev.load_pair()


def cmd_generate(args) -> None:
    from apd_ext.tiny import evaluate as ev, task

    pair = _load(args)
    if args.prompt is None:
        problem = task.eval_problems(args.seed, args.problem + 1)[args.problem]
        prompt = problem.prompt
    else:
        problem = None
        prompt = args.prompt
        if not prompt.startswith(task.PROMPT_PREFIX):
            prompt = task.PROMPT_PREFIX + prompt
        if task.ANSWER_MARK.strip() not in prompt:
            prompt = prompt.rstrip() + task.ANSWER_MARK
        elif not prompt.endswith("\n"):
            prompt += "\n"
    name, kw = ev.parse_policy(args.policy)
    sys.stdout.write(prompt)
    streamer = _Streamer(pair.tok, _use_colour(args))
    ids = pair.tok.encode(prompt)
    out = apd_ext.generate(pair.dllm, pair.verifier, [ids], max_new_tokens=args.max_new_tokens, policy=name,
                           seed=args.seed, stream=streamer, **kw)
    s = out.stats
    print(f"\n\n[{args.policy}] {int(out.num_generated[0])} tokens, {s['steps']} steps "
          f"({s['tokens_per_step']:.2f} tokens/step), dLLM forwards {s['dllm_forwards']}, "
          f"verifier forwards {s['verifier_forwards']}, {s['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    if problem is not None:
        got = task.extract_answer(streamer.text)
        print(f"expected {problem.answer}, got {got}: {'correct' if got == problem.answer else 'wrong'}",
              file=sys.stderr)


def cmd_demo(args) -> None:
    if args.synthetic:
        synthetic_demo(args)
        return
    from apd_ext.tiny import evaluate as ev, task

    pair = _load(args)
    problem = task.eval_problems(args.seed, args.problem + 1)[args.problem]
    colour = _use_colour(args)
    name, kw = ev.parse_policy(args.policy)
    print(f"apd_ext demo: the bundled tiny dLLM ({_params(pair.dllm):,} parameters) drafts, the tiny causal "
          f"verifier ({_params(pair.verifier):,}) checks; policy {args.policy}, held-out problem "
          f"(eval seed {args.seed}, #{args.problem}). Each colour is one decoding step.\n")
    ids = pair.tok.encode(problem.prompt)
    for spec in (args.policy, "dllm_fixed:k=1", "ar"):  # warm-up: first calls allocate caches
        n0, kw0 = ev.parse_policy(spec)
        apd_ext.generate(pair.dllm, pair.verifier, [ids], max_new_tokens=args.max_new_tokens, policy=n0,
                         seed=args.seed, **kw0)
    sys.stdout.write(problem.prompt)
    streamer = _Streamer(pair.tok, colour)
    runs = []
    out = apd_ext.generate(pair.dllm, pair.verifier, [ids], max_new_tokens=args.max_new_tokens, policy=name,
                           seed=args.seed, stream=streamer, **kw)
    got = task.extract_answer(streamer.text)
    print(f"\n\nexpected {problem.answer}, got {got}: {'correct' if got == problem.answer else 'wrong'}\n")
    runs.append((args.policy, out, got))
    for spec in ("dllm_fixed:k=1", "ar"):
        n2, kw2 = ev.parse_policy(spec)
        o = apd_ext.generate(pair.dllm, pair.verifier, [ids], max_new_tokens=args.max_new_tokens, policy=n2,
                             seed=args.seed, **kw2)
        n = int(o.num_generated[0])
        runs.append((spec, o, task.extract_answer(pair.tok.decode(o.sequences[0, len(ids): len(ids) + n].tolist()))))
    print(f"{'policy':<22} {'tokens':>6} {'steps':>5} {'tok/step':>8} {'dLLM fwd':>8} {'verif fwd':>9} "
          f"{'time ms':>8} {'tok/s':>7} {'answer':>7}")
    base = runs[1][1].stats["time_s"]["total"]
    for spec, o, ans in runs:
        s = o.stats
        print(f"{spec:<22} {int(o.num_generated[0]):>6} {s['steps']:>5} {s['tokens_per_step']:>8.2f} "
              f"{s['dllm_forwards']:>8} {s['verifier_forwards']:>9} {s['time_s']['total'] * 1e3:>8.1f} "
              f"{s['tokens_per_s']:>7.1f} {str(ans):>7}")
    t = runs[0][1].stats["time_s"]["total"]
    print(f"\n{args.policy} took {t * 1e3:.1f} ms against {base * 1e3:.1f} ms for the dLLM one token per step "
          f"({base / t:.2f}x); CPU, {torch.get_num_threads()} thread(s). `python -m apd_ext eval-tiny` measures "
          f"accuracy over many problems.")


def _params(runner) -> int:
    return sum(p.numel() for p in runner.model.parameters())


def cmd_eval_tiny(args) -> None:
    from apd_ext.tiny import evaluate as ev, task

    pair = _load(args)
    problems = task.eval_problems(args.seed, args.num_problems)
    results = ev.evaluate_many(pair, problems, args.policies, progress=not args.quiet, seed=args.seed)
    print(ev.format_table(results))
    if args.json:
        doc = {"seed": args.seed, "num_problems": args.num_problems, "threads": torch.get_num_threads(),
               "device": "cpu", "results": results}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)


def cmd_sweep(args) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "sweep.py"
    if not path.exists():
        raise SystemExit("bench/sweep.py is not here (the sweep runs from a source checkout)")
    spec = importlib.util.spec_from_file_location("apd_sweep", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(args.rest)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apd_ext", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, policy=None):
        p.add_argument("--assets", default=None, help="directory with dllm/ and verifier/ (default: bundled)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--max-new-tokens", type=int, default=64)
        p.add_argument("--no-color", action="store_true")
        p.add_argument("--color", action="store_true", help="colour even when stdout is not a terminal")
        if policy:
            p.add_argument("--policy", default=policy)

    p = sub.add_parser("demo", help="APD on a held-out problem with the bundled tiny pair")
    common(p, "apd:w=0.7")
    p.add_argument("--problem", type=int, default=0, help="index in the held-out set of --seed")
    p.add_argument("--synthetic", action="store_true", help="run the fused ops on synthetic logits instead")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--agreement", type=float, default=0.9, help="correlation of verifier with dLLM logits")

    p = sub.add_parser("generate", help="decode a prompt with the bundled pair, streaming")
    common(p, "apd:w=0.7")
    p.add_argument("--prompt", default=None, help="a question (default: a held-out problem)")
    p.add_argument("--problem", type=int, default=0)

    from apd_ext.tiny.evaluate import DEFAULT_POLICIES

    p = sub.add_parser("eval-tiny", help="accuracy and speed of policies on held-out problems")
    p.add_argument("--assets", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-problems", type=int, default=50)
    p.add_argument("--json", default=None)
    p.add_argument("--policies", nargs="+", default=DEFAULT_POLICIES)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("sweep", help="bench/sweep.py: accuracy vs tokens per forward (CSV + PNG); "
                   "its options: python -m apd_ext sweep --help", add_help=False)

    args, rest = parser.parse_known_args(argv)
    if args.command != "sweep" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    if args.threads:
        torch.set_num_threads(args.threads)
    {"demo": cmd_demo, "generate": cmd_generate, "eval-tiny": cmd_eval_tiny, "sweep": cmd_sweep}[args.command](args)


if __name__ == "__main__":
    main()
