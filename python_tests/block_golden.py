"""Loaders for the golden data of the block-diffusion dLLMs and of Qwen3, written by their released
code (scripts/make_fastdllm_v2_golden.py, make_sdar_golden.py, make_qwen3_golden.py; what each file
holds is in those scripts' docstrings):

    python_tests/data/fastdllm_v2_tiny/  Fast-dLLM v2 ("Fast_dLLM_Qwen"): bd4/, bd8/
    python_tests/data/sdar_tiny/         SDAR ("sdar"): bs4/, bs8/
    python_tests/data/qwen3_tiny/        Qwen3 ("qwen3"): untied/, tied/

    checkpoint("sdar_tiny", "bs4")       -> Path of the checkpoint directory
    checkpoints("sdar_tiny")             -> {name: Path}
    reference("sdar_tiny")               -> (tensors, metadata) of reference.safetensors
    generate_cases("sdar_tiny", "bs4")   -> [GenCase(prompt, output, args, ...)] (block models)

A GenCase replays the released generate: Fast-dLLM v2's `model.generate(prompt[None], **args)`
(args: mask_id, threshold, small_block_size, block_size, max_new_tokens, stop_token, temperature 0,
top_p, use_block_cache) or SDAR's `block_diffusion_generate(model, {"input_ids": prompt[None]},
**args)` (args: mask_id, gen_length, block_length, denoising_steps, remasking_strategy,
confidence_threshold, stopping_criteria_idx, temperature 1.0 / top_k 0 / top_p 1.0 with the
multinomial draw replaced by the argmax: greedy). `output` is that call's return row as is:
Fast-dLLM v2's is the prompt and answer cut after the first stop token; SDAR's is the whole canvas
of ceil((P + gen_length) / bs) blocks (blocks after a stop stay mask tokens, the stopping block is
kept whole). `overwrites` (SDAR) lists [block, step, position, old, new] for tokens the released
topk rewrote (see make_sdar_golden.py); a replay that never rewrites a token differs there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

DATA = Path(__file__).resolve().parent / "data"
DATASETS = {"fastdllm_v2_tiny": ("bd4", "bd8"), "sdar_tiny": ("bs4", "bs8"), "qwen3_tiny": ("untied", "tied")}


@dataclass
class GenCase:
    index: int
    prompt: torch.Tensor  # int64 [P]
    output: torch.Tensor  # int64 [N]: the released generate's return row
    args: dict  # every argument of the released call (JSON types)
    commits: list  # per block, the tokens each denoising step committed
    margins: dict  # smallest argmax / threshold / ranking margins of the call's decisions
    overwrites: list = field(default_factory=list)  # SDAR: [block, step, position, old, new]

    @property
    def stopped(self) -> bool:
        """Whether the stop / eos token occurs in the answer."""
        stops = self.args.get("stopping_criteria_idx") or [self.args.get("stop_token")]
        answer = self.output[len(self.prompt):].tolist()
        return any(s in answer for s in stops)


def checkpoint(dataset: str, name: str) -> Path:
    if name not in DATASETS[dataset]:
        raise KeyError(f"{dataset} has no checkpoint {name!r} ({DATASETS[dataset]})")
    return DATA / dataset / name


def checkpoints(dataset: str) -> dict[str, Path]:
    return {n: checkpoint(dataset, n) for n in DATASETS[dataset]}


_CACHE: dict = {}


def reference(dataset: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of `dataset`/reference.safetensors (read once per process)."""
    if dataset not in _CACHE:
        with safe_open(str(DATA / dataset / "reference.safetensors"), framework="pt") as f:
            _CACHE[dataset] = ({k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {}))
    return _CACHE[dataset]


def cached_prefix(dataset: str, name: str) -> int:
    """Block models: how many blocks the cached path prefilled (`cached_k`); Qwen3: how many
    tokens (`cached_len`)."""
    meta = reference(dataset)[1]
    return int(meta.get(f"{name}.cached_k", meta.get(f"{name}.cached_len")))


def generate_cases(dataset: str, name: str) -> list[GenCase]:
    tensors, meta = reference(dataset)
    out, i = [], 0
    while f"{name}.gen.{i}.prompt" in tensors:
        p = f"{name}.gen.{i}."
        out.append(GenCase(i, tensors[p + "prompt"], tensors[p + "output"], json.loads(meta[p + "args"]),
                           json.loads(meta[p + "commits"]), json.loads(meta[p + "margins"]),
                           json.loads(meta.get(p + "overwrites", "[]"))))
        i += 1
    return out
