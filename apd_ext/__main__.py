"""Command line of apd_ext.

    python -m apd_ext demo                    # APD on a held-out problem with the bundled tiny pair
    python -m apd_ext demo --synthetic        # the fused ops on synthetic logits (no models)
    python -m apd_ext generate --prompt "Question: Tom has 5 coins. ... now?"   # streamed, in colour
    python -m apd_ext generate --dllm DREAM_DIR --verifier QWEN_DIR --vocab-size 151936 --prompt "..."
    python -m apd_ext eval-tiny --seed 0 --num-problems 100 --json out.json [--policies ar dllm_fixed:k=1 ...]
    python -m apd_ext sweep --num-problems 50 --out bench/results/sweep_tiny   # CSV + PNG

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


def _load_checkpoints(args):
    """(dllm runner, verifier runner, HFTokenizer) from --dllm / --verifier directories."""
    from apd_ext.models.runners import DllmRunner, VerifierRunner

    if not (args.dllm and args.verifier):
        raise SystemExit("--dllm and --verifier go together: pass both checkpoint directories")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    tok = _pair_tokenizer(args.dllm, args.verifier)
    dllm = DllmRunner.from_pretrained(args.dllm, device=device, dtype=dtype)
    verifier = VerifierRunner.from_pretrained(args.verifier, device=device, dtype=dtype)
    return dllm, verifier, tok


def _pair_tokenizer(dllm_dir, verifier_dir):
    """The tokenizer of the pair: the dLLM's tokenizer.json, or the verifier's when the dLLM ships
    only a slow tokenizer (Dream's DreamTokenizer); special tokens and chat template from the
    dLLM's tokenizer_config.json (the format it was tuned on). The verifier scores the dLLM's token
    ids, so every token of the verifier's tokenizer must have the same id in the dLLM's (the dLLM
    may add tokens, e.g. its mask token)."""
    from pathlib import Path

    from apd_ext.tokenizer import HFTokenizer

    d, v = Path(dllm_dir) / "tokenizer.json", Path(verifier_dir) / "tokenizer.json"
    if not d.exists() and not v.exists():
        raise SystemExit(f"neither {dllm_dir} nor {verifier_dir} has a tokenizer.json")
    tok = HFTokenizer.from_pretrained(dllm_dir, tokenizer_file=d if d.exists() else v)
    if d.exists() and v.exists():
        theirs = HFTokenizer.from_pretrained(verifier_dir).vocab()
        ours = tok.vocab()
        bad = sorted((i, t) for t, i in theirs.items() if ours.get(t) != i)
        if bad:
            shown = ", ".join(f"{t!r} (id {i})" for i, t in bad[:5])
            raise SystemExit(f"the dLLM's and the verifier's tokenizers differ on {len(bad)} tokens, e.g. {shown}: "
                             f"APD needs one tokenizer for both models")
    return tok


def _report(runs, base_time) -> None:
    """Table of (spec, GenerateOutput, answer or None) rows; base_time: dLLM k=1 seconds."""
    width = max(22, *(len(r[0]) for r in runs))
    print(f"{'policy':<{width}} {'tokens':>6} {'steps':>5} {'tok/step':>8} {'dLLM fwd':>8} {'verif fwd':>9} "
          f"{'time ms':>8} {'tok/s':>7} {'answer':>7}")
    for spec, o, ans in runs:
        s = o.stats
        print(f"{spec:<{width}} {int(o.num_generated[0]):>6} {s['steps']:>5} {s['tokens_per_step']:>8.2f} "
              f"{s['dllm_forwards']:>8} {s['verifier_forwards']:>9} {s['time_s']['total'] * 1e3:>8.1f} "
              f"{s['tokens_per_s']:>7.1f} {'-' if ans is None else str(ans):>7}")
    spec, o, _ = runs[0]
    t = o.stats["time_s"]["total"]
    if base_time is not None:
        print(f"\n{spec} took {t * 1e3:.1f} ms against {base_time * 1e3:.1f} ms for the dLLM one token per "
              f"step on the same prompt ({base_time / t:.2f}x).")


def _decode_and_compare(args, dllm, verifier, tok, ids, answer_of=None, extra=("dllm_fixed:k=1",),
                        warmup_tokens=None, **fixed) -> str:
    """Stream args.policy on `ids`, then run the `extra` policies on the same prompt and print the
    table; returns the streamed text. answer_of(text) -> the table's answer column (default "-").
    warmup_tokens: length of the untimed warm-up runs (default max_new_tokens)."""
    from apd_ext.tiny import evaluate as ev

    answer_of = answer_of or (lambda text: None)
    name, kw = ev.parse_policy(args.policy)
    sampling = {k: v for k, v in _knobs(args).items() if k in ("temperature", "top_k", "top_p")}
    fixed = {**fixed, **sampling}  # the comparison runs sample as the main one does
    kw = {**kw, **_knobs(args), **fixed}
    specs = [args.policy] + [s for s in extra if s != args.policy]
    if args.warmup:  # the first call of each policy allocates caches and builds kernels
        for spec in specs:
            n0, kw0 = ev.parse_policy(spec)
            apd_ext.generate(dllm, verifier, [ids], max_new_tokens=warmup_tokens or args.max_new_tokens,
                             policy=n0, seed=args.seed, **{**kw0, **fixed})
    streamer = _Streamer(tok, _use_colour(args))
    out = apd_ext.generate(dllm, verifier, [ids], max_new_tokens=args.max_new_tokens, policy=name,
                           seed=args.seed, stream=streamer, **kw)
    print()
    over = _knobs(args)
    label = args.policy + ("" if not over else (":" if ":" not in args.policy else ",") + ",".join(
        f"{k}={v}" for k, v in over.items()))
    runs = [(label, out, answer_of(streamer.text))]
    base = out.stats["time_s"]["total"] if args.policy == "dllm_fixed:k=1" else None
    for spec in specs[1:]:
        n2, kw2 = ev.parse_policy(spec)
        o = apd_ext.generate(dllm, verifier, [ids], max_new_tokens=args.max_new_tokens, policy=n2,
                             seed=args.seed, **{**kw2, **fixed})
        n = int(o.num_generated[0])
        runs.append((spec, o, answer_of(tok.decode(o.sequences[0, len(ids): len(ids) + n].tolist()))))
        if spec == "dllm_fixed:k=1":
            base = o.stats["time_s"]["total"]
    print()
    _report(runs, base)
    device = dllm.device
    where = f"{device}" + (f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else "")
    print(f"({where})")
    return streamer.text


def _knobs(args) -> dict:
    """The knob flags that were given (they override the --policy spec's values)."""
    out = {}
    for flag in ("mixture_weight", "kv_window", "max_lookahead", "temperature", "top_k", "top_p"):
        v = getattr(args, flag, None)
        if v is not None:
            out[flag] = None if v == "none" else v
    if getattr(args, "authors_compat", False):
        out["authors_compat"] = True
    return out


def _int_or_none(text: str):
    return "none" if text.lower() == "none" else int(text)


def cmd_generate(args) -> None:
    if args.dllm or args.verifier:
        dllm, verifier, tok = _load_checkpoints(args)
        if args.prompt is None:
            raise SystemExit("--prompt is needed with --dllm / --verifier")
        prompt = args.prompt
        if tok.chat_template is not None and not args.no_chat_template:
            prompt = tok.apply_chat_template(prompt, system=args.system)
        ids = tok.encode(prompt)
        sys.stdout.write(prompt)
        fixed = {"vocab_size": args.vocab_size} if args.vocab_size else {}
        # a short warm-up: with a large model the full-length one would double the run
        _decode_and_compare(args, dllm, verifier, tok, ids, extra=() if args.no_compare else ("dllm_fixed:k=1",),
                            warmup_tokens=min(8, args.max_new_tokens), **fixed)
        return

    from apd_ext.tiny import task

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
    sys.stdout.write(prompt)
    extra = () if args.no_compare else ("dllm_fixed:k=1", "ar")
    text = _decode_and_compare(args, pair.dllm, pair.verifier, pair.tok, pair.tok.encode(prompt),
                               answer_of=task.extract_answer, extra=extra)
    if problem is not None:
        got = task.extract_answer(text)
        print(f"expected {problem.answer}, got {got}: {'correct' if got == problem.answer else 'wrong'}")


def cmd_demo(args) -> None:
    if args.synthetic:
        synthetic_demo(args)
        return
    from apd_ext.tiny import task

    pair = _load(args)
    problem = task.eval_problems(args.seed, args.problem + 1)[args.problem]
    print(f"apd_ext demo: the bundled tiny dLLM ({_params(pair.dllm):,} parameters) drafts, the tiny causal "
          f"verifier ({_params(pair.verifier):,}) checks; policy {args.policy}, held-out problem "
          f"(eval seed {args.seed}, #{args.problem}). Each colour is one decoding step.\n")
    sys.stdout.write(problem.prompt)
    text = _decode_and_compare(args, pair.dllm, pair.verifier, pair.tok, pair.tok.encode(problem.prompt),
                               answer_of=task.extract_answer, extra=("dllm_fixed:k=1", "ar"))
    got = task.extract_answer(text)
    print(f"expected {problem.answer}, got {got}: {'correct' if got == problem.answer else 'wrong'}. "
          f"`python -m apd_ext eval-tiny` measures accuracy over many problems.")


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
            p.add_argument("--policy", default=policy, help="a policy spec, e.g. apd:w=0.7,kv_window=16, "
                           "dllm_fixed:k=1, diffusion:steps=16, ar")
            p.add_argument("--no-warmup", dest="warmup", action="store_false",
                           help="time the first calls too (they allocate caches)")
            k = p.add_argument_group("knobs (override the --policy spec)")
            k.add_argument("--mixture-weight", "-w", type=float, default=None, help="w in [0, 1]")
            k.add_argument("--kv-window", type=_int_or_none, default=None, help="R, or none (no dLLM cache)")
            k.add_argument("--max-lookahead", type=_int_or_none, default=None, help="M, or none")
            k.add_argument("--temperature", "-T", type=float, default=None, help="0: greedy (the default)")
            k.add_argument("--top-k", type=int, default=None)
            k.add_argument("--top-p", type=float, default=None)
            k.add_argument("--authors-compat", action="store_true", help="the authors' released semantics")

    p = sub.add_parser("demo", help="APD on a held-out problem with the bundled tiny pair")
    common(p, "apd:w=0.7")
    p.add_argument("--problem", type=int, default=0, help="index in the held-out set of --seed")
    p.add_argument("--synthetic", action="store_true", help="run the fused ops on synthetic logits instead")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--agreement", type=float, default=0.9, help="correlation of verifier with dLLM logits")

    p = sub.add_parser("generate", help="decode a prompt, streaming (bundled pair, or --dllm/--verifier)")
    common(p, "apd:w=0.7")
    p.add_argument("--prompt", default=None, help="the text to continue (bundled pair: a question; default: a "
                   "held-out problem)")
    p.add_argument("--problem", type=int, default=0)
    p.add_argument("--dllm", default=None, help="a Dream checkpoint directory (Hugging Face layout)")
    p.add_argument("--verifier", default=None, help="a Qwen2/Llama checkpoint directory sharing its tokenizer")
    p.add_argument("--device", default=None, help="with --dllm: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="with --dllm: default the checkpoints' own")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="the shared vocabulary when the models' differ (151936 for Dream + Qwen2.5)")
    p.add_argument("--system", default=None, help="a system message for the chat template")
    p.add_argument("--no-chat-template", action="store_true", help="feed --prompt as is")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the same prompt's one-token-per-step (and verifier-alone) runs")

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
    command = {"demo": cmd_demo, "generate": cmd_generate, "eval-tiny": cmd_eval_tiny, "sweep": cmd_sweep}[args.command]
    try:
        command(args)
    except ValueError as e:  # bad knobs, vocabulary, lengths, policy specs: one line, not a traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
