"""Streamers (``TextStreamer``, ``TextIteratorStreamer``...) that show only real text.

softprompt's ``generate`` hands ``transformers`` one stand-in id per virtual token before the
caller's ids (their keys/values already sit in the cache), and ``generate`` streams its whole
input first: a plain streamer would print the stand-ins (a pad or ``!`` token each) before the
prompt. :func:`real_text_streamer` wraps a streamer so that the first ``put`` loses them; every
later ``put`` (one new token per step) passes unchanged.

Examples:
    >>> from transformers import TextIteratorStreamer
    >>> text = TextIteratorStreamer(tokenizer)
    >>> streamer = real_text_streamer(text, stand_ins=4)
    >>> streamer.put(torch.tensor([[0, 0, 0, 0, 4, 5]]))   # generate's first put: stand-ins + input
    >>> streamer.put(torch.tensor([6]))                    # then one token per step
    >>> streamer.end()
    >>> "".join(text)                                      # no <pad> stand-ins
    'positive negative yes'
"""

from __future__ import annotations

import torch
from transformers.generation.streamers import BaseStreamer


class RealTextStreamer(BaseStreamer):
    """Passes ``streamer`` what ``generate`` streams, without the first ``stand_ins`` ids of the input."""

    def __init__(self, streamer: BaseStreamer, stand_ins: int) -> None:
        self.streamer = streamer
        self.stand_ins = stand_ins
        self._input_pending = True

    def put(self, value: torch.Tensor) -> None:
        if self._input_pending:  # (B, stand-ins + T): generate's input, streamed once first
            self._input_pending = False
            value = value[..., self.stand_ins :]
        self.streamer.put(value)

    def end(self) -> None:
        self._input_pending = True  # the same streamer may serve the next call
        self.streamer.end()


def real_text_streamer(streamer: BaseStreamer | None, stand_ins: int) -> BaseStreamer | None:
    """``streamer`` made to skip the ``stand_ins`` leading ids of ``generate``'s input (None stays None).

    The models' ``generate`` calls it with the number of virtual-token places it filled.
    """
    if streamer is None or stand_ins == 0 or isinstance(streamer, RealTextStreamer):
        return streamer
    return RealTextStreamer(streamer, stand_ins)


__all__ = ["RealTextStreamer", "real_text_streamer"]
