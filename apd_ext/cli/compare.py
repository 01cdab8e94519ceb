"""Streamed decoding for `demo` and `generate`: the main run printed as it is decoded (each step's
committed text in its own colour), then the same prompt under comparison policies, and a table of
tokens, steps, forwards and time."""

from __future__ import annotations

import sys

import torch

from apd_ext.decode.config import DecodeConfig
from apd_ext.decode.driver import generate
from apd_ext.loading import answer_tokens

COLOURS = ["\033[1;32m", "\033[1;34m", "\033[1;35m", "\033[1;36m", "\033[1;33m"]
RESET = "\033[0m"


class Streamer:
    """generate()'s stream callback: prints each step's newly committed text of row 0, colours
    alternating by step when `colour`; `text` is everything printed so far."""

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


def use_colour(args) -> bool:
    """--color forces colour, --no-color turns it off, else colour when stdout is a terminal."""
    return args.color or (not args.no_color and sys.stdout.isatty())


def label(cfg: DecodeConfig) -> str:
    """A config's spec for the table: the knobs that differ from the defaults, without
    max_new_tokens (the table shows the tokens); dllm_fixed always names its k."""
    spec = cfg.replace(max_new_tokens=DecodeConfig().max_new_tokens).to_spec()
    if cfg.policy == "dllm_fixed" and cfg.k == DecodeConfig().k:
        rest = spec.partition(":")[2]
        spec = f"dllm_fixed:k={cfg.k}" + (f",{rest}" if rest else "")
    return spec


def comparisons(cfg: DecodeConfig, names) -> list[DecodeConfig]:
    """The comparison runs: `cfg` under each policy of `names` ("dllm_fixed" runs with k = 1), the
    same knobs otherwise (cache, lookahead, sampling), so that each differs from it in one way."""
    out = []
    for name in names:
        other = cfg.replace(policy=name, k=1) if name == "dllm_fixed" else cfg.replace(policy=name)
        if other != cfg:
            out.append(other)
    return out


def decode_and_compare(args, cfg: DecodeConfig, pair, ids, compare=(), answer_of=None, warmup_tokens=None) -> str:
    """Decode the prompt `ids` with `cfg` on `pair` (an apd_ext.loading.Pair), streamed as it is
    committed (a policy that commits out of order, diffusion or threshold, streams nothing: its
    answer is printed once decoded), then run the `compare` policies (see comparisons) on it and
    print the table. Returns the answer text: the returned sequence's tokens up to the first EOS
    (loading.answer_tokens), decoded. answer_of(text) -> the answer column (default "-");
    warmup_tokens: length of the untimed warm-up runs (default cfg.max_new_tokens)."""
    answer_of = answer_of or (lambda text: None)
    others = comparisons(cfg, compare)
    extra = pair.generate_kwargs()
    if args.warmup:  # the first call of each policy allocates caches and builds kernels
        for c in [cfg] + others:
            generate(pair.dllm, pair.verifier, [ids], c.replace(max_new_tokens=warmup_tokens or c.max_new_tokens),
                       seed=args.seed, **extra)
    streamer = Streamer(pair.tokenizer, use_colour(args))
    out = generate(pair.dllm, pair.verifier, [ids], cfg, seed=args.seed, stream=streamer, **extra)
    text = answer_text(pair, out, len(ids))
    if not streamer.step:
        sys.stdout.write(text)
    print()
    runs = [(cfg, out, answer_of(text))]
    for c in others:
        o = generate(pair.dllm, pair.verifier, [ids], c, seed=args.seed, **extra)
        runs.append((c, o, answer_of(answer_text(pair, o, len(ids)))))
    print()
    report(runs)
    device = pair.dllm.device
    print(f"({device}" + (f", {torch.get_num_threads()} thread(s))" if device.type == "cpu" else ")"))
    return text


def answer_text(pair, out, prompt_len: int) -> str:
    """Row 0's answer in a GenerateOutput: its generated tokens up to the first EOS, decoded."""
    n = int(out.num_generated[0])
    return pair.tokenizer.decode(answer_tokens(out.sequences[0, prompt_len: prompt_len + n].tolist(),
                                               pair.eos_token_ids))


def report(runs) -> None:
    """Table of (DecodeConfig, GenerateOutput, answer or None) rows, the first one's time against
    the dLLM's at one token per step (a dllm_fixed k = 1 row, if any)."""
    labels = [label(c) for c, _, _ in runs]
    width = max(22, *(len(s) for s in labels))
    print(f"{'policy':<{width}} {'tokens':>6} {'steps':>5} {'tok/step':>8} {'dLLM fwd':>8} {'verif fwd':>9} "
          f"{'time ms':>8} {'tok/s':>7} {'answer':>7}")
    for spec, (_, o, ans) in zip(labels, runs):
        s = o.stats
        print(f"{spec:<{width}} {int(o.num_generated[0]):>6} {s['steps']:>5} {s['tokens_per_step']:>8.2f} "
              f"{s['dllm_forwards']:>8} {s['verifier_forwards']:>9} {s['time_s']['total'] * 1e3:>8.1f} "
              f"{s['tokens_per_s']:>7.1f} {'-' if ans is None else str(ans):>7}")
    base = next((o.stats["time_s"]["total"] for c, o, _ in runs if c.policy == "dllm_fixed" and c.k == 1), None)
    t = runs[0][1].stats["time_s"]["total"]
    if base is not None:
        print(f"\n{labels[0]} took {t * 1e3:.1f} ms against {base * 1e3:.1f} ms for the dLLM one token per "
              f"step with the same knobs ({base / t:.2f}x).")
