"""One way to load a (dLLM, verifier) pair: the runners, the tokenizer they share, the shared
vocabulary and the EOS ids that `apd_ext.generate` decodes with. The command line, the
lm-evaluation-harness model, the tiny task's evaluation and the server load through `load_pair`.

    pair = load_pair("Dream-v0-Instruct-7B", "Qwen2.5-0.5B-Instruct", vocab_size=151936, dtype=torch.bfloat16)
    pair = load_pair("LLaDA-8B-Instruct", policy="threshold")        # a dLLM alone: dLLM-only policies
    pair = load_pair()                                                # the bundled tiny pair
    ids = pair.tokenizer.encode(pair.chat_prompt([{"role": "user", "content": "What is 3 + 4?"}]))
    out = apd_ext.generate(pair.dllm, pair.verifier, [ids], "apd", **pair.generate_kwargs())
    n = int(out.num_generated[0])
    text = pair.tokenizer.decode(answer_tokens(out.sequences[0, len(ids): len(ids) + n].tolist(), pair.eos_token_ids))

Everything a caller can get wrong (an empty or missing directory, a model of the wrong kind, a
verifier missing for a policy that runs one, vocabularies that differ) is found from the
config.json files before any weights are read, and raised as ValueError or FileNotFoundError
whose message names the argument (dllm, verifier, vocab_size, policy). A checkpoint file that is
present but unusable raises CheckpointError (a ValueError) naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from apd_ext.decode.inputs import eos_ids
from apd_ext.decode.steps import STEPS
from apd_ext.models.config import DLLM_TYPES, VERIFIER_TYPES, ModelConfig
from apd_ext.models.runners import DllmRunner, VerifierRunner
from apd_ext.tokenizer import HFTokenizer, pair_tokenizer

__all__ = ["Pair", "load_pair", "answer_tokens", "check_sources", "DLLM_ONLY"]

# the policies that never call the verifier (a dLLM may run them alone, e.g. LLaDA)
DLLM_ONLY = tuple(name for name, step in STEPS.items() if not step.verifier_forwards)


@dataclass
class Pair:
    """A loaded pair and what decoding it needs.

    dllm: the DllmRunner (or an object with its interface, e.g. apd_ext.models.HFDllm); verifier:
    the VerifierRunner (or HFVerifier), or None (a dLLM loaded alone for the dLLM-only policies);
    tokenizer: the HFTokenizer both models number tokens with (encode(text) -> ids, decode(ids) ->
    text, the chat template of the dLLM's directory); vocab_size: the shared
    vocabulary V generate samples from; eos_token_ids: the ids a row ends at (see load_pair);
    dllm_dir / verifier_dir: the checkpoint directories (verifier_dir None without a verifier);
    bundled: True for the bundled tiny pair (apd_ext.tiny), whose prompts are its task's format."""

    dllm: DllmRunner
    verifier: VerifierRunner | None
    tokenizer: HFTokenizer
    vocab_size: int
    eos_token_ids: list[int]
    dllm_dir: Path
    verifier_dir: Path | None
    bundled: bool

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text of a conversation, messages [{"role": str, "content": str}, ...] in order:
        the dLLM directory's chat template rendered with the assistant's generation prompt; for the
        bundled pair (no template) the last user message as its task's prompt
        (apd_ext.tiny.task.format_prompt; the other messages are not part of it). ValueError naming
        the message and the problem for a malformed list, a conversation the template refuses, or
        a checkpoint without a chat template."""
        _check_messages(messages)
        if self.tokenizer.chat_template is not None:
            return self._render(messages)
        if self.bundled:
            from apd_ext.tiny.task import format_prompt

            users = [m["content"] for m in messages if m["role"] == "user"]
            if not users:
                raise ValueError("messages: no message with role 'user' (the bundled pair's prompt is the last "
                                 "user message, as its task's question)")
            return format_prompt(users[-1])
        raise ValueError(f"{self.dllm_dir} has no chat template (tokenizer_config.json's chat_template or "
                         f"chat_template.jinja): send the prompt as plain text")

    def _render(self, messages: list[dict]) -> str:
        import jinja2

        try:
            return self.tokenizer.render_chat(messages, add_generation_prompt=True)
        except jinja2.TemplateError as e:  # the template's raise_exception, or a template it cannot run
            raise ValueError(f"messages: the chat template of {self.dllm_dir} refused them ({e})") from None

    def generate_kwargs(self) -> dict:
        """The keywords apd_ext.generate needs for this pair: {"vocab_size": V, "eos_token_id": [ids]}."""
        return {"vocab_size": self.vocab_size, "eos_token_id": list(self.eos_token_ids)}


def _check_messages(messages) -> None:
    """A non-empty list of {"role": non-empty str, "content": str} dicts, else ValueError naming the
    message (its index) and the key."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} objects, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}]: 'role' must be a non-empty string (system, user, assistant), "
                             f"got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}] ({role}): 'content' must be a string, got {type(content).__name__}")


