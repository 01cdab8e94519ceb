"""apd_ext.decode.compiled: the steady step compiled by torch.compile gives eager mode's tokens and
state, compiles once per configuration and shape, and replays explicit noise.

The golden tiny pair on CPU. One Inductor compile (the real code generation: tens of seconds on a
cold 2-core machine, a few seconds once Inductor's on-disk cache holds the graph); the cache and
noise checks use the "aot_eager" backend, which traces the same graph without code generation.
"""

import pytest
import torch
import torch._dynamo

import golden
from apd_ext import backends, reference
from apd_ext.decode import compiled
from apd_ext.decode.compiled import compile_step
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.decode import DecodeConfig
from apd_ext.decode.state import State
from apd_ext.decode.steps import make_step

V, MASK, EOS = 384, 383, 382
B, P, NEW, M = 2, 7, 12, 4
pytestmark = pytest.mark.skipif(backends.extension() is None, reason="extension apd_ext._C not built")


@pytest.fixture(scope="module")
def models():
    return (DllmRunner.from_pretrained(golden.path("dream_tiny")),
            VerifierRunner.from_pretrained(golden.path("qwen2_tiny")))


def _step(**over):
    knobs = dict(dict(max_new_tokens=NEW, max_lookahead=M, kv_window=3, mixture_weight=0.7, temperature=1.0), **over)
    return make_step(DecodeConfig(**knobs), length=P + NEW, vocab=V, eos=[EOS], backend="cpu", device="cpu")


def _start(models, step):
    """A fresh state after the verifier prefill and an eager step 0 (rows of prompt length P, P - 2)."""
    dllm, verifier = models
    L = P + NEW
    dllm.setup(B, L)
    verifier.setup(B, L)
    st = State.allocate(B, L, step.verifier_rows, V, verifier.logits_dtype, "cpu")
    canvas = torch.full((B, L + 1), MASK)
    canvas[:, :P] = torch.randint(0, EOS, (B, P), generator=torch.Generator().manual_seed(3))
    st.fill(canvas, torch.tensor([P, P - 2]), NEW, reference.row_seeds(11, B, "cpu"))
    verifier.prefill(st.canvas, st.curr, P, out=st.verifier_logits[:1])
    step(st, dllm, verifier, first=True)
    return st


def _decode(models, step_fn, st, noise=None, limit=NEW):
    """Steady steps until every row is done: the list of (n, proposal, window) per step."""
    out = []
    while not bool(st.done.all()) and len(out) < limit:
        n, proposal, window = step_fn(st, *models, noise=noise)
        out.append((n.clone(), proposal.clone(), window.clone()))
    return out


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(x, y))


def test_inductor_step_equals_eager_and_never_recompiles(models):
    step = _step()
    st = _start(models, step)
    eager = _decode(models, step, st)
    assert len(eager) >= 2 and bool(st.done.all())
    final = st.canvas.clone()

    torch._dynamo.reset()
    compiled.clear_compiled()
    fast = compile_step(step)
    assert compile_step(step) is fast  # cached per step object
    st = _start(models, step)
    first = fast(st, *models)  # compiles here
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        rest = _decode(models, fast, st)
        # a new step object of the same configuration (a new generate call) reuses the compiled code
        again = compile_step(_step())
        assert again is not fast and again.fn is fast.fn
        st2 = _start(models, step)
        again_out = _decode(models, again, st2)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
    got = [tuple(t.clone() for t in first)] + rest
    _same(got, eager)
    assert torch.equal(st.canvas, final)
    _same(again_out, eager)


class Replay:
    """A noise callable handing out one recorded [B, M, V] uniform tensor per call, logging the
    valid lengths it was given."""

    def __init__(self, uniforms):
        self.uniforms, self.valid = uniforms, []

    def __call__(self, valid):
        self.valid.append(valid.tolist())
        return self.uniforms[len(self.valid) - 1]


def test_explicit_noise_replays_and_configurations_compile_apart(models):
    """The noise callable gets the rows' valid lengths and its uniforms reach the step (aot_eager)."""
    step = _step(temperature=0.8)
    g = torch.Generator().manual_seed(5)
    uniforms = [torch.rand(B, M, V, generator=g, dtype=torch.float64).clamp_min(1e-12) for _ in range(NEW)]
    want_noise = Replay(uniforms)
    want = _decode(models, step, _start(models, step), noise=want_noise)
    fast = compile_step(step, backend="aot_eager")
    got_noise = Replay(uniforms)
    _same(_decode(models, fast, _start(models, step), noise=got_noise), want)
    assert got_noise.valid == want_noise.valid
    # other uniforms give other tokens: the compiled step reads them, not its own generator
    other = _decode(models, fast, _start(models, step), noise=Replay([1 - u for u in uniforms]))
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(other, want))

    # a different shape knob is a different configuration: its own compiled function; the sampling
    # knobs are per-row State tensors, not part of it
    assert compile_step(_step(temperature=0.8, kv_window=2), backend="aot_eager").fn is not fast.fn
    assert compile_step(_step(temperature=0.5, mixture_weight=0.5), backend="aot_eager").fn is fast.fn


def test_compile_step_rejects_bad_arguments():
    with pytest.raises(TypeError, match="step must be a step object"):
        compile_step(42)
    with pytest.raises(TypeError, match="step must be a step object"):
        compile_step(lambda *a, **k: None)  # callable, but no key to cache its compiled code by
    with pytest.raises(TypeError, match="backend must be"):
        compile_step(_step(), backend=None)
