"""End-to-end decoding benchmark at model scale: one APD step, eager against CUDA graphs, against
the dLLM's window forward alone and its weight-bandwidth floor, which attention kernel runs and its
share of the step, and plain autoregressive decoding.

    PYTHONPATH=. python bench/bench_e2e.py [--device cuda] [--quick] [--out DIR] [--json PATH] [--csv PATH]

Models: randomly initialised (no checkpoint), bf16 on CUDA (fp32 on CPU), of the real shapes:
  dLLM      Dream-7B:      hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate 18944, vocab 152064
  verifier  Qwen2.5-0.5B:  hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936
--quick swaps in two tiny models of the same families (a smoke run that also works on CPU).

For each batch size (1, 8) and (kv_window R, max_lookahead M) in ((16, 100), (32, 200)):
  dllm_forward_ms   the dLLM's steady-state window forward alone (R + 2M - 1 input positions), eager
  step_graph_ms     one APD step of apd_ext.generate (window forward, sample_draft, verifier on the
                    draft, mixture_accept, commit) with cuda_graphs=True: (total time) / steps of a
                    call that replays the graph captured by a warm-up call (capture not timed;
                    graph_reused says the cache did hit). CUDA only.
  step_eager_ms     the same with cuda_graphs=False (after the warm-up, so kernels are warm)
  peak_*_gb         torch.cuda.max_memory_allocated over each timed call (weights, caches, state,
                    eager activations); reserved_graph_gb: torch.cuda.memory_reserved after the
                    graph call (also the graph's private pool, which allocated counts miss)
  attention_*       a few eager steady steps under torch.profiler: which SDPA backend op ran
                    (aten::_scaled_dot_product_{efficient_attention, cudnn_attention, flash_attention,
                    attention_math, ...}), its costliest kernel, its time per step (device time on
                    CUDA, CPU time on CPU) and its share of the step (graph step time when measured,
                    else eager); attention_choice: torch._fused_sdp_choice for each model's call.
Each generate call decodes --new-tokens tokens per row with no EOS (at least max M, so that M is the
real window); the first step (the whole prompt) and the verifier's prefill are included in the
total, amortised over the steps. Also: plain autoregressive decoding of the Dream-7B-shaped model
with the same runner (its weights read as a causal LM, one token per forward), ms per token; the
device copy bandwidth; achieved weight bandwidth = weight bytes read per step / step time; projected
tokens/s at the paper's 9.3 tokens per dLLM forward (GSM8K, mixture weight 0.7): 9.3 B / step time.
Targets (H100): step_graph at (16, 100), B = 1, within 1.3x of dllm_forward; dllm_forward within 1.3x
of its floor.

The attention profile is made by bench/e2e_attention.py.

--tp N (under torchrun, one process per GPU): the dLLM sharded over N ranks (heads, MLP, vocabulary;
Dream-7B's 28 heads allow N = 2 or 4), the verifier's body replicated (its head sliced), the
sampling vocabulary-parallel (apd_ext.parallel). Weight bytes, the floor and achieved GB/s are per
rank; rank 0 prints and writes; the rows carry tp = N. Run the same command at --tp 1 for the
baseline:

    torchrun --nproc-per-node 2 bench/bench_e2e.py --tp 2 [--quick]

Each CSV row is appended (and the file closed) as soon as its configuration is measured, so a run
cut short by a timeout keeps what it measured. The run prints an estimate of each configuration's
time and skips those that would end past --budget-s (default 300 s: the device command's limit).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import common

try:
    import apd_ext
    from apd_ext.decode.graphs import clear_graph_cache
    from apd_ext.models.config import ModelConfig
    from apd_ext.models.runners import DllmRunner, VerifierRunner
    from apd_ext.models.transformer import Transformer
    from apd_ext.parallel import VocabShard
    from e2e_attention import attention_profile
except ModuleNotFoundError as e:
    if e.name != "apd_ext":
        raise
    sys.exit("apd_ext is not importable: run from the repository root with PYTHONPATH=. "
             "after `python setup.py build_ext --inplace`")

DREAM_7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                intermediate_size=18944, vocab_size=152064)
QWEN_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                intermediate_size=4864, vocab_size=151936)
TINY_DLLM = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=256, vocab_size=1024)
TINY_VERIFIER = dict(TINY_DLLM, num_hidden_layers=1, vocab_size=1000)
PAPER_TOKENS_PER_FORWARD = 9.3
PROMPT_LEN, SEED, MIXTURE_WEIGHT = 64, 0, 0.7
CSV_FIELDS = ("batch", "kv_window", "max_lookahead", "dllm_forward_ms", "dllm_floor_ms", "step_eager_ms",
              "step_graph_ms", "graph_vs_forward", "graph_reused", "achieved_gbps", "copy_gbps",
              "projected_tokens_per_s", "tokens_per_step", "steps", "peak_eager_gb", "peak_graph_gb",
              "reserved_graph_gb",
              "attention_backend", "attention_kernel", "attention_ms_per_step", "attention_share",
              "attention_choice", "device", "timestamp", "torch_version", "tp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--windows", default="16x100,32x200", help="comma-separated kv_window x max_lookahead")
    p.add_argument("--new-tokens", type=int, default=None,
                   help="tokens decoded per row and call (default: the largest M + 8)")
    p.add_argument("--ar-tokens", type=int, default=64, help="tokens of the autoregressive baseline")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="skip configurations estimated to end past this many seconds of the run")
    p.add_argument("--quick", action="store_true", help="tiny models, batch 1, one window: a smoke run")
    p.add_argument("--out", default=None, help="directory for e2e_<device>.csv and .json (default bench/results)")
    p.add_argument("--json", default=None, help="write the results here too")
    p.add_argument("--csv", default=None, help="CSV to append to (default <out>/e2e_<device>.csv)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (launch with torchrun --nproc-per-node N)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    a.batches = [int(b) for b in a.batches.split(",") if b.strip()]
    a.windows = [tuple(int(x) for x in w.split("x")) for w in a.windows.split(",") if w.strip()]
    if a.quick:
        a.batches, a.windows, a.new_tokens, a.ar_tokens = [1], [(4, 8)], 24, 8
    if a.new_tokens is None:
        a.new_tokens = max(M for _, M in a.windows) + 8
    if a.new_tokens < max(M for _, M in a.windows):
        p.error("--new-tokens must be at least the largest max_lookahead (else M is cut to it)")
    out = Path(a.out) if a.out else common.RESULTS
    name = f"e2e_{a.device}_quick" if a.quick else f"e2e_{a.device}"
    if a.csv is None:
        a.csv = out / (f"{name}.csv.tmp" if a.quick and not a.out else f"{name}.csv")
    if a.json is None and a.out:
        a.json = out / f"{name}.json"
    return a


def init_tp(args):
    """The TensorParallel group of --tp N (None for 1); ranks other than 0 print nothing."""
    if args.tp == 1:
        return None
    import os

    from apd_ext.parallel import TensorParallel

    if int(os.environ.get("WORLD_SIZE", "1")) != args.tp:
        sys.exit(f"--tp {args.tp}: launch with `torchrun --nproc-per-node {args.tp} bench/bench_e2e.py --tp {args.tp}`")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if args.device == "cuda" else "cpu"
    tp = TensorParallel.init(device=device)
    if tp.rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    return tp


def config(model_type: str, shape: dict, dtype: torch.dtype, max_len: int) -> ModelConfig:
    V = shape["vocab_size"]
    return ModelConfig(model_type=model_type, **shape, mask_token_id=V - 1 if model_type == "Dream" else None,
                       eos_token_id=[], pad_token_id=V - 2, max_position_embeddings=max_len + 64, dtype=dtype,
                       rope_theta=1e6)


@torch.no_grad()
def random_model(cfg: ModelConfig, device: torch.device, seed: int, tp=None, vocab: int | None = None,
                 replicate_body: bool = False) -> Transformer:
    """A Transformer with N(0, 0.02) weights (unit norms) made directly on the device; with tp,
    this rank's shard (vocabulary slices cut on the shared `vocab`; rank r seeded seed + 1000 r)."""
    shard = None
    if tp is not None:
        shard = VocabShard.of(cfg.vocab_size, vocab, tp.world, tp.rank)
        seed += 1000 * tp.rank
    with torch.device("meta"):
        model = Transformer(cfg, tp=tp, shard=shard, replicate_body=replicate_body and tp is not None)
    model = model.to_empty(device=device).to(cfg.dtype)
    model.tie_weights()
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's (this rank's) parameters, tied ones once."""
    return model.weight_bytes()


def copy_bandwidth(device: torch.device) -> float:
    """GB/s of a device-to-device copy of 1 GiB (read + write bytes), or a host memcpy on CPU."""
    n = (1 << 30) // 2 if device.type == "cuda" else (1 << 27)
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    t = common.time_fn(lambda: dst.copy_(src), device, repeats=20)
    return 2 * 2 * n / (t.p50_ms * 1e-3) / 1e9


def forward_ms(dllm: DllmRunner, batch: int, R: int, M: int, L: int, device) -> float:
    """The dLLM's steady-state window forward alone (inputs as in a decoding step, canvas length L)."""
    dllm.setup(batch, L)
    size = R + 2 * M - 1
    canvas = torch.randint(0, dllm.vocab_size - 2, (batch, L + 1), device=device)
    curr = torch.full((batch,), PROMPT_LEN + R, device=device)
    left, right = curr - R, (curr + M).clamp(max=L)
    return common.time_fn(lambda: dllm.window_logits(canvas, left, right, curr, M, size), device,
                          repeats=10, warmup=2).p50_ms


