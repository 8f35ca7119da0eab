"""``--engine vllm --vllm-url``: the remote path against a stand-in for vLLM's OpenAI server (no vLLM needed).

The stand-in reads a request the way vLLM 0.32 does — ``prompt_embeds`` is base64 of ``torch.save``
bytes loaded weights-only, ``prompt`` is token ids — and continues it greedily with the tiny model's
own ``generate`` on those embeddings, answering streamed (server-sent events with ``token_ids``) or
whole. So what is checked here is softprompt's side: the embeddings it sends, and that both reply
forms come back as the same text the library generates alone.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from serve_helpers import BARE, greedy_alone, served

from softprompt.bank import TaskBank
from softprompt.serve.app import ServerSettings, create_app
from softprompt.serve.registry import TaskRegistry
from softprompt.serve.vllm_engine import VLLMEngine

MAX_TOKENS = 6


def fake_vllm(base, tokenizer, seen: list[dict]) -> FastAPI:
    """vLLM's ``/v1/models`` and ``/v1/completions`` (greedy only) over ``base``; records each request body."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "base", "max_model_len": 64}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        seen.append(body)
        if "prompt_embeds" in body:
            raw = base64.b64decode(body["prompt_embeds"], validate=True)
            embeds = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")  # (T, E)
        else:
            embeds = base.get_input_embeddings()(torch.tensor(body["prompt"]))
        with torch.no_grad():
            out = base.generate(
                inputs_embeds=embeds[None],
                attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
                max_new_tokens=body["max_tokens"],
                do_sample=False,
            )
        tokens = out[0].tolist()  # with inputs_embeds only, generate returns the new tokens
        decoded = [tokenizer.decode(tokens[:n], skip_special_tokens=True) for n in range(len(tokens) + 1)]
        texts = [
            after[len(before) :] for before, after in zip(decoded[:-1], decoded[1:], strict=True)
        ]  # vLLM's deltas
        if not body["stream"]:
            choice = {"index": 0, "text": "".join(texts), "token_ids": tokens, "finish_reason": "length"}
            return {"choices": [choice]}

        def events():
            for i, (token, text) in enumerate(zip(tokens, texts, strict=True)):
                finish = "length" if i == len(tokens) - 1 else None
                choice = {"index": 0, "text": text, "token_ids": [token], "finish_reason": finish}
                yield f"data: {json.dumps({'choices': [choice]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture()
def remote(base, tokenizer, adapters):
    """softprompt's server with ``--engine vllm`` at a stand-in vLLM: yields (post, the bodies vLLM saw)."""
    seen: list[dict] = []
    tasks = {name: path for name, path in adapters.items() if name != "prefix"}
    with served(fake_vllm(base, tokenizer, seen)) as (vllm_url, _):
        bank = TaskBank(base)
        engine = VLLMEngine(bank, tokenizer, name=BARE, url=vllm_url)
        registry = TaskRegistry(bank, engine)
        for name, path in tasks.items():
            registry.add_file(name, path)
        app = create_app(engine, registry, tokenizer, ServerSettings())
        with served(app) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
            yield client, seen, tasks


@pytest.mark.parametrize("stream", [False, True])
def test_each_embedding_task_comes_back_as_the_library_generates_it(remote, base, tokenizer, stream):
    client, seen, tasks = remote
    ids = [9, 10, 11, 12]
    for name, path in {BARE: None, **tasks}.items():
        body = {"model": name, "prompt": ids, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}
        if stream:
            with client.stream("POST", "/v1/completions", json=body) as reply:
                events = [line[6:] for line in reply.iter_lines() if line.startswith("data: {")]
            text = "".join(json.loads(e)["choices"][0]["text"] for e in events)
        else:
            text = client.post("/v1/completions", json=body).raise_for_status().json()["choices"][0]["text"]
        assert text == greedy_alone(base, tokenizer, path, ids, MAX_TOKENS), name
        assert seen[-1]["stream"] is stream  # a client that does not stream costs vLLM one reply, not events
        assert ("prompt_embeds" in seen[-1]) is (path is not None)


def test_a_prefix_task_is_refused_at_load_naming_the_local_engine(base, tokenizer, adapters):
    engine = VLLMEngine(TaskBank(base), tokenizer, name=BARE, url="http://127.0.0.1:9")
    registry = TaskRegistry(TaskBank(base), engine)
    with pytest.raises(Exception, match="--engine local"):
        registry.add_file("prefix", adapters["prefix"])
