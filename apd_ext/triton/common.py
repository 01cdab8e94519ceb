"""Building blocks shared by the Triton kernels, and the host-side launch plan.

Device helpers (@triton.jit, inlined):
* load_row_block: a [BLOCK_G, 4] block of a logit row as float32, NaN -> -inf, entries past the
  end -> -inf. Blocks are groups of 4 consecutive entries (one Philox call each, noise.py).
* lse_add / lse_finish / lse_merge / log_prob: online log-sum-exp kept per lane (max, sum of exp(x - max))
  with one exp per entry, reduced over the lanes once at the end of a scan.
* argmax_update / argmax_finish: first-argmax states per group of 4 entries (the 4 entries of a
  group sit in one thread, so the group's reduction stays in registers).
* ordered_key / key_to_float: the order-preserving uint32 key of a float (filter.py).
* valid_length: a batch row's number of valid window positions.
* row_temperature / row_weight: a batch row's per-row knobs (the ROWS specialisations), rounded
  from float64 on the device exactly as the host rounds a scalar's.

Conventions (apd_ext/reference.py is the spec): x = D * inv_T, the mixture w*D + (1-w)*A and the
score x + g are rounded once each, as in reference.py; the kernels are launched with
enable_fp_fusion=False so that the compiler does not contract them into FMAs (argmax ties, frequent
with bf16 logits, then break exactly as in the reference). Argmax states are per group with a
strict ">" (a group scans its entries in increasing v), merged by "larger score, then lower index".

Host side: the launch geometry (row_config, GpuProps) and the split plan. A row is scanned by
`splits` programs, each over a contiguous range of BLOCK_V-entry chunks, so that rows * splits
fills the GPU when B * K is small; a second tiny kernel merges the splits of each row in split
order (deterministic). Tensors on the "meta" device are planned as on a GPU (META_GPU), which is
how apd_ext/triton/aot.py compiles, without a GPU, what the launchers would launch on one.

Compiled specialisations: Triton compiles one kernel per combination of constexpr values and of
integer/pointer attributes (value 1, divisibility by 16). Values that only steer scalar code
once per program (seed/offset modes, whether valid_lengths is given) are runtime arguments, and
sizes that only enter address arithmetic are not specialised (NO_SPECIALIZE), so that the set of
kernels stays what the modes need: each is JIT-compiled on first use on a GPU, and all are
compiled by the AOT check.
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
def log_prob(x, m, s):
    """log softmax of x in the row whose state is (m, s): (x - m) - log(s), never m + log(s) first,
    which rounds at m's scale for large logits (fp16 near 6e4, float32 near 3e38). NaN for a row
    without finite entries (as apd::log_prob)."""
    return tl.where(m == NEG_INF, x - m, (x - m) - tl.log(s))


@triton.jit
def argmax_update(best_s, best_i, score, v):
    """Per-group argmax states ([BLOCK_G] score, index) updated with a [BLOCK_G, 4] block of
    scores at indices v: the group's first maximum (lowest index among equal scores), taken only
    when strictly larger (a group scans its entries in increasing v, so ties keep the earlier).
    The 4 entries of a group live in one thread: the reductions over them stay in registers."""
    gs = tl.max(score, axis=1)
    gi = tl.min(tl.where(score == gs[:, None], v, 2147483647), axis=1)
    upd = gs > best_s
    return tl.where(upd, gs, best_s), tl.where(upd, gi, best_i)


@triton.jit
def argmax_finish(best_s, best_i):
    """First argmax over per-lane states (score, index): larger score, then lower index.

    Lanes that never saw a finite candidate hold (-inf, 0), so a row of -inf scores yields 0.
    """
    bs = tl.max(best_s)
    bi = tl.min(tl.where(best_s == bs, best_i, 2147483647))
    return bs, bi


@triton.jit
def valid_length(valid_ptr, b, K, has_valid):
    """min(max(valid_ptr[b], 0), K) when has_valid, else K (int64; valid_ptr: int64)."""
    L = tl.full((), 0, tl.int64) + K
    if has_valid != 0:
        L = tl.minimum(tl.maximum(tl.load(valid_ptr + b), 0), K)
    return L


@triton.jit
def row_temperature(t_ptr, t_rows, inv_t, b, mask):
    """(float32 1 / T, greedy) of batch row(s) b (a scalar or a vector, masked by mask): with t_rows
    != 0 from the per-row float64 temperatures t_ptr[b] (1 / T in float64, then float32, as the host
    computes a scalar's; 1 and greedy where T == 0), else the call's scalar inv_t, never greedy (a
    scalar T == 0 selects the argmax modes instead). t_ptr points to float64 (a dummy when unused)."""
    on = (t_rows != 0) & mask
    t = tl.load(t_ptr + b, mask=on, other=1.0)
    greedy = on & (t == 0.0)
    return tl.where(on, (1.0 / tl.where(greedy, 1.0, t)).to(tl.float32), inv_t), greedy


@triton.jit
def row_weight(w_ptr, w_rows, wf, omwf, w_mode, b):
    """(float32 w, float32 1 - w, mode) of batch row b: with w_rows != 0 from the per-row float64
    weights w_ptr[b] (w and 1 - w rounded from float64, as the host rounds a scalar's; mode 1 when
    w == 1, 2 when w == 0, else 0), else the call's scalars. w_ptr: float64 (a dummy when unused)."""
    on = w_rows != 0
    w = tl.load(w_ptr + b, mask=on, other=0.5)
    mode = tl.where(w == 1.0, 1, tl.where(w == 0.0, 2, 0))
    return (tl.where(on, w.to(tl.float32), wf), tl.where(on, (1.0 - w).to(tl.float32), omwf),
            tl.where(on, mode, w_mode))


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
    """Launch geometry of the row kernels for one vocabulary size. maxnreg: register budget of the
    mixture kernel per thread (None: ptxas decides)."""

    def __init__(self, block_g: int, num_warps: int, sms: int, min_chunks_per_split: int, maxnreg=None):
        self.block_g = block_g
        self.block_v = 4 * block_g
        self.num_warps = num_warps
        self.sms = sms
        self.min_chunks_per_split = min_chunks_per_split
        self.maxnreg = maxnreg


BLOCKS_PER_SM = 4  # splits are chosen so that rows * splits >= BLOCKS_PER_SM * #SMs
MAX_SPLITS = 64


class GpuProps:
    """What the launch plans need to know about a GPU."""

    def __init__(self, sms: int, l2_bytes: int):
        self.sms = sms
        self.l2_bytes = l2_bytes


# Tensors on the "meta" device plan their launches as on a GPU with these properties (an H100/H200
# SXM): apd_ext/triton/aot.py runs the launchers on meta tensors to compile, without a GPU, exactly
# the kernels they would launch on one.
META_GPU = GpuProps(sms=132, l2_bytes=50 * 2**20)


@lru_cache(maxsize=None)
def _cuda_props(index: int) -> GpuProps:
    p = torch.cuda.get_device_properties(index)
    return GpuProps(p.multi_processor_count, int(getattr(p, "L2_cache_size", 0) or 50 * 2**20))


def on_gpu(device: torch.device) -> bool:
    """True when kernels for `device` are compiled for a GPU (cuda, or meta: planned as on a GPU)."""
    return device.type in ("cuda", "meta")


def gpu_props(device: torch.device) -> GpuProps:
    if device.type == "meta":
        return META_GPU
    return _cuda_props(device.index if device.index is not None else torch.cuda.current_device())


def row_config(vocab: int, device: torch.device) -> RowConfig:
    if on_gpu(device):
        # 1024 entries per chunk, 8 warps: one group of 4 entries per thread per chunk (a 16-byte
        # load of float32, 8 bytes of 16-bit logits), so that the per-entry states (three online
        # log-sum-exps in the mixture) stay small. The mixture kernel gets a budget of 80
        # registers: 3 blocks of 256 threads per SM, no spills (aot.py reports the figures;
        # without the budget ptxas picks 64 for some specialisations and spills).
        return RowConfig(block_g=256, num_warps=8, sms=gpu_props(device).sms, min_chunks_per_split=2,
                         maxnreg=80)
    # Interpreter (CPU tensors, tests): small chunks for small rows so that the loops, the noise
    # skipping and the split merge run; larger ones for large rows to bound the Python overhead.
    block_v = min(4096, max(32, triton.next_power_of_2(triton.cdiv(vocab, 4))))
    return RowConfig(block_g=block_v // 4, num_warps=1, sms=2, min_chunks_per_split=1)


def vector_aligned(vocab: int, *logits: torch.Tensor) -> bool:
    """True when every row of every [B, K, V] tensor starts 16-byte aligned at a stride Triton
    knows to be a multiple of 16 elements (its "divisible by 16" specialisation), so that rows load
    as 16-byte vectors."""
    return vocab % 16 == 0 and all(
        t.data_ptr() % 16 == 0 and t.stride(0) % 16 == 0 and t.stride(1) % 16 == 0 for t in logits)


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


def is_rows(knob) -> bool:
    """Whether a knob (backends.Filter field, mixture_weight) is a per-row [B] tensor."""
    return isinstance(knob, torch.Tensor)


def rows_arg(knob, dummy: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(pointer, rows flag) of a knob for the ROWS kernels: its [B] tensor and 1, or (dummy, 0)."""
    return (knob, 1) if is_rows(knob) else (dummy, 0)


def f64_dummy(t: torch.Tensor) -> torch.Tensor:
    """A float64 tensor standing for a per-row knob pointer that is not read (a view of an int64 or
    float64 tensor, no allocation), so that the ROWS kernels keep one signature."""
    return t if t.dtype == torch.float64 else t.view(torch.float64)


def check_vocab_offset(vocab_offset: int) -> int:
    """The partial ops' vocab_offset as an int: the first global token id of the slice, >= 0 and a
    multiple of 4 (generated noise comes in groups of 4 entries per Philox call)."""
    off = int(vocab_offset)
    if off < 0 or off % 4:
        raise ValueError(f"vocab_offset must be a non-negative multiple of 4, got {off}")
    return off


def slice_threshold(threshold: torch.Tensor, batch: int, window: int, device: torch.device) -> torch.Tensor:
    """A partial op's given threshold [B, K] as the kernels read it: float32 [B * K], contiguous."""
    if tuple(threshold.shape) != (batch, window):
        raise ValueError(f"threshold must have shape [{batch}, {window}], got {list(threshold.shape)}")
    return threshold.to(device=device, dtype=torch.float32).contiguous().view(batch * window)


def noise_key_args(seed_t, seed_v: int, offset_t, offset_v: int, batch: int, dummy: torch.Tensor,
                   used: bool = True):
    """(seed_ptr, seed_v, seed_mode, offset_ptr, offset_v, offset_mode) for noise.row_noise_key
    (reference.row_seeds). dummy: any int64 tensor, passed for the pointers that are not read.
    When the generator is not used, the canonical (unread) values."""
    if not used:
        return dummy, 0, 0, dummy, 0, 0
    if seed_t is None:
        seed = (dummy, int(seed_v), 0)
    else:
        seed = (seed_t, 0, 2 if seed_t.numel() == batch and batch != 1 else 1)
    if offset_t is None:
        offset = (dummy, int(offset_v), 0)
    else:
        offset = (offset_t, 0, 2 if offset_t.numel() == batch and batch != 1 else 1)
    return (*seed, *offset)


# Kernel arguments whose values should not multiply the compiled specialisations: sizes used only
# in address arithmetic or loop bounds (Triton would compile a variant for the value 1), mode
# flags read once per program, and pointers to scalars (no vector access to align).
NO_SPECIALIZE = ["K", "splits", "chunks_per_split", "rows", "seed_v", "seed_mode", "offset_v", "offset_mode",
                 "has_valid", "vocab_offset", "t_rows", "w_rows", "w_mode"]
NO_ALIGN = ["seed_ptr", "offset_ptr", "valid_ptr", "t_ptr", "w_ptr"]
