"""`serve`: an OpenAI-compatible HTTP server with continuous batching (apd_ext/serve).

    python -m apd_ext serve                                   # the bundled tiny pair on 127.0.0.1:8000
    python -m apd_ext serve --dllm DREAM_DIR --verifier QWEN_DIR --vocab-size 151936 --port 0
    python -m apd_ext serve --dllm LLADA_DIR --policy threshold    # a dLLM alone (dLLM-only policies)
    torchrun --nproc-per-node 2 -m apd_ext serve --tp 2 ...       # rank 0 serves HTTP, the others follow

Once the engine runs it prints one stdout line, `apd_ext serve: listening on http://HOST:PORT`
(the bound port, also with --port 0). The policy and the shape knobs (--policy, --kv-window,
--max-lookahead, ...) are the server's; --temperature / --top-k / --top-p / --mixture-weight are
the defaults of requests that leave them out; --max-new-tokens caps a request's max_tokens (and is
its default, clipped to the context). SIGTERM or Ctrl-C drains: new requests get 503, those in
flight finish (at most --drain-timeout seconds, then they are cancelled), the process exits 0; a
second signal stops at once.
"""

from __future__ import annotations

import re
import signal
import socket
import sys

import torch

from apd_ext.cli import common, parallel
from apd_ext.cli.common import CliError, finite_float, nonneg_int, positive_int
from apd_ext.decode.config import DecodeConfig

HELP = "an OpenAI-compatible HTTP server (continuous batching; bundled pair or --dllm/--verifier)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
BUNDLED_NAME = "apd-tiny"
TINY_THREADS = 1  # as demo's: the tiny pair runs fastest on one thread


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help=HELP, description=HELP)
    c = p.add_argument_group("models (default: the bundled tiny pair)")
    c.add_argument("--dllm", default=None, help="a Dream or LLaDA checkpoint directory (Hugging Face layout)")
    c.add_argument("--verifier", default=None, help="a Qwen2/Llama checkpoint directory sharing its tokenizer (not "
                   "needed by the dLLM-only policies dllm_fixed and threshold)")
    c.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available with --dllm, "
                   "else cpu)")
    c.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: the checkpoints' own")
    c.add_argument("--vocab-size", type=positive_int, default=None,
                   help="the shared vocabulary when the models' differ (151936 for Dream + Qwen2.5)")
    common.add_threads(p, f"{TINY_THREADS} for the bundled pair, else torch's")
    common.add_knob_flags(p, f"64 with the bundled pair (its answer region), else {DecodeConfig().max_new_tokens}")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0: one the OS picks)")
    s.add_argument("--served-model-name", default=None,
                   help=f"the model name of the API (default: the --dllm directory's name, or {BUNDLED_NAME})")
    s.add_argument("--max-batch-size", type=positive_int, default=8, help="decoding slots (default 8)")
    s.add_argument("--max-queue", type=nonneg_int, default=256,
                   help="requests that may wait for a slot; past it: 429 (default 256)")
    s.add_argument("--context-length", type=positive_int, default=None,
                   help="prompt + max_tokens of any request (default: the models' maximum length)")
    s.add_argument("--drain-timeout", type=_seconds, default=30.0,
                   help="on SIGTERM, seconds in-flight requests get to finish (default 30)")
    s.add_argument("--backend", default="auto", choices=BACKENDS, help="the sampling ops' backend (default auto)")
    s.add_argument("--no-cuda-graphs", action="store_true", help="run the steady step eagerly on CUDA")
    s.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default warning)")
    parallel.add_tp(p)


def _port(text: str) -> int:
    value = nonneg_int(text)
    if value > 65535:
        import argparse

        raise argparse.ArgumentTypeError(f"takes a port in [0, 65535], got {value}")
    return value


