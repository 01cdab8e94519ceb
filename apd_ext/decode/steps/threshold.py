"""The "threshold" step: confidence-threshold parallel decoding with the dLLM alone, the rule that
Fast-dLLM ships and that dInfer (its threshold parallel decoder) and SGLang's dLLM support (its
LowConfidence algorithm, threshold 0.95 by default) also offer.

What Fast-dLLM does (read from NVlabs/Fast-dLLM: llada/generate.py, `get_transfer_index` with
`threshold=`, used by `generate`, `generate_with_prefix_cache` and `generate_with_dual_cache`;
dream/model/generation_utils_block.py, `_sample` with alg="confidence_threshold"; the paper: Wu et
al. 2025, "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and Parallel
Decoding", arXiv:2505.22618, "confidence-aware parallel decoding"):

* Per forward, every masked position gets a token x0: the argmax of the logits, or at temperature
  T > 0 a Gumbel-max sample of softmax(logits / T).
* Confidence (LLaDA code): softmax(logits) at temperature 1, in float64, at x0: the probability of
  the token actually drafted, whatever T is (so the most likely token's probability when T = 0).
  The Dream code instead takes it from the distribution it sampled from (logits / T, then top-p /
  top-k, renormalised).
* Which positions commit: the masked positions of the current block are ranked by confidence
  (torch.topk); the first always commits, every other one unless its confidence < threshold. So
  the test is non-strict (confidence >= threshold commits) and when none passes exactly one, the
  most confident, commits. Ties follow topk's order (unspecified).
* Blocks (semi-autoregressive): the answer (gen_length positions after the prompt) is cut into
  blocks of block_length; only masked positions of the current block may commit, and the block is
  stepped until it has no mask left before the next one starts. The model sees the whole sequence
  (later blocks as masks); the cached variants keep the prefix (or prefix and suffix) K/V from a
  full forward at each block's start. Defaults: threshold 0.9 (Dream's `_sample` and the paper's
  main setting), block_length 32 (Dream's default; LLaDA's scripts pass it).
* The Dream code also commits the block's first position unconditionally at the forward that
  refreshes the cache, and handles batch size 1 only; nothing stops at an EOS: the whole answer
  region is decoded and the text is cut at the first EOS afterwards.

The rule here (python_tests/test_threshold.py states it again in plain torch and checks it):

* Candidates: the window of K = max_lookahead positions starting at State.curr (the first
  uncommitted position), clipped to the row's end, that still hold the mask token; with
  block_length, only those before the end of the block holding curr (blocks of block_length answer
  positions counted from the row's prompt end; earlier blocks are complete by construction).
* Tokens: sample_draft on the dLLM's window logits with the row's sampling knobs (temperature,
  top_k, top_p), the mask token's logit set to -inf first (a masked diffusion model's clean-token
  distribution, as MDLM's "zero masking probabilities"; otherwise a committed mask token would
  leave its position masked and a row could stall). Confidence: exp of the op's log-prob, the
  probability of the drafted token under softmax(D) at temperature 1 over the tokens the filters
  keep (Fast-dLLM's LLaDA rule; no filters by default), float32.
* Commit every candidate with confidence >= threshold (threshold as float32), and always the most
  confident candidate (the leftmost among equals), so at least one per step and row.
* State.curr then advances over every filled position (the committed prefix the cache and the
  output rely on); a row ends at the first EOS of that prefix (curr just after it; anything
  committed after it is dropped from the output, which pads it), or at its end.
* What the dLLM sees, as for apd: [left, curr + valid), valid = the window clipped to the row's
  end; positions after it are absent (max_lookahead None: the whole answer region, Fast-dLLM's
  view). The approximate KV cache (kv_window R) recomputes from R - 1 positions before the previous
  step's curr: every position whose token changed since the cache saw it was committed by the
  previous step inside the previous window [curr_prev, curr_prev + K), and is recomputed with its
  new token (n_prev = how far curr advanced; at least 1, so that a shifted model's logits
  predicting curr are always computed). Fast-dLLM's block caches differ (refreshed at each block's
  start); with kv_window None every step recomputes the whole prefix.
* n (stats) = positions committed per step, including any after the final EOS; proposal is None
  (commits are out of order: nothing to stream).

The steady step has static shapes, no host read and no branch on a tensor value: capturable.
"""

from __future__ import annotations

import torch

from apd_ext.decode.stats import NO_CLOCK
from apd_ext.decode.steps.window import DraftStep


