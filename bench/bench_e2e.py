"""End-to-end decoding benchmark at model scale: one decoding step, eager against CUDA graphs, against
the dLLM's window forward alone and its weight-bandwidth floor, which attention kernel runs and its
share of the step, and plain autoregressive decoding; for a whole-canvas dLLM (Dream) and a
block-diffusion one (Fast-dLLM v2).

    PYTHONPATH=. python bench/bench_e2e.py [--device cuda] [--quick] [--models dream,fast_dllm_v2] [--out DIR]
                                           [--json PATH] [--csv PATH]

Models: randomly initialised (no checkpoint), bf16 on CUDA (fp32 on CPU), of the real shapes:
  dLLM      Dream-7B:         hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate 18944, vocab 152064
  dLLM      Fast-dLLM-v2-7B:  the same Qwen2.5-7B body (q/k/v biases, untied head), model_type
                              Fast_dLLM_Qwen, bd_size 32 (block-causal attention, exact block cache)
  verifier  Qwen2.5-0.5B:     hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936
                              (shared vocabulary 151936 with either dLLM)
--quick swaps in tiny models of the same families (bd_size 8; a smoke run that also works on CPU).
--models picks the dLLMs (default both; each is built once, the verifier is shared).

Rows (the `model` and `policy` columns say which; rows written before these columns existed are
Dream's APD rows):
  dream         APD (mixture weight 0.7), for each batch size (1, 8) and (kv_window R, max_lookahead M)
                in ((16, 100), (32, 200)); the dLLM input is R + 2M - 1 positions
  fast_dllm_v2  for each batch size: APD (mixture weight 0.7, max_lookahead 32: a window of at most
                the rest of the current block) and its own decoding fast_dllm_v2 (threshold 0.9,
                small_block_size 8, no verifier); the dLLM input is 2 * bd_size = 64 positions (the
                current block and the block just completed: decode/steps/window.py); kv_window unused
For each row:
  dllm_forward_ms   the dLLM's steady-state window forward alone (the input above), eager
  step_graph_ms     one step of apd_ext.generate (window forward, sample_draft, then APD: verifier on
                    the draft, mixture_accept, commit; fast_dllm_v2: its threshold over the sub-block)
                    with cuda_graphs=True: (total time) / steps of a call that replays the graph
                    captured by a warm-up call (capture not timed; graph_reused says the cache did
                    hit). CUDA only.
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
real window; a block model's canvas is rounded up to whole blocks); the first step (the whole prompt)
and the verifier's prefill are included in the total, amortised over the steps. With random weights
a step keeps about one token, so throughput is projected from assumed tokens per dLLM forward
(column assumed_tokens_per_forward; projected_tokens_per_s = that * B / step time):
  dream / apd                9.3, the APD paper's figure (GSM8K, mixture weight 0.7)
  fast_dllm_v2 / apd         9.3 as well: an assumption (no published figure; a step keeps at most the
                             positions left in the 32-position block)
  fast_dllm_v2 / fast_dllm_v2  2.5: an assumption from the Fast-dLLM v2 paper's "up to 2.5x over
                             AR decoding" (threshold 0.9), read as tokens per forward
Also: plain autoregressive decoding of the first dLLM's weights read as a causal LM (Qwen2.5-7B
shapes either way) with the same runner, one token per forward, ms per token; the device copy
bandwidth; achieved weight bandwidth = weight bytes read per step (the verifier's counted for APD
only) / step time. Targets (H100): Dream step_graph at (16, 100), B = 1, within 1.3x of
dllm_forward; dllm_forward within 1.3x of its floor (both models).

The attention profile is made by bench/e2e_attention.py.

--tp N (under torchrun, one process per GPU): the dLLM sharded over N ranks (heads, MLP, vocabulary;
the 7B bodies' 28 heads allow N = 2 or 4), the verifier's body replicated (its head sliced), the
sampling vocabulary-parallel (apd_ext.parallel). Weight bytes, the floor and achieved GB/s are per
rank; rank 0 prints and writes; the rows carry tp = N. Run the same command at --tp 1 for the
baseline:

    torchrun --nproc-per-node 2 bench/bench_e2e.py --tp 2 [--quick]

Each CSV row is appended (and the file closed) as soon as its configuration is measured, so a run
cut short by a timeout keeps what it measured. Each model's rows run in the order above (B = 1 first),
the models' lists interleaved row by row (dream B=1 (16, 100), fast_dllm_v2 B=1 apd, dream B=1 (32,
200), fast_dllm_v2 B=1 fast_dllm_v2, then B = 8 likewise); the run prints an estimate of each
configuration's time and skips those that would end past --budget-s (default 300 s: the device
command's limit), so that a tight budget drops every model's last rows; the first row always runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
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
    from apd_ext.models.config import FAST_DLLM_MASK_ID, ModelConfig
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
# the block-diffusion dLLM: Fast-dLLM v2 (bd_size 32; tiny: 8) and its released decoding's settings
FAST_BLOCK, TINY_BLOCK = 32, 8
FAST_THRESHOLD, FAST_SUB_BLOCK, TINY_SUB_BLOCK = 0.9, 8, 4
FAST_TOKENS_PER_FORWARD = 2.5  # assumed (module docstring)
MODELS = ("dream", "fast_dllm_v2")
# columns added at the end (common.append_csv upgrades an older file: its rows get empty cells, and
# an empty model means Dream's APD row)
CSV_FIELDS = ("batch", "kv_window", "max_lookahead", "dllm_forward_ms", "dllm_floor_ms", "step_eager_ms",
              "step_graph_ms", "graph_vs_forward", "graph_reused", "achieved_gbps", "copy_gbps",
              "projected_tokens_per_s", "tokens_per_step", "steps", "peak_eager_gb", "peak_graph_gb",
              "reserved_graph_gb",
              "attention_backend", "attention_kernel", "attention_ms_per_step", "attention_share",
              "attention_choice", "device", "timestamp", "torch_version", "tp",
              "model", "policy", "block_size", "dllm_input", "assumed_tokens_per_forward")


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
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated dLLMs of {', '.join(MODELS)}")
    a = p.parse_args(argv)
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    if not a.models or any(m not in MODELS for m in a.models):
        p.error(f"--models: one or more of {', '.join(MODELS)}, got {','.join(a.models) or 'nothing'}")
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


def config(model_type: str, shape: dict, dtype: torch.dtype, max_len: int, block: int | None = None) -> ModelConfig:
    """Dream: mask V - 1. Fast_dLLM_Qwen (block = bd_size): the released mask id 151665 (at the
    real vocabulary; the tiny one's is inside the shared vocabulary too)."""
    V = shape["vocab_size"]
    mask, extra = None, {}
    if model_type == "Dream":
        mask = V - 1
    elif model_type == "Fast_dLLM_Qwen":
        mask, extra = (FAST_DLLM_MASK_ID if V > FAST_DLLM_MASK_ID else V // 2), {"bd_size": block}
    return ModelConfig(model_type=model_type, **shape, mask_token_id=mask, eos_token_id=[], pad_token_id=V - 2,
                       max_position_embeddings=max_len + 64, dtype=dtype, rope_theta=1e6, extra=extra)


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


def forward_ms(dllm: DllmRunner, batch: int, R: int | None, M: int, L: int, device) -> float:
    """The dLLM's steady-state window forward alone (inputs as in a decoding step, canvas length L):
    R + 2M - 1 positions, or on a block model (R None) the current block and the one before it,
    2 * block positions (window.py's input after a completed block; the static size of every step)."""
    dllm.setup(batch, L)
    canvas = torch.randint(0, dllm.vocab_size - 2, (batch, L + 1), device=device)
    bs = dllm.block_size
    if bs is None:
        size = R + 2 * M - 1
        curr = torch.full((batch,), PROMPT_LEN + R, device=device)
        left, right = curr - R, (curr + M).clamp(max=L)
    else:
        size = min(2 * bs, L)
        curr = torch.full((batch,), min(PROMPT_LEN + bs, L - bs), device=device)  # a block's first position
        right = torch.div(curr, bs, rounding_mode="floor") * bs + bs
        left = (right - size).clamp(min=0)
    return common.time_fn(lambda: dllm.window_logits(canvas, left, right, curr, M, size), device,
                          repeats=10, warmup=2).p50_ms


def generate_kw(R, M, new_tokens, vocab, policy="apd", **knobs) -> dict:
    return dict(policy=policy, max_new_tokens=new_tokens, kv_window=R, max_lookahead=M,
                mixture_weight=MIXTURE_WEIGHT, temperature=1.0, seed=SEED, eos_token_id=[], vocab_size=vocab,
                **knobs)


@dataclass
class Dllm:
    """One dLLM of the run: its name (MODELS), runner, weight bytes and weight-bandwidth floor (ms
    per forward at the copy bandwidth); block: its block size (None: whole-canvas)."""

    name: str
    runner: DllmRunner
    wd: int
    floor: float
    block: int | None = None


@dataclass
class Conf:
    """One row's configuration: the dLLM, the policy (its spec label for the CSV), batch, kv_window
    R (None on a block model), window M (max_lookahead; a block model's fast_dllm_v2: the block),
    the policy's own knobs, and the assumed tokens per dLLM forward of its projection."""

    model: Dllm
    policy: str
    label: str
    B: int
    R: int | None
    M: int
    knobs: dict
    tokens_per_forward: float

    @property
    def key(self) -> str:
        return f"{self.model.name} {self.label} B={self.B}" + (f" R={self.R}" if self.R is not None else "") + \
            f" M={self.M}"

    @property
    def dllm_input(self) -> int:
        """The dLLM's steady input length."""
        return 2 * self.model.block if self.model.block is not None else self.R + 2 * self.M - 1


def timed(dllm, verifier, prompts, kw, cuda_graphs):
    """One generate call; (output, ms per step)."""
    if prompts.device.type == "cuda":
        kw = dict(kw, cuda_graphs=cuda_graphs)
    out = apd_ext.generate(dllm, verifier, prompts, **kw)
    return out, 1e3 * out.stats["time_s"]["total"] / max(1, out.stats["steps"])


@dataclass
class Bench:
    """The run's models and fixed numbers: the weights' dtype, the dLLMs (Dllm, by name), the verifier
    runner, the autoregressive baseline (the first dLLM's weights read as a causal LM), the shared
    vocabulary, the verifier's weight bytes and the copy bandwidth (GB/s)."""

    args: argparse.Namespace
    tp: object  # TensorParallel or None
    device: torch.device
    dtype: torch.dtype
    desc: str
    stamp: str
    dllms: dict
    verifier: VerifierRunner
    ar_model: VerifierRunner
    vocab: int
    wv: int
    copy_gbps: float


def build(args, tp, device: torch.device, desc: str, stamp: str) -> Bench:
    """The models (tiny with --quick; this rank's shards with --tp), the copy bandwidth and the floors."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dshape, vshape = (TINY_DLLM, TINY_VERIFIER) if args.quick else (DREAM_7B, QWEN_05B)
    block = TINY_BLOCK if args.quick else FAST_BLOCK
    L = -(-(PROMPT_LEN + args.new_tokens) // block) * block  # a block model's canvas: whole blocks
    vcfg = config("qwen2", vshape, dtype, L)
    vocab = min(dshape["vocab_size"], vshape["vocab_size"])
    verifier = VerifierRunner(random_model(vcfg, device, SEED + 1, tp, vocab, replicate_body=True), vcfg)
    copy_gbps = copy_bandwidth(device)
    dllms = {}
    for i, name in enumerate(args.models):
        bs = block if name == "fast_dllm_v2" else None
        dcfg = config("Fast_dLLM_Qwen" if bs else "Dream", dshape, dtype, L, bs)
        runner = DllmRunner(random_model(dcfg, device, SEED + 2 * i, tp, vocab), dcfg, shifted=True)
        wd = weight_bytes(runner.model)
        dllms[name] = Dllm(name, runner, wd, wd / (copy_gbps * 1e9) * 1e3, bs)
    # The first dLLM's weights read as a causal LM: the autoregressive baseline at the dLLM's size.
    first = next(iter(dllms.values())).runner
    ar_model = VerifierRunner(first.model, config("qwen2", dshape, dtype, L))
    return Bench(args, tp, device, dtype, desc, stamp, dllms, verifier, ar_model, vocab,
                 weight_bytes(verifier.model), copy_gbps)


def plan(b: Bench) -> list[Conf]:
    """Every row, in the order they run: each model's rows batch size by batch size (Dream: its
    windows; Fast-dLLM v2: APD, then its own decoding), the models' lists interleaved row by row, so
    that --budget-s skips the last (largest) rows of every model rather than a whole model."""
    args, per_model = b.args, []
    quick = args.quick
    for d in b.dllms.values():
        confs = []
        for B in args.batches:
            if d.block is None:
                confs += [Conf(d, "apd", f"apd:mixture_weight={MIXTURE_WEIGHT}", B, R, M, {}, PAPER_TOKENS_PER_FORWARD)
                          for R, M in args.windows]
                continue
            M = min(max(m for _, m in args.windows), d.block) if quick else d.block
            sub = TINY_SUB_BLOCK if quick else FAST_SUB_BLOCK
            confs.append(Conf(d, "apd", f"apd:mixture_weight={MIXTURE_WEIGHT},max_lookahead={M}", B, None, M, {},
                              PAPER_TOKENS_PER_FORWARD))
            confs.append(Conf(d, "fast_dllm_v2", f"fast_dllm_v2:threshold={FAST_THRESHOLD},small_block_size={sub}",
                              B, None, d.block, dict(threshold=FAST_THRESHOLD, small_block_size=sub),
                              FAST_TOKENS_PER_FORWARD))
        per_model.append(confs)
    return [c for row in itertools.zip_longest(*per_model) for c in row if c is not None]


def time_steps(b: Bench, dllm: DllmRunner, prompts, kw: dict) -> dict:
    """Warm-up then timed generate calls: with CUDA graphs (CUDA only; graph_out, graph ms per step,
    reused, peak_graph and reserved bytes) and eager (out, eager ms per step)."""
    t = dict(graph=None, graph_out=None, peak_graph=None, reserved=None, reused="")
    if b.device.type == "cuda":
        clear_graph_cache()
        torch.cuda.empty_cache()
        timed(dllm, b.verifier, prompts, kw, True)  # warm-up: kernels, and the graph capture
        t["graph_out"], t["graph"] = timed(dllm, b.verifier, prompts, kw, True)
        t["reused"] = t["graph_out"].stats.get("cuda_graph") == "reused"
        t["peak_graph"] = t["graph_out"].stats.get("peak_memory_bytes")
        t["reserved"] = torch.cuda.memory_reserved(b.device)
        clear_graph_cache()  # the eager call's peak without the graph's pool
        torch.cuda.empty_cache()
    else:
        timed(dllm, b.verifier, prompts, kw, False)  # warm-up
    t["out"], t["eager"] = timed(dllm, b.verifier, prompts, kw, False)
    if t["graph_out"] is not None and not torch.equal(t["out"].sequences, t["graph_out"].sequences):
        print("  WARNING: graph and eager tokens differ", flush=True)
    return t


def step_row(b: Bench, c: Conf, fwd: float, t: dict, prof: dict) -> dict:
    """One configuration's result (CSV_FIELDS less the run's meta columns) from the forward time
    fwd (ms), the step timings t (time_steps) and the attention profile."""
    graph, eager, out = t["graph"], t["eager"], t["out"]
    step = graph if graph is not None else eager
    peak, peak_graph, reserved = out.stats.get("peak_memory_bytes"), t["peak_graph"], t["reserved"]
    weights = c.model.wd + (b.wv if c.policy == "apd" else 0)  # bytes read per step
    return dict(batch=c.B, kv_window=c.R, max_lookahead=c.M, dllm_forward_ms=fwd, dllm_floor_ms=c.model.floor,
                step_eager_ms=eager, step_graph_ms=graph, graph_vs_forward=step / fwd,
                graph_reused=t["reused"], achieved_gbps=weights / (step * 1e-3) / 1e9, copy_gbps=b.copy_gbps,
                projected_tokens_per_s=c.tokens_per_forward * c.B / (step * 1e-3),
                tokens_per_step=out.stats["tokens_per_step"], steps=out.stats["steps"],
                peak_eager_gb=peak / 1e9 if peak else None,
                peak_graph_gb=peak_graph / 1e9 if peak_graph else None,
                reserved_graph_gb=reserved / 1e9 if reserved else None,
                attention_backend=prof["attention_backend"], attention_kernel=prof["attention_kernel"],
                attention_ms_per_step=prof["attention_ms_per_step"],
                attention_share=prof["attention_ms_per_step"] / step,
                attention_choice=prof["attention_choice"],
                model=c.model.name, policy=c.label, block_size=c.model.block, dllm_input=c.dllm_input,
                assumed_tokens_per_forward=c.tokens_per_forward)


def print_row(c: Conf, row: dict, prof: dict, seconds: float) -> None:
    """One configuration's line: step times, memory, attention, and its wall seconds."""
    eager, graph, fwd = row["step_eager_ms"], row["step_graph_ms"], row["dllm_forward_ms"]
    print(f"  {c.key}: step eager {eager:.2f} ms"
          + (f", graph {graph:.2f} ms (graph reused: {row['graph_reused']})" if graph is not None else "")
          + f" = {row['graph_vs_forward']:.2f}x the forward (floor {c.model.floor:.2f} ms); {row['steps']} steps, "
          f"{row['tokens_per_step']:.2f} tokens/step; {row['achieved_gbps']:.0f} GB/s of weights; "
          f"projected {row['projected_tokens_per_s']:.0f} tokens/s at {c.tokens_per_forward} tokens/forward; "
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


def measure(b: Bench, prompts, c: Conf, fwd: float, t_conf: float) -> dict:
    """One configuration: timed, profiled, printed, and appended to the CSV; returns its row."""
    dllm = c.model.runner
    kw = generate_kw(c.R, c.M, b.args.new_tokens, b.vocab, c.policy, **c.knobs)
    t = time_steps(b, dllm, prompts, kw)
    prof = attention_profile(dllm, b.verifier, prompts, c.R, c.M, b.args.new_tokens, b.vocab,
                             mixture_weight=MIXTURE_WEIGHT, seed=SEED, policy=c.policy, knobs=c.knobs)
    row = step_row(b, c, fwd, t, prof)
    print_row(c, row, prof, time.perf_counter() - t_conf)
    append_row(b, row)
    return row


def run_grid(b: Bench, result: dict, t_start: float) -> list[dict]:
    """Every configuration of plan() that fits in --budget-s (the first always runs), and the
    autoregressive baseline after the first one (result["ar_ms_per_token"]); returns the rows."""
    args, rows = b.args, result["steps"]
    gen = torch.Generator().manual_seed(SEED)
    ar_done = False
    factors: dict = {}  # per model and policy: measured on its last configuration
    prompts = {}
    for c in plan(b):
        if c.B not in prompts:
            p = torch.randint(0, b.vocab - 2, (c.B, PROMPT_LEN), generator=gen)
            for d in b.dllms.values():  # a prompt never holds a mask token (Fast-dLLM v2's is inside the vocabulary)
                mask = d.runner.mask_token_id
                p = torch.where(p == mask, (mask + 1) % (b.vocab - 2), p)
            prompts[c.B] = p.to(b.device)
        t_conf = time.perf_counter()
        L = PROMPT_LEN + args.new_tokens
        if c.model.block is not None:
            L = -(-L // c.model.block) * c.model.block
        fwd = forward_ms(c.model.runner, c.B, c.R, c.M, L, b.device)
        # three generate calls of at most new_tokens steps of about a forward each, capture and
        # profiling: seconds = factor * forward_ms * new_tokens, the factor measured on the last
        # configuration of the same model and policy (else of any; the first guess assumes one token per step)
        factor = factors.get((c.model.name, c.policy), max(factors.values(), default=3 * 1.5e-3))
        est = factor * fwd * args.new_tokens + 5
        elapsed = time.perf_counter() - t_start
        print(f"  {c.key}: dLLM forward {fwd:.2f} ms ({c.dllm_input} positions); this configuration ~{est:.0f} s "
              f"(run so far {elapsed:.0f} s, budget {args.budget_s:.0f} s)", flush=True)
        over = elapsed + est > args.budget_s
        if b.tp is not None:  # every rank must skip alike (rank 0's clock decides)
            over = bool(b.tp.all_reduce(torch.tensor([float(over and b.tp.rank == 0)], device=b.device)).item())
        if over and rows:
            print(f"  {c.key}: skipped (estimated to end past --budget-s)", flush=True)
            continue
        rows.append(measure(b, prompts[c.B], c, fwd, t_conf))
        factors[c.model.name, c.policy] = max(1e-4, (time.perf_counter() - t_conf - 2) / (fwd * args.new_tokens))
        if not ar_done:
            ar_ms = autoregressive_baseline(b.ar_model, b.device, gen, b.vocab, args.ar_tokens)
            result["ar_ms_per_token"], ar_done = ar_ms, True
    return rows


def report(b: Bench, rows: list[dict], result: dict) -> None:
    """The Markdown table of the rows, the AR baseline, the targets at B=1 (Dream at (16, 100); every
    model's forward against its floor)."""
    columns = [(k, k) for k in ("model", "policy", "batch", "kv_window", "max_lookahead", "dllm_input",
                                "dllm_forward_ms", "dllm_floor_ms", "step_eager_ms", "step_graph_ms",
                                "graph_vs_forward", "peak_graph_gb", "attention_backend", "attention_share",
                                "assumed_tokens_per_forward", "projected_tokens_per_s")]
    table = [{k: common.fmt(v) if isinstance(v, float) else "-" if v is None else v for k, v in r.items()}
             for r in rows]
    print(f"\n## {b.desc}; torch {torch.__version__}; {b.stamp}\n")
    print(common.markdown_table(table, columns))
    if "ar_ms_per_token" in result:
        print(f"\nAR baseline: {result['ar_ms_per_token']:.3g} ms/token; copy bandwidth {b.copy_gbps:.0f} GB/s")
    head = [r for r in rows if (r["model"], r["batch"], r["kv_window"], r["max_lookahead"]) == ("dream", 1, 16, 100)]
    if head:
        h = head[0]
        print(f"targets at B=1 (16, 100): step / forward = {h['graph_vs_forward']:.2f} (<= 1.3), "
              f"forward / floor = {h['dllm_forward_ms'] / h['dllm_floor_ms']:.2f} (<= 1.3)")
    for r in rows:
        if r["model"] == "fast_dllm_v2" and r["batch"] == 1:
            print(f"fast_dllm_v2 {r['policy']} at B=1: step / forward = {r['graph_vs_forward']:.2f}, "
                  f"forward / floor = {r['dllm_forward_ms'] / r['dllm_floor_ms']:.2f} (<= 1.3)")


def main(argv=None) -> int:
    """Build the models, measure every configuration, print the report, write the JSON."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    tp = init_tp(args)
    device = tp.device if tp is not None else torch.device(args.device)
    b = build(args, tp, device, common.device_description(device), common.timestamp())
    ranks = f"; tensor parallel over {tp.world} ranks (bytes per rank)" if tp is not None else ""
    print(f"device: {b.desc}; torch {torch.__version__}; {b.dtype}; {b.stamp}{ranks}")
    dllms = ", ".join(f"{d.name} {d.wd / 1e9:.2f} GB (floor {d.floor:.2f} ms"
                      + (f", bd_size {d.block})" if d.block else ")") for d in b.dllms.values())
    print(f"dLLMs: {dllms}; verifier {b.wv / 1e9:.2f} GB; copy bandwidth {b.copy_gbps:.0f} GB/s; "
          f"{args.new_tokens} tokens per row and call; rows appended to {args.csv}", flush=True)
    result = dict(device=b.desc, timestamp=b.stamp, torch_version=torch.__version__, dtype=str(b.dtype),
                  dllm_weight_bytes={d.name: d.wd for d in b.dllms.values()}, verifier_weight_bytes=b.wv,
                  copy_gbps=b.copy_gbps, steps=[])
    rows = run_grid(b, result, t_start)
    report(b, rows, result)
    if args.json and (tp is None or tp.rank == 0):
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"wrote {args.json}")
    print(f"{len(rows)} rows appended to {args.csv}; {time.perf_counter() - t_start:.0f} s in all")
    return 0


def autoregressive_baseline(ar_model, device, gen, vocab, tokens) -> float:
    """ms per token of plain autoregressive decoding with the dLLM-sized model, B = 1 (graphs on
    CUDA, warm-up first). The dLLM argument of generate is a stand-in: the ar policy never calls it."""
    prompts = torch.randint(0, vocab - 2, (1, PROMPT_LEN), generator=gen).to(device)
    kw = generate_kw(None, None, tokens, vocab, policy="ar")
    dllm = DllmRunner(ar_model.model, dataclasses.replace(ar_model.config, model_type="Dream",
                                                          mask_token_id=vocab - 1), shifted=True)
    timed(dllm, ar_model, prompts, kw, True)  # warm-up (and capture)
    _, ms = timed(dllm, ar_model, prompts, kw, True)
    clear_graph_cache()
    print(f"  autoregressive decoding of the dLLM-sized model, B=1: {ms:.2f} ms/token "
          f"({1e3 / ms:.0f} tok/s)", flush=True)
    return ms


if __name__ == "__main__":
    sys.exit(main())
