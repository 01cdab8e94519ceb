"""The step functions of `generate`: one APD / dllm_fixed / ar step as a function of device
tensors (`Step`: static shapes, no host synchronisation inside, the state updated in place so that
a CUDA graph of the step replays correctly), the diffusion baseline's own loop, and the per-phase
clock.

Logits stay in the models' dtype from the LM heads to the sampling ops (bf16 on a bf16 model: half
the bytes of float32 and no upcast copy). The verifier writes its logits into the state's
persistent position-major buffer `verifier_logits` [R, B, V] whose row 0 is the previous step's
kept row, so the [B, K, V] verifier logits of mixture_accept are a strided view of it (rows
contiguous, batch stride V, window stride B * V, which the ops read in place), never a per-step
concatenation.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, fields
from typing import Callable

import torch

from apd_ext import backends, ops


@dataclass
class State:
    """Decoding state on the models' device. Steps update every tensor in place (never rebind),
    so that a captured CUDA graph reads and writes the same memory at each replay; `fill` loads a
    new batch into the same tensors (a cached graph is replayed on them by the next generate call)."""

    canvas: torch.Tensor  # int64 [B, L + 1]; column L is scratch
    curr: torch.Tensor  # int64 [B] first uncommitted position
    row_end: torch.Tensor  # int64 [B] prompt_len + max_new_tokens (<= L)
    n_prev: torch.Tensor  # int64 [B] tokens accepted by the previous step
    done: torch.Tensor  # bool [B]
    # [R, B, V_verifier] in the verifier's logits dtype, position-major (None for dllm_fixed): row 0
    # holds the logits predicting position curr (kept from the previous step, or the prefill's),
    # rows 1..R-1 the current step's verifier output (row r predicts position curr + r).
    verifier_logits: torch.Tensor | None
    offset: torch.Tensor  # int64 [1] RNG offset (= step index)
    seeds: torch.Tensor  # int64 [B]

    @classmethod
    def allocate(cls, batch: int, length: int, verifier_rows: int, verifier_vocab: int,
                 verifier_dtype: torch.dtype, device) -> "State":
        """Uninitialised state for `batch` rows of canvases of `length` tokens (call `fill`)."""
        i64 = dict(dtype=torch.int64, device=device)
        vl = (torch.zeros(verifier_rows, batch, verifier_vocab, dtype=verifier_dtype, device=device)
              if verifier_rows else None)
        return cls(canvas=torch.empty(batch, length + 1, **i64), curr=torch.empty(batch, **i64),
                   row_end=torch.empty(batch, **i64), n_prev=torch.empty(batch, **i64),
                   done=torch.empty(batch, dtype=torch.bool, device=device), verifier_logits=vl,
                   offset=torch.empty(1, **i64), seeds=torch.empty(batch, **i64))

    def fill(self, canvas: torch.Tensor, prompt_len: torch.Tensor, max_new_tokens: int, seeds: torch.Tensor) -> None:
        """Load a batch in place: canvas int64 [B, L + 1] (prompts then mask tokens), prompt_len and
        seeds int64 [B] (host or device). The verifier logits are left to the prefill."""
        self.canvas.copy_(canvas)
        self.curr.copy_(prompt_len)
        self.row_end.copy_(prompt_len + max_new_tokens)
        self.n_prev.zero_()
        self.done.zero_()
        self.offset.zero_()
        self.seeds.copy_(seeds)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (getattr(self, f.name) for f in fields(self)) if t is not None]


class NoClock:
    """The clock of a step captured into a CUDA graph (or traced): phases inside are not timed."""

    def phase(self, name):
        return contextlib.nullcontext()


NO_CLOCK = NoClock()


class Progress:
    """What the host knows of the rows' progress: one asynchronous device-to-host copy of the done
    flags per step. On CUDA the loop checks the copy of the step before last, so the next step is
    queued while the current one runs (a finished batch costs at most one idle step, which the loop
    then drops from its counts); on CPU the check is immediate."""

    def __init__(self, device: torch.device):
        self.lagged = device.type == "cuda"
        self.pending: list = []
        self.done = False

    def post(self, done: torch.Tensor) -> None:
        if not self.lagged:
            self.done = bool(done.all())
            return
        host = torch.empty(done.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(done, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((host, event))

    def finished(self) -> bool:
        if self.lagged and len(self.pending) >= 2:
            host, event = self.pending.pop(0)
            event.synchronize()
            self.done = bool(host.all())
        return self.done


class Clock:
    """Per-phase wall time; on CUDA through events read once at the end (no sync per step)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}
        self.events: list[tuple[str, object, object]] = []

    def phase(self, name):
        clock = self

        class _P:
            def __enter__(self):
                if clock.cuda:
                    self.a = torch.cuda.Event(enable_timing=True)
                    self.a.record()
                else:
                    self.t = time.perf_counter()

            def __exit__(self, *exc):
                if clock.cuda:
                    b = torch.cuda.Event(enable_timing=True)
                    b.record()
                    clock.events.append((name, self.a, b))
                else:
                    clock.totals[name] = clock.totals.get(name, 0.0) + time.perf_counter() - self.t

        return _P()

    def result(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            for name, a, b in self.events:
                self.totals[name] = self.totals.get(name, 0.0) + a.elapsed_time(b) / 1e3
        return dict(self.totals)


POLICY_STEPS = ("apd", "dllm_fixed", "ar")


class Step:
    """One step of `policy` as a function of the state's tensors: reads and updates `State` in
    place and returns (n int64 [B] accepted tokens, proposal int64 [B, W] (W = M, or 1 for "ar"),
    window int64 [B, 2] = the dLLM's [left, right) or None).

    `first=True` is step 0, whose dLLM input is the whole canvas; `first=False` is the steady step
    (the same shapes at every step), the one generate captures in a CUDA graph and the one
    python_tests/test_capture.py traces with torch.compile(fullgraph=True): nothing in it may
    synchronise with the host, branch in Python on tensor values or size a tensor by them.

    The sampling ops are called through the backend object with the arguments apd_ext.ops would
    hand it: every check they need is on static values, done once here, so that the step has no
    per-call Python validation (ops.mixture_accept checks draft tokens on the host for CPU tensors,
    which a graph-safe step cannot do; these drafts come from sample_draft and are in range).
    The object holds no reference to the runners (they are arguments), only its configuration and
    the EOS tensor, so a cached captured step does not keep models alive.
    """

    def __init__(self, policy: str, *, window: int, length: int, kv_window: int | None, vocab: int,
                 k: int, mixture_weight: float, temperature: float, top_k: int, top_p: float,
                 authors_compat: bool, eos: list[int], backend: str, device):
        if policy not in POLICY_STEPS:
            raise ValueError(f"no step function for policy {policy!r}")
        ops._check_filter(temperature, top_k, top_p)
        self.policy, self.M, self.L, self.kv_window = policy, int(window), int(length), kv_window
        self.vocab, self.k, self.w = int(vocab), int(k), float(mixture_weight)
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        # the released code drafts at T^2 (APD_SPEC, last section)
        self.draft_t = self.temperature * self.temperature if authors_compat else self.temperature
        self.authors_compat = bool(authors_compat)
        self.filter = backends.Filter(self.temperature, self.top_k, self.top_p)
        self.draft_filter = self.filter._replace(temperature=self.draft_t)
        self.impl = backends.get(backend, torch.device(device))
        self.backend = getattr(self.impl, "name", None) or getattr(self.impl, "__name__", backend)
        self.eos = torch.tensor(eos or [-1], dtype=torch.int64, device=device)

    @property
    def verifier_rows(self) -> int:
        """Rows of State.verifier_logits this policy needs (row 0 + the verifier's output)."""
        return {"apd": self.M + 1, "ar": 2, "dllm_fixed": 0}[self.policy]

    def __call__(self, st: State, dllm, verifier, first: bool = False,
                 noise: Callable[[torch.Tensor], torch.Tensor] | None = None, clock=NO_CLOCK):
        """noise: optional callable(valid [B]) -> uniforms [B, M, >= vocab] replacing the
        generator (eager golden replays only)."""
        valid = torch.where(st.done, 0, (st.row_end - st.curr).clamp(0, self.M))  # int64 [B]
        window = None
        if self.policy == "ar":
            n, proposal = self._ar(st, verifier, valid, clock)
        else:
            n, proposal, window = self._window(st, dllm, verifier, valid, first, noise, clock)
        with clock.phase("other"):
            n = commit(st, n, proposal, self.eos, self.L, self.authors_compat)
        return n, proposal, window

    def _window(self, st, dllm, verifier, valid, first, noise, clock):
        """APD (or dllm_fixed): draft M tokens, verify them, accept a prefix. Step 0 (or kv_window
        None) reads the whole canvas; later steps have one static input length, kv_window + 2M - 1."""
        M, impl = self.M, self.impl
        right = st.curr + valid
        if self.kv_window is None or first:
            left = torch.zeros_like(st.curr)
            size = self.L
        else:
            left = (st.curr - self.kv_window - st.n_prev + 1).clamp(min=0)
            size = self.kv_window + 2 * M - 1
        window = torch.stack([left, right], dim=1)
        with clock.phase("dllm"):
            D = dllm.window_logits(st.canvas, left, right, st.curr, M, size)  # [B, M, V] model dtype
        u = None
        if noise is not None:
            u = ops._check_noise(noise(valid), D.shape[0], M, self.vocab, D.device)
        rng = backends.Noise(st.seeds, 0, st.offset, 0, u)
        with clock.phase("sampling"):
            draft, _ = impl.sample_draft(D, self.vocab, self.draft_filter, rng)
        if self.policy == "dllm_fixed":
            return valid.clamp(max=self.k), draft, window
        vl = st.verifier_logits  # [M + 1, B, V2]
        with clock.phase("verifier"):
            verifier.step(draft, st.curr, valid, out=vl[1:])  # rows 1..M: row r predicts curr + r
        A = vl[:M].transpose(0, 1)  # [B, M, V2] view: position i's verifier logits (row 0 kept)
        with clock.phase("sampling"):
            n = impl.mixture_accept(D, A, draft, self.vocab, self.w, self.authors_compat, valid, self.filter,
                                    rng)[0]
            _keep_row(vl, n)
        return n, draft, window

    def _ar(self, st, verifier, valid, clock):
        """One token from the verifier alone (at temperature T, not the authors' T^2)."""
        vl = st.verifier_logits  # [2, B, V2]
        with clock.phase("sampling"):
            tok, _ = self.impl.sample_draft(vl[:1].transpose(0, 1), self.vocab, self.filter,
                                            backends.Noise(st.seeds, 0, st.offset, 0))  # [B, 1]
        n = (valid > 0).to(torch.int64)
        with clock.phase("verifier"):
            verifier.step(tok, st.curr, n, out=vl[1:])
        _keep_row(vl, n)
        return n, tok


def _keep_row(vl: torch.Tensor, n: torch.Tensor) -> None:
    """Row 0 of the verifier buffer becomes row n_b (the logits predicting the new curr = curr + n;
    n = 0 keeps row 0): one [B, V] gather, no branch."""
    vl[:1].copy_(torch.gather(vl, 0, n.view(1, -1, 1).expand(1, -1, vl.shape[-1])))


def commit(st, n, proposal, eos, L, authors_compat):
    """Commits proposal[b, :n[b]] at curr[b] and advances the state in place; returns the counts
    after EOS: a row ends at its first EOS inside the accepted block (in authors_compat mode the
    block is kept whole, as the released code does)."""
    pos = torch.arange(proposal.shape[1], device=proposal.device).view(1, -1)
    # not torch.isin: on CUDA it sorts and calls unique (a host read) past a few elements
    is_eos = (proposal.unsqueeze(-1) == eos.view(1, 1, -1)).any(-1) & (pos < n.view(-1, 1))
    hit = is_eos.any(dim=1)
    if not authors_compat:
        n = torch.where(hit, is_eos.int().argmax(dim=1) + 1, n)
    write = torch.where(pos < n.view(-1, 1), st.curr.view(-1, 1) + pos, L)
    st.canvas.scatter_(1, write, proposal)
    st.curr.add_(n)
    st.n_prev.copy_(n)
    st.done.logical_or_(hit | (st.curr >= st.row_end))
    st.offset.add_(1)
    return n


DIFFUSION_ALGS = ("confidence", "entropy", "random")


def diffusion_generate(dllm, canvas, prompt_len, row_end, L, max_new_tokens, steps, alg, vocab, knobs, seeds,
                       eos, clock, backend, pad):
    """The dLLM's own schedule (the "diffusion" policy): `steps` full forwards; each unmasks
    ceil(masked / steps left) answer positions anywhere, those the dLLM is surest of ("confidence":
    probability of the sampled token; "entropy": lowest entropy; "random"). Returns (canvas,
    num_generated, forwards); the answer ends at its first EOS (`pad` after it)."""
    device = canvas.device
    B, N = canvas.shape[0], max_new_tokens
    mask_id = dllm.mask_token_id
    idx = prompt_len.view(-1, 1) + torch.arange(N, device=device).view(1, -1)  # answer positions
    in_row = idx < row_end.view(-1, 1)
    idx = torch.where(in_row, idx, L)  # L: the scratch column
    gen = torch.Generator(device=device).manual_seed(int(seeds[0]))
    forwards = 0
    for s in range(steps):
        masked = (torch.gather(canvas, 1, idx) == mask_id) & in_row
        if not bool(masked.any()):
            break
        with clock.phase("dllm"):
            D = dllm.window_logits(canvas, torch.zeros_like(prompt_len), row_end, prompt_len, N, L)
        forwards += 1
        offset = torch.full((1,), s, dtype=torch.int64, device=device)
        with clock.phase("sampling"):
            tokens, logp = ops.sample_draft(D, vocab_size=vocab, seed=seeds, offset=offset, backend=backend,
                                            temperature=knobs["temperature"], top_k=knobs["top_k"],
                                            top_p=knobs["top_p"])
            if alg == "confidence":
                score = logp
            elif alg == "entropy":
                lp = torch.log_softmax(D[..., :vocab], dim=-1)
                score = (lp.exp() * lp).sum(-1)  # negative entropy: higher is surer
            else:
                score = torch.rand(B, N, generator=gen, device=device)
            score = torch.where(masked, score, float("-inf"))
            left = steps - s
            count = torch.ceil(masked.sum(1).float() / left).to(torch.int64)  # [B]
            order = torch.argsort(score, dim=1, descending=True)
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(N, device=device).expand(B, N))
            pick = masked & (rank < count.view(-1, 1))
        canvas.scatter_(1, torch.where(pick, idx, L), tokens)
    answer = torch.gather(canvas, 1, idx)
    eos_rows = torch.isin(answer, eos) & in_row
    first = torch.where(eos_rows.any(1), eos_rows.int().argmax(1) + 1, in_row.sum(1))
    keep = torch.arange(N, device=device).view(1, -1) < first.view(-1, 1)
    canvas.scatter_(1, torch.where(keep, L, idx), torch.full_like(answer, pad))
    return canvas, first, forwards

