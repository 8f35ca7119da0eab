"""The HTTP layer: OpenAI's completions and chat completions API over an engine and a task registry.

Routes stay thin; each request is checked (auth, fields, the ``model`` naming a task, the context
length), tokenized, submitted to the :class:`~softprompt.serve.engine.Engine` and answered whole or
as server-sent events. Every error is OpenAI's error JSON (:mod:`softprompt.serve.errors`).

=====================================  ======================================================
``GET /v1/models``                     the tasks and the bare model
``POST /v1/completions``               text (or token ids) in, text out; ``"stream": true`` for SSE
``POST /v1/chat/completions``          messages through the tokenizer's chat template
``GET /v1/soft_prompts``               the tasks with their method and size
``PUT /v1/soft_prompts/{name}``        add or replace a task: the adapter file is the body (admin key;
                                       ``?task=T`` picks task T of a multitask file)
``DELETE /v1/soft_prompts/{name}``     remove a task (admin key)
``GET /health``, ``GET /metrics``      liveness and load; Prometheus metrics
=====================================  ======================================================

Example:
    >>> from fastapi.testclient import TestClient
    >>> from softprompt.bank import TaskBank
    >>> from softprompt.serve.scheduler import LocalEngine
    >>> from softprompt.serve.registry import TaskRegistry
    >>> bank = TaskBank(base_model)
    >>> engine = LocalEngine(bank, tokenizer, name="tiny")
    >>> app = create_app(engine, TaskRegistry(bank, engine), tokenizer)
    >>> with TestClient(app) as client:
    ...     reply = client.post("/v1/completions", json={"model": "tiny", "prompt": "a gem", "max_tokens": 3, "temperature": 0})
    >>> reply.status_code, reply.json()["usage"]
    (200, {'prompt_tokens': 2, 'completion_tokens': 3, 'total_tokens': 5})
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from softprompt.serve.auth import Keys
from softprompt.serve.engine import Engine, GenerationRequest, Piece, RequestHandle
from softprompt.serve.errors import APIError, bad_request, not_found, timed_out
from softprompt.serve.metrics import Metrics
from softprompt.serve.registry import TaskRefused, TaskRegistry, UnknownTask
from softprompt.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    chunk,
    completion,
    new_id,
    usage,
    usage_chunk,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    """The server's limits and keys (``softprompt serve``'s options).

    Attributes:
        api_key: the key every ``/v1`` request must send (``Authorization: Bearer <key>``); None: open.
        admin_key: the key that adds and removes tasks; None: tasks change only by restarting.
        request_timeout_s: longest a request may take, queueing included; then it is dropped (408).
        max_upload_bytes: largest adapter file ``PUT /v1/soft_prompts/{name}`` takes (413 above).
        default_max_tokens: most completion tokens of a chat request that gives no ``max_tokens``
            (fewer where the context has less room left).
    """

    api_key: str | None = None
    admin_key: str | None = None
    request_timeout_s: float = 600.0
    max_upload_bytes: int = 64 * 2**20
    default_max_tokens: int = 256


def create_app(
    engine: Engine, registry: TaskRegistry, tokenizer, settings: ServerSettings | None = None
) -> FastAPI:
    """The FastAPI app serving the tasks of ``registry`` (and the bare model) on ``engine``."""
    service = _Service(engine, registry, tokenizer, settings or ServerSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:  # uvicorn stopped taking requests and let the accepted ones finish
            await engine.stop()

    app = FastAPI(title="softprompt", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(_RefuseWhenFull, engine=engine)
    app.add_middleware(_CountRequests, metrics=service.metrics)
    _install_error_handlers(app)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name, "tasks": len(registry.names()), **engine.load()}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        service.keys.check(request.headers.get("authorization"))
        return {
            "object": "list",
            "data": [_model_card(engine.name)] + [_model_card(n) for n in registry.names()],
        }

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request):
        service.keys.check(request.headers.get("authorization"))
        _task_prompt(registry, name)
        return _model_card(name)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await service.complete(body, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await service.complete(body, request, chat=True)

    @app.get("/v1/soft_prompts")
    async def soft_prompts(request: Request):
        service.keys.check(request.headers.get("authorization"))
        return {"object": "list", "data": [_task_card(info) for info in registry.info().values()]}

    @app.put("/v1/soft_prompts/{name}")
    async def add_soft_prompt(name: str, request: Request, task: str | None = None):
        service.keys.check(request.headers.get("authorization"), admin=True)
        data = await _read_body(request, service.settings.max_upload_bytes)
        try:
            info = await run_in_threadpool(registry.add_bytes, name, data, task)
        except TaskRefused as refused:
            raise bad_request(str(refused), code="invalid_adapter") from refused
        return _task_card(info)

    @app.delete("/v1/soft_prompts/{name}")
    async def remove_soft_prompt(name: str, request: Request):
        service.keys.check(request.headers.get("authorization"), admin=True)
        try:
            registry.remove(name)
        except UnknownTask as unknown:
            raise not_found(str(unknown), code="task_not_found") from unknown
        return {"id": name, "object": "soft_prompt", "deleted": True}

    return app


class _Service:
    """What the completion routes do, between the HTTP request and the engine."""

    def __init__(self, engine: Engine, registry: TaskRegistry, tokenizer, settings: ServerSettings) -> None:
        self.engine, self.registry, self.tokenizer, self.settings = engine, registry, tokenizer, settings
        self.keys = Keys(settings.api_key, settings.admin_key)
        self.metrics = Metrics(engine.load, lambda: len(registry.names()))

    async def complete(self, body: CompletionRequest | ChatCompletionRequest, request: Request, chat: bool):
        self.keys.check(request.headers.get("authorization"))
        prompt = _task_prompt(self.registry, body.model)
        if self.engine.is_full():  # before tokenizing: under overload a refusal must come back at once
            raise self.engine.queue_full()
        virtual = self.engine.prompt_length(prompt)
        if chat:
            prompts = [self._chat_ids(body)]
            # Without max_tokens a reply may fill what the context has left (at most default_max_tokens).
            room = self.engine.max_context - virtual - len(prompts[0])
            params = body.sampling(max(1, min(self.settings.default_max_tokens, room)))
        else:
            prompts = [self._prompt_ids(p) for p in body.prompts()]
            params = body.sampling()
        for ids in prompts:
            self._check_context(len(ids), virtual, params.max_tokens)
        task = None if body.model == self.engine.name else body.model
        handles = [
            RequestHandle(GenerationRequest(ids, task, params, prompt, stream=body.stream)) for ids in prompts
        ]
        try:
            for handle in handles:
                self.engine.submit(handle)
        except APIError:
            for handle in handles:
                handle.cancel()
            raise
        self.metrics.prompt_tokens.inc(sum(len(ids) for ids in prompts))
        timeout = self.settings.request_timeout_s
        answer = _Answer(new_id("chatcmpl" if chat else "cmpl"), body.model, chat, params.n, handles)
        if body.stream:
            return StreamingResponse(
                self._events(answer, timeout, body.include_usage), media_type="text/event-stream"
            )
        watcher = asyncio.create_task(_cancel_on_disconnect(request, handles))
        try:
            async for _ in answer.pieces(timeout):
                pass
        finally:
            watcher.cancel()
        self._count(answer)
        return completion(answer.id, answer.model, answer.choices(), answer.usage(), chat)

    async def _events(self, answer: _Answer, timeout: float, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: one per new piece of text, then usage (if asked), then ``[DONE]``."""
        started = set()
        try:
            async for index, piece in answer.pieces(timeout):
                if not piece.text and piece.finish_reason is None:
                    continue
                event = chunk(
                    answer.id,
                    answer.model,
                    index,
                    piece.text,
                    piece.finish_reason,
                    answer.chat,
                    index not in started,
                )
                started.add(index)
                yield f"data: {json.dumps(event)}\n\n"
            if include_usage:
                yield f"data: {json.dumps(usage_chunk(answer.id, answer.model, answer.usage(), answer.chat))}\n\n"
            self._count(answer)
        except APIError as err:  # headers are sent: the error is the stream's last event
            yield f"data: {json.dumps(err.body())}\n\n"
        finally:  # the client left, or the answer is complete: either way the engine lets go
            for handle in answer.handles:
                handle.cancel()
        yield "data: [DONE]\n\n"

    def _count(self, answer: _Answer) -> None:
        self.metrics.generated_tokens.inc(answer.usage()["completion_tokens"])
        for handle in answer.handles:
            if handle.first_token_at is not None:
                self.metrics.first_token.observe(handle.first_token_at - handle.request.arrived)

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt)["input_ids"]
        else:
            vocab = len(self.tokenizer)
            wrong = [i for i in prompt if not 0 <= i < vocab]
            if wrong:
                raise bad_request(
                    f"token ids {wrong[:5]} are outside the vocabulary (0-{vocab - 1})", "prompt"
                )
            ids = list(prompt)
        if not ids:
            raise bad_request("the prompt is empty (no tokens)", "prompt")
        return ids

    def _chat_ids(self, body: ChatCompletionRequest) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise bad_request(
                f"{self.engine.name}'s tokenizer has no chat template; use /v1/completions", "messages"
            )
        try:
            rendered = self.tokenizer.apply_chat_template(
                body.conversation(), add_generation_prompt=True, tokenize=True, return_dict=True
            )
        except Exception as err:  # the template's own checks (e.g. roles must alternate)
            raise bad_request(f"the chat template refused these messages: {err}", "messages") from err
        return list(rendered["input_ids"])

    def _check_context(self, prompt_tokens: int, virtual_tokens: int, max_tokens: int) -> None:
        total = prompt_tokens + virtual_tokens + max_tokens
        if total > self.engine.max_context:
            raise bad_request(
                f"This model's maximum context length is {self.engine.max_context} tokens. However, you "
                f"requested {total} tokens ({virtual_tokens} in the task's prompt, {prompt_tokens} in your "
                f"prompt, {max_tokens} for the completion). Please reduce your prompt or max_tokens.",
                "prompt",
                code="context_length_exceeded",
            )


