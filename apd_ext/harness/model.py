"""The lm-evaluation-harness model "apd": APD and every baseline policy of apd_ext.generate behind
the harness's LM interface (generate_until).

    lm_eval --model apd --tasks apd_tiny_arith                        # the bundled pair, APD defaults
    lm_eval --model apd --model_args policy=dllm_fixed,k=1 --tasks apd_tiny_arith
    lm_eval --model apd --model_args dllm=DIR,verifier=DIR,mixture_weight=0.7,kv_window=16,max_lookahead=100 \\
        --tasks gsm8k --num_fewshot 0 --apply_chat_template --batch_size 8

model_args:
    dllm, verifier: checkpoint directories (Hugging Face layout; a hub id "org/name" is looked up with
        huggingface_hub, the local cache first). Neither: the bundled tiny pair. The dLLM-only
        policies (dllm_fixed, threshold, diffusion, fast_dllm_v2, sdar) run with dllm= alone (e.g.
        LLaDA, SDAR). A block-diffusion dLLM (Fast-dLLM v2, SDAR) loads like any other:
        dllm=Fast_dLLM_v2_7B,verifier=Qwen2.5-0.5B-Instruct,vocab_size=151936 (APD) or
        dllm=SDAR-8B-Chat,policy=sdar (its own decoding).
    every DecodeConfig field (policy, max_new_tokens, mixture_weight, kv_window, max_lookahead,
        temperature, top_k, top_p, k, diffusion_steps, diffusion_alg, authors_compat, threshold,
        block_length, small_block_size, denoising_steps, remasking), with the
        Python API's defaults (apd_ext.decode.config); `none` sets an optional knob to None. A knob
        the policy does not read (DecodeConfig.knobs, e.g. mixture_weight with policy=ar) is an error.
    generate's other keywords: seed (an integer in [0, 2^64); request i decodes with seed + i, modulo
        2^64 as generate's seeds wrap; default 0), eos_token_id, vocab_size (the shared vocabulary,
        151936 for Dream + Qwen2.5), backend, cuda_graphs, compile (true/false, 1/0, yes/no);
        canvas_bucket (default 64; 0: off): with CUDA graphs or compile, canvases are rounded up to a
        multiple of it, so that prompts of different lengths share captured graphs (same tokens).
    device (default: the harness's --device when it is usable, else cuda when available, else cpu),
    dtype (float32 / bfloat16 / float16; default the checkpoints' own), threads (CPU threads).
    batch_size / max_batch_size: the harness's; "auto" decodes up to max_batch_size (default 32)
        requests per call.

A request's generation kwargs (the task's, and --gen_kwargs) set the knobs that model_args leave
out: max_gen_toks -> max_new_tokens; do_sample=False -> temperature 0, else temperature / top_k /
top_p as given. A knob given in model_args wins (a warning says so when the task asks otherwise).
A bad value, or a context holding the dLLM's mask token, raises HarnessError naming the request
(its index in the call) and the field. `until` strings that are one special token of the tokenizer
(e.g. "<|im_end|>") end decoding like EOS; every stop string also cuts the returned text.
Requests of one task and one configuration are decoded together, batch_size at a time, longest
first; a row's tokens depend only on its prompt, knobs and seed, so the batch size does not change
the answers.

Statistics per task (`ApdLM.stats`, logged on the "lm_eval.apd_ext" logger after every call):
answers, generated tokens (each answer up to its first EOS, as eval-tiny counts them), dLLM and
verifier forwards per answer (the forwards of the answer's batch), tokens per dLLM forward (per
answer: tokens / the forwards it took part in) and tokens/s (wall time of the decoding calls).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

import torch

try:
    import lm_eval.models  # noqa: F401  (the harness's own models first: lm_eval imports them only into an empty registry)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("apd_ext.harness needs lm-evaluation-harness: pip install 'apd_ext[eval]'") from e

from apd_ext.backends import NAMES as BACKEND_NAMES
from apd_ext.decode.config import DecodeConfig
from apd_ext.decode.driver import generate
from apd_ext.decode.inputs import eos_ids
from apd_ext.decode.steps import STEPS
from apd_ext.loading import Pair, answer_tokens, check_sources, load_pair
from apd_ext.models.config import CheckpointError

# under the harness's logger: its command line formats and shows these lines with its own
log = logging.getLogger("lm_eval.apd_ext")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KNOBS = tuple(f.name for f in dataclasses.fields(DecodeConfig))  # policy and every knob
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
AUTO_BATCH = 32
SEED_RANGE = 2**64  # generate's seeds are 64-bit: request i's seed + i wraps modulo 2^64
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class HarnessError(ValueError):
    """A bad model_arg or request for the "apd" model (the message says which and what it takes)."""


def resolve_checkpoint(name, what: str) -> Path:
    """A local checkpoint directory, or a Hugging Face hub id resolved through huggingface_hub
    (its local cache first; a download when the hub is reachable)."""
    if not str(name).strip():
        raise HarnessError(f"{what}={name!r}: empty (a checkpoint directory or a hub id org/name)")
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise HarnessError(f"{what}={name}: not a directory (a checkpoint directory or a hub id org/name)")
    text = str(name)
    if text.count("/") != 1 or text.startswith(("/", ".", "~")):
        raise HarnessError(f"{what}={name}: no such directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))
    except Exception as e:  # noqa: BLE001 - offline, unknown id, no permission: one message
        raise HarnessError(f"{what}={name}: not a local directory, and the hub id could not be resolved "
                           f"({type(e).__name__}: {e})") from None


def _flag(name: str, value) -> bool:
    """A boolean model_arg: True / False, 1 / 0, or the text true, false, 1, 0, yes, no (any case);
    HarnessError naming `name` for anything else (bool("no") would be True)."""
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE + _FALSE:
        return text in _TRUE
    raise HarnessError(f"{name} must be true or false (1/0, yes/no), got {value!r}")


def _number(name: str, value) -> float:
    """A numeric generation kwarg (a number or its text); HarnessError naming `name` otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise HarnessError(f"generation kwarg {name} must be a number, got {value!r}") from None