class ThresholdStep(DraftStep):
    """One step of confidence-threshold parallel decoding (see the module docstring)."""

    capturable = True

    @classmethod
    def step_config(cls, config):
        # the policy reads no authors_compat: the sampling filters and the output are the paper's
        return config.replace(authors_compat=False)

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        self.pads_tail = True
        self.threshold = config.threshold
        self.block_length = config.block_length
        parallel = kw.get("parallel")
        self.shard = None if parallel is None else parallel[1]

    def knobs(self) -> tuple:
        return super().knobs() + (self.threshold, self.block_length)

    def _mask_column(self, mask_id: int) -> int | None:
        """The mask token's column in this rank's logits, or None when the ops never read it."""
        if self.shard is None:
            return mask_id if 0 <= mask_id < self.vocab else None
        col = mask_id - self.shard.lo
        return col if 0 <= col < self.shard.local_vocab else None

    def candidates(self, st, mask_id: int, valid: torch.Tensor):
        """(idx int64 [B, K]: canvas columns of window slot i (L, the scratch column, outside the
        window), cand bool [B, K]: slots that may commit this step)."""
        K, L = self.K, self.L
        ar = torch.arange(K, device=st.curr.device).view(1, -1)
        in_window = ar < valid.view(-1, 1)
        idx = torch.where(in_window, st.curr.view(-1, 1) + ar, L)
        cand = in_window & (torch.gather(st.canvas, 1, idx) == mask_id)
        if self.block_length is not None:
            b = self.block_length
            block_end = st.start + torch.div(st.curr - st.start, b, rounding_mode="floor") * b + b
            cand = cand & (idx < block_end.view(-1, 1))
        return idx, cand

    def select(self, st, cand: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """bool [B, K] (st: the State): the candidates whose confidence exp(logp) >= threshold, and the most
        confident candidate of each row (the first among equals)."""
        conf = logp.exp()
        pick = cand & (conf >= self.threshold)
        best = torch.where(cand, conf, -1.0).argmax(dim=1, keepdim=True)  # first maximum
        ar = torch.arange(cand.shape[1], device=cand.device).view(1, -1)
        return pick | (cand & (ar == best))

    def __call__(self, st, dllm, verifier, first: bool = False, noise=None, clock=NO_CLOCK):
        K = self.K
        mask_id = int(dllm.mask_token_id)
        valid = self.valid(st)
        left, right, size = self.dllm_span(st, valid, first, st.n_prev.clamp(min=1), getattr(dllm, "shifted", True))
        span = torch.stack([left, right], dim=1)
        with clock.phase("dllm"):
            D = dllm.window_logits(st.canvas, left, right, st.curr, K, size)  # [B, K, V] model dtype
        with clock.phase("sampling"):
            col = self._mask_column(mask_id)
            if col is not None:  # D is the runner's fresh output: edited in place
                D.select(-1, col).fill_(float("-inf"))
            rng = self.noise(st, noise, valid, K)
            tokens, logp = self.impl.sample_draft(D, self.vocab, self.row_filter(st), rng)
            idx, cand = self.candidates(st, mask_id, valid)
            pick = self.select(st, cand, logp)
        with clock.phase("other"):
            st.canvas.scatter_(1, torch.where(pick, idx, self.L), tokens)
            self._advance(st, idx, valid, mask_id)
        return pick.sum(dim=1), None, span

    def _advance(self, st, idx, valid, mask_id: int) -> None:
        """curr moves over every filled position of the window (to the first still-masked one, or
        the window's end), then stops just after the first EOS it passed (the row ends there)."""
        ar = torch.arange(idx.shape[1], device=idx.device).view(1, -1)
        in_window = ar < valid.view(-1, 1)
        window = torch.gather(st.canvas, 1, idx)
        open_ = in_window & (window == mask_id)
        adv = torch.where(open_.any(dim=1), open_.int().argmax(dim=1), valid)
        is_eos = (window.unsqueeze(-1) == self.eos.view(1, 1, -1)).any(-1) & (ar < adv.view(-1, 1))
        hit = is_eos.any(dim=1)
        adv = torch.where(hit, is_eos.int().argmax(dim=1) + 1, adv)
        st.curr.add_(adv)
        st.n_prev.copy_(adv)
        st.done.logical_or_(hit | (st.curr >= st.row_end))
        st.offset.add_(1)
        self.advanced(st, adv)

    def advanced(self, st, adv: torch.Tensor) -> None:
        """After curr moved by adv [B] (a hook for the block policies' own bookkeeping)."""
