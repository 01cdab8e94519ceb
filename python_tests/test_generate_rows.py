"""Per-request sampling parameters (issue 19): generate takes temperature, top_k, top_p and
mixture_weight per batch row (lists, tuples or [B] tensors) and seeds as a list; row b of a mixed
batch decodes exactly as a one-row call with row b's values as scalars and row b's seed, eagerly,
compiled and through the (CPU stand-in of the) CUDA-graph cache, which one step serves for every
mix. Bad per-row values are refused on the host, naming the knob and the row.

The golden tiny pair (python_tests/golden.py) and the bundled tiny pair (apd_ext/tiny), both on
CPU with one thread; compiled runs use torch.compile's "aot_eager" backend (the same Dynamo graph
and guards as Inductor, without the code generation that costs tens of seconds here).
"""

import functools

import pytest
import torch
import torch._dynamo

import golden
from apd_ext import backends
from apd_ext.decode import DecodeConfig, compiled, graphs
from apd_ext.decode.driver import generate
from apd_ext.decode.steps import make_step
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.tiny import evaluate as ev
from apd_ext.tiny import task
from test_capture import FakeGraph, fake_graphs  # noqa: F401  (a fixture: the CUDA-graph cache on CPU)

V = 384
pytestmark = [pytest.mark.skipif(backends.extension() is None, reason="extension apd_ext._C not built"),
              pytest.mark.usefixtures("one_thread")]

# three requests: greedy, sampled with top-k and top-p, sampled with top-p alone
ROWS = dict(temperature=[0.0, 1.0, 0.7], top_k=[None, 5, 0], top_p=[1.0, 0.9, 0.8], mixture_weight=[0.7, 0.3, 1.0])
SEEDS = [5, 9, 11]
# another mix of the same three rows (all sampled, other filters and weights)
OTHER = dict(temperature=[0.5, 1.3, 0.9], top_k=[3, None, 7], top_p=[0.95, 1.0, 0.7], mixture_weight=[0.2, 0.9, 0.6])
POLICIES = ["apd", "dllm_fixed", "threshold", "ar", "diffusion"]


@pytest.fixture(scope="module")
def models():
    return (DllmRunner.from_pretrained(golden.path("dream_tiny")),
            VerifierRunner.from_pretrained(golden.path("qwen2_tiny")))


@pytest.fixture(scope="module")
def pair():
    return ev.load_pair()


def _prompts(n=3, length=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[381] + torch.randint(0, 381, (length + 2 * i,), generator=g).tolist() for i in range(n)]


def _kw(policy, **over):
    return dict(dict(policy=policy, max_new_tokens=10, max_lookahead=4, kv_window=3, k=2, threshold=0.5,
                     eos_token_id=[382]), **over)


def _row(values: dict, b: int) -> dict:
    return {name: v[b] for name, v in values.items()}


def _as_inputs(values: dict) -> dict:
    """The same per-row values in the accepted forms: a list, a tuple, an int64 / float64 tensor."""
    return dict(temperature=list(values["temperature"]),
                top_k=values["top_k"] if None in values["top_k"] else torch.tensor(values["top_k"]),
                top_p=torch.tensor(values["top_p"], dtype=torch.float64),
                mixture_weight=tuple(values["mixture_weight"]))


def _assert_rows_equal_singles(models, prompts, values, seeds, **kw):
    """The batch with per-row values gives each row the tokens of its one-row call."""
    batch = generate(*models, prompts, seed=seeds, **_as_inputs(values), **kw)
    for b, p in enumerate(prompts):
        single = generate(*models, [p], seed=seeds[b], **_row(values, b), **kw)
        n = int(single.num_generated[0])
        assert int(batch.num_generated[b]) == n, (b, kw)
        assert batch.sequences[b, : len(p) + n].tolist() == single.sequences[0, : len(p) + n].tolist(), (b, kw)
    return batch


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_rows_equal_single_rows_golden_pair(models, policy):
    prompts = _prompts()
    _assert_rows_equal_singles(models, prompts, ROWS, SEEDS, **_kw(policy))
    _assert_rows_equal_singles(models, prompts, OTHER, [3, 1, 2], **_kw(policy, kv_window=None, max_lookahead=None))


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_rows_equal_single_rows_tiny_pair(pair, policy):
    prompts = [pair.tok.encode(q.prompt) for q in task.eval_problems(0, 3)]
    kw = _kw(policy, max_new_tokens=16, max_lookahead=6, kv_window=4, eos_token_id=None)
    _assert_rows_equal_singles((pair.dllm, pair.verifier), prompts, ROWS, SEEDS, **kw)


