"""criterion.safetensors of the golden data (found by python_tests/golden.py): drafts and acceptance
of the authors' reference code.

In their mode (draft at temperature T^2 from their uniforms, greedy_target=True) every backend must
reproduce their draft, targets, accept vectors and counts exactly; in the default (paper) mode, with
the same uniforms, every backend must match reference.py.
"""

import pytest
import torch
from safetensors.torch import load_file

import golden as golden_data
from helpers import backend_device, backend_params, ref_mixture_accept, ref_sample_draft, run

WEIGHTS = {"w000": 0.0, "w030": 0.3, "w070": 0.7, "w100": 1.0}
BACKENDS = backend_params(("reference", "cpu", "triton", "cuda"))


@pytest.fixture(scope="module")
def golden():
    return load_file(str(golden_data.path("criterion.safetensors")))


def _case(g, c):
    p = f"case{c}."
    return (g[p + "diffusion_logits"], g[p + "verifier_logits"], float(g[p + "temperature"].item()),
            g[p + "uniform"], g[p + "x0"], g[p + "draft"])


def test_golden_weights_are_as_documented(golden):
    assert golden["mixture_weights"].tolist() == [0.0, 0.3, 0.7, 1.0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [1, 2, 3, 4])
def test_authors_mode_reproduces_golden(golden, backend, case):
    D, A, T, U, x0, draft = _case(golden, case)
    dev = backend_device(backend)
    tok, _ = run("sample_draft", backend, D.to(dev), temperature=T * T, noise=U.unsqueeze(0).to(dev))
    assert tok.cpu()[0].tolist() == x0.tolist()
    K = D.shape[1]
    last_k = draft[:, -K:].contiguous()  # the authors compare only the last K draft entries
    for name, w in WEIGHTS.items():
        n, target, *_ = run("mixture_accept", backend, D.to(dev), A.to(dev), last_k.to(dev),
                            mixture_weight=w, greedy_target=True)
        p = f"case{case}.{name}."
        assert target.cpu().tolist() == golden[p + "target_samples"].tolist(), name
        assert n.cpu().tolist() == golden[p + "num_accept"].tolist(), name
        accept = (torch.arange(K) < n.cpu()[0]).long()
        assert accept.tolist() == golden[p + "accept"][0].tolist(), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [1, 2, 3, 4])
def test_paper_mode_with_golden_uniforms_matches_reference(golden, backend, case):
    D, A, T, U, _, _ = _case(golden, case)
    dev = backend_device(backend)
    noise = U.unsqueeze(0)
    tok, lp = run("sample_draft", backend, D.to(dev), temperature=T, noise=noise.to(dev))
    ref_tok, ref_lp = ref_sample_draft(D, temperature=T, noise=noise)
    assert torch.equal(tok.cpu(), ref_tok)
    torch.testing.assert_close(lp.cpu(), ref_lp, atol=1e-4, rtol=1e-5)
    for w in WEIGHTS.values():
        out = run("mixture_accept", backend, D.to(dev), A.to(dev), ref_tok.to(dev), mixture_weight=w,
                  temperature=T, noise=noise.to(dev))
        ref = ref_mixture_accept(D, A, ref_tok, mixture_weight=w, temperature=T, noise=noise)
        assert torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[1].cpu(), ref[1])
        for got, exp in zip(out[2:], ref[2:]):
            torch.testing.assert_close(got.cpu(), exp, atol=1e-4, rtol=1e-5)


def test_paper_mode_accepts_at_least_authors_mode_at_w1(golden):
    """At w = 1 the paper's coupled target equals the draft, so every position is accepted."""
    for case in [2, 3, 4]:
        D, A, T, U, _, _ = _case(golden, case)
        tok, _ = ref_sample_draft(D, temperature=T, noise=U.unsqueeze(0))
        n, *_ = ref_mixture_accept(D, A, tok, mixture_weight=1.0, temperature=T, noise=U.unsqueeze(0))
        assert n.item() == D.shape[1]
