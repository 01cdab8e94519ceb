"""--tp N: a command's models sharded over N processes, one per rank, launched by torchrun
(apd_ext.parallel). Every rank runs the same command with the same arguments; rank 0 prints.

    torchrun --nproc-per-node 2 -m apd_ext generate --tp 2 --prompt "..."
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m apd_ext generate --tp 16 --dllm DIR --verifier DIR --vocab-size 151936 --prompt "..."
"""

from __future__ import annotations

import os
import sys

import torch

from apd_ext.cli import common
from apd_ext.cli.common import CliError, positive_int

VERIFIER_MODES = {"auto": None, "replicate": True, "shard": False}


def add_tp(p) -> None:
    g = p.add_argument_group("tensor parallelism (under torchrun)")
    g.add_argument("--tp", type=positive_int, default=1,
                   help="ranks sharing the models; launch with `torchrun --nproc-per-node N -m apd_ext "
                        "<command> --tp N` (default 1: no torchrun)")
    g.add_argument("--verifier-tp", choices=list(VERIFIER_MODES), default="auto",
                   help="with --tp: replicate the verifier's body on every rank or shard it like the dLLM "
                        "(auto: replicate a verifier under 1.5B parameters)")


def env_int(name: str, default: int, low: int) -> int:
    """The environment variable `name` as torchrun sets it (an integer >= low; `default` when
    unset); CliError naming it and its value when it is not one (set by hand, or left empty)."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise CliError(f"{name}={text!r} is not an integer >= {low} (torchrun sets it); unset it to run one process")
    return value


def setup(args, device: torch.device):
    """The TensorParallel group of --tp N (None for --tp 1), after checking that torchrun started N
    processes; the rank's device (cuda:LOCAL_RANK for a CUDA --device). Ranks other than 0 stop
    printing to stdout."""
    world = env_int("WORLD_SIZE", 1, 1)
    if args.tp == 1:
        if world > 1:
            raise CliError(f"torchrun started {world} processes but --tp is 1: pass --tp {world}")
        return None
    if world != args.tp:
        started = f"WORLD_SIZE is {world}" if "WORLD_SIZE" in os.environ else "not under torchrun"
        raise CliError(f"--tp {args.tp} runs one process per rank: launch with `torchrun --nproc-per-node "
                       f"{args.tp} -m apd_ext {args.command} --tp {args.tp} ...` ({started})")
    from apd_ext.parallel import TensorParallel

    if device.type == "cuda":
        local = env_int("LOCAL_RANK", 0, 0)
        if local >= torch.cuda.device_count():
            raise CliError(f"LOCAL_RANK {local}: this node has {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", local)
    tp = TensorParallel.init(device=device)
    common.RANK = tp.rank
    if tp.rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return tp

