"""Model runners: what the decoding loop asks of a dLLM and of a verifier, with static shapes.

Positions index a static KV cache of `max_len + 1` slots per row; slot `max_len` is scratch: rows
of a fixed-size input that a batch row does not need (its window is shorter, it has finished) write
there and nothing attends to it. So every call has the same shapes whatever each row is doing.

dLLM (`DllmRunner`): one forward over a window `[left, right)` of the canvas, the K/V of positions
before `left` coming from the cache (an approximation: attention is bidirectional), positions at or
beyond `right` absent. Dream's logits at position j predict token j + 1 (`shifted=True`); LLaDA's
are unshifted (row j predicts token j). `DllmRunner.from_pretrained` reads which from config.json's
model_type (config.DLLM_TYPES), with no flag to pass. The runner returns D [B, K, V]: the logits of
canvas positions curr..curr+K-1.

Verifier (`VerifierRunner`): causal; `prefill` writes the prompt, `step` runs K draft tokens at
positions curr..curr+K-1 and returns the logits predicting positions curr+1..curr+K.

Logits come back in the model's dtype (`logits_dtype`: bf16 for a bf16 model), as the sampling ops
read them; the verifier can write them into a caller's position-major buffer (`out=`), so that the
decoding loop's [B, K, V] verifier logits are a view of persistent memory, not a per-step copy.
`setup` keeps its tensors when the shape does not change (a captured CUDA graph holds their
addresses); `static_tensors` lists every tensor a forward reads that it did not make itself.

Tensor parallelism (`from_pretrained(..., tp=tp, vocab_size=V)` on every rank of a TensorParallel
group): each rank loads its part of the model (Transformer's tp mode; only its slices are read from
the files) and every call returns its vocabulary slice of the logits, [..., logits_width] with
logits_width = shard.rows (global tokens [shard.lo, shard.hi)); `out=` buffers have that width.
Both runners of a pair take the same shared vocabulary V so that a rank's dLLM and verifier logits
cover the same tokens. A small verifier keeps its body whole on every rank (`replicate`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from apd_ext.models.checkpoint import load_weights
from apd_ext.models.config import DLLM_TYPES, SUPPORTED, VERIFIER_TYPES, CheckpointError, ModelConfig
from apd_ext.models.transformer import Transformer
from apd_ext.parallel.shard import VocabShard, split_kv_heads


LOAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# a tensor-parallel verifier with fewer parameters is replicated (replicate=None): reading a 0.5B
# body costs less than two all-reduces per layer
REPLICATE_BELOW = 1.5e9


def _load(path, device, dtype, tp=None, vocab_size: int | None = None,
          replicate: bool | None = False) -> tuple[Transformer, ModelConfig]:
    """The model at `path`, whole (tp None) or this rank's part of it (see Transformer). vocab_size:
    the shared vocabulary the rank's slice is cut on (default: the model's). replicate: keep the
    body whole on every rank (True), split it (False), or decide by `_replicates` (None).

    Under tensor parallelism every rank calls tp.check_all after reading config.json and after
    loading the weights, so a failure on any rank (a missing or corrupt file) raises the same
    TensorParallelError on every rank instead of leaving the others in a collective; a model whose
    heads do not divide by the world size raises the same ValueError on every rank."""
    if dtype is not None and dtype not in LOAD_DTYPES:
        raise TypeError(f"dtype must be one of torch.float32, torch.float16, torch.bfloat16 or None "
                        f"(the checkpoint's own), got {dtype!r}")
    if vocab_size is not None and (type(vocab_size) is not int or vocab_size < 1):
        raise ValueError(f"vocab_size must be an integer >= 1 (the shared vocabulary), got {vocab_size!r}")
    config = _on_every_rank(tp, path, lambda: ModelConfig.from_pretrained(path))
    if dtype is not None:
        config.dtype = dtype
    if vocab_size is not None and vocab_size > config.vocab_size:
        raise ValueError(f"{path}: the shared vocabulary ({vocab_size}) exceeds the model's vocab_size "
                         f"{config.vocab_size}")
    shard = None
    if tp is not None:
        shard = VocabShard.of(config.vocab_size, vocab_size or config.vocab_size, tp.world, tp.rank)
        replicate = _replicates(config, tp.world) if replicate is None else bool(replicate)
    try:
        with torch.device("meta"):  # ValueError when the heads do not divide (on every rank alike)
            model = Transformer(config, tp, shard, replicate_body=bool(replicate) and tp is not None)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None

    def fill() -> Transformer:
        m = model.to_empty(device=device).to(config.dtype)
        m.tie_weights()
        load_weights(m, path)
        return m.eval()

    return _on_every_rank(tp, path, fill), config


def _on_every_rank(tp, path, work):
    """work(); under tensor parallelism followed by tp.check_all, so that any rank's failure raises
    the same TensorParallelError on every rank."""
    if tp is None:
        return work()
    result, error = None, None
    try:
        result = work()
    except Exception as e:  # reported to every rank by check_all
        error = e
    tp.check_all(error, f"loading {path}")
    return result


def _replicates(config: ModelConfig, world: int) -> bool:
    """replicate=None: keep a verifier's body whole when it has fewer than REPLICATE_BELOW parameters
    or when its heads, K/V heads or intermediate size do not divide by the world size."""
    try:
        split_kv_heads(config.num_attention_heads, config.num_key_value_heads, world, 0)
        divides = config.intermediate_size % world == 0
    except ValueError:
        divides = False
    return not divides or config.num_parameters() < REPLICATE_BELOW


class _Runner:
    model: Transformer
    config: ModelConfig

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def vocab_size(self) -> int:
        """The model's whole vocabulary (its head rows), sharded or not."""
        return self.config.vocab_size

    @property
    def family(self) -> str:
        """config.json's model_type in lower case ("dream", "llada", "qwen2", "llama"): which
        tokenizer numbers the model's tokens (LLaDA's differs from Dream's and Qwen2's)."""
        return self.config.model_type.lower()

    @property
    def tp(self):
        """The TensorParallel group the model is split over, or None."""
        return self.model.tp

    @property
    def shard(self) -> VocabShard | None:
        """This rank's vocabulary slice (its logits are global tokens [lo, hi)), or None."""
        return self.model.shard

    @property
    def logits_width(self) -> int:
        """Columns of the logits this runner returns: shard.rows when sharded, else vocab_size."""
        return self.model.lm_head.weight.shape[0]

    def weight_bytes(self) -> int:
        """Bytes of this rank's parameters (tied ones counted once)."""
        return self.model.weight_bytes()

    @property
    def logits_dtype(self) -> torch.dtype:
        """The dtype of the logits the runner returns (the model's; no upcast)."""
        return self.model.lm_head.weight.dtype

    def setup(self, batch: int, max_len: int) -> None:
        """Allocate caches for `batch` rows of canvases up to `max_len` tokens (+1 scratch slot);
        a repeated call with the same shape keeps every tensor (and its address)."""
        self.max_len = max_len
        self.model.setup_cache(batch, max_len + 1, scratch=1)
        slots = getattr(self, "_slots", None)
        if slots is None or slots.shape[0] != self.model.cache_slots or slots.device != self.device:
            self._slots = torch.arange(self.model.cache_slots, device=self.device)  # every cache slot

    def static_tensors(self) -> list[torch.Tensor]:
        """The tensors a forward reads but does not allocate (parameters, buffers, K/V caches, slot
        indices): a captured CUDA graph stays valid while all of them keep their addresses."""
        out = list(self.model.parameters()) + list(self.model.buffers()) + [self._slots]
        for layer in self.model.model.layers:
            out += [layer.self_attn.k_cache, layer.self_attn.v_cache]
        return out

    def _positions(self, start: torch.Tensor, size: int, end: torch.Tensor) -> torch.Tensor:
        """int64 [B, size]: start_b + s where < end_b, else the scratch slot."""
        pos = start.view(-1, 1) + torch.arange(size, device=self.device).view(1, -1)
        return torch.where(pos < end.view(-1, 1), pos, self.max_len)

    def _gather_ids(self, canvas: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return torch.gather(canvas, 1, positions.clamp(max=canvas.shape[1] - 1))


class DllmRunner(_Runner):
    """A masked-diffusion LM in native PyTorch: bidirectional (Dream, LLaDA) or block-diffusion
    (Fast-dLLM v2, SDAR: `block_size` set). `shifted`: whether its logits at position j predict
    token j + 1 (Dream, Fast-dLLM v2) or token j (LLaDA, SDAR)."""

    def __init__(self, model: Transformer, config: ModelConfig, shifted: bool):
        self.model, self.config, self.shifted = model, config, shifted
        if config.mask_token_id is None:
            raise ValueError("the dLLM config has no mask_token_id")

    @property
    def block_size(self) -> int | None:
        """Block-diffusion models: the block size (blocks of positions [k*bs, (k+1)*bs) counted from
        position 0; attention is causal across blocks, bidirectional inside one, so the K/V of a
        completed block are exact). None for a whole-canvas (bidirectional) dLLM."""
        return self.config.block_size

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype: torch.dtype | None = None, *, tp=None,
                        vocab_size: int | None = None) -> "DllmRunner":
        """The dLLM at `path`. tp: a TensorParallel group to split the model over (this process is
        rank tp.rank; every rank calls this with the same arguments); vocab_size: the shared
        vocabulary the logits' slices are cut on (default: the model's; give a dLLM and its verifier
        the same value, e.g. 151936 for Dream + Qwen2.5, so that a rank's logits of both cover the
        same global tokens).

        The family comes from config.json's model_type: "Dream" (Dream and derivatives keeping its
        architecture; shifted logits), "llada" (LLaDA's own config keys and tensor names;
        unshifted logits), "Fast_dLLM_Qwen" (Fast-dLLM v2: block-diffusion, shifted, block size
        bd_size) or "sdar" (SDAR: block-diffusion, unshifted, block size block_size). A
        verifier's model_type raises ValueError; an unknown one CheckpointError listing the
        supported families."""
        model, config = _load(path, device, dtype, tp, vocab_size)
        kind = config.model_type.lower()
        if kind not in DLLM_TYPES:
            raise ValueError(f"{path}: model_type {config.model_type!r} is not a supported dLLM "
                             f"({sorted(DLLM_TYPES)}); apd_ext loads {SUPPORTED}")
        if config.mask_token_id is None:
            raise CheckpointError(f"{Path(path) / 'config.json'}: mask_token_id is required for a dLLM "
                                  f"(the id of the masked positions)")
        return cls(model, config, DLLM_TYPES[kind])

    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id

    @torch.no_grad()
    def window_logits(self, canvas: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                      curr: torch.Tensor, window: int, size: int) -> torch.Tensor:
        """D [B, window, V] in `logits_dtype`: logits for positions curr..curr+window-1.

        canvas: int64 [B, L]; left, right, curr: int64 [B] with left <= curr - shifted, right <= L;
        size: the static input length (>= max over rows of right - left).

        Whole-canvas dLLM: every query attends cache slots j < right (the cache before `left`,
        the input, nothing after). Block-diffusion dLLM: the query at position p attends slots
        j < min(right, block_end(p)), block_end(p) = (p // block_size + 1) * block_size: keys of
        its own block and the blocks before it, so the K/V written for a block depend on it and
        the blocks before it only (the cache of a completed block is exact).
        """
        pos = self._positions(left, size, right)  # [B, size]
        ids = self._gather_ids(canvas, pos)
        # every query attends cache slots j < right_b (cache + window; never the scratch slot):
        # one mask row [B, 1, 1, slots], broadcast over the queries. A row with right_b = 0 (a slot
        # the serving engine parks: every input goes to the scratch slot) attends every real slot
        # instead, so that its junk logits stay finite.
        limit = torch.where(right > 0, right, self.max_len)
        bs = self.block_size
        if bs is None:
            mask = (self._slots.view(1, 1, 1, -1) < limit.view(-1, 1, 1, 1))
        else:  # per query [B, 1, size, slots]; scratch queries (pos = max_len) keep `limit`
            block_end = torch.div(pos, bs, rounding_mode="floor") * bs + bs
            q_limit = torch.where(pos < self.max_len, torch.minimum(block_end, limit.view(-1, 1)), limit.view(-1, 1))
            mask = (self._slots.view(1, 1, -1) < q_limit.unsqueeze(-1)).unsqueeze(1)
        first = curr - left - (1 if self.shifted else 0)
        rows = (first.view(-1, 1) + torch.arange(window, device=self.device).view(1, -1)).clamp(0, size - 1)
        return self.model(ids, pos, mask, logit_rows=rows)


