"""The models' attention call is one the fused SDPA kernels take on a GPU.

A boolean mask together with enable_gqa (the old form) leaves only cuDNN (where it is preferred)
and the math path on torch 2.11: FlashAttention takes no mask, memory-efficient attention takes
GQA only from torch 2.13 on. The form used instead (apd_ext/models/transformer.py, `attend`):
query-head groups folded into the query length, same head count on q and k/v, an additive bias in
the query dtype whose strides are 8-aligned on a 16-aligned key length. These tests check that
form on CPU against the constraints read in PyTorch's source, check that it computes the same
attention, and, on a GPU only, which backend torch actually picks.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import golden
from apd_ext.decode.driver import generate
from apd_ext.models import transformer
from apd_ext.models.runners import DllmRunner, VerifierRunner


def efficient_attention_rejections(q, k, v, attn_mask=None, enable_gqa=False, **kw) -> list[str]:
    """Why PyTorch's CUDA memory-efficient SDPA would not run this call as it is, on torch 2.11 to
    2.14 (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp can_use_mem_efficient_attention,
    attention.cpp preprocess_mask, attention.cu _efficient_attention_forward); [] when it would,
    with no copy of the mask. Rules for a bf16 model on sm80+ (the H100/H200 case)."""
    why = []
    if kw.get("dropout_p", 0.0) or kw.get("is_causal", False):
        why.append("dropout / is_causal")
    if not (q.dim() == k.dim() == v.dim() == 4):
        return why + ["q, k, v must be 4-D"]
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        why.append("batch sizes differ")
    if enable_gqa or not (q.shape[1] == k.shape[1] == v.shape[1]):
        # check_batch_size_and_num_heads_dense<supports_gqa = false> before torch 2.13
        why.append("GQA (enable_gqa / head counts differ): not accepted before torch 2.13")
    D = q.shape[-1]
    if not (D == k.shape[-1] == v.shape[-1]) or D % 8:  # minimum_gemm_alignment: 8 for fp16/bf16 on sm80+
        why.append(f"head_dim {D} must match and be a multiple of 8")
    if min(q.shape[-2], k.shape[-2]) == 0:
        why.append("zero sequence length")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            why.append(f"{name}.stride(-1) != 1")
        if (t.storage_offset() * t.element_size()) % 16:  # check_data_ptr_alignment_mem_efficient
            why.append(f"{name} storage offset not 16-byte aligned")
    if attn_mask is not None:
        m = attn_mask
        if m.dtype != q.dtype:  # bool is converted (a new tensor per call); other dtypes are an error
            why.append(f"mask dtype {m.dtype} is not the query dtype {q.dtype}")
        if m.dim() != 4:
            why.append("mask must be 4-D")
        else:
            ok = ((m.shape[0] in (1, q.shape[0])) and (m.shape[1] in (1, q.shape[1]))
                  and (m.shape[2] in (1, q.shape[2])) and m.shape[3] == k.shape[2])
            if not ok:
                why.append(f"mask shape {tuple(m.shape)} does not broadcast to {tuple(q.shape[:3]) + (k.shape[2],)}")
        if m.stride(-1) != 1:
            why.append("mask.stride(-1) != 1")
        if any(m.stride(i) % 8 for i in range(m.dim() - 1)):  # aligned_tensor<8>, else pad_bias copies
            why.append(f"mask strides {m.stride()} not multiples of 8 (padded copy in every call)")
    return why


class Recorder:
    """Stands in for F.scaled_dot_product_attention and keeps each call's arguments."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        self.calls.append(dict(q=q, k=k, v=v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                               enable_gqa=enable_gqa))
        return self.real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                         enable_gqa=enable_gqa)


@pytest.fixture(scope="module")
def models():
    return (DllmRunner.from_pretrained(golden.path("dream_tiny")),
            VerifierRunner.from_pretrained(golden.path("qwen2_tiny")))


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder(F.scaled_dot_product_attention)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", rec)
    return rec


