"""The executable specification of apd_ext's ops, in plain PyTorch.

Every backend (CPU C++, CUDA, Triton) computes these functions; the tests compare them with this
file. It favours clarity over speed: it materialises [B, K, V] tensors that the kernels never do.
The math is ../shared/APD_SPEC.md's; the choices that document leaves open are fixed here:

* Noise. ``g[b, i, v] = -log(-log(u))`` with ``u`` from Philox4x32-10 (see :func:`noise_uniform`):
  counter ``(v >> 2, i, offset_lo, offset_hi)``, key ``(seed_lo, seed_hi)`` of the row seed, word
  ``v & 3``, ``u = ((bits >> 9) + 0.5) * 2**-23``. A scalar seed ``s`` gives row ``b`` the seed
  ``s + b``; a ``[B]`` seed tensor gives each row its own. An explicit uniform tensor replaces the
  generator (golden replays); it is transformed in its own precision (float64 stays float64).
* NaN logits count as ``-inf`` everywhere: never drawn, no probability mass.
* Filters restrict the dLLM distribution: ``top_k`` keeps entries ``>=`` the k-th largest (ties at
  the threshold are kept); ``top_p`` then keeps entry v when the probability mass of strictly larger
  kept entries is ``< top_p``, the mass taken from ``softmax(D / T)`` over the top-k set (``softmax(D)``
  when T = 0); when ``x`` holds ``+inf`` (``D / T`` overflowed) those entries hold all the mass and
  only they are kept. The same support restricts the target: the mixture lives where the filtered dLLM
  has mass, so ``mixture_weight = 1`` accepts every draft.
* ``mixture_weight``: the mixture logit is ``mixture_weight * D + (1 - mixture_weight) * A``, a
  zero-weight term dropping out (so ``-inf`` never meets ``0``); a mixture entry that is NaN
  (``D = +inf`` with ``A = -inf``) counts as ``-inf``, like a NaN logit. It differs from the same
  mixture of ``logp_D`` and ``logp_A`` by a per-row constant, which changes no argmax.
* Log-probs are reported at temperature 1 over the filtered support, computed as
  ``(x - max) - log(sum(exp(x - max)))`` so that large logits keep their precision:
  ``logp_dllm = log_softmax(D)`` restricted to the kept entries, ``logp_verifier = log_softmax(A)``
  over the shared vocabulary, ``logp_mixture`` = the log softmax of the mixture over the kept
  entries, each at the draft token.
* ``greedy_target=True`` (the authors' released code): target = first argmax of the raw mixture
  over the whole shared vocabulary, with no noise, temperature or filter.
* Acceptance: ``a_0 = 1``, ``a_i = [d_i == s_i]``, n = leading ones, capped by ``valid_lengths[b]``
  (0 gives n = 0). A draft token outside ``[0, vocab_size)`` ends the prefix before it (even at i = 0);
  the ops raise on such tokens when they can check without a device sync. Positions at or beyond
  ``valid_lengths[b]`` get target -1 and log-probs 0.
* A row whose scores are all ``-inf`` draws token 0; its log-probs are not meaningful.
* Per-row knobs: temperature, top_k, top_p and mixture_weight may each be a [B] tensor (float64;
  int64 for top_k) instead of a scalar. Row b then computes exactly what a call on row b alone with
  row b's values as Python scalars computes (1 / T and w, 1 - w rounded to float32 from float64;
  a row with T = 0 is greedy, one with top_k 0 or >= V and top_p 1 unfiltered), so a batch may mix
  greedy and sampled rows, filtered and unfiltered ones. The noise of row b is always its own.
"""

from __future__ import annotations

import torch

name = "reference"  # the backend name: this module is the "reference" backend (apd_ext/backends.py)

