"""The steady decoding step can be captured as a CUDA graph, and captured steps are reused.

No GPU here, so both are checked on CPU with the golden tiny pair:

* Capturability: the steady step (a step object of apd_ext.decode.steps with first=False, the
  very function generate captures) is traced by torch.compile(fullgraph=True) into one graph, which is then scanned: no
  value-dependent size or host read (any unbacked symbol: .item(), .tolist(), nonzero, boolean
  indexing), no device-to-host copy, no synchronize; Python branching on a tensor value fails the
  trace itself. Deliberately bad variants of the step must fail the same check.
* Graph cache: graph_key, GraphCache (LRU, validity) and generate's reuse of a cached step and its
  persistent state, with a stand-in for the CUDA graph that replays the step eagerly and checks
  that every tensor the step reads kept its address (which a real graph depends on).

Both also run on the block-diffusion dLLMs (block_models.py: Fast-dLLM v2 and SDAR layouts): apd,
threshold, dllm_fixed and the native fast_dllm_v2 / sdar steps on the exact block cache.
"""

import weakref

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

import block_models
import golden
import apd_ext
from apd_ext import backends, reference
from apd_ext.decode import DecodeConfig, graphs
from apd_ext.decode.driver import generate
from apd_ext.decode.state import State
from apd_ext.decode.steps import make_step
from apd_ext.models.runners import DllmRunner, VerifierRunner

V = 384
pytestmark = pytest.mark.skipif(backends.extension() is None, reason="extension apd_ext._C not built")


@pytest.fixture(scope="module")
def models():
    return (DllmRunner.from_pretrained(golden.path("dream_tiny")),
            VerifierRunner.from_pretrained(golden.path("qwen2_tiny")))


# --- capturability ---------------------------------------------------------------------------------

class NotCapturable(AssertionError):
    pass


_HOST_METHODS = {"item", "tolist", "cpu", "numpy", "synchronize", "nonzero", "unique", "masked_select", "bincount"}
# ops whose CUDA implementation reads a size back to the host although their output shape is static
# or traced as such (torch.isin sorts and calls unique past a few elements)
_HOST_READING_OPS = {torch.isin, torch.unique, torch.unique_consecutive, torch.nonzero, torch.masked_select,
                     torch.bincount, torch.histc, torch.argwhere}


