"""A real `python -m apd_ext serve` process for tests: started on 127.0.0.1 with an OS-chosen port
(read from its `listening on` line), one torch thread, its stderr kept in a file for failure
messages, and always killed at the end.

    with ServeProcess(["--max-batch-size", "1"]) as server:
        httpx.get(server.url + "/health")
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from apd_ext.serve.launch import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


class ServeProcess(ServerProcess):
    """One server process on 127.0.0.1, port 0, one torch thread (OMP_NUM_THREADS=1 too); tp > 1:
    under torchrun, rank 0 serving HTTP. env: extra environment."""

    def __init__(self, args=(), env: dict | None = None, startup_s: float = 120.0, tp: int = 1):
        launcher = None
        if tp > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(tp),
                        "-m", "apd_ext", "serve", "--tp", str(tp)]
        super().__init__(["--host", "127.0.0.1", "--port", "0", "--threads", "1", *args], launcher=launcher,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
                         cwd=ROOT, startup_s=startup_s)

    def rank_pid(self, rank: int) -> int:
        """Under torchrun: the pid of the worker of `rank` (a child whose environment has RANK)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        raise LookupError(f"no rank {rank} worker under pid {self.proc.pid}")