def _seconds(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        import argparse

        raise argparse.ArgumentTypeError(f"takes seconds >= 0, got {text}")
    return value


def run(args) -> None:
    from apd_ext.serve.engine import SERVED_POLICIES

    cfg, bundled = _config(args)
    if cfg.policy not in SERVED_POLICIES:
        raise CliError(f"--policy {cfg.policy}: not served (the server runs {', '.join(SERVED_POLICIES)})")
    device = common.resolve_device(args.device, "cuda" if torch.cuda.is_available() and not bundled else "cpu")
    common.set_threads(args, TINY_THREADS if bundled else None)
    tp = parallel.setup(args, device)
    sock = _listen_rank0(args, tp)
    try:
        pair = _load(args, cfg, bundled, tp.device if tp else device, tp)
        engine = _engine(args, cfg, pair, tp)
        if sock is None:  # a follower rank: replay rank 0's steps until its loop stops
            _ignore_signals()
            engine.follow()
            return
        try:
            _serve(args, engine, pair, bundled, sock)
        finally:
            _stop(engine)
    finally:
        if sock is not None:
            sock.close()


def _listen_rank0(args, tp):
    """Rank 0's listening socket (None on the other ranks); under --tp a failure to listen ends
    every rank alike (TensorParallel.check_all) rather than leaving the others waiting."""
    if tp is None:
        return _listen(args.host, args.port)
    sock, error = None, None
    if tp.rank == 0:
        try:
            sock = _listen(args.host, args.port)
        except CliError as e:
            error = e
    tp.check_all(error, "listening")
    return sock


def _ignore_signals() -> None:
    """Follower ranks ignore SIGTERM / SIGINT (torchrun forwards them to every rank): rank 0 drains
    and its loop's end releases them; dying first would break rank 0's collectives mid-drain."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _stop(engine) -> None:
    """Make sure the engine's loop has stopped, however serving ended (under --tp the loop's end
    releases the follower ranks from Engine.follow, as does the shutdown of a loop never started)."""
    engine.shutdown(drain=False, timeout=10)


def _config(args) -> tuple[DecodeConfig, bool]:
    """The server's DecodeConfig (on TASK_CONFIG for the bundled pair) and whether the pair is the
    bundled one; the source flags checked before any work."""
    from apd_ext.loading import check_sources

    bundled = args.dllm is None and args.verifier is None
    if bundled:
        from apd_ext.tiny.evaluate import TASK_CONFIG

        base = TASK_CONFIG
    else:
        base = DecodeConfig()
    cfg = common.config_from_args(args, base)
    try:
        check_sources(args.dllm, args.verifier, cfg.policy)
    except ValueError as e:
        raise CliError(_flags(str(e))) from None
    for flag, path in (("--dllm", args.dllm), ("--verifier", args.verifier)):
        if path is not None:
            common.check_dir(path, flag, ("config.json",))
    return cfg, bundled


def _flags(message: str) -> str:
    """load_pair's argument names as the command's flags ("dllm=x" -> "--dllm x", "dllm=" -> "--dllm")."""
    return re.sub(r"\b(dllm|verifier)=(?=\s|$)", r"--\1", re.sub(r"\b(dllm|verifier)=(?=\S)", r"--\1 ", message))


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: the OS picks), bound before the models load so
    that a taken port fails at once."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise CliError(f"--host {host}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise CliError(f"--host {host} --port {port}: cannot listen ({e.strerror or e})", 1) from None
    sock.set_inheritable(True)
    return sock


def _load(args, cfg: DecodeConfig, bundled: bool, device: torch.device, tp):
    from apd_ext.loading import load_pair

    replicate = parallel.VERIFIER_MODES[args.verifier_tp]
    return load_pair(args.dllm, args.verifier, policy=cfg.policy, device=device, dtype=DTYPES.get(args.dtype),
                     vocab_size=args.vocab_size, tp=tp, replicate=replicate)


def _engine(args, cfg: DecodeConfig, pair, tp):
    from apd_ext.serve.engine import Engine

    engine, error = None, None
    try:
        engine = Engine(pair.dllm, pair.verifier, cfg, slots=args.max_batch_size, context_length=args.context_length,
                        vocab_size=pair.vocab_size, eos_token_id=list(pair.eos_token_ids), backend=args.backend,
                        cuda_graphs=False if args.no_cuda_graphs else None, max_queue=args.max_queue)
    except ValueError as e:
        error = CliError(str(e).replace("context_length", "--context-length"), 1)
    if tp is not None:
        tp.check_all(error, "starting the engine")
    if error is not None:
        raise error
    return engine


def _serve(args, engine, pair, bundled: bool, sock: socket.socket) -> None:
    import uvicorn

    from apd_ext.serve.app import create_app, draining_server

    name = args.served_model_name or (BUNDLED_NAME if bundled else pair.dllm_dir.name)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def ready() -> None:
        sys.stdout.write(f"apd_ext serve: listening on {url}\n")
        sys.stdout.flush()

    app = create_app(engine, pair.tokenizer, model_name=name, chat_prompt=pair.chat_prompt,
                     drain_timeout=args.drain_timeout, on_ready=ready)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5, timeout_keep_alive=5)
    draining_server(config, app).run(sockets=[sock])
