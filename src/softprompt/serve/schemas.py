"""OpenAI's request and response bodies for completions and chat completions, as pydantic models.

Requests are validated field by field (a wrong type or value is a 400 naming the field); fields
OpenAI has but this server does not implement are refused when set to anything but their default,
so a client never silently gets something other than what it asked for.

Example:
    >>> CompletionRequest(model="sentiment", prompt="a gem", max_tokens=4).sampling().max_tokens
    4
    >>> ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], stop="\\n").sampling(16).stop
    ('\\n',)
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from softprompt.serve.sampling import SamplingParams

# The most sequences one request may ask for (``n``), as OpenAI allows.
MAX_CHOICES = 128


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """The decoding fields both endpoints share."""

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False  # vLLM's extension: decode past the end-of-sequence token
    # OpenAI fields this server does not implement: accepted only at their defaults.
    presence_penalty: Literal[0, 0.0] = 0.0
    frequency_penalty: Literal[0, 0.0] = 0.0
    logit_bias: dict[str, float] | None = Field(None, max_length=0)
    logprobs: Literal[None, False] = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop):
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    def _params(self, max_tokens: int) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens, self.temperature, self.top_p, self.n, stop, self.seed, self.ignore_eos
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: ``prompt`` is a text, a list of texts, token ids or lists of token ids."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=1)
    echo: Literal[False] = False
    best_of: Literal[None, 1] = None
    suffix: Literal[None] = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt):
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be an empty list")
        return prompt

    def sampling(self) -> SamplingParams:
        return self._params(self.max_tokens)

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a text or a list of token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``: messages rendered with the tokenizer's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        return self._params(self.max_completion_tokens or self.max_tokens or default_max_tokens)

    def conversation(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


# ------------------------------------------------------------------------------------------ responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    id: str, model: str, choices: list[tuple[str, str | None]], use: dict[str, int], chat: bool
) -> dict[str, Any]:
    """A whole (non-streamed) response; ``choices``: (text, finish reason) in index order."""
    if chat:
        body = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
            for i, (text, reason) in enumerate(choices)
        ]
    else:
        body = [
            {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(choices)
        ]
    kind = "chat.completion" if chat else "text_completion"
    return {
        "id": id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": body,
        "usage": use,
    }


def chunk(
    id: str, model: str, index: int, text: str, finish_reason: str | None, chat: bool, first: bool = False
) -> dict[str, Any]:
    """One server-sent event of a streamed response: new text of one choice."""
    if chat:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {"id": id, "object": kind, "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(id: str, model: str, use: dict[str, int], chat: bool) -> dict[str, Any]:
    """The last event when ``stream_options.include_usage`` is set: no choices, the usage."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {
        "id": id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": use,
    }
