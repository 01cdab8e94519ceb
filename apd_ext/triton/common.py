"""Building blocks shared by the Triton kernels, and the host-side launch plan.

Device helpers (@triton.jit, inlined):
* load_row_block: a [BLOCK_G, 4] block of a logit row as float32, NaN -> -inf, entries past the
  end -> -inf. Blocks are groups of 4 consecutive entries (one Philox call each, noise.py).
* lse_add / lse_finish / lse_merge: online log-sum-exp kept per lane (max, sum of exp(x - max))
  with one exp per entry, reduced over the lanes once at the end of a scan.
* ordered_key / key_to_float: the order-preserving uint32 key of a float (filter.py).

Conventions (apd_ext/reference.py is the spec): x = D * inv_T, the mixture w*D + (1-w)*A and the
score x + g are rounded once each, as in reference.py; the kernels are launched with
enable_fp_fusion=False so that the compiler does not contract them into FMAs (argmax ties, frequent
with bf16 logits, then break exactly as in the reference). Argmax states are per lane with a strict
">" (a lane scans its entries in increasing v), merged by "larger score, then lower index".

Host side: the split plan. A row is scanned by `splits` programs, each over a contiguous range of
BLOCK_V-entry chunks, so that rows * splits fills the GPU when B * K is small; a second tiny kernel
merges the splits of each row in split order (deterministic).
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import triton
import triton.language as tl

from apd_ext.triton.noise import NEG_INF

# ---------------------------------------------------------------------------------------------
# Device helpers


@triton.jit
def load_row_block(row_ptr, v, mask):
    """float32 values of row_ptr[v] (NaN -> -inf; -inf where ~mask)."""
    d = tl.load(row_ptr + v, mask=mask, other=NEG_INF).to(tl.float32)
    return tl.where(d == d, d, NEG_INF)


@triton.jit
def lse_add(m, s, x):
    """Adds x (any entry -inf) to per-lane log-sum-exp states (m, s): one exp per entry."""
    new_m = tl.maximum(m, x)
    # exp(-|x - m|); 0 when both are -inf (the subtrahend is then 0, not -inf)
    e = tl.exp(tl.minimum(m, x) - tl.where(new_m == NEG_INF, 0.0, new_m))
    s = tl.where(x > m, s * e + 1.0, s + e)
    return new_m, s


@triton.jit
def lse_finish(m, s):
    """Reduces per-lane states (any shape) to one (max, sum) pair."""
    mx = tl.max(m)
    return mx, tl.sum(s * tl.exp(m - tl.where(mx == NEG_INF, 0.0, mx)))


@triton.jit
def lse_merge(m1, s1, m2, s2):
    """Merges two (max, sum) states (scalars or tensors)."""
    m = tl.maximum(m1, m2)
    mm = tl.where(m == NEG_INF, 0.0, m)
    return m, s1 * tl.exp(m1 - mm) + s2 * tl.exp(m2 - mm)


@triton.jit
def lse_value(m, s):
    return tl.where(m == NEG_INF, NEG_INF, m + tl.log(s))


@triton.jit
def argmax_finish(best_s, best_i):
    """First argmax over per-lane states (score, index): larger score, then lower index.

    Lanes that never saw a finite candidate hold (-inf, 0), so a row of -inf scores yields 0.
    """
    bs = tl.max(best_s)
    bi = tl.min(tl.where(best_s == bs, best_i, 2147483647))
    return bs, bi


@triton.jit
def ordered_key(x):
    """uint32 key with key(a) < key(b) iff a < b for non-NaN floats (-0 folded into +0)."""
    u = tl.where(x == 0.0, 0.0, x).to(tl.uint32, bitcast=True)
    return tl.where((u >> 31) != 0, u ^ 0xFFFFFFFF, u | 0x80000000)  # (^ rather than ~: interpreter)


@triton.jit
def key_to_float(k):
    return tl.where((k >> 31) != 0, k & 0x7FFFFFFF, k ^ 0xFFFFFFFF).to(tl.float32, bitcast=True)


# ---------------------------------------------------------------------------------------------
# Host side


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class RowConfig:
    """Launch geometry of the row kernels for one vocabulary size."""

    def __init__(self, block_g: int, num_warps: int, sms: int, min_chunks_per_split: int):
        self.block_g = block_g
        self.block_v = 4 * block_g
        self.num_warps = num_warps
        self.sms = sms
        self.min_chunks_per_split = min_chunks_per_split


BLOCKS_PER_SM = 4  # splits are chosen so that rows * splits >= BLOCKS_PER_SM * #SMs
MAX_SPLITS = 64


@lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def row_config(vocab: int, device: torch.device) -> RowConfig:
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        # 2048 entries per chunk, 8 warps: 8 entries (2 groups of 4) per thread per chunk.
        return RowConfig(block_g=512, num_warps=8, sms=_sm_count(idx), min_chunks_per_split=2)
    # Interpreter (CPU tensors, tests): small chunks for small rows so that the loops, the noise
    # skipping and the split merge run; larger ones for large rows to bound the Python overhead.
    block_v = min(4096, max(32, triton.next_power_of_2(triton.cdiv(vocab, 4))))
    return RowConfig(block_g=block_v // 4, num_warps=1, sms=2, min_chunks_per_split=1)


def split_plan(rows: int, vocab: int, cfg: RowConfig) -> tuple[int, int]:
    """(splits, chunks_per_split) for rows of `vocab` entries; no split is empty."""
    nchunks = triton.cdiv(vocab, cfg.block_v)
    s = triton.cdiv(BLOCKS_PER_SM * cfg.sms, rows)
    s = min(s, triton.cdiv(nchunks, cfg.min_chunks_per_split), MAX_SPLITS)
    s = max(s, 1)
    cps = triton.cdiv(nchunks, s)
    return triton.cdiv(nchunks, cps), cps


def inv_temperature(temperature: float) -> float:
    """float32(1 / T) as a Python float (reference._inv_temperature); 1 when T == 0."""
    if temperature == 0:
        return 1.0
    return float(torch.tensor(1.0 / temperature, dtype=torch.float32))


def seed_args(seed_t, seed_v: int, batch: int, dummy: torch.Tensor):
    """(seed_ptr, seed_v, SEED_MODE) for noise.row_noise_key (reference.row_seeds)."""
    if seed_t is None:
        return dummy, int(seed_v), 0
    mode = 2 if seed_t.numel() == batch and batch != 1 else 1
    return seed_t, 0, mode


def offset_args(offset_t, offset_v: int, dummy: torch.Tensor):
    if offset_t is None:
        return dummy, int(offset_v), False
    return offset_t, 0, True
