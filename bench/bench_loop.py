"""Decoding-loop benchmark: where one step of apd_ext.generate spends its time, APD against baselines.

    PYTHONPATH=. python bench/bench_loop.py [--device cpu|cuda] [--quick] [--csv PATH] [...]   (--help)

Models: random-weight transformers of Dream / Qwen2 shape built in memory (no checkpoint):
  dLLM      "Dream", hidden 256, 4 layers, 8 heads, 2 KV heads, intermediate 704, vocab 8192
  verifier  "qwen2", the same layer shape, 1 layer: its own parameters are a quarter of the dLLM's
            body; it shares the dLLM's token embedding and LM head (the same tensors)
Sharing the embedding and head, as Dream (initialised from Qwen2.5) and Qwen2.5 share a tokenizer
and close output spaces, correlates the two models' logits. The shared head is also scaled by
--logit-scale (default 8): default-initialised random models give logits of std ~0.6 over 8192
tokens, nearly uniform, and under APD's shared-noise acceptance (draft and target drawn with the same
Gumbel noise) two nearly uniform distributions pick the same token almost always, so APD accepted
6-18 tokens per step, far above what trained models give. Scaled by 8, the next-token distributions
are peaked (median max-softmax ~0.3, entropy ~2.8 nats; printed at start), the two models' argmaxes
agree ~40% of the time, and APD accepts ~1.6-1.7 tokens per step at w 0.7 and ~4-5 at w 0.9. A
step's cost does not depend on acceptance (static shapes); acceptance sets the number of steps.

Runs, per batch size (1 and 4; prompts of 32 random tokens, 128 new tokens, eos_token_id=[] so
every run has the same length, seed fixed): APD at mixture_weight 0.7 and 0.9 with kv_window 16,
max_lookahead 32, APD at w 0.9 with max_lookahead 8, "dllm_fixed" k=1 (the same window) and "ar"
(the verifier alone). Each configuration is run once as a warm-up, then --repeats rounds over all
configurations (interleaved, so that slow spells of a shared CPU hit them alike); the run of median
total time is reported (all repeats take the same steps), with the min-max ms/step and overhead %
of the repeats.

Per step, from generate's stats (time_s / steps): dllm_ms and verifier_ms (the runners' calls:
input/mask preparation + forward; the verifier's includes its one prompt prefill), sampling_ms
(ops.sample_draft + ops.mixture_accept), other_ms (the rest of the loop). host_overhead_pct =
100 * (step time - dLLM and verifier time) / step time, i.e. sampling + other; target < 10%.
On CUDA the phases are device times between events, other = wall time they do not cover.

Prints a Markdown table; appends one CSV row per configuration to bench/results/loop_<device>.csv.
--profile: also profiles one APD step loop (B=1, w 0.7) with cProfile and torch.profiler and prints
where the non-model time goes.

--golden-pair: instead, apd_ext side by side with the authors' released loop on the golden tiny pair
(bench/golden_pair.py; their code from --authors-repo, see bench/authors_loop.py):

    PYTHONPATH=. python bench/bench_loop.py --golden-pair --authors-repo DIR --authors-pythonpath TF454_DIR
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys

import torch

import common  # bench/common.py (the script's directory is on sys.path)
import golden_pair  # bench/golden_pair.py

try:
    import apd_ext
    from apd_ext.models.config import ModelConfig
    from apd_ext.models.runners import DllmRunner, VerifierRunner
    from apd_ext.models.transformer import Transformer
except ModuleNotFoundError as e:
    if e.name != "apd_ext":
        raise
    sys.exit("apd_ext is not importable: run from the repository root with PYTHONPATH=. "
             "after `python setup.py build_ext --inplace` (or pip install -e .)")

VOCAB, MASK_ID, PAD_ID = 8192, 8191, 8190
DLLM_SHAPE = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 2}
VERIFIER_LAYERS = 1
SEED, TARGET_OVERHEAD_PCT = 0, 10.0
# (policy, generate() knobs); kv_window / max_lookahead are ignored by "ar"
CONFIGS = (
    ("apd", {"mixture_weight": 0.7, "kv_window": 16, "max_lookahead": 32}),
    ("apd", {"mixture_weight": 0.9, "kv_window": 16, "max_lookahead": 32}),
    ("apd", {"mixture_weight": 0.9, "kv_window": 16, "max_lookahead": 8}),
    ("dllm_fixed", {"k": 1, "kv_window": 16, "max_lookahead": 32}),
    ("ar", {}),
)
CSV_FIELDS = ("policy", "knobs", "batch", "steps", "tokens", "tokens_per_step", "ms_per_step", "dllm_ms",
              "verifier_ms", "sampling_ms", "other_ms", "host_overhead_pct", "tokens_per_s", "device",
              "timestamp", "torch_version")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available (cpu with --golden-pair)")
    p.add_argument("--batches", default="1,4", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per configuration after one warm-up (default 7; --golden-pair: 20 rounds)")
    p.add_argument("--logit-scale", type=float, default=8.0,
                   help="factor on the shared LM head (see the module docstring; 1 = default init)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (CPU; default: all cores, 1 with --golden-pair)")
    p.add_argument("--csv", default=None, help="CSV to append to (default bench/results/loop_<device>.csv)")
    p.add_argument("--profile", action="store_true", help="also profile the APD loop (B=1, w 0.7)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: batch 1, 32 new tokens, APD w 0.7 / dllm_fixed / ar, 1 repeat, CSV to "
                        "bench/results/loop_<device>_quick.csv.tmp (git-ignored)")
    golden_pair.add_arguments(p)
    a = p.parse_args(argv)
    if a.device is None:
        a.device = "cuda" if torch.cuda.is_available() and not a.golden_pair else "cpu"
    if a.threads is None:
        a.threads = 1 if a.golden_pair else os.cpu_count()
    if a.repeats is None and not a.golden_pair:
        a.repeats = 7
    if a.repeats is not None and a.repeats < 1:
        p.error(f"--repeats must be >= 1, got {a.repeats}")
    if a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    a.batches = [int(b) for b in a.batches.split(",") if b.strip()]
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    a.configs = CONFIGS
    if a.quick:
        a.batches, a.max_new_tokens, a.repeats = [1], 32, 1
        a.configs = (CONFIGS[0], CONFIGS[3], CONFIGS[4])
    if a.csv is None:
        name = "loop_authors_cpu" if a.golden_pair else f"loop_{a.device}"
        a.csv = common.RESULTS / (f"{name}_quick.csv.tmp" if a.quick else f"{name}.csv")
    return a


def model_config(model_type: str, layers: int) -> ModelConfig:
    return ModelConfig(model_type=model_type, vocab_size=VOCAB, **{**DLLM_SHAPE, "num_hidden_layers": layers},
                       mask_token_id=MASK_ID, eos_token_id=[], pad_token_id=PAD_ID, max_position_embeddings=1024)


def build_models(device, logit_scale: float) -> tuple[DllmRunner, VerifierRunner]:
    """Seeded random dLLM and verifier; the verifier shares the dLLM's embedding and (scaled) head."""
    dcfg, vcfg = model_config("Dream", DLLM_SHAPE["num_hidden_layers"]), model_config("qwen2", VERIFIER_LAYERS)
    torch.manual_seed(SEED)
    dllm = Transformer(dcfg)
    torch.manual_seed(SEED + 1)
    verifier = Transformer(vcfg)
    with torch.no_grad():
        dllm.lm_head.weight.mul_(logit_scale)
    verifier.model.embed_tokens.weight = dllm.model.embed_tokens.weight
    verifier.lm_head.weight = dllm.lm_head.weight
    dllm, verifier = dllm.to(device).eval(), verifier.to(device).eval()
    return DllmRunner(dllm, dcfg, shifted=True), VerifierRunner(verifier, vcfg)


