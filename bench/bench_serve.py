"""Serving benchmark: bounded load on a real `python -m apd_ext serve` process through the official
`openai` client, against in-process `apd_ext.generate` baselines on the same requests.

    PYTHONPATH=. python bench/bench_serve.py [--num-requests 128] [--concurrency 1,4,8,16] [--rates 0.5,1,2]
        [--max-batch-size 8] [--context-lengths default,128] [--policy apd] [--threads 1] [--out DIR] [--quick]

Requests: the first --num-requests held-out problems of the bundled tiny task (task.eval_problems(
--eval-seed, N)), in that order, each asking for max_tokens = 64 (the task's answer region), request i
with seed --seed + i and the server's default sampling knobs (those of --policy: greedy unless the
spec names a temperature). The server gets the prompt text and tokenises it with the same tokenizer
the baselines encode with.

In one run, in this order (the machine is the same for all, and so are the torch threads: --threads
in this process, `--threads` and OMP_NUM_THREADS=--threads in the server's):
1. Baseline "sequential": one `generate` call per request, one after another, in this process.
2. Baseline "static" at each concurrency c > 1: the requests in consecutive batches of c, one
   `generate` call per batch (a list of c prompts, per-row seeds); a batch ends when its longest row
   ends, and the next one starts then. (c = 1 is the sequential baseline.)
3. For each --context-lengths entry ("default": the server's own, the models' maximum length): one
   server process (127.0.0.1, a port the OS picks, read from its `listening on` line), warmed up
   with a few requests, then
   - closed loop at each concurrency c: c workers, each sending its next request when its previous
     one has finished, until all N were sent;
   - open loop, Poisson arrivals at each rate multiplier r: requests sent at exponential
     inter-arrival times of mean 1 / (r x the sequential baseline's requests/s), whatever is in
     flight;
   then the process is killed. Every request streams (stream=true, stream_options.include_usage).
4. The sequential baseline again ("sequential-recheck", not with --quick): on a shared machine
   the load drifts over the minutes of a run; this row says by how much (the ratios stay against
   the first sequential figure).
Each run is bounded: --run-timeout-s (then what is in flight is cancelled and counted as errors),
and each request has the client's timeout.

Figures per run (one CSV / JSON row each):
  output_tok_s    output tokens / duration; duration = from the first request sent to the last one
                  finished. Output tokens are counted the same way everywhere: each answer's tokens
                  up to and EXCLUDING its first EOS (the server's usage.completion_tokens; in-process,
                  the tokens before the first EOS of generate's output).
  req_s           completed requests / duration.
  ttft            time to first token: request sent -> first chunk carrying text (in-process: the
                  call's start -> the first step that committed a token of that row, through
                  generate's `stream` callback).
  itl             inter-token latency PER CHUNK: the time between consecutive chunks carrying text
                  of one request, pooled over requests (not divided by the chunk's tokens: APD
                  commits several tokens per step, and the server sends one chunk per step that
                  produced text; in-process: between consecutive steps that committed tokens of the
                  row).
  tpot            time per output token after the first chunk, per request: (last chunk - first
                  chunk) / (tokens - 1), the usual TPOT.
  e2e             request sent -> last chunk ([DONE]); in-process: the call's start -> its return
                  (a static batch's rows all return with the batch).
  p50 / p99       of each, linear interpolation over the requests (over the chunks for itl).
  vs_sequential   output_tok_s / the sequential baseline's; vs_static: / the static baseline's at
                  the same concurrency (closed-loop rows).
  mismatches      requests whose text differs from the sequential baseline's (tokens for the
                  static baseline): 0 expected for greedy and seeded requests alike (the engine's
                  requests equal generate alone), a correctness check, not a timing one.
  forwards        decoding forwards of the run: the engine's (joining forwards + steady steps,
                  /health deltas); in-process, generate's steps (step 0 included). Each runs the
                  dLLM (and the verifier) over all the rows of its batch or slot bucket, so
                  tokens_per_forward = output tokens / forwards is the batching's yield.
  engine_*        deltas of the server's counters over the run (/health: requests admitted (joins),
                  steady steps; join forwards = forwards - steady steps; /metrics: apd_step_seconds
                  sum = time in forwards): engine_forward_ms (mean) and engine_busy = time in
                  forwards / duration say where the time goes.
Engine probe (before the server runs; --no-probe skips it): an Engine in this process, at 1 and
--max-batch-size slots and each context length, given 1 and then as many requests as it has slots
at once; the median time of its joining forward and of its steady step (engine_probe.csv).

Targets (printed, never asserted): at concurrency 8, the server's output tokens/s >= 2.5x the
sequential calls' and >= the static batches'.

Output (--out DIR, default bench/results/serve_cpu; --quick: bench/results/serve_cpu_quick.tmp,
git-ignored): serve_cpu.csv and serve_cpu.json (the rows, the run's settings, machine and commit,
the engine probe, and per request of each run: its times in ms from the run's first request sent,
tokens, text, in-process token ids, error), serve_cpu.png (latency vs throughput; --replot redraws
it from the JSON), serve_cpu.log (the printout), engine_probe.csv. The CSV and JSON are replaced,
not appended to, rewritten after every run, so a killed benchmark keeps what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

import common

try:
    import apd_ext
    from apd_ext.serve.launch import ServerProcess
    from apd_ext.tiny import evaluate as ev, task
except ModuleNotFoundError as e:
    if e.name != "apd_ext":
        raise
    sys.exit("apd_ext is not importable: run from the repository root with PYTHONPATH=.")

ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = ev.TASK_CONFIG.max_new_tokens
TARGET_CONCURRENCY, TARGET_VS_SEQUENTIAL = 8, 2.5
STAT_KEYS = ("ttft", "itl", "tpot", "e2e")
KEEPALIVE_S = 2.0  # the client's idle-connection expiry, under the server's 5 s keep-alive
COLUMNS = ("run", "mode", "concurrency", "rate_x", "rate_rps", "context_length", "max_batch_size", "policy",
           "num_requests", "completed", "errors", "output_tokens", "duration_s", "output_tok_s", "req_s",
           *(f"{k}_{q}_ms" for k in STAT_KEYS for q in ("p50", "p99")),
           "vs_sequential", "vs_static", "mismatches", "forwards", "tokens_per_forward", "engine_join_forwards",
           "engine_joins", "engine_steps",
           "engine_forward_ms", "engine_busy", "threads", "loadavg_1m", "machine",
           "apd_ext_commit", "timestamp")


# --- requests and their records --------------------------------------------------------------------

@dataclass
class Req:
    index: int
    prompt: str
    ids: list[int]
    seed: int


@dataclass
class Record:
    """One request's timeline (perf_counter seconds) and result."""

    index: int
    sent: float = 0.0
    chunks: list[float] = field(default_factory=list)  # arrival of each chunk carrying text
    done: float | None = None
    tokens: int = 0
    text: str = ""
    token_ids: list[int] | None = None
    error: str | None = None


