"""How a model is split across the ranks of a TensorParallel group.

Vocabulary: the shared vocabulary V (what the sampling ops use; Dream's 152064-row head and
Qwen2.5's 151936-row head share V = 151936) is cut into one contiguous slice per rank, every
boundary a multiple of VOCAB_ALIGN (the counter noise draws 4 tokens per Philox call), so that the
dLLM's and the verifier's logits of one rank cover the same global tokens. The last rank also holds
the head rows past V (which the ops ignore). Embeddings and LM heads are split the same way.

Heads: q/k/v, gate and up projections are split by output columns (whole attention heads and K/V
heads per rank), o_proj and down_proj by input rows; counts that do not divide by the world size
are an error, except K/V heads fewer than the ranks (split_kv_heads: each rank holds the one its
query heads read).
"""

from __future__ import annotations

from dataclasses import dataclass

VOCAB_ALIGN = 64


def vocab_bounds(vocab: int, world: int) -> list[int]:
    """[b_0 = 0, b_1, ..., b_world = vocab]: rank r's slice of the shared vocabulary is
    [b_r, b_{r+1}). Boundaries are multiples of VOCAB_ALIGN (of 4 when the vocabulary is too small
    for that), and every rank gets at least one token."""
    if vocab < 1 or world < 1:
        raise ValueError(f"vocab and world must be >= 1, got {vocab} and {world}")
    for align in (VOCAB_ALIGN, 4):
        size = -(-vocab // world)
        size = -(-size // align) * align
        bounds = [min(r * size, vocab) for r in range(world)] + [vocab]
        if all(bounds[r] < bounds[r + 1] for r in range(world)):
            return bounds
    raise ValueError(f"a vocabulary of {vocab} tokens is too small to give each of {world} ranks "
                     f"a slice starting at a multiple of 4")


@dataclass(frozen=True)
class VocabShard:
    """The vocabulary slice of one rank. lo, hi: the rows of the model's embedding and LM head it
    holds (global token ids [lo, hi)); vocab: the shared vocabulary. The sampling ops of this rank
    read its first `local_vocab` logit columns, global tokens [lo, lo + local_vocab)."""

    lo: int
    hi: int
    vocab: int

    @classmethod
    def of(cls, model_vocab: int, shared_vocab: int, world: int, rank: int) -> "VocabShard":
        """Rank `rank`'s slice of a model with `model_vocab` head rows, cut on the shared vocabulary."""
        if shared_vocab > model_vocab:
            raise ValueError(f"shared vocabulary {shared_vocab} exceeds the model's {model_vocab} rows")
        b = vocab_bounds(shared_vocab, world)
        return cls(b[rank], b[rank + 1] if rank < world - 1 else model_vocab, shared_vocab)

    @property
    def offset(self) -> int:
        return self.lo

    @property
    def rows(self) -> int:
        """Rows of the embedding / head this rank holds (its logits' last dimension)."""
        return self.hi - self.lo

    @property
    def local_vocab(self) -> int:
        """Columns of this rank's logits inside the shared vocabulary."""
        return min(self.hi, self.vocab) - self.lo


def split_kv_heads(heads: int, kv_heads: int, world: int, rank: int) -> tuple[int, int]:
    """(K/V heads this rank holds, the first one's global index). K/V heads are split like the
    query heads when they divide by the world size; when there are fewer of them than ranks (Dream-7B:
    4 K/V heads on 8 GPUs), each rank holds the one K/V head its query heads read, replicated on
    world / kv_heads ranks. Any other count is a ValueError."""
    if kv_heads % world == 0:
        return kv_heads // world, rank * (kv_heads // world)
    per_rank = split_heads(heads, world, "num_attention_heads")
    if world % kv_heads == 0 and (heads // kv_heads) % per_rank == 0:
        return 1, rank * kv_heads // world
    raise ValueError(f"num_key_value_heads ({kv_heads}) neither divides by the tensor-parallel size {world} nor "
                     f"divides it (a rank's query heads must read one K/V head)")


def split_heads(count: int, world: int, what: str) -> int:
    """count / world, or a ValueError naming what does not divide."""
    if count % world:
        raise ValueError(f"{what} ({count}) does not divide by the tensor-parallel size {world}")
    return count // world
