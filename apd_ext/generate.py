"""`apd_ext.generate`: Adaptive Parallel Decoding of a diffusion LLM with an autoregressive verifier.

One step per batch (APD_SPEC "One decoding step"), every tensor on the models' device and of a
static shape: the window has `max_lookahead` positions for every row (rows near their end or
finished get `valid` < K and scratch positions), the dLLM input has a fixed length, positions,
accepted counts and the RNG offset are tensors. The step is a function of tensors
(apd_ext.steps.Step), the one function that runs eagerly, is captured as a CUDA graph and is
traced by the capturability test; the host learns progress through one copy per step.

Captured graphs are kept across calls (`GRAPH_CACHE`, an LRU of 4 entries keyed by `graph_key`:
shapes, knobs, dtypes, backend, device and the runner objects), each with its own persistent state
tensors that the next call with the same key refills in place; an entry is dropped when a runner
it was captured on is gone or any tensor the step reads from the runners has moved (a runner set up
for another shape in between, say). `apd_ext.clear_graph_cache()` empties it.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from apd_ext import ops, reference
from apd_ext.steps import DIFFUSION_ALGS, NO_CLOCK, Clock, Progress, State, Step, diffusion_generate
from apd_ext.models.runners import DllmRunner, VerifierRunner

POLICIES = ("apd", "dllm_fixed", "ar", "diffusion")


@dataclass
class GenerateOutput:
    """sequences int64 [B, L]: prompt then generated tokens, `pad` after each row's end (mask
    tokens in authors_compat mode, as the released code leaves them); num_generated int64 [B];
    stats: forward counts, tokens per step, timings (see `generate`)."""

    sequences: torch.Tensor
    num_generated: torch.Tensor
    stats: dict = field(default_factory=dict)


def _check_models(dllm: DllmRunner, verifier: VerifierRunner, vocab_size, eos_token_id, policy):
    if dllm.device != verifier.device:
        raise ValueError(f"dllm is on {dllm.device}, verifier on {verifier.device}: put both on one device")
    if vocab_size is None:
        if dllm.vocab_size != verifier.vocab_size:
            raise ValueError(
                f"dLLM vocabulary ({dllm.vocab_size}) and verifier vocabulary ({verifier.vocab_size}) differ; "
                f"pass vocab_size= the size of the tokenizer they share (e.g. 151936 for Dream + Qwen2.5)"
            )
        vocab_size = dllm.vocab_size
    if not 0 < vocab_size <= min(dllm.vocab_size, verifier.vocab_size):
        raise ValueError(f"vocab_size={vocab_size} exceeds a model's vocabulary")
    if eos_token_id is None:
        d_eos, v_eos = dllm.config.eos_ids, verifier.config.eos_ids
        if d_eos and v_eos and set(d_eos) != set(v_eos) and policy == "apd":
            raise ValueError(f"EOS tokens disagree: dLLM {d_eos}, verifier {v_eos}; pass eos_token_id=")
        eos = d_eos or v_eos
    else:
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return vocab_size, eos


def _prompts(input_ids, attention_mask, device) -> tuple[list[list[int]], int]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, P], got {tuple(input_ids.shape)}")
        rows = input_ids.tolist()
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError("attention_mask must have input_ids' shape")
            rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, attention_mask.tolist())]
    else:
        rows = [list(r) for r in input_ids]
    if not rows:
        raise ValueError("empty batch: input_ids has no rows")
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    return rows, max(len(r) for r in rows)


def _native(dllm, verifier, policy) -> bool:
    """Whether the runners the policy uses are the native (graph-capturable) ones."""
    ok_d = policy == "ar" or isinstance(dllm, DllmRunner)
    ok_v = policy == "dllm_fixed" or isinstance(verifier, VerifierRunner)
    return ok_d and ok_v


def _graphs_possible(device: torch.device) -> bool:
    return device.type == "cuda"


def _use_graphs(cuda_graphs: bool | None, device: torch.device, noise_fn, native: bool) -> bool:
    if cuda_graphs is None:
        return _graphs_possible(device) and noise_fn is None and native
    return bool(cuda_graphs)


# --- CUDA-graph cache -----------------------------------------------------------------------------

def graph_key(dllm, verifier, *, batch: int, length: int, window: int, kv_window: int | None, policy: str,
              k: int, vocab: int, temperature: float, top_k: int, top_p: float, mixture_weight: float,
              authors_compat: bool, eos: list[int], backend: str, device) -> tuple:
    """What a captured step depends on besides tensor contents: shapes (batch, canvas length L =
    P_max + max_new_tokens, window M, kv_window, vocabulary), the policy and its knobs (as the step
    uses them), the logits dtypes, the EOS list, the resolved backend, the device and the runner
    objects (by identity; GraphCache also checks they are alive). Prompt lengths, prompts and seeds
    are not in it: they live in the state tensors, refilled in place."""
    used_k = int(k) if policy == "dllm_fixed" else None
    used_w = float(mixture_weight) if policy == "apd" else None
    return (
        policy, int(batch), int(length), int(window), kv_window if policy != "ar" else None, int(vocab), used_k,
        float(temperature), int(top_k), float(top_p), used_w, bool(authors_compat), tuple(eos), str(backend),
        str(torch.device(device)), getattr(dllm, "logits_dtype", None), getattr(verifier, "logits_dtype", None),
        id(dllm), id(verifier),
    )


def runner_fingerprint(dllm, verifier, policy: str) -> tuple[int, ...]:
    """Addresses of every tensor the step reads from the runners it uses (weights, K/V caches,
    RoPE tables, slot indices): a captured graph is valid while they are unchanged."""
    used = ([dllm] if policy != "ar" else []) + ([verifier] if policy != "dllm_fixed" else [])
    return tuple(t.data_ptr() for r in used for t in r.static_tensors())


@dataclass(eq=False)
class CachedStep:
    """One GraphCache entry: the step function, its persistent state and, once captured, the graph
    (`graph.replay()`) and its output tensors (`graph.outputs`: n, proposal, window), overwritten by
    every replay."""

    step: Step
    state: State
    dllm_ref: weakref.ref
    verifier_ref: weakref.ref
    fingerprint: tuple[int, ...]
    graph: object | None = None  # _CudaGraphStep: replay(), outputs
    captures: int = 0
    uses: int = 0


class GraphCache:
    """An LRU of CachedStep entries (default 4: each holds a graph's private memory pool, about one
    step's activations and logits, and its state)."""

    def __init__(self, size: int = 4):
        self.size = size
        self.entries: OrderedDict[tuple, CachedStep] = OrderedDict()

    def get(self, key: tuple, dllm, verifier, fingerprint: tuple[int, ...]) -> CachedStep | None:
        """The entry for key when it is still valid (same live runner objects, same tensor
        addresses), else None (an invalid entry is dropped)."""
        e = self.entries.get(key)
        if e is None:
            return None
        if e.dllm_ref() is not dllm or e.verifier_ref() is not verifier or e.fingerprint != fingerprint:
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return e

    def put(self, key: tuple, entry: CachedStep) -> None:
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def discard(self, key: tuple) -> None:
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)