def build_requests(n: int, eval_seed: int, seed: int, tok) -> list[Req]:
    return [Req(i, p.prompt, tok.encode(p.prompt), seed + i) for i, p in enumerate(task.eval_problems(eval_seed, n))]


def pct(values, q: float) -> float | None:
    """q-th percentile (0-100), linear interpolation; None for no values."""
    s = sorted(values)
    if not s:
        return None
    x = (len(s) - 1) * q / 100
    lo = int(x)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (x - lo)


def summarize(records: list[Record]) -> dict:
    """The run's figures (module docstring) from its requests' records."""
    ok = [r for r in records if r.error is None and r.done is not None]
    out = dict(num_requests=len(records), completed=len(ok), errors=len(records) - len(ok),
               output_tokens=sum(r.tokens for r in ok))
    if not ok:
        return out
    duration = max(r.done for r in ok) - min(r.sent for r in records)
    out.update(duration_s=duration, output_tok_s=out["output_tokens"] / duration, req_s=len(ok) / duration)
    samples = dict(
        ttft=[r.chunks[0] - r.sent for r in ok if r.chunks],
        itl=[b - a for r in ok for a, b in zip(r.chunks, r.chunks[1:])],
        tpot=[(r.chunks[-1] - r.chunks[0]) / (r.tokens - 1) for r in ok if r.chunks and r.tokens > 1],
        e2e=[r.done - r.sent for r in ok])
    for k, v in samples.items():
        for q in (50, 99):
            p = pct(v, q)
            out[f"{k}_p{q}_ms"] = None if p is None else p * 1e3
    return out


# --- in-process baselines -------------------------------------------------------------------------