@pytest.mark.parametrize("policy", ["apd", "dllm_fixed"])
def test_mixed_rows_in_authors_compat_mode(models, policy):
    """With authors_compat a row drafts at its T^2 and a top_k None row takes the released code's 50."""
    values = dict(ROWS, temperature=[1.1, 0.0, 0.8], top_k=[None, 2, None])
    _assert_rows_equal_singles(models, _prompts(seed=4), values, [7, 8, 9], **_kw(policy, authors_compat=True))


def test_equal_rows_equal_the_scalar_call(models):
    """Per-row values that agree give the scalar call's tokens (row seeds seed + b either way)."""
    prompts, kw = _prompts(), _kw("apd")
    scalar = generate(*models, prompts, seed=40, temperature=0.8, top_k=6, top_p=0.9, mixture_weight=0.4, **kw)
    rows = generate(*models, prompts, seed=[40, 41, 42], temperature=[0.8] * 3, top_k=torch.tensor([6] * 3),
                    top_p=(0.9, 0.9, 0.9), mixture_weight=torch.tensor([0.4] * 3, dtype=torch.float64), **kw)
    assert torch.equal(scalar.sequences, rows.sequences) and torch.equal(scalar.num_generated, rows.num_generated)
    assert torch.equal(scalar.stats["acceptance_counts"], rows.stats["acceptance_counts"])


def test_per_row_values_stay_on_their_rows(models):
    """Row b's values apply to row b only: the same prompt and seed in every row, a greedy row
    beside sampled ones equals the greedy one-row call whatever its neighbours sample at."""
    p = _prompts(1)[0]
    kw = _kw("apd", eos_token_id=[])
    out = generate(*models, [p] * 3, seed=[1, 1, 1], temperature=[2.0, 0.0, 2.0], mixture_weight=[0.7, 0.7, 0.2],
                   **kw)
    greedy = generate(*models, [p], seed=1, temperature=0.0, **kw)
    assert out.sequences[1].tolist() == greedy.sequences[0].tolist()
    assert out.sequences[0].tolist() != out.sequences[1].tolist()


def test_per_row_values_with_a_config_and_unknown_knobs(models):
    """Per-row values override a DecodeConfig's (whose other values stay every row's default); a
    float32 tensor means its values widened to float64, exactly; a top_k None row means 0 (as
    top_k=None); an unknown knob given as a list is still named as unknown."""
    prompts = _prompts()
    cfg = DecodeConfig(max_new_tokens=6, max_lookahead=4, kv_window=3, temperature=0.9, top_k=4)
    t32 = torch.tensor([0.0, 0.9, 0.7], dtype=torch.float32)
    a = generate(*models, prompts, cfg, seed=SEEDS, temperature=t32, eos_token_id=[])
    b = generate(*models, prompts, cfg, seed=torch.tensor(SEEDS), temperature=t32.tolist(), top_k=[4, 4, 4],
                 eos_token_id=[])
    assert torch.equal(a.sequences, b.sequences)
    c = generate(*models, prompts, cfg, seed=SEEDS, temperature=t32.double(), top_k=[4, None, 4], eos_token_id=[])
    d = generate(*models, prompts, cfg.replace(top_k=None), seed=SEEDS, temperature=t32.double(),
                 top_k=torch.tensor([4, 0, 4]), eos_token_id=[])
    assert torch.equal(c.sequences, d.sequences)
    greedy = generate(*models, prompts[:1], cfg, seed=SEEDS[0], temperature=0.0, eos_token_id=[])
    assert a.sequences[0, : greedy.sequences.shape[1]].tolist() == greedy.sequences[0].tolist()
    with pytest.raises(TypeError, match="unknown decoding knob"):
        generate(*models, prompts, seed=1, max_new_tokens=4, temprature=[1.0, 1.0, 1.0])


# --- one compiled step / one captured graph for every mix --------------------------------------------

