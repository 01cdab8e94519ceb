"""A Qwen2-architecture transformer in plain PyTorch, gpt-fast style: a preallocated static KV cache
written by position, RoPE, grouped key/value heads and SDPA, with no allocation per step beyond
activations. Parameter names follow the Hugging Face Qwen2 checkpoints ("model.layers.N.self_attn...");
a family with other names (LLaDA: "model.transformer.blocks.N.q_proj...") is renamed on load and
save by checkpoint.checkpoint_names, and its config by config.llada_to_native: LLaDA's "llama" block
is this architecture (no q/k/v bias unless include_qkv_bias; its MLP gate is ff_proj).

Attention is whatever the caller's boolean mask says (True = may attend), so one module serves a
causal verifier and a bidirectional dLLM reading a windowed cache: the adapters build the masks.

The attention call (`attend`) is shaped for PyTorch's fused SDPA kernels on a GPU, not only the
math fallback: a boolean mask together with `enable_gqa` rules out FlashAttention (no mask) and,
before torch 2.13, memory-efficient attention (no GQA), leaving the math path over the whole
static cache. So the query-head group is folded into the query length instead (q [B, H, S, D] ->
[B, Hkv, G*S, D], a reshape of the rotated queries; K/V are read as they are, never expanded), the
mask is an additive bias in the query dtype built once per forward (broadcast over heads, and over
queries where the mask is the same for all of them), and on CUDA the key length is padded to a
multiple of 16 so that every bias stride is 8-aligned (the efficient kernel would otherwise pad a
copy of the bias in every layer). python_tests/test_attention.py checks these constraints.

Tensor parallelism (`tp`, a TensorParallel group, and `shard`, the rank's VocabShard), gpt-fast
style: q/k/v (weights and biases), gate and up are split by output columns (whole attention heads
and K/V heads per rank), o_proj and down_proj by input rows, each of those two followed by one
all-reduce; the K/V caches hold the rank's K/V heads only. The embedding and the LM head hold rows
[shard.lo, shard.hi) (tied ones stay one tensor): a lookup reads the ids of the slice, zeros for
the others, and one all-reduce sums the ranks' rows; the logits are the rank's slice
[B, R, shard.rows], never gathered. `replicate_body=True` keeps the whole body (and embedding) on
every rank, no collective in forward, and only the LM head rows [lo, hi) (a small verifier, whose
body costs less than two all-reduces a layer). `slices` maps each split parameter name to
(dim, start, full size): the checkpoint loader reads those slices only. With tp None the model and
its forward are exactly the unsharded ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apd_ext.models.config import ModelConfig
from apd_ext.parallel.shard import VocabShard, split_heads, split_kv_heads


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


# Key-length alignment of the static cache on CUDA: the memory-efficient kernel wants every bias
# stride but the last a multiple of 8 elements (at::native preprocess_mask pads a copy otherwise);
# 16 also keeps each fp32 bias row 64-byte aligned. CPU keeps the exact length (its flash kernel has
# no such rule, and a padded length changes float rounding, which the bundled weights' bit-for-bit
# training reproduction would notice).
CUDA_KEY_ALIGNMENT = 16


def cache_alignment(device: torch.device) -> int:
    """Key-length alignment of the static caches on `device` (see CUDA_KEY_ALIGNMENT)."""
    return CUDA_KEY_ALIGNMENT if device.type == "cuda" else 1


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The model's one attention call: [B, Hkv, G*S, D] out of q [B, Hkv, G*S, D] (the query-head
    group folded into the query length), the caches k, v [B, Hkv, Lc, D] and an additive bias in
    q's dtype of shape [B, 1, G*S or 1, Lc] (0 = attend, -inf = masked). Same head count on q and
    k/v, no enable_gqa: the call the fused kernels (cuDNN, memory-efficient) accept with a mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class Attention(nn.Module):
    """Self-attention over h query heads and kv K/V heads (this rank's, under tensor parallelism);
    reduce: None, or the all-reduce that sums the ranks' o_proj partial products."""

    def __init__(self, config: ModelConfig, h: int, kv: int, reduce=None):
        super().__init__()
        d = config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv * d, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv * d, bias=bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=config.o_proj_bias)
        # Qwen3 / SDAR: RMSNorm over each head's head_dim channels of q and k, before RoPE (one weight
        # of head_dim shared by the heads, so tensor parallelism replicates it)
        self.q_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.n_heads, self.n_kv, self.head_dim = h, kv, d
        self.reduce = reduce
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, x, cos, sin, positions, bias, rows):
        # bias: additive [B, 1, G*S or 1, Lc] in x's dtype (Transformer.attention_bias); rows:
        # int64 [B, 1] batch indices. The projections call F.linear directly (what nn.Linear does,
        # without a module call per projection: the eager step is dispatch-bound at small sizes).
        B, S, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        q = F.linear(x, self.q_proj.weight, self.q_proj.bias).view(B, S, H, D).transpose(1, 2)  # [B, H, S, D]
        k = F.linear(x, self.k_proj.weight, self.k_proj.bias).view(B, S, Hkv, D).transpose(1, 2)  # [B, Hkv, S, D]
        v = F.linear(x, self.v_proj.weight, self.v_proj.bias).view(B, S, Hkv, D).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        self.k_cache[rows, :, positions] = k.transpose(1, 2).to(self.k_cache.dtype)  # cache: [B, Hkv, Lc, D]
        self.v_cache[rows, :, positions] = v.transpose(1, 2).to(self.v_cache.dtype)
        G = H // Hkv  # query heads per K/V head: head h = kv * G + g reads K/V head kv
        q = q.reshape(B, Hkv, G * S, D)  # [B, Hkv, G*S, D], row g*S + s
        out = attend(q, self.k_cache, self.v_cache, bias)  # [B, Hkv, G*S, D]
        out = out.view(B, Hkv, G, S, D).permute(0, 3, 1, 2, 4).reshape(B, S, H * D)
        out = F.linear(out, self.o_proj.weight)  # [B, S, hidden]; a partial sum over the heads when sharded
        out = out if self.reduce is None else self.reduce(out)
        return out if self.o_proj.bias is None else out + self.o_proj.bias