@pytest.fixture
def cuda_layout(monkeypatch):
    """The caches laid out as on CUDA (key length padded to a multiple of 16)."""
    monkeypatch.setattr(transformer, "cache_alignment", lambda device: transformer.CUDA_KEY_ALIGNMENT)


def _calls_of_a_decoding_run(models, **kw):
    ids = [[381, 5, 9, 17, 33, 2, 8], [381, 7, 8, 9]]
    generate(*models, ids, max_new_tokens=12, max_lookahead=5, seed=3, eos_token_id=[], **kw)


@pytest.mark.parametrize("kv_window", [3, None])
def test_every_attention_call_meets_the_efficient_kernel_constraints(models, recorder, cuda_layout, kv_window):
    """Every SDPA call of a decoding run (dLLM window forwards, verifier prefill and steps), with
    the CUDA cache layout, is one the CUDA memory-efficient kernel takes without a mask copy. The
    golden tiny pair has grouped K/V heads (4 query heads, 2 K/V heads), as Dream and Qwen2.5 do."""
    _calls_of_a_decoding_run(models, kv_window=kv_window)
    assert len(recorder.calls) > 10
    for call in recorder.calls:
        assert efficient_attention_rejections(**call) == []
        assert call["k"].shape[2] % transformer.CUDA_KEY_ALIGNMENT == 0
    dllm_calls = [c for c in recorder.calls if c["q"].shape[2] > 1 and c["attn_mask"].shape[2] == 1]
    assert dllm_calls, "the dLLM's mask is one row broadcast over its queries"


def test_the_old_form_is_caught(models):
    """The check above fails on the call the models used to make (boolean mask + enable_gqa,
    unpadded cache), and on each of its ingredients alone."""
    q = torch.randn(2, 4, 6, 16)
    k = v = torch.randn(2, 2, 49, 16)
    mask = torch.ones(2, 1, 6, 49, dtype=torch.bool)
    old = efficient_attention_rejections(q, k, v, attn_mask=mask, enable_gqa=True)
    assert any("GQA" in w for w in old) and any("dtype" in w for w in old) and any("strides" in w for w in old)
    qf = q.reshape(2, 2, 12, 16)
    bias = torch.zeros(2, 1, 12, 64)
    kp = torch.randn(2, 2, 64, 16)
    assert efficient_attention_rejections(qf, kp, kp, attn_mask=bias) == []
    assert efficient_attention_rejections(q, kp, kp, attn_mask=torch.zeros(2, 1, 6, 64), enable_gqa=True)
    assert efficient_attention_rejections(qf, kp, kp, attn_mask=bias.bool())
    assert efficient_attention_rejections(qf, k, k, attn_mask=torch.zeros(2, 1, 12, 49))
    assert efficient_attention_rejections(torch.randn(2, 2, 12, 12), kp[..., :12], kp[..., :12], attn_mask=bias)


def test_folded_attention_equals_grouped_attention():
    """attend() on folded queries and an additive bias = SDPA with enable_gqa and the boolean mask,
    on the exact key length and on a padded one (padding slots masked)."""
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, S, L, D = 2, 6, 2, 5, 37, 16
    q, k, v = (torch.randn(B, h, n, D, generator=g) for h, n in ((H, S), (Hkv, L), (Hkv, L)))
    pos = torch.tensor([[20], [31]]) + torch.arange(S)
    causal = torch.arange(L).view(1, 1, L) <= pos.unsqueeze(-1)  # [B, S, L]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=causal.unsqueeze(1), enable_gqa=True)
    G = H // Hkv
    for Lp in (L, 48):
        kp, vp = (torch.cat([t, torch.randn(B, Hkv, Lp - L, D, generator=g)], 2) for t in (k, v))
        bias = torch.full((B, 1, S, Lp), float("-inf"))
        bias[..., :L].masked_fill_(causal.unsqueeze(1), 0.0)
        out = transformer.attend(q.reshape(B, Hkv, G * S, D), kp, vp, bias.repeat(1, 1, G, 1))
        torch.testing.assert_close(out.view(B, H, S, D), want, atol=1e-6, rtol=1e-5)


