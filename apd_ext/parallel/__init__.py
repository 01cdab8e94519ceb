"""Tensor parallelism on torch.distributed: the group (group.py), how models are split (shard.py)
and vocabulary-parallel sampling (vocab.py)."""

from apd_ext.parallel.group import TensorParallel, TensorParallelError
from apd_ext.parallel.shard import VOCAB_ALIGN, VocabShard, split_heads, split_kv_heads, vocab_bounds
from apd_ext.parallel.vocab import VocabParallel

__all__ = ["TensorParallel", "TensorParallelError", "VocabShard", "VocabParallel", "VOCAB_ALIGN", "split_heads",
           "split_kv_heads", "vocab_bounds"]
