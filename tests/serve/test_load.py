"""A load test on loopback: thousands of mixed requests with bad ones among them — none lost, no 5xx for a
good one, every good answer right, memory flat. Slow (SOFTPROMPT_SLOW=1); bounded in count and time."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import psutil
import pytest
from serve_helpers import BARE, TASKS, build_app, greedy_tokens, served

from softprompt.serve.app import ServerSettings

REQUESTS = 3000
CLIENTS = 32
TIME_LIMIT_S = 600
PROMPTS = [" ".join(f"w{10 + (7 * i + 3 * j) % 80}" for j in range(2 + i % 9)) for i in range(24)]


def plan(rng: random.Random) -> list[tuple[str, dict | bytes, int]]:
    """(kind, body, expected status) per request: most good, some streamed, one in ten bad."""
    models = [BARE, *TASKS]
    out = []
    for _ in range(REQUESTS):
        roll = rng.random()
        body = {
            "model": rng.choice(models),
            "prompt": rng.choice(PROMPTS),
            "max_tokens": rng.randint(1, 8),
            "temperature": 0,
        }
        if roll < 0.03:
            out.append(("bad", {**body, "model": "missing"}, 404))
        elif roll < 0.06:
            out.append(("bad", {**body, "temperature": -1}, 400))
        elif roll < 0.08:
            out.append(("bad", b'{"model": "tiny', 400))
        elif roll < 0.10:
            out.append(("bad", {**body, "prompt": " ".join(["hello"] * 200)}, 400))
        elif roll < 0.13:
            out.append(("leave", {**body, "max_tokens": 40, "stream": True}, 200))
        elif roll < 0.30:
            out.append(("stream", {**body, "stream": True}, 200))
        else:
            out.append(("good", body, 200))
    return out


@pytest.mark.slow
def test_thousands_of_mixed_requests_none_lost_no_5xx_memory_flat(base, tokenizer, adapters):
    tokens = {  # greedy decoding: the first n tokens of 8 are the answer to max_tokens=n
        (model, prompt): greedy_tokens(base, adapters.get(model), tokenizer(prompt)["input_ids"], 8)
        for model in [BARE, *TASKS]
        for prompt in PROMPTS
    }
    expected = {
        (model, prompt, n): tokenizer.decode(ids[:n], skip_special_tokens=True)
        for (model, prompt), ids in tokens.items()
        for n in range(1, 9)
    }
    app, engine, _ = build_app(
        base, tokenizer, adapters, ServerSettings(request_timeout_s=120), max_queue=4096
    )
    requests = plan(random.Random(0))
    answers: list[tuple] = []  # (kind, expected status, status, (model, prompt, max_tokens, text) or None)
    process = psutil.Process()
    memory: dict[str, int] = {}

    async def run(url: str) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for item in requests:
            queue.put_nowait(item)
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:

            async def client() -> None:
                while not queue.empty() and time.monotonic() - started < TIME_LIMIT_S:
                    kind, body, status = queue.get_nowait()
                    answers.append((kind, status, *await send(http, kind, body)))
                    if len(answers) == REQUESTS // 5:
                        memory["warm"] = process.memory_info().rss

            await asyncio.gather(*(client() for _ in range(CLIENTS)))

    with served(app) as (url, _):
        asyncio.run(run(url))
        assert wait_idle(engine)
        memory["end"] = process.memory_info().rss

    assert len(answers) == REQUESTS  # none lost, all within the time limit
    assert [a for a in answers if a[2] >= 500] == []
    assert [a for a in answers if a[1] != a[2]] == []
    right = [expected[got[:3]] == got[3] for kind, _, _, got in answers if kind in ("good", "stream")]
    assert len(right) > REQUESTS / 2 and all(right), f"{right.count(False)} wrong answers"
    growth = memory["end"] - memory["warm"]
    assert growth < 64 * 2**20, f"memory grew by {growth / 2**20:.0f} MiB over the run"


async def send(http: httpx.AsyncClient, kind: str, body) -> tuple[int, object]:
    if isinstance(body, bytes):
        reply = await http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        return reply.status_code, None
    if kind == "leave":  # read two events, then hang up
        async with http.stream("POST", "/v1/completions", json=body) as reply:
            lines = reply.aiter_lines()
            await anext(lines)
            return reply.status_code, None
    if kind == "stream":
        async with http.stream("POST", "/v1/completions", json=body) as reply:
            texts = [
                json.loads(line[6:])["choices"][0]["text"]
                async for line in reply.aiter_lines()
                if line.startswith("data: {")
            ]
            return reply.status_code, (body["model"], body["prompt"], body["max_tokens"], "".join(texts))
    reply = await http.post("/v1/completions", json=body)
    if reply.status_code != 200:
        return reply.status_code, None
    return 200, (body["model"], body["prompt"], body["max_tokens"], reply.json()["choices"][0]["text"])


def wait_idle(engine, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if engine.load() == {"running": 0, "waiting": 0}:
            return True
        time.sleep(0.05)
    return False
