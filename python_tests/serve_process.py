"""A real `python -m apd_ext serve` process for tests: started on 127.0.0.1 with an OS-chosen port
(read from its `listening on` line), one torch thread, its stderr kept in a file for failure
messages, and always killed at the end.

    with ServeProcess(["--max-batch-size", "1"]) as server:
        httpx.get(server.url + "/health")
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"^apd_ext serve: listening on (http://127\.0\.0\.1:(\d+))$")


class ServeProcess:
    """One server process. start() waits (at most `startup_s`) for its `listening on` line;
    url: http://127.0.0.1:PORT; stop() kills it if it still runs. env: extra environment."""

    def __init__(self, args=(), env: dict | None = None, startup_s: float = 120.0, tp: int = 1):
        self.args = ["--host", "127.0.0.1", "--port", "0", "--threads", "1", *map(str, args)]
        self.launcher = [sys.executable, "-m", "apd_ext", "serve"]
        if tp > 1:  # under torchrun: rank 0 serves HTTP
            self.launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(tp), "-m", "apd_ext", "serve", "--tp", str(tp)]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.startup_s = startup_s
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self._lines: queue.Queue = queue.Queue()
        self._stderr = tempfile.TemporaryFile()

    def start(self) -> "ServeProcess":
        self.proc = subprocess.Popen([*self.launcher, *self.args], cwd=ROOT, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        return self

    def wait_ready(self) -> "ServeProcess":
        deadline = time.monotonic() + self.startup_s
        while self.url is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise TimeoutError(f"the server did not start in {self.startup_s} s: {self.stderr()}")
            try:
                line = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.stderr()}") from None
                continue
            if line is None:
                raise RuntimeError(f"the server exited ({self.proc.wait(10)}): {self.stderr()}")
            m = LISTENING.match(line.rstrip("\n"))
            if m:
                self.url = m.group(1)
        return self

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stdout_lines(self) -> list[str]:
        """The stdout lines read since the `listening on` line (non-blocking)."""
        out = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return out
            if line is not None:
                out.append(line)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def terminate(self) -> None:
        """SIGTERM (the server drains, then exits)."""
        self.proc.send_signal(signal.SIGTERM)

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

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> "ServeProcess":
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