def test_sampling_knobs_are_not_in_the_step_or_graph_key(models):
    def step(**knobs):
        cfg = DecodeConfig(**dict(dict(max_new_tokens=10, max_lookahead=4, kv_window=3), **knobs))
        return make_step(cfg, length=20, vocab=V, eos=[382], backend="cpu", device="cpu")

    base = step()
    for knobs in [dict(temperature=0.5), dict(top_k=5), dict(top_p=0.9), dict(mixture_weight=0.1),
                  dict(temperature=1.2, top_k=3, top_p=0.5, mixture_weight=1.0)]:
        other = step(**knobs)
        assert other.key == base.key and compiled._config_key(other) == compiled._config_key(base)
        assert graphs.graph_key(*models, other, 3) == graphs.graph_key(*models, base, 3)
    assert step(kv_window=2).key != base.key and step(authors_compat=True).key != base.key


@pytest.fixture
def aot_eager(monkeypatch):
    """generate(compile=True) through torch.compile's aot_eager backend; fresh Dynamo state."""
    monkeypatch.setattr(compiled, "compile_step", functools.partial(compiled.compile_step, backend="aot_eager"))
    torch._dynamo.reset()
    compiled.clear_compiled()
    yield
    torch._dynamo.reset()
    compiled.clear_compiled()


@pytest.mark.parametrize("policy", ["apd", "threshold", "ar"])
def test_compiled_step_serves_every_mix_without_recompiling(models, aot_eager, policy):
    prompts, kw = _prompts(), _kw(policy)
    calls = [dict(_as_inputs(ROWS), seed=SEEDS), dict(_as_inputs(OTHER), seed=[4, 5, 6]),
             dict(temperature=0.6, top_k=4, seed=2)]
    eager = [generate(*models, prompts, **call, **kw) for call in calls]
    first = generate(*models, prompts, compile=True, **calls[0], **kw)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    functions = len(compiled._FUNCTIONS)
    with torch._dynamo.config.patch(error_on_recompile=True):  # a new mix, or scalars: no new frame
        rest = [generate(*models, prompts, compile=True, **call, **kw) for call in calls[1:]]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames >= 1
    assert len(compiled._FUNCTIONS) == functions == 1
    for want, got in zip(eager, [first] + rest):
        assert torch.equal(want.sequences, got.sequences) and torch.equal(want.num_generated, got.num_generated)


@pytest.mark.parametrize("policy", ["apd", "dllm_fixed", "threshold"])
def test_captured_graph_serves_every_mix(models, fake_graphs, policy):  # noqa: F811
    """A second call with another mix (or scalar knobs) replays the first call's captured step on
    its state, refilled with the new rows' knobs; tokens equal eager mode's."""
    prompts, kw = _prompts(), _kw(policy, max_new_tokens=12)
    calls = [dict(_as_inputs(ROWS), seed=SEEDS), dict(_as_inputs(OTHER), seed=[4, 5, 6]),
             dict(temperature=0.0, seed=1), dict(temperature=1.0, top_p=0.8, mixture_weight=0.5, seed=2)]
    for i, call in enumerate(calls):
        eager = generate(*models, prompts, cuda_graphs=False, **call, **kw)
        graphed = generate(*models, prompts, cuda_graphs=True, **call, **kw)
        assert graphed.stats["cuda_graph"] == ("captured" if i == 0 else "reused"), i
        assert torch.equal(eager.sequences, graphed.sequences), i
        assert torch.equal(eager.num_generated, graphed.num_generated), i
    assert FakeGraph.captured == 1 and len(graphs.GRAPH_CACHE) == 1


# --- bad per-row input ---------------------------------------------------------------------------------

