"""Speed/quality study of the bundled tiny pair: accuracy against tokens per dLLM forward.

    python -m apd_ext sweep [--num-problems 50] [--seed 0] [--out bench/results/sweep_tiny] [--quick]
    PYTHONPATH=. python bench/sweep.py ...          (the same)

Configurations (greedy decoding, every held-out problem decoded alone, max_new_tokens 64):
  apd          mixture_weight in {0, 0.1, ..., 1} (kv_window none, max_lookahead 64)
  apd grid     kv_window in {none, 4, 16} x max_lookahead in {4, 8, 16, 64} at mixture_weight 0.7
  dllm_fixed   k in {1, 2, 4, 8}
  diffusion    steps in {8, 16, 32, 64} (confidence order)
  ar           the verifier alone
  apd_sampled  mixture_weight in {0.3, 0.5, 0.7, 0.9} at temperature --temperature (default 0.5), the
               paper's semantics (target sampled with the draft's noise)
  apd_compat   the same in authors_compat mode (the released code: drafts at T^2 with top_k 50, the
               target is the mixture's mode); greedy decoding cannot tell the two apart (at T = 0 both
               targets are the mixture's argmax), so they are compared sampled, with the same seeds
Writes OUT.csv (one row per configuration) and OUT.png (accuracy against tokens per model forward
(dLLM forwards, or verifier forwards for ar) and against tokens/s); `--replot` redraws OUT.png from
OUT.csv. Tokens count each answer up to its first EOS. CPU timings are of one thread unless
--threads says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from apd_ext.tiny import evaluate as ev
from apd_ext.tiny import task


def configurations(quick: bool = False, temperature: float = 0.5) -> list[str]:
    """The default grid's policy specs."""
    ws = [0.0, 0.5, 0.7, 0.9, 1.0] if quick else [round(0.1 * i, 1) for i in range(11)]
    out = [f"apd:w={w}" for w in ws]
    kvs = ["none", "16"] if quick else ["none", "4", "16"]
    las = [8, 64] if quick else [4, 8, 16, 64]
    out += [f"apd:w=0.7,kv_window={kv},max_lookahead={la}" for kv in kvs for la in las
            if not (kv == "none" and la == 64)]  # that one is apd:w=0.7 above
    out += [f"dllm_fixed:k={k}" for k in (1, 2, 4, 8)]
    out += [f"diffusion:steps={s}" for s in ((16, 64) if quick else (8, 16, 32, 64))]
    out += ["ar"]
    sampled = (0.5, 0.9) if quick else (0.3, 0.5, 0.7, 0.9)
    out += [f"apd:w={w},T={temperature}" for w in sampled]
    out += [f"apd:w={w},T={temperature},compat=1" for w in sampled]
    return out


def family_of(spec: str) -> str:
    """The plot family of a policy spec: apd (greedy, default window), apd_grid (greedy, kv_window /
    max_lookahead set), "apd_sampled T=..." (paper semantics), "apd_compat T=..." (authors_compat),
    or the policy's name."""
    name, kw = ev.parse_policy(spec)
    if name != "apd":
        return name
    T = kw.get("temperature")
    if kw.get("authors_compat"):
        return f"apd_compat T={T}"
    if T:
        return f"apd_sampled T={T}"
    return "apd_grid" if kw.get("kv_window") is not None or kw.get("max_lookahead") is not None else "apd"


FIELDS = ["family", "policy", "accuracy", "correct", "num_problems", "tokens_per_dllm_forward",
          "tokens_per_model_forward", "tokens_per_step", "tokens_per_s", "wall_s", "dllm_forwards",
          "verifier_forwards", "generated_tokens", "emitted_tokens"]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    markers = {"apd": "o", "apd_grid": "s", "dllm_fixed": "^", "diffusion": "v", "ar": "*", "apd_sampled": "P",
               "apd_compat": "X"}
    lines = ("apd", "dllm_fixed", "diffusion", "apd_sampled", "apd_compat")
    from matplotlib.ticker import FuncFormatter, LogLocator

    for ax, key, xlabel in ((axes[0], "tokens_per_model_forward", "generated tokens per model forward "
                             "(dLLM; verifier for ar)"), (axes[1], "tokens_per_s", "tokens/s (CPU, batch 1)")):
        xs = [r[key] for r in rows if r[key] > 0]
        narrow = max(xs) < 4 * min(xs)  # under two octaves: label the minor ticks too
        for fam in dict.fromkeys(r["family"] for r in rows):  # in order of appearance
            base = max((k for k in markers if fam.startswith(k)), key=len)
            pts = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["tokens_per_model_forward"])
            ax.plot([r[key] for r in pts], [r["accuracy"] for r in pts], markers[base] + ("-" if base in lines else ""),
                    label=fam, markersize=9 if fam == "ar" else 6, alpha=0.85)
            for r in pts:
                label = (r["policy"].split(":", 1)[-1].replace("kv_window=", "kv").replace("max_lookahead=", "M")
                         .replace(",compat=1", "").split(",T=")[0])
                ax.annotate(label, (r[key], r["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_locator(LogLocator(base=2, subs=(1.25, 1.5, 1.75)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _, narrow=narrow: f"{x:.3g}" if narrow else ""))
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (final answer)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"tiny dLLM + verifier, {rows[0]['num_problems']} held-out problems "
                 f"(greedy unless the family is sampled)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m apd_ext sweep", description=__doc__.splitlines()[0])
    p.add_argument("--num-problems", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/sweep_tiny")
    p.add_argument("--assets", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--policies", nargs="+", default=None, help="specs instead of the default grid")
    p.add_argument("--temperature", type=float, default=0.5, help="of the apd_sampled / apd_compat families")
    p.add_argument("--replot", action="store_true", help="only redraw OUT.png from OUT.csv")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.replot:
        with open(out.with_suffix(".csv")) as f:
            rows = [{**r, "family": family_of(r["policy"]), "num_problems": int(r["num_problems"]),
                     **{k: float(r[k]) for k in ("accuracy", "tokens_per_model_forward", "tokens_per_s")}}
                    for r in csv.DictReader(f)]
        plot(rows, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}", file=sys.stderr)
        return
    torch.set_num_threads(args.threads)
    pair = ev.load_pair(args.assets) if args.assets else ev.load_pair()
    problems = task.eval_problems(args.seed, args.num_problems)
    specs = configurations(args.quick, args.temperature) if args.policies is None else args.policies
    confs = [(family_of(s), s) for s in specs]
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for fam, spec in confs:
        r = ev.evaluate(pair, problems, spec, seed=args.seed)
        r["family"] = fam
        r["tokens_per_model_forward"] = r["tokens_per_dllm_forward"] or (
            r["generated_tokens"] / max(1, r["verifier_forwards"]))
        rows.append(r)
        with open(out.with_suffix(".csv"), "w", newline="") as f:  # rewritten after each configuration
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    print(ev.format_table(rows))
    try:
        plot(rows, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}", file=sys.stderr)
    except ImportError:
        print(f"wrote {out.with_suffix('.csv')} (no matplotlib: no plot)", file=sys.stderr)


if __name__ == "__main__":
    main()