def answer_tokens(tokens: list[int], eos_token_ids) -> list[int]:
    """The answer in a row's generated tokens: `tokens` up to and including the first one in
    eos_token_ids (an int, a list of ints, or None / [] for no EOS), all of them when none occurs.
    generate may return tokens after a row's EOS (authors_compat keeps a block's tokens after it):
    they are not part of the answer."""
    if eos_token_ids is None:
        eos: set[int] = set()
    elif isinstance(eos_token_ids, int):
        eos = {eos_token_ids}
    else:
        eos = set(eos_token_ids)
    tokens = list(tokens)
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def check_sources(dllm=None, verifier=None, policy: str = "apd") -> None:
    """What load_pair checks of its arguments before touching a file: the policy name; no empty
    path; a verifier only with a dLLM; no dLLM without a verifier unless `policy` never calls it
    (DLLM_ONLY). ValueError naming the argument."""
    if not isinstance(policy, str) or policy not in STEPS:
        raise ValueError(f"policy must be one of {', '.join(STEPS)}, got {policy!r}")
    for what, value in (("dllm", dllm), ("verifier", verifier)):
        if value is not None and not str(value).strip():
            raise ValueError(f"{what}={value!r}: an empty path (a checkpoint directory; leave both dllm and verifier "
                             f"out for the bundled tiny pair)")
    if dllm is None and verifier is not None:
        raise ValueError("verifier= needs dllm= too (neither: the bundled tiny pair)")
    if dllm is not None and verifier is None and STEPS[policy].verifier_forwards:
        raise ValueError(f"policy {policy} runs the verifier: pass verifier= with dllm= (only the dLLM-only policies "
                         f"{', '.join(DLLM_ONLY)} run without one)")


def load_pair(dllm=None, verifier=None, *, policy: str = "apd", device="cpu", dtype: torch.dtype | None = None,
              vocab_size: int | None = None, tp=None, replicate: bool | None = None) -> Pair:
    """Load a pair for decoding with `policy` (a policy name of DecodeConfig: it decides whether a
    verifier is needed and which EOS ids apply).

    dllm, verifier: checkpoint directories (str or Path; Hugging Face layout: config.json,
        *.safetensors, tokenizer files), or both None for the bundled tiny pair (apd_ext.tiny's
        DLLM_DIR / VERIFIER_DIR). verifier None with a dLLM: only for the dLLM-only policies
        (DLLM_ONLY: dllm_fixed, threshold, diffusion). An empty path is an error, not "here".
    device, dtype: where and in which dtype the weights go (dtype None: the checkpoints' own).
    vocab_size: the shared vocabulary V (the dLLM's logits past V are never sampled); default: the
        models' vocab_size, which must agree (Dream's 152064 and Qwen2.5's 151936 do not: pass 151936).
        At most each model's vocab_size.
    tp: an apd_ext.parallel.TensorParallel group to shard both models over (every rank calls
        load_pair alike); replicate: the verifier's mode under tp (True: body whole on every rank,
        False: sharded, None: by its size); not read without tp.

    The tokenizer: pair_tokenizer(dllm_dir, verifier_dir) for two directories (one numbering both
    models agree on), the dLLM directory's for a dLLM alone, the TinyTokenizer for the bundled pair.
    EOS ids: the models' config.json ones, as generate takes them for `policy`; when both models
    decide tokens (apd) and name different EOS tokens (Dream-Instruct's <|endoftext|>,
    Qwen2.5-Instruct's <|im_end|>), both, the dLLM's first, so that a row ends at either.

    Raises ValueError / FileNotFoundError naming the argument for what a caller gets wrong (see the
    module docstring), before any weights are read."""
    check_sources(dllm, verifier, policy)
    bundled = dllm is None
    if bundled:
        from apd_ext.tiny import DLLM_DIR, VERIFIER_DIR

        dllm, verifier = DLLM_DIR, VERIFIER_DIR
    dllm_dir = _checkpoint_dir(dllm, "dllm")
    verifier_dir = _checkpoint_dir(verifier, "verifier") if verifier is not None else None
    d_cfg = _config_of(dllm_dir, "dllm")
    v_cfg = _config_of(verifier_dir, "verifier") if verifier_dir is not None else None
    vocab = _shared_vocab(d_cfg, v_cfg, vocab_size)
    tokenizer = _tokenizer(dllm_dir, verifier_dir, bundled)
    d_kw = {} if tp is None else {"tp": tp, "vocab_size": vocab}
    v_kw = {} if tp is None else dict(d_kw, replicate=replicate)
    d_model = DllmRunner.from_pretrained(dllm_dir, device=device, dtype=dtype, **d_kw)
    v_model = (VerifierRunner.from_pretrained(verifier_dir, device=device, dtype=dtype, **v_kw)
               if verifier_dir is not None else None)
    return Pair(dllm=d_model, verifier=v_model, tokenizer=tokenizer, vocab_size=vocab,
                eos_token_ids=_pair_eos(d_model, v_model, policy), dllm_dir=dllm_dir, verifier_dir=verifier_dir,
                bundled=bundled)


