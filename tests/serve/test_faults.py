"""Faults and bad input: OpenAI's error JSON for each, and no 5xx for a good request under any of them."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from serve_helpers import BARE, HoldStep, SlowSteps, build_app, served

from softprompt.serve import auth
from softprompt.serve.app import ServerSettings

GOOD = {"model": BARE, "prompt": "hello world", "max_tokens": 4, "temperature": 0}


@pytest.fixture()
def client(base, tokenizer, adapters):
    app, _, _ = build_app(base, tokenizer, {"prompt": adapters["prompt"]})
    with TestClient(app) as client:
        yield client


def error_of(reply, status):
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_an_unknown_task_is_404_naming_what_is_served(client):
    error = error_of(client.post("/v1/completions", json={**GOOD, "model": "nope"}), 404)
    assert error["message"] == f"no model 'nope'; this server has: {BARE}, prompt"
    assert error_of(client.get("/v1/models/nope"), 404)["code"] == "model_not_found"


@pytest.mark.parametrize(
    "change, param",
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": 3}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"mystery": 1}, "mystery"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [5, 500]}, "prompt"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(client, change, param):
    error = error_of(client.post("/v1/completions", json={**GOOD, **change}), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_malformed_json_and_missing_fields_are_400(client):
    error = error_of(
        client.post("/v1/completions", content=b'{"model": ', headers={"content-type": "application/json"}),
        400,
    )
    assert "not valid JSON" in error["message"]
    assert error_of(client.post("/v1/completions", json={"prompt": "x"}), 400)["param"] == "model"
    chat = {"model": BARE, "messages": [{"role": "robot", "content": "x"}]}
    assert error_of(client.post("/v1/chat/completions", json=chat), 400)["param"] == "messages.0.role"


def test_a_prompt_longer_than_the_context_is_400(client, base):
    context = base.config.max_position_embeddings
    long = " ".join(["hello"] * (context - 5))
    error = error_of(client.post("/v1/completions", json={**GOOD, "model": "prompt", "prompt": long}), 400)
    assert error["code"] == "context_length_exceeded"
    assert f"maximum context length is {context} tokens" in error["message"]
    assert "5 in the task's prompt" in error["message"]  # the task's virtual tokens count too
    fits = " ".join(["hello"] * (context - 5 - 4))
    assert client.post("/v1/completions", json={**GOOD, "model": "prompt", "prompt": fits}).status_code == 200


def test_unknown_routes_and_methods_answer_error_json(client):
    assert error_of(client.get("/v1/nothing"), 404)
    assert error_of(client.get("/v1/completions"), 405)


def test_api_keys_401_and_constant_time_comparison(base, tokenizer, adapters, monkeypatch):
    compared = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    app, _, _ = build_app(base, tokenizer, {}, ServerSettings(api_key="k1", admin_key="k2"))
    with TestClient(app) as client:
        assert error_of(client.post("/v1/completions", json=GOOD), 401)["type"] == "authentication_error"
        assert error_of(client.get("/v1/models", headers={"Authorization": "Bearer k3"}), 401)
        assert error_of(client.get("/v1/models", headers={"Authorization": "Basic k1"}), 401)
        for key in ("k1", "k2"):
            assert (
                client.post(
                    "/v1/completions", json=GOOD, headers={"Authorization": f"Bearer {key}"}
                ).status_code
                == 200
            )
        assert client.get("/health").status_code == 200  # liveness needs no key
    assert (b"k3", b"k1") in compared


def test_a_full_queue_answers_429_with_retry_after_and_then_serves(base, tokenizer, adapters):
    app, engine, _ = build_app(base, tokenizer, {}, max_batch=1, max_queue=1)
    # The first request's first forward is held: it keeps the worker (and its one row) and the second
    # request the one queue slot for as long as the test needs, however loaded the machine is.
    held = HoldStep(base)
    try:
        with TestClient(app) as client:
            replies = {}

            def post(name: str) -> None:
                replies[name] = client.post("/v1/completions", json=GOOD)

            threads = [threading.Thread(target=post, args=(name,)) for name in ("running", "waiting")]
            threads[0].start()
            assert held.holding.wait(30)
            threads[1].start()
            assert wait_until(lambda: engine.load()["waiting"] == 1)
            refused = client.post("/v1/completions", json=GOOD)
            error = error_of(refused, 429)
            assert refused.headers["retry-after"] == "1" and error["type"] == "rate_limit_error"
            held.released.set()
            for thread in threads:
                thread.join(30)
            assert {name: reply.status_code for name, reply in replies.items()} == {
                "running": 200,
                "waiting": 200,
            }
    finally:
        held.remove()


def test_a_request_past_its_time_is_408_and_its_rows_are_freed(base, tokenizer, adapters):
    app, engine, _ = build_app(base, tokenizer, {}, ServerSettings(request_timeout_s=0.3))
    slow = SlowSteps(base, 0.02)
    try:
        with TestClient(app) as client:
            error = error_of(client.post("/v1/completions", json={**GOOD, "max_tokens": 100}), 408)
            assert error["type"] == "timeout_error" and "0 s" not in error["message"]
            with client.stream(
                "POST", "/v1/completions", json={**GOOD, "max_tokens": 100, "stream": True}
            ) as reply:
                lines = [line for line in reply.iter_lines() if line]
            assert reply.status_code == 200  # the headers went out before the time ran out
            assert '"timeout_error"' in lines[-2] and lines[-1] == "data: [DONE]"
            assert wait_until(lambda: engine.load() == {"running": 0, "waiting": 0})
            assert client.post("/v1/completions", json=GOOD).status_code == 200
    finally:
        slow.remove()


def wait_until(condition, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_client_that_leaves_mid_stream_frees_its_slot(base, tokenizer, adapters):
    app, engine, _ = build_app(base, tokenizer, {"prompt": adapters["prompt"]})
    slow = SlowSteps(base, 0.02)
    try:
        with served(app) as (url, _):
            body = {**GOOD, "model": "prompt", "max_tokens": 100, "stream": True, "n": 2}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as reply:
                lines = reply.iter_lines()
                next(lines), next(lines)
                assert engine.load()["running"] == 2
            assert wait_until(lambda: engine.load()["running"] == 0)
            # and a non-streamed request whose client gives up
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=0.5)
            assert wait_until(lambda: engine.load()["running"] == 0)
            assert httpx.post(f"{url}/v1/completions", json=GOOD).status_code == 200
    finally:
        slow.remove()


def test_health_and_prometheus_metrics(client):
    assert client.post("/v1/completions", json=GOOD).status_code == 200
    client.post("/v1/completions", json={**GOOD, "model": "nope"})
    health = client.get("/health").json()
    assert health == {"status": "ok", "model": BARE, "tasks": 1, "running": 0, "waiting": 0}
    metrics = client.get("/metrics").text
    assert 'softprompt_requests_total{endpoint="completions",status="200"} 1.0' in metrics
    assert 'softprompt_requests_total{endpoint="completions",status="404"} 1.0' in metrics
    assert "softprompt_generation_tokens_total 4.0" in metrics
    assert "softprompt_time_to_first_token_seconds_count 1.0" in metrics
    assert "softprompt_tasks 1.0" in metrics


def test_shutdown_finishes_the_accepted_requests(base, tokenizer, adapters):
    app, _, _ = build_app(base, tokenizer, {})
    slow = SlowSteps(base, 0.01)
    replies = []
    try:
        with served(app) as (url, server):
            thread = threading.Thread(
                target=lambda: replies.append(
                    httpx.post(f"{url}/v1/completions", json={**GOOD, "max_tokens": 50}, timeout=60)
                )
            )
            thread.start()
            time.sleep(0.2)
            server.should_exit = True  # what SIGTERM does
            thread.join(60)
            with pytest.raises(httpx.ConnectError):
                httpx.post(f"{url}/v1/completions", json=GOOD)
    finally:
        slow.remove()
    assert replies[0].status_code == 200
    assert replies[0].json()["usage"]["completion_tokens"] == 50


def test_the_openai_client_talks_to_the_server(base, tokenizer, adapters):
    app, _, _ = build_app(base, tokenizer, {"prompt": adapters["prompt"]}, ServerSettings(api_key="secret"))
    with served(app) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="secret", max_retries=0)
        assert [m.id for m in client.models.list()] == [BARE, "prompt"]
        whole = client.completions.create(model="prompt", prompt="hello world", max_tokens=5, temperature=0)
        streamed = client.completions.create(
            model="prompt", prompt="hello world", max_tokens=5, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
        chat = client.chat.completions.create(
            model="prompt", messages=[{"role": "user", "content": "hello"}], max_tokens=4, temperature=0
        )
        assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nope", prompt="x", max_tokens=1)
        with pytest.raises(openai.BadRequestError, match="temperature"):
            client.completions.create(model="prompt", prompt="x", max_tokens=1, temperature=9)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