class _Answer:
    """The pieces of a request's prompts (each with ``n`` choices), numbered as OpenAI numbers choices."""

    def __init__(self, id: str, model: str, chat: bool, n: int, handles: list[RequestHandle]) -> None:
        self.id, self.model, self.chat, self.n, self.handles = id, model, chat, n, handles
        self.texts = [""] * (n * len(handles))
        self.reasons: list[str | None] = [None] * (n * len(handles))
        self.generated = 0

    async def pieces(self, timeout: float) -> AsyncIterator[tuple[int, Piece]]:
        """``(choice index, piece)`` of every prompt as they come; 408 ``timeout`` seconds after arrival."""
        deadline = self.handles[0].request.arrived + timeout
        queue: asyncio.Queue = asyncio.Queue()

        async def forward(prompt: int, handle: RequestHandle) -> None:
            try:
                async for piece in handle.pieces():
                    queue.put_nowait((prompt * self.n + piece.index, piece))
            except APIError as err:
                queue.put_nowait(err)
            queue.put_nowait(None)

        readers = [asyncio.create_task(forward(i, h)) for i, h in enumerate(self.handles)]
        try:
            open_prompts = len(readers)
            while open_prompts:
                item = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
                if item is None:
                    open_prompts -= 1
                    continue
                if isinstance(item, APIError):
                    raise item
                index, piece = item
                self.texts[index] += piece.text
                self.generated += len(piece.token_ids)
                if piece.finish_reason is not None:
                    self.reasons[index] = piece.finish_reason
                yield index, piece
        except asyncio.TimeoutError as err:
            raise timed_out(
                f"the request did not finish within the server's limit of {timeout:g} s; "
                "ask for fewer tokens or retry later"
            ) from err
        finally:
            for handle in self.handles:
                handle.cancel()
            for reader in readers:
                reader.cancel()

    def choices(self) -> list[tuple[str, str | None]]:
        return list(zip(self.texts, self.reasons, strict=True))

    def usage(self) -> dict[str, int]:
        return usage(sum(len(h.request.prompt_ids) for h in self.handles), self.generated)


