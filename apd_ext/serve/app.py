"""The OpenAI-compatible HTTP API over an Engine (apd_ext/serve/engine.py), as a FastAPI app.

    app = create_app(engine, tokenizer, model_name="apd-tiny", chat_prompt=pair.chat_prompt)
    # POST /v1/completions, POST /v1/chat/completions (stream=true: server-sent events)
    # GET /v1/models, GET /health, GET /metrics

Threads. Handlers run on the event loop and talk to the engine only through submit / cancel /
stats / shutdown (all thread-safe). The engine calls each request's on_event on its own thread;
the callback hops the Event into the request's asyncio.Queue with loop.call_soon_threadsafe.

A request's life (`Generation`): parsed and checked (protocol.py; 400 naming the field), its
prompt tokenised (chat: the pair's chat template), submitted (QueueFull: 429; the engine closed:
503; the engine's RequestError: 400 naming the field), then each Event's tokens are detokenised
incrementally and cut at the first stop string (detok.py; the request is then cancelled in the
engine). Non-streamed responses wait for the finish; streamed ones send one SSE chunk per step
that produced text. A client that goes away cancels its request, which frees its slot at the
engine's next step boundary. A request that fails in the engine fails alone: a 500 (or, once a
stream has started, an error event followed by [DONE]).

Draining (`drain`, called on SIGTERM by apd_ext/cli/serve.py): new requests get 503, /health
turns 503, the engine finishes what it holds (bounded by drain_timeout; what is left then is
cancelled and reported to its client as a 503 error), then the caller stops the HTTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from apd_ext.serve import protocol
from apd_ext.serve.detok import Detokenizer, StopMatcher
from apd_ext.serve.request import EngineClosed, Event, QueueFull, Request, RequestError
from apd_ext.serve.metrics import CONTENT_TYPE, ServerMetrics
from apd_ext.serve.protocol import ApiError, GenerationRequest, bad, sse

log = logging.getLogger("apd_ext.serve")

HANDLER_GRACE_S = 5.0      # after the engine drained: how long handlers get to send their last bytes
MAX_BODY_BYTES = 16 * 2**20


@dataclass
class ServerState:
    """What the handlers share. chat_prompt: messages -> prompt text (Pair.chat_prompt), or None
    (chat completions then answer 400). active: the requests in flight (for draining)."""

    engine: object
    tokenizer: object
    model_name: str
    chat_prompt: object = None
    drain_timeout: float = 30.0
    metrics: ServerMetrics | None = None
    draining: bool = False
    drained: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    active: set = field(default_factory=set)
    created: int = field(default_factory=lambda: int(time.time()))

    def engine_alive(self) -> bool:
        return self.engine is not None and self.engine.alive()


# --- one request --------------------------------------------------------------------------------

class ClientGone(Exception):
    """The client disconnected while its request was waiting."""


_GONE = object()  # put in a Generation's queue by _watching when the client disconnects


class Generation:
    """One request in flight: submits it to the engine, turns its Events into (text, finish_reason)
    updates, and cancels it in the engine when it ends early (stop string, client gone).

    finish_reason of an update: None while running, "stop" (EOS or a stop string), "length";
    an engine failure raises ApiError(500), a request the engine cancelled on its own (shutdown)
    ApiError(503)."""

    def __init__(self, state: ServerState, gen: GenerationRequest, prompt_ids: list[int], max_tokens: int):
        self.state, self.gen = state, gen
        self.prompt_ids, self.max_tokens = prompt_ids, max_tokens
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.detok = Detokenizer(state.tokenizer)
        self.stops = StopMatcher(gen.stop)
        self.rid: int | None = None
        self.finish_reason: str | None = None  # set once, when the request ends for the server
        self.completion_tokens = 0
        self.text_chars = 0  # characters of text returned so far
        self.t0 = time.perf_counter()
        self.first_token_s: float | None = None

    def submit(self) -> None:
        """Queue the request in the engine; ApiError 400 / 429 / 503 when it is refused."""
        st, g = self.state, self.gen
        req = Request(prompt=self.prompt_ids, max_tokens=self.max_tokens, temperature=g.temperature, top_k=g.top_k,
                      top_p=g.top_p, mixture_weight=g.mixture_weight, seed=g.seed)
        loop, metrics = st.loop, st.metrics

        def on_event(ev: Event) -> None:  # the engine thread
            if metrics is not None:
                metrics.observe_event(ev)
            loop.call_soon_threadsafe(self.events.put_nowait, ev)

        try:
            self.rid = st.engine.submit(req, on_event)
        except RequestError as e:
            raise bad(self._param(e.field), str(e)) from None
        except EngineClosed:
            raise unavailable() from None
        except QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}; retry later", type="rate_limit_error",
                           code="queue_full") from None
        self.t0 = time.perf_counter()
        st.active.add(self)

    def _param(self, name: str) -> str:
        """The request field an engine RequestError field stands for."""
        if name == "prompt" and self.gen.chat:
            return "messages"
        if name == "max_tokens":
            return self.gen.max_tokens_field
        return name

    async def next_update(self) -> tuple[str, str | None]:
        """The next (text, finish_reason); ClientGone when the client went away (see _watching)."""
        while True:
            ev = await self.events.get()
            if ev is _GONE:
                raise ClientGone()
            update = self._apply(ev)
            if update is not None:
                return update

    def _apply(self, ev: Event) -> tuple[str, str | None] | None:
        """An Event as (text, finish_reason), or None when it brings nothing (no text, not final)."""
        if self.finish_reason is not None:
            return None
        self.completion_tokens = ev.generated_tokens
        if ev.finish_reason == "error":
            self.end("error")
            raise ApiError(500, f"the request failed in the engine: {ev.error}", code="engine_error")
        if ev.finish_reason == "cancelled":  # not ours (ours end the request first): the engine shut down
            self.end("cancelled")
            raise unavailable(ev.error or "the server shut down before the request finished")
        if ev.tokens and self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.t0
        final = ev.finish_reason is not None
        text = self.detok.push(ev.tokens) + (self.detok.flush() if final else "")
        text, stopped = self.stops.push(text, final=final)
        self.text_chars += len(text)
        if stopped:  # the tokens up to the one that completed the stop string (as vLLM counts them)
            self.completion_tokens = self.detok.tokens_for(self.text_chars + len(self.stops.matched))
            self.end("stop")
            return text, "stop"
        if final:
            self.end(ev.finish_reason)
            return text, ev.finish_reason
        return (text, None) if text else None

    def end(self, reason: str) -> None:
        """The request is over for the server (stop, length, cancelled, error): cancel it in the
        engine if it still runs, count it, forget it. Idempotent."""
        if self.finish_reason is not None:
            return
        self.finish_reason = reason
        if reason in ("stop", "cancelled") and self.rid is not None:
            self.state.engine.cancel(self.rid)  # a no-op once the engine finished it
        self.state.active.discard(self)
        if self.state.metrics is not None:
            self.state.metrics.finished(reason, len(self.prompt_ids), time.perf_counter() - self.t0,
                                        self.first_token_s)

    def abort(self, message: str) -> None:
        """End a request whose Events stopped coming (the engine stopped): its waiter gets a 503."""
        self.state.loop.call_soon(self.events.put_nowait, Event(self.rid if self.rid is not None else -1, [],
                                                                "cancelled", message))

    def usage(self) -> dict:
        return protocol.usage(len(self.prompt_ids), self.completion_tokens)


def unavailable(message: str = "the server is shutting down") -> ApiError:
    return ApiError(503, message, type="server_error", code="unavailable")


# --- handlers --------------------------------------------------------------------------------------

async def _body(request: HttpRequest):
    """The JSON body; 413 past MAX_BODY_BYTES (read no further), 400 when it is not JSON."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return protocol.parse_json(b"".join(chunks))


