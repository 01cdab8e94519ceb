"""The "threshold" policy (apd_ext/decode/steps/threshold.py): Fast-dLLM's confidence-threshold
parallel decoding through generate's loop.

* the step against a plain torch statement of the rule on random logits (same commits, tokens and
  advance of curr; thresholds, ties, greedy and sampled with the same uniforms, blocks);
* the approximate KV cache only ever reuses positions whose tokens have not changed since it saw
  them (a spy on the dLLM's spans; a deliberately wrong span fails the same check);
* batch rows equal single runs (ragged prompts) on the golden and the tiny pair;
* threshold 1.0 commits one token per step, a threshold near 0 the whole window (or block);
* the steady step traces into one graph (CUDA-graph capturable) and a captured step is replayed;
* eval-tiny and the sweep run it. Spec parsing and bad values: test_decode_config.py and below.
"""

import json

import pytest
import torch

import golden
from apd_ext import backends, generate
from apd_ext.__main__ import main as cli
from apd_ext.decode import DecodeConfig, graphs
from apd_ext.decode.state import State
from apd_ext.decode.steps import STEPS, ThresholdStep, make_step
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.tiny import evaluate as ev
from apd_ext.tiny import sweep, task

V, MASK, EOS = 384, 383, 382  # the golden pair


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def models():
    return (DllmRunner.from_pretrained(golden.path("dream_tiny")),
            VerifierRunner.from_pretrained(golden.path("qwen2_tiny")))


@pytest.fixture(scope="module")
def pair():
    return ev.load_pair()


# --- the rule, in plain torch, against the step ------------------------------------------------------

class FixedLogits:
    """A dLLM stand-in whose window_logits returns given logits D [B, K, V] (a fresh copy)."""

    def __init__(self, D, mask_token_id):
        self.D, self.mask_token_id = D, mask_token_id

    def window_logits(self, canvas, left, right, curr, window, size):
        assert window == self.D.shape[1]
        return self.D.clone()


