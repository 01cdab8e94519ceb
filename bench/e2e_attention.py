"""bench_e2e.py's attention profile: which scaled_dot_product_attention backend runs in a steady
eager decoding step (APD, or a block-diffusion dLLM's own policy), its costliest kernel, its time per
step (torch.profiler: device time on CUDA, CPU time on CPU), and torch's own backend choice for each
model's call (torch._fused_sdp_choice).
"""

from __future__ import annotations

import time

import torch

from apd_ext.decode import DecodeConfig
from apd_ext.decode import inputs
from apd_ext.decode.execute import logits_width
from apd_ext.decode.state import State
from apd_ext.decode.steps import make_step

PROFILED_STEPS = 3


class _ProfilerClock:
    """Step phases as profiler ranges (what Step's `clock` argument expects)."""

    def phase(self, name):
        return torch.profiler.record_function(name)


def steady_state(dllm, verifier, prompts, R, M, new_tokens, vocab, mixture_weight, seed, policy="apd", knobs=None):
    """(step, state): an eager step of `policy` (apd by default; knobs: its own DecodeConfig knobs;
    apd_ext.decode.steps.make_step, the function generate runs) and a decoding state of the prompts
    [B, P] after its first step (the whole prompt), so that the next calls are steady steps. Row b's
    noise seed is seed + b. On a block-diffusion dLLM the canvas is rounded up to whole blocks."""
    device = prompts.device
    B, P = prompts.shape
    L = P + new_tokens
    block = getattr(dllm, "block_size", None)
    if block is not None:
        L = -(-L // block) * block
    cfg = DecodeConfig(policy=policy, max_new_tokens=new_tokens, mixture_weight=mixture_weight, kv_window=R,
                       max_lookahead=M, temperature=1.0, **(knobs or {}))
    parallel = inputs.tensor_parallel(dllm, verifier, vocab)  # (tp, shard) under --tp, else None
    step = make_step(cfg, length=L, vocab=vocab, eos=[], device=device, parallel=parallel, block=block)
    dllm.setup(B, L)
    verifier.setup(B, L)
    st = State.allocate(B, L, step.verifier_rows, logits_width(verifier), verifier.logits_dtype, device)
    canvas = torch.full((B, L + 1), dllm.mask_token_id, dtype=torch.int64)
    canvas[:, :P] = prompts.cpu()
    st.fill(canvas, torch.full((B,), P), new_tokens, torch.arange(B) + seed)
    if st.verifier_logits is not None:
        verifier.prefill(st.canvas, st.curr, P, out=st.verifier_logits[:1])
    step(st, dllm, verifier, first=True)
    return step, st


def record_sdpa_calls(step, st, dllm, verifier) -> list[tuple]:
    """Run one steady step with scaled_dot_product_attention wrapped: the arguments (q, k, v,
    attn_mask, enable_gqa) of each model's attention call (one per run of calls of the same
    query shape: the dLLM's, then the verifier's)."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, **kw):
        if not calls or calls[-1][0].shape != q.shape:
            calls.append((q, k, v, attn_mask, kw.get("enable_gqa", False)))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    torch.nn.functional.scaled_dot_product_attention = record
    try:
        step(st, dllm, verifier)
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
    return calls


def _chosen(*a, **kw) -> str:
    """torch._fused_sdp_choice's backend for these SDPA arguments, by name."""
    try:
        c = int(torch._fused_sdp_choice(*a, **kw))
    except Exception as e:  # noqa: BLE001  (a private API: report, do not fail the benchmark)
        return f"?({type(e).__name__})"
    return {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}.get(c, str(c))


def sdpa_choice(calls: list[tuple], dllm, verifier) -> str:
    """'dllm:<choice>(old form:<choice>) verifier:...': torch's SDPA backend for each model's
    recorded call, and for the form the models used before (boolean mask + enable_gqa, unfolded
    queries)."""
    choice = []
    for (q, k, v, m, gqa), model in zip(calls, ("dllm", "verifier")):
        cfg = (dllm if model == "dllm" else verifier).config
        G = cfg.num_attention_heads // cfg.num_key_value_heads
        Bq, Hkv, GS, D = q.shape
        old_q = q.reshape(Bq, Hkv * G, GS // G, D)
        old_mask = (m[:, :, : GS // G] == 0) if m.shape[2] > 1 else (m == 0)
        choice.append(f"{model}:{_chosen(q, k, v, m, 0.0, False, enable_gqa=gqa)}"
                      f"(old form:{_chosen(old_q, k, v, old_mask, 0.0, False, enable_gqa=G > 1)})")
    return " ".join(choice)


def profile_steps(step, st, dllm, verifier, device):
    """(profiler events, wall ms per step) of PROFILED_STEPS steady steps under torch.profiler
    (CPU activity, and CUDA on CUDA), the step phases as profiler ranges."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(PROFILED_STEPS):
            step(st, dllm, verifier, clock=_ProfilerClock())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    wall_ms = 1e3 * (time.perf_counter() - t0) / PROFILED_STEPS
    return prof.events(), wall_ms


def attention_time(events, wall_ms: float, device) -> dict:
    """From the profiled steps' events: the SDPA backend ops that ran (outermost ones), their
    costliest kernel (CUDA; else the backend op's name), their time per step and the time per step
    of all profiled kernels (device time on CUDA; CPU time and the wall time on CPU)."""
    from torch.autograd import DeviceType

    sdpa = [e for e in events if e.name.startswith("aten::_scaled_dot_product") or
            e.name.startswith("aten::_flash_attention") or e.name.startswith("aten::_efficient_attention")]
    # the outermost backend op of each call (its children are part of it)
    top = [e for e in sdpa if not (e.cpu_parent and e.cpu_parent.name in {s.name for s in sdpa})]
    backends_seen = sorted({e.name.replace("aten::", "") for e in top})
    kernels: dict[str, float] = {}
    if device.type == "cuda":
        def walk(e):
            for kern in getattr(e, "kernels", []):
                kernels[kern.name] = kernels.get(kern.name, 0.0) + kern.duration
            for c in e.cpu_children:
                walk(c)
        for e in top:
            walk(e)
        attn_us = sum(e.device_time_total for e in top)
        total_us = sum(e.time_range.elapsed_us() for e in events if e.device_type == DeviceType.CUDA)
    else:
        attn_us = sum(e.cpu_time_total for e in top)
        total_us = wall_ms * 1e3 * PROFILED_STEPS
    kernel = max(kernels, key=kernels.get) if kernels else (backends_seen[0] if backends_seen else "")
    return dict(attention_backend="+".join(backends_seen), attention_kernel=kernel[:120],
                attention_ms_per_step=attn_us / 1e3 / PROFILED_STEPS,
                profiled_kernel_ms_per_step=total_us / 1e3 / PROFILED_STEPS)


@torch.no_grad()
def attention_profile(dllm, verifier, prompts, R, M, new_tokens, vocab, *, mixture_weight: float,
                      seed: int, policy: str = "apd", knobs: dict | None = None) -> dict:
    """A few eager steady steps of `policy` (APD by default; apd_ext.decode.steps.make_step, the
    function generate runs) under torch.profiler: the SDPA backend op that ran, its costliest
    kernel, its time per step; and torch's own backend choice for one call of each model that the
    step runs (torch._fused_sdp_choice)."""
    step, st = steady_state(dllm, verifier, prompts, R, M, new_tokens, vocab, mixture_weight, seed, policy, knobs)
    choice = sdpa_choice(record_sdpa_calls(step, st, dllm, verifier), dllm, verifier)
    events, wall_ms = profile_steps(step, st, dllm, verifier, prompts.device)
    return dict(attention_time(events, wall_ms, prompts.device), attention_choice=choice)
