"""The tiny models' tokenizer: byte-level BPE trained with Hugging Face `tokenizers` on the task's
text, digits split into single tokens (as Qwen2's tokenizer does), the full byte alphabet kept (any
text encodes), three special tokens. Saved as tokenizer.json next to each checkpoint."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, EOS, MASK = "<|pad|>", "<|endoftext|>", "<|mask|>"
SPECIAL_TOKENS = [PAD, EOS, MASK]  # ids 0, 1, 2
VOCAB_SIZE = 512


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


class TinyTokenizer:
    """tokenizers.Tokenizer with the special ids at hand."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.pad_id, self.eos_id, self.mask_id = (tok.token_to_id(t) for t in SPECIAL_TOKENS)
        if None in (self.pad_id, self.eos_id, self.mask_id):
            raise ValueError("tokenizer lacks a special token")

    @classmethod
    def from_file(cls, path: str | Path) -> "TinyTokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
