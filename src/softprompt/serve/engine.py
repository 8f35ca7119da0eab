"""What an engine is to the server: it takes requests of token ids for a task and streams back text.

The HTTP layer (:mod:`softprompt.serve.app`) only talks to an :class:`Engine`: it tokenizes, checks
and submits a :class:`GenerationRequest`, then reads :class:`Piece` s from the
:class:`RequestHandle` until every choice has finished. Two engines implement it:
:class:`~softprompt.serve.scheduler.LocalEngine` (softprompt's own iteration-level scheduler over
the task bank) and :class:`~softprompt.serve.vllm_engine.VLLMEngine` (vLLM with prompt embeddings).

Example:
    >>> import asyncio
    >>> async def demo():
    ...     handle = RequestHandle(GenerationRequest([5, 6], None, SamplingParams(max_tokens=1)))
    ...     handle.put(Piece(0, "hi", [7], "length"))
    ...     return [piece.text async for piece in handle.pieces()]
    >>> asyncio.run(demo())
    ['hi']
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from softprompt.bank import TaskBank
from softprompt.families import UnsupportedModelError
from softprompt.models import PromptedModel, SoftPromptModel
from softprompt.serve.errors import APIError
from softprompt.serve.sampling import SamplingParams


@dataclass
class GenerationRequest:
    """Token ids to continue, the task whose prompt goes first (``None``: the bare model), and how.

    ``prompt`` is what the engine prepared for the task when it was added (see :meth:`Engine.prepare`).
    ``stream`` says whether the client reads the text as it comes; an engine that pays per piece (one
    HTTP event each, for a remote vLLM) may send the whole text as one piece when it does not.
    """

    prompt_ids: list[int]
    task: str | None
    params: SamplingParams
    prompt: Any = None
    stream: bool = True
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Piece:
    """New text of one choice; ``finish_reason`` ("stop" / "length") on the choice's last piece."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


_CANCELLED = object()  # what ends a cancelled request's pieces


class RequestHandle:
    """One request's way back from an engine: pieces in order, then the end (or an error).

    Engines call :meth:`put` / :meth:`fail` from any thread; the server reads :meth:`pieces` on its
    event loop. :meth:`cancel` (the client left) tells the engine to drop the request's rows.
    """

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Made on the event loop that reads the pieces (or give that ``loop``)."""
        self.request = request
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._open = request.params.n
        self.cancelled = threading.Event()
        self.failed = False
        self._on_cancel: list[Callable[[], None]] = []
        self.first_token_at: float | None = None

    def put(self, piece: Piece) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, piece)

    def fail(self, error: APIError) -> None:
        """End the request with ``error`` (its other choices stop too)."""
        self.failed = True
        self._loop.call_soon_threadsafe(self._queue.put_nowait, error)

    @property
    def done(self) -> bool:
        """Cancelled or failed: the engine drops the request's rows."""
        return self.failed or self.cancelled.is_set()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the cancelling thread) when the request is cancelled."""
        self._on_cancel.append(callback)

    def cancel(self) -> None:
        """Drop the request: the engine lets its rows go, and :meth:`pieces` ends."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            self._loop.call_soon_threadsafe(self._queue.put_nowait, _CANCELLED)
            for callback in self._on_cancel:
                callback()

    async def pieces(self) -> AsyncIterator[Piece]:
        """The pieces until every choice has finished; raises the request's :class:`APIError`."""
        while self._open:
            item = await self._queue.get()
            if isinstance(item, APIError):
                raise item
            if self.cancelled.is_set():  # pieces made before the cancel are not handed out
                return
            if self.first_token_at is None and item.token_ids:
                self.first_token_at = time.monotonic()
            if item.finish_reason is not None:
                self._open -= 1
            yield item


def require_causal(bank: TaskBank) -> SoftPromptModel:
    """The bank's model, which both engines decode token by token: it must be a causal LM."""
    if not isinstance(bank.runner, SoftPromptModel):
        shape = bank.runner.shape
        raise UnsupportedModelError(
            f"softprompt serve decodes causal LMs (one key/value cache per sequence); {shape.family} is "
            f"a {shape.kind} model"
        )
    return bank.runner


class Engine(Protocol):
    """What the server needs of an engine."""

    name: str  # the bare model's name (the ``model`` a request gives for no task)
    max_context: int  # tokens a sequence may hold: prompt (virtual tokens included) + completion

    def prepare(self, model: PromptedModel) -> Any:
        """What this engine keeps of a task being added; raises ``ValueError`` (why) if it cannot serve it."""

    def prompt_length(self, prepared: Any) -> int:
        """Context positions a task's prompt takes (0 for the bare model)."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Finish every accepted request, then release the model."""

    def submit(self, handle: RequestHandle) -> None:
        """Queue a request; pieces arrive on ``handle``. Raises :meth:`queue_full` when :meth:`is_full`."""

    def is_full(self) -> bool:
        """Whether one more request would be refused (the server then answers 429 before reading it)."""

    def queue_full(self) -> APIError:
        """The 429 a request gets while the engine is full."""

    def load(self) -> dict[str, int]:
        """``{"running": sequences being decoded, "waiting": requests not started}``."""
