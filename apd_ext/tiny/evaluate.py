"""Accuracy and speed of decoding policies on held-out problems with the bundled tiny pair.

    from apd_ext.tiny import evaluate as ev, task
    pair = ev.load_pair()                      # the bundled checkpoints
    res = ev.evaluate(pair, task.eval_problems(0, 50), "apd:mixture_weight=0.9")
    block = ev.load_pair(block=True)           # the bundled block-diffusion dLLM with the same verifier
    res = ev.evaluate(block, task.eval_problems(0, 50), "fast_dllm_v2")

A policy is a DecodeConfig or its spec string (apd_ext.decode.config: `policy[:knob=value,...]`,
knob names are DecodeConfig's fields), e.g. "dllm_fixed:k=1", "apd:kv_window=none",
"apd:temperature=1,authors_compat=1" (the authors' released semantics), "diffusion:diffusion_steps=16",
"ar". Specs parse onto TASK_CONFIG: the library's defaults, answers of the task's length. Every
problem is decoded alone (batch 1, as the paper measures), greedy unless a temperature is given.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

from apd_ext import loading
from apd_ext.decode.config import DecodeConfig
from apd_ext.decode.driver import generate
from apd_ext.tiny import ASSETS, task
from apd_ext.tiny.train import MAX_NEW_TOKENS

__all__ = ["ASSETS", "TASK_CONFIG", "DEFAULT_POLICIES", "BLOCK_POLICIES", "Pair", "load_pair", "policy_config", "run_decode",
           "decode", "evaluate", "evaluate_many", "format_table", "ProgressBar"]

# The library's defaults with the answer region the pair was trained on (64 tokens; its models hold
# 256 positions, fewer than prompt + DecodeConfig's 256 new tokens).
TASK_CONFIG = DecodeConfig(max_new_tokens=MAX_NEW_TOKENS)

# The recorded figures (bench/results/eval_tiny_seed0_n50.json, BENCHMARKS.md) decode without the
# dLLM cache and with the whole answer region visible: those knobs are spelled out; "apd" is the
# library's default (kv_window 16, max_lookahead 100).
NO_CACHE = "kv_window=none,max_lookahead=none"
DEFAULT_POLICIES = [f"dllm_fixed:k=1,{NO_CACHE}", "ar", f"apd:mixture_weight=0.7,{NO_CACHE}",
                    f"apd:mixture_weight=0.9,{NO_CACHE}", "apd"]
# The block-diffusion dLLM's rows: one token per step, the verifier alone, APD, its own decoding
# (Fast-dLLM v2's, at its released threshold 0.9 and sub-blocks of 8) and confidence-threshold
# decoding; on a block model the window ends at the block's end and the cache is exact (no knobs).
BLOCK_POLICIES = ["dllm_fixed:k=1", "ar", "apd:mixture_weight=0.7", "apd:mixture_weight=0.9", "fast_dllm_v2",
                  "threshold:threshold=0.9"]


class Pair(loading.Pair):
    """loading.Pair of a tiny pair, with the tokenizer also as `tok` (the name the evaluation's
    callers use)."""

    @property
    def tok(self):
        return self.tokenizer


def load_pair(path: str | Path = ASSETS, device: str | torch.device = "cpu", tp=None, replicate=None,
              block: bool = False) -> Pair:
    """The pair in `path` (dllm/ and verifier/ checkpoint directories; default: the bundled one),
    loaded by apd_ext.loading.load_pair. tp: a TensorParallel group to shard both over (replicate:
    the verifier's mode, None = auto). block: the block-diffusion dLLM of `path` (block_dllm/) in
    place of dllm/, with the same verifier."""
    path = Path(path)
    if block:
        dirs = (path / "block_dllm", path / "verifier")
    else:
        dirs = (None, None) if path.resolve() == ASSETS.resolve() else (path / "dllm", path / "verifier")
    pair = loading.load_pair(*dirs, device=device, tp=tp, replicate=replicate)
    return Pair(**{f.name: getattr(pair, f.name) for f in dataclasses.fields(pair)})


def policy_config(policy: str | DecodeConfig, base: DecodeConfig = TASK_CONFIG) -> DecodeConfig:
    """A spec parsed onto `base` (knobs it leaves out keep base's values); a DecodeConfig as is.
    Raises ValueError naming the knob for a bad spec."""
    return policy if isinstance(policy, DecodeConfig) else DecodeConfig.from_spec(policy, base=base)


def run_decode(dllm, verifier, input_ids, config: DecodeConfig, *, seed, stream=None, **extra):
    """apd_ext.generate with `config` (the one place the tiny task and the command line call the
    loop); `extra`: generate's other keywords (vocab_size, eos_token_id, ...)."""
    return generate(dllm, verifier, input_ids, config, seed=seed, stream=stream, **extra)


class ProgressBar:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str = "", stream=None, width: int = 30):
        self.total, self.label, self.width = total, label, width
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.perf_counter()
        self.n = 0

    def update(self, n: int = 1, info: str = "") -> None:
        self.n += n
        frac = self.n / max(1, self.total)
        fill = int(frac * self.width)
        el = time.perf_counter() - self.t0
        eta = el / max(frac, 1e-9) - el if self.n else 0.0
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {self.n}/{self.total} "
                          f"{el:5.1f}s eta {eta:5.1f}s {info}   ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def decode(pair: loading.Pair, problem: task.Problem, policy: str | DecodeConfig, seed: int = 0, stream=None):
    """(answer text, answer token ids, stats) of one problem. The answer ends at its first EOS (kept
    in the ids): in authors_compat mode generate() also returns the tokens accepted after it in the
    same block, which are neither part of the answer nor counted as generated here
    (stats["emitted_tokens"] counts them)."""
    ids = pair.tokenizer.encode(problem.prompt)
    out = run_decode(pair.dllm, pair.verifier, [ids], policy_config(policy), seed=seed, stream=stream,
                     **pair.generate_kwargs())
    n = int(out.num_generated[0])
    emitted = out.sequences[0, len(ids): len(ids) + n].tolist()
    gen = loading.answer_tokens(emitted, pair.eos_token_ids)
    return pair.tokenizer.decode(gen), gen, {**out.stats, "emitted_tokens": len(emitted)}


def evaluate(pair: loading.Pair, problems: list[task.Problem], policy: str | DecodeConfig, progress: bool = True,
             seed: int = 0) -> dict:
    """Accuracy and speed of one policy over `problems` (problem i decoded alone with seed + i).
    Token counts (generated_tokens, tokens per forward, tokens/s) count each answer up to its first
    EOS. "policy" is the spec as given (a DecodeConfig's own spec), "params" the knobs it reads."""
    cfg = policy_config(policy)
    label = policy if isinstance(policy, str) else cfg.to_spec()
    totals = dict.fromkeys(("correct", "tokens", "emitted", "dllm_forwards", "verifier_forwards", "steps"), 0)
    wall, failures = 0.0, []
    bar = ProgressBar(len(problems), f"{label:>24}") if progress else None
    try:
        for i, p in enumerate(problems):
            t0 = time.perf_counter()
            text, gen, stats = decode(pair, p, cfg, seed=seed + i)
            wall += time.perf_counter() - t0
            ok = task.extract_answer(text) == p.answer
            if not ok and len(failures) < 5:
                failures.append({"seed": p.seed, "expected": p.answer, "got": text})
            for key, value in (("correct", ok), ("tokens", len(gen)), ("emitted", stats["emitted_tokens"]),
                               ("dllm_forwards", stats["dllm_forwards"]),
                               ("verifier_forwards", stats["verifier_forwards"]), ("steps", stats["steps"])):
                totals[key] += int(value)
            if bar:
                bar.update(1, f"acc {totals['correct'] / (i + 1):.2f}")
    finally:  # the bar's line ends even when interrupted, so that what follows starts a line
        if bar:
            bar.close()
    return _summary(label, cfg, len(problems), totals, wall, failures)


def _summary(label: str, cfg: DecodeConfig, n: int, t: dict, wall: float, failures: list) -> dict:
    tokens, dllm_f, steps = t["tokens"], t["dllm_forwards"], t["steps"]
    return {
        "policy": label, "name": cfg.policy, "params": {k: getattr(cfg, k) for k in cfg.knobs},
        "num_problems": n, "correct": t["correct"], "accuracy": t["correct"] / max(1, n),
        "generated_tokens": tokens, "emitted_tokens": t["emitted"], "dllm_forwards": dllm_f,
        "verifier_forwards": t["verifier_forwards"], "steps": steps,
        "tokens_per_dllm_forward": tokens / dllm_f if dllm_f else None,
        "tokens_per_step": tokens / steps if steps else None,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0, "wall_s": wall,
        "failures": failures,
    }


def evaluate_many(pair: loading.Pair, problems: list[task.Problem], policies: list, progress: bool = True,
                  seed: int = 0) -> list[dict]:
    return [evaluate(pair, problems, s, progress=progress, seed=seed) for s in policies]


def format_table(results: list[dict]) -> str:
    """One row per result of evaluate(): accuracy, tokens per dLLM forward and per step, tokens/s."""
    width = max([34] + [len(r["policy"]) for r in results])
    head = f"{'policy':<{width}} {'acc':>6} {'tok/dLLM fwd':>12} {'tok/step':>8} {'tok/s':>8} {'wall s':>7}"
    rows = [head, "-" * len(head)]
    for r in results:
        tpf = f"{r['tokens_per_dllm_forward']:.2f}" if r["tokens_per_dllm_forward"] else "-"
        tps = f"{r['tokens_per_step']:.2f}" if r["tokens_per_step"] else "-"
        rows.append(f"{r['policy']:<{width}} {r['accuracy']:>6.3f} {tpf:>12} {tps:>8} {r['tokens_per_s']:>8.1f} "
                    f"{r['wall_s']:>7.2f}")
    return "\n".join(rows)
