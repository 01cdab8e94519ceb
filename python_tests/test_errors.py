"""Bad input gets a clear error naming the argument, before any work."""

import pytest
import torch

import apd_ext

B, K, V = 2, 3, 50


@pytest.fixture
def t():
    gen = torch.Generator().manual_seed(0)
    return dict(
        D=torch.randn(B, K, V, generator=gen),
        A=torch.randn(B, K, V, generator=gen),
        d=torch.randint(0, V, (B, K), generator=gen),
    )


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(temperature=-0.1), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature=1e-45), ValueError, "temperature"),
        (dict(top_k=-1), ValueError, "top_k"),
        (dict(top_k=2.5), TypeError, "top_k"),
        (dict(top_k=2.0), TypeError, "top_k"),
        (dict(top_k=float("nan")), TypeError, "top_k"),
        (dict(top_k=float("inf")), TypeError, "top_k"),
        (dict(top_k="3"), TypeError, "top_k"),
        (dict(top_k=None), TypeError, "top_k"),
        (dict(temperature="1"), TypeError, "temperature"),
        (dict(temperature=None), TypeError, "temperature"),
        (dict(temperature=float("inf")), ValueError, "temperature"),
        (dict(top_p="0.9"), TypeError, "top_p"),
        (dict(top_p=None), TypeError, "top_p"),
        (dict(top_p=float("nan")), ValueError, "top_p"),
        (dict(vocab_size="50"), TypeError, "vocab_size"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_p=1.5), ValueError, "top_p"),
        (dict(vocab_size=V + 1), ValueError, "vocab_size"),
        (dict(vocab_size=0), ValueError, "vocab_size"),
        (dict(seed=torch.tensor([1, 2, 3])), ValueError, "seed"),
        (dict(seed=torch.tensor([1.0])), TypeError, "seed"),
        (dict(seed=2**64), ValueError, "seed"),
        (dict(seed="x"), TypeError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(seed=None, offset=0.5), TypeError, "offset"),
        (dict(offset=torch.arange(B + 1)), ValueError, "offset tensor must hold 1 or B"),  # 1 or B row offsets
        (dict(noise=torch.rand(B, K, V - 1)), ValueError, "noise"),
        (dict(noise=torch.rand(B, K, V).half()), TypeError, "noise"),
        (dict(noise=torch.rand(B, K, V).tolist()), TypeError, "noise"),
    ],
)
def test_sample_draft_rejects(t, backend, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        apd_ext.sample_draft(t["D"], backend=backend, **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.5, float("inf"), float("-inf"), 0.0, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_outside_the_open_unit_interval_is_rejected(t, bad, dtype):
    """Explicit uniforms must lie in (0, 1): each backend would turn others into a different token."""
    u = torch.rand(B, K, V, dtype=dtype).clamp(1e-6, 1 - 1e-6)
    u[1, 2, 7] = bad
    with pytest.raises(ValueError, match=r"noise must hold uniforms in the open interval \(0, 1\)"):
        apd_ext.sample_draft(t["D"], noise=u)
    with pytest.raises(ValueError, match="noise must hold uniforms"):
        apd_ext.mixture_accept(t["D"], t["A"], t["d"], mixture_weight=0.5, noise=u)
    # entries past vocab_size are never used, so they are not checked
    u[1, 2, 7] = 0.5
    u[..., V - 1] = bad
    apd_ext.sample_draft(t["D"], noise=u, vocab_size=V - 1)


def test_sample_draft_rejects_bad_logits(t):
    with pytest.raises(ValueError, match=r"dllm_logits must have shape \[B, K, V\]"):
        apd_ext.sample_draft(t["D"][0])
    with pytest.raises(TypeError, match="dllm_logits must be float32"):
        apd_ext.sample_draft(t["D"].double())
    with pytest.raises(TypeError, match="dllm_logits must be float32"):
        apd_ext.sample_draft(t["D"].long())
    with pytest.raises(ValueError, match="non-zero"):
        apd_ext.sample_draft(torch.empty(0, K, V))
    with pytest.raises(TypeError, match="torch.Tensor"):
        apd_ext.sample_draft(t["D"].numpy())
    with pytest.raises(ValueError, match="backend must be one of"):
        apd_ext.sample_draft(t["D"], backend="tpu")


def test_unavailable_backend_says_what_is_available(t):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="cannot run on cpu tensors here"):
        apd_ext.sample_draft(t["D"], backend="cuda", seed=1)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (dict(mixture_weight=-0.1), ValueError, "mixture_weight"),
        (dict(mixture_weight=1.01), ValueError, "mixture_weight"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_k=-3), ValueError, "top_k"),
        (dict(valid_lengths=torch.tensor([1, 5])), ValueError, "valid_lengths"),
        (dict(valid_lengths=torch.tensor([1])), ValueError, "valid_lengths"),
        (dict(valid_lengths=torch.tensor([1, 2], dtype=torch.int32)), ValueError, "valid_lengths"),
        (dict(vocab_size=V + 1), ValueError, "vocab_size"),
        (dict(mixture_weight="0.5"), TypeError, "mixture_weight"),
        (dict(mixture_weight=None), TypeError, "mixture_weight"),
        (dict(mixture_weight=float("nan")), ValueError, "mixture_weight"),
        (dict(temperature=None), TypeError, "temperature"),
        (dict(top_k=float("inf")), TypeError, "top_k"),
        (dict(valid_lengths=[1, 2]), TypeError, "valid_lengths"),
        (dict(noise=torch.rand(B, K, V).tolist()), TypeError, "noise"),
        (dict(noise=torch.full((B, K, V), 1.5)), ValueError, "noise"),
        (dict(seed=1.5), TypeError, "seed"),
    ],
)
def test_mixture_accept_rejects(t, change, exc, match):
    kw = dict(mixture_weight=0.5, seed=1, offset=0)
    kw.update(change)
    with pytest.raises(exc, match=match):
        apd_ext.mixture_accept(t["D"], t["A"], t["d"], **kw)


