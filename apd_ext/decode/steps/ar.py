"""The "ar" step: one token per row from the verifier alone, sampled at temperature T (not the
authors' T^2) with the same filters and counter noise as the other policies."""

from __future__ import annotations

import torch

from apd_ext.decode.stats import NO_CLOCK
from apd_ext.decode.steps.base import StepBase, commit, keep_row


class ArStep(StepBase):
    """Sample the token at curr from State.verifier_logits row 0, run the verifier on it (rows
    predicting curr + 1 land in row 1, then row 0), commit it."""

    verifier_rows = 2
    verifier_forwards = 1

    def valid(self, st) -> torch.Tensor:
        """int64 [B]: 1 while the row decodes, else 0."""
        return (~st.done & (st.curr < st.row_end)).long()

    def __call__(self, st, dllm, verifier, first: bool = False, noise=None, clock=NO_CLOCK):
        n = self.valid(st)
        vl = st.verifier_logits  # [2, B, V2]
        rng = self.noise(st, noise, n, 1)
        with clock.phase("sampling"):
            token, _ = self.impl.sample_draft(vl[:1].transpose(0, 1), self.vocab, self.row_filter(st), rng)  # [B, 1]
        with clock.phase("verifier"):
            verifier.step(token, st.curr, n, out=vl[1:])
        keep_row(vl, n)
        with clock.phase("other"):
            n = commit(st, n, token, self.eos, self.L, keep_block=not self.pads_tail)
        return n, token, None
