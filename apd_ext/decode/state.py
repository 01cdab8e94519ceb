"""The decoding state on the models' device (`State`) and what the host knows of it (`Progress`).

Steps update every State tensor in place (never rebind), so that a captured CUDA graph reads and
writes the same memory at each replay; `State.fill` loads a new batch into the same tensors (a
cached graph is replayed on them by the next `generate` call). The rows' sampling knobs are State
tensors too (filled like the seeds), so one captured or compiled step serves any mix of them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class State:
    """Decoding state of B rows on a canvas of L positions (plus one scratch column)."""

    canvas: torch.Tensor  # int64 [B, L + 1]: prompt, committed tokens, mask tokens; column L is scratch
    start: torch.Tensor  # int64 [B] prompt length (first answer position)
    curr: torch.Tensor  # int64 [B] first uncommitted position (diffusion: the answer's end so far)
    row_end: torch.Tensor  # int64 [B] start + max_new_tokens (<= L)
    n_prev: torch.Tensor  # int64 [B] tokens accepted by the previous step
    done: torch.Tensor  # bool [B]
    # [R, B, V_verifier] in the verifier's logits dtype, position-major (None when the policy has no
    # verifier): row 0 holds the logits predicting position curr (kept from the previous step, or
    # the prefill's), rows 1..R-1 the current step's verifier output (row r predicts curr + r).
    verifier_logits: torch.Tensor | None
    offset: torch.Tensor  # int64 [B] each row's RNG offset (= its step index: rows of a continuous batch
    #                       join at different steps, apd_ext/serve/engine.py; generate's rows share it)
    seeds: torch.Tensor  # int64 [B] row seeds
    # the rows' sampling knobs (decode/inputs.py RowKnobs; the steps build the ops' Filter from them)
    temperature: torch.Tensor  # float64 [B] T (0: greedy)
    draft_temperature: torch.Tensor  # float64 [B] what drafts sample at: T, or T*T with authors_compat
    top_k: torch.Tensor  # int64 [B] (0: no filter)
    top_p: torch.Tensor  # float64 [B]
    mixture_weight: torch.Tensor  # float64 [B] (apd)
    phase: torch.Tensor  # int64 [B] forwards spent on the row's current block (sdar's schedule); 0 at fill

    # whether fill() was given the knobs; if not, the step loads its config's values for every row at
    # its next call (a state filled directly, as tests and benchmarks do); a plain attribute
    knobs_loaded = False

    @classmethod
    def allocate(cls, batch: int, length: int, verifier_rows: int, verifier_vocab: int,
                 verifier_dtype: torch.dtype, device) -> "State":
        """Uninitialised state for `batch` rows of canvases of `length` tokens (call `fill`);
        verifier_rows = 0 allocates no verifier buffer."""
        i64 = dict(dtype=torch.int64, device=device)
        f64 = dict(dtype=torch.float64, device=device)
        vl = (torch.zeros(verifier_rows, batch, verifier_vocab, dtype=verifier_dtype, device=device)
              if verifier_rows else None)
        return cls(canvas=torch.empty(batch, length + 1, **i64), start=torch.empty(batch, **i64),
                   curr=torch.empty(batch, **i64), row_end=torch.empty(batch, **i64),
                   n_prev=torch.empty(batch, **i64), done=torch.empty(batch, dtype=torch.bool, device=device),
                   verifier_logits=vl, offset=torch.empty(batch, **i64), seeds=torch.empty(batch, **i64),
                   temperature=torch.empty(batch, **f64), draft_temperature=torch.empty(batch, **f64),
                   top_k=torch.empty(batch, **i64), top_p=torch.empty(batch, **f64),
                   mixture_weight=torch.empty(batch, **f64), phase=torch.empty(batch, **i64))

    def fill(self, canvas: torch.Tensor, prompt_len: torch.Tensor, max_new_tokens: int, seeds: torch.Tensor,
             knobs=None) -> None:
        """Load a batch in place: canvas int64 [B, L + 1] (prompts then mask tokens), prompt_len and
        seeds int64 [B] (host or device), knobs the rows' sampling knobs (inputs.RowKnobs; None: the
        step's config values for every row, loaded by the step's next call). The verifier logits are
        left to the prefill."""
        self.canvas.copy_(canvas)
        self.start.copy_(prompt_len)
        self.curr.copy_(prompt_len)
        self.row_end.copy_(prompt_len + max_new_tokens)
        self.n_prev.zero_()
        self.done.zero_()
        self.offset.zero_()
        self.phase.zero_()
        self.seeds.copy_(seeds)
        self.knobs_loaded = False
        if knobs is not None:
            self.load_knobs(knobs)

    def load_knobs(self, knobs) -> None:
        """Copy the rows' sampling knobs (inputs.RowKnobs) into the state in place."""
        for name in ("temperature", "draft_temperature", "top_k", "top_p", "mixture_weight"):
            getattr(self, name).copy_(getattr(knobs, name))
        self.knobs_loaded = True

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the state (what a captured step reads and writes)."""
        return [t for t in (getattr(self, f.name) for f in fields(self)) if isinstance(t, torch.Tensor)]


class Progress:
    """What the host knows of the rows' progress: one asynchronous device-to-host copy of the done
    flags per step. On CUDA the loop checks the copy of the step before last, so the next step is
    queued while the current one runs (a finished batch costs at most one idle step, which the stats
    then leave out); on CPU the check is immediate."""

    def __init__(self, device: torch.device):
        self.lagged = device.type == "cuda"
        self.pending: list = []
        self.done = False

    def post(self, done: torch.Tensor) -> None:
        """Record the done flags bool [B] after a step."""
        if not self.lagged:
            self.done = bool(done.all())
            return
        host = torch.empty(done.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(done, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((host, event))

    def finished(self) -> bool:
        """Whether every row is done, as far as the host knows."""
        if self.lagged and len(self.pending) >= 2:
            host, event = self.pending.pop(0)
            event.synchronize()
            self.done = bool(host.all())
        return self.done