def count_params(model: torch.nn.Module, exclude=()) -> int:
    skip = {id(p) for p in exclude}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


@torch.no_grad()
def logit_summary(dllm: DllmRunner, verifier: VerifierRunner, prompts: torch.Tensor, window: int) -> str:
    """Median max-softmax and entropy of the dLLM's first-window logits and the verifier's next-token
    logits, and how often their argmaxes agree at the first position (what acceptance feeds on), over the
    rows of `prompts`."""
    B, P = prompts.shape
    L = P + window
    canvas = torch.full((B, L + 1), MASK_ID, dtype=torch.int64, device=prompts.device)
    canvas[:, :P] = prompts
    curr = torch.full((B,), P, dtype=torch.int64, device=prompts.device)
    dllm.setup(B, L)
    verifier.setup(B, L)
    D = dllm.window_logits(canvas, torch.zeros_like(curr), curr + window, curr, window, L)  # [B, M, V]
    A = verifier.prefill(canvas, curr, P)  # [B, V]

    def describe(x):
        p = torch.softmax(x.float(), -1)
        ent = -(p * torch.log_softmax(x.float(), -1)).sum(-1)
        return f"max-softmax p50 {p.amax(-1).median():.2f}, entropy p50 {ent.median():.2f} nats"

    agree = (D[:, 0].argmax(-1) == A.argmax(-1)).float().mean()
    return (f"dLLM window logits: {describe(D)}; verifier next-token: {describe(A)}; "
            f"argmax agreement at the first position {agree:.2f} over {B} prompts (uniform over {VOCAB} tokens: "
            f"entropy {torch.log(torch.tensor(float(VOCAB))):.2f} nats)")


