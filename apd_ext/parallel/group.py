"""The tensor-parallel group: which ranks share a model, and the few collectives apd_ext uses.

Everything goes through torch.distributed (NCCL on GPUs, gloo on CPUs), launched by torchrun; the
collectives are the functional ones (torch.distributed._functional_collectives), which run eagerly,
trace under torch.compile and are captured in CUDA graphs with NCCL. There is no other
communication layer.

    tp = TensorParallel.init()      # under torchrun: one process per rank
    dllm = DllmRunner.from_pretrained(path, device=tp.device, tp=tp)
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol


# all_gather_single replaces all_gather_tensor in newer torch (same signature)
_all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor


def _waited(out: torch.Tensor) -> torch.Tensor:
    return funcol.wait_tensor(out) if isinstance(out, funcol.AsyncCollectiveTensor) else out


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class TensorParallelError(RuntimeError):
    """A failure on one or more ranks, raised identically on every rank (check_all)."""


@dataclass(frozen=True, eq=False)
class TensorParallel:
    """rank of world processes sharding one model pair; group: their process group; device: this
    rank's device (cuda:LOCAL_RANK on GPUs, cpu otherwise)."""

    group: dist.ProcessGroup
    rank: int
    world: int
    device: torch.device

    @classmethod
    def init(cls, backend: str | None = None, device: str | torch.device | None = None,
             timeout_s: float = 600.0) -> "TensorParallel":
        """Join (or create) the default process group from torchrun's environment (RANK,
        WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and return the group of all its ranks.

        backend: "nccl" or "gloo" (default: nccl when the device is CUDA, else gloo). device:
        default cuda:LOCAL_RANK when CUDA is available, else cpu. A collective that waits longer
        than timeout_s (a rank that died) raises instead of hanging.
        """
        if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
            raise TensorParallelError(
                "tensor parallelism needs one process per rank: launch with "
                "`torchrun --nproc-per-node N -m apd_ext ... --tp N` (WORLD_SIZE is not set)")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = backend or ("nccl" if device.type == "cuda" else "gloo")
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                    device_id=device if device.type == "cuda" else None)
            # torn down before the interpreter's own teardown: gloo's threads, left to static
            # destructors, have aborted a finished process (std::terminate) now and then
            atexit.register(_destroy)
        return cls(dist.group.WORLD, dist.get_rank(), dist.get_world_size(), device)

    # --- collectives (every rank calls them in the same order) ----------------------------------

    def all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """A new tensor: x reduced over the ranks ("sum", "max", "min"), waited for (no collective
        is left pending when the process ends)."""
        return _waited(funcol.all_reduce(x, op, self.group))

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """[world, *x.shape]: every rank's x, in rank order."""
        return _waited(_all_gather(x.contiguous().unsqueeze(0), 0, self.group))

    def check_all(self, error: BaseException | None, what: str) -> None:
        """Call on every rank after work that may fail on some ranks only (loading a shard, a
        missing file): raises the same TensorParallelError on every rank when any rank failed,
        naming the ranks and their errors, instead of leaving the others to hang in their next
        collective. No-op when every rank succeeded."""
        msgs: list = [None] * self.world
        mine = None if error is None else f"{type(error).__name__}: {error}"
        dist.all_gather_object(msgs, mine, group=self.group)
        failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
        if failed:
            lines = "; ".join(f"rank {r}: {m}" for r, m in failed)
            raise TensorParallelError(f"{what} failed on {len(failed)} of {self.world} ranks ({lines})") from error

    def barrier(self) -> None:
        dist.barrier(group=self.group)