def plain_rule(D, u, T, threshold, canvas, curr, row_end, start, K, mask_id, block_length=None):
    """Fast-dLLM's rule as this library states it, per row: tokens, the positions committed, the
    new curr. Tokens: argmax of D / T + Gumbel(u) (D at T = 0) without the mask token;
    confidence: softmax(D) at the token; candidates: masked positions of [curr, curr + K) before
    the row's end (and the block's); commit those with confidence >= threshold and the most
    confident (leftmost of equals)."""
    D = D.float().clone()
    D[..., mask_id] = float("-inf")
    score = D if T == 0 else D * torch.tensor(1.0 / T, dtype=torch.float32) - torch.log(-torch.log(u)).float()
    tokens = score.argmax(-1)
    conf = torch.softmax(D, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    canvas = canvas.clone()
    commits, new_curr = [], []
    for b in range(D.shape[0]):
        c = int(curr[b])
        end = min(c + K, int(row_end[b]))
        if block_length is not None:
            end = min(end, int(start[b]) + ((c - int(start[b])) // block_length + 1) * block_length)
        cand = [i for i in range(end - c) if int(canvas[b, c + i]) == mask_id]
        chosen = {i for i in cand if float(conf[b, i]) >= torch.tensor(threshold, dtype=torch.float32).item()}
        if cand:
            chosen.add(max(cand, key=lambda i: (float(conf[b, i]), -i)))
        for i in chosen:
            canvas[b, c + i] = tokens[b, i]
        commits.append(sorted(chosen))
        p = c
        while p < int(row_end[b]) and int(canvas[b, p]) != mask_id:
            p += 1
            if int(canvas[b, p - 1]) == EOS:
                break
        new_curr.append(p)
    return tokens, conf, commits, canvas, new_curr


def _state(B, L, prompt_len, new, mask_id, filled, seed):
    """A state at a steady step: prompts of prompt_len[b] tokens, masks after them, and `filled`
    {(b, offset): token} positions after the prompt already committed out of order."""
    st = State.allocate(B, L, 0, 0, torch.float32, "cpu")
    g = torch.Generator().manual_seed(seed)
    canvas = torch.full((B, L + 1), mask_id)
    for b, p in enumerate(prompt_len):
        canvas[b, :p] = torch.randint(0, 40, (p,), generator=g)
    st.fill(canvas, torch.tensor(prompt_len), new, torch.arange(B))
    for (b, off), tok in filled.items():
        st.canvas[b, prompt_len[b] + off] = tok
    st.n_prev.fill_(2)
    st.offset.fill_(3)
    return st


RULE_CASES = [  # temperature, threshold, block_length, logits kind
    (0.0, 0.9, None, "peaky"), (0.0, 0.3, None, "peaky"), (0.0, 0.05, None, "flat"), (0.0, 1.0, None, "peaky"),
    (1.0, 0.5, None, "peaky"), (0.7, 0.2, None, "flat"), (0.0, 0.5, 3, "peaky"), (1.0, 0.1, 2, "flat"),
    (0.0, 0.5, None, "ties"), (1.0, 0.5, None, "ties"),
]


@pytest.mark.parametrize("T,threshold,block_length,kind", RULE_CASES,
                         ids=[f"T{c[0]}-thr{c[1]}-block{c[2]}-{c[3]}" for c in RULE_CASES])
def test_step_commits_what_the_plain_rule_commits(T, threshold, block_length, kind):
    B, K, Vs, mask_id = 4, 6, 64, 60
    prompt_len, new = [5, 3, 7, 4], 9
    L = max(prompt_len) + new
    g = torch.Generator().manual_seed(int(threshold * 100) + (block_length or 0) + int(T * 10))
    D = torch.randn(B, K, Vs, generator=g)
    if kind == "peaky":
        D = D * 3.0
        D[torch.rand(B, K, generator=g) < 0.5, 7] += 12.0  # confident positions
    elif kind == "ties":
        D = torch.randint(0, 3, (B, K, Vs), generator=g).float() * 2.0
        top = D.amax(-1) + torch.tensor([0.25, 0.5, 0.75, 1.5, 1.0, 0.0])  # distinct per position ...
        D[:, :, 11], D[:, :, 13] = top, top  # ... equal maxima within a row: the lowest token id
        D[:, 5] = D[:, 3]  # equal greatest confidences at two positions: the leftmost commits
        D[:, :, mask_id] = 50.0  # the mask token never drafts
    u = torch.rand(B, K, Vs, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    if kind == "ties":
        u[:, 5] = u[:, 3]
    # committed out of order before this step (row 3's first window slot is masked: curr is there)
    filled = {(0, 2): 9, (1, 1): 5, (1, 4): 8, (3, 1): 4, (3, 2): 6}
    st = _state(B, L, prompt_len, new, mask_id, filled, seed=1)
    st.curr[2] = prompt_len[2] + new - 2  # row 2 two positions from its end: a window of 2
    config = DecodeConfig(policy="threshold", threshold=threshold, block_length=block_length, temperature=T,
                          max_new_tokens=new, max_lookahead=K, kv_window=None)
    step = make_step(config, length=L, vocab=Vs, eos=[EOS], backend="cpu", device="cpu")
    before, curr_before = st.canvas.clone(), st.curr.clone()
    tokens, conf, commits, canvas, new_curr = plain_rule(D, u, T, threshold, before, st.curr, st.row_end,
                                                         st.start, K, mask_id, block_length)
    edge = (conf - threshold).abs() < 1e-5  # the step's float32 log-prob may round differently here
    assert not edge.any(), "regenerate the case: a confidence sits on the threshold"
    n, proposal, span = step(st, FixedLogits(D, mask_id), None, first=False,
                             noise=(lambda valid: u) if T > 0 else None)
    assert proposal is None
    assert n.tolist() == [len(c) for c in commits]
    assert torch.equal(st.canvas[:, :L], canvas[:, :L])
    assert st.curr.tolist() == new_curr
    assert st.n_prev.tolist() == (st.curr - curr_before).tolist()  # what the next span recomputes
    assert all(len(c) >= 1 for c in commits)
    if kind == "ties":
        assert all(5 not in c or 3 in c for c in commits)  # an equal confidence further left commits first
        if T == 0:
            assert (tokens == 11).all() and [commits[b] for b in (0, 1, 3)] == [[3], [3], [3]]


def test_threshold_one_and_near_zero_on_random_logits():
    """threshold 1.0 (above every confidence here): exactly one commit per row, the most
    confident; a threshold below every confidence: every candidate of the window."""
    B, K, Vs, mask_id = 3, 5, 40, 39
    D = torch.randn(B, K, Vs, generator=torch.Generator().manual_seed(3))
    for threshold, want in ((1.0, [1, 1, 1]), (1e-6, [K, K, K])):
        st = _state(B, 30, [4, 6, 5], 12, mask_id, {}, seed=2)
        config = DecodeConfig(policy="threshold", threshold=threshold, max_new_tokens=12, max_lookahead=K)
        step = make_step(config, length=30, vocab=Vs, eos=[], backend="cpu", device="cpu")
        n, _, _ = step(st, FixedLogits(D, mask_id), None)
        assert n.tolist() == want
    conf = torch.softmax(D.float(), -1).amax(-1)
    st = _state(B, 30, [4, 6, 5], 12, mask_id, {}, seed=2)
    step = make_step(DecodeConfig(policy="threshold", threshold=1.0, max_new_tokens=12, max_lookahead=K),
                     length=30, vocab=Vs, eos=[], backend="cpu", device="cpu")
    step(st, FixedLogits(D, mask_id), None)
    best = conf.argmax(1)
    for b, p in enumerate([4, 6, 5]):
        assert (st.canvas[b, p : p + K] != mask_id).nonzero().view(-1).tolist() == [int(best[b])]


def test_finished_rows_commit_nothing():
    B, K, Vs, mask_id = 2, 4, 40, 39
    st = _state(B, 30, [4, 6], 12, mask_id, {}, seed=2)
    st.done[1] = True
    before, curr_before = st.canvas.clone(), st.curr.clone()
    step = make_step(DecodeConfig(policy="threshold", threshold=1e-6, max_new_tokens=12, max_lookahead=K),
                     length=30, vocab=Vs, eos=[], backend="cpu", device="cpu")
    n, _, _ = step(st, FixedLogits(torch.randn(B, K, Vs), mask_id), None)
    assert n.tolist() == [K, 0] and torch.equal(st.canvas[1, :30], before[1, :30]) and int(st.curr[1]) == 6


# --- the approximate KV cache ----------------------------------------------------------------------

class CacheSpy:
    """Wraps a DllmRunner and checks at every forward that each position before `left` (served from
    the K/V cache) holds the token it held when a forward last computed it."""

    def __init__(self, runner, shift_back=None):
        self.runner, self.seen, self.calls, self.stale = runner, None, 0, []
        self.mask_token_id = runner.mask_token_id

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def window_logits(self, canvas, left, right, curr, window, size):
        if self.seen is None or self.seen.shape != canvas.shape:
            self.seen = torch.full_like(canvas, -1)
        for b in range(canvas.shape[0]):
            lo = int(left[b])
            changed = (canvas[b, :lo] != self.seen[b, :lo]).nonzero().view(-1).tolist()
            if changed and int(right[b]) > int(curr[b]):  # a row still decoding reads stale K/V
                self.stale.append((self.calls, b, changed))
            self.seen[b, lo : int(right[b])] = canvas[b, lo : int(right[b])]
        self.calls += 1
        return self.runner.window_logits(canvas, left, right, curr, window, size)


def _prompts(n, length, seed):
    g = torch.Generator().manual_seed(seed)
    return [[381] + torch.randint(0, 381, (length + 3 * i,), generator=g).tolist() for i in range(n)]


CACHE_SPECS = ["threshold:threshold=0.02,kv_window=1,max_lookahead=5",
               "threshold:threshold=0.03,kv_window=2,max_lookahead=3",
               "threshold:threshold=0.02,kv_window=1,max_lookahead=6,block_length=4",
               "threshold:threshold=0.5,kv_window=1,max_lookahead=4"]


@pytest.mark.parametrize("spec", CACHE_SPECS)
def test_cache_never_serves_a_changed_position(models, spec):
    spy = CacheSpy(models[0])
    out = generate(spy, models[1], _prompts(3, 12, 1), spec, max_new_tokens=16, seed=4, temperature=1.0,
                   eos_token_id=[])
    assert spy.stale == [] and spy.calls == out.stats["steps"] > 1
    acc = out.stats["acceptance_counts"]
    if "0.5" not in spec:
        assert (acc.max(1).values > 1).all()  # several commits per step: out of order happens
    assert out.num_generated.tolist() == [16, 16, 16]


def test_the_cache_check_catches_a_span_that_starts_too_late(models, monkeypatch):
    """Recomputing only from the new curr (ignoring what the previous step committed before it)
    serves stale K/V: the spy sees it."""
    real = ThresholdStep.dllm_span
    monkeypatch.setattr(ThresholdStep, "dllm_span",
                        lambda self, st, valid, first, back, *rest: real(self, st, valid, first, torch.ones_like(back),
                                                                        *rest))
    spy = CacheSpy(models[0])
    generate(spy, models[1], _prompts(2, 12, 1), CACHE_SPECS[0], max_new_tokens=16, seed=4, temperature=1.0,
             eos_token_id=[])
    assert spy.stale


# --- batching, limits, EOS on the golden and the tiny pair --------------------------------------------

GOLDEN_SPECS = ["threshold:threshold=0.05,kv_window=2,max_lookahead=4",
                "threshold:threshold=0.03,kv_window=none,max_lookahead=none",
                "threshold:threshold=0.04,block_length=3",
                "threshold"]


@pytest.mark.parametrize("spec", GOLDEN_SPECS)
def test_batch_rows_equal_single_runs_golden(models, spec):
    prompts = _prompts(3, 10, 1)
    kw = dict(max_new_tokens=12, seed=100, temperature=1.0)
    batch = generate(*models, prompts, spec, **kw)
    assert batch.stats["dllm_forwards"] == batch.stats["steps"] and batch.stats["verifier_forwards"] == 0
    for b, p in enumerate(prompts):
        single = generate(*models, [p], spec, **{**kw, "seed": 100 + b})
        n = int(single.num_generated[0])
        assert int(batch.num_generated[b]) == n
        assert batch.sequences[b, : len(p) + n].tolist() == single.sequences[0, : len(p) + n].tolist()
        steps = single.stats["steps"]
        assert batch.stats["acceptance_counts"][b, :steps].tolist() == single.stats["acceptance_counts"][0].tolist()


@pytest.mark.parametrize("spec", ["threshold:threshold=0.9", "threshold:threshold=0.5,kv_window=none,max_lookahead=none",
                                  "threshold:threshold=0.7,block_length=8", "threshold:threshold=0.8,temperature=0.5"])
def test_batch_rows_equal_single_runs_tiny_pair(pair, spec):
    problems = task.eval_problems(0, 3)
    prompts = [pair.tok.encode(p.prompt) for p in problems]
    assert len({len(p) for p in prompts}) > 1  # ragged
    cfg = ev.policy_config(spec)
    batch = generate(pair.dllm, pair.verifier, prompts, cfg, seed=7)
    for b, p in enumerate(prompts):
        single = generate(pair.dllm, pair.verifier, [p], cfg, seed=7 + b)
        n = int(single.num_generated[0])
        assert int(batch.num_generated[b]) == n
        assert batch.sequences[b, : len(p) + n].tolist() == single.sequences[0, : len(p) + n].tolist()


def test_threshold_one_commits_one_token_per_step(models):
    """On the golden pair (random weights: every confidence far below 1) threshold 1.0 is
    one token per step, left to right, whatever the window."""
    out = generate(*models, _prompts(2, 8, 2), "threshold:threshold=1.0,max_lookahead=6,kv_window=3",
                   max_new_tokens=10, seed=1, eos_token_id=[])
    assert (out.stats["acceptance_counts"] == 1).all() and out.stats["steps"] == 10


@pytest.mark.parametrize("block_length,window", [(None, 5), (None, None), (4, None), (3, 7)])
def test_threshold_near_zero_commits_the_whole_window(models, block_length, window):
    """Every confidence passes: each step fills the whole window (or what is left of the block)."""
    N = 12
    out = generate(*models, _prompts(2, 8, 3), DecodeConfig(policy="threshold", threshold=1e-9, max_lookahead=window,
                                                            block_length=block_length, max_new_tokens=N),
                   seed=1, eos_token_id=[])
    per = min(window or N, block_length or N)
    want = [per] * (N // per) + ([N % per] if N % per else [])
    assert out.stats["acceptance_counts"].tolist() == [want, want]
    assert out.num_generated.tolist() == [N, N]


def test_a_row_ends_at_its_first_eos(pair):
    """The tiny pair answers then writes EOS: the output stops just after it, padded."""
    problems = task.eval_problems(1, 4)
    prompts = [pair.tok.encode(p.prompt) for p in problems]
    out = generate(pair.dllm, pair.verifier, prompts, ev.policy_config("threshold:threshold=0.5"), seed=0)
    eos = pair.tok.eos_id
    for b, p in enumerate(prompts):
        n = int(out.num_generated[b])
        gen = out.sequences[b, len(p) : len(p) + n].tolist()
        assert eos in gen and gen.index(eos) == n - 1
        assert (out.sequences[b, len(p) + n :] == pair.dllm.config.pad_token_id).all()
    assert out.stats["tokens_per_step"] > 1.5  # parallel commits on a trained model


@pytest.mark.parametrize("kv_window", [None, 1, 3])
def test_a_window_of_one_is_dllm_fixed_k1(models, pair, kv_window):
    """With max_lookahead 1 the only candidate is curr: one token per step, left to right, the
    same tokens and spans as dllm_fixed k = 1 (the cache recomputes the same positions)."""
    knobs = f"max_lookahead=1,kv_window={kv_window or 'none'}"
    runs = [(models, _prompts(2, 7, 5), dict(max_new_tokens=10, temperature=1.0, seed=3)),
            ((pair.dllm, pair.verifier), [pair.tok.encode(p.prompt) for p in task.eval_problems(2, 2)],
             dict(max_new_tokens=64, seed=0))]
    for (d, v), prompts, kw in runs:
        a = generate(d, v, prompts, f"threshold:threshold=0.9,{knobs}", **kw)
        b = generate(d, v, prompts, f"dllm_fixed:k=1,{knobs}", **kw)
        assert torch.equal(a.sequences, b.sequences) and torch.equal(a.num_generated, b.num_generated)
        assert torch.equal(a.stats["acceptance_counts"], b.stats["acceptance_counts"])
        active = a.stats["acceptance_counts"] > 0  # (a finished row's span is never read)
        assert torch.equal(a.stats["spans"][active], b.stats["spans"][active])


def test_canvas_length_does_not_change_tokens(models):
    prompts = _prompts(2, 9, 4)
    spec = "threshold:threshold=0.05,kv_window=3,max_lookahead=6"
    base = generate(*models, prompts, spec, max_new_tokens=14, seed=9, temperature=1.0)
    long = generate(*models, prompts, spec, max_new_tokens=14, seed=9, temperature=1.0,
                    canvas_length=max(map(len, prompts)) + 14 + 17)
    assert torch.equal(long.num_generated, base.num_generated)
    for b, p in enumerate(prompts):
        end = len(p) + int(base.num_generated[b])
        assert long.sequences[b, :end].tolist() == base.sequences[b, :end].tolist()


# --- specs ---------------------------------------------------------------------------------------------

def test_specs():
    c = DecodeConfig.from_spec("threshold:threshold=0.8,block_length=32,kv_window=none")
    assert (c.policy, c.threshold, c.block_length, c.kv_window, c.max_lookahead) == ("threshold", 0.8, 32, None, 100)
    assert DecodeConfig.from_spec(c.to_spec()) == c
    assert DecodeConfig(policy="threshold").to_spec() == "threshold" and DecodeConfig().threshold == 0.9
    assert DecodeConfig.from_spec("threshold:threshold=1").threshold == 1.0
    assert isinstance(DecodeConfig(policy="threshold", threshold=1).threshold, float)
    assert STEPS["threshold"] is ThresholdStep
    for spec, name in [("threshold:threshold=0", "threshold"), ("threshold:threshold=1.01", "threshold"),
                       ("threshold:threshold=nan", "threshold"), ("threshold:threshold=x", "threshold"),
                       ("threshold:threshold=none", "threshold"), ("threshold:block_length=0", "block_length"),
                       ("threshold:block_length=2.5", "block_length"), ("threshold:k=2", "'k'"),
                       ("threshold:mixture_weight=0.5", "mixture_weight"), ("apd:threshold=0.5", "threshold"),
                       ("dllm_fixed:block_length=4", "block_length"), ("threshold:authors_compat=1", "authors_compat")]:
        with pytest.raises(ValueError, match=name):
            DecodeConfig.from_spec(spec)
    for knob, value, exc in [("threshold", 0.0, ValueError), ("threshold", -0.5, ValueError), ("threshold", "0.9", TypeError),
                             ("threshold", None, TypeError), ("threshold", True, TypeError),
                             ("block_length", 0, ValueError), ("block_length", 4.0, TypeError)]:
        with pytest.raises(exc, match=knob):
            DecodeConfig(policy="threshold", **{knob: value})


def test_the_step_ignores_authors_compat():
    """A config built directly with authors_compat (which the policy does not read) decodes as
    without it: no T^2 drafts, no top_k 50, nothing kept after the EOS."""
    a = make_step(DecodeConfig(policy="threshold", temperature=0.5, authors_compat=True), length=300, vocab=V, eos=[EOS])
    b = make_step(DecodeConfig(policy="threshold", temperature=0.5), length=300, vocab=V, eos=[EOS])
    assert a.key == b.key and a.pads_tail and tuple(a.filter) == (0.5, 0, 1.0)


# --- capture, graph replays -----------------------------------------------------------------------

CAPTURE = [(3, 0.0, None, 0), (3, 1.0, 3, 0), (None, 0.8, None, 5), (2, 1.0, None, 0)]


@pytest.mark.skipif(backends.extension() is None, reason="extension apd_ext._C not built")
@pytest.mark.parametrize("kv_window,T,block_length,top_k", CAPTURE, ids=[f"kv{c[0]}-T{c[1]}-b{c[2]}-k{c[3]}" for c in CAPTURE])
def test_steady_step_is_capturable(models, kv_window, T, block_length, top_k):
    from test_capture import _restore, _snapshot, assert_capturable

    dllm, verifier = models
    B, P, NEW = 2, 7, 12
    L = P + NEW
    config = DecodeConfig(policy="threshold", threshold=0.05, block_length=block_length, max_new_tokens=NEW,
                          max_lookahead=5, kv_window=kv_window, temperature=T, top_k=top_k)
    step = make_step(config, length=L, vocab=V, eos=[EOS], backend="cpu", device="cpu")
    dllm.setup(B, L)
    verifier.setup(B, L)  # (unused by the step; _snapshot saves every cache)
    st = State.allocate(B, L, 0, 0, torch.float32, "cpu")
    canvas = torch.full((B, L + 1), MASK)
    canvas[:, :P] = torch.randint(0, 381, (B, P), generator=torch.Generator().manual_seed(0))
    st.fill(canvas, torch.tensor([P, P - 2]), NEW, torch.tensor([5, 6]))
    step(st, dllm, verifier, first=True)
    snap = _snapshot(st, models)
    want = step(st, *models)
    after = [t.clone() for t in st.tensors()]
    _restore(snap)
    gm, got = assert_capturable(lambda s: step(s, *models), st)
    targets = {str(n.target) for n in gm.graph.nodes}
    assert any("apd_ext.sample_draft" in t for t in targets)
    assert any("scaled_dot_product_attention" in t for t in targets)
    for a, b in zip(want, got):
        assert (a is None and b is None) or torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(after, st.tensors()))


def test_graphed_run_reuses_its_captured_step(models, monkeypatch):
    """Through generate(cuda_graphs=True) with test_capture's stand-in graph (replays the step
    eagerly, checking addresses): same tokens, counts and spans as eager mode, reused by a second
    call with other prompts."""
    from test_capture import FakeGraph

    monkeypatch.setattr(graphs, "graphs_possible", lambda device: True)
    monkeypatch.setattr(graphs, "capture", FakeGraph)
    graphs.clear_graph_cache()
    kw = dict(max_new_tokens=14, eos_token_id=[], temperature=1.0)
    spec = "threshold:threshold=0.05,kv_window=3,max_lookahead=4"
    try:
        for seed, prompts, state in ((7, _prompts(2, 5, 1), "captured"), (9, _prompts(2, 5, 2), "reused")):
            eager = generate(*models, prompts, spec, seed=seed, cuda_graphs=False, **kw)
            graph = generate(*models, prompts, spec, seed=seed, cuda_graphs=True, **kw)
            assert graph.stats["cuda_graph"] == state
            assert torch.equal(eager.sequences, graph.sequences)
            assert torch.equal(eager.stats["acceptance_counts"], graph.stats["acceptance_counts"])
            assert torch.equal(eager.stats["spans"], graph.stats["spans"])
    finally:
        graphs.clear_graph_cache()


# --- eval-tiny and the sweep -------------------------------------------------------------------------

def test_eval_tiny_runs_it(tmp_path, capsys):
    path = tmp_path / "t.json"
    cli(["eval-tiny", "--policies", "threshold:threshold=0.9", "--num-problems", "3", "--quiet", "--json", str(path)])
    out = capsys.readouterr().out
    assert "threshold:threshold=0.9" in out
    (r,) = json.loads(path.read_text())["results"]
    assert r["name"] == "threshold" and r["params"]["threshold"] == 0.9 and r["num_problems"] == 3
    assert 0 <= r["accuracy"] <= 1 and r["tokens_per_dllm_forward"] > 1.5 and r["verifier_forwards"] == 0


def test_sweep_threshold_family():
    specs = sweep.configurations(families=("threshold",))
    cfgs = [ev.policy_config(s) for s in specs]
    assert {c.policy for c in cfgs} == {"threshold"} and len({c.threshold for c in cfgs}) >= 5
    assert {sweep.family_of(s) for s in specs} >= {"threshold", "threshold_cached", "threshold_block B=8"}
    assert sweep.family_of("threshold:temperature=0.5") == "threshold_cached T=0.5"
    assert any(c.kv_window is None and c.max_lookahead is None for c in cfgs)
    assert any(c.kv_window == 16 and c.max_lookahead == 100 for c in cfgs)
    assert sweep.short_label("threshold:threshold=0.9,kv_window=none,max_lookahead=none") == "thr=0.9"
    assert sweep.configurations() == sweep.configurations(families=sweep.RECORDED_FAMILIES)
