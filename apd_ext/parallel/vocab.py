"""Vocabulary-parallel sampling: APD's ops when each rank holds only its slice of the logits.

`VocabParallel(impl, tp, shard)` is a backend (the interface of apd_ext/backends.py) whose logit
arguments are this rank's columns, global tokens [shard.lo, shard.lo + shard.local_vocab). The
logits are never gathered (APD_SPEC "Vocabulary-parallel form"):

1. Filters. top_k / top_p thresholds are global: top_k from every rank's k best (one all-gather of
   [B, K, k] values; per-row top_k, whose k's only the device knows, by bisection on the k-th
   largest value: 33 all-reduces of [B, K] counts), top_p by bisection on the threshold (33
   all-reduces of [B, K] partial masses; only when top_p < 1, or for per-row top_p). No filter: no
   collective; per-row top_k / top_p are searched unless the caller says that no row filters
   (VocabParallel(filters=...): the loop does, from the rows' knobs on the host). Per-row knobs (backends.Filter's [B] tensors, mixture_weight [B]) pass through to
   the partial ops, which read each row's own.
2. The backend's partial op (sample_draft_partial / mixture_accept_partial) runs on the slice with
   the global threshold and the slice's vocab offset, so its counter noise is the unsharded noise of
   the same global tokens.
3. One all-gather of the packed partials ([world, B, K, 5] or [world, B, K, 11] float64) and the
   same combine on every rank: the best score with the lowest global id on ties (rank order is
   token order), log-sum-exps merged as lse = m + log(sum_r s_r exp(m_r - m)), the accepted prefix
   from the combined tokens.

Tokens and accepted counts equal the unsharded op's exactly (argmaxes of the same per-entry
scores); log-probs agree to float rounding (the normalisers are summed in another order). A top_p
threshold is found from masses summed in float64 in another order than one device's, so a token
whose top-p mass lies within rounding of top_p may be kept on one side and not the other, as
between two backends.
"""

from __future__ import annotations

import torch

from apd_ext import backends, reference
from apd_ext.parallel.group import TensorParallel
from apd_ext.parallel.shard import VocabShard

_NEG_INF = float("-inf")


