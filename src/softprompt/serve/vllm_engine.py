"""vLLM as the engine: the same API and tasks, generation by vLLM, each task sent as prompt embeddings.

A prompt-tuning or P-tuning task *is* input embeddings: its virtual tokens (P, E) go before the
request's token embeddings, looked up in the model's own input embedding — ``[prompt ; E[ids]]``,
which is what :class:`~softprompt.models.SoftPromptModel` computes too. vLLM takes such a tensor
as a prompt (``enable_prompt_embeds``) and batches it with every other request, so tasks of
different prompts mix freely in its scheduler. A prefix-tuning task (keys and values in every
layer) has no such form and is refused when it is added, with the reason.

Two ways to reach vLLM:

* in this process, ``AsyncLLM`` (needs ``import vllm`` to work here; vLLM's tensor / pipeline /
  data parallelism come through ``engine_args``);
* an external vLLM OpenAI server (``url``), started with ``--enable-prompt-embeds``: the scale-out
  path, since such servers run anywhere, with any parallelism, behind any load balancer.

Example:
    >>> from softprompt.bank import TaskBank
    >>> engine = VLLMEngine(TaskBank(base_model), tokenizer, name="tiny", url="http://127.0.0.1:8011")
    >>> prefix = softprompt.wrap(base_model, softprompt.PrefixTuningConfig(num_virtual_tokens=2))
    >>> engine.prepare(prefix)
    Traceback (most recent call last):
    ...
    ValueError: a prefix_tuning prompt is keys and values in every layer; vLLM takes a prompt as input embeddings only. Serve this task with --engine local
    >>> prompt = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> engine.prepare(prompt).shape                                # (P, E): sent before the text's embeddings
    torch.Size([4, 32])
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from softprompt.bank import TaskBank
from softprompt.methods import VirtualTokens
from softprompt.models import PromptedModel
from softprompt.serve.engine import Piece, RequestHandle, require_causal
from softprompt.serve.errors import APIError, bad_request, too_many_requests, unavailable
from softprompt.serve.sampling import SamplingParams

logger = logging.getLogger(__name__)


class VLLMEngine:
    """Serves a bank's prompt-embedding tasks with vLLM, in this process or at ``url``.

    Args:
        bank: the frozen base model (its input embedding builds the prompts) and its tasks.
        tokenizer: the base model's tokenizer (the server tokenizes with it).
        name: the bare model's name; ``source``: where vLLM loads the model from (default: ``name``).
        url: an external vLLM server's base URL; None runs ``AsyncLLM`` here.
        max_in_flight: most requests at vLLM at once; one more is answered 429.
        max_model_len: in-process vLLM's context length (default: the model's, at most 4096).
        gpu_memory_utilization: in-process vLLM's share of device memory (on CPU: of RAM) for its cache.
        engine_args: further ``AsyncEngineArgs`` for in-process vLLM, e.g. ``tensor_parallel_size=2``.
    """

    def __init__(
        self,
        bank: TaskBank,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        url: str | None = None,
        source: str | None = None,
        max_in_flight: int = 256,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.3,
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.tokenizer = name, tokenizer
        self.embed = require_causal(bank).base_model.get_input_embeddings()
        engine_args = dict(engine_args or {})
        positions = getattr(bank.base_model.config, "max_position_embeddings", 2048)
        self.max_context = engine_args.pop("max_model_len", None) or max_model_len or min(positions, 4096)
        self.max_in_flight = max_in_flight
        self._in_flight: set[asyncio.Task] = set()
        if url is not None:
            self.backend: _Remote | _InProcess = _Remote(url.rstrip("/"))
        else:
            defaults = {
                "model": source or name,
                "tokenizer": source or name,
                "enable_prompt_embeds": True,
                "max_model_len": self.max_context,
                "dtype": str(bank.base_model.dtype).removeprefix("torch."),
                "gpu_memory_utilization": gpu_memory_utilization,
            }
            self.backend = _InProcess({**defaults, **engine_args})

    # ------------------------------------------------------------------------------- engine protocol
    def prepare(self, model: PromptedModel) -> torch.Tensor:
        """The task's virtual tokens (P, E) on the CPU; refuses a prompt that is not input embeddings."""
        with torch.no_grad():
            output = model.prompt()
        if not isinstance(output, VirtualTokens):
            raise ValueError(
                f"a {model.prompt.config.method} prompt is keys and values in every layer; vLLM takes a "
                "prompt as input embeddings only. Serve this task with --engine local"
            )
        return output.embeddings.detach().float().cpu()

    def prompt_length(self, prepared: torch.Tensor | None) -> int:
        return 0 if prepared is None else prepared.shape[0]

    async def start(self) -> None:
        await self.backend.start()
        self.max_context = min(self.max_context, self.backend.max_model_len or self.max_context)

    async def stop(self) -> None:
        """Let the requests at vLLM finish, then let go of it."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))
        await self.backend.stop()

    def submit(self, handle: RequestHandle) -> None:
        if self.is_full():
            raise self.queue_full()
        task = asyncio.get_running_loop().create_task(self._run(handle))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        handle.on_cancel(lambda: task.get_loop().call_soon_threadsafe(task.cancel))

    def is_full(self) -> bool:
        return len(self._in_flight) >= self.max_in_flight

    def queue_full(self) -> APIError:
        return too_many_requests(
            f"the server has {self.max_in_flight} requests at vLLM; retry shortly", retry_after_s=1
        )

    def load(self) -> dict[str, int]:
        return {"running": len(self._in_flight), "waiting": 0}

    # ------------------------------------------------------------------------------------ requests
    def inputs(self, prompt_ids: list[int], prepared: torch.Tensor | None) -> dict[str, Any]:
        """vLLM's prompt: token ids for the bare model, else ``[virtual tokens ; E[ids]]`` (T, E)."""
        if prepared is None:
            return {"prompt_token_ids": list(prompt_ids)}
        with torch.no_grad():
            text = self.embed(torch.tensor(prompt_ids, device=self.embed.weight.device)).float().cpu()
        return {"prompt_embeds": torch.cat([prepared, text])}

    async def _run(self, handle: RequestHandle) -> None:
        request = handle.request
        try:
            async for piece in self.backend.stream(
                self.inputs(request.prompt_ids, request.prompt),
                request.params,
                uuid.uuid4().hex,
                stream=request.stream,
            ):
                handle.put(piece)
        except APIError as err:
            handle.fail(err)
        except asyncio.CancelledError:  # the client left: vLLM aborts the request as we stop reading
            raise
        except Exception as err:
            logger.exception("vLLM failed a request")
            handle.fail(unavailable(f"vLLM failed this request: {err}"))


