"""The step functions of `generate`: one APD / dllm_fixed / ar step as a function of device
tensors (static shapes, no host synchronisation inside, the state updated in place so that a CUDA
graph of the step replays correctly), the diffusion baseline's own loop, and the per-phase clock."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from apd_ext import ops

@dataclass
class State:
    """Decoding state on the models' device. Steps update every tensor in place (never rebind),
    so that a captured CUDA graph reads and writes the same memory at each replay."""

    canvas: torch.Tensor  # int64 [B, L + 1]; column L is scratch
    curr: torch.Tensor  # int64 [B] first uncommitted position
    row_end: torch.Tensor  # int64 [B] prompt_len + max_new_tokens (<= L)
    n_prev: torch.Tensor  # int64 [B] tokens accepted by the previous step
    done: torch.Tensor  # bool [B]
    prev_row: torch.Tensor | None  # float32 [B, V_verifier] verifier logits predicting position curr
    offset: torch.Tensor  # int64 [1] RNG offset (= step index)
    seeds: torch.Tensor  # int64 [B]


class NoClock:
    """The clock of a step captured into a CUDA graph: phases inside a graph are not timed."""

    def phase(self, name):
        return _NoPhase()


class _NoPhase:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class Progress:
    """What the host knows of the rows' progress: one asynchronous device-to-host copy of the done
    flags per step. On CUDA the loop checks the copy of the step before last, so the next step is
    queued while the current one runs (a finished batch costs at most one idle step, which the loop
    then drops from its counts); on CPU the check is immediate."""

    def __init__(self, device: torch.device):
        self.lagged = device.type == "cuda"
        self.pending: list = []
        self.done = False

    def post(self, done: torch.Tensor) -> None:
        if not self.lagged:
            self.done = bool(done.all())
            return
        host = torch.empty(done.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(done, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((host, event))

    def finished(self) -> bool:
        if self.lagged and len(self.pending) >= 2:
            host, event = self.pending.pop(0)
            event.synchronize()
            self.done = bool(host.all())
        return self.done


class Clock:
    """Per-phase wall time; on CUDA through events read once at the end (no sync per step)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}
        self.events: list[tuple[str, object, object]] = []

    def phase(self, name):
        clock = self

        class _P:
            def __enter__(self):
                if clock.cuda:
                    self.a = torch.cuda.Event(enable_timing=True)
                    self.a.record()
                else:
                    self.t = time.perf_counter()

            def __exit__(self, *exc):
                if clock.cuda:
                    b = torch.cuda.Event(enable_timing=True)
                    b.record()
                    clock.events.append((name, self.a, b))
                else:
                    clock.totals[name] = clock.totals.get(name, 0.0) + time.perf_counter() - self.t

        return _P()

    def result(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            for name, a, b in self.events:
                self.totals[name] = self.totals.get(name, 0.0) + a.elapsed_time(b) / 1e3
        return dict(self.totals)


def window_step(st, dllm, verifier, valid, step, M, L, kv_window, vocab, policy, k, w, knobs, draft_t,
                 authors_compat, noise_fn, clock, backend):
    """One APD (or dllm_fixed) step; returns (n [B], draft [B, M], window [B, 2] = the dLLM's
    [left, right)). Step 0 (or kv_window None) reads the whole canvas; later steps have one static
    input length, kv_window + 2 M - 1."""
    right = st.curr + valid
    if kv_window is None or step == 0:
        left = torch.zeros_like(st.curr)
        size = L
    else:
        left = (st.curr - kv_window - st.n_prev + 1).clamp(min=0)
        size = kv_window + 2 * M - 1
    window = torch.stack([left, right], dim=1)
    with clock.phase("dllm"):
        D = dllm.window_logits(st.canvas, left, right, st.curr, M, size)
    noise = noise_fn(step, valid) if noise_fn is not None else None
    rng = dict(seed=st.seeds, offset=st.offset, noise=noise)
    with clock.phase("sampling"):
        draft, _ = ops.sample_draft(D, temperature=draft_t, top_k=knobs["top_k"], top_p=knobs["top_p"],
                                    vocab_size=vocab, backend=backend, **rng)
    if policy == "dllm_fixed":
        return torch.minimum(valid, torch.full_like(valid, k)), draft, window
    with clock.phase("verifier"):
        A_rest = verifier.step(draft, st.curr, valid)  # row r predicts position curr + r + 1
    A = torch.cat([st.prev_row.unsqueeze(1), A_rest[:, :-1]], dim=1)
    with clock.phase("sampling"):
        n, *_ = ops.mixture_accept(D, A, draft, mixture_weight=w, vocab_size=vocab, valid_lengths=valid,
                                   greedy_target=authors_compat, backend=backend, **knobs, **rng)
    idx = (n - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, A_rest.shape[-1])
    st.prev_row.copy_(torch.where((n > 0).view(-1, 1), torch.gather(A_rest, 1, idx).squeeze(1), st.prev_row))
    return n, draft, window


def ar_step(st, verifier, valid, vocab, knobs, clock, backend):
    """One token from the verifier alone."""
    with clock.phase("sampling"):
        tok, _ = ops.sample_draft(st.prev_row[:, None, :vocab].contiguous(), vocab_size=vocab, seed=st.seeds,
                                  offset=st.offset, backend=backend, **knobs)
    n = (valid > 0).to(torch.int64)
    with clock.phase("verifier"):
        logits = verifier.step(tok, st.curr, n)
    st.prev_row.copy_(torch.where((n > 0).view(-1, 1), logits[:, 0], st.prev_row))
    return n, tok


def commit(st, n, proposal, eos, L, authors_compat):
    """Commits proposal[b, :n[b]] at curr[b] and advances the state in place; returns the counts
    after EOS: a row ends at its first EOS inside the accepted block (in authors_compat mode the
    block is kept whole, as the released code does)."""
    pos = torch.arange(proposal.shape[1], device=proposal.device).view(1, -1)
    is_eos = torch.isin(proposal, eos) & (pos < n.view(-1, 1))
    hit = is_eos.any(dim=1)
    if not authors_compat:
        n = torch.where(hit, is_eos.int().argmax(dim=1) + 1, n)
    write = torch.where(pos < n.view(-1, 1), st.curr.view(-1, 1) + pos, L)
    st.canvas.scatter_(1, write, proposal)
    st.curr.add_(n)
    st.n_prev.copy_(n)
    st.done.logical_or_(hit | (st.curr >= st.row_end))
    st.offset.add_(1)
    return n


DIFFUSION_ALGS = ("confidence", "entropy", "random")


def diffusion_generate(dllm, canvas, prompt_len, row_end, L, max_new_tokens, steps, alg, vocab, knobs, seeds,
                       eos, clock, backend, pad):
    """The dLLM's own schedule (the "diffusion" policy): `steps` full forwards; each unmasks
    ceil(masked / steps left) answer positions anywhere, those the dLLM is surest of ("confidence":
    probability of the sampled token; "entropy": lowest entropy; "random"). Returns (canvas,
    num_generated, forwards); the answer ends at its first EOS (`pad` after it)."""
    device = canvas.device
    B, N = canvas.shape[0], max_new_tokens
    mask_id = dllm.mask_token_id
    idx = prompt_len.view(-1, 1) + torch.arange(N, device=device).view(1, -1)  # answer positions
    in_row = idx < row_end.view(-1, 1)
    idx = torch.where(in_row, idx, L)  # L: the scratch column
    gen = torch.Generator(device=device).manual_seed(int(seeds[0]))
    forwards = 0
    for s in range(steps):
        masked = (torch.gather(canvas, 1, idx) == mask_id) & in_row
        if not bool(masked.any()):
            break
        with clock.phase("dllm"):
            D = dllm.window_logits(canvas, torch.zeros_like(prompt_len), row_end, prompt_len, N, L)
        forwards += 1
        offset = torch.full((1,), s, dtype=torch.int64, device=device)
        with clock.phase("sampling"):
            tokens, logp = ops.sample_draft(D, vocab_size=vocab, seed=seeds, offset=offset, backend=backend,
                                            temperature=knobs["temperature"], top_k=knobs["top_k"],
                                            top_p=knobs["top_p"])
            if alg == "confidence":
                score = logp
            elif alg == "entropy":
                lp = torch.log_softmax(D[..., :vocab], dim=-1)
                score = (lp.exp() * lp).sum(-1)  # negative entropy: higher is surer
            else:
                score = torch.rand(B, N, generator=gen, device=device)
            score = torch.where(masked, score, float("-inf"))
            left = steps - s
            count = torch.ceil(masked.sum(1).float() / left).to(torch.int64)  # [B]
            order = torch.argsort(score, dim=1, descending=True)
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(N, device=device).expand(B, N))
            pick = masked & (rank < count.view(-1, 1))
        canvas.scatter_(1, torch.where(pick, idx, L), tokens)
    answer = torch.gather(canvas, 1, idx)
    eos_rows = torch.isin(answer, eos) & in_row
    first = torch.where(eos_rows.any(1), eos_rows.int().argmax(1) + 1, in_row.sum(1))
    keep = torch.arange(N, device=device).view(1, -1) < first.view(-1, 1)
    canvas.scatter_(1, torch.where(keep, L, idx), torch.full_like(answer, pad))
    return canvas, first, forwards