class VerifierRunner(_Runner):
    """A causal LM (Qwen2, Llama, Qwen3) with a static KV cache."""

    def __init__(self, model: Transformer, config: ModelConfig):
        self.model, self.config = model, config

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype: torch.dtype | None = None, *, tp=None,
                        vocab_size: int | None = None, replicate: bool | None = None) -> "VerifierRunner":
        """The verifier at `path`; tp and vocab_size as in DllmRunner.from_pretrained. replicate
        (tensor parallelism only): True keeps the whole body on every rank (no collective in its
        forward) and splits only the LM head, so its logits are the same vocabulary slice as the
        dLLM's; False splits it like the dLLM; None (default) replicates when the verifier has fewer
        than REPLICATE_BELOW (1.5e9) parameters (a 0.5B body reads faster than two all-reduces per
        layer cost) or when its heads do not divide by the world size."""
        model, config = _load(path, device, dtype, tp, vocab_size, replicate)
        if config.model_type.lower() not in VERIFIER_TYPES:
            raise ValueError(f"{path}: model_type {config.model_type!r} is not a supported verifier "
                             f"{sorted(VERIFIER_TYPES)}; apd_ext loads {SUPPORTED}")
        return cls(model, config)

    @property
    def replicated(self) -> bool:
        """True when the model is tensor-parallel with its body whole on every rank."""
        return self.model.replicate_body

    def _causal_mask(self, pos: torch.Tensor) -> torch.Tensor:
        # query at position p attends slots j <= p; scratch rows (p = max_len) attend every real
        # slot, so that no row is fully masked (its junk output stays finite and goes to scratch)
        return (self._slots.view(1, 1, -1) <= pos.unsqueeze(-1)) & (self._slots.view(1, 1, -1) < self.max_len)

    @torch.no_grad()
    def prefill(self, canvas: torch.Tensor, prompt_len: torch.Tensor, size: int,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """Write the prompts' K/V; [B, V] in `logits_dtype`: the logits predicting position
        prompt_len_b. out: optional contiguous [1, B, V] buffer to write them into (the result is
        then out[0])."""
        pos = self._positions(torch.zeros_like(prompt_len), size, prompt_len)
        ids = self._gather_ids(canvas, pos)
        mask = self._causal_mask(pos).unsqueeze(1)
        rows = (prompt_len - 1).clamp(min=0).view(-1, 1)
        return self.model(ids, pos, mask, logit_rows=rows, out=out)[:, 0]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, curr: torch.Tensor, valid: torch.Tensor,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """[B, K, V] in `logits_dtype`: logits after each of the K tokens written at positions
        curr..curr+K-1 (row r predicts position curr + r + 1). Rows r >= valid_b go to the scratch
        slot. out: optional contiguous [K, B, V] buffer (position-major) the logits are written
        into; the result is then its view out.transpose(0, 1), no copy."""
        K = tokens.shape[1]
        pos = self._positions(curr, K, curr + valid)
        mask = self._causal_mask(pos).unsqueeze(1)
        return self.model(tokens, pos, mask, out=out)
