"""The shapes the serving engine's steps run on (apd_ext/serve/engine.py): slot and canvas
buckets, the decoding States of each shape and the moves of rows between them, and the runners'
caches narrowed to a shape.

A shape (n, C) is the first n slots (n in slot_buckets) over a canvas of C positions (C in
canvas_buckets). Each shape has its own State (decode/state.py) of n rows and canvas C + 1; the
runners' caches are allocated once for every slot and the whole context, and a forward on a shape
reads views of them (CacheView), so a captured graph of it reads and writes that memory.
"""

from __future__ import annotations

import torch

from apd_ext.decode import execute
from apd_ext.models.transformer import cache_alignment

KNOB_FIELDS = ("temperature", "draft_temperature", "top_k", "top_p", "mixture_weight")


def slot_buckets(slots: int) -> list[int]:
    """1, 2, 4, ... up to `slots`, and `slots`."""
    return sorted({min(2**i, slots) for i in range(slots.bit_length() + 1)})


def canvas_buckets(context: int, block: int | None = None) -> list[int]:
    """64, 128, 256, ... up to `context`, and `context`; with a block-diffusion dLLM's `block`, each
    rounded up to whole blocks (`context` is a multiple of it)."""
    sizes = {min(2**i, context) for i in range(6, context.bit_length() + 1)} | {context}
    if block is not None:
        sizes = {min(-(-c // block) * block, context) for c in sizes}
    return sorted(sizes)


def new_state(step, verifier, rows: int, device, mask_id: int):
    """A State of `rows` rows on the step's canvas, every input a valid token (the mask) and the
    knobs marked loaded (the engine writes each row's); the caller parks its rows."""
    st = execute.new_state(step, verifier, rows, device)
    st.canvas.fill_(mask_id)  # a parked row's inputs read valid token ids
    if st.verifier_logits is not None:
        st.verifier_logits.zero_()
    st.knobs_loaded = True
    return st


def park(st, rows: list[int], mixture_weight: float) -> None:
    """Free rows of State st: position 0, done, no window (valid 0: every input of the row goes to
    the runners' scratch slot, so it reads and writes no cache), unfiltered greedy knobs. Rows past
    the State are ignored (a smaller shape's rows beyond it are parked already)."""
    rows = [r for r in rows if r < st.seeds.shape[0]]
    if not rows:
        return
    idx = torch.tensor(rows, dtype=torch.int64, device=st.seeds.device)
    for t in (st.start, st.curr, st.row_end, st.n_prev, st.offset, st.seeds, st.top_k, st.phase):
        t.index_fill_(0, idx, 0)
    for t in (st.temperature, st.draft_temperature):
        t.index_fill_(0, idx, 0.0)
    st.top_p.index_fill_(0, idx, 1.0)
    st.mixture_weight.index_fill_(0, idx, mixture_weight)
    st.done.index_fill_(0, idx, True)


def load(st, row: int, prompt: list[int], max_tokens: int, seed: int, knobs, mask_id: int) -> None:
    """Write a request into row `row` of State st, as State.fill does for a batch: its prompt then
    mask tokens, position and end, step count (RNG offset) 0, its seed and its knobs (a one-row
    inputs.RowKnobs)."""
    L, P = st.canvas.shape[1] - 1, len(prompt)
    line = torch.full((L + 1,), mask_id, dtype=torch.int64)
    line[:P] = torch.tensor(prompt, dtype=torch.int64)
    st.canvas[row].copy_(line)
    for t, v in ((st.start, P), (st.curr, P), (st.row_end, P + max_tokens), (st.n_prev, 0), (st.offset, 0),
                 (st.seeds, seed), (st.phase, 0)):
        t[row] = v
    st.done[row] = False
    for name in KNOB_FIELDS:
        getattr(st, name)[row] = getattr(knobs, name)[0]


def move_rows(old, new) -> None:
    """The rows both States hold, from `old` into `new` (another shape): every tensor's first
    min(n_old, n_new) rows, the canvas up to the smaller C (a busy row ends within both; each
    State keeps its own scratch column)."""
    m = min(old.seeds.shape[0], new.seeds.shape[0])
    c = min(old.canvas.shape[1], new.canvas.shape[1]) - 1
    for a, b in zip(old.tensors(), new.tensors()):
        if a.dim() == 3:  # verifier logits [R, B, V]
            b[:, :m].copy_(a[:, :m])
        elif a is old.canvas:
            b[:m, :c].copy_(a[:m, :c])
        else:
            b[:m].copy_(a[:m])


def copy_rows(src, count: int, dst, into: torch.Tensor) -> None:
    """Rows 0..count-1 of State src into rows `into` (int64 [count]) of State dst (same canvas)."""
    for a, b in zip(src.tensors(), dst.tensors()):
        if a.dim() == 3:  # verifier logits [R, B, V]
            b.index_copy_(1, into, a[:, :count])
        else:
            b.index_copy_(0, into, a[:count])


class CacheView:
    """A runner set up for `slots` rows of `L` positions, narrowed in place to its first n rows and
    a canvas of C <= L positions for one forward (views of the same cache memory: a captured graph
    of the narrowed forward reads and writes the memory the full runner owns) and restored after."""

    def __init__(self, runner):
        self.runner = runner
        self.attn = [layer.self_attn for layer in runner.model.model.layers]
        self.caches = [(a.k_cache, a.v_cache) for a in self.attn]
        m = runner.model
        self.full = (runner.max_len, runner._slots, m.cache_len, m.cache_slots)
        self.rope = (m.rope_cos, m.rope_sin)
        self.align = cache_alignment(runner.device)

    def keys(self, C: int) -> int:
        """The cache keys of a canvas of C positions (+ the scratch slot), aligned."""
        return -(-(C + 1) // self.align) * self.align

    def narrow(self, n: int, C: int, caches=None) -> None:
        """Narrow to n rows and canvas C of the runner's caches, or of `caches` ([(k, v)] per layer)."""
        r, m = self.runner, self.runner.model
        keys = self.keys(C)
        r.max_len, r._slots, m.cache_len, m.cache_slots = C, self.full[1][:keys], C + 1, keys
        m.rope_cos, m.rope_sin = self.rope  # (a generate call in between may have set up other shapes)
        for a, (k, v) in zip(self.attn, caches or self.caches):
            a.k_cache, a.v_cache = k[:n, :, :keys], v[:n, :, :keys]

    def copy_rows(self, staged, count: int, into: torch.Tensor, C: int) -> None:
        """Rows 0..count-1 of the staging caches `staged` into the runner's cache rows `into`."""
        keys = self.keys(C)
        for (k, v), (sk, sv) in zip(self.caches, staged):
            k[:, :, :keys].index_copy_(0, into, sk[:count, :, :keys])
            v[:, :, :keys].index_copy_(0, into, sv[:count, :, :keys])

    def restore(self) -> None:
        r, m = self.runner, self.runner.model
        r.max_len, r._slots, m.cache_len, m.cache_slots = self.full
        m.rope_cos, m.rope_sin = self.rope
        for a, (k, v) in zip(self.attn, self.caches):
            a.k_cache, a.v_cache = k, v