class InProcess:
    """generate on the bundled pair in this process: one call per batch of requests."""

    def __init__(self, pair, cfg):
        self.pair, self.cfg = pair, cfg
        self.forwards = 0  # decoding steps (each one forward over the call's rows) of the timed calls
        kw = pair.generate_kwargs() if hasattr(pair, "generate_kwargs") else {}
        self.kw = kw
        eos = kw.get("eos_token_id", pair.tok.eos_id)
        self.eos = set([eos] if isinstance(eos, int) else eos)

    def _answer(self, toks: list[int]) -> list[int]:
        cut = next((i for i, t in enumerate(toks) if t in self.eos), len(toks))
        return toks[:cut]

    def batch(self, reqs: list[Req]) -> list[Record]:
        """One generate call over reqs (their prompts and seeds); each row's record."""
        recs = [Record(r.index) for r in reqs]
        ended = [False] * len(reqs)

        def on_step(rows: list[list[int]]) -> None:
            now = time.perf_counter()
            for b, toks in enumerate(rows):
                if ended[b] or not toks:
                    continue
                keep = self._answer(toks)
                if len(keep) < len(toks):
                    ended[b] = True
                if keep:
                    recs[b].chunks.append(now)

        t0 = time.perf_counter()
        out = apd_ext.generate(self.pair.dllm, self.pair.verifier, [r.ids for r in reqs], self.cfg,
                               seed=[r.seed for r in reqs], stream=on_step, **self.kw)
        t1 = time.perf_counter()
        self.forwards += int(out.stats["steps"])
        for b, (r, rec) in enumerate(zip(reqs, recs)):
            n, p = int(out.num_generated[b]), len(r.ids)
            ids = self._answer(out.sequences[b, p: p + n].tolist())
            rec.sent, rec.done, rec.tokens, rec.token_ids = t0, t1, len(ids), ids
            rec.text = self.pair.tok.decode(ids)
        return recs

    def run(self, reqs: list[Req], size: int, deadline_s: float) -> list[Record]:
        """The requests in consecutive batches of `size`, after one untimed warm-up call of that size."""
        self.batch(reqs[:size])
        self.forwards = 0
        recs: list[Record] = []
        t_end = time.perf_counter() + deadline_s
        for i in range(0, len(reqs), size):
            if time.perf_counter() > t_end:
                recs += [Record(r.index, error="run timeout") for r in reqs[i:]]
                break
            recs += self.batch(reqs[i: i + size])
        return recs


# --- the server process -----------------------------------------------------------------------------

