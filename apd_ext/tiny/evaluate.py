"""Accuracy and speed of decoding policies on held-out problems with the bundled tiny pair.

    from apd_ext.tiny import evaluate as ev
    pair = ev.load_pair()                      # the bundled checkpoints
    res = ev.evaluate(pair, ev.task.eval_problems(0, 50), "apd", mixture_weight=0.7)

A policy is given as a spec string, `name[:key=value,...]`, e.g. "dllm_fixed:k=1",
"apd:w=0.7,kv_window=16,max_lookahead=64", "apd:w=0.7,T=1.0,compat=1" (the authors' released
semantics), "diffusion:steps=16", "ar". Every problem is decoded
alone (batch 1, as the paper measures), greedy unless a temperature is given.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from apd_ext.generate import generate
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.tiny import task
from apd_ext.tiny.tokenizer import TinyTokenizer
from apd_ext.tiny.train import MAX_NEW_TOKENS

ASSETS = Path(__file__).parent / "assets"
DEFAULT_POLICIES = ["dllm_fixed:k=1", "ar", "apd:w=0.7", "apd:w=0.9"]
_ALIASES = {"w": "mixture_weight", "steps": "diffusion_steps", "alg": "diffusion_alg", "T": "temperature",
            "compat": "authors_compat"}


@dataclass
class Pair:
    dllm: DllmRunner
    verifier: VerifierRunner
    tok: TinyTokenizer


def load_pair(path: str | Path = ASSETS, device: str = "cpu") -> Pair:
    path = Path(path)
    return Pair(DllmRunner.from_pretrained(path / "dllm", device=device),
                VerifierRunner.from_pretrained(path / "verifier", device=device),
                TinyTokenizer.from_file(path / "dllm" / "tokenizer.json"))


def parse_policy(spec: str) -> tuple[str, dict]:
    """"apd:w=0.7,kv_window=none" -> ("apd", {"mixture_weight": 0.7, "kv_window": None})."""
    name, _, rest = spec.partition(":")
    kw: dict = {"temperature": 0.0, "kv_window": None, "max_lookahead": None}
    for item in filter(None, rest.split(",")):
        key, _, val = item.partition("=")
        key = _ALIASES.get(key.strip(), key.strip())
        val = val.strip()
        if val.lower() == "none":
            kw[key] = None
        elif key == "authors_compat":
            if val.lower() not in ("1", "0", "true", "false"):
                raise ValueError(f"authors_compat takes 0/1/true/false, got {val!r}")
            kw[key] = val.lower() in ("1", "true")
        elif key == "diffusion_alg":
            kw[key] = val
        else:
            kw[key] = float(val) if "." in val or key in ("mixture_weight", "temperature") else int(val)
    return name, kw


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


def decode(pair: Pair, problem: task.Problem, policy: str, seed: int = 0, stream=None, **kw):
    """(answer text, answer token ids, stats). The answer ends at its first EOS (kept in the ids): in
    authors_compat mode generate() also returns the tokens accepted after it in the same block, which
    are neither part of the answer nor counted as generated here (stats["emitted_tokens"] counts them)."""
    ids = pair.tok.encode(problem.prompt)
    out = generate(pair.dllm, pair.verifier, [ids], max_new_tokens=kw.pop("max_new_tokens", MAX_NEW_TOKENS),
                   policy=policy, seed=seed, stream=stream, **kw)
    n = int(out.num_generated[0])
    gen = out.sequences[0, len(ids): len(ids) + n].tolist()
    stats = {**out.stats, "emitted_tokens": len(gen)}
    if pair.tok.eos_id in gen:
        gen = gen[: gen.index(pair.tok.eos_id) + 1]
    return pair.tok.decode(gen), gen, stats


def evaluate(pair: Pair, problems: list[task.Problem], spec: str, progress: bool = True, seed: int = 0) -> dict:
    """Accuracy and speed of one policy spec over `problems` (decoded one at a time). Token counts
    (generated_tokens, tokens per forward, tokens/s) count each answer up to its first EOS."""
    name, kw = parse_policy(spec)
    correct = tokens = emitted = dllm_f = ver_f = steps = 0
    wall = 0.0
    bar = ProgressBar(len(problems), f"{spec:>24}") if progress else None
    failures = []
    for i, p in enumerate(problems):
        t0 = time.perf_counter()
        text, gen, stats = decode(pair, p, name, seed=seed + i, **dict(kw))
        wall += time.perf_counter() - t0
        ok = task.extract_answer(text) == p.answer
        correct += ok
        if not ok and len(failures) < 5:
            failures.append({"seed": p.seed, "expected": p.answer, "got": text})
        tokens += len(gen)
        emitted += stats["emitted_tokens"]
        dllm_f += stats["dllm_forwards"]
        ver_f += stats["verifier_forwards"]
        steps += stats["steps"]
        if bar:
            bar.update(1, f"acc {correct / (i + 1):.2f}")
    if bar:
        bar.close()
    n = len(problems)
    return {
        "policy": spec, "name": name, "params": {k: v for k, v in kw.items()},
        "num_problems": n, "correct": correct, "accuracy": correct / max(1, n),
        "generated_tokens": tokens, "emitted_tokens": emitted, "dllm_forwards": dllm_f, "verifier_forwards": ver_f,
        "steps": steps,
        "tokens_per_dllm_forward": tokens / dllm_f if dllm_f else None,
        "tokens_per_step": tokens / steps if steps else None,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0, "wall_s": wall,
        "failures": failures,
    }


def evaluate_many(pair: Pair, problems: list[task.Problem], specs: list[str], progress: bool = True,
                  seed: int = 0) -> list[dict]:
    return [evaluate(pair, problems, s, progress=progress, seed=seed) for s in specs]


def format_table(results: list[dict]) -> str:
    head = f"{'policy':<34} {'acc':>6} {'tok/dLLM fwd':>12} {'tok/step':>8} {'tok/s':>8} {'wall s':>7}"
    rows = [head, "-" * len(head)]
    for r in results:
        tpf = f"{r['tokens_per_dllm_forward']:.2f}" if r["tokens_per_dllm_forward"] else "-"
        tps = f"{r['tokens_per_step']:.2f}" if r["tokens_per_step"] else "-"
        rows.append(f"{r['policy']:<34} {r['accuracy']:>6.3f} {tpf:>12} {tps:>8} {r['tokens_per_s']:>8.1f} "
                    f"{r['wall_s']:>7.2f}")
    return "\n".join(rows)