_MASK32 = 0xFFFFFFFF
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hi and lo 32-bit words of a * b for a constant a < 2^32 and int64 tensor b in [0, 2^32).

    Products are split into 16-bit halves so that nothing overflows int64.
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_lo = b * a_lo  # < 2^48
    p_hi = b * a_hi  # < 2^48
    mid = p_hi + (p_lo >> 16)  # < 2^49
    hi = (mid >> 16) & _MASK32
    lo = ((mid & 0xFFFF) << 16 | (p_lo & 0xFFFF)) & _MASK32
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors holding uint32 values; returns the four output words."""
    c0, c1, c2, c3 = (torch.as_tensor(c) for c in (c0, c1, c2, c3))
    k0, k1 = torch.as_tensor(k0), torch.as_tensor(k1)
    for _ in range(10):
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _MASK32
        k1 = (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def row_seeds(seed, batch: int, device) -> torch.Tensor:
    """int64 [batch] row seeds: ``seed + b`` for an int or one-element tensor, else the [B] tensor."""
    s = torch.as_tensor(seed, dtype=torch.int64, device=device).reshape(-1)
    if s.numel() == batch and batch != 1:
        return s
    if s.numel() != 1:
        raise ValueError(f"seed must hold 1 or {batch} values, got {s.numel()}")
    return s + torch.arange(batch, dtype=torch.int64, device=device)


def row_offsets(offset, batch: int, device) -> torch.Tensor:
    """int64 [batch] row offsets: one offset (an int or one-element tensor) for every row, or a [B]
    tensor of per-row offsets (a continuous-batching engine's rows start their steps at different
    times: each row's offset counts its own steps). Ints are taken modulo 2^64 (two's complement)."""
    if isinstance(offset, torch.Tensor):
        o = offset.to(device=device, dtype=torch.int64).reshape(-1)
        if o.numel() == batch and batch != 1:
            return o
        if o.numel() != 1:
            raise ValueError(f"offset must hold 1 or {batch} values, got {o.numel()}")
        return o.expand(batch)
    off = int(offset) & 0xFFFFFFFFFFFFFFFF
    off = off - 2**64 if off >= 2**63 else off
    return torch.full((batch,), off, dtype=torch.int64, device=device)


def noise_uniform(seed, offset, batch: int, window: int, vocab: int, device="cpu") -> torch.Tensor:
    """float32 [batch, window, vocab] uniforms in [2^-24, 1 - 2^-24] from the counter-based generator."""
    seeds = row_seeds(seed, batch, device).view(batch, 1, 1)
    off = row_offsets(offset, batch, device).view(batch, 1, 1)
    v = torch.arange(vocab, dtype=torch.int64, device=device).view(1, 1, vocab)
    i = torch.arange(window, dtype=torch.int64, device=device).view(1, window, 1)
    c0 = (v >> 2).expand(batch, window, vocab)
    c1 = i.expand(batch, window, vocab)
    c2 = (off & _MASK32).expand_as(c0)
    c3 = ((off >> 32) & _MASK32).expand_as(c0)
    k0 = (seeds & _MASK32).expand_as(c0)
    k1 = ((seeds >> 32) & _MASK32).expand_as(c0)
    words = torch.stack(philox4x32_10(c0, c1, c2, c3, k0, k1), dim=-1)  # [B, K, V, 4]
    bits = torch.gather(words, -1, (v & 3).expand(batch, window, vocab).unsqueeze(-1)).squeeze(-1)
    return ((bits >> 9).to(torch.float32) + 0.5) * (2.0**-23)


def gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """-log(-log(u)) in u's precision."""
    return -torch.log(-torch.log(uniform))