def _too_large() -> ApiError:
    return ApiError(413, f"the request body exceeds {MAX_BODY_BYTES // 2**20} MiB", code="request_too_large")


def _prompt_ids(state: ServerState, gen: GenerationRequest) -> list[int]:
    """The prompt's token ids (chat: the chat template over the messages)."""
    if gen.prompt_ids is not None:
        return gen.prompt_ids
    if gen.chat:
        if state.chat_prompt is None:
            raise bad("messages", "this model has no chat template: use /v1/completions")
        try:
            text = state.chat_prompt(gen.messages)
        except ValueError as e:
            raise bad("messages", str(e)) from None
    else:
        text = gen.prompt
    ids = state.tokenizer.encode(text)
    if not ids:
        raise bad("messages" if gen.chat else "prompt", "the prompt encodes to no tokens")
    return ids


def _max_tokens(state: ServerState, gen: GenerationRequest, n_prompt: int) -> int:
    """The request's max_tokens, or the default: the server's max_new_tokens, clipped to the room the
    context leaves after the prompt."""
    if gen.max_tokens is not None:
        return gen.max_tokens
    engine = state.engine
    room = engine.L - n_prompt
    if room < 1:
        raise bad("messages" if gen.chat else "prompt",
                  f"the prompt ({n_prompt} tokens) leaves no room in the context length {engine.L}")
    return min(engine.config.max_new_tokens, room)