def generate_kw(R, M, new_tokens, vocab, policy="apd") -> dict:
    return dict(policy=policy, max_new_tokens=new_tokens, kv_window=R, max_lookahead=M,
                mixture_weight=MIXTURE_WEIGHT, temperature=1.0, seed=SEED, eos_token_id=[], vocab_size=vocab)


def timed(dllm, verifier, prompts, kw, cuda_graphs):
    """One generate call; (output, ms per step)."""
    if prompts.device.type == "cuda":
        kw = dict(kw, cuda_graphs=cuda_graphs)
    out = apd_ext.generate(dllm, verifier, prompts, **kw)
    return out, 1e3 * out.stats["time_s"]["total"] / max(1, out.stats["steps"])


@dataclass
class Bench:
    """The run's models and fixed numbers: the weights' dtype, the dLLM and verifier runners, the autoregressive
    baseline (the dLLM's weights read as a causal LM), the shared vocabulary, weight bytes, the copy
    bandwidth (GB/s) and the dLLM's weight-bandwidth floor (ms per forward)."""

    args: argparse.Namespace
    tp: object  # TensorParallel or None
    device: torch.device
    dtype: torch.dtype
    desc: str
    stamp: str
    dllm: DllmRunner
    verifier: VerifierRunner
    ar_model: VerifierRunner
    vocab: int
    wd: int
    wv: int
    copy_gbps: float
    floor: float