def knobs_text(knobs: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in knobs.items()) if knobs else "-"


def generate_kw(policy: str, knobs: dict, max_new_tokens: int) -> dict:
    # sampled at T = 1, as the recorded figures were (the library default is greedy)
    return dict(policy=policy, max_new_tokens=max_new_tokens, temperature=1.0, seed=SEED, eos_token_id=[], **knobs)


def summarize_runs(policy: str, knobs: dict, batch: int, runs: list) -> dict:
    """One row from the repeats of a configuration: the per-step split of the run of median total time."""
    steps = {r.stats["steps"] for r in runs}
    if len(steps) != 1:
        raise RuntimeError(f"{policy} {knobs}: repeats took different numbers of steps {sorted(steps)}")
    totals = [r.stats["time_s"]["total"] for r in runs]
    pcts = [100.0 * (1 - (t.get("dllm", 0.0) + t.get("verifier", 0.0)) / t["total"])
            for t in (r.stats["time_s"] for r in runs)]
    out = runs[totals.index(statistics.median_low(totals))]
    s, t = out.stats, out.stats["time_s"]
    n = s["steps"]
    ms = {k: 1e3 * t.get(k, 0.0) / n for k in ("dllm", "verifier", "sampling", "other", "total")}
    tokens = int(out.num_generated.sum())
    return {
        "policy": policy, "knobs": knobs_text(knobs), "batch": batch, "steps": n, "tokens": tokens,
        "tokens_per_step": s["tokens_per_step"], "ms_per_step": ms["total"], "dllm_ms": ms["dllm"],
        "verifier_ms": ms["verifier"], "sampling_ms": ms["sampling"], "other_ms": ms["other"],
        "host_overhead_pct": 100.0 * (ms["total"] - ms["dllm"] - ms["verifier"]) / ms["total"],
        "tokens_per_s": tokens / t["total"],
        "spread_ms": f"{1e3 * min(totals) / n:.3g}-{1e3 * max(totals) / n:.3g}",
        "overhead_range": f"{min(pcts):.1f}-{max(pcts):.1f}",
    }


def run_batch(dllm, verifier, prompts, configs, max_new_tokens: int, repeats: int) -> list[dict]:
    """Every configuration once as a warm-up, then `repeats` rounds over all of them: interleaving
    spreads slow phases of a noisy (virtualised) CPU over all configurations alike."""
    kws = [generate_kw(policy, knobs, max_new_tokens) for policy, knobs in configs]
    for kw in kws:
        apd_ext.generate(dllm, verifier, prompts, **kw)  # warm-up: caches, lazy initialisation
    runs: list[list] = [[] for _ in configs]
    for _ in range(repeats):
        for i, kw in enumerate(kws):
            runs[i].append(apd_ext.generate(dllm, verifier, prompts, **kw))
    return [summarize_runs(policy, knobs, prompts.shape[0], r) for (policy, knobs), r in zip(configs, runs)]


