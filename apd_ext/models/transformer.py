"""A Qwen2-architecture transformer in plain PyTorch, gpt-fast style: a preallocated static KV cache
written by position, RoPE, grouped key/value heads and SDPA, with no allocation per step beyond
activations. Parameter names follow the Hugging Face checkpoints ("model.layers.N.self_attn...").

Attention is whatever the caller's boolean mask says (True = may attend), so one module serves a
causal verifier and a bidirectional dLLM reading a windowed cache: the adapters build the masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apd_ext.models.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(config: ModelConfig, max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [max_len, head_dim] (the two halves repeated, as Qwen2 rotates halves)."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    freqs = torch.arange(max_len, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, H, S, D]; cos/sin: [B, 1, S, D] float32
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h, kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv * d, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv * d, bias=bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=False)
        self.n_heads, self.n_kv, self.head_dim = h, kv, d
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, x, cos, sin, positions, mask):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, S, D]
        k = self.k_proj(x).view(B, S, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rows = torch.arange(B, device=x.device).unsqueeze(1)  # [B, 1]
        self.k_cache[rows, :, positions] = k.transpose(1, 2).to(self.k_cache.dtype)  # cache: [B, Hkv, L, D]
        self.v_cache[rows, :, positions] = v.transpose(1, 2).to(self.v_cache.dtype)
        out = F.scaled_dot_product_attention(
            q, self.k_cache, self.v_cache, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, positions, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Transformer(nn.Module):
    """Decoder stack + LM head. Call `setup_cache` once, then `forward` with positions and a mask."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Body(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.tied_parameter_names = {"lm_head.weight"} if config.tie_word_embeddings else set()
        self.cache_len = 0
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)

    def setup_cache(self, batch: int, max_len: int) -> None:
        """Allocate [batch, kv_heads, max_len, head_dim] K/V caches and RoPE tables (once per shape)."""
        p = self.lm_head.weight
        c = self.config
        if max_len > c.max_position_embeddings:
            raise ValueError(f"max length {max_len} exceeds max_position_embeddings {c.max_position_embeddings}")
        shape = (batch, c.num_key_value_heads, max_len, c.head_dim)
        for layer in self.model.layers:
            a = layer.self_attn
            if a.k_cache is None or a.k_cache.shape != shape or a.k_cache.device != p.device:
                a.k_cache = torch.zeros(shape, dtype=p.dtype, device=p.device)
                a.v_cache = torch.zeros(shape, dtype=p.dtype, device=p.device)
        if self.rope_cos.shape[:1] != (max_len,) or self.rope_cos.device != p.device:
            self.rope_cos, self.rope_sin = rope_tables(c, max_len, p.device)
        self.cache_len = max_len

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                logit_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, R, V] float32.

        input_ids, positions: int64 [B, S] (positions index the cache; K/V are written there).
        mask: bool [B, 1, S, cache_len], True where query s may attend cache position j.
        logit_rows: optional int64 [B, R] indices into S: compute the LM head only for those rows.
        """
        if self.cache_len == 0:
            raise RuntimeError("call setup_cache(batch, max_len) before forward")
        x = self.model.embed_tokens(input_ids)
        cos = self.rope_cos[positions].unsqueeze(1)  # [B, 1, S, D]
        sin = self.rope_sin[positions].unsqueeze(1)
        for layer in self.model.layers:
            x = layer(x, cos, sin, positions, mask)
        if logit_rows is not None:
            x = torch.gather(x, 1, logit_rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.lm_head(self.model.norm(x)).float()