def _pack(tokens: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """float64 [B, K, 1 + F]: token ids (exact below 2^53) then the stats."""
    return torch.cat([tokens.unsqueeze(-1).to(torch.float64), stats.to(torch.float64)], dim=-1)


def _winner(score: torch.Tensor) -> torch.Tensor:
    """int64 [1, B, K]: per row, the first rank holding the highest score (score: [world, B, K])."""
    best = score.amax(dim=0, keepdim=True)
    return (score == best).to(torch.int8).argmax(dim=0, keepdim=True)  # first maximal rank


def _pick(x: torch.Tensor, winner: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 0, winner).squeeze(0)


def _merge_lse(m: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, sum) over ranks of per-rank (max_r, sum_r) states [world, B, K]."""
    M = m.amax(dim=0)
    scale = torch.where(m > _NEG_INF, torch.exp(m - M.unsqueeze(0)), 0.0)
    return M, (s * scale).sum(dim=0)


def _log_prob(value: torch.Tensor, M: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """float32 (value - M) - log(S), as reference.log_softmax computes one entry."""
    return ((value - M) - torch.log(S)).to(torch.float32)


class VocabParallel:
    """A backend over vocabulary slices: `impl` (a backend with the partial ops) runs on this rank's
    columns and `tp` combines the ranks' partials. Every rank must call the ops in the same order
    with the same arguments (the loop's steps do)."""

    def __init__(self, impl, tp: TensorParallel, shard: VocabShard, filters: tuple[bool, bool] | None = None):
        """filters: for per-row top_k / top_p tensors, whether any row's top-k / top-p may be active
        (what the caller knows on the host, e.g. the loop from the rows' knobs); None: assume both may
        be. The global threshold searches are collectives that no rank may skip on a value only the
        device knows, so this is how a call with per-row knobs that filter nothing avoids them."""
        if not hasattr(impl, "sample_draft_partial"):
            raise TypeError(f"backend {getattr(impl, 'name', impl)!r} has no vocabulary-parallel partial ops")
        self.impl, self.tp, self.shard = impl, tp, shard
        self.filters = None if filters is None else (bool(filters[0]), bool(filters[1]))
        self.name = f"{getattr(impl, 'name', None) or getattr(impl, '__name__', 'backend')}+tp{tp.world}"

    # --- the backend interface --------------------------------------------------------------------

    def sample_draft(self, dllm, vocab: int, filt, noise):
        """Like backends' sample_draft on the full vocabulary; dllm: this rank's [B, K, >= local_vocab]."""
        self._check_vocab(vocab, dllm)
        threshold = self.threshold(dllm, filt)
        tokens, stats = self.impl.sample_draft_partial(dllm, self.shard.local_vocab, self.shard.offset, filt,
                                                       self._local(noise), threshold)
        g = self.tp.all_gather(_pack(tokens, stats))  # [world, B, K, 5]
        win = _winner(g[..., 1])
        M, S = _merge_lse(g[..., 2], g[..., 3])
        token = _pick(g[..., 0], win).to(torch.int64)
        return token, _log_prob(_pick(g[..., 4], win), M, S)

    def mixture_accept(self, dllm, verifier, draft, vocab: int, mixture_weight, greedy_target, valid_lengths,
                       filt, noise):
        """Like backends' mixture_accept; dllm, verifier: this rank's slices; draft: global ids."""
        self._check_vocab(vocab, dllm, verifier)
        threshold = self.threshold(dllm, filt)
        target, stats = self.impl.mixture_accept_partial(
            dllm, verifier, draft, self.shard.local_vocab, self.shard.offset, mixture_weight, greedy_target,
            valid_lengths, filt, self._local(noise), threshold)
        g = self.tp.all_gather(_pack(target, stats))  # [world, B, K, 11]
        win = _winner(g[..., 1])
        target = _pick(g[..., 0], win).to(torch.int64)
        logps = []
        for j in range(3):  # dllm, verifier, mixture: (max, sum) at 2 + 2j, value at 8 + j
            M, S = _merge_lse(g[..., 2 + 2 * j], g[..., 3 + 2 * j])
            logps.append(_log_prob(g[..., 8 + j].amax(dim=0), M, S))
        draft = draft.to(torch.int64)
        outside = (draft < 0) | (draft >= vocab)
        logps = [torch.where(outside, float("nan"), lp) for lp in logps]
        n = reference.accepted_prefix(draft, target, vocab, valid_lengths)
        if valid_lengths is not None:
            B, K = draft.shape
            pad = torch.arange(K, device=draft.device).view(1, K) >= valid_lengths.view(B, 1)
            target = torch.where(pad, -1, target)
            logps = [torch.where(pad, 0.0, lp) for lp in logps]
        return (n, target, *logps)

    def neg_entropy(self, dllm: torch.Tensor) -> torch.Tensor:
        """float32 [B, K]: sum_v p log p of softmax(D) over the whole shared vocabulary (the
        diffusion policy's "entropy" confidence), from two all-reduces of [B, K] partials."""
        x = dllm[..., : self.shard.local_vocab].float()
        M = self.tp.all_reduce(x.amax(dim=-1), "max").unsqueeze(-1)
        e = torch.exp(x - M)
        xm = torch.where(e > 0, x - M, 0.0)
        Z, S1 = self.tp.all_reduce(torch.stack([e.sum(-1), (e * xm).sum(-1)]), "sum")
        return S1 / Z - torch.log(Z)

    # --- global filter thresholds -----------------------------------------------------------------

    def threshold(self, dllm: torch.Tensor, filt) -> torch.Tensor | None:
        """float32 [B, K] global top-k / top-p threshold in x units (D / T; D when T = 0), or None
        when no filter is active (then the partial ops need none). Per-row knobs (backends.Filter's
        [B] tensors) give each row its own threshold; a row whose filter is off gets -inf."""
        temperature, top_k, top_p = filt
        V = self.shard.vocab
        rows_k, rows_p = isinstance(top_k, torch.Tensor), isinstance(top_p, torch.Tensor)
        # per-row knobs are not read here (a host sync, and a data-dependent branch no graph can hold):
        # they are searched unless the caller said no row filters (self.filters)
        may_k, may_p = self.filters or (True, True)
        use_k = may_k if rows_k else 0 < top_k < V
        use_p = may_p if rows_p else top_p < 1.0
        if not use_k and not use_p:
            return None
        D = reference._clean(dllm, self.shard.local_vocab)
        x = reference.scaled(D, temperature)
        tau = torch.full(x.shape[:-1], _NEG_INF, dtype=torch.float32, device=x.device)
        if use_k:
            tau = self._top_k_rows_threshold(x, top_k) if rows_k else self._top_k_threshold(x, top_k)
        if use_p:
            tau_p = torch.maximum(tau, self._top_p_threshold(x, tau, top_p))
            tau = torch.where(reference.per_row(top_p < 1.0, x, keep_last=0), tau_p, tau) if rows_p else tau_p
        return tau

    def _top_k_threshold(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The k-th largest value over every rank's slice: each rank's k best, gathered."""
        local = torch.topk(x, min(k, x.shape[-1]), dim=-1).values
        if local.shape[-1] < k:  # a slice narrower than k: pad with -inf
            local = torch.nn.functional.pad(local, (0, k - local.shape[-1]), value=_NEG_INF)
        cands = self.tp.all_gather(local)  # [world, B, K, k]
        cands = cands.permute(1, 2, 0, 3).reshape(*x.shape[:-1], -1)
        return torch.topk(cands, k, dim=-1).values[..., -1]

    def _top_k_rows_threshold(self, x: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
        """Per-row top_k [B]: row b's top_k[b]-th largest value over every rank's slice (-inf where
        top_k is 0 or >= the vocabulary). The k's differ per row and may only be read on the device,
        so no static top-k gather fits: the k-th largest value is the largest t with
        count(x >= t) >= k, found by bisection on the ordered bit patterns of float32 (each step one
        all-reduce of [B, K] counts)."""
        k = reference.per_row(top_k, x, keep_last=0).expand(x.shape[:-1])  # [B, K]
        active = (k > 0) & (k < self.shard.vocab)
        M = self.tp.all_reduce(x.amax(dim=-1), "max")  # [B, K]
        lo_key = _key(torch.full_like(M, _NEG_INF))  # count(x >= -inf) = V >= k: true
        hi_key = _key(M) + 1  # nothing is >= the float above the maximum: false (NaN above +inf too)
        for _ in range(33):
            mid_key = torch.div(lo_key + hi_key, 2, rounding_mode="floor")
            count = self.tp.all_reduce((x >= _value(mid_key).unsqueeze(-1)).sum(dim=-1), "sum")
            ok = count >= k
            lo_key = torch.where(ok, mid_key, lo_key)
            hi_key = torch.where(ok, hi_key, mid_key)
        return torch.where(active, _value(lo_key), _NEG_INF)

    def _top_p_threshold(self, x: torch.Tensor, tau_k: torch.Tensor, top_p) -> torch.Tensor:
        """reference.filter_threshold's top-p rule over the entries >= tau_k of every rank: the
        smallest value v with mass(x > v) < top_p * Z, found by bisection on the ordered bit
        patterns of float32 (each step one all-reduce of [B, K] partial masses). top_p: a float or
        per-row float64 [B]."""
        kept = torch.where(x >= tau_k.unsqueeze(-1), x, _NEG_INF)
        M = self.tp.all_reduce(kept.amax(dim=-1), "max")  # [B, K]
        finite_M = torch.where(torch.isfinite(M), M, 0.0)
        e = torch.where(kept > _NEG_INF, torch.exp(kept - finite_M.unsqueeze(-1)), 0.0)
        Z = self.tp.all_reduce(e.sum(dim=-1, dtype=torch.float64), "sum")
        goal = (reference.per_row(top_p, x, keep_last=0) if isinstance(top_p, torch.Tensor) else top_p) * Z
        lo = torch.full_like(M, _NEG_INF)
        lo_key, hi_key = _key(lo), _key(finite_M)  # pred(lo) false (mass Z >= goal), pred(M) true (0 < goal)
        for _ in range(33):
            mid_key = torch.div(lo_key + hi_key, 2, rounding_mode="floor")
            t = _value(mid_key)
            mass = self.tp.all_reduce(torch.where(kept > t.unsqueeze(-1), e, 0.0).sum(dim=-1, dtype=torch.float64),
                                      "sum")
            ok = mass < goal
            hi_key = torch.where(ok, mid_key, hi_key)
            lo_key = torch.where(ok, lo_key, mid_key)
        tau_p = _value(hi_key)
        # +inf entries (D / T overflowed) hold all the mass: only they are kept; nothing kept: +inf
        return torch.where(M == float("inf"), float("inf"), torch.where(M == _NEG_INF, float("inf"), tau_p))

    # --- helpers ----------------------------------------------------------------------------------

    def _check_vocab(self, vocab: int, *logits: torch.Tensor) -> None:
        if vocab != self.shard.vocab:
            raise ValueError(f"vocab_size {vocab} is not the shared vocabulary {self.shard.vocab} the ranks' "
                             f"slices were cut on")
        for x in logits:
            if x.shape[-1] < self.shard.local_vocab:
                raise ValueError(f"this rank's logits have {x.shape[-1]} columns; its slice of the vocabulary "
                                 f"has {self.shard.local_vocab}")

    def _local(self, noise: backends.Noise) -> backends.Noise:
        """The noise of this rank's columns: explicit uniforms [B, K, >= vocab] are sliced; counter
        noise needs nothing (the partial ops draw it at the global ids)."""
        if noise.uniform is None:
            return noise
        lo = self.shard.offset
        return noise._replace(uniform=noise.uniform[..., lo: lo + self.shard.local_vocab])


def _key(x: torch.Tensor) -> torch.Tensor:
    """int64 keys of float32 values, ordered as the values (-0.0 just below +0.0)."""
    bits = x.to(torch.float32).view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, -(bits & 0x7FFFFFFF) - 1)


def _value(key: torch.Tensor) -> torch.Tensor:
    """The float32 values of _key's keys."""
    bits = torch.where(key >= 0, key, (-key - 1) | 0x80000000)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits)
    return bits.to(torch.int32).view(torch.float32)
