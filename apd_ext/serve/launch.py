"""A `python -m apd_ext serve` process started from Python (scripts, tests, benchmarks): it reads the
server's `listening on` line for its URL (so `--port 0` works), keeps its stderr for error messages,
and is always killed by stop().

    with ServerProcess(["--host", "127.0.0.1", "--port", "0", "--max-batch-size", "8"]) as server:
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

LISTENING = re.compile(r"^apd_ext serve: listening on (http://\S+)\s*$")


class ServerProcess:
    """One server process running `launcher + args` (launcher default: this Python's
    `-m apd_ext serve`) with `env` (default: this process's), in `cwd`. start() launches it;
    wait_ready() waits at most `startup_s` for its `listening on` line and sets `url`."""

    def __init__(self, args=(), *, launcher=None, env: dict | None = None, cwd=None, startup_s: float = 120.0):
        self.launcher = list(launcher or [sys.executable, "-m", "apd_ext", "serve"])
        self.args = [str(a) for a in args]
        self.env = dict(os.environ if env is None else env)
        self.cwd, self.startup_s = cwd, startup_s
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self._lines: queue.Queue = queue.Queue()
        self._stderr = tempfile.TemporaryFile()

    @property
    def command(self) -> list[str]:
        return [*self.launcher, *self.args]

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        return self

    def wait_ready(self) -> "ServerProcess":
        """Wait for the `listening on` line (TimeoutError past startup_s, the process then killed;
        RuntimeError when it exits first, with its stderr)."""
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
            m = LISTENING.match(line)
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
        """The last 4000 characters of its stderr."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def terminate(self) -> None:
        """SIGTERM (the server drains, then exits)."""
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Kill it if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> "ServerProcess":
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
