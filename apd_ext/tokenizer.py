"""Tokenizer of a Hugging Face checkpoint directory, without transformers: tokenizer.json through the
`tokenizers` library, special tokens and the chat template from tokenizer_config.json, the template
rendered with jinja2 in a sandbox (the settings transformers uses: trim_blocks, lstrip_blocks,
`raise_exception`, a `tojson` that does not escape HTML).

    tok = HFTokenizer.from_pretrained("Dream-v0-Instruct-7B")
    text = tok.apply_chat_template("What is 3 + 4?")      # the prompt as the model was tuned on it
    ids = tok.encode(text)
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer


def _token_text(value) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class HFTokenizer:
    """encode / decode / chat template of one checkpoint directory.

    Attributes: eos_id (int or None: tokenizer_config's eos_token, else generation_config's or
    config's eos_token_id), chat_template (str or None), special (name -> token text, e.g.
    "bos_token"), vocab_size (entries of tokenizer.json, added tokens included)."""

    def __init__(self, tok: Tokenizer, config: dict | None = None, eos_id: int | None = None):
        self.tok = tok
        config = config or {}
        self.special = {k: _token_text(v) for k, v in config.items()
                        if k.endswith("_token") and _token_text(v) is not None}
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default")
        self.chat_template = template
        eos_text = self.special.get("eos_token")
        self.eos_id = tok.token_to_id(eos_text) if eos_text is not None else eos_id

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer_file: str | Path | None = None) -> "HFTokenizer":
        """From a checkpoint directory; `tokenizer_file` replaces its tokenizer.json (for checkpoints
        that ship only a slow tokenizer, e.g. Dream's, whose ids are its verifier's)."""
        path = Path(path)
        tokenizer_file = Path(tokenizer_file) if tokenizer_file is not None else path / "tokenizer.json"
        if not tokenizer_file.exists():
            raise FileNotFoundError(f"no {tokenizer_file} (the fast-tokenizer file of a Hugging Face checkpoint)")
        config = {}
        if (path / "tokenizer_config.json").exists():
            config = json.loads((path / "tokenizer_config.json").read_text())
        if "chat_template" not in config and (path / "chat_template.jinja").exists():  # newer layout
            config["chat_template"] = (path / "chat_template.jinja").read_text()
        eos = None
        for name in ("generation_config.json", "config.json"):
            if (path / name).exists():
                eos = json.loads((path / name).read_text()).get("eos_token_id")
                if eos is not None:
                    break
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return cls(Tokenizer.from_file(str(tokenizer_file)), config, eos)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def vocab(self) -> dict[str, int]:
        return self.tok.get_vocab(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as is (no special tokens added: a chat template writes its own)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, prompt: str, system: str | None = None) -> str:
        """The text of a one-turn conversation (an optional system message, the user's `prompt`)
        followed by the assistant's generation prompt. Raises ValueError without a template."""
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
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": prompt}]
        return env.from_string(self.chat_template).render(messages=messages, add_generation_prompt=True,
                                                          **self.special)
