"""mixture_accept (reference.mixture_accept): per row (b, i) with i < L(b), with
x = D * inv_T, keep = x >= tau and D > -inf, mix = w*D + (1-w)*A (D when w == 1, A when w == 0,
NaN -> -inf), mix_kept = keep ? mix : -inf:
the target (first argmax of mix [greedy_target], of mix_kept [T == 0], or of mix_kept * inv_T + g
with the draft's g) and three log-sum-exps (kept D, all A, mix_kept); then per batch row the log-probs
of the draft tokens and the accepted prefix length.

_mixture_partial_kernel: grid rows * splits; program (row, split) reads its chunk range of both rows
once ([BLOCK_G, 4] blocks, per-lane online states, noise skipping as in sample_draft.py) and writes a
partial state. Rows at i >= L(b) are not read. On a GPU: BLOCK_G = 256, 8 warps, one group of 4
entries per thread per chunk, so that the three per-lane log-sum-exp states cost 24 registers; with
a budget of 80 registers (3 programs of 256 threads per SM) no specialisation of the hot path
spills (at BLOCK_G = 512, two groups per thread, it took up to 187 registers: one program per SM).
_mixture_finalize_kernel: one program per batch row b, vectorised over the window positions: merges
the splits of each position in split order, writes targets and log-probs, and reduces the first
rejected position across the window to num_accepted (no host sync anywhere).

Per-row knobs (constexpr ROWS, when the temperature or mixture_weight is a [B] tensor): every
kernel reads batch row b's inv_T and greedy flag (common.row_temperature) and its w, 1 - w and
weight mode (common.row_weight; scalars stand in for a knob given as a scalar), W_MODE being
W_MIX; the mixture of a row is then the value its scalar W_MODE computes (w == 1: D, w == 0: A),
and a greedy row (T = 0) of a sampled target takes the argmax of mix_kept, as TARGET_ARGMAX_KEPT.

mixture_accept_partial (reference.mixture_accept_partial): the same row kernel over one vocabulary
slice, global tokens [vocab_offset, vocab_offset + vocab) (generated noise at the global ids:
constexpr SHIFT_NOISE, the Philox group index plus vocab_offset / 4; explicit uniforms at the local
column; a given threshold [B, K] replaces compute_tau's), then _mixture_stats_kernel instead of
the finalize kernel: per row the global target and float32 stats [B, K, 10]
(backends.MIXTURE_STATS: best score, (max, sum) of kept D, A and kept mixture, then those three at
the global draft token when the slice holds it, else -inf); rows at i >= L(b) get target -1 and
(-inf, (-inf, 0) x 3, -inf x 3). The accepted prefix is apd_ext/parallel/vocab.py's (it needs
every slice). mixture_accept's kernels compile to the same code as before (SHIFT_NOISE False).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from apd_ext.triton.common import (
    NO_ALIGN, NO_SPECIALIZE, argmax_finish, argmax_update, check_vocab_offset, f64_dummy, interpreting,
    inv_temperature, is_rows, load_row_block, lse_add, lse_finish, lse_merge, log_prob, noise_key_args,
    row_config, row_temperature, row_weight, rows_arg, slice_threshold, split_plan, valid_length, vector_aligned,
)
from apd_ext.triton.filter import compute_tau
from apd_ext.triton.modes import (
    TARGET_ARGMAX_KEPT, TARGET_ARGMAX_MIX, TARGET_PHILOX, TARGET_UNIFORM, filter_active, target_mode,
)
from apd_ext.triton.noise import GUMBEL_MAX, NEG_INF, gumbel_from_explicit, philox_gumbel_block, row_noise_key

W_MIX = tl.constexpr(0)
W_ONE = tl.constexpr(1)  # mix = D
W_ZERO = tl.constexpr(2)  # mix = A


NAN = tl.constexpr(float("nan"))
NPART = tl.constexpr(7)  # floats per partial: (max, sum) of kept D, A, mix_kept; best score


@triton.jit
def _mix(d, a, wf, omwf, wm, W_MODE: tl.constexpr, ROWS: tl.constexpr):
    """The mixture logit (NaN -> -inf). ROWS: the row's runtime mode wm (common.row_weight: 1 gives
    d, 2 gives a, 0 the weighted sum), each value as the scalar mode computes it; else W_MODE."""
    if ROWS:  # scalar branches (wm is one row's): no per-entry selects, no extra live values
        if wm == 1:
            mix = d
        elif wm == 2:
            mix = a
        else:
            mix = wf * d + omwf * a
            mix = tl.where(mix == mix, mix, NEG_INF)
    elif W_MODE == W_ONE:
        mix = d
    elif W_MODE == W_ZERO:
        mix = a
    else:
        mix = wf * d + omwf * a
        mix = tl.where(mix == mix, mix, NEG_INF)
    return mix


@triton.jit(do_not_specialize=NO_SPECIALIZE, do_not_specialize_on_alignment=NO_ALIGN)
def _mixture_partial_kernel(
    d_ptr, d_sb, d_sk, a_ptr, a_sb, a_sk, K, V, splits, chunks_per_split, valid_ptr, has_valid,
    inv_t, wf, omwf, tau_ptr,
    seed_ptr, seed_v: tl.int64, seed_mode, offset_ptr, offset_v: tl.int64, offset_mode, u_ptr, u_sb, u_sk,
    part_f_ptr, part_i_ptr, vocab_offset, t_ptr, t_rows, w_ptr, w_rows, w_mode,
    HAS_TAU: tl.constexpr, W_MODE: tl.constexpr, TARGET: tl.constexpr, SHIFT_NOISE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """Program (row, split): the partial state of its chunk range. ROWS (per-row knobs): batch row
    b's inv_t and greedy flag (common.row_temperature) and its weights (common.row_weight) replace
    the scalars; a greedy row of a sampled TARGET takes the argmax of mix_kept without noise, as
    TARGET_ARGMAX_KEPT would. W_MODE is then W_MIX and unused."""
    BLOCK_V: tl.constexpr = 4 * BLOCK_G
    pid = tl.program_id(0)
    row = pid // splits
    split = pid - row * splits
    b = row // K
    i = row - b * K
    d_row = d_ptr + b.to(tl.int64) * d_sb + i.to(tl.int64) * d_sk
    a_row = a_ptr + b.to(tl.int64) * a_sb + i.to(tl.int64) * a_sk
    c_begin = split * chunks_per_split
    c_end = tl.minimum(c_begin + chunks_per_split, tl.cdiv(V, BLOCK_V))
    c_end = tl.where(i < valid_length(valid_ptr, b, K, has_valid), c_end, c_begin)
    tau = tl.full((), NEG_INF, tl.float32)
    if HAS_TAU:
        tau = tl.load(tau_ptr + row)
    if ROWS:
        inv_t, greedy = row_temperature(t_ptr, t_rows, inv_t, b, True)
        wf, omwf, wm = row_weight(w_ptr, w_rows, wf, omwf, w_mode, b)
    else:  # constexprs: the scalar modes' code is unchanged
        greedy = False
        wm = 0
    if TARGET == TARGET_PHILOX:
        k0, k1, o0, o1 = row_noise_key(seed_ptr, seed_v, seed_mode, offset_ptr, offset_v, offset_mode, b)
        if SHIFT_NOISE:
            group_shift = vocab_offset // 4  # noise of global ids: group index + vocab_offset / 4
    if TARGET == TARGET_UNIFORM:
        u_row = u_ptr + b.to(tl.int64) * u_sb + i.to(tl.int64) * u_sk

    lane_v = tl.arange(0, BLOCK_G)[:, None] * 4 + tl.arange(0, 4)[None, :]
    md = tl.full([BLOCK_G, 4], NEG_INF, tl.float32)
    sd = tl.zeros([BLOCK_G, 4], tl.float32)
    ma = tl.full([BLOCK_G, 4], NEG_INF, tl.float32)
    sa = tl.zeros([BLOCK_G, 4], tl.float32)
    mm = tl.full([BLOCK_G, 4], NEG_INF, tl.float32)
    sm = tl.zeros([BLOCK_G, 4], tl.float32)
    best_s = tl.full([BLOCK_G], NEG_INF, tl.float32)  # per group of 4 (argmax_update)
    best_i = tl.zeros([BLOCK_G], tl.int32)
    bound = tl.full((), NEG_INF, tl.float32)
    for c in range(c_begin, c_end):
        v = c * BLOCK_V + lane_v
        msk = v < V
        d = load_row_block(d_row, v, msk)
        a = load_row_block(a_row, v, msk)
        keep = d > NEG_INF
        if HAS_TAU:
            keep = keep & (d * inv_t >= tau)
        mix = _mix(d, a, wf, omwf, wm, W_MODE, ROWS)
        dk = tl.where(keep, d, NEG_INF)
        mk = tl.where(keep, mix, NEG_INF)
        md, sd = lse_add(md, sd, dk)
        ma, sa = lse_add(ma, sa, a)
        if W_MODE != W_ONE:  # w == 1: mix_kept is kept D (ROWS: the same sums, as mk == dk then)
            mm, sm = lse_add(mm, sm, mk)
        if TARGET == TARGET_ARGMAX_MIX:
            best_s, best_i = argmax_update(best_s, best_i, mix, v)
        elif TARGET == TARGET_ARGMAX_KEPT:
            best_s, best_i = argmax_update(best_s, best_i, mk, v)
        elif TARGET == TARGET_PHILOX:
            t = mk * inv_t
            if ROWS:
                # a greedy row (inv_t 1: t == mk) takes t itself; one argmax_update for both kinds
                # of rows (two call sites in the loop cost registers: spills under the budget)
                if greedy | (tl.max(t) + GUMBEL_MAX > bound):
                    score = t
                    if greedy == 0:
                        group0 = c * BLOCK_G
                        if SHIFT_NOISE:
                            group0 = group0 + group_shift
                        score = t + philox_gumbel_block(group0, i, k0, k1, o0, o1, BLOCK_G)
                    best_s, best_i = argmax_update(best_s, best_i, score, v)
                    bound = tl.maximum(bound, tl.max(score))
            elif tl.max(t) + GUMBEL_MAX > bound:
                group0 = c * BLOCK_G
                if SHIFT_NOISE:
                    group0 = group0 + group_shift
                score = t + philox_gumbel_block(group0, i, k0, k1, o0, o1, BLOCK_G)
                best_s, best_i = argmax_update(best_s, best_i, score, v)
                bound = tl.maximum(bound, tl.max(score))
        elif greedy:
            best_s, best_i = argmax_update(best_s, best_i, mk, v)
        else:
            t = mk * inv_t
            u = tl.load(u_row + v, mask=msk, other=0.5)
            score = tl.where(t > NEG_INF, t + gumbel_from_explicit(u), NEG_INF)
            best_s, best_i = argmax_update(best_s, best_i, score, v)

    ld_m, ld_s = lse_finish(md, sd)
    la_m, la_s = lse_finish(ma, sa)
    if W_MODE == W_ONE:
        lm_m = ld_m
        lm_s = ld_s
    else:
        lm_m, lm_s = lse_finish(mm, sm)
    bs, bi = argmax_finish(best_s, best_i)
    q = part_f_ptr + pid.to(tl.int64) * NPART
    tl.store(q + 0, ld_m)
    tl.store(q + 1, ld_s)
    tl.store(q + 2, la_m)
    tl.store(q + 3, la_s)
    tl.store(q + 4, lm_m)
    tl.store(q + 5, lm_s)
    tl.store(q + 6, bs)
    tl.store(part_i_ptr + pid, bi)


@triton.jit
def _merge_splits(part_f_ptr, part_i_ptr, r, splits, act, ld_m, ld_s, la_m, la_s, lm_m, lm_s, bs, bi):
    """Merges the partial states of rows r (masked by act) in split order into the given states:
    the three (max, sum) pairs and the first argmax (ties stay with the earlier split)."""
    for sp in range(0, splits):
        q = part_f_ptr + (r * splits + sp) * NPART
        ld_m, ld_s = lse_merge(ld_m, ld_s, tl.load(q + 0, mask=act, other=NEG_INF),
                               tl.load(q + 1, mask=act, other=0.0))
        la_m, la_s = lse_merge(la_m, la_s, tl.load(q + 2, mask=act, other=NEG_INF),
                               tl.load(q + 3, mask=act, other=0.0))
        lm_m, lm_s = lse_merge(lm_m, lm_s, tl.load(q + 4, mask=act, other=NEG_INF),
                               tl.load(q + 5, mask=act, other=0.0))
        sc = tl.load(q + 6, mask=act, other=NEG_INF)
        ix = tl.load(part_i_ptr + r * splits + sp, mask=act, other=0)
        upd = sc > bs  # ties stay with the earlier split (lower indices)
        bs = tl.where(upd, sc, bs)
        bi = tl.where(upd, ix, bi)
    return ld_m, ld_s, la_m, la_s, lm_m, lm_s, bs, bi


@triton.jit
def _values_at(d_ptr, d_sb, d_sk, a_ptr, a_sb, a_sk, b, i, r, col, ld, act, inv_t, wf, omwf, wm, tau_ptr,
               HAS_TAU: tl.constexpr, W_MODE: tl.constexpr, ROWS: tl.constexpr):
    """(kept D, A, kept mixture) at column col of rows (b, i) (flat index r), -inf where ~ld."""
    d = load_row_block(d_ptr + b.to(tl.int64) * d_sb + i.to(tl.int64) * d_sk, col, ld)
    a = load_row_block(a_ptr + b.to(tl.int64) * a_sb + i.to(tl.int64) * a_sk, col, ld)
    keep = d > NEG_INF
    if HAS_TAU:
        keep = keep & (d * inv_t >= tl.load(tau_ptr + r, mask=act, other=NEG_INF))
    return tl.where(keep, d, NEG_INF), a, tl.where(keep, _mix(d, a, wf, omwf, wm, W_MODE, ROWS), NEG_INF)


@triton.jit(do_not_specialize=NO_SPECIALIZE + ["dr_sb"], do_not_specialize_on_alignment=NO_ALIGN)
def _mixture_finalize_kernel(
    part_f_ptr, part_i_ptr, splits, d_ptr, d_sb, d_sk, a_ptr, a_sb, a_sk, draft_ptr, dr_sb, K, V,
    valid_ptr, has_valid, inv_t, wf, omwf, tau_ptr, n_ptr, tgt_ptr, lpd_ptr, lpa_ptr, lpm_ptr,
    t_ptr, t_rows, w_ptr, w_rows, w_mode,
    HAS_TAU: tl.constexpr, W_MODE: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0)
    L = valid_length(valid_ptr, b, K, has_valid)
    wm = 0
    if ROWS:  # batch row b's knobs (as _mixture_partial_kernel)
        inv_t, _ = row_temperature(t_ptr, t_rows, inv_t, b, True)
        wf, omwf, wm = row_weight(w_ptr, w_rows, wf, omwf, w_mode, b)
    first_fail = L  # first position i < L whose draft token is not accepted
    for k0 in range(0, K, BLOCK_K):
        i = k0 + tl.arange(0, BLOCK_K)
        inb = i < K
        act = i < L
        r = b.to(tl.int64) * K + i
        ld_m = tl.full([BLOCK_K], NEG_INF, tl.float32)
        ld_s = tl.zeros([BLOCK_K], tl.float32)
        la_m = tl.full([BLOCK_K], NEG_INF, tl.float32)
        la_s = tl.zeros([BLOCK_K], tl.float32)
        lm_m = tl.full([BLOCK_K], NEG_INF, tl.float32)
        lm_s = tl.zeros([BLOCK_K], tl.float32)
        bs = tl.full([BLOCK_K], NEG_INF, tl.float32)
        bi = tl.zeros([BLOCK_K], tl.int32)
        ld_m, ld_s, la_m, la_s, lm_m, lm_s, bs, bi = _merge_splits(
            part_f_ptr, part_i_ptr, r, splits, act, ld_m, ld_s, la_m, la_s, lm_m, lm_s, bs, bi)
        tok = tl.load(draft_ptr + b.to(tl.int64) * dr_sb + i, mask=inb, other=0)
        in_range = (tok >= 0) & (tok < V)
        safe = tl.where(in_range, tok, 0)
        dk, a, mk = _values_at(d_ptr, d_sb, d_sk, a_ptr, a_sb, a_sk, b, i, r, safe, act & in_range, act, inv_t,
                               wf, omwf, wm, tau_ptr, HAS_TAU, W_MODE, ROWS)
        lpd = log_prob(dk, ld_m, ld_s)
        lpa = log_prob(a, la_m, la_s)
        lpm = log_prob(mk, lm_m, lm_s)
        lpd = tl.where(act, tl.where(in_range, lpd, NAN), 0.0)
        lpa = tl.where(act, tl.where(in_range, lpa, NAN), 0.0)
        lpm = tl.where(act, tl.where(in_range, lpm, NAN), 0.0)
        tl.store(tgt_ptr + r, tl.where(act, bi.to(tl.int64), -1), mask=inb)
        tl.store(lpd_ptr + r, lpd, mask=inb)
        tl.store(lpa_ptr + r, lpa, mask=inb)
        tl.store(lpm_ptr + r, lpm, mask=inb)
        ok = in_range & ((i == 0) | (tok == bi.to(tl.int64)))
        first_fail = tl.minimum(first_fail, tl.min(tl.where(act & ~ok, i.to(tl.int64), L)))
    tl.store(n_ptr + b, first_fail)


NSTATS = tl.constexpr(10)  # floats per row of the partial op's stats (backends.MIXTURE_STATS)


@triton.jit(do_not_specialize=NO_SPECIALIZE + ["dr_sb", "dr_sk"], do_not_specialize_on_alignment=NO_ALIGN)
def _mixture_stats_kernel(
    part_f_ptr, part_i_ptr, splits, d_ptr, d_sb, d_sk, a_ptr, a_sb, a_sk, draft_ptr, dr_sb, dr_sk, K, V,
    vocab_offset, valid_ptr, has_valid, inv_t, wf, omwf, tau_ptr, tgt_ptr, stats_ptr,
    t_ptr, t_rows, w_ptr, w_rows, w_mode,
    HAS_TAU: tl.constexpr, W_MODE: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """mixture_accept_partial's outputs, one program per batch row b: merges the splits of each
    position (as _mixture_finalize_kernel), writes the global target and the MIXTURE_STATS."""
    b = tl.program_id(0)
    L = valid_length(valid_ptr, b, K, has_valid)
    wm = 0
    if ROWS:  # batch row b's knobs (as _mixture_partial_kernel)
        inv_t, _ = row_temperature(t_ptr, t_rows, inv_t, b, True)
        wf, omwf, wm = row_weight(w_ptr, w_rows, wf, omwf, w_mode, b)
    for k0 in range(0, K, BLOCK_K):
        i = k0 + tl.arange(0, BLOCK_K)
        inb = i < K
        act = i < L
        r = b.to(tl.int64) * K + i
        ld_m = tl.full([BLOCK_K], NEG_INF, tl.float32)
        ld_s = tl.zeros([BLOCK_K], tl.float32)
        la_m = tl.full([BLOCK_K], NEG_INF, tl.float32)
        la_s = tl.zeros([BLOCK_K], tl.float32)
        lm_m = tl.full([BLOCK_K], NEG_INF, tl.float32)
        lm_s = tl.zeros([BLOCK_K], tl.float32)
        bs = tl.full([BLOCK_K], NEG_INF, tl.float32)
        bi = tl.zeros([BLOCK_K], tl.int32)
        # rows at i >= L load nothing: they keep these empty states (-inf, 0) and score -inf
        ld_m, ld_s, la_m, la_s, lm_m, lm_s, bs, bi = _merge_splits(
            part_f_ptr, part_i_ptr, r, splits, act, ld_m, ld_s, la_m, la_s, lm_m, lm_s, bs, bi)
        tok = tl.load(draft_ptr + b.to(tl.int64) * dr_sb + i.to(tl.int64) * dr_sk, mask=inb, other=-1)
        local = tok - vocab_offset  # the draft token's column in this slice
        held = (local >= 0) & (local < V)
        col = tl.where(held, local, 0)
        dk, a, mk = _values_at(d_ptr, d_sb, d_sk, a_ptr, a_sb, a_sk, b, i, r, col, act & held, act, inv_t,
                               wf, omwf, wm, tau_ptr, HAS_TAU, W_MODE, ROWS)
        tl.store(tgt_ptr + r, tl.where(act, bi.to(tl.int64) + vocab_offset, -1), mask=inb)
        q = stats_ptr + r * NSTATS
        tl.store(q + 0, bs, mask=inb)
        tl.store(q + 1, ld_m, mask=inb)
        tl.store(q + 2, ld_s, mask=inb)
        tl.store(q + 3, la_m, mask=inb)
        tl.store(q + 4, la_s, mask=inb)
        tl.store(q + 5, lm_m, mask=inb)
        tl.store(q + 6, lm_s, mask=inb)
        tl.store(q + 7, dk, mask=inb)
        tl.store(q + 8, a, mask=inb)
        tl.store(q + 9, mk, mask=inb)


class _Rows(NamedTuple):
    """What the row kernel left for the finalize/stats kernel: partial states and the arguments both read."""

    part_f: torch.Tensor
    part_i: torch.Tensor
    splits: int
    tau: torch.Tensor  # float32 [B * K] thresholds (a dummy when not has_tau)
    has_tau: bool
    valid: torch.Tensor  # int64 [B] valid lengths (a dummy when not has_valid)
    has_valid: bool
    inv_t: float
    w: float
    w_mode: int
    rows: bool  # per-row knobs: the ROWS kernels, which read the knobs below
    knob_args: tuple  # (t_ptr, t_rows, w_ptr, w_rows, w_mode) of the kernels


def _knobs(temperature, mixture_weight, dummy: torch.Tensor, scalar_dummy: torch.Tensor):
    """(rows, inv_t, w, w_mode, knob_args) of a call: ROWS when the temperature or the weight is a
    per-row tensor; then the constexpr W_MODE is W_MIX and the row's mode is read at run time (the
    scalar's w_mode for a scalar weight). dummy: an int64 tensor whose float64 view stands for the
    pointer of a scalar knob; scalar_dummy: the float32 tensor the scalar kernels get instead."""
    t_rows, w_rows = is_rows(temperature), is_rows(mixture_weight)
    inv_t = 1.0 if t_rows else inv_temperature(temperature)
    w = 0.5 if w_rows else float(mixture_weight)
    w_mode = 1 if w == 1.0 else 2 if w == 0.0 else 0
    if not (t_rows or w_rows):
        return False, inv_t, w, w_mode, (scalar_dummy, 0, scalar_dummy, 0, 0)
    f64 = f64_dummy(dummy)
    return True, inv_t, w, W_MIX.value, (*rows_arg(temperature, f64), *rows_arg(mixture_weight, f64), w_mode)


def _scan_rows(dllm, verifier, vocab, mixture_weight, greedy_target, valid_lengths, filt, rng, threshold,
               vocab_offset, partial, dummy) -> _Rows:
    """Launches _mixture_partial_kernel over every row (b, i < L(b)) of [B, K, >= vocab] logits.
    threshold: float32 [B * K] or None (compute_tau when a filter is active); dummy: an int64 output
    tensor, passed for the integer pointers that are not read."""
    temperature, top_k, top_p = filt
    seed_t, seed_v, offset_t, offset_v, noise = rng
    B, K, _ = dllm.shape
    rows = B * K
    dev = dllm.device
    target = target_mode(greedy_target, temperature, noise is not None)
    explicit = target == TARGET_UNIFORM.value
    cfg = row_config(vocab, dev)
    splits, cps = split_plan(rows, vocab, cfg)
    part_f = torch.empty(rows * splits * 7, dtype=torch.float32, device=dev)
    part_i = torch.empty(rows * splits, dtype=torch.int32, device=dev)
    per_row, inv_t, w, w_mode, knob_args = _knobs(temperature, mixture_weight, dummy, part_f)
    has_valid = valid_lengths is not None
    valid = valid_lengths if has_valid else dummy
    if threshold is not None:
        has_tau, tau = True, threshold
    else:
        has_tau = filter_active(top_k, top_p, vocab)
        t_rows = temperature if is_rows(temperature) else None
        tau = compute_tau(dllm, vocab, inv_t, top_k, top_p, valid_lengths, t_rows) if has_tau else part_f
    key_args = noise_key_args(seed_t, seed_v, offset_t, offset_v, B, dummy, used=target == TARGET_PHILOX.value)
    u = noise if explicit else part_f
    u_sb, u_sk = (noise.stride(0), noise.stride(1)) if explicit else (0, 0)
    # The register budget (3 blocks per SM) is for the hot path: generated or no noise, rows that
    # Triton can load in 16-byte vectors. Explicit float64 uniforms (the replay path: float64
    # logs) and unaligned rows (no vectorised layout) compile without it, without spills.
    budget = not explicit and vector_aligned(vocab, dllm, verifier)
    _mixture_partial_kernel[(rows * splits,)](
        dllm, dllm.stride(0), dllm.stride(1), verifier, verifier.stride(0), verifier.stride(1),
        K, vocab, splits, cps, valid, int(has_valid), inv_t, w, 1.0 - w, tau,
        *key_args, u, u_sb, u_sk, part_f, part_i, vocab_offset, *knob_args,
        HAS_TAU=has_tau, W_MODE=w_mode, TARGET=target, SHIFT_NOISE=partial and target == TARGET_PHILOX.value,
        ROWS=per_row, BLOCK_G=cfg.block_g, num_warps=cfg.num_warps, maxnreg=cfg.maxnreg if budget else 128,
        enable_fp_fusion=False,
    )
    return _Rows(part_f, part_i, splits, tau, has_tau, valid, has_valid, inv_t, w, w_mode, per_row, knob_args)


def _block_k(K: int, device: torch.device) -> int:
    return 4 if interpreting() and device.type == "cpu" else min(256, max(16, triton.next_power_of_2(K)))


def mixture_accept(dllm, verifier, draft, vocab, mixture_weight, greedy_target, valid_lengths, filt, rng):
    """Host side of mixture_accept (normalised backend arguments, see apd_ext/backends.py)."""
    B, K, _ = dllm.shape
    dev = dllm.device
    num_accepted = torch.empty(B, dtype=torch.int64, device=dev)
    target_tokens = torch.empty(B, K, dtype=torch.int64, device=dev)
    lpd = torch.empty(B, K, dtype=torch.float32, device=dev)
    lpa = torch.empty(B, K, dtype=torch.float32, device=dev)
    lpm = torch.empty(B, K, dtype=torch.float32, device=dev)
    st = _scan_rows(dllm, verifier, vocab, mixture_weight, greedy_target, valid_lengths, filt, rng, None, 0,
                    partial=False, dummy=num_accepted)
    _mixture_finalize_kernel[(B,)](
        st.part_f, st.part_i, st.splits, dllm, dllm.stride(0), dllm.stride(1), verifier, verifier.stride(0),
        verifier.stride(1), draft, draft.stride(0), K, vocab, st.valid, int(st.has_valid), st.inv_t, st.w,
        1.0 - st.w, st.tau, num_accepted, target_tokens, lpd, lpa, lpm, *st.knob_args,
        HAS_TAU=st.has_tau, W_MODE=st.w_mode, ROWS=st.rows, BLOCK_K=_block_k(K, dev), num_warps=4,
        enable_fp_fusion=False,
    )
    return num_accepted, target_tokens, lpd, lpa, lpm


def mixture_accept_partial(dllm, verifier, draft, vocab, vocab_offset, mixture_weight, greedy_target,
                           valid_lengths, filt, rng, threshold):
    """Host side of mixture_accept_partial (apd_ext/backends.py): dllm and verifier [B, K, >= vocab]
    hold the logits of global tokens [vocab_offset, vocab_offset + vocab); draft: global ids [B, K];
    threshold: None or float32 [B, K] in x units. Returns (target int64 [B, K], global ids, -1 past
    valid_lengths; stats float32 [B, K, 10], backends.MIXTURE_STATS)."""
    B, K, _ = dllm.shape
    dev = dllm.device
    offset = check_vocab_offset(vocab_offset)
    tau = None if threshold is None else slice_threshold(threshold, B, K, dev)
    draft = draft.to(torch.int64)
    target_tokens = torch.empty(B, K, dtype=torch.int64, device=dev)
    stats = torch.empty(B, K, NSTATS.value, dtype=torch.float32, device=dev)
    st = _scan_rows(dllm, verifier, vocab, mixture_weight, greedy_target, valid_lengths, filt, rng, tau, offset,
                    partial=True, dummy=target_tokens)
    _mixture_stats_kernel[(B,)](
        st.part_f, st.part_i, st.splits, dllm, dllm.stride(0), dllm.stride(1), verifier, verifier.stride(0),
        verifier.stride(1), draft, draft.stride(0), draft.stride(1), K, vocab, offset, st.valid,
        int(st.has_valid), st.inv_t, st.w, 1.0 - st.w, st.tau, target_tokens, stats, *st.knob_args,
        HAS_TAU=st.has_tau, W_MODE=st.w_mode, ROWS=st.rows, BLOCK_K=_block_k(K, dev), num_warps=4,
        enable_fp_fusion=False,
    )
    return target_tokens, stats