def assert_capturable(fn, *args):
    """Trace fn(*args) into one graph (torch.compile, fullgraph, static shapes) and reject what a
    CUDA graph cannot hold; returns (graph module, fn's result from running the traced graph)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    try:
        out = torch.compile(fn, fullgraph=True, backend=backend, dynamic=False)(*args)
    except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as e:
        raise NotCapturable(f"the step does not trace into one graph: {str(e).splitlines()[0]}") from e
    assert len(graphs) == 1
    problems = []
    for node in graphs[0].graph.nodes:
        ev = node.meta.get("example_value")
        if ev is not None and free_unbacked_symbols(ev):
            problems.append(f"value-dependent size or host read: {node.format_node()}")
        if node.op == "call_method" and node.target in _HOST_METHODS:
            problems.append(f"host transfer or sync: {node.format_node()}")
        if node.op == "call_function" and ("synchronize" in str(node.target) or node.target in _HOST_READING_OPS):
            problems.append(f"host read or sync: {node.format_node()}")
    if problems:
        raise NotCapturable("\n".join(problems[:5]))
    return graphs[0], out


B, P, NEW, M = 2, 7, 12, 4


def _setup(models, policy, kv_window, temperature, top_k, top_p, authors_compat=False, bad=None):
    """A step (wrapped in BadStep when `bad` is given) and a state after an eager step 0, ready for
    the steady step."""
    dllm, verifier = models
    L = P + NEW
    config = DecodeConfig(policy=policy, max_new_tokens=NEW, max_lookahead=M, kv_window=kv_window, k=2,
                          mixture_weight=0.7, temperature=temperature, top_k=top_k, top_p=top_p,
                          authors_compat=authors_compat)
    step = make_step(config, length=L, vocab=V, eos=[382], backend="cpu", device="cpu")
    if bad is not None:
        step = BadStep(step, bad)
    dllm.setup(B, L)
    verifier.setup(B, L)
    st = State.allocate(B, L, step.verifier_rows, V, verifier.logits_dtype, "cpu")
    canvas = torch.full((B, L + 1), 383)
    canvas[:, :P] = torch.randint(0, 381, (B, P), generator=torch.Generator().manual_seed(0))
    st.fill(canvas, torch.tensor([P, P - 2]), NEW, reference.row_seeds(5, B, "cpu"))
    if st.verifier_logits is not None:
        verifier.prefill(st.canvas, st.curr, P, out=st.verifier_logits[:1])
    step(st, dllm, verifier, first=True)
    return step, st


def _snapshot(st, models):
    caches = [t for r in models for layer in r.model.model.layers for t in (layer.self_attn.k_cache,
                                                                            layer.self_attn.v_cache)]
    return [(t, t.clone()) for t in st.tensors() + caches]


def _restore(snap):
    for t, saved in snap:
        t.copy_(saved)


CONFIGS = [  # policy, kv_window, temperature, top_k, top_p, authors_compat
    ("apd", 3, 0.0, 0, 1.0, False),
    ("apd", 3, 1.0, 0, 1.0, False),
    ("apd", None, 0.8, 5, 1.0, False),
    ("apd", None, 1.0, 0, 0.9, False),
    ("apd", 3, 0.7, 50, 1.0, True),
    ("dllm_fixed", 3, 0.0, 0, 1.0, False),
    ("dllm_fixed", None, 1.0, 5, 1.0, False),
    ("ar", 3, 0.0, 0, 1.0, False),
    ("ar", None, 1.0, 5, 0.9, False),
]


@pytest.mark.parametrize("policy,kv_window,temperature,top_k,top_p,authors_compat", CONFIGS,
                         ids=[f"{c[0]}-kv{c[1]}-T{c[2]}-k{c[3]}-p{c[4]}{'-compat' if c[5] else ''}" for c in CONFIGS])
def test_steady_step_is_capturable(models, policy, kv_window, temperature, top_k, top_p, authors_compat):
    step, st = _setup(models, policy, kv_window, temperature, top_k, top_p, authors_compat)
    snap = _snapshot(st, models)
    want = step(st, *models)  # eager
    after = [t.clone() for t in st.tensors()]
    _restore(snap)
    gm, got = assert_capturable(lambda s: step(s, *models), st)
    # the traced graph is the whole step: the models, the fused ops, the commit
    targets = {str(n.target) for n in gm.graph.nodes}
    assert any("apd_ext.sample_draft" in t for t in targets)
    assert any("apd_ext.mixture_accept" in t for t in targets) == (policy == "apd")
    assert any("scaled_dot_product_attention" in t for t in targets)
    for a, b in zip(want, got):
        assert (a is None and b is None) or torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(after, st.tensors()))


# --- the block-diffusion step (Fast-dLLM v2 and SDAR layouts: block_models.py) ----------------------

@pytest.fixture(scope="module")
def block_runners(tmp_path_factory):
    paths = block_models.write(tmp_path_factory.mktemp("block"))
    return {name: (DllmRunner.from_pretrained(paths[name]), VerifierRunner.from_pretrained(paths[verifier]))
            for name, verifier in (("fast", "qwen2"), ("sdar", "qwen3"))}


BLOCK_P, BLOCK_L = (7, 8), 24  # one prompt ends mid-block, one at a block's end (blocks of 8 and 4)
BLOCK_CONFIGS = [  # dllm, DecodeConfig knobs
    ("fast", dict(policy="apd", max_lookahead=6, temperature=0.0)),
    ("fast", dict(policy="apd", max_lookahead=8, temperature=1.0, top_k=5)),
    ("fast", dict(policy="threshold", max_lookahead=8, threshold=0.3, temperature=0.0)),
    ("fast", dict(policy="dllm_fixed", max_lookahead=8, k=2, temperature=1.0, top_p=0.9)),
    ("fast", dict(policy="fast_dllm_v2", threshold=0.3, small_block_size=4, temperature=0.0)),
    ("fast", dict(policy="fast_dllm_v2", threshold=0.9, small_block_size=8, temperature=1.0)),
    ("sdar", dict(policy="apd", max_lookahead=4, temperature=1.0)),
    ("sdar", dict(policy="threshold", max_lookahead=4, threshold=0.3, temperature=1.0, top_k=5)),
    ("sdar", dict(policy="dllm_fixed", max_lookahead=4, k=2, temperature=0.0)),
    ("sdar", dict(policy="sdar", denoising_steps=2, remasking="low_confidence_static", temperature=0.0)),
    ("sdar", dict(policy="sdar", denoising_steps=4, threshold=0.3, remasking="low_confidence_dynamic",
                  temperature=1.0)),
]


def _block_setup(runners, knobs, steps_before=1):
    """A step on a block model and its state after `steps_before` eager steps (the first: step 0)."""
    dllm, verifier = runners
    L, new = BLOCK_L, BLOCK_L - min(BLOCK_P)
    config = DecodeConfig(max_new_tokens=new, mixture_weight=0.7, **knobs)
    step = make_step(config, length=L, vocab=block_models.VOCAB, eos=[block_models.EOS], backend="cpu",
                     device="cpu", block=dllm.block_size)
    B = len(BLOCK_P)
    dllm.setup(B, L)
    verifier.setup(B, L)
    st = State.allocate(B, L, step.verifier_rows, block_models.VOCAB, verifier.logits_dtype, "cpu")
    canvas = torch.full((B, L + 1), block_models.MASK)
    canvas[:, : max(BLOCK_P)] = torch.randint(6, block_models.MASK, (B, max(BLOCK_P)),
                                              generator=torch.Generator().manual_seed(0))
    st.fill(canvas, torch.tensor(BLOCK_P), new, reference.row_seeds(5, B, "cpu"))
    if st.verifier_logits is not None:
        verifier.prefill(st.canvas, st.curr, max(BLOCK_P), out=st.verifier_logits[:1])
    for i in range(steps_before):
        step(st, dllm, verifier, first=i == 0)
    return step, st


@pytest.mark.parametrize("steps_before", [1, 2])
@pytest.mark.parametrize("dllm,knobs", BLOCK_CONFIGS,
                         ids=[f"{d}-" + ",".join(f"{k}={v}" for k, v in c.items()) for d, c in BLOCK_CONFIGS])
def test_block_steady_step_is_capturable(block_runners, dllm, knobs, steps_before):
    """The steady step on a block-diffusion dLLM (exact block cache, windows ending at the block's
    end, the native policies' rules) is one graph with no host read, and gives the eager step's
    tensors; after step 0 and after a steady step (another block span, SDAR's phase counted)."""
    runners = block_runners[dllm]
    step, st = _block_setup(runners, knobs, steps_before)
    snap = _snapshot(st, runners)
    want = step(st, *runners)  # eager
    after = [t.clone() for t in st.tensors()]
    _restore(snap)
    gm, got = assert_capturable(lambda s: step(s, *runners), st)
    targets = {str(n.target) for n in gm.graph.nodes}
    assert any("apd_ext.sample_draft" in t for t in targets)
    assert any("apd_ext.mixture_accept" in t for t in targets) == (knobs["policy"] == "apd")
    assert any("scaled_dot_product_attention" in t for t in targets)
    for a, b in zip(want, got):
        assert (a is None and b is None) or torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(after, st.tensors()))


class BadStep:
    """The steady step plus one thing a CUDA graph cannot hold."""

    def __init__(self, step, bad):
        self.step, self.bad = step, bad
        self.verifier_rows = step.verifier_rows

    def __call__(self, st, dllm, verifier, **kw):
        n, proposal, span = self.step(st, dllm, verifier, **kw)
        return self.bad(n, st), proposal, span


BAD = {
    "item": lambda n, st: n + int(n.max().item()),
    "bool": lambda n, st: n + 1 if bool(st.done.all()) else n,
    "branch": lambda n, st: n * 2 if (n > 1).any() else n,
    "tolist": lambda n, st: torch.tensor(n.tolist()),
    "nonzero": lambda n, st: n + torch.nonzero(st.done).numel(),
    "mask_index": lambda n, st: n + st.curr[st.done].sum(),
    "value_sized": lambda n, st: n + torch.zeros(int(n[0])).numel(),
    "host_copy": lambda n, st: n.cpu(),
    "isin": lambda n, st: n + torch.isin(st.canvas, st.curr).sum(),
}


@pytest.mark.parametrize("name", list(BAD))
def test_the_check_catches_what_a_graph_cannot_hold(models, name):
    step, st = _setup(models, "apd", 3, 1.0, 0, 1.0, bad=BAD[name])
    with pytest.raises(NotCapturable):
        assert_capturable(lambda s: step(s, *models), st)


def test_fake_implementations_are_registered():
    """Importing the extension registers the ops' fake implementations (apd_ext/fake.py), which
    tracing needs: shapes and dtypes come out without running a kernel."""
    backends.extension()
    with FakeTensorMode():
        D = torch.empty(2, 3, 10)
        rows = torch.empty(2, dtype=torch.float64)  # per-row knobs: temperature_rows, mixture_weight_rows
        tok, lp = torch.ops.apd_ext.sample_draft(D, 10, 1.0, 0, 1.0, rows, None, None, None, 0, None, 0, None)
        out = torch.ops.apd_ext.mixture_accept(D, torch.empty(2, 3, 12, dtype=torch.bfloat16), tok, 10, 0.5, rows,
                                               1.0, 0, 1.0, None, None, None, None, False, None, 0, None, 0, None)
    assert (tok.shape, tok.dtype, lp.dtype) == ((2, 3), torch.int64, torch.float32)
    assert [tuple(t.shape) for t in out] == [(2,), (2, 3), (2, 3), (2, 3), (2, 3)]


# --- the graph cache ---------------------------------------------------------------------------------

def _key(models, **over):
    """graph_key of a step made from these settings (window: max_lookahead K)."""
    kw = dict(batch=2, length=20, window=4, kv_window=3, policy="apd", k=1, vocab=V, temperature=1.0, top_k=0,
              top_p=1.0, mixture_weight=0.7, authors_compat=False, eos=[382], backend="cpu", device="cpu")
    kw.update(over)
    setup = {name: kw.pop(name) for name in ("batch", "length", "vocab", "eos", "backend", "device")}
    config = DecodeConfig(max_new_tokens=16, max_lookahead=kw.pop("window"), **kw)
    step = make_step(config, length=setup["length"], vocab=setup["vocab"], eos=setup["eos"],
                     backend=setup["backend"], device=setup["device"])
    return graphs.graph_key(*models, step, setup["batch"])


def test_graph_key_separates_what_the_captured_step_depends_on(models):
    base = _key(models)
    assert _key(models) == base
    for change in [dict(batch=3), dict(length=21), dict(window=5), dict(kv_window=None), dict(policy="dllm_fixed"),
                   dict(vocab=380), dict(authors_compat=True), dict(eos=[]), dict(backend="reference")]:
        assert _key(models, **change) != base, change
    # the sampling knobs are per-row State tensors: one captured step serves any mix of them
    for change in [dict(temperature=0.5), dict(top_k=5), dict(top_p=0.9), dict(mixture_weight=0.5)]:
        assert _key(models, **change) == base, change
    assert _key(models, backend="reference", device="meta") != _key(models, backend="reference")  # device
    other = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"))
    assert _key((models[0], other)) != base  # another runner object
    bf16 = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), dtype=torch.bfloat16)
    assert torch.bfloat16 in _key((models[0], bf16)) and torch.bfloat16 not in base  # logits dtype
    # knobs a policy does not use do not split its entries
    assert _key(models, k=3) == base
    assert _key(models, policy="dllm_fixed", mixture_weight=0.1) == _key(models, policy="dllm_fixed")


