"""A sequence's text as its tokens arrive: deltas that join to the final text, and stop strings.

Text is decoded from all tokens so far (byte-level tokenizers only form a character once all its
bytes are there), and a delta is held back while it ends in an unfinished character or in what may
be the start of a stop string. The final text is cut before the first stop string; the deltas
sent, followed by :meth:`TextStream.finish`'s, join to exactly that text.

Example:
    >>> decode = lambda ids: "".join("abc."[i] for i in ids)
    >>> stream = TextStream(decode, stop=(".",))
    >>> [stream.push(i) for i in (0, 1)], stream.push(3), stream.finish()
    (['a', 'b'], None, '')
    >>> stream.text
    'ab'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# What a tokenizer decodes an incomplete multi-byte character to.
_REPLACEMENT = "\ufffd"


class TextStream:
    """The text of one sequence. :meth:`push` takes a token id and returns the new text to send, or
    ``None`` once a stop string has ended the sequence; :meth:`finish` returns what is left to send."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self.decode, self.stop = decode, tuple(s for s in stop if s)
        self.token_ids: list[int] = []
        self.sent = ""  # text already handed out
        self.text = ""  # the full text so far (cut at a stop string once one is found)
        self.stopped = False

    def push(self, token_id: int) -> str | None:
        self.token_ids.append(token_id)
        self.text = self.decode(self.token_ids)
        cut = self._stop_at(self.text)
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
            return None
        safe = self.text.rstrip(_REPLACEMENT)
        safe = safe[: len(safe) - self._partial_stop(safe)]
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent) :], safe
        return delta

    def finish(self) -> str:
        """The rest of the final text (what was held back)."""
        rest = self.text[len(self.sent) :] if self.text.startswith(self.sent) else ""
        self.sent = self.text
        return rest

    def _stop_at(self, text: str) -> int | None:
        # Only the tail can hold a new stop string: look from just before what was already checked.
        start = max(0, len(self.sent) - max((len(s) for s in self.stop), default=0))
        found = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins a stop string."""
        return max(
            (k for s in self.stop for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
            default=0,
        )