class Server(ServerProcess):
    """`python -m apd_ext serve` on 127.0.0.1 with an OS-chosen port; always killed by stop()."""

    def __init__(self, args, context_length: int | None):
        cmd = ["--host", "127.0.0.1", "--port", "0", "--threads", str(args.threads), "--max-batch-size",
               str(args.max_batch_size), "--max-queue", str(max(args.num_requests, 16)), "--policy", args.policy]
        if context_length is not None:
            cmd += ["--context-length", str(context_length)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        super().__init__(cmd, env=env, cwd=ROOT, startup_s=args.startup_timeout_s)

    def start(self) -> "Server":
        super().start()
        self.wait_ready()
        return self

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.read().decode()

    def counters(self) -> dict:
        """The engine's counters (/health) and the forwards' time (/metrics apd_step_seconds)."""
        out = dict(json.loads(self.get("/health")))
        text = self.get("/metrics")
        for name in ("sum", "count"):
            m = re.search(rf"^apd_step_seconds_{name} (\S+)$", text, re.M)
            out[f"step_seconds_{name}"] = float(m.group(1)) if m else 0.0
        return out


def engine_figures(before: dict, after: dict, summary: dict) -> dict:
    d = {k: after.get(k, 0) - before.get(k, 0) for k in ("forwards", "joins", "steps", "step_seconds_sum",
                                                         "step_seconds_count")}
    out = dict(forwards=d["forwards"], engine_join_forwards=d["forwards"] - d["steps"], engine_joins=d["joins"],
               engine_steps=d["steps"])
    if d["step_seconds_count"]:
        out["engine_forward_ms"] = d["step_seconds_sum"] / d["step_seconds_count"] * 1e3
    if summary.get("duration_s"):
        out["engine_busy"] = d["step_seconds_sum"] / summary["duration_s"]
    return out


def probe_engine(pair, cfg, reqs: list[Req], slots_list, contexts, repeats: int = 3) -> list[dict]:
    """Where a server's time goes, in this process (no HTTP): an Engine of each (slots, context
    length) is given `active` requests at once (1, and as many as it has slots), and its public
    step() is timed: a step that admits runs the joining forward then the steady step, each reported
    as its Events' step_time_s. Returns one row per (slots, L, active): the median join forward and
    steady step (ms) over `repeats` rounds, after one untimed round."""
    from apd_ext.serve import Engine, Request

    kw = pair.generate_kwargs() if hasattr(pair, "generate_kwargs") else {}
    rows = []
    for slots in slots_list:
        for L in contexts:
            eng = Engine(pair.dllm, pair.verifier, cfg, slots=slots, context_length=L, **kw)
            for active in sorted({1, slots}):
                joins, steady = [], []
                for rnd in range(repeats + 1):
                    for r in reqs[:active]:
                        eng.submit(Request(prompt=r.ids, max_tokens=MAX_TOKENS, seed=r.seed))
                    for _ in range(4 * MAX_TOKENS):
                        if eng.idle():
                            break
                        admitting = eng.stats()["queue_length"] > 0
                        times = list(dict.fromkeys(e.step_time_s for e in eng.step() if e.step_time_s > 0))
                        if rnd == 0 or not times:
                            continue
                        if admitting:
                            joins.append(times[0])
                            times = times[1:]
                        steady += times[-1:]
                rows.append(dict(slots=slots, context_length=eng.L, active=active,
                                 join_ms=(pct(joins, 50) or 0) * 1e3, steady_ms=(pct(steady, 50) or 0) * 1e3,
                                 steady_steps=len(steady)))
    return rows


# --- the client -----------------------------------------------------------------------------------------

class Client:
    """Streamed completions through openai.AsyncOpenAI; each request's Record."""

    def __init__(self, url: str, model: str, timeout_s: float):
        import httpx
        import openai

        # The server closes a connection idle for 5 s (uvicorn's timeout_keep_alive): a pooled
        # connection reused just then fails with a connection error before the request reaches the
        # server. The client drops its idle connections first (2 s), and nothing is retried
        # (max_retries=0): every failure is counted.
        http = openai.DefaultAsyncHttpxClient(timeout=timeout_s, limits=httpx.Limits(
            max_connections=1000, max_keepalive_connections=100, keepalive_expiry=KEEPALIVE_S))
        self.client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", timeout=timeout_s, max_retries=0,
                                         http_client=http)
        self.model = model

    async def one(self, r: Req) -> Record:
        rec = Record(r.index)
        parts: list[str] = []
        rec.sent = time.perf_counter()
        try:
            stream = await self.client.completions.create(
                model=self.model, prompt=r.prompt, max_tokens=MAX_TOKENS, seed=r.seed, stream=True,
                stream_options={"include_usage": True})
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.choices and chunk.choices[0].text:
                    rec.chunks.append(now)
                    parts.append(chunk.choices[0].text)
                if chunk.usage is not None:
                    rec.tokens = chunk.usage.completion_tokens
            rec.done = time.perf_counter()
        except asyncio.CancelledError:
            rec.error = "run timeout"
        except Exception as e:  # noqa: BLE001 - a failed request is counted, the run goes on
            rec.error = f"{type(e).__name__}: {e}"[:300]
        rec.text = "".join(parts)
        return rec

    async def closed(self, reqs: list[Req], workers: int, deadline_s: float) -> list[Record]:
        """`workers` loops, each sending the next unsent request when its previous one finished."""
        it = iter(reqs)
        recs: dict[int, Record] = {}
        current: dict[int, asyncio.Task] = {}

        async def worker() -> None:
            for r in it:
                task_ = asyncio.ensure_future(self.one(r))
                current[r.index] = task_
                recs[r.index] = await task_

        workers_ = [asyncio.ensure_future(worker()) for _ in range(workers)]
        await self._bounded(workers_, lambda: list(current.values()), deadline_s)
        for idx, t in current.items():
            if idx not in recs and t.done() and not t.cancelled():
                recs[idx] = t.result()
        return [recs.get(r.index) or Record(r.index, error="run timeout (not sent)") for r in reqs]

    async def poisson(self, reqs: list[Req], rate: float, seed: int, deadline_s: float) -> list[Record]:
        """Open loop: request k sent at the k-th arrival of a Poisson process of `rate` per second."""
        rng = random.Random(seed)
        t0, at = time.perf_counter(), 0.0
        tasks: list[asyncio.Task] = []

        async def send(r: Req, when: float) -> Record:
            await asyncio.sleep(max(0.0, t0 + when - time.perf_counter()))
            return await self.one(r)

        for r in reqs:
            tasks.append(asyncio.ensure_future(send(r, at)))
            at += rng.expovariate(rate)
        await self._bounded(tasks, lambda: tasks, deadline_s)
        return [t.result() if t.done() and not t.cancelled() else Record(r.index, error="run timeout")
                for r, t in zip(reqs, tasks)]

    @staticmethod
    async def _bounded(tasks, inflight, deadline_s: float) -> None:
        done, pending = await asyncio.wait(tasks, timeout=deadline_s)
        if pending:
            for t in list(pending) + list(inflight()):
                t.cancel()
            await asyncio.gather(*pending, *inflight(), return_exceptions=True)

    async def close(self) -> None:
        await self.client.close()


