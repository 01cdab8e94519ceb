"""Serving: `python -m apd_ext serve`, an OpenAI-compatible HTTP server (app.py) over a
continuous-batching engine (engine.py) that any Python program can drive without HTTP.

    from apd_ext.serve import Engine, Request
    engine = Engine(dllm, verifier, config, slots=8); engine.start()
    rid = engine.submit(Request(prompt=ids, max_tokens=64, seed=0), on_event)

launch.py starts a server process from Python and reads its URL (scripts, tests, bench_serve.py).
"""

from apd_ext.serve.engine import Engine
from apd_ext.serve.request import EngineClosed, Event, QueueFull, Request, RequestError

__all__ = ["Engine", "Request", "Event", "RequestError", "QueueFull", "EngineClosed"]