def test_mixture_accept_rejects_bad_tensors(t):
    D, A, d = t["D"], t["A"], t["d"]
    with pytest.raises(ValueError, match="vocabulary sizes differ.*vocab_size"):
        apd_ext.mixture_accept(D, torch.randn(B, K, V + 2), d, mixture_weight=0.5, seed=1)
    with pytest.raises(ValueError, match="exceeds the 40 entries of verifier_logits"):
        apd_ext.mixture_accept(D, torch.randn(B, K, 40), d, mixture_weight=0.5, seed=1, vocab_size=45)
    with pytest.raises(ValueError, match="verifier_logits must be"):
        apd_ext.mixture_accept(D, torch.randn(B, K + 1, V), d, mixture_weight=0.5, seed=1)
    with pytest.raises(ValueError, match="draft_tokens must have shape"):
        apd_ext.mixture_accept(D, A, d[:, :2], mixture_weight=0.5, seed=1)
    with pytest.raises(TypeError, match="draft_tokens must be an int64"):
        apd_ext.mixture_accept(D, A, d.int(), mixture_weight=0.5, seed=1)
    with pytest.raises(ValueError, match="draft_tokens holds 50, outside the vocabulary"):
        apd_ext.mixture_accept(D, A, torch.full((B, K), V), mixture_weight=0.5, seed=1)
    with pytest.raises(ValueError, match="draft_tokens holds -1"):
        apd_ext.mixture_accept(D, A, torch.full((B, K), -1), mixture_weight=0.5, seed=1)
    with pytest.raises(ValueError, match="needs the seed and offset"):
        apd_ext.mixture_accept(D, A, d, mixture_weight=0.5)
    # greedy targets and T = 0 need no noise, so no seed
    apd_ext.mixture_accept(D, A, d, mixture_weight=0.5, greedy_target=True)
    apd_ext.mixture_accept(D, A, d, mixture_weight=0.5, temperature=0.0)


NO_ROWS = (None, None, None)  # the schemas' temperature_rows, top_k_rows, top_p_rows


def test_torch_op_checks_its_own_arguments(t):
    """Called directly (no Python checks), the compiled op still refuses bad input."""
    if "cpu" not in apd_ext.available_backends("cpu"):
        pytest.skip("extension not built")
    op = torch.ops.apd_ext.sample_draft
    with pytest.raises(RuntimeError, match="vocab_size"):
        op(t["D"], V + 5, 1.0, 0, 1.0, *NO_ROWS, None, 1, None, 0, None)
    with pytest.raises(RuntimeError, match="top_p"):
        op(t["D"], V, 1.0, 0, 0.0, *NO_ROWS, None, 1, None, 0, None)
    with pytest.raises(RuntimeError, match="dllm_logits must be"):
        op(t["D"].double(), V, 1.0, 0, 1.0, *NO_ROWS, None, 1, None, 0, None)
    with pytest.raises(RuntimeError, match="seed"):
        op(t["D"], V, 1.0, 0, 1.0, *NO_ROWS, torch.tensor([1, 2, 3]), 0, None, 0, None)
    acc = torch.ops.apd_ext.mixture_accept
    with pytest.raises(RuntimeError, match="mixture_weight"):
        acc(t["D"], t["A"], t["d"], V, 1.5, None, 1.0, 0, 1.0, *NO_ROWS, None, False, None, 1, None, 0, None)
    with pytest.raises(RuntimeError, match="draft_tokens"):
        acc(t["D"], t["A"], t["d"].int(), V, 0.5, None, 1.0, 0, 1.0, *NO_ROWS, None, False, None, 1, None, 0, None)
