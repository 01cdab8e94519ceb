"""The serving engine (apd_ext/serve/engine.py): continuous batching without HTTP.

The engine's promise: a request's tokens equal apd_ext.generate's on the same prompt, knobs and seed
run alone, whatever shares the batch and whenever it arrived. Checked here on random arrival
schedules with cancellations and mixed per-request knobs, on the bundled tiny pair and the golden
pair, greedy and sampled, for every served policy; and the engine's bookkeeping: queue order, slot
reuse, the bounded queue, bad requests naming their field, a failing request failing alone,
draining shutdown, the loop thread."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

import golden
from apd_ext import backends, generate
from apd_ext.decode.config import DecodeConfig
from apd_ext.models import DllmRunner, VerifierRunner
from apd_ext.serve import Engine, EngineClosed, QueueFull, Request, RequestError
from apd_ext.tiny import evaluate as ev, task

pytestmark = [pytest.mark.skipif(backends.extension() is None, reason="extension apd_ext._C not built"),
              pytest.mark.usefixtures("one_thread")]

POLICIES = ["apd", "dllm_fixed", "threshold", "ar"]


@pytest.fixture(scope="module")
def tiny():
    pair = ev.load_pair()
    prompts = [pair.tok.encode(p.prompt) for p in task.eval_problems(3, 8)]
    return pair.dllm, pair.verifier, prompts, dict(max_lookahead=100, kv_window=16, k=2, threshold=0.9)


@pytest.fixture(scope="module")
def gold():
    dllm = DllmRunner.from_pretrained(golden.path("dream_tiny"))
    verifier = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"))
    g = torch.Generator().manual_seed(3)
    prompts = [[381] + torch.randint(0, 381, (int(n),), generator=g).tolist() for n in (5, 9, 7, 12, 6, 8)]
    return dllm, verifier, prompts, dict(max_lookahead=4, kv_window=3, k=2, threshold=0.5)


def _requests(prompts, sampled: bool, cap: int, rng: random.Random) -> list[Request]:
    out = []
    for p in prompts:
        knobs = {}
        if sampled:  # every request its own mix; some stay greedy beside sampled ones
            knobs = dict(temperature=rng.choice([0.0, 0.7, 1.0, 1.4]), top_k=rng.choice([None, 0, 3, 20]),
                         top_p=rng.choice([None, 1.0, 0.9]), mixture_weight=rng.choice([None, 0.3, 0.9]))
        out.append(Request(prompt=p, max_tokens=rng.randint(max(1, cap // 3), cap), seed=rng.randrange(2**40),
                           **knobs))
    return out


def _alone(dllm, verifier, cfg: DecodeConfig, r: Request, eos: list[int]) -> list[int]:
    """The request decoded alone by generate, cut at its first EOS (what the engine reports)."""
    knobs = {n: getattr(r, n) for n in ("temperature", "top_k", "top_p", "mixture_weight")
             if getattr(r, n) is not None}
    out = generate(dllm, verifier if cfg.policy in ("apd", "ar") else None, [r.prompt],
                   cfg.replace(max_new_tokens=r.max_tokens, **knobs), seed=r.seed, eos_token_id=eos,
                   cuda_graphs=False)
    toks = out.sequences[0, len(r.prompt): len(r.prompt) + int(out.num_generated[0])].tolist()
    cut = next((i for i, t in enumerate(toks) if t in eos), None)
    return toks if cut is None else toks[:cut]


def _drive(engine: Engine, schedule: dict[int, list[Request]], cancel_at: dict[int, int], limit: int = 400):
    """Step the engine by hand: requests submitted before step i, request j cancelled before step
    cancel_at[j]. Returns per request (tokens, finish_reason, events)."""
    got: dict[int, dict] = {}
    order = []

    def sink(ev):
        rec = got.setdefault(ev.request_id, dict(tokens=[], reason=None, events=0))
        assert rec["reason"] is None, f"request {ev.request_id}: an event after its last"
        rec["tokens"] += ev.tokens
        rec["reason"] = ev.finish_reason
        rec["events"] += 1

    i = 0
    while i < limit:
        for r in schedule.get(i, []):
            order.append(engine.submit(r, sink))
        for j, at in cancel_at.items():
            if at == i and j < len(order):
                engine.cancel(order[j])
        if engine.idle() and i > max(schedule):
            break
        engine.step()
        i += 1
    assert engine.idle(), "the engine did not finish its requests"
    return order, got


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("which", ["tiny", "gold"])
def test_requests_equal_generate_alone_whatever_shares_the_batch(request, which, policy, sampled):
    dllm, verifier, prompts, shape = request.getfixturevalue(which)
    cap = 24 if which == "tiny" else 10
    cfg = DecodeConfig(policy=policy, max_new_tokens=cap, **shape)
    eos = [1] if which == "tiny" else [382]
    seed = 1000 * POLICIES.index(policy) + sampled + (7 if which == "gold" else 0)
    rng = random.Random(seed)
    reqs = _requests(prompts, sampled, cap, rng)
    # random arrivals over the first steps; 3 slots for 6-8 requests: some queue, slots are reused
    schedule: dict[int, list] = {}
    for r in reqs:
        schedule.setdefault(rng.randrange(0, 6), []).append(r)
    schedule.setdefault(0, [])
    order_of = [r for i in sorted(schedule) for r in schedule[i]]
    cancel_at = {rng.randrange(len(reqs)): rng.randrange(1, 8)}
    engine = Engine(dllm, verifier if policy in ("apd", "ar") else None, cfg, slots=3,
                    context_length=dllm.config.max_position_embeddings if which == "gold" else 160,
                    eos_token_id=eos)
    ids, got = _drive(engine, schedule, cancel_at)
    for j, (rid, r) in enumerate(zip(ids, order_of)):
        rec = got[rid]
        want = _alone(dllm, verifier, cfg, r, eos)
        if rec["reason"] == "cancelled":
            assert j in cancel_at
            assert rec["tokens"] == want[: len(rec["tokens"])], f"request {j}: cancelled output is not a prefix"
            continue
        assert rec["tokens"] == want, f"request {j} {r}: engine {rec['tokens']} vs generate alone {want}"
        assert rec["reason"] == ("length" if len(want) == r.max_tokens else "stop")
        if policy == "ar":  # one token per forward: an event per step
            assert rec["events"] >= len(want)


def test_bounded_queue_counts_waiting_requests(gold):
    dllm, verifier, prompts, shape = gold
    engine = Engine(dllm, verifier, DecodeConfig(max_new_tokens=4, **shape), slots=1, max_queue=2, eos_token_id=[])
    engine.submit(Request(prompt=prompts[0], max_tokens=4))
    engine.submit(Request(prompt=prompts[1], max_tokens=4))
    with pytest.raises(QueueFull, match="max_queue 2"):
        engine.submit(Request(prompt=prompts[2], max_tokens=4))
    engine.step()  # one joins its slot: room for one more in the queue
    assert engine.stats()["running"] == 1 and engine.stats()["queue_length"] == 1
    engine.submit(Request(prompt=prompts[2], max_tokens=4))
    finished = []
    for _ in range(40):
        if engine.idle():
            break
        finished += [e.request_id for e in engine.step() if e.finish_reason]
    assert finished == [0, 1, 2], "requests finish in arrival order through one slot"


@pytest.mark.parametrize("field, kw, match", [
    ("prompt", dict(prompt=[]), "at least one token"),
    ("prompt", dict(prompt=[5, 383]), "mask token"),
    ("prompt", dict(prompt=[5, 4000]), "outside the vocabulary"),
    ("prompt", dict(prompt=[5] * 60, max_tokens=10), "exceeds the context length 64"),
    ("max_tokens", dict(max_tokens=0), r"max_tokens must be an integer in \[1, 10\]"),
    ("max_tokens", dict(max_tokens=11), r"\[1, 10\]"),
    ("temperature", dict(temperature=-1.0), "temperature"),
    ("temperature", dict(temperature="hot"), "temperature"),
    ("top_p", dict(top_p=0.0), "top_p"),
    ("top_k", dict(top_k=-2), "top_k"),
    ("mixture_weight", dict(mixture_weight=1.5), "mixture_weight"),
    ("seed", dict(seed=2**64), "seed"),
])
def test_bad_requests_name_their_field(gold, field, kw, match):
    dllm, verifier, prompts, shape = gold
    engine = Engine(dllm, verifier, DecodeConfig(max_new_tokens=10, **shape), slots=2, context_length=64)
    args = dict(prompt=prompts[0], max_tokens=4) | kw
    with pytest.raises(RequestError, match=match) as e:
        engine.submit(Request(**args))
    assert e.value.field == field
    assert engine.stats()["queue_length"] == 0


def test_a_failing_request_fails_alone(gold):
    dllm, verifier, prompts, shape = gold
    cfg = DecodeConfig(max_new_tokens=8, **shape)
    engine = Engine(dllm, verifier, cfg, slots=3, eos_token_id=[382], fault_seed=666)
    got: dict = {}
    reqs = [Request(prompt=prompts[i], max_tokens=8, seed=s) for i, s in enumerate((1, 666, 2))]
    ids = [engine.submit(r, lambda ev: got.setdefault(ev.request_id, []).append(ev)) for r in reqs]
    for _ in range(40):
        if engine.idle():
            break
        engine.step()
    assert got[ids[1]][-1].finish_reason == "error" and "injected fault" in got[ids[1]][-1].error
    for k in (0, 2):
        toks = [t for ev in got[ids[k]] for t in ev.tokens]
        assert toks == _alone(dllm, verifier, cfg, reqs[k], [382])


def test_engine_thread_serves_concurrent_submitters_and_drains(gold):
    dllm, verifier, prompts, shape = gold
    cfg = DecodeConfig(max_new_tokens=8, **shape)
    engine = Engine(dllm, verifier, cfg, slots=2, eos_token_id=[382])
    engine.start()
    done = {}
    lock = threading.Lock()

    def client(i):
        r = Request(prompt=prompts[i], max_tokens=8, seed=i, temperature=0.8)
        finished = threading.Event()
        toks = []

        def sink(ev):
            toks.extend(ev.tokens)
            if ev.finish_reason:
                finished.set()
        engine.submit(r, sink)
        assert finished.wait(60)
        with lock:
            done[i] = (r, toks)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(done) == 5
    for r, toks in done.values():
        assert toks == _alone(dllm, verifier, cfg, r, [382])
    # drain: a running request finishes, new ones are refused, the loop stops
    finished = threading.Event()
    engine.submit(Request(prompt=prompts[0], max_tokens=8, seed=3),
                  lambda ev: finished.set() if ev.finish_reason else None)
    assert engine.shutdown(drain=True, timeout=60)
    assert finished.is_set()
    with pytest.raises(EngineClosed):
        engine.submit(Request(prompt=prompts[0], max_tokens=2))


def test_unserved_policy_and_bad_sizes_are_refused(gold):
    dllm, verifier, _, shape = gold
    with pytest.raises(ValueError, match="diffusion"):
        Engine(dllm, verifier, DecodeConfig(policy="diffusion"))
    with pytest.raises(ValueError, match="slots"):
        Engine(dllm, verifier, DecodeConfig(**shape), slots=0)
    with pytest.raises(ValueError, match="context_length"):
        Engine(dllm, verifier, DecodeConfig(**shape), context_length=10**6)


class _Replay:
    """graphs.capture's stand-in on CPU: replay() runs the captured step, after checking that every
    State tensor is where it was at capture (what a real CUDA graph reads)."""

    made = 0

    def __init__(self, fn, device):
        self.fn, self.state = fn, _Replay.engine.state
        self.addresses = [t.data_ptr() for t in self.state.tensors()]
        _Replay.made += 1

    def replay(self):
        assert [t.data_ptr() for t in self.state.tensors()] == self.addresses, "a State tensor moved"
        self.fn()


def test_steady_step_is_captured_once_whatever_joins_and_leaves(gold, monkeypatch):
    from apd_ext.decode import graphs

    monkeypatch.setattr(graphs, "graphs_possible", lambda device: True)
    monkeypatch.setattr(graphs, "capture", _Replay)
    dllm, verifier, prompts, shape = gold
    cfg = DecodeConfig(max_new_tokens=10, **shape)
    engine = Engine(dllm, verifier, cfg, slots=2, eos_token_id=[382], cuda_graphs=True)
    _Replay.engine, _Replay.made = engine, 0
    rng = random.Random(5)
    reqs = _requests(prompts, True, 10, rng)
    ids, got = _drive(engine, {0: reqs[:2], 3: reqs[2:4], 9: reqs[4:]}, {})
    # one capture per slot bucket (1 and 2 rows here), made once
    assert 1 <= _Replay.made <= len(engine.buckets) == 2 and engine.stats()["captures"] == _Replay.made
    made = _Replay.made
    ids2, got2 = _drive(engine, {0: reqs[::-1]}, {0: 2})  # request 0 cancelled before step 2
    assert _Replay.made == made, "joins, leaves or cancellations recaptured a step"
    assert engine.stats()["joins"] in (2 * len(reqs) - 1, 2 * len(reqs))  # the cancelled one may not have joined
    for rid, r in zip(ids, reqs):
        assert got[rid]["tokens"] == _alone(dllm, verifier, cfg, r, [382])
    for rid, r in zip(ids2, reqs[::-1]):
        want = _alone(dllm, verifier, cfg, r, [382])
        toks = got2[rid]["tokens"]
        assert toks == (want[: len(toks)] if got2[rid]["reason"] == "cancelled" else want)


def _rank_engine(tp, reqs, policy):
    dllm = DllmRunner.from_pretrained(golden.path("dream_tiny"), tp=tp)
    verifier = VerifierRunner.from_pretrained(golden.path("qwen2_tiny"), tp=tp, replicate=False)
    cfg = DecodeConfig(policy=policy, max_new_tokens=10, max_lookahead=4, kv_window=3, threshold=0.5)
    engine = Engine(dllm, verifier if policy == "apd" else None, cfg, slots=2, eos_token_id=[382])
    if tp.rank != 0:
        engine.follow()
        return None
    ids, got = _drive(engine, {0: reqs[:3], 2: reqs[3:]}, {4: 1})
    engine.shutdown()
    return [(got[rid]["tokens"], got[rid]["reason"]) for rid in ids]


@pytest.mark.parametrize("policy", ["apd", "threshold"])
def test_tensor_parallel_engine_follows_rank_0_and_equals_unsharded(gold, policy):
    """2 gloo ranks: rank 0 plans (admissions, a cancellation, per-request filters that switch the
    step's filter mix), rank 1 replays; every finished request equals generate alone, unsharded."""
    from distributed import run_ranks

    dllm, verifier, prompts, shape = gold
    reqs = [Request(prompt=prompts[i], max_tokens=10, seed=40 + i, temperature=t, top_k=k, top_p=p)
            for i, (t, k, p) in enumerate([(0.0, None, None), (1.0, 5, None), (0.8, None, 0.9), (1.2, 3, 0.8),
                                           (0.0, None, None)])]
    got = run_ranks(_rank_engine, 2, reqs, policy)[0]
    cfg = DecodeConfig(policy=policy, max_new_tokens=10, max_lookahead=4, kv_window=3, threshold=0.5)
    for j, (r, (toks, reason)) in enumerate(zip(reqs, got)):
        want = _alone(dllm, verifier, cfg, r, [382])
        if reason == "cancelled":
            assert toks == want[: len(toks)]
        else:
            assert toks == want, f"request {j}: TP=2 engine {toks} vs unsharded generate {want}"


@pytest.mark.parametrize("policy", ["apd", "threshold"])
def test_rows_move_between_canvas_and_slot_buckets_exactly(gold, policy):
    """Short requests decode on a 64-position canvas; a long one joining moves every busy row to a
    larger canvas (and more slots), its leaving moves them back: tokens still equal generate alone."""
    dllm, verifier, prompts, shape = gold
    g = torch.Generator().manual_seed(11)
    long_prompt = [381] + torch.randint(0, 381, (100,), generator=g).tolist()
    cfg = DecodeConfig(policy=policy, max_new_tokens=10, **shape)
    engine = Engine(dllm, verifier if policy == "apd" else None, cfg, slots=4, context_length=256,
                    eos_token_id=[382])
    rng = random.Random(2)
    short = _requests(prompts[:4], True, 10, rng)
    long = Request(prompt=long_prompt, max_tokens=10, seed=77, temperature=0.9)
    assert engine.canvases == [64, 128, 256]
    ids, got = _drive(engine, {0: short[:2], 2: [long], 4: short[2:]}, {})
    assert {(1, 64), (4, 128)} <= set(engine._states) or {(2, 64), (4, 128)} <= set(engine._states), \
        f"shapes visited: {sorted(engine._states)}"
    for rid, r in zip(ids, short[:2] + [long] + short[2:]):
        assert got[rid]["tokens"] == _alone(dllm, verifier, cfg, r, [382])


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(gold, monkeypatch):
    dllm, verifier, prompts, shape = gold
    cfg = DecodeConfig(max_new_tokens=8, **shape)
    engine = Engine(dllm, verifier, cfg, slots=2, eos_token_id=[382])
    real, calls = engine._run_steady, []

    def flaky(st, step):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the device fell over")
        return real(st, step)

    monkeypatch.setattr(engine, "_run_steady", flaky)
    got: dict = {}
    engine.start()
    try:
        first = [engine.submit(Request(prompt=prompts[i], max_tokens=8, seed=i),
                               lambda ev: got.setdefault(ev.request_id, []).append(ev)) for i in range(2)]
        deadline = time.monotonic() + 60
        while not all(got.get(r) and got[r][-1].finish_reason for r in first) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [got[r][-1].finish_reason for r in first] == ["error", "error"]
        assert "the device fell over" in got[first[0]][-1].error
        later = Request(prompt=prompts[2], max_tokens=8, seed=5, temperature=0.8)
        rid = engine.submit(later, lambda ev: got.setdefault(ev.request_id, []).append(ev))
        while not (got.get(rid) and got[rid][-1].finish_reason) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [t for ev in got[rid] for t in ev.tokens] == _alone(dllm, verifier, cfg, later, [382])
    finally:
        engine.shutdown(drain=False, timeout=30)


def test_generate_between_engine_steps_on_the_same_runners(tiny):
    """generate sets the shared runners up for its own shapes between two engine steps (canvas 64
    vs the engine's 160, other caches and RoPE tables): the engine's next forward sets its own again,
    and both give their exact tokens."""
    dllm, verifier, prompts, shape = tiny
    cfg = DecodeConfig(max_new_tokens=24, **shape)
    engine = Engine(dllm, verifier, cfg, slots=2, context_length=160, eos_token_id=[1])
    reqs = _requests(prompts[:3], True, 24, random.Random(9))
    got: dict = {}
    ids = [engine.submit(r, lambda ev: got.setdefault(ev.request_id, []).extend(ev.tokens)) for r in reqs]
    between = Request(prompt=prompts[5][:20], max_tokens=8, seed=3)
    for _ in range(60):
        if engine.idle():
            break
        engine.step()
        assert _alone(dllm, verifier, cfg, between, [1]) == _alone(dllm, verifier, cfg, between, [1])
    for rid, r in zip(ids, reqs):
        assert got[rid] == _alone(dllm, verifier, cfg, r, [1])


@pytest.fixture(scope="module")
def block_pairs(tmp_path_factory):
    """The random block-diffusion models (Fast-dLLM v2 and SDAR layouts) with a qwen2 verifier."""
    from block_models import write

    paths = write(tmp_path_factory.mktemp("block"), ("fast", "sdar", "qwen2"))
    verifier = VerifierRunner.from_pretrained(paths["qwen2"])
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(6, 60, (int(n),), generator=g).tolist() for n in (5, 8, 3, 12, 7)]
    return {k: DllmRunner.from_pretrained(paths[k]) for k in ("fast", "sdar")}, verifier, prompts


