"""`python -m apd_ext serve` over HTTP: real server processes with the bundled tiny pair (127.0.0.1,
an OS-chosen port read from the `listening on` line), driven with the official openai client (sync,
async, streaming) and with httpx for what a client library would not send.

Two processes, started once for the module (in parallel): `server`, the defaults (apd, 8 slots;
APD_EXT_SERVE_FAULT_SEED makes requests with FAULT_SEED fail inside the engine), and `small`,
one slot and a queue of one on dllm_fixed:k=1 (one token per forward: its requests last long
enough to be interrupted), used for the 429, the client disconnect and, last, SIGTERM.

Answers are checked against apd_ext.generate in this process on the same prompt, knobs and seed.
The last tests start their own processes: --drain-timeout 0 (the drain is bounded), and
`torchrun --nproc-per-node 2 ... --tp 2` on CPU (rank 0 serves, rank 1 follows).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import threading
import time

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

import apd_ext
from apd_ext.cli import main as cli
from apd_ext.loading import answer_tokens, load_pair
from apd_ext.serve.detok import REPLACEMENT, Detokenizer, StopMatcher
from apd_ext.tiny import task
from apd_ext.tiny.evaluate import TASK_CONFIG
from serve_process import ServeProcess

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "apd-tiny"
FAULT_SEED = 987654321
SMALL_POLICY = "dllm_fixed:k=1"
PROBLEMS = task.eval_problems(0, 6)
PROMPT = PROBLEMS[0].prompt
WAIT_S = 20.0  # the bound of every polling loop


# --- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def servers():
    main = ServeProcess(env={"APD_EXT_SERVE_FAULT_SEED": str(FAULT_SEED)})
    small = ServeProcess(["--max-batch-size", 1, "--max-queue", 1, "--policy", SMALL_POLICY, "--drain-timeout", 20])
    try:
        main.start()
        small.start()
        yield main.wait_ready(), small.wait_ready()
    finally:
        main.stop()
        small.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def small(servers):
    return servers[1]


@pytest.fixture(scope="module")
def pair():
    return load_pair()


@pytest.fixture(scope="module")
def ref(pair):
    """ref(prompt text or ids, max_tokens=64, policy="apd", seed=0, **knobs) -> (text, completion
    tokens, finish_reason) of apd_ext.generate with the server's config (TASK_CONFIG)."""
    cache = {}

    def decode(prompt, max_tokens=64, policy="apd", seed=0, **knobs):
        key = (str(prompt), max_tokens, policy, seed, tuple(sorted(knobs.items())))
        if key not in cache:
            ids = pair.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
            cfg = apd_ext.DecodeConfig.from_spec(policy, base=TASK_CONFIG).replace(max_new_tokens=max_tokens, **knobs)
            out = apd_ext.generate(pair.dllm, pair.verifier, [ids], cfg, seed=seed, **pair.generate_kwargs())
            gen = out.sequences[0, len(ids): len(ids) + int(out.num_generated[0])].tolist()
            ans = answer_tokens(gen, pair.eos_token_ids)
            eos = bool(ans) and ans[-1] in pair.eos_token_ids
            toks = ans[:-1] if eos else ans
            cache[key] = (pair.tokenizer.decode(toks), len(toks), "stop" if eos else "length")
        return cache[key]

    return decode


@pytest.fixture(scope="module")
def long_seed(ref):
    """A seed whose sampled answer (temperature 10) on the small server runs >= 12 forwards."""
    for seed in range(8):
        if ref(PROMPT, policy=SMALL_POLICY, seed=seed, temperature=10.0)[1] >= 12:
            return seed
    pytest.fail("no seed in 0..7 gives a long sampled answer")


def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def metrics(srv) -> dict:
    """{(sample name, frozenset(labels)): value} of /metrics, parsed by prometheus_client."""
    text = httpx.get(srv.url + "/metrics", timeout=30).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def metric(srv, name: str, **labels) -> float:
    return metrics(srv)[(name, frozenset(labels.items()))]


