"""The "diffusion" step: the dLLM's own schedule. Each step is one full forward over the canvas
and unmasks ceil(masked / steps left) answer positions anywhere in the row, those the dLLM is
surest of: "confidence" (log-probability of the sampled token), "entropy" (lowest entropy) or
"random" (a per-row random order from the row's seed: counter-based Philox uniforms of (row seed,
step, position), so a row's tokens do not depend on the other rows of its batch).

After every step, State.curr is the end of the answer so far (just after its first EOS, or the
row's end), so that the driver's output (pad after curr, num_generated = curr - start) holds the
answer once the row is done: no masked position left, or all `diffusion_steps` forwards run.
"""

from __future__ import annotations

import torch

from apd_ext import reference
from apd_ext.decode.stats import NO_CLOCK
from apd_ext.decode.steps.base import StepBase
from apd_ext.parallel.vocab import VocabParallel

_MASK32 = 0xFFFFFFFF
_ORDER_STREAM = 0x6F726472  # Philox counter word that separates the order's draws from the token noise


def random_scores(seeds: torch.Tensor, offset: torch.Tensor, positions: int) -> torch.Tensor:
    """float32 [B, positions] uniforms in (0, 1) of (row seed, offset, position): Philox4x32-10 with
    key = the row seed, counter = (position, _ORDER_STREAM, offset_lo, offset_hi)."""
    B = seeds.shape[0]
    p = torch.arange(positions, dtype=torch.int64, device=seeds.device).view(1, -1).expand(B, -1)
    off = offset.view(-1, 1).expand(B, positions)  # one offset, or one per row
    s = seeds.view(-1, 1).expand(B, positions)
    words = reference.philox4x32_10(p, torch.full_like(p, _ORDER_STREAM), off & _MASK32, (off >> 32) & _MASK32,
                                    s & _MASK32, (s >> 32) & _MASK32)
    return ((words[0] >> 9).to(torch.float32) + 0.5) * (2.0**-23)


class DiffusionStep(StepBase):
    """One forward of the diffusion schedule (see the module docstring). n: positions unmasked
    this step; proposal None (tokens are committed out of order: nothing to stream)."""

    dllm_forwards = 1
    capturable = False  # runs eagerly (as it always has); the step itself is a function of tensors

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        if self.block is not None:
            raise ValueError("policy 'diffusion' unmasks the whole answer at once; a block-diffusion dLLM decodes block "
                             "by block: use fast_dllm_v2 / sdar (its own decoding), apd, threshold or dllm_fixed")
        self.N = config.max_new_tokens
        self.steps = config.diffusion_steps or config.max_new_tokens
        self.pads_tail = True  # the answer ends at its first EOS whatever authors_compat says

    def knobs(self) -> tuple:
        return (self.N, self.steps, self.config.diffusion_alg)

    def _scores(self, st, D, logp):
        alg = self.config.diffusion_alg
        if alg == "confidence":
            return logp
        if alg == "entropy":
            if isinstance(self.impl, VocabParallel):  # D is this rank's vocabulary slice
                return self.impl.neg_entropy(D)
            lp = torch.log_softmax(D[..., : self.vocab].float(), dim=-1)
            return (lp.exp() * lp).sum(-1)  # negative entropy: higher is surer
        return random_scores(st.seeds, st.offset, self.N)

    def valid(self, st) -> torch.Tensor:
        """int64 [B]: the row's answer positions (max_new_tokens, or fewer past the canvas end)."""
        return (st.row_end - st.start).clamp(0, self.N)

    def __call__(self, st, dllm, verifier, first: bool = False, noise=None, clock=NO_CLOCK):
        N, L = self.N, self.L
        ar = torch.arange(N, device=st.canvas.device).view(1, -1)
        idx = st.start.view(-1, 1) + ar  # [B, N] answer positions
        in_row = idx < st.row_end.view(-1, 1)
        idx = torch.where(in_row, idx, L)  # L: the scratch column
        masked = (torch.gather(st.canvas, 1, idx) == dllm.mask_token_id) & in_row
        span = torch.stack([torch.zeros_like(st.start), st.row_end], dim=1)
        with clock.phase("dllm"):
            D = dllm.window_logits(st.canvas, span[:, 0], st.row_end, st.start, N, L)
        rng = self.noise(st, noise, self.valid(st), N)
        with clock.phase("sampling"):
            tokens, logp = self.impl.sample_draft(D, self.vocab, self.row_filter(st), rng)
            score = torch.where(masked, self._scores(st, D, logp), float("-inf"))
            left = (self.steps - st.offset).clamp(min=1).float()  # [B] forwards left, this one included
            count = torch.ceil(masked.sum(1).float() / left).to(torch.int64)  # [B]
            order = torch.argsort(score, dim=1, descending=True)
            rank = torch.empty_like(order).scatter_(1, order, ar.expand_as(order))
            pick = masked & (rank < count.view(-1, 1))
        with clock.phase("other"):
            st.canvas.scatter_(1, torch.where(pick, idx, L), tokens)
            self._advance(st, idx, in_row, masked & ~pick)
        return pick.sum(1), None, span

    def _advance(self, st, idx, in_row, still_masked):
        """curr = the answer's end so far (after its first EOS); done once nothing is masked or
        every forward of the schedule has run."""
        answer = torch.gather(st.canvas, 1, idx)
        is_eos = (answer.unsqueeze(-1) == self.eos.view(1, 1, -1)).any(-1) & in_row
        end = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, in_row.sum(1))
        st.curr.copy_(st.start + end)
        st.offset.add_(1)
        st.done.copy_(~still_masked.any(1) | (st.offset >= self.steps))
