"""The serving engine: continuous batching of one decoding policy over a fixed number of slots.

    engine = Engine(dllm, verifier, DecodeConfig(max_new_tokens=256), slots=8)
    engine.start()                                   # the decoding loop, on its own thread
    rid = engine.submit(Request(prompt=ids, max_tokens=64, temperature=0.7, seed=1), on_event)
    engine.cancel(rid)                               # leaves at the next step boundary
    engine.shutdown(drain=True, timeout=30)

Layout. The runners' caches hold `slots` rows of `context_length` positions, allocated once. A
step runs on a shape (n, C): the first n slots, n a bucket (1, 2, 4, ..., slots) that holds every
busy slot, over a canvas of C positions, C a bucket (64, 128, ..., context_length) that holds every
busy row's prompt + max_tokens; the runners read the first n rows and C + 1 positions of their
caches (views of the same memory) and each shape has its own decoding State (decode/state.py), whose
rows move when the shape changes. So on CUDA the steady step is one captured graph per (slot
bucket, canvas bucket) (and per filter mix under tensor parallelism, as generate's), which joins and
leaves never recapture: they rewrite State rows in place, and a change of shape replays another
graph.

A step of the loop (`step()`, on the engine thread):
1. Cancellations take effect: a cancelled request leaves its slot (or the queue).
2. Admission: waiting requests, in arrival order, take the free slots. They run their first
   decoding step (the verifier's prompt pass and the step with first=True, exactly generate's
   step 0) together, in a staging State of their own rows with staging caches, whose rows are then
   copied into their slots: the rows already decoding are neither computed nor touched, and a join
   costs a forward over the joiners alone.
3. The steady step (first=False) runs over the slot bucket; finished rows leave, freeing their slot.
Each request's newly committed tokens are reported after each forward it took part in (`Event`).

Exactness. A request's tokens equal apd_ext.generate's on the same prompt, knobs and seed run
alone, whatever shares the batch and whenever it arrived: the rows of a step are independent
(per-row knobs, seeds and RNG offsets: each row's offset counts its own steps from its admission,
State.offset), a join is generate's step 0 for the joiners and touches no other row, and a longer
canvas or a larger window (the server's max_new_tokens bounds K) only pads shapes. Tokens, not
float bits: a different batch or canvas size may round logits differently in the last bits.

Idle slots. Requests take the lowest free slot, and steps run over the smallest slot bucket that
holds every busy slot, so slots past it cost nothing. A free slot inside the bucket is parked:
position 0, done, no window (valid 0); it keeps its share of the static-shape step, but every input
of it goes to the scratch slot, so it reads and writes no cache. The loop steps only while a request
is queued or running: an idle server does no work.

Tensor parallelism (runners loaded with tp=): every rank owns an Engine on the same arguments;
rank 0's loop broadcasts each step's plan (cancellations, admissions with their seeds) to the
others, whose `follow()` replays it, so every rank runs the same steps and collectives.

Policies: apd, dllm_fixed, threshold, ar, and on block-diffusion dLLMs fast_dllm_v2 and sdar (the context
and canvas buckets are whole blocks there; diffusion commits out of order over a fixed schedule
of the whole answer and is not served).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

import contextlib

from apd_ext.decode import graphs, inputs
from apd_ext.decode.config import DecodeConfig
from apd_ext.decode.stats import NO_CLOCK
from apd_ext.decode.steps import STEPS, make_step
from apd_ext.serve import shapes
from apd_ext.serve.request import EngineClosed, Event, QueueFull, Request, check as check_request, row_knobs, row_seed

SERVED_POLICIES = ("apd", "dllm_fixed", "threshold", "ar", "fast_dllm_v2", "sdar")
# the canvas when context_length is not given (at most the models' maximum): the runners' K/V caches
# hold slots x context positions, which a model's own maximum (Dream: 131072) would make huge
DEFAULT_CONTEXT = 4096


@dataclass
class _Entry:
    rid: int
    request: Request
    on_event: Callable[[Event], None] | None
    seed: int = 0
    slot: int = -1
    generated: int = 0


class Engine:
    """Continuous batching of `config.policy` over `slots` rows (see the module docstring).

    dllm, verifier: runners on one device (verifier None for dllm_fixed / threshold); config: the
    DecodeConfig of the shape knobs (kv_window, max_lookahead, k, threshold, block_length,
    authors_compat) and the default sampling knobs; its max_new_tokens caps a request's max_tokens
    and the window K. context_length: the canvas (prompt + max_tokens of any request; default the
    models' maximum length, at most DEFAULT_CONTEXT = 4096: the caches hold slots x context positions).
    vocab_size, eos_token_id, backend, cuda_graphs: as apd_ext.generate's.
    max_queue: requests that may wait for a slot (submit raises QueueFull past it).
    fault_seed: debugging aid (also APD_EXT_SERVE_FAULT_SEED): a request with this seed fails at
    admission, to check that a failure stays with its request.

    The engine sets the runners' caches up for its slots and context and narrows them for each
    forward (their caches, cache sizes and RoPE tables): nothing else (apd_ext.generate included)
    may run on the same runner objects during a step; between steps generate may (it sets them up
    for its own shapes, and the engine's next forward sets its own again)."""

    def __init__(self, dllm, verifier, config: DecodeConfig | None = None, *, slots: int = 8,
                 context_length: int | None = None, vocab_size: int | None = None, eos_token_id=None,
                 backend: str = "auto", cuda_graphs: bool | None = None, max_queue: int = 256,
                 fault_seed: int | None = None):
        cfg = config or DecodeConfig()
        if cfg.policy not in SERVED_POLICIES:
            raise ValueError(f"policy {cfg.policy} is not served (the engine serves {', '.join(SERVED_POLICIES)}: "
                             f"diffusion commits out of order over a schedule of the whole answer)")
        for name, value, low in (("slots", slots, 1), ("max_queue", max_queue, 0)):
            if type(value) is not int or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        inputs.check_runners(dllm, verifier, cfg.policy)
        self.dllm, self.verifier = dllm, verifier
        self.vocab = inputs.shared_vocab(dllm, verifier, vocab_size)
        self.parallel = inputs.tensor_parallel(dllm, verifier, self.vocab)
        models = [dllm] if verifier is None else [dllm, verifier]
        limit = min(m.config.max_position_embeddings for m in models)
        L = min(limit, DEFAULT_CONTEXT) if context_length is None else context_length
        if type(L) is not int or not 2 <= L <= limit:
            raise ValueError(f"context_length must be an integer in [2, {limit}] (the models' maximum length), "
                             f"got {context_length!r}")
        self.block = getattr(dllm, "block_size", None)  # a block-diffusion dLLM: whole blocks of context
        if self.block is not None and L % self.block:
            if context_length is not None:
                raise ValueError(f"context_length {L} must be a multiple of the dLLM's block size {self.block}")
            L -= L % self.block
        self.L, self.slots, self.max_queue = L, slots, max_queue
        self.config = cfg.replace(max_new_tokens=min(cfg.max_new_tokens, L - 1))
        self.kind = STEPS[cfg.policy]
        self.eos = inputs.eos_ids(dllm, verifier, eos_token_id,
                                  both_models=bool(self.kind.dllm_forwards and self.kind.verifier_forwards))
        self.backend = backend
        self.device = dllm.device
        self._steps: dict = {}
        step = self._step_for((False, False), canvas=L)
        for runner in graphs.used_runners(dllm, verifier, step):
            runner.setup(slots, L)
        self._full = {r: shapes.CacheView(r) for r in graphs.used_runners(dllm, verifier, step)}
        # the shapes the steps run on: the first n slots (a bucket >= the highest busy slot + 1) of a
        # canvas of C positions (a bucket >= every busy row's prompt + max_tokens)
        self.buckets, self.canvases = shapes.slot_buckets(slots), shapes.canvas_buckets(L, self.block)
        self._states: dict = {}
        self._staging: dict = {}  # runner -> {rows: [(k, v) per layer]}: the joins' caches
        self._n, self._C = self.buckets[0], self.canvases[0]
        self.graphed = graphs.use_graphs(cuda_graphs, self.device, None, step, dllm, verifier)
        self._graphs: dict = {}
        env = os.environ.get("APD_EXT_SERVE_FAULT_SEED")
        self.fault_seed = fault_seed if fault_seed is not None else (int(env) if env else None)
        # host side
        self._cv = threading.Condition()
        self._waiting: deque[_Entry] = deque()
        self._running: dict[int, _Entry] = {}  # slot -> entry
        self._by_id: dict[int, _Entry] = {}
        self._cancels: set[int] = set()
        self._finished_slots: list[int] = []  # slots whose request ended: parked by the next plan
        self._next_id = 0
        self._closed = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self._released = False
        self.counters = dict(steps=0, joins=0, forwards=0, generated_tokens=0, finished=0, captures=0)
        self.last_error: BaseException | None = None

    # ---- requests (any thread) ------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Raise RequestError(field, message) when the engine cannot take `request`."""
        self._resolve(request)

    def submit(self, request: Request, on_event: Callable[[Event], None] | None = None) -> int:
        """Queue `request` (checked first: RequestError); returns its id. on_event(Event) is called on
        the engine thread after each forward the request takes part in, the last one with a
        finish_reason. Raises QueueFull when max_queue requests wait, EngineClosed after shutdown."""
        seed = self._resolve(request)
        with self._cv:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (max_queue {self.max_queue})")
            rid = self._next_id
            self._next_id += 1
            entry = _Entry(rid, request, on_event, seed)
            self._waiting.append(entry)
            self._by_id[rid] = entry
            self._cv.notify_all()
        return rid

    def cancel(self, request_id: int) -> None:
        """Cancel a queued or running request (no-op once it finished): it leaves at the next step
        boundary with finish_reason "cancelled", freeing its slot."""
        with self._cv:
            if request_id in self._by_id:
                self._cancels.add(request_id)
                self._cv.notify_all()

    def stats(self) -> dict:
        """queue_length, running, slots, closed and the counters (steps, joins, forwards,
        generated_tokens, finished)."""
        with self._cv:
            return dict(queue_length=len(self._waiting), running=len(self._running), slots=self.slots,
                        closed=self._closed, context_length=self.L, policy=self.config.policy, **self.counters)

    # ---- the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop on a daemon thread (steps while a request is queued or running)."""
        if self._thread is not None:
            raise RuntimeError("the engine is already started")
        self._thread = threading.Thread(target=self._loop, name="apd_ext-engine", daemon=True)
        self._thread.start()

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop taking requests; with drain, queued and running requests finish first (within
        `timeout` seconds, after which the rest are cancelled), else all are cancelled. Returns
        whether the loop stopped in time."""
        with self._cv:
            self._closed, self._drain = True, drain
            if not drain:
                self._cancels.update(self._by_id)
            self._cv.notify_all()
        if self._thread is None:  # stepped by hand: release the followers (tensor parallelism)
            self._broadcast(None)
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():  # the drain ran out of time: cancel what is left
            with self._cv:
                self._cancels.update(self._by_id)
                self._drain = False
                self._cv.notify_all()
            self._thread.join(10.0)
        return not self._thread.is_alive()

    def alive(self) -> bool:
        """Whether the loop thread runs (start() was called and the loop has not ended)."""
        return self._thread is not None and self._thread.is_alive()

    def idle(self) -> bool:
        with self._cv:
            return not (self._waiting or self._running or self._cancels)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._running or self._cancels or self._closed):
                    self._cv.wait()
                if self._closed and not (self._running or self._waiting or self._cancels):
                    break
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a broken step fails the requests it ran, not the server
                self.last_error = e
                self._fail_running(f"{type(e).__name__}: {e}")
        try:
            self._broadcast(None)  # release the followers (tensor parallelism)
        except Exception as e:  # noqa: BLE001 - a follower already gone: nothing left to release
            self.last_error = e

    # ---- one step (the engine thread) -----------------------------------------------------------

    def step(self) -> list[Event]:
        """Cancellations, admissions (one joining forward), then the steady step over every slot;
        returns the events (also delivered to each request's on_event)."""
        plan = self._plan()
        self._broadcast(plan)
        return self._execute(plan)

    def follow(self) -> None:
        """Ranks other than 0 under tensor parallelism: replay rank 0's plans until it stops."""
        while True:
            box = [None]
            torch.distributed.broadcast_object_list(box, src=0, group=self.parallel[0].group)
            if box[0] is None:
                return
            self._execute(box[0])

    def _plan(self) -> dict:
        """What this step does, on the host: slots to release (cancelled), admissions (slot, request,
        seed) in arrival order into free slots."""
        with self._cv:
            cancels, self._cancels = self._cancels, set()
            release, cancelled = self._finished_slots, []
            self._finished_slots = []
            for rid in cancels:
                e = self._by_id.get(rid)
                if e is None:
                    continue
                if e.slot >= 0:
                    release.append(e.slot)
                else:
                    self._waiting.remove(e)
                cancelled.append(e)
            for e in cancelled:
                if e.slot >= 0:
                    self._running.pop(e.slot, None)
            free = sorted(set(range(self.slots)) - set(self._running))
            admit = []
            while self._waiting and free and (not self._closed or self._drain):
                e = self._waiting.popleft()
                e.slot = free.pop(0)
                admit.append(e)
            steady = bool(self._running or admit)
            busy = {s: len(e.request.prompt) + e.request.max_tokens for s, e in self._running.items()}
            busy.update({e.slot: len(e.request.prompt) + e.request.max_tokens for e in admit})
            rows = self._shape(busy)
        for e in cancelled:
            self._finish(e, "cancelled")
        return dict(release=release, admit=[(e.slot, e.request, e.seed) for e in admit], steady=steady,
                    rows=rows, entries=admit)

    def _broadcast(self, plan) -> None:
        if self.parallel is None or self.parallel[0].world == 1 or self._released:
            return
        self._released = plan is None  # the followers stop at None: sent once
        send = None if plan is None else {k: v for k, v in plan.items() if k != "entries"}
        torch.distributed.broadcast_object_list([send], src=0, group=self.parallel[0].group)

    def _execute(self, plan: dict) -> list[Event]:
        events: list[Event] = []
        if plan["release"]:
            self._park(plan["release"])
        self._resize(plan["rows"])
        entries = plan.get("entries")
        if plan["admit"]:
            events += self._join(plan["admit"], entries)
        if plan["steady"]:
            t0 = time.perf_counter()
            self._steady()
            self.counters["steps"] += 1  # before the events: a client that saw its last one reads stats() whole
            events += self._collect(time.perf_counter() - t0)
        return events

    # ---- rows --------------------------------------------------------------------------------------

    def _resolve(self, r: Request) -> int:
        """Check a request (RequestError naming the field); its row seed (drawn when None)."""
        check_request(r, vocab=self.vocab, mask_id=self.dllm.mask_token_id, max_tokens=self.config.max_new_tokens,
                      context=self.L)
        return row_seed(r, self._row_knobs)

    def _row_knobs(self, r: Request) -> inputs.RowKnobs:
        return row_knobs(r, self.kind.step_config(self.config), self.vocab)

    def _step_for(self, filters: tuple[bool, bool], canvas: int | None = None):
        """The step object of a canvas bucket (the current one by default): one per filter mix under
        tensor parallelism, else one."""
        C = self._C if canvas is None else canvas
        key = (C, filters if self.parallel is not None else None)
        if key not in self._steps:
            self._steps[key] = make_step(self.config, length=C, vocab=self.vocab, eos=self.eos,
                                         backend=self.backend, device=self.device, parallel=self.parallel,
                                         filters=filters if self.parallel is not None else None, block=self.block)
        return self._steps[key]

    def _filters(self, st) -> tuple[bool, bool]:
        k, p = st.top_k, st.top_p
        return bool(((k > 0) & (k < self.vocab)).any()), bool((p < 1.0).any())

    def step_for(self, st):
        """The step object for State st: under tensor parallelism the one of its rows' filter mix
        (whether any row's top-k / top-p filters: the global threshold searches run only then)."""
        return self._step_for(self._filters(st) if self.parallel is not None else (False, False))

    @property
    def state(self):
        """The State of the current shape (n slots, canvas C; allocated on first use, rows parked)."""
        key = (self._n, self._C)
        if key not in self._states:
            self._states[key] = self._new_state(self._n)
            self._park(list(range(self._n)))
        return self._states[key]

    def _new_state(self, rows: int):
        return shapes.new_state(self._step_for((False, False)), self.verifier, rows, self.device,
                               self.dllm.mask_token_id)

    def _resize(self, shape: tuple[int, int]) -> None:
        """Run the next forwards over the first n slots of a canvas of C positions: the busy rows
        move to that shape's State (shapes.move_rows). The runners' caches stay where they are: a
        forward reads the first n rows and C + 1 positions of them (`_narrowed`)."""
        if shape == (self._n, self._C):
            return
        old = self.state
        self._n, self._C = shape
        shapes.move_rows(old, self.state)

    def _shape(self, busy: dict[int, int]) -> tuple[int, int]:
        """(n, C) for busy slots {slot: prompt + max_tokens}."""
        top = max(busy, default=-1) + 1
        end = max(busy.values(), default=1)
        return next(b for b in self.buckets if b >= top), next(c for c in self.canvases if c >= end)

    @contextlib.contextmanager
    def _narrowed(self, staged: int | None = None):
        """Every runner narrowed to the current shape (its caches' first n rows and C + 1 positions,
        views of the same memory; its scratch slot C) for a forward over it; staged=jb: to its
        staging caches of jb rows instead (joins)."""
        for view in self._full.values():
            view.narrow(staged or self._n, self._C, None if staged is None else self._staging[view.runner][staged])
        try:
            yield
        finally:
            for view in self._full.values():
                view.restore()

    def _park(self, rows: list[int], st=None) -> None:
        """Free rows of the current State (or `st`): shapes.park."""
        shapes.park(self.state if st is None else st, rows, self.config.mixture_weight)

    def _join(self, admit: list, entries) -> list[Event]:
        """Admit (slot, request, seed) rows: generate's step 0 for them alone (module docstring). A
        failure leaves the other rows untouched; the joiners are retried one by one so that only the
        failing one fails."""
        t0 = time.perf_counter()
        try:
            self._join_forward(admit)
        except Exception as e:  # noqa: BLE001
            if len(admit) == 1 or self.parallel is not None:
                self._park([slot for slot, _, _ in admit])
                if entries is not None:
                    for en in entries:
                        self._finish(en, "error", f"{type(e).__name__}: {e}")
                return []
            events = []
            for one, en in zip(admit, entries):
                events += self._join([one], [en])
            return events
        if entries is not None:
            with self._cv:
                for en in entries:
                    self._running[en.slot] = en
        self.counters["joins"] += len(admit)
        return self._collect(time.perf_counter() - t0, only={s for s, _, _ in admit})

    def _join_forward(self, admit: list) -> None:
        """generate's step 0 for the joiners alone: their rows are loaded into a staging State of a
        slot bucket of rows and the runners pointed at staging caches, the verifier's prompt pass
        and the first step run there, then the rows and their cache rows are copied into their
        slots. The busy rows are neither computed nor touched."""
        for slot, r, seed in admit:
            if self.fault_seed is not None and seed == self.fault_seed:
                raise RuntimeError(f"injected fault for seed {seed} (APD_EXT_SERVE_FAULT_SEED)")
        J = len(admit)
        jb = next(b for b in self.buckets if b >= J)
        stage = self._stage_state(jb)
        self._park(list(range(jb)), stage)
        for j, (_, r, seed) in enumerate(admit):
            shapes.load(stage, j, r.prompt, r.max_tokens, seed, self._row_knobs(r), self.dllm.mask_token_id)
        step = self.step_for(stage)
        with self._narrowed(staged=jb):
            if step.verifier_rows:
                self.verifier.prefill(stage.canvas, stage.start, max(len(r.prompt) for _, r, _ in admit),
                                      out=stage.verifier_logits[:1])
            if hasattr(step, "first_size"):  # the joiners' inputs need their prompt and window only
                step.first_size = self._first_size(admit, step)
            try:
                step(stage, self.dllm, self.verifier, first=True)
            finally:
                if hasattr(step, "first_size"):
                    step.first_size = None
        st = self.state
        into = torch.tensor([slot for slot, _, _ in admit], dtype=torch.int64, device=self.device)
        shapes.copy_rows(stage, J, st, into)
        for view in self._full.values():
            view.copy_rows(self._staging[view.runner][jb], J, into, self._C)
        self._prev = st.curr.clone()
        self._prev.index_copy_(0, into, st.start.index_select(0, into))
        self.counters["forwards"] += 1

    def _stage_state(self, jb: int):
        """The staging State of jb rows on the current canvas, and the runners' staging caches of
        jb rows (allocated once per bucket: at most the slots' own size)."""
        key = ("stage", jb, self._C)
        if key not in self._states:
            self._states[key] = self._new_state(jb)
        for view in self._full.values():
            per = self._staging.setdefault(view.runner, {})
            if jb not in per:
                per[jb] = [(torch.zeros_like(k[:jb]), torch.zeros_like(v[:jb])) for k, v in view.caches]
        return self._states[key]

    def _first_size(self, admit: list, step) -> int:
        """The join's dLLM input length: the longest joiner's prompt + window (right; on a block
        model the prompt's block end), rounded up to a multiple of 16 so that joins share a few shapes, at most the canvas."""
        if self.block is not None:  # step 0 reads the prompt and its block whole
            right = max((len(r.prompt) // self.block + 1) * self.block for _, r, _ in admit)
        else:
            right = max(len(r.prompt) + min(r.max_tokens, step.K) for _, r, _ in admit)
        return min(self._C, -(-right // 16) * 16)

    def _steady(self) -> None:
        """One steady step over the bucket's rows: eager, or the captured graph of this (bucket,
        filter mix)."""
        st = self.state
        self._prev = st.curr.clone()
        self.counters["forwards"] += 1
        with self._narrowed():
            self._run_steady(st, self.step_for(st))

    def _run_steady(self, st, step) -> None:
        if not self.graphed:
            step(st, self.dllm, self.verifier, first=False)
            return
        key = (self._n, step.key)  # step.key holds the canvas
        g = self._graphs.get(key)
        if g is None:  # first call of this step: eager, off the default stream (warm-up); captured next
            self._graphs[key] = "warm"
            if self.device.type != "cuda":
                step(st, self.dllm, self.verifier, first=False)
                return
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                step(st, self.dllm, self.verifier, first=False)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return
        if g == "warm":
            g = self._graphs[key] = graphs.capture(
                lambda: step(st, self.dllm, self.verifier, first=False, clock=NO_CLOCK), self.device)
            self.counters["captures"] += 1
        g.replay()

    # ---- results ---------------------------------------------------------------------------------

    def _collect(self, step_time: float, only: set[int] | None = None) -> list[Event]:
        """Events of the running requests (or of the `only` slots) after a forward: their tokens
        committed since self._prev, cut at EOS; finished requests leave their slot."""
        st = self.state
        with self._cv:
            running = {s: e for s, e in self._running.items() if only is None or s in only}
        if not running:
            return []
        slots = sorted(running)
        curr, prev = st.curr.tolist(), self._prev.tolist()
        width = max(curr[s] - prev[s] for s in slots)
        new_rows = {}
        if width > 0:
            idx = torch.tensor([[min(prev[s] + j, self._C) for j in range(width)] for s in slots],
                               device=self.device)
            got = torch.gather(st.canvas[slots], 1, idx).tolist()
            new_rows = {s: got[i][: curr[s] - prev[s]] for i, s in enumerate(slots)}
        done = st.done.tolist()
        events, release = [], []
        for s in slots:
            e = running[s]
            toks = new_rows.get(s, [])
            reason = None
            cut = next((i for i, t in enumerate(toks) if t in self.eos), None)
            if cut is not None:
                toks, reason = toks[:cut], "stop"
            e.generated += len(toks)
            if reason is None and (e.generated >= e.request.max_tokens or done[s]):
                reason = "length"
            ev = Event(e.rid, toks, reason, None, len(e.request.prompt), e.generated, step_time,
                       self.counters["forwards"])
            events.append(ev)
            self.counters["generated_tokens"] += len(toks)
            if reason is not None:
                release.append(s)
        for ev in events:
            self._deliver(running, ev)
        if release:  # parked by the next plan (on every rank under tensor parallelism)
            with self._cv:
                for s in release:
                    self._running.pop(s, None)
                self._finished_slots += release
        return events

    def _deliver(self, running: dict, ev: Event) -> None:
        e = next(x for x in running.values() if x.rid == ev.request_id)
        if ev.finish_reason is not None:
            with self._cv:
                self._by_id.pop(e.rid, None)
                self._cancels.discard(e.rid)
            self.counters["finished"] += 1
        if e.on_event is not None:
            try:
                e.on_event(ev)
            except Exception:  # noqa: BLE001 - a consumer's failure must not stop the loop
                pass

    def _finish(self, e: _Entry, reason: str, error: str | None = None) -> None:
        """End a request outside a forward (cancelled, failed)."""
        with self._cv:
            self._by_id.pop(e.rid, None)
        self.counters["finished"] += 1
        if e.on_event is not None:
            try:
                e.on_event(Event(e.rid, [], reason, error, len(e.request.prompt), e.generated))
            except Exception:  # noqa: BLE001
                pass

    def _fail_running(self, message: str) -> None:
        """A step raised: its requests fail (finish_reason "error"); their slots are parked by the
        next plan (on every rank under tensor parallelism), so the server goes on."""
        with self._cv:
            running = list(self._running.values())
            self._running.clear()
            self._finished_slots += [e.slot for e in running]
        for e in running:
            self._finish(e, "error", message)