def _world_size() -> int:
    """WORLD_SIZE as torchrun / accelerate set it (1 when unset); HarnessError naming it and its
    value when it is not an integer >= 1."""
    text = os.environ.get("WORLD_SIZE")
    if text is None:
        return 1
    try:
        world = int(text)
    except ValueError:
        world = 0
    if world < 1:
        raise HarnessError(f"WORLD_SIZE={text!r} is not a process count (an integer >= 1, as torchrun sets it); "
                           f"unset it to run in one process")
    return world


def _batch_size(value) -> int | None:
    """int >= 1, or None for "auto" ("auto:N" too: N is a re-detection count the harness uses)."""
    if value is None:
        return 1
    if isinstance(value, str) and value.strip().startswith("auto"):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise HarnessError(f"batch_size must be an integer >= 1 or 'auto', got {value!r}") from None
    if n < 1:
        raise HarnessError(f"batch_size must be an integer >= 1 or 'auto', got {value!r}")
    return n


@register_model("apd")
class ApdLM(LM):
    """apd_ext as an lm-evaluation-harness model (see the module docstring for the model_args).

    Attributes: config (the DecodeConfig of the model_args), pair (the apd_ext.loading.Pair loaded
    by load_pair), dllm / verifier (its runners), tok (the apd_ext.tokenizer.HFTokenizer the pair
    shares), stats (task -> statistics dict, summed over calls)."""

    def __init__(self, dllm=None, verifier=None, *, device=None, dtype=None, vocab_size=None, seed=0,
                 eos_token_id=None, backend="auto", cuda_graphs=None, compile=False, canvas_bucket=64, threads=None,
                 batch_size=1, max_batch_size=None, **knobs):
        super().__init__()
        world = _world_size()
        if world > 1:
            raise HarnessError(f"the apd model runs in one process (WORLD_SIZE is {world}): data-parallel and "
                               f"tensor-parallel harness runs are not supported; launch lm_eval once")
        unknown = sorted(set(knobs) - set(KNOBS))
        if unknown:
            raise HarnessError(f"unknown model_args {', '.join(unknown)}; the apd model takes dllm, verifier, device, "
                               f"dtype, vocab_size, seed, eos_token_id, backend, cuda_graphs, compile, canvas_bucket, threads, "
                               f"batch_size, max_batch_size and DecodeConfig's {', '.join(KNOBS)}")
        try:
            self.config = DecodeConfig().replace(**knobs)
        except (TypeError, ValueError) as e:
            raise HarnessError(f"model_args: {e}") from None
        unread = sorted(set(knobs) - {"policy"} - set(self.config.knobs))
        if unread:
            raise HarnessError(f"model_args {', '.join(unread)}: policy {self.config.policy} does not read "
                               f"{'it' if len(unread) == 1 else 'them'}; it reads {', '.join(self.config.knobs)}")
        if type(seed) is not int or not 0 <= seed < SEED_RANGE:
            raise HarnessError(f"seed must be an integer in [0, 2^64), got {seed!r}")
        if dtype is not None and dtype not in DTYPES:
            raise HarnessError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if threads is not None:
            if type(threads) is not int or threads < 1:
                raise HarnessError(f"threads must be an integer >= 1, got {threads!r}")
            torch.set_num_threads(threads)
        if type(canvas_bucket) is not int or canvas_bucket < 0:
            raise HarnessError(f"canvas_bucket must be an integer >= 0 (0: off), got {canvas_bucket!r}")
        self.canvas_bucket = canvas_bucket
        self.explicit = set(knobs)
        self.batch_size = _batch_size(batch_size)
        if max_batch_size is not None and (type(max_batch_size) is not int or max_batch_size < 1):
            raise HarnessError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
        self.max_batch_size = AUTO_BATCH if max_batch_size is None else max_batch_size
        if backend not in BACKEND_NAMES:
            raise HarnessError(f"backend must be one of {', '.join(BACKEND_NAMES)}, got {backend!r}")
        if cuda_graphs not in (None, True, False):
            raise HarnessError(f"cuda_graphs must be true, false or none (auto), got {cuda_graphs!r}")
        self.seed, self.eos_token_id = seed, eos_token_id
        self.generate_kwargs = {"backend": backend, "cuda_graphs": cuda_graphs, "compile": _flag("compile", compile)}
        self._device = self._pick_device(device)
        self._load(self._checkpoints(dllm, verifier, self.config.policy), DTYPES.get(dtype), vocab_size)
        self.stats: dict[str, dict] = {}
        self._warned: set[str] = set()
        log.info("apd model: %s + %s on %s, %s", self.dllm_dir, self.verifier_dir, self._device, self.config.to_spec())

    # ---- set-up ------------------------------------------------------------------------------

    @staticmethod
    def _pick_device(device) -> torch.device:
        """The harness passes --device (default "cuda:0" even on machines without CUDA): a CUDA device
        without CUDA falls back to the CPU with a warning; anything else unusable is an error."""
        if device in (None, ""):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise HarnessError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            log.warning("apd model: device %s asked for, but CUDA is not available: running on the CPU", device)
            return torch.device("cpu")
        if dev.type not in ("cpu", "cuda"):
            raise HarnessError(f"device {device!r}: the apd model runs on cpu or cuda")
        return dev

    @staticmethod
    def _checkpoints(dllm, verifier, policy: str) -> tuple[Path | None, Path | None]:
        """The checkpoint directories (hub ids resolved), after apd_ext.loading's checks of the
        arguments (so that no download starts for model_args that cannot load): (None, None) for
        the bundled pair; a dLLM-only policy may leave the verifier out."""
        try:
            check_sources(dllm, verifier, policy)
        except ValueError as e:
            raise HarnessError(f"model_args: {e}") from None
        return tuple(None if name is None else resolve_checkpoint(name, what)
                     for name, what in ((dllm, "dllm"), (verifier, "verifier")))

    def _load(self, dirs: tuple[Path | None, Path | None], dtype, vocab_size) -> None:
        """The pair through apd_ext.loading.load_pair; its argument errors as HarnessError."""
        try:
            pair = load_pair(*dirs, policy=self.config.policy, device=self._device, dtype=dtype,
                             vocab_size=vocab_size)
        except CheckpointError:  # a file of the checkpoint: the message names it
            raise
        except ValueError as e:
            raise HarnessError(f"model_args: {e}") from None
        self.pair: Pair = pair
        self.dllm, self.verifier, self.tok = pair.dllm, pair.verifier, pair.tokenizer
        self.dllm_dir, self.verifier_dir = pair.dllm_dir, pair.verifier_dir
        self.max_length = min(m.config.max_position_embeddings for m in (self.dllm, self.verifier) if m is not None)
        self.special_tokens = {t.content for t in self.tok.tok.get_added_tokens_decoder().values()}

    # ---- the harness's interface -------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return str(self.dllm_dir).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template:
            return None
        if self.tok.chat_template is None:
            raise HarnessError(f"{self.dllm_dir} has no chat template (tokenizer_config.json / chat_template.jinja): "
                               f"run without --apply_chat_template")
        return self.tok.chat_template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        self.chat_template(True)  # the error above when there is none
        return self.tok.render_chat(chat_history, add_generation_prompt=add_generation_prompt)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(_NO_LIKELIHOOD)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(_NO_LIKELIHOOD)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations of the requests' contexts (each request's args: (context, gen_kwargs))."""
        if not requests:
            return []
        plans = [self._plan(i, req) for i, req in enumerate(requests)]
        groups: dict[tuple, list] = defaultdict(list)
        for plan in plans:
            groups[plan["key"]].append(plan)
        results: list[str | None] = [None] * len(requests)
        bar = _progress(len(requests), disable_tqdm or self.rank != 0)
        call_stats: dict[str, dict] = {}
        try:
            for (task, cfg, stops, eos), members in groups.items():
                members.sort(key=lambda p: -len(p["ids"]))
                size = self.batch_size or self.max_batch_size
                for start in range(0, len(members), size):
                    chunk = members[start: start + size]
                    self._decode(chunk, cfg, list(stops), list(eos), results, call_stats.setdefault(task, _zero()))
                    bar.update(len(chunk))
        finally:
            bar.close()
        for task, s in call_stats.items():
            total = self.stats.setdefault(task, _zero())
            for key in total:
                total[key] += s[key]
            log.info("apd model, task %s: %s", task, format_stats(summarize(s)))
        for req, text in zip(requests, results):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return results

    def summary(self) -> dict[str, dict]:
        """task -> the derived statistics (summarize) of everything decoded so far."""
        return {task: summarize(s) for task, s in self.stats.items()}

    # ---- decoding ----------------------------------------------------------------------------

    def _plan(self, index: int, request) -> dict:
        context, gen_kwargs = request.args[0], (request.args[1] if len(request.args) > 1 else {})
        if not isinstance(context, str):
            raise HarnessError(f"request {index}: the context must be text, got {type(context).__name__}")
        try:
            cfg, stops, eos = self._request_config(gen_kwargs or {})
            ids = self._encode(context, cfg.max_new_tokens)
        except HarnessError as e:
            raise HarnessError(f"request {index}: {e}") from None
        task = getattr(request, "task_name", None) or "?"
        return {"index": index, "ids": ids, "key": (task, cfg, tuple(stops), tuple(eos))}

    def _request_config(self, gen_kwargs: dict) -> tuple[DecodeConfig, list[str], list[int]]:
        """The request's DecodeConfig, its stop strings and the EOS ids generate stops at."""
        if not isinstance(gen_kwargs, dict):
            raise HarnessError(f"generation kwargs must be a dict, got {type(gen_kwargs).__name__}")
        for key in sorted(set(gen_kwargs) - set(GEN_KWARGS)):
            self._warn_once(f"gen:{key}", f"apd model: generation kwarg {key!r} is not used (it takes {', '.join(GEN_KWARGS)})")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if not all(isinstance(s, str) for s in until):
            raise HarnessError(f"`until` must be a string or a list of strings, got {until!r}")
        changes: dict = {}
        if gen_kwargs.get("max_gen_toks") is not None:
            changes["max_new_tokens"] = gen_kwargs["max_gen_toks"]
        if gen_kwargs.get("do_sample") is False:
            changes["temperature"] = 0.0
        elif gen_kwargs.get("temperature") is not None:
            changes["temperature"] = _number("temperature", gen_kwargs["temperature"])
        elif gen_kwargs.get("do_sample") is True and self.config.temperature == 0:
            changes["temperature"] = 1.0
        for key in ("top_k", "top_p"):
            if gen_kwargs.get(key) is not None:
                changes[key] = gen_kwargs[key]
        for key in sorted(set(changes) & self.explicit):  # model_args given by the user win
            if changes.pop(key) != getattr(self.config, key):
                self._warn_once(f"override:{key}", f"apd model: model_args {key}={getattr(self.config, key)!r} "
                                                   f"overrides the task's generation kwargs")
        try:
            cfg = self.config.replace(**changes) if changes else self.config
        except (TypeError, ValueError) as e:
            raise HarnessError(f"generation kwargs {gen_kwargs}: {e}") from None
        return cfg, [s for s in until if s], self._stop_ids(cfg, until)

    def _stop_ids(self, cfg: DecodeConfig, until: list[str]) -> list[int]:
        """The EOS ids for generate: the model's (model_args eos_token_id, else the checkpoints'),
        plus every stop string that is one special token of the tokenizer."""
        extra = [self.tok.tok.token_to_id(s) for s in until if s in self.special_tokens]
        kind = STEPS[cfg.policy]
        try:
            base = eos_ids(self.dllm, self.verifier, self.eos_token_id,
                           both_models=bool(kind.dllm_forwards and kind.verifier_forwards))
        except (TypeError, ValueError) as e:
            raise HarnessError(f"{e} (model_args eos_token_id=ID; e.g. 151645, <|im_end|>, for Dream-Instruct + "
                               f"Qwen2.5-Instruct)") from None
        return base + [t for t in extra if t is not None and t not in base]

    def _encode(self, context: str, max_new_tokens: int) -> list[int]:
        """The context's token ids, cut from the left to fit the models' positions with the answer."""
        ids = self.tok.encode(context)
        room = self.max_length - max_new_tokens
        if room < 1:
            raise HarnessError(f"max_gen_toks / max_new_tokens {max_new_tokens} leaves no room for a prompt in the "
                               f"models' {self.max_length} positions")
        if not ids:
            raise HarnessError("an empty context: the models need at least one prompt token")
        if len(ids) > room:
            self._warn_once("truncate", f"apd model: contexts longer than {room} tokens are cut from the left (the "
                                        f"models hold {self.max_length} positions, {max_new_tokens} for the answer)")
            ids = ids[-room:]
        mask = self.dllm.mask_token_id
        if mask in ids:
            raise HarnessError(f"the context holds the dLLM's mask token "
                               f"{self.tok.decode([mask], skip_special_tokens=False)!r} (id {mask}) at token "
                               f"{ids.index(mask)}: the dLLM would read it as a position to fill")
        return ids

    def _decode(self, chunk: list[dict], cfg: DecodeConfig, stops: list[str], eos: list[int], results: list,
                stats: dict) -> None:
        seeds = [(self.seed + p["index"]) % SEED_RANGE for p in chunk]
        t0 = time.perf_counter()
        rows = [p["ids"] for p in chunk]
        out = generate(self.dllm, self.verifier, rows, cfg, seed=seeds, eos_token_id=eos,
                       vocab_size=self.pair.vocab_size, canvas_length=self._canvas_length(rows, cfg),
                       **self.generate_kwargs)
        wall = time.perf_counter() - t0
        rows = len(chunk)
        for b, p in enumerate(chunk):
            start, n = len(p["ids"]), int(out.num_generated[b])
            gen = answer_tokens(out.sequences[b, start: start + n].tolist(), eos)
            text = self.tok.decode(gen)
            cut = [text.find(s) for s in stops if s in text]
            results[p["index"]] = text[: min(cut)] if cut else text
            stats["tokens"] += len(gen)
        stats["answers"] += rows
        stats["calls"] += 1
        stats["dllm_forwards"] += int(out.stats["dllm_forwards"]) * rows
        stats["verifier_forwards"] += int(out.stats["verifier_forwards"]) * rows
        stats["steps"] += int(out.stats["steps"]) * rows
        stats["wall_s"] += wall

    def _canvas_length(self, rows: list[list[int]], cfg: DecodeConfig) -> int | None:
        """With CUDA graphs or a compiled step (both specialised on the canvas length): the canvas
        rounded up to a multiple of canvas_bucket, so that requests whose prompts differ in length
        replay a few captured graphs instead of capturing one each (same tokens: generate's
        canvas_length). None (the exact length) in eager mode."""
        specialised = self.generate_kwargs["compile"] or (
            self._device.type == "cuda" and self.generate_kwargs["cuda_graphs"] is not False)
        if not self.canvas_bucket or not specialised:
            return None
        need = max(map(len, rows)) + cfg.max_new_tokens
        return min(self.max_length, -(-need // self.canvas_bucket) * self.canvas_bucket)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)


_NO_LIKELIHOOD = ("the apd model decodes (generate_until tasks such as gsm8k or apd_tiny_arith); loglikelihood "
                  "requests (multiple-choice tasks, perplexity) are not supported: APD changes how tokens are "
                  "sampled, not the models' likelihoods. Use the hf model for likelihood tasks.")


def _zero() -> dict:
    return dict.fromkeys(("answers", "calls", "tokens", "dllm_forwards", "verifier_forwards", "steps", "wall_s"), 0)


def summarize(s: dict) -> dict:
    """Derived statistics of summed counts (see the module docstring)."""
    n = max(1, s["answers"])
    return {
        "answers": s["answers"], "generated_tokens": s["tokens"],
        "tokens_per_dllm_forward": s["tokens"] / s["dllm_forwards"] if s["dllm_forwards"] else None,
        "tokens_per_step": s["tokens"] / s["steps"] if s["steps"] else None,
        "dllm_forwards_per_answer": s["dllm_forwards"] / n, "verifier_forwards_per_answer": s["verifier_forwards"] / n,
        "tokens_per_s": s["tokens"] / s["wall_s"] if s["wall_s"] > 0 else 0.0, "wall_s": s["wall_s"],
    }


def format_stats(d: dict) -> str:
    tpf = d["tokens_per_dllm_forward"]
    return (f"{d['answers']} answers, {d['generated_tokens']} tokens, {d['tokens_per_s']:.1f} tokens/s, "
            f"{'-' if tpf is None else f'{tpf:.2f}'} tokens per dLLM forward, "
            f"{d['dllm_forwards_per_answer']:.1f} dLLM + {d['verifier_forwards_per_answer']:.1f} verifier forwards "
            f"per answer")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, disable: bool):
    if disable:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="apd generate_until")


__all__ = ["ApdLM", "HarnessError", "resolve_checkpoint", "summarize", "format_stats", "DTYPES"]
