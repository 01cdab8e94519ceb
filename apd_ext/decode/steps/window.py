"""The steps that draft a window of K tokens with the dLLM: "apd" (verify the draft, keep the
agreeing prefix: APD_SPEC "One decoding step") and "dllm_fixed" (keep k draft tokens).

The dLLM reads its span [left, right) of the canvas: the whole canvas at step 0 or without a cache
(kv_window None); later, kv_window positions before the previous step's accepted tokens, those
tokens and the window, one static input length kv_window + 2K - 1. kv_window is clamped to the
canvas length L (a larger value recomputes the same whole prefix, only with a longer input).

Block-diffusion dLLMs (Fast-dLLM v2, SDAR: `block` set; attention causal across blocks of `block`
positions counted from 0, bidirectional inside one) have an exact cache instead:
* The window ends at the current block's end: K' = min(K, block_end(curr) - curr, row_end - curr)
  positions from curr (StepBase.valid). A draft never reaches into the next block, whose positions
  would read a block that still holds mask tokens (the models were trained on clean earlier
  blocks); the block's last positions are drafted by the steps that reach them, and the block
  after starts fresh at its first position. So APD keeps at most block_end(curr) - curr tokens a
  step, and the dLLM always sees its whole current block (mask tokens after the window included,
  as it was trained), never the blocks after it.
* The dLLM input is the current block [block_start(curr), block_end(curr)), starting at the block
  of the previous step's curr instead when the previous step completed a block: that block's K/V
  are then written once more with its final tokens, by the same forward (the block-causal mask
  keeps its queries off the new block), and never again. Every position before the input holds
  K/V computed from final tokens of its own and earlier blocks: the cache is exact, no forward
  recomputes a committed block, and there is no separate commit forward (the released codes spend
  one per block). Static input length 2 * block; step 0 reads the prompt and the first block.
  kv_window is not used.
"""

from __future__ import annotations

import torch

from apd_ext.decode.stats import NO_CLOCK
from apd_ext.decode.steps.base import StepBase, commit, keep_row


class DraftStep(StepBase):
    """Draft K tokens with the dLLM from its span of the canvas; subclasses decide what to keep."""

    dllm_forwards = 1
    # the input length of step 0 (first=True) when set: >= every row's right = curr + valid (the
    # serving engine's joins, whose canvas is longer than the joiners need); None: the canvas, L
    first_size: int | None = None

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        R = config.kv_window
        self.kv_window = None if R is None else min(R, self.L)

    def knobs(self) -> tuple:
        return (self.kv_window,)

    def dllm_span(self, st, valid, first: bool, back: torch.Tensor, shifted: bool = True):
        """(left int64 [B], right int64 [B], size): the dLLM's input [left, right) and its static
        length. right = curr + valid. The whole canvas at step 0 or without a cache; else the
        positions from kv_window - 1 before the `back` positions ending at curr (back [B] <= K: the
        positions whose tokens changed since the cache last saw them, which lie at or after
        curr - back) to right: size = kv_window + 2K - 1 covers every row."""
        if self.block is not None:  # exact block cache (module docstring)
            right = self.block_end(st.curr).clamp(max=self.L)
            if first:
                return torch.zeros_like(st.curr), right, self.first_size or self.L
            b = self.block
            # the block of the previous step's curr: the current one, or the one that step completed
            left = torch.div((st.curr - st.n_prev).clamp(min=0), b, rounding_mode="floor") * b
            if shifted:  # the logits predicting curr are row curr - 1's: one position of the block before
                left = torch.minimum(left, (st.curr - 1).clamp(min=0))
            return left, right, min(2 * b, self.L)
        right = st.curr + valid
        if first:
            return torch.zeros_like(st.curr), right, self.first_size or self.L
        if self.kv_window is None:
            return torch.zeros_like(st.curr), right, self.L
        left = (st.curr - self.kv_window - back + 1).clamp(min=0)
        return left, right, self.kv_window + 2 * self.K - 1

    def draft(self, st, dllm, valid, first, noise, clock):
        """(D [B, K, V] dLLM logits, draft int64 [B, K], span int64 [B, 2], the ops' Noise)."""
        K = self.K
        left, right, size = self.dllm_span(st, valid, first, st.n_prev, getattr(dllm, "shifted", True))
        span = torch.stack([left, right], dim=1)
        with clock.phase("dllm"):
            D = dllm.window_logits(st.canvas, left, right, st.curr, K, size)  # [B, K, V] model dtype
        rng = self.noise(st, noise, valid, K)
        with clock.phase("sampling"):
            draft, _ = self.impl.sample_draft(D, self.vocab, self.draft_row_filter(st), rng)
        return D, draft, span, rng

    def __call__(self, st, dllm, verifier, first: bool = False, noise=None, clock=NO_CLOCK):
        valid = self.valid(st)
        D, draft, span, rng = self.draft(st, dllm, valid, first, noise, clock)
        n = self.accept(st, verifier, D, draft, valid, rng, clock)
        with clock.phase("other"):
            n = commit(st, n, draft, self.eos, self.L, keep_block=not self.pads_tail)
        return n, draft, span


class ApdStep(DraftStep):
    """APD: the verifier scores the draft, the mixture p_dLLM^w * p_verifier^(1-w) is sampled with
    the draft's noise, and the longest agreeing prefix is kept (at least one token); w, like the
    filters, is per row (State.mixture_weight)."""

    verifier_forwards = 1

    @property
    def verifier_rows(self) -> int:
        return self.K + 1

    def accept(self, st, verifier, D, draft, valid, rng, clock):
        vl = st.verifier_logits  # [K + 1, B, V2]
        with clock.phase("verifier"):
            verifier.step(draft, st.curr, valid, out=vl[1:])  # rows 1..K: row r predicts curr + r
        A = vl[: self.K].transpose(0, 1)  # [B, K, V2] view: position i's verifier logits (row 0 kept)
        with clock.phase("sampling"):
            n = self.impl.mixture_accept(D, A, draft, self.vocab, self.mixture_weight(st),
                                         self.config.authors_compat, valid, self.row_filter(st), rng)[0]
            keep_row(vl, n)
        return n


class DllmFixedStep(DraftStep):
    """The dLLM alone keeps its first k draft tokens (k = 1 is the quality reference)."""

    def knobs(self) -> tuple:
        return super().knobs() + (self.config.k,)

    def accept(self, st, verifier, D, draft, valid, rng, clock):
        return valid.clamp(max=self.config.k)