async def _generate(state: ServerState, request: HttpRequest, chat: bool):
    """POST /v1/completions and /v1/chat/completions."""
    try:
        if state.draining:
            raise unavailable()
        gen = (protocol.parse_chat if chat else protocol.parse_completion)(await _body(request))
        if gen.model is not None and gen.model != state.model_name:
            raise ApiError(404, f"the model {gen.model!r} does not exist; this server serves {state.model_name!r}",
                           "model", code="model_not_found")
        ids = _prompt_ids(state, gen)
        run = Generation(state, gen, ids, _max_tokens(state, gen, len(ids)))
        run.submit()
    except ApiError as e:
        _count_rejected(state, e.status)
        raise
    shape = protocol.Shape(chat=chat, id=protocol.new_id(chat), model=state.model_name)
    streaming = False
    async with _watching(request, run):
        try:  # the first update before any byte is sent: an early failure is a proper error status
            first = await run.next_update()
            if not gen.stream:
                return await _collect(run, shape, first)
            streaming = True
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        finally:
            if not streaming:
                run.end("cancelled")  # no-op once it ended (finished, failed)
    return StreamingResponse(_stream(run, shape, first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@contextlib.asynccontextmanager
async def _watching(request: HttpRequest, run: Generation):
    """While the body of the `with` waits for the engine, a task reads the connection's ASGI
    messages; an http.disconnect (the client went away) puts _GONE in the request's queue, so that
    next_update raises ClientGone. Streamed responses leave it before the first byte: from then on
    Starlette's StreamingResponse watches the connection and cancels the body generator."""
    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        run.events.put_nowait(_GONE)

    task = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _count_rejected(state: ServerState, status: int) -> None:
    if state.metrics is None:
        return
    reason = {429: "queue_full", 503: "unavailable"}.get(status, "invalid" if 400 <= status < 500 else None)
    if reason:
        state.metrics.rejected.labels(reason).inc()


async def _collect(run: Generation, shape: protocol.Shape, first) -> JSONResponse:
    """The non-streamed response: every update's text, joined."""
    parts, finish = [first[0]], first[1]
    while finish is None:
        text, finish = await run.next_update()
        parts.append(text)
    return JSONResponse(shape.response("".join(parts), finish, run.usage()))


async def _stream(run: Generation, shape: protocol.Shape, first):
    """The SSE body: a role chunk (chat), one chunk per update with text, the finish chunk, the
    usage chunk (stream_options.include_usage), [DONE]. The client going away cancels this
    generator (Starlette), whose `finally` cancels the request in the engine."""
    with_usage = run.gen.include_usage
    try:
        if shape.chat:
            yield sse(shape.chunk("", role=True, with_usage=with_usage))
        text, finish = first
        while True:
            if text or finish is not None:
                yield sse(shape.chunk(text, finish, with_usage=with_usage))
            if finish is not None:
                break
            text, finish = await run.next_update()
        if with_usage:
            yield sse(shape.usage_chunk(run.usage()))
    except ApiError as e:  # the stream has started: the error goes as an event
        yield sse(e.body())
    except ClientGone:  # a disconnect _watching saw just before the stream started
        return
    finally:
        run.end("cancelled")  # no-op after a normal finish
    yield sse("[DONE]")


# --- draining ------------------------------------------------------------------------------------------

async def drain(app: FastAPI) -> bool:
    """Stop taking requests (503), let the engine finish what it holds within drain_timeout (then it
    cancels the rest), give the handlers HANDLER_GRACE_S to send their last bytes, and abort any
    still waiting. Returns whether the engine finished everything in time. Idempotent."""
    st: ServerState = app.state.serve
    if st.drained:
        return True
    st.draining = True
    ok = await asyncio.to_thread(st.engine.shutdown, True, st.drain_timeout)
    deadline = time.monotonic() + HANDLER_GRACE_S
    while st.active and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    for run in list(st.active):
        run.abort("the server shut down before the request finished")
    st.drained = True
    return ok


# --- the app --------------------------------------------------------------------------------------------

def create_app(engine, tokenizer, *, model_name: str, chat_prompt=None, drain_timeout: float = 30.0,
               on_ready=None) -> FastAPI:
    """The FastAPI app over `engine` (started by the app's lifespan, drained when it ends).

    tokenizer: encode(text) -> ids, decode(ids) -> text (the pair's); model_name: the name
    /v1/models lists and requests must use (or leave out); chat_prompt: messages -> prompt text
    (Pair.chat_prompt; None: no chat completions); drain_timeout: seconds the engine gets to
    finish its requests when draining; on_ready: called once the engine runs (the CLI prints its
    `listening on` line there)."""
    state = ServerState(engine=engine, tokenizer=tokenizer, model_name=model_name, chat_prompt=chat_prompt,
                        drain_timeout=drain_timeout)
    state.metrics = ServerMetrics(engine.stats, lambda: state.draining)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.loop = asyncio.get_running_loop()
        engine.start()
        if on_ready is not None:
            on_ready()
        yield
        await drain(app)

    app = FastAPI(title="apd_ext serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, e: StarletteHTTPException):
        err = ApiError(e.status_code, str(e.detail), type="invalid_request_error" if e.status_code < 500 else None)
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_request, e: Exception):  # a bug: still an OpenAI-shaped 500 (and logged)
        log.exception("unexpected error in a handler")
        return JSONResponse(ApiError(500, f"internal error: {type(e).__name__}: {e}").body(), status_code=500)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        return await _generate(state, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        return await _generate(state, request, chat=True)

    @app.get("/v1/models")
    async def models():
        card = {"id": model_name, "object": "model", "created": state.created, "owned_by": "apd_ext",
                "max_model_len": engine.L}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health():
        stats = engine.stats()
        up = state.engine_alive() and not state.draining
        body = {"status": "ok" if up else ("draining" if state.draining else "stopped"), **stats}
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    return app


def draining_server(config, app: FastAPI):
    """A uvicorn.Server (uvicorn.Config `config` over `app`) whose SIGTERM / SIGINT drains the app
    (`drain`) before it stops: the socket stays open meanwhile, so new requests get a 503 rather
    than a refused connection. A second signal stops at once (the engine cancels what it holds).
    The signal is not re-raised after the shutdown (uvicorn's own handler does that, which would
    end the process by the signal), so a drained server exits with status 0."""
    import uvicorn

    engine = app.state.serve.engine

    class DrainingServer(uvicorn.Server):
        draining = False

        def handle_exit(self, sig, frame) -> None:  # the signal handler (main thread: the loop's)
            loop = app.state.serve.loop
            if self.draining or loop is None:  # a second signal, or one before startup: stop now
                self.force_exit = self.draining
                self.should_exit = True
                threading.Thread(target=engine.shutdown, kwargs={"drain": False, "timeout": 0}, daemon=True).start()
                return
            self.draining = True
            loop.call_soon_threadsafe(self._start_drain)

        def _start_drain(self) -> None:
            self._drain_task = asyncio.ensure_future(self._drain())

        async def _drain(self) -> None:
            try:
                await drain(app)
            finally:
                self.should_exit = True

    return DrainingServer(config)