def profile_loop(dllm, verifier, prompts, max_new_tokens, top: int = 25) -> None:
    """cProfile (Python functions, tottime) and torch.profiler (aten ops, self CPU time) of one APD run."""
    policy, knobs = CONFIGS[0]
    kw = generate_kw(policy, knobs, max_new_tokens)
    apd_ext.generate(dllm, verifier, prompts, **kw)
    prof = cProfile.Profile()
    prof.enable()
    out = apd_ext.generate(dllm, verifier, prompts, **kw)
    prof.disable()
    steps = out.stats["steps"]
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    print(f"\n### cProfile of one APD run ({knobs_text(knobs)}, B={prompts.shape[0]}, {steps} steps; "
          f"times include the profiler's own cost)\n")
    print(buf.getvalue())
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as tp:
        apd_ext.generate(dllm, verifier, prompts, **kw)
    print(f"\n### torch.profiler of one APD run ({steps} steps), by self CPU time\n")
    print(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def print_setup(dllm, verifier, args, desc: str) -> None:
    """The run's header: device, versions, model shapes and sizes, what is run."""
    shared = (dllm.model.model.embed_tokens.weight, dllm.model.lm_head.weight)
    print(f"device: {desc}")
    print(f"torch {torch.__version__}, apd_ext {apd_ext.__version__}, torch.get_num_threads() = "
          f"{torch.get_num_threads()}, load average (1 min) {os.getloadavg()[0]:.2f}")
    print(f"dLLM: Dream shape, vocab {VOCAB}, " + ", ".join(f"{k} {v}" for k, v in DLLM_SHAPE.items())
          + f"; {count_params(dllm.model) / 1e6:.2f} M parameters ({count_params(dllm.model, shared) / 1e6:.2f} M "
          f"without embedding and head)")
    print(f"verifier: Qwen2 shape, the same layers, {VERIFIER_LAYERS} layer(s); "
          f"{count_params(verifier.model, shared) / 1e6:.2f} M parameters of its own, embedding and LM head "
          f"shared with the dLLM (head scaled by {args.logit_scale:g})")
    print(f"runs: batches {args.batches}, prompt {args.prompt_len} tokens, {args.max_new_tokens} new tokens, "
          f"no EOS, seed {SEED}; 1 warm-up + {args.repeats} timed run(s) per configuration, the median run reported")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.golden_pair:
        return golden_pair.main(args)
    desc, stamp = common.device_description(device), common.timestamp()
    dllm, verifier = build_models(device, args.logit_scale)
    print_setup(dllm, verifier, args, desc)

    gen = torch.Generator().manual_seed(SEED)
    print(logit_summary(dllm, verifier, torch.randint(0, PAD_ID, (32, args.prompt_len), generator=gen).to(device), 32))
    rows = []
    for B in args.batches:
        prompts = torch.randint(0, PAD_ID, (B, args.prompt_len), generator=gen).to(device)
        for r in run_batch(dllm, verifier, prompts, args.configs, args.max_new_tokens, args.repeats):
            rows.append(r)
            print(f"  B={B} {r['policy']:<10} {r['knobs']:<50} {r['steps']:4d} steps  {r['ms_per_step']:7.2f} ms/step  "
                  f"overhead {r['host_overhead_pct']:5.1f}%  {r['tokens_per_s']:7.1f} tok/s", flush=True)

    f = common.fmt
    table = [dict(r, tokens_per_step=f(r["tokens_per_step"]), ms_per_step=f(r["ms_per_step"]),
                  dllm_ms=f(r["dllm_ms"]), verifier_ms=f(r["verifier_ms"]), sampling_ms=f(r["sampling_ms"]),
                  other_ms=f(r["other_ms"]), host_overhead_pct=f"{r['host_overhead_pct']:.1f}",
                  tokens_per_s=f(r["tokens_per_s"])) for r in rows]
    columns = [("policy", "policy"), ("knobs", "knobs"), ("batch", "B"), ("steps", "steps"),
               ("tokens_per_step", "tok/step"), ("ms_per_step", "ms/step"), ("spread_ms", "ms/step min-max"),
               ("dllm_ms", "dLLM ms"), ("verifier_ms", "verifier ms"), ("sampling_ms", "sampling ms"),
               ("other_ms", "other ms"), ("host_overhead_pct", "overhead %"), ("overhead_range", "min-max %"),
               ("tokens_per_s", "tok/s")]
    print(f"\n## {desc}; torch {torch.__version__}; apd_ext {apd_ext.__version__}; "
          f"{torch.get_num_threads()} threads; {stamp}\n")
    print(common.markdown_table(table, columns))
    print(f"\nhost overhead per step (sampling + other, % of the step; target < {TARGET_OVERHEAD_PCT:g}%):")
    for r in rows:
        ok = "met" if r["host_overhead_pct"] < TARGET_OVERHEAD_PCT else "NOT met"
        print(f"  B={r['batch']} {r['policy']:<10} {r['knobs']:<50} {r['host_overhead_pct']:5.1f}% "
              f"[repeats {r['overhead_range']}%] (sampling {100 * r['sampling_ms'] / r['ms_per_step']:4.1f}%, "
              f"other {100 * r['other_ms'] / r['ms_per_step']:4.1f}%)  {ok}")

    if args.profile:
        prompts = torch.randint(0, PAD_ID, (1, args.prompt_len), generator=gen).to(device)
        profile_loop(dllm, verifier, prompts, args.max_new_tokens)

    for r in rows:
        r.pop("spread_ms"), r.pop("overhead_range")
        r.update(device=desc, timestamp=stamp, torch_version=torch.__version__)
        for k, v in r.items():
            if isinstance(v, float):
                r[k] = f"{v:.6g}"
    path = common.append_csv(args.csv, rows, CSV_FIELDS)
    print(f"\n{len(rows)} rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