def test_graph_cache_is_an_lru_that_drops_invalid_entries(models):
    d, v = models
    cache = graphs.GraphCache(2)

    def entry(dd=d, vv=v, fp=(1, 2)):
        return graphs.CachedStep(step=None, state=None, dllm_ref=weakref.ref(dd), verifier_ref=weakref.ref(vv),
                                  fingerprint=fp)

    a, b, c = entry(), entry(), entry()
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a", d, v, (1, 2)) is a  # a is now the most recent
    cache.put("c", c)  # evicts b
    assert len(cache) == 2 and cache.get("b", d, v, (1, 2)) is None
    assert cache.get("c", d, v, (9, 9)) is None and len(cache) == 1  # tensors moved: dropped
    assert cache.get("a", d, VerifierRunner.from_pretrained(golden.path("qwen2_tiny")), (1, 2)) is None
    gone = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"))
    cache.put("g", entry(vv=gone))
    del gone
    assert cache.get("g", d, v, (1, 2)) is None  # its runner is gone
    cache.put("x", entry())
    cache.clear()
    assert len(cache) == 0


class FakeGraph:
    """Stands in for a CUDA graph on CPU: replay() runs the captured step eagerly and copies its
    results into fixed output tensors, after checking that the state and every runner tensor the
    step reads are still at the addresses they had at capture (what a real graph reads)."""

    captured = 0

    def __init__(self, fn, device):
        self.fn = fn
        self.entry = next(reversed(graphs.GRAPH_CACHE.entries.values()))  # the entry being captured
        self.addresses = self._addresses()
        self.outputs = None
        FakeGraph.captured += 1

    def _addresses(self):
        e = self.entry
        return ([t.data_ptr() for t in e.state.tensors()],
                graphs.runner_fingerprint(e.dllm_ref(), e.verifier_ref(), e.step))

    def replay(self):
        assert self._addresses() == self.addresses, "a tensor the captured step reads has moved"
        res = self.fn()
        if self.outputs is None:
            self.outputs = tuple(None if t is None else torch.empty_like(t) for t in res)
        for o, t in zip(self.outputs, res):
            if o is not None:
                o.copy_(t)