def build(args, tp, device: torch.device, desc: str, stamp: str) -> Bench:
    """The models (tiny with --quick; this rank's shards with --tp), the copy bandwidth and the floor."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dshape, vshape = (TINY_DLLM, TINY_VERIFIER) if args.quick else (DREAM_7B, QWEN_05B)
    L = PROMPT_LEN + args.new_tokens
    dcfg, vcfg = config("Dream", dshape, dtype, L), config("qwen2", vshape, dtype, L)
    vocab = min(dshape["vocab_size"], vshape["vocab_size"])
    dllm = DllmRunner(random_model(dcfg, device, SEED, tp, vocab), dcfg, shifted=True)
    verifier = VerifierRunner(random_model(vcfg, device, SEED + 1, tp, vocab, replicate_body=True), vcfg)
    # The dLLM's weights read as a causal LM: the autoregressive baseline at the dLLM's size.
    ar_model = VerifierRunner(dllm.model, config("qwen2", dshape, dtype, L))
    wd, wv = weight_bytes(dllm.model), weight_bytes(verifier.model)
    copy_gbps = copy_bandwidth(device)
    floor = wd / (copy_gbps * 1e9) * 1e3
    return Bench(args, tp, device, dtype, desc, stamp, dllm, verifier, ar_model, vocab, wd, wv, copy_gbps, floor)


def time_steps(b: Bench, prompts, kw: dict) -> dict:
    """Warm-up then timed generate calls: with CUDA graphs (CUDA only; graph_out, graph ms per step,
    reused, peak_graph and reserved bytes) and eager (out, eager ms per step)."""
    t = dict(graph=None, graph_out=None, peak_graph=None, reserved=None, reused="")
    if b.device.type == "cuda":
        clear_graph_cache()
        torch.cuda.empty_cache()
        timed(b.dllm, b.verifier, prompts, kw, True)  # warm-up: kernels, and the graph capture
        t["graph_out"], t["graph"] = timed(b.dllm, b.verifier, prompts, kw, True)
        t["reused"] = t["graph_out"].stats.get("cuda_graph") == "reused"
        t["peak_graph"] = t["graph_out"].stats.get("peak_memory_bytes")
        t["reserved"] = torch.cuda.memory_reserved(b.device)
        clear_graph_cache()  # the eager call's peak without the graph's pool
        torch.cuda.empty_cache()
    else:
        timed(b.dllm, b.verifier, prompts, kw, False)  # warm-up
    t["out"], t["eager"] = timed(b.dllm, b.verifier, prompts, kw, False)
    if t["graph_out"] is not None and not torch.equal(t["out"].sequences, t["graph_out"].sequences):
        print("  WARNING: graph and eager tokens differ", flush=True)
    return t


def step_row(b: Bench, B: int, R: int, M: int, fwd: float, t: dict, prof: dict) -> dict:
    """One configuration's result (CSV_FIELDS less the run's meta columns) from the forward time
    fwd (ms), the step timings t (time_steps) and the attention profile."""
    graph, eager, out = t["graph"], t["eager"], t["out"]
    step = graph if graph is not None else eager
    peak, peak_graph, reserved = out.stats.get("peak_memory_bytes"), t["peak_graph"], t["reserved"]
    return dict(batch=B, kv_window=R, max_lookahead=M, dllm_forward_ms=fwd, dllm_floor_ms=b.floor,
                step_eager_ms=eager, step_graph_ms=graph, graph_vs_forward=step / fwd,
                graph_reused=t["reused"], achieved_gbps=(b.wd + b.wv) / (step * 1e-3) / 1e9, copy_gbps=b.copy_gbps,
                projected_tokens_per_s=PAPER_TOKENS_PER_FORWARD * B / (step * 1e-3),
                tokens_per_step=out.stats["tokens_per_step"], steps=out.stats["steps"],
                peak_eager_gb=peak / 1e9 if peak else None,
                peak_graph_gb=peak_graph / 1e9 if peak_graph else None,
                reserved_graph_gb=reserved / 1e9 if reserved else None,
                attention_backend=prof["attention_backend"], attention_kernel=prof["attention_kernel"],
                attention_ms_per_step=prof["attention_ms_per_step"],
                attention_share=prof["attention_ms_per_step"] / step,
                attention_choice=prof["attention_choice"])


def print_row(b: Bench, row: dict, prof: dict, seconds: float) -> None:
    """One configuration's line: step times, memory, attention, and its wall seconds."""
    B, R, M = row["batch"], row["kv_window"], row["max_lookahead"]
    eager, graph, fwd = row["step_eager_ms"], row["step_graph_ms"], row["dllm_forward_ms"]
    print(f"  B={B} R={R} M={M}: APD step eager {eager:.2f} ms"
          + (f", graph {graph:.2f} ms (graph reused: {row['graph_reused']})" if graph is not None else "")
          + f" = {row['graph_vs_forward']:.2f}x the forward (floor {b.floor:.2f} ms); {row['steps']} steps, "
          f"{row['tokens_per_step']:.2f} tokens/step; {row['achieved_gbps']:.0f} GB/s of weights; "
          f"peak {common.fmt(row['peak_eager_gb'])} GB eager, {common.fmt(row['peak_graph_gb'])} GB graph; "
          f"attention {prof['attention_backend']} ({prof['attention_kernel'][:60]}) "
          f"{prof['attention_ms_per_step']:.3f} ms/step = {100 * row['attention_share']:.1f}% of the step "
          f"(profiled kernels {prof['profiled_kernel_ms_per_step']:.2f} ms/step); "
          f"torch's choice: {prof['attention_choice']}; {seconds:.0f} s", flush=True)


