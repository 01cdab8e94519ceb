"""End-to-end decoding benchmark at model scale: one APD step, eager against CUDA graphs, against
the dLLM's window forward alone and its weight-bandwidth floor, and plain autoregressive decoding.

    PYTHONPATH=. python bench/bench_e2e.py [--device cuda] [--quick] [--json PATH] [--csv PATH]

Models: randomly initialised (no checkpoint), bf16 on CUDA (fp32 on CPU), of the real shapes:
  dLLM      Dream-7B:      hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate 18944, vocab 152064
  verifier  Qwen2.5-0.5B:  hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936
--quick swaps in two tiny models of the same families (a smoke run that also works on CPU).

For each batch size (1, 8) and (kv_window R, max_lookahead M) in ((16, 100), (32, 200)):
  dllm_forward_ms   the dLLM's steady-state window forward alone (R + 2M - 1 input positions), eager
  step_eager_ms     one APD step of apd_ext.generate (window forward, sample_draft, verifier on the
                    draft, mixture_accept, commit) with cuda_graphs=False: (total time) / steps
  step_graph_ms     the same with cuda_graphs=True (CUDA only)
Each generate call decodes --new-tokens tokens per row with no EOS; the first step (the whole
prompt) and the verifier's prefill are included in the total, amortised over the steps.
Also: plain autoregressive decoding of the Dream-7B-shaped model with the same runner (its weights
read as a causal LM, one token per forward; what a user would run instead), ms per token; the device
copy bandwidth measured in the same run; achieved weight bandwidth = weight bytes read per step /
step time; the dLLM forward against its floor (dLLM weight bytes / copy bandwidth); and projected
tokens/s at the paper's 9.3 tokens per dLLM forward (GSM8K, mixture weight 0.7): 9.3 B / step time.
Targets (H100): step_graph at (16, 100), B = 1, within 1.3x of dllm_forward; dllm_forward within 1.3x
of its floor.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

import common

try:
    import apd_ext
    from apd_ext.models.config import ModelConfig
    from apd_ext.models.runners import DllmRunner, VerifierRunner
    from apd_ext.models.transformer import Transformer
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
PROMPT_LEN, SEED = 64, 0
CSV_FIELDS = ("batch", "kv_window", "max_lookahead", "dllm_forward_ms", "dllm_floor_ms", "step_eager_ms",
              "step_graph_ms", "graph_vs_forward", "achieved_gbps", "copy_gbps", "projected_tokens_per_s",
              "tokens_per_step", "peak_memory_gb", "device", "timestamp", "torch_version")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--windows", default="16x100,32x200", help="comma-separated kv_window x max_lookahead")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens decoded per row and run")
    p.add_argument("--ar-tokens", type=int, default=64, help="tokens of the autoregressive baseline")
    p.add_argument("--quick", action="store_true", help="tiny models, batch 1, one window: a smoke run")
    p.add_argument("--json", default=None, help="write the results here too")
    p.add_argument("--csv", default=None, help="CSV to append to (default bench/results/e2e_<device>.csv)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    a.batches = [int(b) for b in a.batches.split(",") if b.strip()]
    a.windows = [tuple(int(x) for x in w.split("x")) for w in a.windows.split(",") if w.strip()]
    if a.quick:
        a.batches, a.windows, a.new_tokens, a.ar_tokens = [1], [(4, 8)], 24, 8
    if a.csv is None:
        a.csv = common.RESULTS / (f"e2e_{a.device}_quick.csv.tmp" if a.quick else f"e2e_{a.device}.csv")
    return a


def config(model_type: str, shape: dict, dtype: torch.dtype, max_len: int) -> ModelConfig:
    V = shape["vocab_size"]
    return ModelConfig(model_type=model_type, **shape, mask_token_id=V - 1 if model_type == "Dream" else None,
                       eos_token_id=[], pad_token_id=V - 2, max_position_embeddings=max_len + 64, dtype=dtype,
                       rope_theta=1e6)


@torch.no_grad()
def random_model(cfg: ModelConfig, device: torch.device, seed: int) -> Transformer:
    """A Transformer with N(0, 0.02) weights (unit norms) made directly on the device."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device=device).to(cfg.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def copy_bandwidth(device: torch.device) -> float:
    """GB/s of a device-to-device copy of 1 GiB (read + write bytes), or a host memcpy on CPU."""
    n = (1 << 30) // 2 if device.type == "cuda" else (1 << 27)
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    t = common.time_fn(lambda: dst.copy_(src), device, repeats=20)
    return 2 * 2 * n / (t.p50_ms * 1e-3) / 1e9


def forward_ms(dllm: DllmRunner, batch: int, R: int, M: int, max_len: int, device) -> float:
    """The dLLM's steady-state window forward alone (inputs as in a decoding step)."""
    dllm.setup(batch, max_len)
    size = R + 2 * M - 1
    canvas = torch.randint(0, dllm.vocab_size - 2, (batch, max_len + 1), device=device)
    curr = torch.full((batch,), PROMPT_LEN + R, device=device)
    left, right = curr - R, curr + M
    return common.time_fn(lambda: dllm.window_logits(canvas, left, right, curr, M, size), device, repeats=20).p50_ms