@pytest.mark.parametrize("kind, policy", [("fast", "apd"), ("fast", "fast_dllm_v2"), ("sdar", "threshold"),
                                          ("sdar", "sdar")])
def test_block_models_are_served_exactly(block_pairs, kind, policy):
    """Block-diffusion dLLMs through the engine (canvas buckets of whole blocks, joins reading their
    prompt's block): each request's tokens equal generate alone, sampled and greedy requests mixed."""
    dllms, verifier, prompts = block_pairs
    dllm = dllms[kind]
    cfg = DecodeConfig(policy=policy, max_new_tokens=14, threshold=0.3, small_block_size=4, denoising_steps=2)
    rng = random.Random(len(policy) + dllm.block_size)
    reqs = _requests(prompts, True, 14, rng)
    use_verifier = verifier if policy == "apd" else None
    engine = Engine(dllm, use_verifier, cfg, slots=2, context_length=96, eos_token_id=[5])
    with pytest.raises(ValueError, match="multiple of the dLLM.s block size"):
        Engine(dllm, use_verifier, cfg, slots=2, context_length=98)
    assert engine.L % dllm.block_size == 0 and all(c % dllm.block_size == 0 for c in engine.canvases)
    ids, got = _drive(engine, {0: reqs[:2], 1: reqs[2:4], 3: reqs[4:]}, {})
    for rid, r in zip(ids, reqs):
        assert got[rid]["tokens"] == _alone(dllm, verifier, cfg, r, [5]), f"{r}"