def wait_until(what: str, check, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s")


def idle(srv) -> bool:
    h = httpx.get(srv.url + "/health", timeout=30).json()
    return h["running"] == 0 and h["queue_length"] == 0


def sse_events(response) -> list:
    """The decoded `data:` payloads of an SSE response, "[DONE]" as is."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --- in-process parts: the detokeniser, stop strings, the command line --------------------------------------

def test_detokenizer_never_splits_a_character(pair):
    text = "héllo wörld, 日本語 🎉🎉 ok\n#### 42 ✓"
    ids = pair.tokenizer.encode(text)
    for step in (1, 2, 3):  # tokens per push
        d = Detokenizer(pair.tokenizer)
        deltas = [d.push(ids[i: i + step]) for i in range(0, len(ids), step)] + [d.flush()]
        assert "".join(deltas) == pair.tokenizer.decode(ids) == text
        assert not any(REPLACEMENT in x for x in deltas)
    d = Detokenizer(pair.tokenizer)  # a sequence that really ends mid-character: flushed as U+FFFD
    cut = pair.tokenizer.encode("🎉")[:-1]
    assert d.push(cut) == "" and d.flush() == pair.tokenizer.decode(cut)


def test_detokenizer_counts_the_tokens_of_a_text_prefix(pair):
    ids = pair.tokenizer.encode("Tom has 12 coins. He buys 5 more. 日本 🎉\n#### 17")
    d = Detokenizer(pair.tokenizer)
    d.push(ids)
    for chars in range(0, len(pair.tokenizer.decode(ids)) + 3):
        want = next((k for k in range(len(ids) + 1) if len(pair.tokenizer.decode(ids[:k])) >= chars), len(ids))
        assert d.tokens_for(chars) == want, chars
    m = StopMatcher(["b", "ab", "zz"])
    assert m.push("xxab") == ("xx", True) and m.matched == "ab"


def test_stop_matcher_against_a_plain_search():
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 12)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
        cuts = [text.find(s) for s in stops if s in text]
        want = text[: min(cuts)] if cuts else text
        m, out, pos = StopMatcher(stops), [], 0
        while pos < len(text):  # random chunks
            n = rng.randint(1, 4)
            got, stopped = m.push(text[pos: pos + n])
            out.append(got)
            pos += n
            if stopped:
                break
        else:
            out.append(m.push("", final=True)[0])
        assert "".join(out) == want, (text, stops)
        emitted = ""
        for piece in out:  # no emitted prefix ever ends inside a stop string that later completes
            emitted += piece
            assert emitted == want[: len(emitted)]


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("argv, status, pattern", [
    (["--policy", "diffusion"], 2, r"--policy diffusion: not served"),
    (["--port", "70000"], 2, r"--port: takes a port in \[0, 65535\]"),
    (["--drain-timeout", "-1"], 2, r"--drain-timeout: takes seconds >= 0"),
    (["--verifier", "x"], 2, r"--verifier needs --dllm too"),
    (["--dllm", "x"], 2, r"policy apd runs the verifier: pass --verifier with --dllm"),
    (["--dllm", "/nonexistent/dream", "--verifier", "/nonexistent/qwen"], 2, r"--dllm /nonexistent/dream"),
    (["--dllm", ""], 2, r"--dllm '': an empty path"),
    (["--max-batch-size", "0"], 2, r"--max-batch-size: takes an integer >= 1"),
])
def test_serve_argument_errors(capsys, keep_threads, argv, status, pattern):
    with pytest.raises(SystemExit) as e:
        cli(["serve", *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == status and "\n" not in err and re.search(pattern, err), err


def test_serve_on_a_taken_port_fails_in_one_line(capsys, keep_threads):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(SystemExit) as e:
            cli(["serve", "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.startswith("error: --host 127.0.0.1 --port") and "cannot listen" in err, err


# --- answers --------------------------------------------------------------------------------------------

def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [MODEL]
    h = httpx.get(server.url + "/health", timeout=30)
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["slots"] == 8


def test_greedy_completion_equals_generate(server, ref, pair):
    text, n, finish = ref(PROMPT)
    r = client(server).completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, temperature=0)
    assert r.choices[0].text == text and text
    assert r.choices[0].finish_reason == finish == "stop"
    ids = pair.tokenizer.encode(PROMPT)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), n, len(ids) + n)
    by_ids = client(server).completions.create(model=MODEL, prompt=ids, max_tokens=64, temperature=0)
    assert by_ids.choices[0].text == text
    default = client(server).completions.create(model=MODEL, prompt=PROMPT)  # no max_tokens: the server's 64
    assert default.choices[0].text == text


def test_stream_concatenates_to_the_response(server, ref):
    text, n, finish = ref(PROMPT)
    chunks = list(client(server).completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, temperature=0,
                                                    stream=True, stream_options={"include_usage": True}))
    with_text = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in with_text) == text
    assert len(with_text) >= 2  # one chunk per step that committed text
    assert [c.choices[0].finish_reason for c in with_text] == [None] * (len(with_text) - 1) + [finish]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n
    assert all(c.usage is None for c in with_text)


def test_length_and_usage(server, ref):
    text, n, finish = ref(PROMPT, max_tokens=4)
    assert (n, finish) == (4, "length")
    r = client(server).completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens) == (text, "length", 4)


def test_seed_reproduces_generate(server, ref):
    c = client(server)
    for seed in (3, 11):
        want = ref(PROMPT, seed=seed, temperature=1.0)[0]
        got = [c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, temperature=1.0, seed=seed)
               .choices[0].text for _ in range(2)]
        assert got == [want, want]
    extra = dict(top_k=5, mixture_weight=0.9)
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, temperature=1.5, top_p=0.9, seed=5,
                             extra_body=extra)
    assert r.choices[0].text == ref(PROMPT, seed=5, temperature=1.5, top_p=0.9, **extra)[0]


def test_stop_strings_cut_the_text(server, ref, pair):
    full = ref(PROMPT)[0]
    stop = full[len(full) // 2: len(full) // 2 + 2]
    want = full[: full.find(stop)]
    c = client(server)
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, temperature=0, stop=[stop, "never seen"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == (want, "stop")
    # usage counts the tokens up to the one completing the stop string, not all the engine made
    ids = pair.tokenizer.encode(PROMPT)
    out = apd_ext.generate(pair.dllm, pair.verifier, [ids], TASK_CONFIG, seed=0, **pair.generate_kwargs())
    toks = out.sequences[0, len(ids): len(ids) + int(out.num_generated[0])].tolist()
    need = next(k for k in range(len(toks) + 1) if stop in pair.tokenizer.decode(toks[:k]))
    assert r.usage.completion_tokens == need < ref(PROMPT)[1]
    chunks = [ch for ch in c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, temperature=0, stop=stop,
                                                stream=True) if ch.choices]
    assert "".join(ch.choices[0].text for ch in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_completion(server, ref):
    question = PROBLEMS[1].question
    text = ref(task.format_prompt(question))[0]  # the bundled pair's chat prompt: the task's format
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": question}]
    c = client(server)
    r = c.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=64, temperature=0)
    assert (r.choices[0].message.role, r.choices[0].message.content) == ("assistant", text)
    chunks = list(c.chat.completions.create(model=MODEL, messages=messages, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_concurrent_requests_equal_generate(server, ref):
    """Six requests at once (greedy and sampled, one streamed) share the batch; each answer equals
    its generate() run alone."""
    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                                      timeout=60) as c:
            async def one(i):
                kw = dict(model=MODEL, prompt=PROBLEMS[i].prompt, max_tokens=64, temperature=float(i % 2), seed=i)
                if i == 5:
                    return "".join([ch.choices[0].text async for ch in await c.completions.create(stream=True, **kw)])
                return (await c.completions.create(**kw)).choices[0].text
            return await asyncio.gather(*(one(i) for i in range(6)))

    got = asyncio.run(asyncio.wait_for(run(), 120))
    assert got == [ref(PROBLEMS[i].prompt, seed=i, temperature=float(i % 2))[0] for i in range(6)]


# --- bad input and faults ----------------------------------------------------------------------------------

COMPLETION_ERRORS = [
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "logprobs": 1}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_k": 1.5}, "top_k"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 65}, "max_tokens"),  # past the server's max_new_tokens (the engine's check)
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "frobnicate": 1}, "frobnicate"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [0, 2]}, "prompt"),  # the mask token
    ({"prompt": [5000]}, "prompt"),  # outside the vocabulary
    ({}, "prompt"),
]
CHAT_ERRORS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "system", "content": "no user"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": "9"}, "max_completion_tokens"),
]


@pytest.mark.parametrize("path, body, param", [("/v1/completions", b, p) for b, p in COMPLETION_ERRORS]
                         + [("/v1/chat/completions", b, p) for b, p in CHAT_ERRORS])
def test_bad_requests_get_400_naming_the_field(server, path, body, param):
    r = httpx.post(server.url + path, json={"model": MODEL, **body}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, None), err
    assert err["message"]


def test_harmless_fields_are_accepted(server, ref):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 64, "temperature": 0, "n": 1, "user": "u",
            "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "echo": False, "best_of": 1,
            "stop": None, "seed": None, "top_p": None, "stream": False}
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == ref(PROMPT)[0], r.text
    chat = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": PROBLEMS[1].question}]}],
            "tools": [], "response_format": {"type": "text"}, "logprobs": False, "parallel_tool_calls": True,
            "store": False, "metadata": {"k": "v"}, "max_tokens": 64}
    r = httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ref(
        task.format_prompt(PROBLEMS[1].question))[0], r.text
    r = httpx.get(server.url + "/v2/nothing", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_malformed_bodies_and_long_prompts(server, pair):
    post = lambda body, **kw: httpx.post(server.url + "/v1/completions", timeout=30, content=body, **kw)  # noqa: E731
    for body in (b"{bad", b"", b"[1, 2]", b"\xff\xfe"):
        r = post(body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (body, r.text)
    too_long = "1 " * 200
    assert len(pair.tokenizer.encode(too_long)) > 256
    for extra in ({}, {"max_tokens": 8}):
        r = httpx.post(server.url + "/v1/completions", json={"prompt": too_long, **extra}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    r = httpx.post(server.url + "/v1/completions", json={"model": "gpt-4", "prompt": "x"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:  # through the client too
        client(server).completions.create(model=MODEL, prompt="x", n=2)
    assert e.value.body["param"] == "n"


def test_engine_failure_fails_alone(server, ref):
    """Requests with FAULT_SEED fail inside the engine (APD_EXT_SERVE_FAULT_SEED): 500, streamed or
    not, while the requests beside them finish with generate's answers."""
    before = metric(server, "apd_requests_total", finish_reason="error")

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as h:
            def body(i, seed, **kw):
                return {"model": MODEL, "prompt": PROBLEMS[i].prompt, "max_tokens": 64, "temperature": 1.0,
                        "seed": seed, **kw}
            return await asyncio.gather(h.post("/v1/completions", json=body(0, FAULT_SEED)),
                                        *(h.post("/v1/completions", json=body(i, i)) for i in (1, 2, 3)),
                                        h.post("/v1/completions", json=body(4, FAULT_SEED, stream=True)))

    rs = asyncio.run(asyncio.wait_for(run(), 120))
    for r in (rs[0], rs[-1]):
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
        assert "injected fault" in r.json()["error"]["message"]
    for i, r in zip((1, 2, 3), rs[1:4]):
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == ref(PROBLEMS[i].prompt, seed=i,
                                                                              temperature=1.0)[0]
    assert metric(server, "apd_requests_total", finish_reason="error") == before + 2
    wait_until("the server idle", lambda: idle(server))


def test_metrics_parse_and_move(server):
    before = metrics(server)
    r = client(server).completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, temperature=0)
    wait_until("metrics updated",
               lambda: metric(server, "apd_requests_total", finish_reason="stop")
               > before[("apd_requests_total", frozenset({("finish_reason", "stop")}))])
    after = metrics(server)

    def moved(name, labels=()):
        key = (name, frozenset(labels))
        return after[key] - before[key]

    assert moved("apd_generated_tokens_total") == r.usage.completion_tokens
    assert moved("apd_prompt_tokens_total") == r.usage.prompt_tokens
    assert moved("apd_request_step_tokens_count") >= 1 and moved("apd_step_seconds_count") >= 1
    assert moved("apd_request_step_tokens_sum") == r.usage.completion_tokens
    assert moved("apd_request_latency_seconds_count") == 1 and moved("apd_time_to_first_token_seconds_count") == 1
    assert moved("apd_engine_steps_total") >= 1
    assert after[("apd_slots", frozenset())] == 8 and after[("apd_running_requests", frozenset())] == 0
    assert after[("apd_rejected_requests_total", frozenset({("reason", "invalid")}))] >= 1