@pytest.fixture
def fake_graphs(monkeypatch):
    monkeypatch.setattr(graphs, "graphs_possible", lambda device: True)
    monkeypatch.setattr(graphs, "capture", FakeGraph)
    graphs.clear_graph_cache()
    FakeGraph.captured = 0
    yield
    graphs.clear_graph_cache()


def _prompts(seed, n=2):
    g = torch.Generator().manual_seed(seed)
    return [[381] + torch.randint(0, 381, (5 + 2 * i,), generator=g).tolist() for i in range(n)]


@pytest.mark.parametrize("policy,kv_window", [("apd", 3), ("apd", None), ("dllm_fixed", 3), ("ar", None)])
def test_generate_reuses_a_captured_step_and_its_state(models, fake_graphs, policy, kv_window):
    """Same shapes and knobs: the second call replays the first call's captured step on the same
    state tensors, refilled in place; tokens equal eager mode's for the same seed every time."""
    kw = dict(max_new_tokens=14, max_lookahead=4, kv_window=kv_window, policy=policy, k=2, eos_token_id=[],
              temperature=1.0)
    a, b = _prompts(1), _prompts(2)  # different prompts, same padded length
    eager_a = generate(*models, a, seed=7, cuda_graphs=False, **kw)
    eager_b = generate(*models, b, seed=9, cuda_graphs=False, **kw)
    assert eager_a.stats["cuda_graph"] is None and len(graphs.GRAPH_CACHE) == 0

    g1 = generate(*models, a, seed=7, cuda_graphs=True, **kw)
    assert g1.stats["cuda_graph"] == "captured" and FakeGraph.captured == 1
    entry = next(iter(graphs.GRAPH_CACHE.entries.values()))
    state_ids = [id(t) for t in entry.state.tensors()]
    g2 = generate(*models, b, seed=9, cuda_graphs=True, **kw)
    assert g2.stats["cuda_graph"] == "reused" and FakeGraph.captured == 1 and entry.uses == 2
    assert [id(t) for t in entry.state.tensors()] == state_ids
    for eager, graph in ((eager_a, g1), (eager_b, g2)):
        assert torch.equal(eager.sequences, graph.sequences)
        assert torch.equal(eager.stats["acceptance_counts"], graph.stats["acceptance_counts"])
        if policy != "ar":
            assert torch.equal(eager.stats["spans"], graph.stats["spans"])

    # other shape knobs: another entry, captured anew (the sampling knobs share it: test_generate_rows.py)
    g3 = generate(*models, a, seed=7, cuda_graphs=True, **{**kw, "max_lookahead": 3})
    assert g3.stats["cuda_graph"] == "captured" and len(graphs.GRAPH_CACHE) == 2
    # a run of another length in between re-allocates the runners' caches: the entry is stale
    generate(*models, a, seed=7, cuda_graphs=False, **{**kw, "max_new_tokens": 9})
    g4 = generate(*models, a, seed=7, cuda_graphs=True, **kw)
    assert g4.stats["cuda_graph"] == "captured" and torch.equal(g4.sequences, eager_a.sequences)
    apd_ext.clear_graph_cache()
    assert len(graphs.GRAPH_CACHE) == 0


