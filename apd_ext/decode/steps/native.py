"""The block-diffusion dLLMs' own decodings, as policies of the one loop: "fast_dllm_v2" and "sdar".
Both run on the exact block cache of window.py (one forward per step, whose input is the current
block, and the block just completed when there is one) and commit out of order inside a block
(threshold.py's commit and advance: State.curr moves over every filled position and stops just after
the first EOS it passes).

"fast_dllm_v2" (read from Fast-dLLM v2's released modelling code, `Fast_dLLM_QwenForCausalLM.generate`;
NVlabs/Fast-dLLM v2, Wu et al. 2025, "Fast-dLLM v2: Efficient Block-Diffusion LLM"):
* The block's first position, when it is still masked, commits alone: the token the previous
  block's last logit predicts (the released code's "next_token" after the forward that caches a
  completed block; logits are shifted, row j predicts token j + 1). A prompt ending at a block
  boundary is the same case.
* Otherwise the candidates are the masked positions of the sub-block (small_block_size positions,
  aligned with the block) holding the first masked position; each gets the argmax (or a sample at
  T > 0) and its confidence, the softmax probability of that token; every candidate whose
  confidence is > threshold (strict, as released) commits, and always the most confident one (the
  first among equals).
* Released default threshold 1 (one token per forward), its scripts pass 0.9; small_block_size 8,
  block 32.

"sdar" (read from SDAR's released generate.py, `block_diffusion_generate`; JetLM SDAR, Cheng et al.
2025, "SDAR: A Synergistic Diffusion-AutoRegression Paradigm"):
* Per block a schedule of denoising_steps forwards commits n_s = block // steps tokens at forward
  s of the block (s = State.phase), one more for the first block % steps forwards.
* Candidates: the masked positions of the current block (logits unshifted); confidence: the
  softmax probability of the drafted token. "low_confidence_static" commits the n_s most confident
  candidates; "low_confidence_dynamic" commits every candidate with confidence > threshold (SDAR's
  confidence_threshold, strict) when there are at least n_s of them, else the n_s most confident.
* Released defaults: block_length 4, denoising_steps 4, confidence_threshold 0.85 (the README's
  evaluations: greedy).

Where these differ from the released code, on purpose:
* The mask token never wins a draft (its logit is set to -inf first, as threshold.py does): the
  released codes would commit it, leave the position masked and loop.
* When n_s exceeds the masked positions left in the block (the block that holds the prompt's end,
  or after a dynamic step committed more than scheduled), only masked positions commit; SDAR's topk
  then also picks non-masked positions and overwrites them (prompt tokens included) with its draft.
* Rows are decoded to prompt + max_new_tokens: positions after it are never candidates (SDAR
  decodes the last block whole; Fast-dLLM v2 decodes max_new_tokens // block blocks plus one token).
* Fast-dLLM v2 with a prompt of exactly one block runs its first block without the prompt in its
  input (its cache is empty then); here the prompt is always read.
* Sampling (T > 0) uses the ops' counter noise (the released codes call torch.multinomial, and
  Fast-dLLM v2 takes a block's first token by argmax whatever T is); the confidence is the ops'
  log-prob (temperature 1 over the tokens top-k / top-p keep). At T = 0 both match the released
  codes (python_tests/test_block_golden.py replays them token for token).
"""

from __future__ import annotations

import torch

from apd_ext.decode.steps.threshold import ThresholdStep


class _BlockNative(ThresholdStep):
    """What both native decodings share: a block-diffusion dLLM, a window of the whole block."""

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        if self.block is None:
            raise ValueError(f"policy {config.policy!r} decodes a block-diffusion dLLM (Fast-dLLM v2, SDAR); this dLLM "
                             f"has no block size (use apd, threshold or dllm_fixed)")
        self.K = min(self.block, config.max_new_tokens)  # a window of the whole block
        self.block_length = None  # the model's blocks, not threshold's

    def limit(self, st) -> torch.Tensor:
        """int64 [B]: candidates lie before this position."""
        raise NotImplementedError

    def candidates(self, st, mask_id: int, valid: torch.Tensor):
        idx, cand = super().candidates(st, mask_id, valid)
        return idx, cand & (idx < self.limit(st).view(-1, 1))


class FastDllmV2Step(_BlockNative):
    """Fast-dLLM v2's threshold over sub-blocks (module docstring)."""

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        self.sub = config.small_block_size
        if self.block % self.sub:
            raise ValueError(f"small_block_size {self.sub} must divide the model's block size {self.block}")

    def knobs(self) -> tuple:
        return super().knobs() + (self.sub,)

    def limit(self, st) -> torch.Tensor:
        sub_end = torch.div(st.curr, self.sub, rounding_mode="floor") * self.sub + self.sub
        at_start = torch.remainder(st.curr, self.block) == 0  # the block's first token commits alone
        return torch.where(at_start, st.curr + 1, sub_end)

    def select(self, st, cand: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        conf = logp.exp()
        pick = cand & (conf > self.threshold)  # strict, as released
        best = torch.where(cand, conf, -1.0).argmax(dim=1, keepdim=True)
        ar = torch.arange(cand.shape[1], device=cand.device).view(1, -1)
        return pick | (cand & (ar == best))


class SdarStep(_BlockNative):
    """SDAR's low-confidence schedule per block (module docstring)."""

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        steps = config.denoising_steps or self.block
        if not 1 <= steps <= self.block:
            raise ValueError(f"denoising_steps must be in [1, block size {self.block}], got {steps}")
        self.steps, self.dynamic = steps, config.remasking == "low_confidence_dynamic"

    def knobs(self) -> tuple:
        return super().knobs() + (self.steps, self.dynamic)

    def limit(self, st) -> torch.Tensor:
        return self.block_end(st.curr)

    def scheduled(self, st) -> torch.Tensor:
        """int64 [B]: n_s, the tokens the schedule commits at the row's forward s = State.phase."""
        base, extra = divmod(self.block, self.steps)
        return base + (st.phase < extra).long()

    def select(self, st, cand: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        conf = torch.where(cand, logp.exp(), -1.0)
        n = self.scheduled(st).view(-1, 1)
        order = torch.argsort(conf, dim=1, descending=True, stable=True)  # the first among equals first
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(conf.shape[1], device=conf.device)
                                                .expand_as(order).contiguous())
        top = cand & (rank < n)
        if not self.dynamic:
            return top
        high = cand & (conf > self.threshold)  # strict, as released
        return torch.where(high.sum(dim=1, keepdim=True) >= n, high, top)

    def advanced(self, st, adv: torch.Tensor) -> None:
        """State.phase counts the forwards on the row's block; 0 again once curr enters the next one."""
        before = st.curr - adv
        same = torch.div(st.curr, self.block, rounding_mode="floor") == torch.div(before, self.block,
                                                                                     rounding_mode="floor")
        st.phase.copy_(torch.where(same, st.phase + 1, 0))