def _finish(reason: str | None) -> str | None:
    return None if reason is None else "length" if reason == "length" else "stop"


class _InProcess:
    """``vllm.v1.engine.async_llm.AsyncLLM`` in this process."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.args, self.engine, self.max_model_len = args, None, args["max_model_len"]

    async def start(self) -> None:
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as err:
            raise RuntimeError(
                "--engine vllm without --vllm-url runs vLLM in this process, but `import vllm` fails "
                f"here ({err}); install the vllm extra, or give --vllm-url of a running vLLM server"
            ) from err
        device = self.args.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        # On CPU, vLLM's default torch.compile takes minutes to start and runs no faster.
        self.args.setdefault("enforce_eager", device == "cpu")
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.args))

    async def stop(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    async def stream(
        self, inputs: dict[str, Any], params: SamplingParams, request_id: str, stream: bool = True
    ) -> AsyncIterator[Piece]:
        """vLLM's output as pieces; in this process each costs nothing, so ``stream`` changes nothing."""
        from vllm import SamplingParams as VLLMParams
        from vllm.sampling_params import RequestOutputKind

        sampling = VLLMParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
            ignore_eos=params.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
        async for output in self.engine.generate(inputs, sampling, request_id):
            for choice in output.outputs:
                yield Piece(choice.index, choice.text, list(choice.token_ids), _finish(choice.finish_reason))


class _Remote:
    """An external vLLM OpenAI server, streamed over HTTP (``/v1/completions``)."""

    def __init__(self, url: str) -> None:
        self.url, self.client, self.model, self.max_model_len = url, None, None, None

    async def start(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(None, connect=10))
        try:
            served = (await self.client.get("/v1/models")).raise_for_status().json()["data"][0]
        except Exception as err:
            await self.client.aclose()
            raise RuntimeError(f"no vLLM server answers at {self.url}/v1/models ({err})") from err
        self.model, self.max_model_len = served["id"], served.get("max_model_len")

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def stream(
        self, inputs: dict[str, Any], params: SamplingParams, request_id: str, stream: bool = True
    ) -> AsyncIterator[Piece]:
        """vLLM's reply as pieces: its server-sent events, or (``stream=False``) one piece per choice.

        Not streaming when the client does not saves an HTTP event and a JSON parse per token.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": params.n,
            "stop": list(params.stop) or None,
            "seed": params.seed,
            "ignore_eos": params.ignore_eos,
            "stream": stream,
            "return_token_ids": True,
        }
        if "prompt_embeds" in inputs:
            body["prompt_embeds"] = _base64_tensor(inputs["prompt_embeds"])
        else:
            body["prompt"] = inputs["prompt_token_ids"]
        async with self.client.stream(
            "POST", "/v1/completions", json=body, headers={"X-Request-Id": request_id}
        ) as reply:
            if reply.status_code != 200:
                error = json.loads(await reply.aread() or b"{}").get("error", {})
                message = error.get("message") or f"vLLM answered {reply.status_code}"
                if reply.status_code < 500:
                    raise bad_request(f"vLLM refused the request: {message}")
                raise unavailable(f"vLLM failed the request: {message}")
            if not stream:
                for choice in json.loads(await reply.aread())["choices"]:
                    yield _piece(choice)
                return
            async for line in reply.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line.removeprefix("data: ")).get("choices", []):
                    yield _piece(choice)


def _piece(choice: dict[str, Any]) -> Piece:
    """One choice of a vLLM completion (a whole reply or one streamed event) as a piece."""
    return Piece(
        choice["index"],
        choice.get("text", ""),
        list(choice.get("token_ids") or []),
        _finish(choice.get("finish_reason")),
    )


def _base64_tensor(tensor: torch.Tensor) -> str:
    """The encoding vLLM's ``prompt_embeds`` field reads: base64 of ``torch.save`` bytes (loaded weights-only)."""
    buffer = io.BytesIO()
    torch.save(tensor.contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