def append_row(b: Bench, row: dict) -> None:
    """Append `row` with the run's meta columns to the CSV now (a timeout keeps it); floats to 6
    digits, non-finite ones empty."""
    if b.tp is not None and b.tp.rank != 0:
        return
    csv_row = dict(row, device=b.desc, timestamp=b.stamp, torch_version=torch.__version__,
                   tp=1 if b.tp is None else b.tp.world)
    for k, v in csv_row.items():
        if isinstance(v, float):
            csv_row[k] = f"{v:.6g}" if math.isfinite(v) else ""
    common.append_csv(b.args.csv, [csv_row], CSV_FIELDS)


def measure(b: Bench, prompts, B: int, R: int, M: int, fwd: float, t_conf: float) -> dict:
    """One configuration (batch B, kv_window R, max_lookahead M): timed, profiled, printed, and
    appended to the CSV; returns its row."""
    kw = generate_kw(R, M, b.args.new_tokens, b.vocab)
    t = time_steps(b, prompts, kw)
    prof = attention_profile(b.dllm, b.verifier, prompts, R, M, b.args.new_tokens, b.vocab,
                             mixture_weight=MIXTURE_WEIGHT, seed=SEED)
    row = step_row(b, B, R, M, fwd, t, prof)
    print_row(b, row, prof, time.perf_counter() - t_conf)
    append_row(b, row)
    return row


