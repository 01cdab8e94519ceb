"""The tokenizer of a Hugging Face checkpoint directory, without transformers: tokenizer.json through
the `tokenizers` library, special tokens and the chat template from tokenizer_config.json (or
chat_template.jinja), special ids otherwise from generation_config.json / config.json, the template
rendered with jinja2 in a sandbox (the settings transformers uses: trim_blocks, lstrip_blocks,
`raise_exception`, a `tojson` that does not escape HTML). One class serves real checkpoints and the
bundled tiny pair (apd_ext/tiny/assets/*, which ship a tokenizer.json and a config.json).

    tok = HFTokenizer.from_pretrained("Dream-v0-Instruct-7B")
    text = tok.apply_chat_template("What is 3 + 4?")      # the prompt as the model was tuned on it
    ids = tok.encode(text)
    tok = pair_tokenizer(dllm_dir, verifier_dir)          # the one tokenizer an APD pair shares

A missing file raises FileNotFoundError; a present but unusable one (not UTF-8, not JSON, not a
tokenizer) raises CheckpointError (a ValueError) naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from apd_ext.models.config import CheckpointError, read_json_object

ROLES = ("bos_token", "eos_token", "pad_token", "mask_token")  # special-token roles with an `<role>_id`


def _token_text(value) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of `path`; CheckpointError naming the file when it is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); expected {what}") from None


def load_tokenizer_json(path: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json file, errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {path} (the fast-tokenizer file of a Hugging Face checkpoint)")
    text = _read_text(path, "a tokenizer.json (JSON)")
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for any malformed file
        raise CheckpointError(f"{path}: not a usable tokenizer.json ({e})") from None


class HFTokenizer:
    """encode / decode / chat template of one checkpoint directory.

    Attributes: tok (the `tokenizers.Tokenizer`); special (role -> token text from
    tokenizer_config.json, e.g. "bos_token"); bos_id, eos_id, pad_id, mask_id (int or None: the id
    of the role's text in `special`, else the `<role>_id` of generation_config.json, else of
    config.json, eos lists giving their first id); chat_template (str or None); vocab_size (entries
    of tokenizer.json, added tokens included).

    tok: the tokenizer; config: a tokenizer_config.json dict (special token texts, chat_template);
    ids: fallback ids by role ({"eos_token": 1, ...}) for roles `config` does not name.
    """

    def __init__(self, tok: Tokenizer, config: dict | None = None, ids: dict | None = None):
        self.tok = tok
        config = config or {}
        self.special = {k: _token_text(v) for k, v in config.items()
                        if k.endswith("_token") and _token_text(v) is not None}
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is not None and not isinstance(template, str):
            raise CheckpointError(f"tokenizer_config.json: chat_template must be a string or a list of "
                                  f"{{name, template}} objects, got {type(template).__name__}")
        self.chat_template = template
        ids = ids or {}
        for role in ROLES:
            text = self.special.get(role)
            found = tok.token_to_id(text) if text is not None else None
            setattr(self, role[: -len("_token")] + "_id", found if found is not None else ids.get(role))

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer_file: str | Path | None = None) -> "HFTokenizer":
        """From a checkpoint directory; `tokenizer_file` replaces its tokenizer.json (for checkpoints
        that ship only a slow tokenizer, e.g. Dream's, whose ids are its verifier's)."""
        path = Path(path)
        tok = load_tokenizer_json(Path(tokenizer_file) if tokenizer_file is not None else path / "tokenizer.json")
        config = read_json_object(path / "tokenizer_config.json") if (path / "tokenizer_config.json").exists() else {}
        jinja = path / "chat_template.jinja"
        if "chat_template" not in config and jinja.exists():  # newer layout
            config["chat_template"] = _read_text(jinja, "a Jinja chat template")
        return cls(tok, config, _special_ids(path))

    @classmethod
    def from_file(cls, path: str | Path) -> "HFTokenizer":
        """From a tokenizer.json file (its directory gives the special tokens) or a directory."""
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained(path)
        return cls.from_pretrained(path.parent, tokenizer_file=path)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer.json (tokenizer_config is not written)."""
        self.tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def vocab(self) -> dict[str, int]:
        """token text -> id, added tokens included."""
        return self.tok.get_vocab(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as is (no special tokens added: a chat template writes its own)."""
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be a str, got {type(text).__name__}")
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() of each string of `texts`."""
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, prompt: str, system: str | None = None) -> str:
        """The text of a one-turn conversation (an optional system message, the user's `prompt`)
        followed by the assistant's generation prompt. Raises ValueError without a template."""
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": prompt}]
        return self.render_chat(messages)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The chat template rendered over `messages` ([{"role": ..., "content": ...}, ...], e.g.
        lm-evaluation-harness's chat history), followed by the assistant's generation prompt when
        `add_generation_prompt`. Raises ValueError without a template."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(messages=list(messages),
                                                          add_generation_prompt=add_generation_prompt, **self.special)


def _special_ids(path: Path) -> dict:
    """role -> id from generation_config.json, then config.json (`<role>_id` keys; an EOS list
    gives its first id)."""
    ids: dict = {}
    for name in ("generation_config.json", "config.json"):
        if not (path / name).exists():
            continue
        doc = read_json_object(path / name)
        for role in ROLES:
            value = doc.get(role + "_id")
            if isinstance(value, list):
                value = value[0] if value else None
            if ids.get(role) is None and isinstance(value, int) and not isinstance(value, bool):
                ids[role] = value
    return ids


def pair_tokenizer(dllm_dir: str | Path, verifier_dir: str | Path) -> HFTokenizer:
    """The tokenizer an APD pair shares: the dLLM's tokenizer.json, or the verifier's when the dLLM
    ships only a slow tokenizer (Dream's DreamTokenizer); special tokens and chat template from the
    dLLM's directory (the format it was tuned on). The verifier scores the dLLM's token ids, so
    every token of the verifier's tokenizer must have the same id in the dLLM's (the dLLM may add
    tokens, e.g. its mask token). Raises ValueError (CheckpointError for an unreadable file) with
    the reason."""
    d, v = Path(dllm_dir) / "tokenizer.json", Path(verifier_dir) / "tokenizer.json"
    if not d.exists() and not v.exists():
        raise ValueError(f"neither {dllm_dir} nor {verifier_dir} has a tokenizer.json (the fast-tokenizer file "
                         f"the pair needs)")
    tok = HFTokenizer.from_pretrained(dllm_dir, tokenizer_file=d if d.exists() else v)
    if d.exists() and v.exists():
        theirs = load_tokenizer_json(v).get_vocab(with_added_tokens=True)
        ours = tok.vocab()
        bad = sorted((i, t) for t, i in theirs.items() if ours.get(t) != i)
        if bad:
            shown = ", ".join(f"{t!r} (id {i})" for i, t in bad[:5])
            raise ValueError(f"the dLLM's and the verifier's tokenizers differ on {len(bad)} tokens, e.g. {shown}: "
                             f"APD needs one tokenizer for both models")
    return tok