BAD = [
    (dict(temperature=[0.0, 1.0]), ValueError, r"temperature must hold one value per batch row \(B=3\), got 2"),
    (dict(top_p=(0.9,) * 4), ValueError, r"top_p .*B=3.*got 4"),
    (dict(mixture_weight=torch.full((2,), 0.5, dtype=torch.float64)), ValueError, r"mixture_weight tensor .*\[3\]"),
    (dict(temperature=torch.ones(3, 1, dtype=torch.float64)), ValueError, r"temperature tensor .*\[3\]"),
    (dict(temperature=torch.tensor([0, 1, 1])), TypeError, "temperature tensor must be float32 or float64"),
    (dict(top_k=torch.tensor([1.0, 2.0, 3.0])), TypeError, "top_k tensor must be int64"),
    (dict(top_p=torch.tensor([1, 1, 1], dtype=torch.bfloat16)), TypeError, "top_p tensor must be float32 or float64"),
    (dict(temperature=[0.0, 1.0, -1.0]), ValueError, r"temperature must be >= 0, got -1.0 in row 2"),
    (dict(temperature=[0.0, float("nan"), 1.0]), ValueError, r"temperature .* in row 1"),
    (dict(temperature=[float("inf"), 1.0, 1.0]), ValueError, r"temperature must be finite .* in row 0"),
    (dict(temperature=[1.0, 1.0, 1e-39]), ValueError, r"temperature .*too small.* in row 2"),
    (dict(temperature=[1.0, True, 1.0]), TypeError, r"temperature must be a number.* in row 1"),
    (dict(temperature=["1", 1.0, 1.0]), TypeError, r"temperature must be a number.* in row 0"),
    (dict(top_k=[1, -2, 3]), ValueError, r"top_k must be >= 0 .*got -2 in row 1"),
    (dict(top_k=[1, 2.5, 3]), TypeError, r"top_k must be an integer.* in row 1"),
    (dict(top_k=torch.tensor([1, 2, -3])), ValueError, r"top_k .*got -3 in row 2"),
    (dict(top_p=[1.0, 0.0, 1.0]), ValueError, r"top_p must be in \(0, 1\], got 0.0 in row 1"),
    (dict(top_p=torch.tensor([1.0, 1.0, 1.5])), ValueError, r"top_p .*got 1.5 in row 2"),
    (dict(mixture_weight=torch.tensor([0.5, 1.5, 0.2], dtype=torch.float64)), ValueError,
     r"mixture_weight must be in \[0, 1\], got 1.5 in row 1"),
    (dict(temperature=[1.0, 1e-20, 1.0], authors_compat=True), ValueError, r"T\^2 .*too small.* in row 1"),
    (dict(seed=[1, 2]), ValueError, r"seed list .*B=3.*got 2"),
    (dict(seed=[1, 2.0, 3]), TypeError, r"seed must be an int.* in row 1"),
    (dict(seed=[1, 2, 2**64]), ValueError, r"seed must fit in 64 bits.* in row 2"),
    (dict(max_new_tokens=[4, 4, 4]), TypeError, "max_new_tokens takes one value per call"),
    (dict(k=(1, 2, 3)), TypeError, "k takes one value per call"),
    (dict(kv_window=torch.tensor([3, 3, 3])), TypeError, "kv_window takes one value per call"),
    (dict(policy=["apd", "ar", "apd"]), TypeError, "policy takes one value per call"),
    (dict(authors_compat=[True, False, True]), TypeError, "authors_compat takes one value per call"),
]


@pytest.mark.parametrize("bad,exc,match", BAD, ids=[f"{i}-{next(iter(b[0]))}" for i, b in enumerate(BAD)])
def test_bad_per_row_values_are_refused_on_the_host(models, monkeypatch, bad, exc, match):
    """Refused before anything reaches the device: the runners are never set up."""
    dllm, verifier = models

    def reached(*args, **kw):
        raise AssertionError("the runners were set up before the per-row values were checked")

    monkeypatch.setattr(dllm, "setup", reached)
    monkeypatch.setattr(verifier, "setup", reached)
    kw = dict(dict(max_new_tokens=4, seed=1), **bad)
    with pytest.raises(exc, match=match):
        generate(dllm, verifier, _prompts(), **kw)


@pytest.mark.parametrize("rows, cfg, want", [
    ({}, DecodeConfig(), (False, False)),
    ({}, DecodeConfig(authors_compat=True), (True, False)),  # top_k None -> 50 under authors_compat
    ({"top_k": [0, V + 5, None]}, DecodeConfig(), (False, False)),  # >= vocab keeps everything
    ({"top_k": [0, 2, 0]}, DecodeConfig(), (True, False)),
    ({"top_p": [1.0, 1.0, 0.5]}, DecodeConfig(), (False, True)),
    ({}, DecodeConfig(top_p=0.9), (False, True)),
])
def test_row_knobs_say_which_filters_any_row_uses(rows, cfg, want):
    """What tensor parallelism's threshold searches are told (steps.make_step's filters): whether any
    row's top-k / top-p filters, from the host's values."""
    from apd_ext.decode import inputs

    assert inputs.row_knobs(cfg, V, 3, inputs.sampling_rows(rows, 3)).filters(V) == want
