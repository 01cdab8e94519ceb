"""`generate`: decode continuations with APD or a baseline policy, one step object per policy
(apd_ext/decode/steps) run by one loop. Every tensor lives on the models' device with static shapes;
the host learns progress through one copy per step (decode/state.py Progress)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from apd_ext.decode import execute, graphs, inputs
from apd_ext.decode.config import DecodeConfig
from apd_ext.decode.state import Progress
from apd_ext.decode.stats import Stats
from apd_ext.decode.steps import STEPS, make_step
from apd_ext.parallel.group import TensorParallelError


@dataclass
class GenerateOutput:
    """sequences int64 [B, L]: prompt then generated tokens, `pad` after each row's end (mask
    tokens in authors_compat mode, as the released code leaves them); num_generated int64 [B].

    stats: steps, dllm_forwards, verifier_forwards, acceptance_counts [B, steps] (tokens committed
    per row and step), tokens_per_step (answer tokens, num_generated, per step of a row still
    committing: positions threshold/diffusion fill after EOS do not count), tokens_per_step_histogram,
    spans [B, steps, 2] (the dLLM's [left, right) per step, or None), time_s {dllm, verifier,
    sampling, other, total; graph_step / compiled_step when used}, tokens_per_s, peak_memory_bytes
    (CUDA; None on CPU), cuda_graph ("captured", "reused" or None)."""

    sequences: torch.Tensor
    num_generated: torch.Tensor
    stats: dict = field(default_factory=dict)


def generate(dllm, verifier, input_ids, config: DecodeConfig | None = None, *, attention_mask=None, seed=None,
             eos_token_id=None, vocab_size=None, stream=None, noise_fn=None, backend: str = "auto",
             cuda_graphs: bool | None = None, compile: bool = False, canvas_length: int | None = None,
             **knobs) -> GenerateOutput:
    """Decode continuations of `input_ids` with config.policy (default DecodeConfig(): APD).

    dllm, verifier: DllmRunner / VerifierRunner (or the HFDllm / HFVerifier adapters), in that
        order, on one device; verifier None for the dLLM-only policies (dllm_fixed, threshold,
        diffusion), e.g. with a LLaDA dLLM, for which no verifier numbering its tokens is public. input_ids: int [B, P] (`attention_mask` [B, P] marks real tokens, left
        or right padded), [P], or a list of token lists; rows may differ in length.
    config: a DecodeConfig or a policy spec ("apd:kv_window=none"); **knobs: its field names
        (max_new_tokens=, mixture_weight=, kv_window=, max_lookahead=, temperature=, top_k=,
        top_p=, policy=, k=, diffusion_steps=, diffusion_alg=, authors_compat=) override it.
        See apd_ext/decode/config.py for each knob.
    Per-request sampling: temperature=, top_k=, top_p= and mixture_weight= also take one value per
        batch row, as a list or tuple of B values (top_k's may hold None: 0, or 50 with
        authors_compat) or a [B] tensor (float32/float64; int64 for top_k; any device), so that
        one batch mixes requests (greedy beside sampled rows). Such values bypass the DecodeConfig
        (which stays scalar: its values are the default of every row not given per row) and are
        checked on the host first, errors naming the knob and the row; with authors_compat a row
        drafts at T*T (float64). Row b's tokens equal a one-row call with row b's values as
        scalars and row b's seed. The other knobs shape the step: one value per call (a list is a
        TypeError). The rows' knobs live in State tensors (decode/state.py), not in the step's key,
        so one captured CUDA graph / compiled step serves every mix (no recapture or recompile).
    seed: int (row b uses seed + b; up to 2^64 - 1), a list of B ints or an int64 tensor of B
        seeds; a row's tokens depend only on its prompt, the knobs and its seed. None: a random seed.
    eos_token_id: int or list ([] for none); default: the models' EOS (which must agree).
    vocab_size: the shared vocabulary when the models' differ (Dream 152064 vs Qwen2.5 151936).
    stream: callable(per-row lists of newly committed tokens), called once per step (not by the
        diffusion policy, which commits out of order; under tensor parallelism on rank 0 only).
    noise_fn: callable(step, valid [B]) -> uniforms [B, K, >= vocab] replacing the generator
        (golden replays; eager only).
    backend: the sampling ops' backend ("auto", "cpu", "cuda", "triton", "reference").
    cuda_graphs: capture the steady step as a CUDA graph and replay it (None: on for CUDA models
        with native runners and generated noise); kept for later calls with the same
        decode.graphs.graph_key. The tokens equal eager mode's for the same seed.
    compile: run the steady step through apd_ext.decode.compiled.compile_step (torch.compile).
    canvas_length: the positions decoded over, L (default: longest prompt + max_new_tokens; at most
        the models' maximum). A larger L gives the same tokens (each row still ends at its prompt +
        max_new_tokens) and lets calls whose prompts differ in length share one captured CUDA
        graph and one compiled step, which are specialised on L (lm-eval's requests: apd_ext/harness).
    Returns a GenerateOutput (its docstring lists the stats).

    Tensor parallelism: with runners loaded with tp= (apd_ext.parallel.TensorParallel) every rank
    calls generate with the same arguments; the sampling ops combine the ranks' vocabulary slices
    (apd_ext/parallel/vocab.py) and every rank returns the same output. APD_EXT_TP_CHECK=1 checks
    after each step that the ranks agree.
    """
    knobs, per_row = inputs.split_knobs(knobs)
    cfg = _config(config).replace(**knobs) if knobs else _config(config)
    if compile and cuda_graphs:
        raise ValueError("compile=True and cuda_graphs=True: choose one way to run the steady step")
    inputs.check_runners(dllm, verifier, cfg.policy)
    vocab = inputs.shared_vocab(dllm, verifier, vocab_size)
    parallel = inputs.tensor_parallel(dllm, verifier, vocab)
    rows = inputs.prompt_rows(input_ids, attention_mask)
    per_row = inputs.sampling_rows(per_row, len(rows))
    batch = inputs.make_batch(dllm, verifier, rows, cfg, seed, canvas_length)
    kind = STEPS[cfg.policy]  # the models' EOS must agree when both models decide tokens
    row_knobs = inputs.row_knobs(kind.step_config(cfg), vocab, batch.size, per_row)  # host tensors
    eos = inputs.eos_ids(dllm, verifier, eos_token_id, both_models=bool(kind.dllm_forwards and kind.verifier_forwards))
    step = make_step(cfg, length=batch.length, vocab=vocab, eos=eos, backend=backend, device=dllm.device,
                     parallel=parallel, filters=row_knobs.filters(vocab), block=getattr(dllm, "block_size", None))
    graphed = graphs.use_graphs(None if compile else cuda_graphs, dllm.device, noise_fn, step, dllm, verifier)
    stats = Stats(dllm.device)  # the clock starts here: setting the runners up is part of the call
    for runner in graphs.used_runners(dllm, verifier, step):
        runner.setup(batch.size, batch.length)  # + a scratch slot that is no position
    mode = execute.Graphed if graphed else execute.Compiled if compile else execute.Eager
    run = mode(step, dllm, verifier, batch.size, dllm.device, stats.clock, noise_fn)
    st, step = run.state, run.step  # a cached graph's own step object and state
    st.fill(batch.canvas, batch.prompt_len, cfg.max_new_tokens, batch.seeds, row_knobs)
    step.prefill(st, verifier, int(batch.prompt_len.max()), stats.clock)
    progress = Progress(dllm.device)
    check = agreement_check(parallel)
    if parallel is not None and parallel[0].rank != 0:
        stream = None  # under tensor parallelism rank 0 streams
    while not progress.finished():
        n, proposal, span = run(stats.steps)
        stats.record(n, span)
        if check is not None:
            check(st)
        if stream is not None and proposal is not None:
            counts = n.tolist()
            stream([proposal[b, : counts[b]].tolist() for b in range(batch.size)])
        progress.post(st.done)
    if progress.lagged:
        stats.drop_idle_tail()
    return _output(st, step, dllm, stats, run.cuda_graph, eos_pad(dllm, step))


def agreement_check(parallel):
    """Under tensor parallelism with APD_EXT_TP_CHECK=1 (debug): a callable(state) that checks after
    every step that all ranks hold the same canvas and positions (one all-gather of a checksum),
    raising TensorParallelError on every rank when they differ. None otherwise. The ranks agree by
    construction (same seeds, same combined tokens); this catches a broken backend or model."""
    if parallel is None or os.environ.get("APD_EXT_TP_CHECK", "0") in ("", "0"):
        return None
    tp = parallel[0]

    def check(st) -> None:
        weights = torch.arange(1, st.canvas.shape[1] + 1, device=st.canvas.device)
        mine = torch.stack([(st.canvas * weights).sum(1), st.curr]).view(-1)
        every = tp.all_gather(mine)
        if not bool((every == every[:1]).all()):
            raise TensorParallelError(f"ranks disagree on the decoded tokens (canvas checksums and positions per "
                                      f"rank: {every.tolist()})")

    return check


def _config(config) -> DecodeConfig:
    if config is None:
        return DecodeConfig()
    if isinstance(config, str):
        return DecodeConfig.from_spec(config)
    if not isinstance(config, DecodeConfig):
        raise TypeError(f"config must be a DecodeConfig, a policy spec string or None, got {type(config).__name__}")
    return config


def eos_pad(dllm, step) -> int:
    """The token written after a row's end: the dLLM's pad token, else the first EOS, else mask."""
    pad = dllm.config.pad_token_id
    return pad if pad is not None else step.eos_list[0] if step.eos_list else dllm.mask_token_id


def _output(st, step, dllm, stats: Stats, cuda_graph, pad: int) -> GenerateOutput:
    L = step.L
    seq = st.canvas[:, :L].clone()
    if step.pads_tail:  # paper semantics: nothing after a row's end
        seq = torch.where(torch.arange(L, device=seq.device).view(1, -1) >= st.curr.view(-1, 1), pad, seq)
    num_generated = (st.curr - st.start).cpu()
    return GenerateOutput(sequences=seq.cpu(), num_generated=num_generated,
                          stats=stats.build(step, num_generated, cuda_graph))
