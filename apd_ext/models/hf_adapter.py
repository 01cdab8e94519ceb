"""Slow adapters: any model object whose forward(input_ids) returns logits (a transformers model
already in memory, say) drives `generate` without conversion. No KV cache: every call recomputes
the whole prefix, one batch row at a time, so it is for checking and small runs, not for speed
(and not for CUDA graphs: they read positions on the host). Logits are float32 (`logits_dtype`),
cut to vocab_size columns (a head padded past the tokenizer is wider); a narrower head is an error.
"""

from __future__ import annotations

import torch

from apd_ext.models.config import CheckpointError, ModelConfig


def _logits(model, ids: torch.Tensor, vocab_size: int, who: str) -> torch.Tensor:
    """float32 [B, S, vocab_size]: the model's logits of ids [B, S], cut to vocab_size columns (a
    head padded past the tokenizer, as Qwen2.5's, is wider); a narrower one is a ValueError naming
    `who` (the adapter) and both widths."""
    out = model(ids)
    out = getattr(out, "logits", out)
    if not isinstance(out, torch.Tensor) or out.dim() != 3:
        raise TypeError(f"{who}: the model's forward(input_ids) must return logits [B, S, V] (or an object with "
                        f".logits)")
    if out.shape[-1] < vocab_size:
        raise ValueError(f"{who}: the model returned logits of width {out.shape[-1]}, expected vocab_size "
                         f"{vocab_size} (or wider: columns past it are cut)")
    return out[..., :vocab_size].float()


def _device_of(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def _config(model_type, vocab_size, mask_token_id=None, eos_token_id=None, pad_token_id=None,
            max_length=1 << 20) -> ModelConfig:
    """The special tokens and vocabulary of a model given as an object (the architecture fields are
    placeholders: no layers); checked as a config.json is, so a mask_token_id outside
    [0, vocab_size) fails here, naming the adapter."""
    return ModelConfig(model_type=model_type, vocab_size=vocab_size, hidden_size=2, intermediate_size=1,
                       num_hidden_layers=0, num_attention_heads=1, num_key_value_heads=1,
                       max_position_embeddings=max_length, mask_token_id=mask_token_id,
                       eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                       _source="HFDllm" if model_type == "hf-dllm" else "HFVerifier")


class HFDllm:
    """A dLLM given as a callable model. shifted=True for Dream-style logits (row j predicts j+1)."""

    def __init__(self, model, *, vocab_size: int, mask_token_id: int, eos_token_id=None, pad_token_id=None,
                 shifted: bool = True, device=None):
        self.model, self.shifted = model, shifted
        if mask_token_id is None:
            raise CheckpointError("HFDllm: mask_token_id is required (the id the dLLM reads as a masked position)")
        self.config = _config("hf-dllm", vocab_size, mask_token_id, eos_token_id, pad_token_id)
        self._device = _device_of(model, device)

    device = property(lambda self: self._device)
    vocab_size = property(lambda self: self.config.vocab_size)
    logits_width = property(lambda self: self.config.vocab_size)  # never sharded: the whole vocabulary
    mask_token_id = property(lambda self: self.config.mask_token_id)
    logits_dtype = torch.float32

    def setup(self, batch: int, max_len: int) -> None:
        self.max_len = max_len

    @torch.no_grad()
    def window_logits(self, canvas, left, right, curr, window, size):
        B = canvas.shape[0]
        out = torch.zeros(B, window, self.vocab_size, device=canvas.device)
        for b in range(B):
            r, c = int(right[b]), int(curr[b])
            if r <= c:
                continue
            logits = _logits(self.model, canvas[b : b + 1, :r], self.vocab_size, "HFDllm")[0]
            first = c - (1 if self.shifted else 0)
            n = min(window, r - c)
            out[b, :n] = logits[first : first + n]
        return out


class HFVerifier:
    """A causal LM given as a callable model; keeps its own token buffer instead of a KV cache."""

    def __init__(self, model, *, vocab_size: int, eos_token_id=None, device=None):
        self.model = model
        self.config = _config("hf-verifier", vocab_size, eos_token_id=eos_token_id)
        self._device = _device_of(model, device)

    device = property(lambda self: self._device)
    vocab_size = property(lambda self: self.config.vocab_size)
    logits_width = property(lambda self: self.config.vocab_size)  # never sharded: the whole vocabulary
    logits_dtype = torch.float32

    def setup(self, batch: int, max_len: int) -> None:
        self.max_len = max_len
        self.tokens = torch.zeros(batch, max_len + 1, dtype=torch.int64, device=self._device)

    @torch.no_grad()
    def prefill(self, canvas, prompt_len, size, out=None):
        """float32 [B, V] (written into out[0] when out, [1, B, V], is given)."""
        self.tokens[:, : canvas.shape[1]] = canvas[:, : self.tokens.shape[1]]
        rows = []
        for b in range(canvas.shape[0]):
            p = int(prompt_len[b])
            rows.append(_logits(self.model, self.tokens[b : b + 1, :p], self.vocab_size, "HFVerifier")[0, -1])
        if out is None:
            return torch.stack(rows)
        out[0].copy_(torch.stack(rows))
        return out[0]

    @torch.no_grad()
    def step(self, tokens, curr, valid, out=None):
        """float32 [B, K, V]; rows past valid are zero (a view of out, [K, B, V], when given)."""
        B, K = tokens.shape
        res = torch.zeros(B, K, self.vocab_size, device=tokens.device) if out is None else out.transpose(0, 1)
        if out is not None:
            res.zero_()
        for b in range(B):
            c, v = int(curr[b]), int(valid[b])
            if v == 0:
                continue
            self.tokens[b, c : c + v] = tokens[b, :v]
            logits = _logits(self.model, self.tokens[b : b + 1, : c + v], self.vocab_size, "HFVerifier")[0]
            res[b, :v] = logits[c : c + v]
        return res