async def _cancel_on_disconnect(request: Request, handles: list[RequestHandle]) -> None:
    """Cancel the engine's work when the client of a non-streamed request goes away."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for handle in handles:
        handle.cancel()


def _task_prompt(registry: TaskRegistry, name: str):
    try:
        return registry.prepared(name)
    except UnknownTask as unknown:
        raise not_found(str(unknown)) from unknown


def _model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "softprompt"}


def _task_card(info) -> dict:
    return {
        "id": info.name,
        "object": "soft_prompt",
        "method": info.method,
        "num_virtual_tokens": info.length,
        "bytes": info.bytes,
    }


async def _read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    too_large = APIError(413, f"the adapter file is larger than the server's limit of {limit} bytes")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise too_large
    if not data:
        raise bad_request("the body is empty: send the adapter file as the request body")
    return bytes(data)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's error JSON."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return JSONResponse(err.body(), err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        problems = err.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            error = first.get("ctx", {}).get("error", "")
            return await api_error(request, bad_request(f"the body is not valid JSON: {error}".rstrip(": ")))
        where = [".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in problems]
        message = "; ".join(f"{w}: {e.get('msg')}" for w, e in zip(where, problems, strict=True))
        return await api_error(
            request, bad_request(message or "invalid request", where[0] if where else None)
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return await api_error(request, APIError(err.status_code, str(err.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        logger.exception("unexpected error answering %s", request.url.path)
        return await api_error(request, APIError(500, f"internal error: {err}", type="server_error"))


class _RefuseWhenFull:
    """ASGI middleware answering 429 at once while the engine is full, before reading the request.

    Under overload every refused request would otherwise be parsed, validated and tokenized first;
    this keeps the answer to a client that must back off as fast as the server can send it.
    """

    PATHS = ("/v1/completions", "/v1/chat/completions")

    def __init__(self, app, engine: Engine) -> None:
        self.app, self.engine = app, engine

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] in self.PATHS and self.engine.is_full():
            err = self.engine.queue_full()
            return await JSONResponse(err.body(), err.status, headers=err.headers)(scope, receive, send)
        await self.app(scope, receive, send)


class _CountRequests:
    """ASGI middleware counting every answer by endpoint and status, with its time to the last byte."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = scope["path"].removeprefix("/v1/").split("/")[0] or "/"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)