class MLP(nn.Module):
    """SwiGLU over `inter` intermediate columns (this rank's); reduce as in Attention."""

    def __init__(self, config: ModelConfig, inter: int, reduce=None):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, inter, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, inter, bias=False)
        self.down_proj = nn.Linear(inter, config.hidden_size, bias=False)
        self.reduce = reduce

    def forward(self, x):
        gate, up = F.linear(x, self.gate_proj.weight), F.linear(x, self.up_proj.weight)
        out = F.linear(F.silu(gate) * up, self.down_proj.weight)
        return out if self.reduce is None else self.reduce(out)


class Layer(nn.Module):
    def __init__(self, config: ModelConfig, heads: int, kv_heads: int, inter: int, reduce=None):
        super().__init__()
        self.self_attn = Attention(config, heads, kv_heads, reduce)
        self.mlp = MLP(config, inter, reduce)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, positions, bias, rows):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, bias, rows)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, config: ModelConfig, embed_rows: int, heads: int, kv_heads: int, inter: int, reduce=None):
        super().__init__()
        self.embed_tokens = nn.Embedding(embed_rows, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config, heads, kv_heads, inter, reduce)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Transformer(nn.Module):
    """Decoder stack + LM head. Call `setup_cache` once, then `forward` with positions and a mask.

    tp: None (the whole model), or this rank's TensorParallel group; shard: its VocabShard (default:
    the model's own vocabulary cut over tp.world); replicate_body: keep the body whole on every rank
    and split only the LM head (see the module docstring). K/V heads fewer than the ranks are
    replicated: each rank holds the one its query heads read (parallel.shard.split_kv_heads). Raises
    ValueError when the heads or intermediate size do not divide by the world size, or the K/V heads
    neither divide it nor divide by it (sharded body only).
    """

    def __init__(self, config: ModelConfig, tp=None, shard: VocabShard | None = None, replicate_body: bool = False):
        super().__init__()
        if tp is None and (shard is not None or replicate_body):
            raise ValueError("shard and replicate_body need a tensor-parallel group (tp)")
        if tp is not None and shard is None:
            shard = VocabShard.of(config.vocab_size, config.vocab_size, tp.world, tp.rank)
        self.config, self.tp, self.shard, self.replicate_body = config, tp, shard, replicate_body
        split = tp is not None and not replicate_body  # the body is split over the ranks
        world, rank = (tp.world, tp.rank) if split else (1, 0)
        heads = split_heads(config.num_attention_heads, world, "num_attention_heads")
        kv_heads, kv_first = split_kv_heads(config.num_attention_heads, config.num_key_value_heads, world, rank)
        inter = split_heads(config.intermediate_size, world, "intermediate_size")
        # (lo, rows) of the embedding slice this rank holds, None when it holds every row
        self.embed_slice = (shard.lo, shard.rows) if split else None
        self.reduce = tp.all_reduce if split else None
        self.kv_heads = kv_heads
        self.group_size = heads // kv_heads  # query heads per K/V head on this rank
        self.model = Body(config, shard.rows if split else config.vocab_size, heads, kv_heads, inter, self.reduce)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size if shard is None else shard.rows, bias=False)
        self.tied_parameter_names = {"lm_head.weight"} if config.tie_word_embeddings else set()
        self.slices = self._slice_table(rank, world, heads, kv_first, kv_heads, inter)
        self.tie_weights()
        self.cache_len = 0  # slots the caller addresses (positions < cache_len)
        self.cache_slots = 0  # allocated slots (cache_len rounded up to the key alignment)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)

    def _slice_table(self, rank: int, world: int, heads: int, kv_first: int, kv_heads: int, inter: int) -> dict:
        """name -> (dim, start, full size) of every parameter that holds a slice of the
        checkpoint's tensor along `dim` (the loader reads rows/columns [start, start + local))."""
        c, shard, table = self.config, self.shard, {}
        if shard is not None:
            if self.embed_slice is not None:
                table["model.embed_tokens.weight"] = (0, shard.lo, c.vocab_size)
            if not c.tie_word_embeddings:
                table["lm_head.weight"] = (0, shard.lo, c.vocab_size)
        if world == 1:
            return table
        d = c.head_dim
        q, kv = (0, rank * heads * d, c.num_attention_heads * d), (0, kv_first * d, c.num_key_value_heads * d)
        mlp = (0, rank * inter, c.intermediate_size)
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            for proj, spec in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                table[f"{p}self_attn.{proj}.weight"] = spec
                if c.attention_bias:
                    table[f"{p}self_attn.{proj}.bias"] = spec
            table[f"{p}self_attn.o_proj.weight"] = (1,) + q[1:]
            table[f"{p}mlp.gate_proj.weight"] = table[f"{p}mlp.up_proj.weight"] = mlp
            table[f"{p}mlp.down_proj.weight"] = (1,) + mlp[1:]
        return table

    def tie_weights(self) -> None:
        """Make the LM head share the embedding (tie_word_embeddings): the same parameter, or, when
        the embedding is whole and the head a row slice (replicate_body), a view of its rows
        [lo, hi). Call again after anything that replaces the parameters (to_empty, .to)."""
        if not self.config.tie_word_embeddings:
            return
        embed = self.model.embed_tokens.weight
        if self.shard is not None and self.embed_slice is None:
            self.lm_head.weight = nn.Parameter(embed.detach()[self.shard.lo : self.shard.hi], embed.requires_grad)
        else:
            self.lm_head.weight = embed

    def weight_bytes(self) -> int:
        """Bytes of this rank's parameters (a tied LM head counted once, with the embedding)."""
        return sum(p.numel() * p.element_size() for n, p in self.named_parameters()
                   if n not in self.tied_parameter_names)

    def setup_cache(self, batch: int, max_len: int, key_alignment: int | None = None, scratch: int = 0) -> None:
        """Allocate [batch, kv_heads, Lc, head_dim] K/V caches and RoPE tables (once per shape: the
        same shape keeps the same tensors, which a captured CUDA graph relies on).

        Lc = max_len rounded up to `key_alignment` (default cache_alignment(device): 16 on CUDA,
        1 on CPU); slots >= max_len are padding that masks always exclude. The last `scratch` of
        the max_len slots hold no token of any sequence (the runners' scratch slot: writes of rows
        that have nothing to write, never attended to), so only max_len - scratch positions count
        against max_position_embeddings.
        """
        p = self.lm_head.weight
        c = self.config
        if max_len - scratch > c.max_position_embeddings:
            raise ValueError(f"max length {max_len - scratch} exceeds max_position_embeddings "
                             f"{c.max_position_embeddings}")
        if key_alignment is None:
            key_alignment = cache_alignment(p.device)
        slots = -(-max_len // key_alignment) * key_alignment
        shape = (batch, self.kv_heads, slots, c.head_dim)
        for layer in self.model.layers:
            a = layer.self_attn
            if a.k_cache is None or a.k_cache.shape != shape or a.k_cache.device != p.device:
                a.k_cache = torch.zeros(shape, dtype=p.dtype, device=p.device)
                a.v_cache = torch.zeros(shape, dtype=p.dtype, device=p.device)
        if self.rope_cos.shape[:1] != (max_len,) or self.rope_cos.device != p.device:
            self.rope_cos, self.rope_sin = rope_tables(c, max_len, p.device)
        self.cache_len, self.cache_slots = max_len, slots

    def attention_bias(self, mask: torch.Tensor, dtype: torch.dtype, queries: int) -> torch.Tensor:
        """The additive bias `attend` takes: [B, 1, G*S or 1, cache_slots] in `dtype` (0 where
        `mask` is True, -inf elsewhere and on the padding slots), the mask's query rows repeated
        for each of the G query heads that share a K/V head (a mask whose query dimension is 1
        stays broadcast). Built once per forward and shared by the layers."""
        Lm = mask.shape[-1]
        if Lm not in (self.cache_len, self.cache_slots) or mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must be [B, 1, S or 1, {self.cache_len}], got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        if Lm == self.cache_slots:  # no padding slots (CPU): one op
            bias = torch.where(mask, 0.0, float("-inf")).to(dtype)
        else:
            bias = torch.zeros(mask.shape[:-1] + (self.cache_slots,), dtype=dtype, device=mask.device)
            bias[..., :Lm].masked_fill_(~mask, float("-inf"))
            bias[..., Lm:] = float("-inf")
        G = self.group_size
        if bias.shape[2] == queries and queries > 1 and G > 1:
            bias = bias.repeat(1, 1, G, 1)  # folded query row g*S + s reads mask row s
        return bias

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, S, hidden] embeddings of int64 ids [B, S]. With a row slice [lo, lo + rows) of the
        embedding (tensor parallelism): the rows of the ids in the slice, zeros for the others, summed
        over the ranks by one all-reduce (no data-dependent branch: traceable, graph-capturable)."""
        if self.embed_slice is None:
            return self.model.embed_tokens(input_ids)
        lo, rows = self.embed_slice
        local = input_ids - lo
        outside = (local < 0) | (local >= rows)
        x = F.embedding(local.clamp(0, rows - 1), self.model.embed_tokens.weight)
        return self.reduce(x.masked_fill(outside.unsqueeze(-1), 0))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                logit_rows: torch.Tensor | None = None, out: torch.Tensor | None = None,
                rope_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, R, V] in the model's dtype (no upcast: the sampling ops read bf16 directly);
        V = shard.rows under tensor parallelism (this rank's vocabulary slice), else vocab_size.

        input_ids, positions: int64 [B, S] (positions index the cache; K/V are written there).
        mask: bool [B, 1, S or 1, cache_len], True where query s may attend cache position j (a
            query dimension of 1: the same keys for every query).
        logit_rows: optional int64 [B, R] indices into S: compute the LM head only for those rows.
        out: optional [R, B, V] tensor of the model's dtype, contiguous: the logits are written
            there position-major (one matrix product, no copy) and the result is its [B, R, V]
            view out.transpose(0, 1). R = S without logit_rows.
        rope_positions: optional int64 [B, S], the rotary positions when they differ from the cache
            slots (training a block-diffusion model on [x_t ; x_0], whose halves share positions
            0..L-1 but need 2L slots); default `positions`.
        """
        if self.cache_len == 0:
            raise RuntimeError("call setup_cache(batch, max_len) before forward")
        x = self.embed(input_ids)
        rp = positions if rope_positions is None else rope_positions
        cos = self.rope_cos[rp].unsqueeze(1)  # [B, 1, S, D]
        sin = self.rope_sin[rp].unsqueeze(1)
        bias = self.attention_bias(mask, x.dtype, input_ids.shape[1])
        rows = torch.arange(input_ids.shape[0], device=x.device).unsqueeze(1)  # [B, 1], shared by the layers
        for layer in self.model.layers:
            x = layer(x, cos, sin, positions, bias, rows)
        if logit_rows is not None:
            x = torch.gather(x, 1, logit_rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        h = self.model.norm(x)  # [B, R, hidden]
        if out is None:
            return self.lm_head(h)
        B, R, hidden = h.shape
        V = self.lm_head.weight.shape[0]
        if out.shape != (R, B, V) or out.dtype != h.dtype or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous [{R}, {B}, {V}] {h.dtype} tensor, got "
                             f"{tuple(out.shape)} {out.dtype}")
        torch.mm(h.transpose(0, 1).reshape(R * B, hidden), self.lm_head.weight.t(), out=out.view(R * B, V))
        return out.transpose(0, 1)