# --- the run -------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=128,
                   help="requests per run (default 128: the whole benchmark in about 12 minutes on the 2-core VM)")
    p.add_argument("--concurrency", default="1,4,8,16", help="closed-loop concurrencies (and static batch sizes)")
    p.add_argument("--rates", default="0.5,1,2",
                   help="Poisson arrival rates as multiples of the sequential baseline's requests/s ('' for none)")
    p.add_argument("--max-batch-size", type=int, default=8, help="the server's decoding slots (default 8)")
    p.add_argument("--context-lengths", default="default,128",
                   help="one server per entry: its --context-length, 'default' for the server's own "
                        "(the models' maximum length)")
    p.add_argument("--policy", default="apd", help="policy spec of the server and the baselines (default apd: "
                                                   "the library's defaults on the tiny task's config)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server (default 1)")
    p.add_argument("--eval-seed", type=int, default=0, help="task.eval_problems seed (default 0)")
    p.add_argument("--seed", type=int, default=0, help="request i has seed SEED + i (default 0)")
    p.add_argument("--warmup-requests", type=int, default=4, help="untimed requests to each new server")
    p.add_argument("--run-timeout-s", type=float, default=None, help="bound on one run (default 300; quick 60)")
    p.add_argument("--request-timeout-s", type=float, default=120.0, help="the client's timeout per request")
    p.add_argument("--startup-timeout-s", type=float, default=120.0, help="bound on the server's start")
    p.add_argument("--out", default=None, help="output directory (default bench/results/serve_cpu; "
                                               "--quick: bench/results/serve_cpu_quick.tmp)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--replot", action="store_true", help="only redraw DIR/serve_cpu.png from DIR/serve_cpu.json")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the in-process engine probe (join and steady step times at 1 and "
                        "--max-batch-size slots, each context length; on by default, off with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 6 requests, concurrency 1,2, rate 2, the default context length")
    a = p.parse_args(argv)
    if a.quick:
        a.num_requests = min(a.num_requests, 6)
        a.concurrency, a.rates, a.context_lengths = "1,2", "2", "default"
        a.warmup_requests = min(a.warmup_requests, 1)
        a.no_probe = True
    a.run_timeout_s = a.run_timeout_s or (60.0 if a.quick else 300.0)
    try:
        a.concurrency = sorted({int(c) for c in a.concurrency.split(",") if c.strip()})
        a.rates = [float(r) for r in a.rates.split(",") if r.strip()]
        a.context_lengths = [None if c.strip() == "default" else int(c) for c in a.context_lengths.split(",")
                             if c.strip()]
    except ValueError as e:
        p.error(f"bad list: {e}")
    if a.num_requests < 1 or not a.concurrency or min(a.concurrency) < 1 or any(r <= 0 for r in a.rates):
        p.error("--num-requests, --concurrency and --rates take positive values")
    a.out = Path(a.out) if a.out else common.RESULTS / ("serve_cpu_quick.tmp" if a.quick else "serve_cpu")
    return a


def git_commit() -> str:
    """HEAD's short hash (+ '.dirty' when tracked files differ from it)."""
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return head.stdout.strip() + (".dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Results:
    """The rows and per-request records, rewritten to CSV and JSON after every run."""

    def __init__(self, args, meta: dict):
        self.args, self.meta = args, meta
        self.rows: list[dict] = []
        self.requests: dict[str, list[dict]] = {}
        args.out.mkdir(parents=True, exist_ok=True)
        self.csv, self.json = args.out / "serve_cpu.csv", args.out / "serve_cpu.json"

    def add(self, row: dict, recs: list[Record]) -> None:
        self.rows.append(row)
        self.requests[row["run"]] = request_records(recs)
        self.write()

    def write(self) -> None:
        tmp = self.csv.with_name(self.csv.name + ".partial")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: _cell(r.get(k)) for k in COLUMNS})
        tmp.replace(self.csv)
        tmp = self.json.with_name(self.json.name + ".partial")
        tmp.write_text(dump_json(self.meta, self.rows, self.requests))
        tmp.replace(self.json)


def request_records(recs: list[Record]) -> list[dict]:
    """The JSON form of a run's requests: times in ms from the run's first request sent (rounded to
    the microsecond): sent_ms, chunks_ms (each chunk carrying text), done_ms."""
    t0 = min((r.sent for r in recs if r.sent), default=0.0)

    def ms(t):
        return None if t is None else round((t - t0) * 1e3, 3)

    return [dict(index=r.index, sent_ms=ms(r.sent) if r.sent else None, chunks_ms=[ms(t) for t in r.chunks],
                 done_ms=ms(r.done), tokens=r.tokens, text=r.text, token_ids=r.token_ids, error=r.error) for r in recs]


