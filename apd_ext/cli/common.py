"""What the commands share: the argument parser that fails in one line, argument types that reject
bad values when the command line is read, input and output path checks done before any work,
thread and device choice, the knob flags and how they build a DecodeConfig.

Every user error ends the process with one stderr line starting `error: ` (exit status 2 for a bad
argument, 1 for a failure while working), Ctrl-C with one line starting `interrupted: ` (130).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from apd_ext.decode.config import DecodeConfig

PROG = "python -m apd_ext"
RANK = 0  # this process's tensor-parallel rank (cli/parallel.py sets it): only rank 0 prints shared errors


class CliError(Exception):
    """A user error: main() prints `error: <message>` on one stderr line and exits with `status`
    (2: a bad argument, found before any work; 1: a failure while working)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


class Interrupted(Exception):
    """Ctrl-C, with what was kept: main() prints `interrupted: <message>` and exits with 130."""


class Exit(SystemExit):
    """The SystemExit main() raises: `code` is the exit status, str() the line it printed (so that a
    caller in the same process, e.g. a test, sees the message as well as the status)."""

    def __init__(self, status: int, line: str):
        super().__init__(status)
        self.line = line

    def __str__(self) -> str:
        return self.line


def fail(line: str, status: int, every_rank_has_it: bool = False) -> Exit:
    """Print `line` on stderr; the Exit to raise. Under --tp, ranks other than 0 prefix their rank,
    and print nothing for an error every rank raised alike (every_rank_has_it: rank 0 reports it)."""
    if RANK != 0:
        if every_rank_has_it:
            return Exit(status, line)
        line = f"[rank {RANK}] {line}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    return Exit(status, line)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one `error: ...` line instead of the usage text (exit status 2)."""

    def error(self, message: str):
        raise fail(f"error: {message} (see: {self.prog} --help)", 2)


# --- argument types (argparse reports their ArgumentTypeError as "argument --x: <message>") -----

def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def nonneg_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"takes an integer >= {low}, got {value}")
    return value


def int_or_none(text: str):
    """A positive integer, or "none" (returned as the string "none": the flag was given)."""
    if text.strip().lower() == "none":
        return "none"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"takes an integer >= 1 or none, got {text!r}") from None


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"takes a number in [0, 1], got {text}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"takes a finite number, got {text}")
    return value


# --- paths, checked before any work ----------------------------------------------------------------

def check_dir(path, flag: str, must_hold: tuple[str, ...] = ()) -> Path:
    """An existing directory (holding the entries `must_hold`), or CliError naming the flag; an
    empty path is refused (Path("") would be the current directory)."""
    if not str(path).strip():
        raise CliError(f"{flag} {path!r}: an empty path (it takes a directory)")
    p = Path(path)
    if not p.is_dir():
        raise CliError(f"{flag} {path}: {'not a directory' if p.exists() else 'no such directory'}")
    for name in must_hold:
        if not (p / name).exists():
            raise CliError(f"{flag} {path}: no {name} in it (it takes a directory with {', '.join(must_hold)})")
    return p


def check_file(path, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{flag} {path}: {'not a file' if p.exists() else 'no such file'}")
    if not os.access(p, os.R_OK):
        raise CliError(f"{flag} {path}: not readable")
    return p


def check_writable(path, flag: str) -> Path:
    """A file this process can create or overwrite: its directory exists and is writable, and the
    path is not a directory. Checked before the work, so that a typo does not waste a run."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise CliError(f"{flag} {path}: is a directory (it takes a file path)")
    if not parent.is_dir():
        raise CliError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise CliError(f"{flag} {path}: not writable")
    return p


def check_text(text: str | None, flag: str) -> None:
    """Text from the command line must be valid UTF-8 (Python keeps undecodable argv bytes as lone
    surrogates, which no tokenizer can encode)."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = text[e.start:e.end].encode("utf-8", "surrogateescape")
        raise CliError(f"{flag}: not valid UTF-8 text (bytes {raw!r} at character {e.start})") from None


# --- threads and devices ---------------------------------------------------------------------------

def add_threads(p, default_text: str) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help=f"CPU threads of torch (default: {default_text})")