def run_grid(b: Bench, result: dict, t_start: float) -> list[dict]:
    """Every (batch, window) configuration that fits in --budget-s (the first always runs), and
    the autoregressive baseline after the first one (result["ar_ms_per_token"]); returns the rows."""
    args, rows = b.args, result["steps"]
    gen = torch.Generator().manual_seed(SEED)
    ar_done = False
    factor = 3 * 1.5e-3
    for B in args.batches:
        prompts = torch.randint(0, b.vocab - 2, (B, PROMPT_LEN), generator=gen).to(b.device)
        for R, M in args.windows:
            t_conf = time.perf_counter()
            fwd = forward_ms(b.dllm, B, R, M, PROMPT_LEN + args.new_tokens, b.device)
            # three generate calls of at most new_tokens steps of about a forward each, capture and
            # profiling: seconds = factor * forward_ms * new_tokens, the factor measured on the last
            # configuration (the first guess assumes one token per step)
            est = factor * fwd * args.new_tokens + 5
            elapsed = time.perf_counter() - t_start
            print(f"  B={B} R={R} M={M}: dLLM forward {fwd:.2f} ms; this configuration ~{est:.0f} s "
                  f"(run so far {elapsed:.0f} s, budget {args.budget_s:.0f} s)", flush=True)
            over = elapsed + est > args.budget_s
            if b.tp is not None:  # every rank must skip alike (rank 0's clock decides)
                over = bool(b.tp.all_reduce(torch.tensor([float(over and b.tp.rank == 0)], device=b.device)).item())
            if over and rows:
                print(f"  B={B} R={R} M={M}: skipped (estimated to end past --budget-s)", flush=True)
                continue
            rows.append(measure(b, prompts, B, R, M, fwd, t_conf))
            factor = max(1e-4, (time.perf_counter() - t_conf - 2) / (fwd * args.new_tokens))
            if not ar_done:
                ar_ms = autoregressive_baseline(b.dllm, b.ar_model, b.device, gen, b.vocab, args.ar_tokens)
                result["ar_ms_per_token"], ar_done = ar_ms, True
    return rows