def _checkpoint_dir(path, what: str) -> Path:
    """`path` as an existing directory with a config.json; errors name the argument `what`."""
    p = Path(path)
    if not p.is_dir():
        if p.exists():
            raise ValueError(f"{what}={path}: not a directory (a checkpoint directory with config.json and "
                             f"*.safetensors)")
        raise FileNotFoundError(f"{what}={path}: no such directory")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{what}={path}: no config.json in it (a Hugging Face checkpoint directory)")
    return p


def _config_of(path: Path, what: str) -> ModelConfig:
    """path/config.json, whose model_type must be a dLLM's (what="dllm") or a verifier's."""
    config = ModelConfig.from_pretrained(path)
    kind = config.model_type.lower()
    role, kinds, others = (("dLLM", DLLM_TYPES, VERIFIER_TYPES) if what == "dllm" else
                           ("verifier", VERIFIER_TYPES, DLLM_TYPES))
    if kind not in kinds:
        swapped = " (are dllm and verifier swapped?)" if kind in others else ""
        raise ValueError(f"{what}={path}: model_type {config.model_type!r} is not a {role} (it takes "
                         f"{', '.join(kinds)}){swapped}")
    return config


def _shared_vocab(d_cfg: ModelConfig, v_cfg: ModelConfig | None, vocab_size) -> int:
    """vocab_size checked against the models' vocabularies, or the vocabulary they agree on."""
    sizes = [d_cfg.vocab_size] + ([v_cfg.vocab_size] if v_cfg is not None else [])
    if vocab_size is None:
        if len(set(sizes)) > 1:
            raise ValueError(f"the dLLM's vocabulary ({sizes[0]}) and the verifier's ({sizes[1]}) differ: pass "
                             f"vocab_size, the size of the tokenizer they share (151936 for Dream + Qwen2.5)")
        return sizes[0]
    if type(vocab_size) is not int or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1 (the shared vocabulary), got {vocab_size!r}")
    if vocab_size > min(sizes):
        raise ValueError(f"vocab_size {vocab_size} exceeds the models' vocabularies (dLLM {sizes[0]}"
                         + (f", verifier {sizes[1]}" if len(sizes) > 1 else "") + f"): it takes at most {min(sizes)}")
    return vocab_size


def _tokenizer(dllm_dir: Path, verifier_dir: Path | None, bundled: bool) -> HFTokenizer:
    if bundled:
        from apd_ext.tiny.tokenizer import TinyTokenizer

        return TinyTokenizer.from_file(dllm_dir / "tokenizer.json")
    if verifier_dir is None:
        return HFTokenizer.from_pretrained(dllm_dir)
    return pair_tokenizer(dllm_dir, verifier_dir)


def _pair_eos(dllm, verifier, policy: str) -> list[int]:
    """The EOS ids generate uses for `policy` by default; where it would refuse (both models decide
    tokens and their EOS differ), the union, the dLLM's first (load_pair's docstring)."""
    kind = STEPS[policy]
    try:
        return eos_ids(dllm, verifier, None, both_models=bool(kind.dllm_forwards and kind.verifier_forwards))
    except ValueError:
        d_eos = dllm.config.eos_ids
        return d_eos + [e for e in verifier.config.eos_ids if e not in d_eos]
