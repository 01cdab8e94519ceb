"""The tiny models' tokenizer: byte-level BPE trained with Hugging Face `tokenizers` on the task's
text, digits split into single tokens (as Qwen2's tokenizer does), the full byte alphabet kept (any
text encodes), three special tokens. Saved as tokenizer.json next to each checkpoint and read back
with the package's one tokenizer class, apd_ext.tokenizer.HFTokenizer; `TinyTokenizer` is that
class with the tiny pair's special tokens as defaults (so a freshly trained `tokenizers.Tokenizer`
gets its pad / EOS / mask ids too)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from apd_ext.tokenizer import HFTokenizer

PAD, EOS, MASK = "<|pad|>", "<|endoftext|>", "<|mask|>"
SPECIAL_TOKENS = [PAD, EOS, MASK]  # ids 0, 1, 2
VOCAB_SIZE = 512
TINY_SPECIALS = {"pad_token": PAD, "eos_token": EOS, "mask_token": MASK}  # tokenizer_config.json style


def train_tokenizer(texts, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train on an iterable of strings (deterministic for a given corpus)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False, min_frequency=2,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


class TinyTokenizer(HFTokenizer):
    """HFTokenizer whose special tokens default to the tiny pair's (PAD, EOS, MASK); every method
    is HFTokenizer's. TinyTokenizer(tok) wraps a trained `tokenizers.Tokenizer`;
    TinyTokenizer.from_file(dir or tokenizer.json) reads a saved one. Raises ValueError when the
    tokenizer lacks one of the three."""

    def __init__(self, tok: Tokenizer, config: dict | None = None, ids: dict | None = None):
        super().__init__(tok, {**TINY_SPECIALS, **(config or {})}, ids)
        missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
        if missing:
            raise ValueError(f"the tiny pair's tokenizer lacks the special tokens {missing}")
