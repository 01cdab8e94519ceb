"""top-k / top-p threshold of each row (reference.filter_threshold), one program per row.

Launched only when a filter is active; tau[row] is in x = D * inv_T units and the kept set is
x >= tau. Rows past valid_lengths (mixture_accept) are not read; their tau is unspecified.

Method: radix select on the order-preserving uint32 key of x (-0 folded into +0, so equal floats
have equal keys), 4 bits per pass from the top, 8 passes per phase. This is the CUDA backend's
algorithm (csrc/cuda/filter.cuh), so both find the same tau; it reads a row 8 times per phase
where a bit-by-bit bisection would read it 32 times. Passes re-read the row (from L2 on a GPU);
most chunks are skipped:
* Pass 0 reads the row once: per-chunk maximum keys (stored in a small [rows, chunks] workspace),
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
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from apd_ext.triton.common import interpreting, key_to_float, lse_add, lse_finish, ordered_key
from apd_ext.triton.noise import NEG_INF, POS_INF

KEY_FINITE_MIN: tl.constexpr = 0x00800000  # ordered_key(-FLT_MAX): keys of x > -inf are >= this


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
    for p in tl.static_range(8):
        shift: tl.constexpr = 28 - 4 * p
        dig = ((keys >> shift) & 15).to(tl.int32)
        if p == 0:
            hist = tl.histogram(dig, 16)
        else:
            hist = tl.histogram(dig, 16, mask=(keys >> (shift + 4)) == prefix)
        chosen, rank = _pick_count_bin(hist, rank)
        prefix = (prefix << 4) | chosen.to(tl.uint32)
    return prefix


@triton.jit
def _filter_kernel(
    d_ptr, d_sb, d_sk, K, V, valid_ptr, inv_t, top_k, top_p, log_prune, tau_ptr, cmax_ptr, nch_total,
    HAS_VALID: tl.constexpr, USE_K: tl.constexpr, USE_P: tl.constexpr, K_BOUND: tl.constexpr,
    PRUNE_P: tl.constexpr, BLOCK_F: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // K
    i = row - b * K
    nch = nch_total
    if HAS_VALID:
        nch = tl.where(i < tl.load(valid_ptr + b), nch_total, 0)
    row_ptr = d_ptr + b.to(tl.int64) * d_sb + i.to(tl.int64) * d_sk
    cm_ptr = cmax_ptr + row.to(tl.int64) * nch_total
    bins = tl.arange(0, 16)

    # Pass 0: chunk maxima, lane maxima (and lane log-sum-exp for top-p without top-k).
    lane_max = tl.zeros([BLOCK_F], tl.uint32)
    lm = tl.full([BLOCK_F], NEG_INF, tl.float32)
    ls = tl.zeros([BLOCK_F], tl.float32)
    for c in range(0, nch):
        x, key, msk = _row_keys(row_ptr, c, V, inv_t, BLOCK_F)
        lane_max = tl.maximum(lane_max, key)
        tl.store(cm_ptr + c, tl.max(key).to(tl.int32, bitcast=True))
        if USE_P and not USE_K:
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
        for p in tl.static_range(8):
            shift: tl.constexpr = 28 - 4 * p
            if p == 0:
                lo = lb
            else:
                lo = tl.maximum(prefix << (shift + 4), lb)
            hist = tl.zeros([16], tl.int32)
            for c in range(0, nch):
                if tl.load(cm_ptr + c).to(tl.uint32, bitcast=True) >= lo:
                    x, key, msk = _row_keys(row_ptr, c, V, inv_t, BLOCK_F)
                    match = msk & (key >= lb)
                    if p > 0:
                        match = match & ((key >> (shift + 4)) == prefix)
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
        for p in tl.static_range(8):
            shift: tl.constexpr = 28 - 4 * p
            if p == 0:
                lo = lb
            else:
                lo = tl.maximum(prefix << (shift + 4), lb)
            acc = tl.zeros([BLOCK_F, 16], tl.float32)
            for c in range(0, nch):
                if tl.load(cm_ptr + c).to(tl.uint32, bitcast=True) >= lo:
                    x, key, msk = _row_keys(row_ptr, c, V, inv_t, BLOCK_F)
                    match = msk & (key >= lb)
                    if p > 0:
                        match = match & ((key >> (shift + 4)) == prefix)
                    e = tl.where(match, tl.exp(x - M), 0.0)
                    dig = ((key >> shift) & 15).to(tl.int32)
                    acc += tl.where(dig[:, None] == bins[None, :], e[:, None], 0.0)
            h = tl.sum(acc.to(tl.float64), axis=0)
            chosen, above, found = _pick_mass_bin(h, above, target)
            ok = ok & found
            prefix = (prefix << 4) | chosen.to(tl.uint32)
        tau_p = tl.where(ok, key_to_float(prefix), M)
        # Kset empty (no key >= kmin) or +inf logits: nothing finite is kept.
        tau = tl.where((max_key < kmin) | (M == POS_INF), POS_INF, tau_p)

    tl.store(tau_ptr + row, tau)


def filter_active(top_k: int, top_p: float, vocab: int) -> bool:
    return 0 < top_k < vocab or top_p < 1.0


def compute_tau(dllm: torch.Tensor, vocab: int, inv_t: float, top_k: int, top_p: float,
                valid_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """float32 [B * K] thresholds of the rows of dllm (only call when filter_active)."""
    B, K, _ = dllm.shape
    rows = B * K
    use_k = 0 < top_k < vocab
    use_p = top_p < 1.0
    if dllm.device.type == "cuda":
        block_f, num_warps = 1024, 8
    else:  # interpreter: small chunks for small rows so that the chunk loops and skips run
        block_f, num_warps = min(2048, max(32, triton.next_power_of_2(triton.cdiv(vocab, 4)))), 1
    nch = triton.cdiv(vocab, block_f)
    tau = torch.empty(rows, dtype=torch.float32, device=dllm.device)
    cmax = torch.empty(rows * nch, dtype=torch.int32, device=dllm.device)
    prune = use_p and 1.0 - top_p >= 1e-3
    log_prune = math.log((1.0 - top_p) / vocab) - 1.0 if prune else 0.0
    _filter_kernel[(rows,)](
        dllm, dllm.stride(0), dllm.stride(1), K, vocab,
        valid_lengths if valid_lengths is not None else tau, inv_t, int(top_k), float(top_p), log_prune,
        tau, cmax, nch,
        HAS_VALID=valid_lengths is not None, USE_K=use_k, USE_P=use_p,
        K_BOUND=use_k and top_k <= block_f, PRUNE_P=prune, BLOCK_F=block_f,
        num_warps=num_warps, enable_fp_fusion=False,
    )
    return tau
