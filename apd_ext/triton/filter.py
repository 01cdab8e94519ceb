"""top-k / top-p threshold of each row (reference.filter_threshold), on a persistent grid.

Launched only when a filter is active (always for per-row top_k / top_p, see below); tau[row] is in
x = D * inv_T units and the kept set is x >= tau. Rows past valid_lengths (mixture_accept) are not read; their tau is unspecified.

Method: radix select on the order-preserving uint32 key of x (-0 folded into +0, so equal floats
have equal keys), 4 bits per pass from the top, 8 passes per phase. This is the CUDA backend's
algorithm (csrc/cuda/filter.cuh), so both find the same tau; it reads a row 8 times per phase
where a bit-by-bit bisection would read it 32 times. Passes re-read the row (from L2 on a GPU,
see below); most chunks are skipped:
* Pass 0 reads the row once: per-chunk maximum keys (stored in a small per-program workspace),
  per-lane maximum keys, and, for top-p without top-k, the lane log-sum-exp states.
* top-k: counts per bin with tl.histogram. The k-th largest of the per-lane maxima is a lower
  bound of the k-th largest entry (those k lane maxima are k distinct entries); entries below it
  are ignored and every later pass skips the chunks whose maximum key is below
  max(bound, smallest key of the current prefix). Ignoring entries below the k-th largest
  changes no count the bin walk reads, so the result is exact.
* top-p over the top-k set Kset = {x >= tau_k, x > -inf}: the bins hold probability mass
  exp(x - M) (M = max x), summed per lane in float32 and across lanes in float64. Entry v is kept
  iff mass(Kset, x > x_v) < top_p * Z; the kept set is an upper set and each pass picks the lowest
  non-empty bin whose top entry is kept (as the CUDA kernel). Entries with
  x <= M + log((1 - top_p) Z / V) - 1 cannot be kept (the mass at or below them is at most
  (1 - top_p) Z / e), so they are ignored and their chunks skipped, like top-k's (only when
  1 - top_p >= 1e-3, far above the rounding of the sums).
tau = +inf when Kset is empty (every x = -inf) or M = +inf (the reference's NaN probabilities).

Per-row knobs (constexpr ROWS): any per-row temperature / top_k / top_p tensor runs the kernel with
each row's own values read on the device, and with the switches that a scalar call would fix as
constexprs (top-k, top-p, the top-k lane bound, top-p pruning) decided per row at run time, from
the same values the host would use (top_p compared in float64, its mass target in float32): the
same code behind scalar branches, so each row's tau is the scalar call's. A row without an active
filter (top_k 0 or >= vocab, top_p 1) is not read and gets -inf. Pass 0 then always keeps the lane
log-sum-exps (which only top-p without top-k reads), rather than branch in the pipelined loop.

Rows in flight and L2. Only pass 0 should read a row from HBM; the 7-15 later passes should find
it in L2, which holds only while the rows being filtered at once fit in it. One program per row
would put every resident program's row in flight: B * K rows in the hundreds of 152K-entry rows
(300 KB in bf16, 600 KB in float32) are 100-300 MB, against 50-60 MB of L2 on an H100/H200, and
every pass would go to HBM. So the grid is persistent and capped (filter_programs, as the CUDA
backend's filter_blocks): the most programs for which programs * row bytes <= half the L2
(torch.cuda.get_device_properties().L2_cache_size, 50 MB when unknown; half, because the L2 of
these GPUs is two partitions that may both hold a line, and the other rows' tails, the workspace
and the tau writes need room too), balanced so that every program takes the same number of rows
(+-1); program p filters rows p, p + programs, ... one after the other. Example: bf16 rows of
151936 entries (297 KiB), 50 MB of L2: 86 rows in flight; B * K = 800 -> 80 programs of 10 rows.
A row's tau does not depend on the grid (one program computes it, in the same order as ever).
With fewer programs than SMs, each program must keep more bytes in flight: 16 warps per program,
and pass 0 (the one read from HBM) is software-pipelined (tl.range num_stages, cp.async: two
chunks prefetched). The per-lane top-p histogram is laid out [bin, lane], so that a lane's 16
bins sit in one thread; with 2 entries per thread per chunk and a budget of 128 registers the
filter compiles without spills (python -m apd_ext.triton.aot prints the figures).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from apd_ext.triton.common import (
    NO_ALIGN, NO_SPECIALIZE, f64_dummy, gpu_props, key_to_float, lse_add, lse_finish, on_gpu, ordered_key,
    row_temperature, rows_arg, valid_length,
)
from apd_ext.triton.noise import NEG_INF, POS_INF

KEY_FINITE_MIN = tl.constexpr(0x00800000)  # ordered_key(-FLT_MAX): keys of x > -inf are >= this
PASS0_STAGES = tl.constexpr(3)  # pass 0 (the read from HBM) prefetches two chunks ahead (cp.async)


@triton.jit
def _row_keys(row_ptr, c, V, inv_t, BLOCK_F: tl.constexpr):
    """x, its keys (0 past the row's end, below every real key) and the in-row mask of chunk c."""
    v = c * BLOCK_F + tl.arange(0, BLOCK_F)
    msk = v < V
    d = tl.load(row_ptr + v, mask=msk, other=NEG_INF).to(tl.float32)
    x = tl.where(d == d, d, NEG_INF) * inv_t
    key = tl.where(msk, ordered_key(x), 0)
    return x, key, msk


@triton.jit
def _above(key, shift):
    """key >> (shift + 4), 0 for shift == 28 (the first pass: every key matches the empty prefix).
    Two shifts, so that no shift reaches the width of the type."""
    return (key >> shift) >> 4


@triton.jit
def _pick_count_bin(hist, rank):
    """Bin (0..15) holding the rank-th largest entry, and its rank inside that bin."""
    bins = tl.arange(0, 16)
    h = hist.to(tl.int64)
    at_or_above = tl.sum(h) - tl.cumsum(h, 0) + h  # entries in bins >= j
    chosen = tl.maximum(tl.max(tl.where(at_or_above >= rank, bins, -1)), 0)
    above = tl.sum(tl.where(bins > chosen, h, 0))
    return chosen, rank - above


@triton.jit
def _pick_mass_bin(h, above, target):
    """Lowest non-empty bin whose top entry is kept (mass above it < target), the mass above that
    bin, and whether one exists."""
    bins = tl.arange(0, 16)
    before = above + (tl.sum(h) - tl.cumsum(h, 0))  # mass above the top entry of bin j
    chosen = tl.min(tl.where((before < target) & (h > 0.0), bins, 16))
    found = chosen < 16
    chosen = tl.minimum(chosen, 15)
    return chosen, tl.sum(tl.where(bins == chosen, before, 0.0)), found


@triton.jit
def _kth_largest_key(keys, k):
    """Key of the k-th largest entry of a register-resident uint32 vector (1 <= k <= its size)."""
    prefix = tl.full((), 0, tl.uint32)
    rank = tl.full((), 0, tl.int64) + k
    for p in range(0, 8):
        shift = 28 - 4 * p
        hist = tl.histogram(((keys >> shift) & 15).to(tl.int32), 16, mask=_above(keys, shift) == prefix)
        chosen, rank = _pick_count_bin(hist, rank)
        prefix = (prefix << 4) | chosen.to(tl.uint32)
    return prefix



@triton.jit
def _filter_row(row_ptr, V, inv_t, top_k, top_p, log_prune, cm_ptr, nch, USE_K, USE_P, K_BOUND, PRUNE_P,
                LANE_LSE: tl.constexpr, BLOCK_F: tl.constexpr):
    """tau of one row (all threads of the program); cm_ptr: nch int32 of workspace. USE_K, USE_P,
    K_BOUND, PRUNE_P: constexprs (a scalar filter's specialisation) or the row's runtime flags (a
    per-row filter: the same code behind scalar branches, so the same tau). LANE_LSE: pass 0 keeps
    the lane log-sum-exps (top-p without top-k reads them)."""
    bins = tl.arange(0, 16)

    # Pass 0: chunk maxima, lane maxima (and lane log-sum-exp for top-p without top-k).
    lane_max = tl.zeros([BLOCK_F], tl.uint32)
    lm = tl.full([BLOCK_F], NEG_INF, tl.float32)
    ls = tl.zeros([BLOCK_F], tl.float32)
    for c in tl.range(0, nch, num_stages=PASS0_STAGES):
        x, key, msk = _row_keys(row_ptr, c, V, inv_t, BLOCK_F)
        lane_max = tl.maximum(lane_max, key)
        tl.store(cm_ptr + c, tl.max(key).to(tl.int32, bitcast=True))
        if LANE_LSE:
            lm, ls = lse_add(lm, ls, x)
    max_key = tl.max(lane_max)

    tau = tl.full((), NEG_INF, tl.float32)
    kmin = tl.full((), KEY_FINITE_MIN, tl.uint32)  # top-p's set: keys >= kmin
    if USE_K:
        lb = tl.full((), 0, tl.uint32)
        if K_BOUND:
            lb = _kth_largest_key(lane_max, top_k)
        prefix = tl.full((), 0, tl.uint32)
        rank = tl.full((), 0, tl.int64) + top_k
        for p in range(0, 8):  # a loop, not unrolled: 8 copies of the chunk loop only cost code size
            shift = 28 - 4 * p
            lo = tl.maximum((prefix << shift) << 4, lb)  # smallest key with the current prefix
            hist = tl.zeros([16], tl.int32)
            for c in range(0, nch):
                if tl.load(cm_ptr + c).to(tl.uint32, bitcast=True) >= lo:
                    x, key, msk = _row_keys(row_ptr, c, V, inv_t, BLOCK_F)
                    match = msk & (key >= lb) & (_above(key, shift) == prefix)
                    hist += tl.histogram(((key >> shift) & 15).to(tl.int32), 16, mask=match)
            chosen, rank = _pick_count_bin(hist, rank)
            prefix = (prefix << 4) | chosen.to(tl.uint32)
        tau = key_to_float(prefix)
        kmin = tl.maximum(prefix, kmin)

    if USE_P:
        M = key_to_float(max_key)
        if USE_K:
            zacc = tl.zeros([BLOCK_F], tl.float32)
            for c in range(0, nch):
                if tl.load(cm_ptr + c).to(tl.uint32, bitcast=True) >= kmin:
                    x, key, msk = _row_keys(row_ptr, c, V, inv_t, BLOCK_F)
                    zacc += tl.where(msk & (key >= kmin), tl.exp(x - M), 0.0)
            Z = tl.sum(zacc.to(tl.float64))
        else:
            zm, zs = lse_finish(lm, ls)
            Z = zs.to(tl.float64)
        target = top_p * Z
        lb = kmin
        if PRUNE_P:
            t0 = M + (log_prune + tl.log(Z)).to(tl.float32)
            lb = tl.maximum(lb, tl.where(t0 == t0, ordered_key(t0), 0))
        prefix = tl.full((), 0, tl.uint32)
        above = tl.full((), 0.0, tl.float64)
        ok = max_key >= kmin
        for p in range(0, 8):
            shift = 28 - 4 * p
            lo = tl.maximum((prefix << shift) << 4, lb)
            acc = tl.zeros([16, BLOCK_F], tl.float32)  # [bin, lane]: a lane's 16 bins in one thread
            for c in range(0, nch):
                if tl.load(cm_ptr + c).to(tl.uint32, bitcast=True) >= lo:
                    x, key, msk = _row_keys(row_ptr, c, V, inv_t, BLOCK_F)
                    match = msk & (key >= lb) & (_above(key, shift) == prefix)
                    e = tl.where(match, tl.exp(x - M), 0.0)
                    dig = ((key >> shift) & 15).to(tl.int32)
                    acc += tl.where(dig[None, :] == bins[:, None], e[None, :], 0.0)
            h = tl.sum(acc.to(tl.float64), axis=1)
            chosen, above, found = _pick_mass_bin(h, above, target)
            ok = ok & found
            prefix = (prefix << 4) | chosen.to(tl.uint32)
        tau_p = tl.where(ok, key_to_float(prefix), M)
        # Kset empty (no key >= kmin) or +inf logits: nothing finite is kept.
        tau = tl.where((max_key < kmin) | (M == POS_INF), POS_INF, tau_p)

    return tau


@triton.jit(do_not_specialize=NO_SPECIALIZE + ["top_k", "nch", "k_rows", "p_rows"],
            do_not_specialize_on_alignment=NO_ALIGN + ["k_ptr", "p_ptr"])
def _filter_kernel(
    d_ptr, d_sb, d_sk, K, V, rows, valid_ptr, has_valid, inv_t, top_k, top_p, log_prune, tau_ptr, cmax_ptr,
    nch, t_ptr, t_rows, k_ptr, k_rows, p_ptr, p_rows, top_p64: tl.float64,
    USE_K: tl.constexpr, USE_P: tl.constexpr, K_BOUND: tl.constexpr, PRUNE_P: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Persistent grid: program p takes rows p, p + programs, ... (see the module docstring).

    ROWS (per-row knobs): batch row b's temperature, top_k and top_p come from t_ptr[b] (float64),
    k_ptr[b] (int64) and p_ptr[b] (float64) where t_rows / k_rows / p_rows != 0, else from the
    scalars (top_p64: top_p in float64); the filter's switches are then the row's runtime values,
    decided as the host decides a scalar call's, and a row without an active filter gets -inf."""
    pid = tl.program_id(0)
    cm_ptr = cmax_ptr + pid.to(tl.int64) * nch  # this program's chunk maxima, reused row after row
    for row in range(pid, rows, tl.num_programs(0)):
        b = row // K
        i = row - b * K
        if i < valid_length(valid_ptr, b, K, has_valid):
            row_ptr = d_ptr + b.to(tl.int64) * d_sb + i.to(tl.int64) * d_sk
            if ROWS:
                inv, _ = row_temperature(t_ptr, t_rows, inv_t, b, True)
                k = tl.full((), 0, tl.int64) + top_k
                if k_rows != 0:
                    k = tl.load(k_ptr + b)
                p = top_p64
                if p_rows != 0:
                    p = tl.load(p_ptr + b)
                use_k = (k > 0) & (k < V)
                use_p = p < 1.0
                prune = use_p & (1.0 - p >= 1e-3)
                lp = tl.where(prune, tl.log(tl.where(prune, (1.0 - p) / V, 1.0)) - 1.0, 0.0).to(tl.float32)
                tau = tl.full((), NEG_INF, tl.float32)
                if use_k | use_p:
                    # top_p as a scalar call passes it: rounded to float32
                    tau = _filter_row(row_ptr, V, inv, k, p.to(tl.float32), lp, cm_ptr, nch, use_k, use_p,
                                      use_k & (k <= BLOCK_F), prune, True, BLOCK_F)
            else:
                tau = _filter_row(row_ptr, V, inv_t, top_k, top_p, log_prune, cm_ptr, nch,
                                  USE_K, USE_P, K_BOUND, PRUNE_P, USE_P and not USE_K, BLOCK_F)
            tl.store(tau_ptr + row, tau)
        tl.debug_barrier()  # every thread is done with cm_ptr before the next row rewrites it


def filter_programs(rows: int, row_bytes: int, l2_bytes: int) -> int:
    """Programs of the persistent grid: the most for which programs * row_bytes <= l2_bytes / 2,
    balanced so that every program takes the same number of rows (+-1)."""
    fit = max(1, l2_bytes // 2 // max(row_bytes, 1))
    return triton.cdiv(rows, triton.cdiv(rows, fit))


# Interpreter (CPU tensors): a pretend L2 of three rows, so that programs loop over rows in tests.
_INTERPRETER_L2_ROWS = 3


def compute_tau(dllm: torch.Tensor, vocab: int, inv_t: float, top_k, top_p,
                valid_lengths: torch.Tensor | None = None, temperature=None) -> torch.Tensor:
    """float32 [B * K] thresholds of the rows of dllm (only call when modes.filter_active).

    top_k / top_p: scalars, or per-row [B] tensors (int64 / float64); temperature: None (inv_t is
    the call's float32 1 / T) or a per-row float64 [B] tensor. Any per-row knob selects the ROWS
    kernel: every row is filtered with its own values, exactly as a scalar call on it (a row whose
    top_k is 0 or >= vocab and top_p 1 gets -inf, read nothing)."""
    B, K, _ = dllm.shape
    rows = B * K
    per_row = any(isinstance(x, torch.Tensor) for x in (top_k, top_p, temperature))
    use_k = not per_row and 0 < top_k < vocab
    use_p = not per_row and top_p < 1.0
    row_bytes = vocab * dllm.element_size()
    if on_gpu(dllm.device):
        # 1024 entries per chunk, 16 warps (2 entries per thread): see the module docstring.
        block_f, num_warps, maxnreg = 1024, 16, 128
        programs = filter_programs(rows, row_bytes, gpu_props(dllm.device).l2_bytes)
    else:  # interpreter: small chunks for small rows so that the chunk loops and skips run
        block_f = min(2048, max(32, triton.next_power_of_2(triton.cdiv(vocab, 4))))
        num_warps, maxnreg = 1, None
        programs = filter_programs(rows, row_bytes, 2 * _INTERPRETER_L2_ROWS * row_bytes)
    nch = triton.cdiv(vocab, block_f)
    tau = torch.empty(rows, dtype=torch.float32, device=dllm.device)
    cmax = torch.empty(programs * nch, dtype=torch.int32, device=dllm.device)
    prune = use_p and 1.0 - top_p >= 1e-3
    log_prune = math.log((1.0 - top_p) / vocab) - 1.0 if prune else 0.0
    has_valid = valid_lengths is not None
    if not has_valid:  # an int64 pointer all the same (one kernel specialisation for both cases)
        valid_lengths = torch.empty(1, dtype=torch.int64, device=dllm.device)
    if per_row:  # the scalars beside per-row tensors: the values the kernel reads for them
        f64 = f64_dummy(valid_lengths)
        t_ptr, t_rows = rows_arg(temperature, f64)
        k_ptr, k_rows = rows_arg(top_k, valid_lengths)
        p_ptr, p_rows = rows_arg(top_p, f64)
        k_val = 0 if k_rows else int(top_k)
        p_val = 1.0 if p_rows else float(top_p)
    else:  # the scalar kernel reads none of these (float32 pointers, as every scalar call passes)
        t_ptr, t_rows, k_ptr, k_rows, p_ptr, p_rows = tau, 0, valid_lengths, 0, tau, 0
        k_val, p_val = int(top_k), float(top_p)
    _filter_kernel[(programs,)](
        dllm, dllm.stride(0), dllm.stride(1), K, vocab, rows, valid_lengths,
        int(has_valid), inv_t, k_val, p_val, log_prune, tau, cmax, nch,
        t_ptr, t_rows, k_ptr, k_rows, p_ptr, p_rows, p_val,
        USE_K=use_k, USE_P=use_p, K_BOUND=use_k and top_k <= block_f, PRUNE_P=prune, ROWS=per_row,
        BLOCK_F=block_f, num_warps=num_warps, maxnreg=maxnreg, enable_fp_fusion=False,
    )
    return tau
