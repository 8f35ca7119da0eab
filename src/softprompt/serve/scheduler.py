"""softprompt's own engine: an iteration-level scheduler over the task bank's frozen causal LM.

One worker thread runs the model. Between any two decoding steps it drops the sequences that have
finished, were cancelled (the client left) or ran out of time, prefills the requests that arrived
(any mix of tasks, in one batch), and joins them to the running :class:`~softprompt.serve.batch.DecodingBatch`.
So a long request never holds a short one, requests of different tasks share every step, and each
sequence computes what it would alone.

A failure inside the model fails only the requests it belongs to: a batch that raises is run again
row by row, and the rows that still raise fail with the reason. Time limits are the server's: it
cancels a request that runs out of time, and the next iteration drops it like any cancelled one.

Example:
    >>> import asyncio
    >>> from softprompt.bank import TaskBank
    >>> from softprompt.serve.engine import GenerationRequest, RequestHandle
    >>> from softprompt.serve.sampling import SamplingParams
    >>> async def complete(engine):
    ...     await engine.start()
    ...     handle = RequestHandle(GenerationRequest([5, 6, 7], None, SamplingParams(max_tokens=3, temperature=0)))
    ...     engine.submit(handle)
    ...     ids = [t async for piece in handle.pieces() for t in piece.token_ids]
    ...     await engine.stop()
    ...     return ids
    >>> engine = LocalEngine(TaskBank(base_model), tokenizer, name="tiny")
    >>> asyncio.run(complete(engine)) == base_model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3,
    ...     do_sample=False)[0, 3:].tolist()
    True
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from softprompt.bank import TaskBank
from softprompt.injection import CompiledPrompt
from softprompt.models import PromptedModel
from softprompt.serve.batch import Decoder, DecodingBatch
from softprompt.serve.engine import Piece, RequestHandle, require_causal
from softprompt.serve.errors import APIError, bad_request, model_failure, too_many_requests, unavailable
from softprompt.serve.sampling import next_token
from softprompt.serve.text import TextStream

logger = logging.getLogger(__name__)


@dataclass
class _Sequence:
    """One choice of one request while it decodes."""

    handle: RequestHandle
    index: int
    stream: TextStream
    generator: torch.Generator | None
    generated: int = 0

    @property
    def gone(self) -> bool:
        return self.handle.done


class LocalEngine:
    """Serves the tasks of a :class:`~softprompt.bank.TaskBank` (causal LMs) on this process's torch.

    Args:
        bank: the frozen base model's bank (the registry adds tasks to it).
        tokenizer: decodes generated tokens (the server tokenizes requests with the same one).
        name: the bare model's name.
        max_batch: most sequences decoded at once; more requests wait.
        max_queue: most requests waiting; one more is answered 429.
        max_prefill_tokens: most prompt tokens prefilled between two decoding steps (at least one request).
    """

    def __init__(
        self,
        bank: TaskBank,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        max_batch: int = 32,
        max_queue: int = 256,
        max_prefill_tokens: int = 2048,
    ) -> None:
        self.name = name
        self.decoder = Decoder(require_causal(bank))
        self.tokenizer = tokenizer
        config = bank.base_model.config
        self.max_context = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
        generation = bank.base_model.generation_config
        eos = generation.eos_token_id if generation.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.max_batch, self.max_queue, self.max_prefill_tokens = max_batch, max_queue, max_prefill_tokens
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._running: list[_Sequence] = []
        self._batch: DecodingBatch | None = None
        self._logits: torch.Tensor | None = None  # (B, V): next-token logits of the running rows
        self.steps = 0  # decoding steps so far: each one forward pass over every running sequence

    # ------------------------------------------------------------------------------- engine protocol
    def prepare(self, model: PromptedModel) -> CompiledPrompt:
        """A task's prompt compiled once into what every request of it starts from (its prefix).

        Refuses (``ValueError``, why) a prompt that enters the model as input embeddings instead of a
        prefix: a batch row here is a key/value cache, and those prompts are no prefix.
        """
        with torch.no_grad():
            compiled = model.compile_prompt(model.prompt)
        if compiled.tokens is not None:
            raise ValueError(
                f"{model.shape.family} takes {model.prompt.config.method} prompts as input embeddings before "
                "each request's tokens (its layers also read inputs looked up by token id), and softprompt's "
                "local engine decodes prompts that are key/value prefixes only: serve a prefix-tuning task "
                "on this model, or generate with the library (softprompt.load(...).generate)"
            )
        return compiled

    def prompt_length(self, prepared: CompiledPrompt | None) -> int:
        return 0 if prepared is None else max(states.length for states in prepared.sites.values())

    async def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="softprompt-scheduler", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish every accepted request, then stop the worker."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    def submit(self, handle: RequestHandle) -> None:
        n = handle.request.params.n
        if n > self.max_batch:  # it would never fit, and would hold up every request behind it
            raise bad_request(
                f"n={n} choices are more than the {self.max_batch} sequences this server decodes at once; "
                f"ask for at most {self.max_batch}",
                param="n",
            )
        with self._wake:
            if self._stopping or self._thread is None:
                raise unavailable("the server is not running (starting or shutting down); retry shortly")
            if self.is_full():
                raise self.queue_full()
            self._waiting.append(handle)
            self._wake.notify()

    def is_full(self) -> bool:
        return len(self._waiting) >= self.max_queue

    def queue_full(self) -> APIError:
        return too_many_requests(
            f"the server's queue is full ({self.max_queue} requests waiting); retry shortly", retry_after_s=1
        )

    def load(self) -> dict[str, int]:
        return {"running": len(self._running), "waiting": len(self._waiting)}

    # --------------------------------------------------------------------------------- the worker
    def _serve(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                while not self._waiting and not self._running and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self._waiting and not self._running:
                    return
                arrived = self._admit()
            try:
                self._drop_gone()
                if arrived:
                    self._prefill(arrived)
                if self._running:
                    self._decode()
            except Exception as err:  # a fault outside the model's calls: fail what was running, go on
                logger.exception("the scheduler failed a step")
                self._fail_all([*(seq.handle for seq in self._running), *arrived], err)

    def _fail_all(self, handles: list[RequestHandle], err: Exception) -> None:
        for handle in dict.fromkeys(handles):
            handle.fail(model_failure(f"the server failed while running this request: {err}"))
        self._running, self._batch, self._logits = [], None, None

    def _admit(self) -> list[RequestHandle]:
        """Waiting requests that fit now: free rows and the prefill budget (cancelled ones leave)."""
        admitted, free, budget = [], self.max_batch - len(self._running), self.max_prefill_tokens
        while self._waiting:
            handle = self._waiting[0]
            if handle.done:
                self._waiting.popleft()
                continue
            cost = len(handle.request.prompt_ids)
            if handle.request.params.n > free or (admitted and cost > budget):
                break
            admitted.append(self._waiting.popleft())
            free, budget = free - handle.request.params.n, budget - cost
        return admitted

    def _drop_gone(self) -> None:
        """Remove the running sequences of requests that were cancelled (the client left, time ran out) or failed."""
        self._keep([row for row, seq in enumerate(self._running) if not seq.gone])

    def _keep(self, rows: list[int]) -> None:
        if len(rows) == len(self._running):
            return
        self._running = [self._running[r] for r in rows]
        if rows:
            self._batch, self._logits = self._batch.select(rows), self._logits[rows]
        else:
            self._batch = self._logits = None

    def _prefill(self, handles: list[RequestHandle]) -> None:
        try:
            batch, logits = self.decoder.prefill(
                [h.request.prompt_ids for h in handles], [h.request.prompt for h in handles]
            )
        except Exception as err:
            if len(handles) > 1:  # find the request that fails; the others go on
                for handle in handles:
                    self._prefill([handle])
                return
            logger.exception("prefill failed")
            handles[0].fail(model_failure(f"the model failed on this request: {err}"))
            return
        # n choices of a request share its prefill: its row is repeated n times.
        rows = [row for row, h in enumerate(handles) for _ in range(h.request.params.n)]
        sequences = [
            _Sequence(
                h,
                choice,
                TextStream(self._decode_text, h.request.params.stop),
                h.request.params.generator(choice),
            )
            for h in handles
            for choice in range(h.request.params.n)
        ]
        batch, logits = (batch.select(rows), logits[rows]) if len(rows) > len(handles) else (batch, logits)
        if self._batch is None:
            self._batch, self._logits = batch, logits
        else:
            self._batch = DecodingBatch.join([self._batch, batch])
            self._logits = torch.cat([self._logits, logits])
        self._running += sequences

    def _decode(self) -> None:
        """Choose every running sequence's next token, hand it out, and step the ones that go on."""
        tokens, keep = [], []
        for row, (seq, logits) in enumerate(zip(self._running, self._logits, strict=True)):
            params = seq.handle.request.params
            token = next_token(logits, params, seq.generator)
            seq.generated += 1
            if token in self.eos_ids and not params.ignore_eos:
                seq.handle.put(Piece(seq.index, seq.stream.finish(), [token], "stop"))
                continue
            text = seq.stream.push(token)
            if text is None:
                seq.handle.put(Piece(seq.index, seq.stream.finish(), [token], "stop"))
            elif seq.generated >= params.max_tokens:
                seq.handle.put(Piece(seq.index, text + seq.stream.finish(), [token], "length"))
            else:
                seq.handle.put(Piece(seq.index, text, [token]))
                tokens.append(token)
                keep.append(row)
        self._keep(keep)
        if not keep:
            return
        next_ids = torch.tensor(tokens, device=self.decoder.device)
        self.steps += 1
        try:
            self._logits = self._batch.step(self.decoder, next_ids)
        except Exception:
            self._step_rows_alone(next_ids)

    def _step_rows_alone(self, next_ids: torch.Tensor) -> None:
        """After a failed step: step each sequence alone; the ones that still fail, fail alone."""
        batches, logits, keep = [], [], []
        for row, seq in enumerate(self._running):
            alone = self._batch.select([row])
            try:
                logits.append(alone.step(self.decoder, next_ids[row : row + 1]))
            except Exception as err:
                logger.exception("a decoding step failed")
                seq.handle.fail(model_failure(f"the model failed on this request: {err}"))
                continue
            batches.append(alone)
            keep.append(row)
        self._running = [self._running[r] for r in keep]
        self._batch = DecodingBatch.join(batches) if batches else None
        self._logits = torch.cat(logits) if logits else None

    def _decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
