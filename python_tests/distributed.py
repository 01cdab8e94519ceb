"""Run a function in `world` processes of one gloo process group on CPU (tensor-parallel tests;
NCCL on GPUs with backend="nccl").

    results = run_ranks(_my_rank_fn, 2, arg1, arg2)   # [rank 0's return, rank 1's return]

`fn` must be a module-level function (it is pickled into spawned processes); it is called as
fn(tp, *args) with tp the rank's apd_ext.parallel.TensorParallel, one torch thread per process. A
rank that raises makes run_ranks raise RankFailed with every rank's error text; a run that does not
finish within `timeout` seconds (a hang) is killed and reported as such.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import time
import traceback
from datetime import timedelta

import torch.multiprocessing as mp


class RankFailed(AssertionError):
    """One or more ranks raised; .errors maps rank -> (exception type name, message, traceback)."""

    def __init__(self, errors: dict):
        self.errors = errors
        text = "\n".join(f"rank {r}: {t}: {m}\n{tb}" for r, (t, m, tb) in sorted(errors.items()))
        super().__init__(f"{len(errors)} rank(s) failed:\n{text}")


def _entry(rank: int, world: int, port: int, outdir: str, backend: str, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from apd_ext.parallel import TensorParallel

    result = None
    try:
        # the parent's store, bound before the ranks start: no free port to race for with other runs
        store = dist.TCPStore("127.0.0.1", port, world + 1, is_master=False, timeout=timedelta(seconds=120))
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=120),
                                device_id=device if device.type == "cuda" else None)
        tp = TensorParallel.init(device=device)
        result = ("ok", fn(tp, *args))
    except BaseException as e:  # reported to the parent, which raises RankFailed
        result = ("error", (type(e).__name__, str(e), traceback.format_exc()))
    finally:
        with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
        sys.stdout.flush()
        sys.stderr.flush()
        # No teardown: gloo's threads, torn down while a peer is exiting too, sometimes abort the
        # process (std::terminate) after its result is written; that is no test's business.
        os._exit(0)


def run_ranks(fn, world: int = 2, *args, timeout: float = 300.0, backend: str = "gloo") -> list:
    """[fn(tp, *args) of rank 0, ..., of rank world-1]; RankFailed when any rank raised.
    backend "nccl": rank r runs on cuda:r (a GPU machine's check)."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, world + 1, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=120))  # port 0: the OS picks one, held until the end
    with tempfile.TemporaryDirectory() as outdir:
        ctx = mp.start_processes(_entry, args=(world, store.port, outdir, backend, fn, args), nprocs=world, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise AssertionError(f"ranks did not finish within {timeout:.0f} s (a hang)")
        results, errors = [], {}
        for r in range(world):
            with open(os.path.join(outdir, f"rank{r}.pkl"), "rb") as f:
                status, value = pickle.load(f)
            if status == "error":
                errors[r] = value
            results.append(value)
        if errors:
            raise RankFailed(errors)
        return results
