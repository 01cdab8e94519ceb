"""Incremental detokenisation for streamed responses, and stop strings.

A request's tokens arrive a few per decoding step. `Detokenizer` turns them into text deltas whose
concatenation is the decoded text of all the tokens, without ever splitting a character: a
byte-level tokenizer can end a step in the middle of a UTF-8 sequence (one emoji is up to four
tokens), which decodes to U+FFFD; such text is held back until the sequence completes.
`StopMatcher` cuts the text before the first stop string and holds back a tail that could be the
start of one, so that no streamed chunk ever shows text a later stop string would remove.

    detok, stop = Detokenizer(tokenizer), StopMatcher(["\\n\\n"])
    for tokens in steps:                 # each step's committed token ids
        text, stopped = stop.push(detok.push(tokens))
        ...                              # send `text`; when stopped, cancel the request
    text, _ = stop.push(detok.flush(), final=True)   # the request finished: the held-back rest
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete (or invalid) UTF-8 sequence


class Detokenizer:
    """Text deltas of a growing list of token ids.

    tokenizer: anything with decode(ids) -> str (apd_ext.tokenizer.HFTokenizer: special tokens
    skipped). Each push decodes a window of the ids: the tokens since the last emitted text, with
    the tokens of the text emitted before that as left context (so that decoders that treat the
    first token of a string specially, e.g. a SentencePiece leading space, see the same context
    the full decode would). The delta is the window's text past the context's text; it is held
    back while it is empty or ends in U+FFFD (an incomplete character), and flush() returns the
    rest once the request is over (U+FFFD included when the tokens really end mid-character)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to the context of the next window
        self._read = 0    # ids[_read:] have not been emitted as text yet

    def push(self, tokens) -> str:
        """Add `tokens` (ids, in order); the newly complete text ("" when all is held back)."""
        self.ids.extend(int(t) for t in tokens)
        return self._advance(final=False)

    def flush(self) -> str:
        """The text still held back (call once, after the last push)."""
        return self._advance(final=True)

    def tokens_for(self, chars: int) -> int:
        """The fewest leading tokens whose text holds `chars` characters (all of them when the text
        is shorter): what a response cut after `chars` characters of text consumed."""
        lo, hi = 0, len(self.ids)
        while lo < hi:  # decoded length grows with the prefix: binary search on it
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(self.ids[:mid])) >= chars:
                hi = mid
            else:
                lo = mid + 1
        return lo

    @property
    def pending(self) -> int:
        """Tokens whose text has not been emitted yet."""
        return len(self.ids) - self._read

    def _advance(self, final: bool) -> str:
        if self._read == len(self.ids):
            return ""
        context = self.tokenizer.decode(self.ids[self._prefix:self._read]) if self._read > self._prefix else ""
        text = self.tokenizer.decode(self.ids[self._prefix:])
        if not final and (len(text) <= len(context) or text.endswith(REPLACEMENT)):
            return ""
        if not text.startswith(context):  # a decoder that rewrote the context: emit what is new
            delta = text[_common_prefix(context, text):]
        else:
            delta = text[len(context):]
        self._prefix, self._read = self._read, len(self.ids)
        return delta


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class StopMatcher:
    """Cut a text stream at the first occurrence of any of `stops` (non-empty strings).

    push(delta) returns (text safe to emit, stopped): the text up to the first stop string, the
    stop string excluded; while no stop string occurred, a tail of the text that is a proper prefix
    of a stop string is held back (emitted by a later push when it turns out not to be one, or with
    final=True). Once stopped, every push returns ("", True)."""

    def __init__(self, stops=()):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False
        self.matched = ""  # the stop string that stopped the stream

    def push(self, delta: str, final: bool = False) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self._held + delta
        cut = self._first_match(buf)
        if cut is not None:
            self.stopped, self._held = True, ""
            self.matched = min((s for s in self.stops if buf.find(s) == cut), key=len)
            return buf[:cut], True
        keep = 0 if final else self._partial_tail(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def _first_match(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def _partial_tail(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