def report(b: Bench, rows: list[dict], result: dict) -> None:
    """The Markdown table of the rows, the AR baseline, the targets at B=1 (16, 100)."""
    columns = [(k, k) for k in ("batch", "kv_window", "max_lookahead", "dllm_forward_ms", "dllm_floor_ms",
                                "step_eager_ms", "step_graph_ms", "graph_vs_forward", "peak_graph_gb",
                                "attention_backend", "attention_share", "projected_tokens_per_s")]
    table = [{k: common.fmt(v) if isinstance(v, float) else "-" if v is None else v for k, v in r.items()}
             for r in rows]
    print(f"\n## {b.desc}; torch {torch.__version__}; {b.stamp}\n")
    print(common.markdown_table(table, columns))
    if "ar_ms_per_token" in result:
        print(f"\nAR baseline: {result['ar_ms_per_token']:.3g} ms/token; copy bandwidth {b.copy_gbps:.0f} GB/s")
    head = [r for r in rows if (r["batch"], r["kv_window"], r["max_lookahead"]) == (1, 16, 100)]
    if head:
        h = head[0]
        print(f"targets at B=1 (16, 100): step / forward = {h['graph_vs_forward']:.2f} (<= 1.3), "
              f"forward / floor = {h['dllm_forward_ms'] / h['dllm_floor_ms']:.2f} (<= 1.3)")


def main(argv=None) -> int:
    """Build the models, measure every configuration, print the report, write the JSON."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    tp = init_tp(args)
    device = tp.device if tp is not None else torch.device(args.device)
    b = build(args, tp, device, common.device_description(device), common.timestamp())
    ranks = f"; tensor parallel over {tp.world} ranks (bytes per rank)" if tp is not None else ""
    print(f"device: {b.desc}; torch {torch.__version__}; {b.dtype}; {b.stamp}{ranks}")
    print(f"dLLM {b.wd / 1e9:.2f} GB of weights, verifier {b.wv / 1e9:.2f} GB; copy bandwidth {b.copy_gbps:.0f} GB/s; "
          f"{args.new_tokens} tokens per row and call; rows appended to {args.csv}", flush=True)
    result = dict(device=b.desc, timestamp=b.stamp, torch_version=torch.__version__, dtype=str(b.dtype),
                  dllm_weight_bytes=b.wd, verifier_weight_bytes=b.wv, copy_gbps=b.copy_gbps, steps=[])
    rows = run_grid(b, result, t_start)
    report(b, rows, result)
    if args.json and (tp is None or tp.rank == 0):
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"wrote {args.json}")
    print(f"{len(rows)} rows appended to {args.csv}; {time.perf_counter() - t_start:.0f} s in all")
    return 0


def autoregressive_baseline(dllm, ar_model, device, gen, vocab, tokens) -> float:
    """ms per token of plain autoregressive decoding with the dLLM-sized model, B = 1 (graphs on
    CUDA, warm-up first)."""
    prompts = torch.randint(0, vocab - 2, (1, PROMPT_LEN), generator=gen).to(device)
    kw = generate_kw(None, None, tokens, vocab, policy="ar")
    timed(dllm, ar_model, prompts, kw, True)  # warm-up (and capture)
    _, ms = timed(dllm, ar_model, prompts, kw, True)
    clear_graph_cache()
    print(f"  autoregressive decoding of the dLLM-sized model, B=1: {ms:.2f} ms/token "
          f"({1e3 / ms:.0f} tok/s)", flush=True)
    return ms


if __name__ == "__main__":
    sys.exit(main())
