"""sample_draft (reference.sample_draft): per row (b, i), token = first argmax over the kept entries
of x + g (x = D * inv_T; plain x when T == 0), logprob = D[token] - logsumexp(kept D).

sample_draft_partial (reference.sample_draft_partial): the same scan over one vocabulary slice,
global tokens [vocab_offset, vocab_offset + vocab): token = vocab_offset + first local argmax and
float32 stats [B, K, 4] (backends.DRAFT_STATS: best score, lse_max, lse_sum of the kept D, kept D
at the token) for apd_ext/parallel/vocab.py to combine across ranks. Generated noise is drawn at
the global id (constexpr SHIFT_NOISE: the Philox counter's group index plus vocab_offset / 4);
explicit uniforms are read at the local column. A given threshold [B, K] replaces compute_tau's.
Constexpr switches (STATS, SHIFT_NOISE) select the partial outputs, so that sample_draft's
kernels compile to the same code as without them.

_draft_partial_kernel: grid rows * splits; program (row, split) scans BLOCK_V-entry chunks
[split * chunks_per_split, ...) of its row once, as [BLOCK_G, 4] blocks (one Philox call per group
of 4), keeping per-lane online (max, sum-exp) and per-group (score, index) states that it reduces
at the end. On a GPU: BLOCK_G = 256, 8 warps, one group per thread per chunk (common.row_config).
splits == 1: it writes the outputs itself; else it writes a partial state and
_draft_finalize_kernel merges the splits of each row in split order.

Per-row temperatures (constexpr ROWS, with a sampled NOISE mode): each program reads its batch
row's T (float64) and takes inv_T = float32(1 / T), as the host rounds a scalar's; a row with
T = 0 takes the plain argmax of x (no noise read, no Philox calls), exactly as DRAFT_ARGMAX, so a
batch mixes greedy and sampled rows. Per-row top_k / top_p only change the thresholds (filter.py).

Noise skipping (generated noise only): every generated g is < GUMBEL_MAX, so when a chunk's
largest candidate value t satisfies t + GUMBEL_MAX <= the best score already seen at a lower
index (by this program), no entry of the chunk can become the first argmax and its Philox calls
and logs are skipped. Exact: the result is the same as without skipping. Explicit uniforms are
unbounded (u may be 1), so they never skip.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from apd_ext.triton.common import (
    NO_ALIGN, NO_SPECIALIZE, argmax_finish, argmax_update, check_vocab_offset, inv_temperature, is_rows,
    load_row_block, lse_add, lse_finish, lse_merge, log_prob, noise_key_args, row_config, row_temperature,
    slice_threshold, split_plan,
)
from apd_ext.triton.filter import compute_tau
from apd_ext.triton.modes import DRAFT_ARGMAX, DRAFT_PHILOX, DRAFT_UNIFORM, draft_mode, filter_active
from apd_ext.triton.noise import GUMBEL_MAX, NEG_INF, gumbel_from_explicit, philox_gumbel_block, row_noise_key


NSTATS = tl.constexpr(4)  # floats per row of the partial op's stats (backends.DRAFT_STATS)


@triton.jit
def _store_stats(stats_ptr, row, score, lse_max, lse_sum, value, mask=None):
    """The DRAFT_STATS of row(s) `row`: (score, lse_max, lse_sum, value)."""
    q = stats_ptr + row.to(tl.int64) * NSTATS
    tl.store(q + 0, score, mask=mask)
    tl.store(q + 1, lse_max, mask=mask)
    tl.store(q + 2, lse_sum, mask=mask)
    tl.store(q + 3, value, mask=mask)


@triton.jit(do_not_specialize=NO_SPECIALIZE, do_not_specialize_on_alignment=NO_ALIGN)
def _draft_partial_kernel(
    d_ptr, d_sb, d_sk, K, V, splits, chunks_per_split, inv_t, tau_ptr,
    seed_ptr, seed_v: tl.int64, seed_mode, offset_ptr, offset_v: tl.int64, offset_mode, u_ptr, u_sb, u_sk,
    part_f_ptr, part_i_ptr, tok_ptr, lp_ptr, stats_ptr, vocab_offset, t_ptr,
    HAS_TAU: tl.constexpr, NOISE: tl.constexpr, FINAL: tl.constexpr, STATS: tl.constexpr,
    SHIFT_NOISE: tl.constexpr, ROWS: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """Program (row, split). FINAL (splits == 1): writes token and log-prob, or with STATS the
    global token and the stats; else the partial state (max, sum, score; index) of its range.
    ROWS (per-row temperatures, a sampled NOISE mode): inv_t is batch row b's (t_ptr: float64 [B]),
    and a row whose T is 0 takes the argmax of x without noise, as DRAFT_ARGMAX would."""
    BLOCK_V: tl.constexpr = 4 * BLOCK_G
    pid = tl.program_id(0)
    row = pid // splits
    split = pid - row * splits
    b = row // K
    i = row - b * K
    row_ptr = d_ptr + b.to(tl.int64) * d_sb + i.to(tl.int64) * d_sk
    c_begin = split * chunks_per_split
    c_end = tl.minimum(c_begin + chunks_per_split, tl.cdiv(V, BLOCK_V))
    tau = tl.full((), NEG_INF, tl.float32)
    if HAS_TAU:
        tau = tl.load(tau_ptr + row)
    if ROWS:
        inv_t, greedy = row_temperature(t_ptr, 1, inv_t, b, True)
    else:
        greedy = False  # a constexpr: the scalar modes' code is unchanged
    if NOISE == DRAFT_PHILOX:
        k0, k1, o0, o1 = row_noise_key(seed_ptr, seed_v, seed_mode, offset_ptr, offset_v, offset_mode, b)
        if SHIFT_NOISE:
            group_shift = vocab_offset // 4  # noise of global ids: group index + vocab_offset / 4
    if NOISE == DRAFT_UNIFORM:
        u_row = u_ptr + b.to(tl.int64) * u_sb + i.to(tl.int64) * u_sk

    lane_v = tl.arange(0, BLOCK_G)[:, None] * 4 + tl.arange(0, 4)[None, :]
    m = tl.full([BLOCK_G, 4], NEG_INF, tl.float32)
    s = tl.zeros([BLOCK_G, 4], tl.float32)
    best_s = tl.full([BLOCK_G], NEG_INF, tl.float32)  # per group of 4 (argmax_update)
    best_i = tl.zeros([BLOCK_G], tl.int32)
    bound = tl.full((), NEG_INF, tl.float32)  # best score seen by this program (noise skipping)
    for c in range(c_begin, c_end):
        v = c * BLOCK_V + lane_v
        msk = v < V
        d = load_row_block(row_ptr, v, msk)
        x = d * inv_t
        if HAS_TAU:
            keep = x >= tau
            d = tl.where(keep, d, NEG_INF)
            x = tl.where(keep, x, NEG_INF)
        m, s = lse_add(m, s, d)
        if NOISE == DRAFT_ARGMAX:
            best_s, best_i = argmax_update(best_s, best_i, x, v)
        elif NOISE == DRAFT_PHILOX:
            if greedy:
                best_s, best_i = argmax_update(best_s, best_i, x, v)
            elif tl.max(x) + GUMBEL_MAX > bound:
                group0 = c * BLOCK_G
                if SHIFT_NOISE:
                    group0 = group0 + group_shift
                g = philox_gumbel_block(group0, i, k0, k1, o0, o1, BLOCK_G)
                score = x + g
                best_s, best_i = argmax_update(best_s, best_i, score, v)
                bound = tl.maximum(bound, tl.max(score))
        elif greedy:
            best_s, best_i = argmax_update(best_s, best_i, x, v)
        else:
            u = tl.load(u_row + v, mask=msk, other=0.5)
            score = tl.where(x > NEG_INF, x + gumbel_from_explicit(u), NEG_INF)
            best_s, best_i = argmax_update(best_s, best_i, score, v)

    lm, ls = lse_finish(m, s)
    bs, bi = argmax_finish(best_s, best_i)
    if FINAL:
        dt = tl.load(row_ptr + bi).to(tl.float32)
        dt = tl.where(dt == dt, dt, NEG_INF)
        if HAS_TAU:
            dt = tl.where(dt * inv_t >= tau, dt, NEG_INF)
        if STATS:
            tl.store(tok_ptr + row, bi.to(tl.int64) + vocab_offset)
            _store_stats(stats_ptr, row, bs, lm, ls, dt)
        else:
            tl.store(tok_ptr + row, bi.to(tl.int64))
            tl.store(lp_ptr + row, log_prob(dt, lm, ls))
    else:
        tl.store(part_f_ptr + pid * 3 + 0, lm)
        tl.store(part_f_ptr + pid * 3 + 1, ls)
        tl.store(part_f_ptr + pid * 3 + 2, bs)
        tl.store(part_i_ptr + pid, bi)


@triton.jit(do_not_specialize=NO_SPECIALIZE, do_not_specialize_on_alignment=["t_ptr"])
def _draft_finalize_kernel(
    part_f_ptr, part_i_ptr, splits, rows, d_ptr, d_sb, d_sk, K, inv_t, tau_ptr, tok_ptr, lp_ptr,
    stats_ptr, vocab_offset, t_ptr,
    HAS_TAU: tl.constexpr, STATS: tl.constexpr, ROWS: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Merges the splits of BLOCK_R rows in split order; writes what the FINAL programs write.
    ROWS (per-row temperatures with a threshold): each row's inv_t from t_ptr (float64 [B])."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = r < rows
    lm = tl.full([BLOCK_R], NEG_INF, tl.float32)
    ls = tl.zeros([BLOCK_R], tl.float32)
    bs = tl.full([BLOCK_R], NEG_INF, tl.float32)
    bi = tl.zeros([BLOCK_R], tl.int32)
    for sp in range(0, splits):
        q = r.to(tl.int64) * splits + sp
        m2 = tl.load(part_f_ptr + q * 3 + 0, mask=rm, other=NEG_INF)
        s2 = tl.load(part_f_ptr + q * 3 + 1, mask=rm, other=0.0)
        sc = tl.load(part_f_ptr + q * 3 + 2, mask=rm, other=NEG_INF)
        ix = tl.load(part_i_ptr + q, mask=rm, other=0)
        lm, ls = lse_merge(lm, ls, m2, s2)
        upd = sc > bs  # splits in increasing index order: ties stay with the earlier split
        bs = tl.where(upd, sc, bs)
        bi = tl.where(upd, ix, bi)
    b = r // K
    i = r - b * K
    row_ptr = d_ptr + b.to(tl.int64) * d_sb + i.to(tl.int64) * d_sk
    dt = tl.load(row_ptr + bi, mask=rm, other=NEG_INF).to(tl.float32)
    dt = tl.where(dt == dt, dt, NEG_INF)
    if HAS_TAU:
        tau = tl.load(tau_ptr + r, mask=rm, other=NEG_INF)
        if ROWS:
            inv_r, _ = row_temperature(t_ptr, 1, inv_t, b, rm)
            dt = tl.where(dt * inv_r >= tau, dt, NEG_INF)
        else:
            dt = tl.where(dt * inv_t >= tau, dt, NEG_INF)
    if STATS:
        tl.store(tok_ptr + r, bi.to(tl.int64) + vocab_offset, mask=rm)
        _store_stats(stats_ptr, r, bs, lm, ls, dt, rm)
    else:
        tl.store(tok_ptr + r, bi.to(tl.int64), mask=rm)
        tl.store(lp_ptr + r, log_prob(dt, lm, ls), mask=rm)


def sample_draft(dllm, vocab, filt, rng):
    """Host side of sample_draft (normalised backend arguments, see apd_ext/backends.py)."""
    tokens, logprobs = _launch(dllm, vocab, filt, rng, None, 0, partial=False)
    return tokens, logprobs


def sample_draft_partial(dllm, vocab, vocab_offset, filt, rng, threshold):
    """Host side of sample_draft_partial (apd_ext/backends.py): dllm [B, K, >= vocab] holds the logits
    of global tokens [vocab_offset, vocab_offset + vocab); threshold: None or float32 [B, K] in x units.
    Returns (tokens int64 [B, K], global ids; stats float32 [B, K, 4], backends.DRAFT_STATS)."""
    B, K, _ = dllm.shape
    offset = check_vocab_offset(vocab_offset)
    tau = None if threshold is None else slice_threshold(threshold, B, K, dllm.device)
    return _launch(dllm, vocab, filt, rng, tau, offset, partial=True)


def _launch(dllm, vocab, filt, rng, threshold, vocab_offset, partial):
    """Both ops: threshold (float32 [B * K] or None: compute_tau when a filter is active) and the
    outputs (log-probs [B, K], or stats [B, K, 4] with global tokens when partial)."""
    temperature, top_k, top_p = filt
    seed_t, seed_v, offset_t, offset_v, noise = rng
    B, K, _ = dllm.shape
    rows = B * K
    dev = dllm.device
    t_rows = is_rows(temperature)  # per-row temperatures: the ROWS kernels (a sampled mode)
    inv_t = 1.0 if t_rows else inv_temperature(temperature)
    tokens = torch.empty(B, K, dtype=torch.int64, device=dev)
    out = torch.empty((B, K, NSTATS.value) if partial else (B, K), dtype=torch.float32, device=dev)
    if threshold is not None:
        has_tau, tau = True, threshold
    else:
        has_tau = filter_active(top_k, top_p, vocab)
        tau = compute_tau(dllm, vocab, inv_t, top_k, top_p, temperature=temperature if t_rows else None) \
            if has_tau else out
    mode = draft_mode(temperature, noise is not None)
    t_ptr = temperature if t_rows else out  # float32 in the scalar kernels, which never read it
    key_args = noise_key_args(seed_t, seed_v, offset_t, offset_v, B, tokens, used=mode == DRAFT_PHILOX.value)
    explicit = mode == DRAFT_UNIFORM.value
    u = noise if explicit else out
    u_sb, u_sk = (noise.stride(0), noise.stride(1)) if explicit else (0, 0)
    shift_noise = partial and mode == DRAFT_PHILOX.value  # only generated noise depends on the offset

    cfg = row_config(vocab, dev)
    splits, cps = split_plan(rows, vocab, cfg)
    final = splits == 1
    if final:
        part_f, part_i = out, tokens  # unused
    else:
        part_f = torch.empty(rows * splits * 3, dtype=torch.float32, device=dev)
        part_i = torch.empty(rows * splits, dtype=torch.int32, device=dev)
    _draft_partial_kernel[(rows * splits,)](
        dllm, dllm.stride(0), dllm.stride(1), K, vocab, splits, cps, inv_t, tau,
        *key_args, u, u_sb, u_sk, part_f, part_i, tokens, out, out, vocab_offset, t_ptr,
        HAS_TAU=has_tau, NOISE=mode, FINAL=final, STATS=partial and final, SHIFT_NOISE=shift_noise,
        ROWS=t_rows, BLOCK_G=cfg.block_g, num_warps=cfg.num_warps, enable_fp_fusion=False,
    )
    if not final:
        block_r = 128
        _draft_finalize_kernel[(triton.cdiv(rows, block_r),)](
            part_f, part_i, splits, rows, dllm, dllm.stride(0), dllm.stride(1), K, inv_t, tau,
            tokens, out, out, vocab_offset, t_ptr if has_tau else out, HAS_TAU=has_tau, STATS=partial,
            ROWS=t_rows and has_tau,
            BLOCK_R=block_r, num_warps=4, enable_fp_fusion=False,
        )
    return tokens, out