def dump_json(meta: dict, rows: list[dict], requests: dict) -> str:
    """meta and rows indented, one line per request record."""
    runs = ",\n".join(f" {json.dumps(name)}: [\n" + ",\n".join("  " + json.dumps(r) for r in recs) + "\n ]"
                      for name, recs in requests.items())
    return ("{\n\"meta\": " + json.dumps(meta, indent=1) + ",\n\"rows\": " + json.dumps(rows, indent=1)
            + ",\n\"requests\": {\n" + runs + "\n}\n}\n")


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def mismatches(recs: list[Record], reference: dict[int, Record], by_tokens: bool) -> int:
    n = 0
    for r in recs:
        ref = reference.get(r.index)
        if r.error is not None or ref is None:
            continue
        n += (r.token_ids != ref.token_ids) if by_tokens else (r.text != ref.text or r.tokens != ref.tokens)
    return n


def print_row(row: dict) -> None:
    f = common.fmt
    print(f"  {row['run']:<28} {f(row.get('output_tok_s')):>7} tok/s {f(row.get('req_s')):>6} req/s  "
          f"ttft p50/p99 {f(row.get('ttft_p50_ms'))}/{f(row.get('ttft_p99_ms'))} ms  "
          f"itl {f(row.get('itl_p50_ms'))}/{f(row.get('itl_p99_ms'))} ms  "
          f"e2e {f(row.get('e2e_p50_ms'))}/{f(row.get('e2e_p99_ms'))} ms  "
          f"vs seq {f(row.get('vs_sequential'))}"
          + (f" vs static {f(row['vs_static'])}" if row.get("vs_static") else "")
          + (f"  tok/fwd {f(row['tokens_per_forward'])} busy {f(row.get('engine_busy'))}"
             if row.get("tokens_per_forward") else "")
          + (f"  ERRORS {row['errors']}" if row.get("errors") else "")
          + (f"  MISMATCHES {row['mismatches']}" if row.get("mismatches") else ""), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        plot(json.loads((args.out / "serve_cpu.json").read_text())["rows"], args.out / "serve_cpu.png")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "serve_cpu.log").open("w")
    sys.stdout = common.Tee(sys.__stdout__, log)
    try:
        return _main(args)
    finally:
        sys.stdout = sys.__stdout__
        log.close()