# --- the small server: queue, disconnect, SIGTERM (last) -----------------------------------------------------

def _long_body(seed, **kw):
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": 64, "temperature": 10.0, "seed": seed, **kw}


def test_disconnect_mid_stream_frees_the_slot(small, long_seed):
    wait_until("the small server idle", lambda: idle(small))
    before = metric(small, "apd_requests_total", finish_reason="cancelled")
    with httpx.Client(base_url=small.url, timeout=30) as h:
        with h.stream("POST", "/v1/completions", json=_long_body(long_seed, stream=True)) as r:
            assert r.status_code == 200
            next(line for line in r.iter_lines() if line.startswith("data: "))  # decoding has started
    wait_until("the slot freed", lambda: idle(small))
    wait_until("the request counted as cancelled",
               lambda: metric(small, "apd_requests_total", finish_reason="cancelled") == before + 1)
    with pytest.raises(httpx.ReadTimeout):  # a non-streamed request whose client gives up
        httpx.post(small.url + "/v1/completions", json=_long_body(long_seed), timeout=httpx.Timeout(30, read=0.05))
    wait_until("the slot freed", lambda: idle(small))
    wait_until("the request counted as cancelled",
               lambda: metric(small, "apd_requests_total", finish_reason="cancelled") == before + 2)