BLOCK_GENERATE = [("fast", "apd"), ("fast", "threshold:threshold=0.3"), ("fast", "dllm_fixed:k=2"),
                  ("fast", "fast_dllm_v2:threshold=0.3,small_block_size=4"), ("sdar", "apd"),
                  ("sdar", "threshold:threshold=0.3"), ("sdar", "dllm_fixed:k=2"),
                  ("sdar", "sdar:threshold=0.3,denoising_steps=2")]


@pytest.mark.parametrize("dllm,spec", BLOCK_GENERATE, ids=[f"{d}-{s}" for d, s in BLOCK_GENERATE])
def test_block_generate_reuses_a_captured_step_and_its_state(block_runners, fake_graphs, dllm, spec):
    """As above on a block-diffusion dLLM: the second call (other prompts of the same padded length,
    ending mid-block and at a block's end) replays the first call's captured step on the same state
    tensors; tokens, counts and spans equal eager mode's."""
    runners = block_runners[dllm]
    kw = dict(max_new_tokens=13, max_lookahead=4, eos_token_id=[], temperature=1.0)
    g = torch.Generator().manual_seed(3)
    a, b = ([torch.randint(6, block_models.MASK, (n,), generator=g).tolist() for n in (7, 8)] for _ in range(2))
    eager_a = generate(*runners, a, spec, seed=7, cuda_graphs=False, **kw)
    eager_b = generate(*runners, b, spec, seed=9, cuda_graphs=False, **kw)
    g1 = generate(*runners, a, spec, seed=7, cuda_graphs=True, **kw)
    assert g1.stats["cuda_graph"] == "captured" and FakeGraph.captured == 1
    entry = next(iter(graphs.GRAPH_CACHE.entries.values()))
    state_ids = [id(t) for t in entry.state.tensors()]
    g2 = generate(*runners, b, spec, seed=9, cuda_graphs=True, **kw)
    assert g2.stats["cuda_graph"] == "reused" and FakeGraph.captured == 1 and entry.uses == 2
    assert [id(t) for t in entry.state.tensors()] == state_ids
    for eager, graph in ((eager_a, g1), (eager_b, g2)):
        assert torch.equal(eager.sequences, graph.sequences)
        assert torch.equal(eager.stats["acceptance_counts"], graph.stats["acceptance_counts"])
        assert torch.equal(eager.stats["spans"], graph.stats["spans"])
    assert eager_a.stats["steps"] > 2 and not torch.equal(eager_a.sequences, eager_b.sequences)


def test_graphs_are_refused_for_slow_adapters(models):
    """The HF adapters read positions on the host: never captured (default off, explicit error)."""
    from apd_ext.models.hf_adapter import HFVerifier

    class Logits(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(ids.shape[0], ids.shape[1], V)

    hf = HFVerifier(Logits(), vocab_size=V)

    def step(policy):
        return make_step(DecodeConfig(policy=policy, max_new_tokens=4), length=10, vocab=V, eos=[], backend="cpu")

    assert not graphs.native(models[0], hf, step("apd"))
    assert graphs.native(models[0], hf, step("dllm_fixed"))
    assert not graphs.use_graphs(None, torch.device("cuda"), None, step("apd"), models[0], hf)
    with pytest.raises(ValueError, match="native runners"):
        graphs.use_graphs(True, torch.device("cuda"), None, step("apd"), models[0], hf)
