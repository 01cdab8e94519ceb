"""Edge inputs every backend must treat alike (issue 10): a NaN mixture entry, a temperature so
small that D / T overflows, log-probs of huge logits, top_k beyond the vocabulary, 64-bit seeds.
Each backend is checked against the spec (values worked out here, or float64 math), not only
against the others."""

import pytest
import torch

import apd_ext
from helpers import backend_device, backend_params

BACKENDS = [pytest.param("reference", id="reference"), *backend_params()]
INF = float("inf")


def _on(backend, *tensors):
    dev = backend_device(backend) if backend != "reference" else torch.device("cpu")
    return [t.to(dev) for t in tensors]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_mixture_entry_counts_as_neg_inf(backend):
    """D = +inf with A = -inf at 0 < mixture_weight < 1 makes a NaN mixture entry: never the target
    (APD_SPEC: NaN counts as -inf), whatever the mode; entry 2 (mixture 1.5) beats entry 0 (0)."""
    D, A = _on(backend, torch.tensor([[[0.0, INF, 1.0]]]), torch.tensor([[[0.0, -INF, 2.0]]]))
    draft = torch.zeros(1, 1, dtype=torch.int64, device=D.device)
    u = torch.full((1, 1, 3), 0.5, device=D.device)
    u[0, 0, 1] = 1 - 1e-6  # the largest noise on the NaN entry
    for kw in (dict(temperature=0.0), dict(greedy_target=True), dict(temperature=1.0, noise=u)):
        _, target, *_ = apd_ext.mixture_accept(D, A, draft, mixture_weight=0.5, backend=backend, **kw)
        assert target.tolist() == [[2]], kw
    for seed in range(20):  # generated noise: entry 1 is never drawn
        _, target, *_ = apd_ext.mixture_accept(D, A, draft, mixture_weight=0.5, seed=seed, backend=backend)
        assert target.item() in (0, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_temperature_with_top_p_keeps_only_the_overflowing_entries(backend):
    """At T = 1e-38, x = D / T overflows to +inf for D > ~3.4: those entries hold all the top-p mass,
    so the draft and the target come from them only, and every backend agrees with the reference."""
    gen = torch.Generator().manual_seed(3)
    D, A = torch.randn(2, 3, 50, generator=gen) * 2, torch.randn(2, 3, 50, generator=gen)
    D[..., 7] = 4.0  # at least one overflowing entry per row
    kw = dict(temperature=1e-38, top_p=0.9, seed=3, offset=0)
    ref_tok, _ = apd_ext.sample_draft(D, backend="reference", **kw)
    ref = apd_ext.mixture_accept(D, A, ref_tok, mixture_weight=0.5, backend="reference", **kw)
    overflow = D * torch.tensor(1e38) == INF
    assert overflow.gather(-1, ref_tok.unsqueeze(-1)).all()
    assert overflow.gather(-1, ref[1].unsqueeze(-1)).all()
    Dd, Ad, tok_in = _on(backend, D, A, ref_tok)
    tok, _ = apd_ext.sample_draft(Dd, backend=backend, **kw)
    out = apd_ext.mixture_accept(Dd, Ad, tok_in, mixture_weight=0.5, backend=backend, **kw)
    assert tok.cpu().equal(ref_tok)
    assert out[1].cpu().equal(ref[1]) and out[0].cpu().equal(ref[0])


def _exact_logp(x: torch.Tensor, token: int):
    """float64 log softmax at token, as pytest.approx within float32 rounding (2e-6 absolute near 0,
    1e-6 relative for the large log-probs of entries far below the max); -inf where the float64
    value is below float32's range."""
    exact = torch.log_softmax(x.double(), dim=-1)[..., token].item()
    if exact < -torch.finfo(torch.float32).max:
        exact = -INF
    return pytest.approx(exact, abs=2e-6, rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "row,dtype",
    [
        ([60000.0, 59000.0, 59998.0, 59999.0, 60000.0, 65504.0, 65500.0], torch.float16),  # fp16 near its max
        ([3e38, 3e38, -3e38, 1e38], torch.float32),  # float32 near its max: exact answer log(1/2)
        ([3.3e38, -1.0, 3.3e38 * (1 - 2**-20)], torch.float32),
    ],
)
def test_log_probs_of_huge_logits_match_float64(backend, row, dtype):
    """log softmax at the drawn token, for both ops, within float32 rounding of the float64 value
    (summing max + log(sum) first lost 1e-3 at 6e4 and everything at 3e38)."""
    D = torch.tensor(row, dtype=dtype).view(1, 1, -1)
    A = D.flip(-1)
    mw = 0.25
    mix = torch.tensor(mw) * D.float() + torch.tensor(1 - mw) * A.float()  # as every backend rounds it
    Dd, Ad = _on(backend, D, A)
    tok, lp = apd_ext.sample_draft(Dd, temperature=0.0, backend=backend)
    t = tok.item()
    assert lp.item() == _exact_logp(D.float(), t)
    for t in range(D.shape[-1]):
        if not torch.isfinite(mix[..., t]).all():
            continue
        draft = torch.full((1, 1), t, dtype=torch.int64, device=Dd.device)
        _, _, lpd, lpa, lpm = apd_ext.mixture_accept(Dd, Ad, draft, mixture_weight=mw, temperature=0.0,
                                                     backend=backend)
        assert lpd.item() == _exact_logp(D.float(), t)
        assert lpa.item() == _exact_logp(A.float(), t)
        assert lpm.item() == _exact_logp(mix, t)


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_at_or_beyond_the_vocabulary_filters_nothing(backend):
    gen = torch.Generator().manual_seed(1)
    D, A = _on(backend, torch.randn(2, 2, 30, generator=gen), torch.randn(2, 2, 30, generator=gen))
    base, _ = apd_ext.sample_draft(D, top_k=0, seed=5, backend=backend)
    base_acc = apd_ext.mixture_accept(D, A, base, mixture_weight=0.5, top_k=0, seed=5, backend=backend)
    for k in (30, 31, 2**63 - 1, 2**63, 2**64, 10**30):
        tok, _ = apd_ext.sample_draft(D, top_k=k, seed=5, backend=backend)
        acc = apd_ext.mixture_accept(D, A, base, mixture_weight=0.5, top_k=k, seed=5, backend=backend)
        assert tok.equal(base), k
        assert acc[1].equal(base_acc[1]), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeds_take_every_64_bit_value(backend):
    """An int seed is taken modulo 2**64: 2**64 - 1 is -1, 2**63 is -2**63 (row b adds b, wrapping)."""
    (D,) = _on(backend, torch.randn(3, 2, 40, generator=torch.Generator().manual_seed(2)))
    for big, small in ((2**64 - 1, -1), (2**63, -(2**63)), (2**63 - 1, 2**63 - 1)):
        a, _ = apd_ext.sample_draft(D, seed=big, backend=backend)
        b, _ = apd_ext.sample_draft(D, seed=small, backend=backend)
        assert a.equal(b), big
