"""Command line of apd_ext: a thin layer over the library, one module per command.

    python -m apd_ext demo                    # APD on a held-out problem with the bundled tiny pair
    python -m apd_ext demo --synthetic        # the fused ops on synthetic logits (no models)
    python -m apd_ext generate --prompt "Tom has 5 coins. ... now?"   # streamed, in colour
    python -m apd_ext generate --dllm DREAM_DIR --verifier QWEN_DIR --vocab-size 151936 --prompt "..."
    python -m apd_ext eval-tiny --seed 0 --num-problems 50 --json out.json [--policies ar dllm_fixed:k=1 ...]
    python -m apd_ext sweep --num-problems 50 --out bench/results/sweep_tiny   # CSV + PNG
    python -m apd_ext serve --port 8000       # an OpenAI-compatible HTTP server (continuous batching)
    torchrun --nproc-per-node 2 -m apd_ext generate --tp 2    # tensor parallel (also demo, eval-tiny, serve)

Decoding knobs default to DecodeConfig's (apd_ext/decode/config.py: apd, mixture_weight 0.7,
kv_window 16, max_lookahead 100, greedy); a policy spec is `policy[:knob=value,...]` with
DecodeConfig's field names ("apd:mixture_weight=0.9,kv_window=none", "dllm_fixed:k=4",
"diffusion:diffusion_steps=16", "threshold:threshold=0.9" (Fast-dLLM's confidence-threshold
decoding; block_length=32 for its blocks), "ar"), and the knob flags override it. With the bundled pair,
max_new_tokens is 64 (its answer region) and torch runs one thread unless --threads says otherwise.

Errors end in one `error: ...` line on stderr (exit status 2: a bad argument, found before any
work; 1: a failure while working); Ctrl-C in one `interrupted: ...` line (130).
"""

from __future__ import annotations

import sys

from apd_ext.cli import common, demo, eval_tiny, generate, serve, sweep
from apd_ext.cli.common import CliError, Interrupted, fail
from apd_ext.parallel import TensorParallelError

COMMANDS = {"demo": demo, "generate": generate, "eval-tiny": eval_tiny, "sweep": sweep, "serve": serve}


def parser() -> common.ArgumentParser:
    p = common.ArgumentParser(prog=common.PROG, description=__doc__.splitlines()[0])
    # --threads before the command is accepted too (the command's own --threads wins)
    p.add_argument("--threads", dest="global_threads", type=common.positive_int, default=None,
                   help="CPU threads of torch (each command also takes --threads)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}",
                           parser_class=common.ArgumentParser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return p


def main(argv=None) -> None:
    """Run a command; user errors and Ctrl-C end in one line and a SystemExit (common.Exit)."""
    try:
        args = parser().parse_args(argv)
        COMMANDS[args.command].run(args)
    except CliError as e:
        raise fail(f"error: {e}", e.status) from None
    except TensorParallelError as e:  # raised alike on every rank (TensorParallel.check_all)
        raise fail(f"error: {e}", 1, every_rank_has_it=True) from None
    except (ValueError, OSError) as e:  # bad values met while working: model files, lengths, vocabulary
        raise fail(f"error: {_message(e)}", 1) from None
    except Interrupted as e:
        raise fail(f"interrupted: {e}", 130) from None
    except KeyboardInterrupt:
        raise fail("interrupted: stopped by Ctrl-C", 130) from None


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:  # e.g. "No such file or directory: x.json"
        return f"{e.strerror or type(e).__name__}: {e.filename}"
    return str(e) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