GRAPH_CACHE = GraphCache(4)


def clear_graph_cache() -> None:
    """Drop every captured step (and the memory its graph holds)."""
    GRAPH_CACHE.clear()


class _CudaGraphStep:
    """A step captured as a CUDA graph: replay() runs it; outputs are the captured output tensors."""

    def __init__(self, fn, device: torch.device):
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn()

    def replay(self) -> None:
        self.graph.replay()


def _capture(fn, device: torch.device):
    """Capture fn (no arguments, returns a tuple of tensors or None) for replays: an object with
    replay() and outputs. Recording runs nothing: the caller replays once for the current step.
    (A seam for python_tests/test_capture.py, which checks the cache logic on CPU.)"""
    return _CudaGraphStep(fn, device)


def generate(
    dllm: DllmRunner,
    verifier: VerifierRunner,
    input_ids,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 256,
    mixture_weight: float = 0.7,
    kv_window: int | None = 16,
    max_lookahead: int | None = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed=None,
    eos_token_id=None,
    policy: str = "apd",
    k: int = 1,
    diffusion_steps: int | None = None,
    diffusion_alg: str = "confidence",
    stream=None,
    authors_compat: bool = False,
    vocab_size: int | None = None,
    noise_fn=None,
    backend: str = "auto",
    cuda_graphs: bool | None = None,
) -> GenerateOutput:
    """Decode continuations of `input_ids` with APD (or a baseline policy).

    Args:
        dllm, verifier: DllmRunner / VerifierRunner on the same device (apd_ext.models.runners).
        input_ids: int64 [B, P] (with `attention_mask` [B, P] marking real tokens, left or right
            padded) or a list of token lists. Rows may differ in length.
        max_new_tokens: per row; the canvas holds P_max + max_new_tokens positions.
        mixture_weight: w in [0, 1]; kv_window: R recomputed positions before the window (None: no
            dLLM cache, every step recomputes the whole prefix); max_lookahead: M masked positions the
            dLLM sees (None: everything up to the row's end).
        temperature, top_k, top_p: sampling knobs of the ops. top_k=None means 0 (no filter), or 50 in
            authors_compat mode, as the released code inherits; pass 0 to disable it there.
        seed: int (row b uses seed + b) or int64 tensor of B seeds; a row's text depends only on its
            prompt, the knobs and its seed.
        eos_token_id: int or list; default: the models' EOS (which must agree).
        policy: "apd"; "dllm_fixed" (k tokens per step, left to right, from the dLLM alone; k = 1 is
            the quality reference); "ar" (the verifier alone); "diffusion" (the dLLM's own schedule:
            `diffusion_steps` full forwards (default max_new_tokens), each unmasking the answer
            positions chosen by `diffusion_alg`: "confidence", "entropy" or "random").
        stream: callable(list of per-row lists of newly committed tokens), called once per step.
        authors_compat: reproduce the authors' released code (APD_SPEC, last section): drafts at T^2,
            top_k 50 unless given, greedy target; EOS keeps the rest of its block; masks left in place.
        vocab_size: the shared vocabulary when the models' differ (Dream 152064 vs Qwen2.5 151936).
        noise_fn: optional callable(step, valid [B]) -> uniforms [B, K, V] replacing the generator
            (golden replays).
        cuda_graphs: capture one step as a CUDA graph and replay it (from the third step on; the
            first two run eagerly). None: on for CUDA models unless noise_fn is given or a runner is
            a slow adapter (HFDllm/HFVerifier). The tokens are the same as eager mode's for the same
            seed. Not available on CPU. The captured step is kept for later calls with the same
            graph_key (they replay it from their second step on, no capture); see the module
            docstring and clear_graph_cache().

    Returns: GenerateOutput(sequences [B, L], num_generated [B], stats) with stats keys
        steps, dllm_forwards, verifier_forwards, acceptance_counts [B, steps], tokens_per_step (mean
        over rows still decoding), tokens_per_step_histogram, windows [B, steps, 2] (the dLLM's
        [left, right) per step), time_s {dllm, verifier, sampling, other, total; graph_step when
        steps replay a CUDA graph}, tokens_per_s, peak_memory_bytes (CUDA; None on CPU),
        cuda_graph ("captured", "reused" or None).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not 0.0 <= mixture_weight <= 1.0:
        raise ValueError(f"mixture_weight must be in [0, 1], got {mixture_weight}")
    if kv_window is not None and kv_window < 1:
        raise ValueError(f"kv_window must be >= 1 or None, got {kv_window}")
    if max_lookahead is not None and max_lookahead < 1:
        raise ValueError(f"max_lookahead must be >= 1 or None, got {max_lookahead}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if policy == "dllm_fixed" and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if diffusion_alg not in DIFFUSION_ALGS:
        raise ValueError(f"diffusion_alg must be one of {DIFFUSION_ALGS}, got {diffusion_alg!r}")
    if diffusion_steps is not None and diffusion_steps < 1:
        raise ValueError(f"diffusion_steps must be >= 1, got {diffusion_steps}")
    if cuda_graphs and noise_fn is not None:
        raise ValueError("cuda_graphs=True cannot replay explicit noise (noise_fn): use eager mode")
    if top_k is None:  # not given: the released code inherits top_k = 50 from legacy defaults
        top_k = 50 if authors_compat else 0
    ops._check_filter(temperature, top_k, top_p)
    vocab, eos = _check_models(dllm, verifier, vocab_size, eos_token_id, policy)
    device = dllm.device
    rows, P = _prompts(input_ids, attention_mask, device)
    B = len(rows)
    L = P + max_new_tokens
    if L > min(dllm.config.max_position_embeddings, verifier.config.max_position_embeddings):
        raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds the models' maximum length")
    mask_id = dllm.mask_token_id
    if any(mask_id in r for r in rows):
        raise ValueError(f"a prompt contains the mask token {mask_id}")
    if any(t < 0 or t >= min(dllm.vocab_size, verifier.vocab_size) for r in rows for t in r):
        raise ValueError("a prompt token is outside the models' vocabulary")
    M = max_new_tokens if max_lookahead is None else min(max_lookahead, max_new_tokens)

    canvas = torch.full((B, L + 1), mask_id, dtype=torch.int64)
    for b, r in enumerate(rows):
        canvas[b, : len(r)] = torch.tensor(r)
    prompt_len = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    seeds = reference.row_seeds(seed.cpu() if isinstance(seed, torch.Tensor) else seed, B, "cpu")
    native = _native(dllm, verifier, policy)
    if cuda_graphs and not _graphs_possible(device):
        raise ValueError(f"cuda_graphs=True needs models on a CUDA device, not {device.type}")
    if cuda_graphs and policy != "diffusion" and not native:
        raise ValueError("cuda_graphs=True needs the native runners (DllmRunner/VerifierRunner), not slow adapters")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = Clock(device)
    pad = dllm.config.pad_token_id if dllm.config.pad_token_id is not None else (eos[0] if eos else mask_id)
    knobs = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    t0 = time.perf_counter()

    if policy == "diffusion":
        dllm.setup(B, L)
        eos_t = torch.tensor(eos or [-1], dtype=torch.int64, device=device)
        canvas, n_gen, forwards = diffusion_generate(
            dllm, canvas.to(device), prompt_len.to(device), (prompt_len + max_new_tokens).to(device), L,
            max_new_tokens, diffusion_steps or max_new_tokens, diffusion_alg, vocab, knobs, seeds.to(device),
            eos_t, clock, backend, pad)
        total = time.perf_counter() - t0
        times = clock.result()
        times["total"] = total
        times["other"] = max(0.0, total - sum(v for k_, v in times.items() if k_ not in ("total", "other")))
        stats = dict(steps=forwards, dllm_forwards=forwards, verifier_forwards=0,
                     tokens_per_step=float(n_gen.sum()) / max(1, forwards * B), time_s=times,
                     tokens_per_s=float(n_gen.sum()) / total if total > 0 else 0.0)
        return GenerateOutput(sequences=canvas[:, :L].cpu(), num_generated=n_gen.cpu(), stats=stats)

    verifier.setup(B, L) if policy != "dllm_fixed" else None
    dllm.setup(B, L) if policy != "ar" else None
    step_kw = dict(window=M, length=L, kv_window=kv_window, vocab=vocab, k=k, mixture_weight=mixture_weight,
                   temperature=temperature, top_k=top_k, top_p=top_p, authors_compat=authors_compat, eos=eos,
                   backend=backend, device=device)
    graphs = _use_graphs(cuda_graphs, device, noise_fn, native)
    entry, key, reused = None, None, False
    if graphs:
        step_fn = Step(policy, **step_kw)
        key = graph_key(dllm, verifier, batch=B, **{**step_kw, "backend": step_fn.backend}, policy=policy)
        fingerprint = runner_fingerprint(dllm, verifier, policy)
        entry = GRAPH_CACHE.get(key, dllm, verifier, fingerprint)
        reused = entry is not None and entry.graph is not None
        if entry is None:
            st = _new_state(step_fn, verifier, B, L, device)
            entry = CachedStep(step_fn, st, weakref.ref(dllm), weakref.ref(verifier), fingerprint)
            GRAPH_CACHE.put(key, entry)
        step_fn, st = entry.step, entry.state
        entry.uses += 1
    else:
        step_fn = Step(policy, **step_kw)
        st = _new_state(step_fn, verifier, B, L, device)
    st.fill(canvas, prompt_len, max_new_tokens, seeds)
    counts = {"dllm_forwards": 0, "verifier_forwards": 0, "steps": 0}
    if policy != "dllm_fixed":
        with clock.phase("verifier"):
            verifier.prefill(st.canvas, st.curr, P, out=st.verifier_logits[:1])  # row 0: predicts curr
        counts["verifier_forwards"] += 1
    accepted: list[torch.Tensor] = []
    windows: list[torch.Tensor] = []

    def eager(step: int, clk):
        noise = (lambda valid: noise_fn(step, valid)) if noise_fn is not None else None
        return step_fn(st, dllm, verifier, first=step == 0, noise=noise, clock=clk)

    step = 0
    progress = Progress(device)
    while not progress.finished():
        # Step 0 (the whole prompt) runs eagerly. Without a captured step, step 1 (the first of the
        # steady shape: it also warms up kernels and libraries) runs eagerly too and step 2 is
        # captured; from then on (from step 1 when the cache had it) the captured step is replayed.
        if graphs and step >= 1 and (entry.graph is not None or step >= 2):
            if entry.graph is None:
                try:
                    entry.graph = _capture(lambda: step_fn(st, dllm, verifier, first=False, clock=NO_CLOCK), device)
                except BaseException:
                    GRAPH_CACHE.discard(key)
                    raise
                entry.captures += 1
            with clock.phase("graph_step"):
                entry.graph.replay()
            n, proposal, window = (t.clone() if t is not None else None for t in entry.graph.outputs)
        elif graphs and step == 1 and device.type == "cuda":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                n, proposal, window = eager(step, clock)
            torch.cuda.current_stream(device).wait_stream(side)
        else:
            n, proposal, window = eager(step, clock)
        counts["dllm_forwards"] += policy != "ar"
        counts["verifier_forwards"] += policy in ("apd", "ar")
        accepted.append(n)
        if window is not None:
            windows.append(window)
        if stream is not None:
            nh = n.cpu()
            stream([proposal[b, : int(nh[b])].tolist() for b in range(B)])
        progress.post(st.done)
        step += 1
    # On CUDA the host reads progress one step late: drop the trailing steps where every row had
    # already finished (they accepted nothing and changed nothing).
    while accepted and step > 1 and not bool(accepted[-1].any()) and progress.lagged:
        accepted.pop()
        step -= 1
        counts["dllm_forwards"] -= policy != "ar"
        counts["verifier_forwards"] -= policy in ("apd", "ar")
        del windows[step:]
    counts["steps"] = step
    out_len = st.curr - prompt_len.to(device)
    seq = st.canvas[:, :L].clone()
    if not authors_compat:  # paper semantics: nothing after a row's end
        seq = torch.where(torch.arange(L, device=device).view(1, -1) >= st.curr.view(-1, 1), pad, seq)
    total = time.perf_counter() - t0
    acc = torch.stack(accepted, 1).cpu() if accepted else torch.zeros(B, 0, dtype=torch.int64)
    times = clock.result()
    times["total"] = total
    times["other"] = max(0.0, total - sum(v for k_, v in times.items() if k_ not in ("total", "other")))
    gen = int(out_len.sum())
    stats = dict(
        counts,
        acceptance_counts=acc,
        tokens_per_step=float(acc[acc > 0].float().mean()) if (acc > 0).any() else 0.0,
        tokens_per_step_histogram=torch.bincount(acc[acc > 0].flatten()).tolist() if (acc > 0).any() else [],
        windows=torch.stack(windows, 1).cpu() if windows else None,
        time_s=times,
        tokens_per_s=gen / total if total > 0 else 0.0,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        cuda_graph=("reused" if reused else "captured" if entry is not None and entry.graph is not None else None),
    )
    return GenerateOutput(sequences=seq.cpu(), num_generated=out_len.cpu(), stats=stats)


def _new_state(step_fn: Step, verifier, B: int, L: int, device) -> State:
    rows = step_fn.verifier_rows
    return State.allocate(B, L, rows, verifier.vocab_size if rows else 0,
                          verifier.logits_dtype if rows else torch.float32, device)


