"""What every step object shares: its configuration (`StepBase`), the commit of accepted tokens
and the verifier-row bookkeeping.

The step interface (what the driver, the graph cache and compile_step rely on):

    step.verifier_rows      rows of State.verifier_logits the step needs (0: no verifier)
    step.dllm_forwards      dLLM forwards per step (0 or 1); step.verifier_forwards likewise
    step.capturable         whether the steady step may be captured as a CUDA graph
    step.pads_tail          whether positions after a row's end are overwritten with the pad token
    step.key                what the step's computation depends on besides tensor contents (not the
                            sampling knobs: they are State tensors, per row)
    step.impl               the sampling ops' backend (a VocabParallel over this rank's vocabulary
                            slice under tensor parallelism)
    step.valid(state)       int64 [B]: positions each row may fill this step (what noise(valid) gets)
    step.prefill(state, verifier, P, clock)   before step 0: the verifier's prompt pass, if it has one
    step(state, dllm, verifier, first=False, noise=None, clock=NO_CLOCK) -> (n, proposal, span)

n int64 [B]: tokens committed per row; proposal int64 [B, W] whose first n[b] entries of row b are
the committed tokens in order (None when the step commits out of order); span int64 [B, 2]: the
dLLM's [left, right) input range (None when the step runs no dLLM). `first=True` is step 0; the
steady step (`first=False`) has the same shapes at every step, synchronises nothing with the host
and branches on no tensor value (python_tests/test_capture.py traces it with fullgraph=True).
"""

from __future__ import annotations

import torch

from apd_ext import backends, ops
from apd_ext.decode import inputs
from apd_ext.decode.config import DecodeConfig
from apd_ext.parallel.vocab import VocabParallel