def test_padded_cache_gives_the_same_logits(models, monkeypatch):
    """The CUDA layout (key length padded to 16) changes no logit beyond float rounding."""
    dllm, verifier = models
    canvas = torch.randint(0, 381, (2, 31), generator=torch.Generator().manual_seed(1))
    args = (canvas, torch.tensor([0, 3]), torch.tensor([22, 30]), torch.tensor([12, 20]), 6, 27)
    outs = []
    for align in (1, 16):
        monkeypatch.setattr(transformer, "cache_alignment", lambda device, a=align: a)
        dllm.setup(2, 30)
        verifier.setup(2, 30)
        assert dllm.model.cache_slots == (31 if align == 1 else 32)
        D = dllm.window_logits(*args)
        A0 = verifier.prefill(canvas, torch.tensor([12, 20]), 20)
        A = verifier.step(canvas[:, 12:18], torch.tensor([12, 20]), torch.tensor([6, 4]))
        outs.append((D, A0, A))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_cpu_runs_the_calls_without_the_math_backend(models, recorder, cuda_layout):
    """On CPU the calls run with SDPA restricted to the fused backends (CPU flash attention; it
    also took the old form, so this is a smoke check: the constraint test above is the guard)."""
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused):
        _calls_of_a_decoding_run(models, kv_window=3)
    for c in recorder.calls[:4]:
        choice = torch._fused_sdp_choice(c["q"], c["k"], c["v"], c["attn_mask"])
        assert SDPBackend(choice) == SDPBackend.FLASH_ATTENTION


def _model_call(heads, dtype, device, S, L, per_query_mask):
    """Arguments of one attend() call at a model's head layout: (H, Hkv, head_dim)."""
    H, Hkv, D = heads
    G = H // Hkv
    g = torch.Generator(device=device).manual_seed(0)
    Lp = -(-L // transformer.CUDA_KEY_ALIGNMENT) * transformer.CUDA_KEY_ALIGNMENT
    q = torch.randn(2, Hkv, G * S, D, generator=g, device=device).to(dtype)
    k = torch.randn(2, Hkv, Lp, D, generator=g, device=device).to(dtype)
    v = torch.randn(2, Hkv, Lp, D, generator=g, device=device).to(dtype)
    bias = torch.zeros(2, 1, G * S if per_query_mask else 1, Lp, device=device, dtype=dtype)
    bias[..., L - 7:] = float("-inf")
    return q, k, v, bias


@pytest.mark.skipif(not torch.cuda.is_available(), reason="which CUDA backend runs needs a GPU")
@pytest.mark.parametrize("per_query_mask", [False, True], ids=["window_mask", "causal_mask"])
@pytest.mark.parametrize("heads,S", [((28, 4, 128), 231), ((14, 2, 64), 100)], ids=["dream7b", "qwen05b"])
def test_cuda_picks_a_fused_backend(heads, S, per_query_mask):
    """On the GPU: torch's own choice for calls of the models' form (Dream-7B and Qwen2.5-0.5B head
    layouts, bf16) is a fused kernel, not math, and it agrees with the math path."""
    q, k, v, bias = _model_call(heads, torch.bfloat16, "cuda", S, 500, per_query_mask)
    assert efficient_attention_rejections(q, k, v, attn_mask=bias) == []
    choice = SDPBackend(torch._fused_sdp_choice(q, k, v, bias))
    assert choice in (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION), choice
    out = transformer.attend(q, k, v, bias)
    with sdpa_kernel([SDPBackend.MATH]):
        ref = transformer.attend(q, k, v, bias)
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)