def set_threads(args, default: int | None) -> int:
    """Apply --threads (else `default`; None keeps torch's); returns the count in use."""
    threads = args.threads or getattr(args, "global_threads", None) or default
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def resolve_device(text: str | None, default: str) -> torch.device:
    """--device as a torch.device: cpu, or cuda[:N] when CUDA is available."""
    text = default if text is None else text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {text}: not a device (it takes cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise CliError(f"--device {text}: unsupported (it takes cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device {text}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CliError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


# --- knob flags -> DecodeConfig -------------------------------------------------------------------

KNOB_FLAGS = ("max_new_tokens", "mixture_weight", "kv_window", "max_lookahead", "temperature", "top_k", "top_p")


def add_knob_flags(p, max_new_tokens_default: str) -> None:
    """--policy and the knob flags, which override the spec's values (defaults: DecodeConfig's)."""
    d = DecodeConfig()
    p.add_argument("--policy", default="apd", help="a policy spec, policy[:knob=value,...], knob names as "
                   "DecodeConfig's fields: apd, apd:mixture_weight=0.9,kv_window=none, dllm_fixed:k=1, "
                   "diffusion:diffusion_steps=16, threshold:threshold=0.9[,block_length=32], ar, and on a "
                   "block-diffusion dLLM fast_dllm_v2[:threshold=0.9,small_block_size=8] (Fast-dLLM v2's own "
                   "decoding) or sdar[:denoising_steps=4,remasking=low_confidence_static] (SDAR's) "
                   "(default: apd with the library's defaults)")
    k = p.add_argument_group("knobs (override the --policy spec; defaults: DecodeConfig's)")
    k.add_argument("--max-new-tokens", type=positive_int, default=None, help=f"default {max_new_tokens_default}")
    k.add_argument("--mixture-weight", type=finite_float, default=None, help=f"in [0, 1] ({d.mixture_weight})")
    k.add_argument("--kv-window", type=int_or_none, default=None,
                   help=f"R, or none: no dLLM cache ({d.kv_window})")
    k.add_argument("--max-lookahead", type=int_or_none, default=None, help=f"M, or none ({d.max_lookahead})")
    k.add_argument("--temperature", type=finite_float, default=None, help="0: greedy (the default)")
    k.add_argument("--top-k", type=nonneg_int, default=None,
                   help="0: no filter (default: 0, or 50 with --authors-compat)")
    k.add_argument("--top-p", type=finite_float, default=None, help=f"in (0, 1] ({d.top_p:g})")
    k.add_argument("--authors-compat", action="store_true", help="the authors' released semantics")


def knob_overrides(args) -> dict:
    """The knob flags that were given, as DecodeConfig fields."""
    out = {}
    for name in KNOB_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = None if value == "none" else value
    if getattr(args, "authors_compat", False):
        out["authors_compat"] = True
    return out


def config_from_args(args, base: DecodeConfig) -> DecodeConfig:
    """--policy parsed onto `base`, then the knob flags; CliError (status 2) naming the knob."""
    try:
        cfg = DecodeConfig.from_spec(args.policy, base=base)
        over = knob_overrides(args)
        unread = sorted(set(over) - set(cfg.knobs))
        if unread:
            raise ValueError(f"policy {cfg.policy} does not read {', '.join(unread)}; it reads: {', '.join(cfg.knobs)}")
        return cfg.replace(**over)
    except (ValueError, TypeError) as e:
        raise CliError(str(e)) from None


def check_policies(specs, base: DecodeConfig) -> list[DecodeConfig]:
    """Each spec parsed onto `base`; CliError naming the spec for the first bad one."""
    out = []
    for spec in specs:
        try:
            out.append(DecodeConfig.from_spec(spec, base=base))
        except (ValueError, TypeError) as e:
            raise CliError(f"--policies: {e}") from None
    return out