class StepBase:
    """Configuration shared by the steps: canvas length L, the window size K (max_lookahead clipped
    to max_new_tokens), the vocabulary, the sampling backend, the EOS tensor. The object holds no
    reference to the runners (they are call arguments), so a cached captured step does not keep
    models alive.

    The sampling knobs are per row and live in the State (temperature, draft_temperature, top_k,
    top_p, mixture_weight: `row_filter`, `draft_row_filter`): the step's code and `key` do not depend
    on their values, so one captured graph or compiled step serves any mix. `filter` and
    `draft_filter` hold the config's values (checked as the ops check them): every row's default."""

    verifier_rows = 0
    dllm_forwards = 0
    verifier_forwards = 0
    capturable = True

    @classmethod
    def step_config(cls, config: DecodeConfig) -> DecodeConfig:
        """The config the step reads (the rows' knobs resolve against it: inputs.row_knobs)."""
        return config

    def __init__(self, config: DecodeConfig, *, length: int, vocab: int, eos: list[int], backend: str = "auto",
                 device="cpu", parallel=None, filters: tuple[bool, bool] | None = None, block: int | None = None):
        c = config = self.step_config(config)
        self.config = c
        self.L, self.vocab = int(length), int(vocab)
        # a block-diffusion dLLM's block size (None: a whole-canvas dLLM): windows end at the current
        # block's end and the dLLM reads an exact block cache (window.py DraftStep.dllm_span)
        self.block = None if block is None else int(block)
        if self.block is not None and self.L % self.block:
            raise ValueError(f"the canvas ({self.L} positions) must be a multiple of the block size {self.block}")
        self.K = c.max_new_tokens if c.max_lookahead is None else min(c.max_lookahead, c.max_new_tokens)
        if self.block is not None:  # a window never passes the block's end (StepBase.valid)
            self.K = min(self.K, self.block)
        # the ops' own check (top_k >= vocab becomes 0); the released code drafts at T^2 (APD_SPEC, last section)
        self.filter = ops._check_filter(c.temperature, c.effective_top_k, c.top_p, self.vocab)
        draft_t = c.temperature * c.temperature if c.authors_compat else c.temperature
        self.draft_filter = ops._check_filter(draft_t, self.filter.top_k, c.top_p, self.vocab)
        self.device = torch.device(device)
        self.impl = backends.get(backend, self.device)
        # Under tensor parallelism the global top-k / top-p searches are collectives that run unless no
        # row filters: `filters` (any row's top-k, top-p active, from the host's knobs) is then part of
        # the key, so a mix that turns filtering on or off gets its own graph (at most four per shape).
        self.filters = None
        if parallel is not None:  # the logits are this rank's vocabulary slice (apd_ext/parallel/vocab.py)
            if filters is None:  # the config's values (every row's, when the state has no per-row knobs)
                filters = (self.filter.top_k > 0, self.filter.top_p < 1.0)
            self.filters = (bool(filters[0]), bool(filters[1]))
            self.impl = VocabParallel(self.impl, *parallel, filters=self.filters)
        self.backend = getattr(self.impl, "name", None) or getattr(self.impl, "__name__", backend)
        self.eos_list = tuple(int(e) for e in eos)
        self.eos = torch.tensor(eos or [-1], dtype=torch.int64, device=self.device)
        self.pads_tail = not c.authors_compat

    def knobs(self) -> tuple:
        """The knobs this step's computation reads (part of `key`)."""
        return ()

    @property
    def key(self) -> tuple:
        return (type(self).__name__, self.L, self.K, self.vocab, self.config.authors_compat, self.eos_list,
                self.backend, str(self.device), self.filters, self.block) + self.knobs()

    def row_knobs(self, batch: int) -> inputs.RowKnobs:
        """The config's sampling knobs for each of `batch` rows (what State.fill(knobs=None) means)."""
        return inputs.row_knobs(self.config, self.vocab, batch)

    def _loaded(self, st):
        if not st.knobs_loaded:  # a plain attribute: no tensor read (a state filled without knobs)
            st.load_knobs(self.row_knobs(st.seeds.shape[0]))
        return st

    def row_filter(self, st) -> backends.Filter:
        """The ops' Filter of the rows: State.temperature, top_k, top_p ([B] tensors)."""
        st = self._loaded(st)
        return backends.Filter(st.temperature, st.top_k, st.top_p)

    def draft_row_filter(self, st) -> backends.Filter:
        """The Filter the drafts sample with: the draft temperature (T*T with authors_compat)."""
        st = self._loaded(st)
        return backends.Filter(st.draft_temperature, st.top_k, st.top_p)

    def mixture_weight(self, st) -> torch.Tensor:
        """float64 [B]: the rows' mixture weights."""
        return self._loaded(st).mixture_weight

    def prefill(self, st, verifier, prompt_max: int, clock) -> None:
        """Before step 0, for a step with a verifier: write the prompts into the verifier's cache and
        its logits predicting position curr into row 0 of State.verifier_logits."""
        if self.verifier_rows:
            with clock.phase("verifier"):
                verifier.prefill(st.canvas, st.curr, prompt_max, out=st.verifier_logits[:1])

    def block_end(self, pos: torch.Tensor) -> torch.Tensor:
        """int64: the end of the block holding each position (block models only)."""
        return torch.div(pos, self.block, rounding_mode="floor") * self.block + self.block

    def valid(self, st) -> torch.Tensor:
        """int64 [B]: the positions each row fills this step at most (0 for finished rows): the
        window clipped to the row's end, and on a block-diffusion dLLM to the current block's end.
        An explicit noise callable receives it."""
        end = st.row_end if self.block is None else torch.minimum(st.row_end, self.block_end(st.curr))
        return torch.where(st.done, 0, (end - st.curr).clamp(0, self.K))

    def noise(self, st, noise, valid: torch.Tensor, width: int) -> backends.Noise:
        """The Noise argument of the ops: counter noise from the row seeds at the state's offset, or
        the uniforms noise(valid) [B, width, >= vocab] returns (golden replays, eager only)."""
        u = None
        if noise is not None:
            u = ops._check_noise(noise(valid), valid.shape[0], width, self.vocab, valid.device)
        return backends.Noise(st.seeds, 0, st.offset, 0, u)


def keep_row(vl: torch.Tensor, n: torch.Tensor) -> None:
    """Row 0 of the verifier buffer vl [R, B, V] becomes row n_b (the logits predicting the new
    curr = curr + n; n = 0 keeps row 0): one [B, V] gather, no branch."""
    vl[:1].copy_(torch.gather(vl, 0, n.view(1, -1, 1).expand(1, -1, vl.shape[-1])))


def commit(st, n: torch.Tensor, proposal: torch.Tensor, eos: torch.Tensor, L: int, keep_block: bool) -> torch.Tensor:
    """Commit proposal[b, :n[b]] at curr[b] and advance the state in place; returns the counts
    after EOS: a row ends at its first EOS inside the accepted block (keep_block: the block is kept
    whole, as the authors' released code does)."""
    pos = torch.arange(proposal.shape[1], device=proposal.device).view(1, -1)
    # not torch.isin: on CUDA it sorts and calls unique (a host read) past a few elements
    is_eos = (proposal.unsqueeze(-1) == eos.view(1, 1, -1)).any(-1) & (pos < n.view(-1, 1))
    hit = is_eos.any(dim=1)
    if not keep_block:
        n = torch.where(hit, is_eos.int().argmax(dim=1) + 1, n)
    write = torch.where(pos < n.view(-1, 1), st.curr.view(-1, 1) + pos, L)
    st.canvas.scatter_(1, write, proposal)
    st.curr.add_(n)
    st.n_prev.copy_(n)
    st.done.logical_or_(hit | (st.curr >= st.row_end))
    st.offset.add_(1)
    return n