def decode(dllm, verifier, prompts, R, M, new_tokens, cuda_graphs, policy="apd"):
    vocab = min(dllm.vocab_size, verifier.vocab_size)  # Dream's head is larger than Qwen2.5's
    kw = dict(policy=policy, max_new_tokens=new_tokens, kv_window=R, max_lookahead=M, mixture_weight=0.7,
              seed=SEED, eos_token_id=[], vocab_size=vocab)
    if prompts.device.type == "cuda":
        kw["cuda_graphs"] = cuda_graphs
    apd_ext.generate(dllm, verifier, prompts, **kw)  # warm-up (and graph capture of this shape)
    out = apd_ext.generate(dllm, verifier, prompts, **kw)
    return out, 1e3 * out.stats["time_s"]["total"] / out.stats["steps"]


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dshape, vshape = (TINY_DLLM, TINY_VERIFIER) if args.quick else (DREAM_7B, QWEN_05B)
    max_len = PROMPT_LEN + args.new_tokens + max(M for _, M in args.windows) + 8
    desc, stamp = common.device_description(device), common.timestamp()
    dcfg, vcfg = config("Dream", dshape, dtype, max_len), config("qwen2", vshape, dtype, max_len)
    dllm = DllmRunner(random_model(dcfg, device, SEED), dcfg, shifted=True)
    verifier = VerifierRunner(random_model(vcfg, device, SEED + 1), vcfg)
    vocab = min(dshape["vocab_size"], vshape["vocab_size"])
    # The dLLM's weights read as a causal LM: the autoregressive baseline at the dLLM's size.
    ar_cfg = config("qwen2", dshape, dtype, max_len)
    ar_model = VerifierRunner(dllm.model, ar_cfg)
    wd, wv = weight_bytes(dllm.model), weight_bytes(verifier.model)
    copy_gbps = copy_bandwidth(device)
    print(f"device: {desc}; torch {torch.__version__}; {dtype}; {stamp}")
    print(f"dLLM {wd / 1e9:.2f} GB of weights, verifier {wv / 1e9:.2f} GB; copy bandwidth {copy_gbps:.0f} GB/s")

    rows = []
    gen = torch.Generator().manual_seed(SEED)
    for B in args.batches:
        prompts = torch.randint(0, vocab - 2, (B, PROMPT_LEN), generator=gen).to(device)
        for R, M in args.windows:
            fwd = forward_ms(dllm, B, R, M, max_len, device)
            floor = wd / (copy_gbps * 1e9) * 1e3
            out, eager = decode(dllm, verifier, prompts, R, M, args.new_tokens, False)
            graph = decode(dllm, verifier, prompts, R, M, args.new_tokens, True)[1] if device.type == "cuda" else None
            step = graph if graph is not None else eager
            peak = out.stats.get("peak_memory_bytes")
            row = dict(batch=B, kv_window=R, max_lookahead=M, dllm_forward_ms=fwd, dllm_floor_ms=floor,
                       step_eager_ms=eager, step_graph_ms=graph, graph_vs_forward=step / fwd,
                       achieved_gbps=(wd + wv) / (step * 1e-3) / 1e9, copy_gbps=copy_gbps,
                       projected_tokens_per_s=PAPER_TOKENS_PER_FORWARD * B / (step * 1e-3),
                       tokens_per_step=out.stats["tokens_per_step"],
                       peak_memory_gb=peak / 1e9 if peak else None)
            rows.append(row)
            print(f"  B={B} R={R} M={M}: dLLM forward {fwd:.2f} ms (floor {floor:.2f}, {fwd / floor:.2f}x); "
                  f"APD step eager {eager:.2f} ms" + (f", graph {graph:.2f} ms" if graph is not None else "")
                  + f" ({step / fwd:.2f}x the forward); {row['achieved_gbps']:.0f} GB/s of weights; "
                  f"projected {row['projected_tokens_per_s']:.0f} tok/s at {PAPER_TOKENS_PER_FORWARD} tok/forward",
                  flush=True)

    ar_prompts = torch.randint(0, vocab - 2, (1, PROMPT_LEN), generator=gen).to(device)
    ar_out, ar_ms = decode(dllm, ar_model, ar_prompts, None, None, args.ar_tokens, device.type == "cuda", "ar")
    print(f"  autoregressive decoding of the dLLM-sized model, B=1: {ar_ms:.2f} ms/token "
          f"({1e3 / ar_ms:.0f} tok/s; floor {wd / (copy_gbps * 1e9) * 1e3:.2f} ms)")

    columns = [(k, k) for k in ("batch", "kv_window", "max_lookahead", "dllm_forward_ms", "dllm_floor_ms",
                                "step_eager_ms", "step_graph_ms", "graph_vs_forward", "achieved_gbps",
                                "projected_tokens_per_s")]
    table = [{k: common.fmt(v) if isinstance(v, float) else "-" if v is None else v for k, v in r.items()}
             for r in rows]
    print(f"\n## {desc}; torch {torch.__version__}; {stamp}\n")
    print(common.markdown_table(table, columns))
    print(f"\nAR baseline: {ar_ms:.3g} ms/token; copy bandwidth {copy_gbps:.0f} GB/s")
    head = [r for r in rows if (r["batch"], r["kv_window"], r["max_lookahead"]) == (1, 16, 100)]
    if head:
        h = head[0]
        print(f"targets at B=1 (16, 100): step / forward = {h['graph_vs_forward']:.2f} (<= 1.3), "
              f"forward / floor = {h['dllm_forward_ms'] / h['dllm_floor_ms']:.2f} (<= 1.3)")

    result = dict(device=desc, timestamp=stamp, torch_version=torch.__version__, dtype=str(dtype),
                  dllm_weight_bytes=wd, verifier_weight_bytes=wv, copy_gbps=copy_gbps, ar_ms_per_token=ar_ms,
                  steps=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    for r in rows:
        r.update(device=desc, timestamp=stamp, torch_version=torch.__version__)
        for k, v in r.items():
            if isinstance(v, float):
                r[k] = f"{v:.6g}" if math.isfinite(v) else ""
    path = common.append_csv(args.csv, rows, CSV_FIELDS)
    print(f"{len(rows)} rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