def _clean(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    x = x[..., :vocab_size].to(torch.float32)
    return torch.nan_to_num(x, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def _inv_temperature(temperature: float) -> torch.Tensor:
    return torch.tensor(1.0 / temperature, dtype=torch.float32)


def per_row(knob: torch.Tensor, x: torch.Tensor, keep_last: int = 1) -> torch.Tensor:
    """A per-row knob [B] viewed to broadcast over x [B, K, V] ([B, 1, 1]), or with keep_last=0
    over x's leading dims [B, K] ([B, 1])."""
    return knob.view(-1, *([1] * (x.dim() - 2 + keep_last)))


def greedy_rows(temperature: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """bool, broadcasting over x [B, K, V]: the rows of per-row temperatures [B] that are greedy (T = 0)."""
    return per_row(temperature == 0, x)


def scaled(dllm: torch.Tensor, temperature) -> torch.Tensor:
    """``D / T`` as every backend computes it: ``D * float32(1 / T)``; ``D`` itself when T = 0.
    temperature: a scalar, or per-row float64 [B] for dllm [B, ...] (1 / T in float64, then float32,
    as for a scalar; greedy rows stay D)."""
    if isinstance(temperature, torch.Tensor):
        t = temperature.to(device=dllm.device, dtype=torch.float64)
        inv = torch.where(t == 0, 1.0, 1.0 / torch.where(t == 0, 1.0, t)).to(torch.float32)
        return dllm * per_row(inv, dllm)
    if temperature == 0:
        return dllm
    return dllm * _inv_temperature(temperature).to(dllm.device)


def filter_threshold(x: torch.Tensor, top_k, top_p) -> torch.Tensor:
    """float32 [...]: per row of scaled logits ``x`` [..., V], the smallest value kept by top-k then
    top-p; the kept set is ``x >= threshold`` (``-inf`` keeps everything). top_k / top_p: scalars,
    or per-row [B] tensors (int64 / float64) for x [B, K, V]: row b is filtered with its own values
    (top_k 0 or >= V and top_p 1 leave it unfiltered), exactly as a scalar call on that row."""
    V = x.shape[-1]
    tau = torch.full(x.shape[:-1], float("-inf"), dtype=torch.float32, device=x.device)
    if isinstance(top_k, torch.Tensor):
        k = per_row(top_k.to(x.device), x, keep_last=0).expand(x.shape[:-1])  # [B, K]
        active = (k > 0) & (k < V)
        kth = torch.sort(x, dim=-1, descending=True).values.gather(-1, (k - 1).clamp(0, V - 1).unsqueeze(-1))
        tau = torch.where(active, kth.squeeze(-1), tau)
    elif 0 < top_k < V:
        tau = torch.topk(x, top_k, dim=-1).values[..., -1]
    rows_p = isinstance(top_p, torch.Tensor)
    if rows_p or top_p < 1.0:
        # mass compared in float32, as with a scalar top_p (a Python float meets float32 masses)
        p = per_row(top_p.to(x.device, torch.float32), x) if rows_p else top_p
        masked = torch.where(x >= tau.unsqueeze(-1), x, float("-inf"))
        vals, _ = torch.sort(masked, dim=-1, descending=True)
        cum = torch.cumsum(torch.softmax(vals, dim=-1), dim=-1)
        # entries strictly greater than each sorted value (equal values share the count)
        n_greater = torch.searchsorted((-vals).contiguous(), (-vals).contiguous(), right=False)
        mass_greater = torch.where(
            n_greater > 0, torch.gather(cum, -1, (n_greater - 1).clamp(min=0)), torch.zeros_like(cum)
        )
        kept = (mass_greater < p) & (vals > float("-inf"))
        tau_p = torch.where(kept, vals, float("inf")).amin(dim=-1)
        # +inf entries (x = D / T overflowed) hold all the mass: only they are kept.
        tau_p = torch.where(vals[..., 0] == float("inf"), float("inf"), tau_p)
        tau_p = torch.maximum(tau, tau_p)
        # per row: top_p = 1 leaves the row to top-k alone (a sum of rounded masses can reach 1)
        tau = torch.where(per_row(top_p.to(x.device) < 1.0, x, keep_last=0), tau_p, tau) if rows_p else tau_p
    return tau


def gumbel_noise(noise, shape, device) -> torch.Tensor:
    """float32 [B, K, V] Gumbel noise of a Noise (apd_ext/backends.py): from its explicit uniforms,
    in their precision, or from the generator of its seed and offset."""
    B, K, V = shape
    if noise.uniform is not None:
        return gumbel(noise.uniform[..., :V]).to(torch.float32)
    seed = noise.seed_t if noise.seed_t is not None else noise.seed_v
    offset = noise.offset_t if noise.offset_t is not None else noise.offset_v
    return gumbel(noise_uniform(seed, offset, B, K, V, device))


def sample_draft(dllm_logits: torch.Tensor, vocab_size: int, filt, noise) -> tuple[torch.Tensor, torch.Tensor]:
    """Draft tokens int64 [B, K] and their log-probs float32 [B, K] (APD_SPEC step 1).

    Arguments as every backend takes them (apd_ext/backends.py; checked by apd_ext/ops.py, which
    is how callers reach this with backend="reference"): the [B, K, V] logits, the vocabulary
    used, a Filter (temperature, top_k, top_p) and a Noise (seed, offset or explicit uniforms).
    ``d = argmax_v(x[v] + g[v])`` over the filtered support with ``x = D / T`` (plain argmax when
    T = 0); log-prob of ``d`` under ``softmax(D)`` restricted to the support.
    """
    temperature, top_k, top_p = filt
    B, K, _ = dllm_logits.shape
    V = vocab_size
    D = _clean(dllm_logits, V)
    x = scaled(D, temperature)
    keep = x >= filter_threshold(x, top_k, top_p).unsqueeze(-1)
    score = _noisy(x, temperature, noise, vocab_offset=None)
    score = torch.where(keep, score, float("-inf"))
    tokens = torch.argmax(score, dim=-1)
    logp = log_softmax(torch.where(keep, D, float("-inf")))
    return tokens, torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)


def _noisy(x: torch.Tensor, temperature, noise, vocab_offset: int | None) -> torch.Tensor:
    """The Gumbel-max scores of scaled values x [B, K, V]: x + g, or x itself on greedy rows (T = 0;
    per row for a per-row temperature). vocab_offset: None for the full ops, else the slice's."""
    per_row_t = isinstance(temperature, torch.Tensor)
    if not per_row_t and temperature == 0:
        return x
    g = (gumbel_noise(noise, x.shape, x.device) if vocab_offset is None
         else _slice_gumbel(noise, x.shape, vocab_offset, x.device))
    return torch.where(greedy_rows(temperature.to(x.device), x), x, x + g) if per_row_t else x + g


def _mix(D: torch.Tensor, A: torch.Tensor, mixture_weight) -> torch.Tensor:
    """The mixture logit; a NaN (e.g. D = +inf with A = -inf) counts as -inf, like NaN logits.
    mixture_weight: a scalar, or per-row float64 [B] (each row as its scalar: w and 1 - w rounded
    to float32 from float64, w = 1 giving D and w = 0 giving A)."""
    if isinstance(mixture_weight, torch.Tensor):
        w = per_row(mixture_weight.to(D.device, torch.float64), D)
        mix = torch.nan_to_num(w.to(torch.float32) * D + (1.0 - w).to(torch.float32) * A,
                               nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        return torch.where(w == 1.0, D, torch.where(w == 0.0, A, mix))
    if mixture_weight == 1.0:
        return D
    if mixture_weight == 0.0:
        return A
    mix = (torch.tensor(mixture_weight, dtype=torch.float32) * D
           + torch.tensor(1.0 - mixture_weight, dtype=torch.float32) * A)
    return torch.nan_to_num(mix, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """float32 log softmax over the last dim as ``(x - max) - log(sum(exp(x - max)))``: exact for
    large logits (never ``max + log(sum)`` first, which rounds at max's scale). NaN on rows
    without a finite entry."""
    m = x.amax(dim=-1, keepdim=True)
    shifted = x - m
    return shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))


def accepted_prefix(draft: torch.Tensor, target: torch.Tensor, vocab_size: int,
                    valid_lengths: torch.Tensor | None) -> torch.Tensor:
    """int64 [B]: APD_SPEC step 4, capped by valid_lengths; an out-of-range draft ends the prefix."""
    B, K = draft.shape
    in_range = (draft >= 0) & (draft < vocab_size)
    agree = (draft == target) & in_range
    agree[:, 0] = in_range[:, 0]
    n = torch.cumprod(agree.to(torch.int64), dim=1).sum(dim=1)
    if valid_lengths is not None:
        n = torch.minimum(n, valid_lengths.to(torch.int64).clamp(0, K))
    return n


def mixture_accept(dllm_logits: torch.Tensor, verifier_logits: torch.Tensor, draft_tokens: torch.Tensor,
                   vocab_size: int, mixture_weight: float, greedy_target: bool,
                   valid_lengths: torch.Tensor | None, filt, noise):
    """APD_SPEC steps 3-4: (num_accepted [B], target_tokens [B, K], logp_dllm, logp_verifier,
    logp_mixture [B, K]), with the backend arguments of :func:`sample_draft`; see the module
    docstring for every convention."""
    temperature, top_k, top_p = filt
    B, K, _ = dllm_logits.shape
    V = vocab_size
    D = _clean(dllm_logits, V)
    A = _clean(verifier_logits, V)
    x = scaled(D, temperature)
    keep = (x >= filter_threshold(x, top_k, top_p).unsqueeze(-1)) & (D > float("-inf"))
    mix = _mix(D, A, mixture_weight)
    mix_kept = torch.where(keep, mix, float("-inf"))
    if greedy_target:
        target = torch.argmax(mix, dim=-1)
    else:
        target = torch.argmax(_noisy(scaled(mix_kept, temperature), temperature, noise, None), dim=-1)
    draft = draft_tokens.to(torch.int64)
    safe = draft.clamp(0, V - 1).unsqueeze(-1)

    def at_draft(logits):
        lp = torch.gather(log_softmax(logits), -1, safe).squeeze(-1)
        return torch.where((draft >= 0) & (draft < V), lp, float("nan"))

    logp_d = at_draft(torch.where(keep, D, float("-inf")))
    logp_a = at_draft(A)
    logp_m = at_draft(mix_kept)
    n = accepted_prefix(draft, target, V, valid_lengths)
    if valid_lengths is not None:
        pad = torch.arange(K, device=D.device).unsqueeze(0) >= valid_lengths.to(D.device).view(B, 1)
        target = torch.where(pad, -1, target)
        logp_d, logp_a, logp_m = (torch.where(pad, 0.0, t) for t in (logp_d, logp_a, logp_m))
    return n, target, logp_d, logp_a, logp_m


# --- Vocabulary-parallel partial ops (APD_SPEC "Vocabulary-parallel form") -----------------------
# A rank holding the logits of global tokens [vocab_offset, vocab_offset + vocab) computes, per
# (b, i), what the combine (apd_ext/parallel/vocab.py) needs: its best (score, global id), the
# log-sum-exp states (max, sum of exp(x - max)) of the normalisers and the values at the token
# whose log-prob is reported. The layout of the float32 stats (backends.DRAFT_STATS /
# MIXTURE_STATS) is every backend's. Generated noise is drawn at the GLOBAL token id
# vocab_offset + j; explicit uniforms are indexed by the local column j (the caller slices them).
# `threshold` (float32 [B, K], x units as filter_threshold) replaces the filters' own threshold:
# the global one, found from every rank's candidates; None computes top_k / top_p over this slice
# (right when the slice is the whole vocabulary or no filter is active).


def noise_uniform_at(seed, offset, batch: int, window: int, vocab: int, vocab_offset: int,
                     device="cpu") -> torch.Tensor:
    """float32 [batch, window, vocab]: noise_uniform's entries of global tokens
    [vocab_offset, vocab_offset + vocab) (vocab_offset a multiple of 4)."""
    if vocab_offset % 4:
        raise ValueError(f"vocab_offset must be a multiple of 4, got {vocab_offset}")
    return noise_uniform(seed, offset, batch, window, vocab_offset + vocab, device)[..., vocab_offset:]


def _slice_gumbel(noise, shape, vocab_offset: int, device) -> torch.Tensor:
    B, K, V = shape
    if noise.uniform is not None:
        return gumbel(noise.uniform[..., :V]).to(torch.float32)
    seed = noise.seed_t if noise.seed_t is not None else noise.seed_v
    offset = noise.offset_t if noise.offset_t is not None else noise.offset_v
    return gumbel(noise_uniform_at(seed, offset, B, K, V, vocab_offset, device))


def _lse_state(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, sum(exp(x - max))) over the last dim; (-inf, 0) for a row without a finite entry."""
    m = x.amax(dim=-1)
    s = torch.exp(x - m.unsqueeze(-1)).sum(dim=-1)
    finite = m > float("-inf")
    return m, torch.where(finite, s, 0.0)


def _first_best(score: torch.Tensor, vocab_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.argmax(score, dim=-1)  # the first maximal index, as the spec's argmax
    return torch.gather(score, -1, idx.unsqueeze(-1)).squeeze(-1), idx + vocab_offset


def _keep(x: torch.Tensor, filt, threshold) -> torch.Tensor:
    _, top_k, top_p = filt
    tau = filter_threshold(x, top_k, top_p) if threshold is None else threshold.to(torch.float32)
    return x >= tau.unsqueeze(-1)


def sample_draft_partial(dllm_logits: torch.Tensor, vocab_size: int, vocab_offset: int, filt, noise,
                         threshold: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """sample_draft over one vocabulary slice: (token int64 [B, K], stats float32 [B, K, 4]).

    token: the global id (vocab_offset + first local argmax) of the best score; stats (DRAFT_STATS):
    score (x + g over the kept entries, x when greedy; -inf when none), lse_max and lse_sum of the
    kept D, value (kept D at token; -inf when not kept). A row with no finite score reports
    token vocab_offset and score -inf.
    """
    temperature = filt[0]
    B, K, _ = dllm_logits.shape
    V = vocab_size
    D = _clean(dllm_logits, V)
    x = scaled(D, temperature)
    keep = _keep(x, filt, threshold)
    score = torch.where(keep, _noisy(x, temperature, noise, vocab_offset), float("-inf"))
    best, token = _first_best(score, vocab_offset)
    Dk = torch.where(keep, D, float("-inf"))
    m, s = _lse_state(Dk)
    value = torch.gather(Dk, -1, (token - vocab_offset).unsqueeze(-1)).squeeze(-1)
    return token, torch.stack([best, m, s, value], dim=-1)


def mixture_accept_partial(dllm_logits: torch.Tensor, verifier_logits: torch.Tensor, draft_tokens: torch.Tensor,
                           vocab_size: int, vocab_offset: int, mixture_weight: float, greedy_target: bool,
                           valid_lengths: torch.Tensor | None, filt, noise,
                           threshold: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """mixture_accept over one vocabulary slice: (target int64 [B, K], stats float32 [B, K, 10]).

    draft_tokens are GLOBAL ids. target: global id of the best target score (as mixture_accept's
    target, over this slice); stats (MIXTURE_STATS): score, then (max, sum) of the kept D, of A and
    of the kept mixture, then the kept D, A and kept mixture at the draft token when this slice
    holds it (-inf otherwise). Positions at or beyond valid_lengths[b] report target -1, score and
    maxima -inf, sums 0, values -inf. The accepted prefix is the combine's (it needs every slice).
    """
    temperature = filt[0]
    B, K, _ = dllm_logits.shape
    V = vocab_size
    D = _clean(dllm_logits, V)
    A = _clean(verifier_logits, V)
    x = scaled(D, temperature)
    keep = _keep(x, filt, threshold) & (D > float("-inf"))
    mix = _mix(D, A, mixture_weight)
    mix_kept = torch.where(keep, mix, float("-inf"))
    score = mix if greedy_target else _noisy(scaled(mix_kept, temperature), temperature, noise, vocab_offset)
    best, target = _first_best(score, vocab_offset)
    Dk = torch.where(keep, D, float("-inf"))
    states = [t for x_ in (Dk, A, mix_kept) for t in _lse_state(x_)]
    local = draft_tokens.to(torch.int64) - vocab_offset
    held = (local >= 0) & (local < V)
    idx = local.clamp(0, V - 1).unsqueeze(-1)
    at = [torch.where(held, torch.gather(x_, -1, idx).squeeze(-1), float("-inf")) for x_ in (Dk, A, mix_kept)]
    stats = torch.stack([best, *states, *at], dim=-1)
    if valid_lengths is not None:
        pad = torch.arange(K, device=D.device).unsqueeze(0) >= valid_lengths.to(D.device).view(B, 1)
        target = torch.where(pad, -1, target)
        empty = torch.tensor([float("-inf")] + [float("-inf"), 0.0] * 3 + [float("-inf")] * 3,
                             dtype=torch.float32, device=D.device)
        stats = torch.where(pad.unsqueeze(-1), empty, stats)
    return target, stats