def test_queue_full_gets_429(small, long_seed):
    wait_until("the small server idle", lambda: idle(small))

    async def burst():
        async with httpx.AsyncClient(base_url=small.url, timeout=60) as h:
            return await asyncio.gather(*(h.post("/v1/completions", json=_long_body(long_seed + i)) for i in range(8)))

    rs = asyncio.run(asyncio.wait_for(burst(), 120))
    codes = [r.status_code for r in rs]
    assert set(codes) == {200, 429}, codes
    for r in rs:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "queue_full" and r.json()["error"]["message"]
    assert metric(small, "apd_rejected_requests_total", reason="queue_full") >= codes.count(429)
    wait_until("the small server idle", lambda: idle(small))


def test_sigterm_drains_then_exits_0(small, long_seed):
    """SIGTERM with one request decoding and one queued: both finish, /health and new requests get
    503 meanwhile, then the process exits with status 0."""
    wait_until("the small server idle", lambda: idle(small))
    results, started = {}, threading.Event()

    def stream(name, seed):
        with httpx.Client(base_url=small.url, timeout=60) as h:
            with h.stream("POST", "/v1/completions", json=_long_body(seed, stream=True)) as r:
                events = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        started.set()
                        events.append(line[len("data: "):])
                results[name] = (r.status_code, events)

    threads = [threading.Thread(target=stream, args=("first", long_seed), daemon=True)]
    threads[0].start()
    assert started.wait(WAIT_S)
    threads.append(threading.Thread(target=stream, args=("queued", long_seed + 1), daemon=True))
    threads[1].start()
    wait_until("the second request queued",
               lambda: httpx.get(small.url + "/health", timeout=30).json()["queue_length"] == 1)
    small.terminate()
    wait_until("/health 503", lambda: httpx.get(small.url + "/health", timeout=30).status_code == 503)
    r = httpx.post(small.url + "/v1/completions", json=_long_body(0), timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive()
    for name in ("first", "queued"):
        status, events = results[name]
        assert status == 200 and events[-1] == "[DONE]", (name, events[-3:])
        assert json.loads(events[-2])["choices"][0]["finish_reason"] in ("stop", "length")
    assert small.wait(WAIT_S) == 0, small.stderr()


def test_drain_timeout_bounds_the_drain(long_seed):
    """--drain-timeout 0: SIGTERM cancels what runs and waits; the decoding stream ends with an
    error event, the queued request gets a 503, and the process still exits with status 0."""
    with ServeProcess(["--max-batch-size", 1, "--policy", SMALL_POLICY, "--drain-timeout", 0]) as srv:
        results, started = {}, threading.Event()

        def post(name, seed):
            with httpx.Client(base_url=srv.url, timeout=60) as h, \
                    h.stream("POST", "/v1/completions", json=_long_body(seed, stream=True)) as r:
                if r.status_code != 200:
                    r.read()
                    results[name] = (r.status_code, r.json())
                    return
                events = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        started.set()
                        events.append(line[len("data: "):])
                results[name] = (200, events)

        threads = [threading.Thread(target=post, args=("running", long_seed), daemon=True)]
        threads[0].start()
        assert started.wait(WAIT_S)
        threads.append(threading.Thread(target=post, args=("queued", long_seed + 1), daemon=True))
        threads[1].start()
        wait_until("the second request queued",
                   lambda: httpx.get(srv.url + "/health", timeout=30).json()["queue_length"] == 1)
        srv.terminate()
        for t in threads:
            t.join(WAIT_S)
            assert not t.is_alive()
        status, events = results["running"]
        assert status == 200 and events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "unavailable", events[-3:]
        status, body = results["queued"]
        assert status == 503 and body["error"]["code"] == "unavailable", body
        assert srv.wait(WAIT_S) == 0, srv.stderr()


def test_tensor_parallel_server(ref):
    """`torchrun --nproc-per-node 2 -m apd_ext serve --tp 2` (gloo on CPU): rank 0 serves, rank 1
    follows its steps; answers equal generate's in one process; SIGTERM to rank 0 drains it, its
    loop's end releases rank 1, and torchrun exits with status 0."""
    with ServeProcess(["--max-batch-size", 2], tp=2) as srv:
        c = client(srv)
        for seed, temperature in ((0, 0.0), (3, 1.0)):
            r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, temperature=temperature, seed=seed)
            assert r.choices[0].text == ref(PROMPT, seed=seed, temperature=temperature)[0]
        chunks = [ch.choices[0].text for ch in c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=64,
                                                                    temperature=0, stream=True)]
        assert "".join(chunks) == ref(PROMPT)[0]
        os.kill(srv.rank_pid(0), signal.SIGTERM)
        assert srv.wait(WAIT_S * 3) == 0, srv.stderr()
