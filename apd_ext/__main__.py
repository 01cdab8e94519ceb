"""Command line: `python -m apd_ext demo`.

The decoding loop and the bundled model pair are not built yet, so the demo runs the two fused
ops on synthetic dLLM / verifier logits (the verifier correlated with the dLLM, as a small AR model
agrees with a large dLLM on most tokens) and shows what APD's acceptance does with each knob.
"""

from __future__ import annotations

import argparse
import time

import torch

import apd_ext


def _synthetic_logits(K: int, V: int, agreement: float, gen: torch.Generator):
    base = torch.randn(1, K, V, generator=gen) * 2.5
    hot = torch.randint(0, V, (1, K, 4), generator=gen)
    base.scatter_add_(-1, hot, torch.full(hot.shape, 9.0))
    noise = torch.randn(1, K, V, generator=gen) * 2.5
    dllm = base
    verifier = agreement * base + (1 - agreement**2) ** 0.5 * noise
    return dllm.bfloat16(), verifier.bfloat16()


def demo(args) -> None:
    print("apd_ext demo: the fused ops on synthetic logits (the decoding loop is not built yet)")
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apd_ext", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the fused ops on synthetic logits")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--agreement", type=float, default=0.9, help="correlation of verifier with dLLM logits")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args)


if __name__ == "__main__":
    main()