def _main(args) -> int:
    torch.set_num_threads(args.threads)
    pair = ev.load_pair()
    cfg = ev.policy_config(args.policy)
    reqs = build_requests(args.num_requests, args.eval_seed, args.seed, pair.tok)
    load = os.getloadavg()[0]
    meta = dict(command="python bench/bench_serve.py " + " ".join(sys.argv[1:]), timestamp=common.timestamp(),
                machine=common.device_description("cpu"), threads=args.threads, apd_ext_commit=git_commit(),
                torch_version=torch.__version__, policy=args.policy, config=cfg.to_spec(),
                max_batch_size=args.max_batch_size, num_requests=args.num_requests, max_tokens=MAX_TOKENS,
                eval_seed=args.eval_seed, seed=args.seed, loadavg_1m_start=load,
                token_count="answer tokens up to and excluding the first EOS", itl="per chunk")
    common_cells = dict(policy=args.policy, max_batch_size=args.max_batch_size, threads=args.threads,
                        machine=meta["machine"], apd_ext_commit=meta["apd_ext_commit"])
    print(f"=== bench_serve {meta['timestamp']}: {' '.join(sys.argv[1:])}")
    print(f"machine: {meta['machine']}; torch {torch.__version__}; apd_ext {meta['apd_ext_commit']}")
    print(f"{len(reqs)} requests (tiny task, eval seed {args.eval_seed}), max_tokens {MAX_TOKENS}, policy "
          f"{cfg.to_spec()}; server slots {args.max_batch_size}; load average (1 min) {load:.2f}"
          + ("  WARNING: other work is running, timings will be noisy" if load > 0.5 else ""), flush=True)
    res = Results(args, meta)

    def add(run: str, mode: str, recs: list[Record], **cells) -> dict:
        row = dict(run=run, mode=mode, **common_cells, **cells, **summarize(recs), loadavg_1m=os.getloadavg()[0],
                   timestamp=common.timestamp())
        if row.get("forwards") and row.get("output_tokens"):
            row["tokens_per_forward"] = row["output_tokens"] / row["forwards"]
        if seq_row.get("output_tok_s") and row.get("output_tok_s"):
            row["vs_sequential"] = row["output_tok_s"] / seq_row["output_tok_s"]
        res.add(row, recs)
        print_row(row)
        return row

    # 1-2. in-process baselines
    base = InProcess(pair, cfg)
    print("in-process baselines (generate, no server):", flush=True)
    seq_row: dict = {}
    seq = base.run(reqs, 1, args.run_timeout_s)
    reference = {r.index: r for r in seq}
    seq_row = add("sequential", "sequential", seq, concurrency=1, mismatches=0, forwards=base.forwards)
    seq_row["vs_sequential"] = 1.0
    res.write()
    static = {1: seq_row}
    for c in args.concurrency:
        if c > 1:
            recs = base.run(reqs, c, args.run_timeout_s)
            static[c] = add(f"static c={c}", "static", recs, concurrency=c, forwards=base.forwards,
                            mismatches=mismatches(recs, reference, by_tokens=True))

    # where the server's time goes: its engine's forwards, timed in this process
    if not args.no_probe:
        probe = probe_engine(pair, cfg, reqs, sorted({1, args.max_batch_size}), args.context_lengths)
        res.meta["engine_probe"] = probe
        res.write()
        print("engine probe (in-process Engine, median ms of the joining forward and of the steady step):")
        f = common.fmt
        print(common.markdown_table([{k: f(v) if isinstance(v, float) else v for k, v in r.items()} for r in probe],
                                    [("slots", "slots"), ("context_length", "context length"),
                                     ("active", "requests in slots"), ("join_ms", "join forward ms"),
                                     ("steady_ms", "steady step ms"), ("steady_steps", "steady steps timed")]),
              flush=True)
        with (args.out / "engine_probe.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(probe[0]))
            w.writeheader()
            w.writerows(probe)

    # 3. the server
    seq_rps = seq_row.get("req_s") or 1.0
    for L in args.context_lengths:
        server = Server(args, L)
        try:
            server.start()
            health = json.loads(server.get("/health"))
            ctx = health.get("context_length", L)
            print(f"server (context length {ctx}{'' if L else ', its default'}): {' '.join(server.command[1:])} "
                  f"-> {server.url}", flush=True)
            model = json.loads(server.get("/v1/models"))["data"][0]["id"]
            asyncio.run(_serve_runs(args, server, model, reqs, reference, static, seq_rps, ctx, add))
        finally:
            server.stop()

    # the machine is shared: the sequential baseline again, to see how far the load drifted
    if not args.quick:
        again = base.run(reqs, 1, args.run_timeout_s)
        row = add("sequential (again, at the end)", "sequential-recheck", again, concurrency=1, forwards=base.forwards,
                  mismatches=mismatches(again, reference, by_tokens=True))
        print(f"drift: the sequential baseline measured {common.fmt(row.get('vs_sequential'))}x its first "
              f"figure at the end of the run (ratios above are against the first)", flush=True)

    # targets
    ok = True
    for row in res.rows:
        if row["mode"] == "server-closed" and row["concurrency"] == TARGET_CONCURRENCY:
            vs_seq, vs_static = row.get("vs_sequential") or 0, row.get("vs_static") or 0
            print(f"target at concurrency {TARGET_CONCURRENCY}, context length {row['context_length']}: "
                  f"{vs_seq:.2f}x the sequential calls (>= {TARGET_VS_SEQUENTIAL}: "
                  f"{'met' if vs_seq >= TARGET_VS_SEQUENTIAL else 'NOT met'}), {vs_static:.2f}x the static batches "
                  f"(>= 1: {'met' if vs_static >= 1 else 'NOT met'})")
    bad = [r["run"] for r in res.rows if r.get("mismatches") or r.get("errors")]
    if bad:
        ok = False
        print(f"ERRORS or MISMATCHES in: {', '.join(bad)}")
    _table(res.rows)
    if not args.no_plot:
        try:
            plot(res.rows, args.out / "serve_cpu.png")
        except ImportError as e:
            print(f"no plot: {e}")
    print(f"rows: {res.csv}, {res.json}")
    return 0 if ok else 1


async def _serve_runs(args, server: Server, model: str, reqs, reference, static, seq_rps, ctx, add) -> None:
    client = Client(server.url, model, args.request_timeout_s)
    try:
        warm = await client.closed(reqs[: args.warmup_requests], max(1, args.warmup_requests), args.run_timeout_s)
        if any(r.error for r in warm):
            raise RuntimeError(f"warm-up failed: {[r.error for r in warm if r.error][:1]}; {server.stderr()}")
        cells = dict(context_length=ctx)
        for c in args.concurrency:
            before = server.counters()
            recs = await client.closed(reqs, c, args.run_timeout_s)
            s = summarize(recs)
            eng = engine_figures(before, server.counters(), s)
            st = static.get(c, {}).get("output_tok_s")
            add(f"server c={c} L={ctx}", "server-closed", recs, concurrency=c, **cells, **eng,
                vs_static=(s["output_tok_s"] / st) if st and s.get("output_tok_s") else None,
                mismatches=mismatches(recs, reference, by_tokens=False))
        for x in args.rates:
            rate = x * seq_rps
            before = server.counters()
            recs = await client.poisson(reqs, rate, args.seed + int(x * 1000), args.run_timeout_s)
            eng = engine_figures(before, server.counters(), summarize(recs))
            add(f"server poisson {x:g}x L={ctx}", "server-poisson", recs, rate_x=x, rate_rps=rate, **cells, **eng,
                mismatches=mismatches(recs, reference, by_tokens=False))
    finally:
        await client.close()


def _table(rows: list[dict]) -> None:
    f = common.fmt
    cols = [("run", "run"), ("tok_s", "output tok/s"), ("req_s", "req/s"), ("ttft", "TTFT p50 / p99 ms"),
            ("itl", "ITL/chunk p50 / p99 ms"), ("tpot", "TPOT p50 / p99 ms"), ("e2e", "e2e p50 / p99 ms"),
            ("seq", "vs sequential"), ("static", "vs static"), ("tpf", "tok/forward"), ("busy", "engine busy")]
    out = []
    for r in rows:
        out.append(dict(run=r["run"], tok_s=f(r.get("output_tok_s")), req_s=f(r.get("req_s")),
                        seq=f(r.get("vs_sequential")), static=f(r.get("vs_static")),
                        tpf=f(r.get("tokens_per_forward")), busy=f(r.get("engine_busy")),
                        **{k: f"{f(r.get(f'{k}_p50_ms'))} / {f(r.get(f'{k}_p99_ms'))}" for k in STAT_KEYS}))
    print(common.markdown_table(out, cols))


def plot(rows: list[dict], path: Path) -> None:
    """Latency (TTFT p50, ITL p50) against output tokens/s: one marker per server run, the
    baselines' throughputs as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    server = [r for r in rows if r["mode"].startswith("server") and r.get("output_tok_s")]
    contexts = sorted({r["context_length"] for r in server})
    colors = dict(zip(contexts, ("tab:blue", "tab:orange", "tab:green", "tab:purple")))
    panels = ((axes[0], "ttft_p50_ms", "TTFT p50 (ms)"), (axes[1], "itl_p50_ms", "ITL p50 per chunk (ms)"))
    for ax, key, label in panels:
        for L in contexts:
            for mode, marker in (("server-closed", "o"), ("server-poisson", "^")):
                pts = [r for r in server if r["context_length"] == L and r["mode"] == mode and r.get(key)]
                if not pts:
                    continue
                ax.plot([r["output_tok_s"] for r in pts], [r[key] for r in pts], marker=marker, linestyle="-",
                        color=colors[L], label=f"server L={L}, " + ("closed loop" if mode == "server-closed"
                                                                  else "Poisson"))
                for r in pts:
                    tag = f"c={r['concurrency']}" if mode == "server-closed" else f"{r['rate_x']:g}x"
                    ax.annotate(tag, (r["output_tok_s"], r[key]), textcoords="offset points", xytext=(4, 4),
                                fontsize=8)
        for r in rows:
            if r["mode"] in ("sequential", "static") and r.get("output_tok_s"):
                seq = r["mode"] == "sequential"
                ax.axvline(r["output_tok_s"], color="black" if seq else "gray", linestyle="--" if seq else ":",
                           linewidth=1)
                ax.annotate("sequential" if seq else f"static {r['concurrency']}", (r["output_tok_s"], 0.01),
                            xycoords=("data", "axes fraction"), rotation=90, va="bottom", ha="right", fontsize=8)
                if r.get(key):  # the baseline's own latency (in-process, through generate's stream callback)
                    ax.plot([r["output_tok_s"]], [r[key]], marker="x", color="black" if seq else "gray",
                            linestyle="none", label=("in-process generate (x)" if seq else None))
        ax.set_xlim(left=0)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("apd_ext serve on the tiny pair: latency vs throughput (dashed: sequential generate, "
                 "dotted: static batches)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
