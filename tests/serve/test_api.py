"""The OpenAI-compatible API: every method's greedy output equals the library's own ``generate``."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from serve_helpers import BARE, TASKS, build_app, greedy_alone, greedy_tokens

PROMPT = "hello world w20 w31 w42"


@pytest.fixture(scope="module")
def client(base, tokenizer, adapters):
    app, _, _ = build_app(base, tokenizer, adapters)
    with TestClient(app) as client:
        yield client


def complete(client, model, prompt=PROMPT, **fields):
    reply = client.post(
        "/v1/completions", json={"model": model, "prompt": prompt, "temperature": 0, **fields}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def stream_events(client, path, body) -> list:
    with client.stream("POST", path, json={**body, "stream": True}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_models_lists_every_task_and_the_bare_model(client):
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == [BARE, *TASKS]
    assert client.get("/v1/models/prefix").json()["id"] == "prefix"
    methods = {t["id"]: t["method"] for t in client.get("/v1/soft_prompts").json()["data"]}
    assert methods == {
        "prompt": "prompt_tuning",
        "prefix": "prefix_tuning",
        "ptuning": "p_tuning",
        "ptuning_lstm": "p_tuning",
    }


@pytest.mark.parametrize("model", [BARE, *TASKS])
def test_greedy_completion_equals_the_library_alone(client, base, tokenizer, adapters, model):
    ids = tokenizer(PROMPT)["input_ids"]
    body = complete(client, model, max_tokens=12)
    (choice,) = body["choices"]
    expected = greedy_tokens(base, adapters.get(model), ids, 12)
    assert choice["text"] == tokenizer.decode(expected, skip_special_tokens=True)
    assert choice["finish_reason"] == ("length" if len(expected) == 12 else "stop")
    assert body["model"] == model and body["object"] == "text_completion"
    used = len(ids) + len(expected)
    assert body["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": len(expected),
        "total_tokens": used,
    }


def test_tasks_change_what_the_model_says(client):
    texts = {model: complete(client, model, max_tokens=12)["choices"][0]["text"] for model in [BARE, *TASKS]}
    assert len(set(texts.values())) == len(texts), texts


def test_token_id_prompts_and_prompt_lists_number_their_choices(client, tokenizer):
    ids = tokenizer(PROMPT)["input_ids"]
    by_text = complete(client, "prefix", max_tokens=5)["choices"][0]["text"]
    by_ids = complete(client, "prefix", prompt=ids, max_tokens=5)["choices"][0]["text"]
    assert by_ids == by_text
    body = complete(client, "prefix", prompt=["w50 w51", PROMPT], max_tokens=5, n=2)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][2]["text"] == body["choices"][3]["text"] == by_text  # greedy: n copies


@pytest.mark.parametrize("model", [BARE, "prompt", "prefix", "ptuning"])
def test_streamed_texts_join_to_the_whole_text(client, model):
    whole = complete(client, model, max_tokens=10)
    events = stream_events(
        client, "/v1/completions", {"model": model, "prompt": PROMPT, "temperature": 0, "max_tokens": 10}
    )
    assert "".join(e["choices"][0]["text"] for e in events) == whole["choices"][0]["text"]
    assert events[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert {e["id"] for e in events} == {events[0]["id"]} and events[0]["object"] == "text_completion"


def test_chat_uses_the_chat_template_and_streams(client, base, tokenizer, adapters):
    messages = [{"role": "system", "content": "w60 w61"}, {"role": "user", "content": "hello world"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    body = {"model": "ptuning", "messages": messages, "temperature": 0, "max_tokens": 8}
    reply = client.post("/v1/chat/completions", json=body).json()
    (choice,) = reply["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": greedy_alone(base, tokenizer, adapters["ptuning"], ids["input_ids"], 8),
    }
    assert reply["object"] == "chat.completion" and reply["usage"]["prompt_tokens"] == len(ids["input_ids"])
    events = stream_events(
        client, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}}
    )
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"]["content"] for e in events[:-1]) == choice["message"]["content"]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == reply["usage"]


def test_stop_strings_end_the_text_before_them(client):
    text = complete(client, "prompt", max_tokens=12)["choices"][0]["text"]
    words = text.split(" ")
    stop = words[3]
    cut = text[: text.index(stop)]
    (choice,) = complete(client, "prompt", max_tokens=12, stop=[stop, "never"])["choices"]
    assert (choice["text"], choice["finish_reason"]) == (cut, "stop")
    events = stream_events(
        client,
        "/v1/completions",
        {"model": "prompt", "prompt": PROMPT, "temperature": 0, "max_tokens": 12, "stop": stop},
    )
    assert "".join(e["choices"][0]["text"] for e in events) == cut


def test_seeded_sampling_repeats_and_choices_differ(client):
    fields = dict(max_tokens=10, temperature=1.0, top_p=0.9, seed=7, n=3)
    first = complete(client, "prefix", **fields)
    again = complete(client, "prefix", **fields)
    texts = [c["text"] for c in first["choices"]]
    assert texts == [c["text"] for c in again["choices"]]
    assert len(set(texts)) > 1  # each choice draws from its own generator
    other_seed = complete(client, "prefix", **{**fields, "seed": 8})
    assert [c["text"] for c in other_seed["choices"]] != texts


def test_ignore_eos_decodes_past_the_end_of_sequence(client, base, adapters, tokenizer):
    ids = tokenizer(PROMPT)["input_ids"]
    stops_early = [m for m in [BARE, *TASKS] if len(greedy_tokens(base, adapters.get(m), ids, 12)) < 12]
    assert stops_early  # some task of the tiny model ends its text within 12 tokens
    (choice,) = (body := complete(client, stops_early[0], max_tokens=12, ignore_eos=True))["choices"]
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 12


def test_a_chat_without_max_tokens_fills_what_the_context_has_left(client, base):
    body = {"model": "prompt", "messages": [{"role": "user", "content": "hello"}], "ignore_eos": True}
    reply = client.post("/v1/chat/completions", json=body).json()
    used = reply["usage"]["total_tokens"] + 5  # the task's 5 virtual tokens take context too
    assert used == base.config.max_position_embeddings and reply["choices"][0]["finish_reason"] == "length"
