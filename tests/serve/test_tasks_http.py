"""Tasks added and removed while serving: admin key only, bad files refused with the reason, nothing served changes."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import BARE, build_app, greedy_alone
from tiny import tiny_causal_lm

import softprompt
from softprompt.serve.app import ServerSettings

ADMIN = {"Authorization": "Bearer admin-secret"}
USER = {"Authorization": "Bearer user-secret"}
PROMPT = "hello w33 w44"


@pytest.fixture()
def client(base, tokenizer, adapters):
    settings = ServerSettings(api_key="user-secret", admin_key="admin-secret")
    app, _, _ = build_app(base, tokenizer, {"prompt": adapters["prompt"]}, settings)
    with TestClient(app) as client:
        yield client


def complete(client, model, headers=USER):
    body = {"model": model, "prompt": PROMPT, "temperature": 0, "max_tokens": 6}
    return client.post("/v1/completions", json=body, headers=headers)


def upload(client, name, data: bytes, headers=ADMIN):
    return client.put(f"/v1/soft_prompts/{name}", content=data, headers=headers)


def models(client) -> list[str]:
    return [m["id"] for m in client.get("/v1/models", headers=USER).json()["data"]]


def test_a_task_is_added_replaced_and_removed_while_serving(client, base, tokenizer, adapters):
    ids = tokenizer(PROMPT)["input_ids"]
    added = upload(client, "topic", adapters["prefix"].read_bytes())
    assert added.status_code == 200, added.text
    assert added.json() == {
        "id": "topic",
        "object": "soft_prompt",
        "method": "prefix_tuning",
        "num_virtual_tokens": 3,
        "bytes": softprompt.load(base, adapters["prefix"]).prompt.folded()["prefix"].numel() * 4,  # fp32
    }
    assert models(client) == [BARE, "prompt", "topic"]
    assert complete(client, "topic").json()["choices"][0]["text"] == greedy_alone(
        base, tokenizer, adapters["prefix"], ids, 6
    )

    replaced = upload(client, "topic", adapters["ptuning"].read_bytes())
    assert replaced.json()["method"] == "p_tuning"
    assert complete(client, "topic").json()["choices"][0]["text"] == greedy_alone(
        base, tokenizer, adapters["ptuning"], ids, 6
    )

    assert client.delete("/v1/soft_prompts/topic", headers=ADMIN).json() == {
        "id": "topic",
        "object": "soft_prompt",
        "deleted": True,
    }
    gone = complete(client, "topic")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert client.delete("/v1/soft_prompts/topic", headers=ADMIN).status_code == 404
    assert models(client) == [BARE, "prompt"]


def pickled_tensors() -> bytes:
    buffer = io.BytesIO()
    torch.save({"embeddings": torch.zeros(5, 32)}, buffer)  # a zip of pickles
    return buffer.getvalue()


def other_model_adapter(tmp_path) -> bytes:
    other = tiny_causal_lm("gpt2")
    return (
        softprompt.wrap(other, softprompt.PromptTuningConfig(num_virtual_tokens=5))
        .save(tmp_path / "o.safetensors")
        .read_bytes()
    )


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda tmp: other_model_adapter(tmp), "made for another base model"),
        (lambda tmp: b"\x00" * 64, "damaged"),
        (lambda tmp: pickled_tensors(), "safetensors only, because loading a pickle can run any code"),
        (lambda tmp: pickle.dumps({"embeddings": [0.0] * 8}), "the file is a Python pickle"),
    ],
    ids=["another-model", "corrupt", "torch-pickle", "pickle"],
)
def test_bad_files_are_refused_with_the_reason_and_nothing_changes(client, adapters, tmp_path, make, reason):
    before = complete(client, "prompt").json()["choices"][0]["text"]
    for name in ("new", "prompt"):  # a new name, and replacing a task being served
        refused = upload(client, name, make(tmp_path))
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert reason in error["message"] and error["code"] == "invalid_adapter"
        assert "/tmp" not in error["message"] and "the uploaded file" in error["message"]
    assert models(client) == [BARE, "prompt"]
    assert complete(client, "prompt").json()["choices"][0]["text"] == before


def test_only_the_admin_key_changes_tasks(client, adapters):
    data = adapters["prefix"].read_bytes()
    assert upload(client, "x", data, headers={}).status_code == 401
    assert upload(client, "x", data, headers={"Authorization": "Bearer wrong"}).status_code == 401
    forbidden = upload(client, "x", data, headers=USER)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["type"] == "permission_error"
    assert client.delete("/v1/soft_prompts/prompt", headers=USER).status_code == 403
    assert models(client) == [BARE, "prompt"]


@pytest.mark.parametrize("name", ["..", "a/b", "-x", "x" * 200, BARE])
def test_task_names_are_checked(client, adapters, name):
    reply = upload(client, name, adapters["prefix"].read_bytes())
    assert reply.status_code in (400, 404, 405)
    assert "error" in reply.json()
    assert models(client) == [BARE, "prompt"]


def test_uploads_are_off_without_an_admin_key(base, tokenizer, adapters):
    app, _, _ = build_app(base, tokenizer, {})
    with TestClient(app) as client:
        reply = upload(client, "x", adapters["prefix"].read_bytes())
    assert reply.status_code == 403 and "--admin-key" in reply.json()["error"]["message"]


def test_uploads_past_the_size_limit_are_refused(base, tokenizer, adapters):
    app, _, _ = build_app(base, tokenizer, {}, ServerSettings(admin_key="admin-secret", max_upload_bytes=100))
    with TestClient(app) as client:
        reply = upload(client, "x", adapters["prefix"].read_bytes())
        empty = upload(client, "y", b"")
    assert reply.status_code == 413 and "limit of 100 bytes" in reply.json()["error"]["message"]
    assert empty.status_code == 400


def test_a_prompted_model_of_another_base_model_is_refused(base, tokenizer):
    from softprompt.bank import TaskBank
    from softprompt.serve.registry import TaskRefused, TaskRegistry
    from softprompt.serve.scheduler import LocalEngine

    bank = TaskBank(base)
    registry = TaskRegistry(bank, LocalEngine(bank, tokenizer, name=BARE))
    other = softprompt.wrap(tiny_causal_lm("qwen3"), softprompt.PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(TaskRefused, match="made for another base model"):
        registry.add("x", other)
    assert registry.names() == []


def _multitask_file(base, folder) -> object:
    """A multitask (MPT) file with tasks "a" and "b" whose factors differ."""
    config = softprompt.methods.MultitaskPromptTuningConfig(num_virtual_tokens=3, tasks=("a", "b"), rank=1)
    model = softprompt.wrap(base, config)
    with torch.no_grad():
        model.prompt.task_u.normal_(generator=torch.Generator().manual_seed(0))
    return model.save(folder / "mpt.safetensors")


def test_one_task_of_a_multitask_file_is_served_under_a_name(client, base, tokenizer, tmp_path):
    path = _multitask_file(base, tmp_path)
    added = client.put(
        "/v1/soft_prompts/second", params={"task": "b"}, content=path.read_bytes(), headers=ADMIN
    )
    assert added.status_code == 200, added.text
    assert added.json()["method"] == "prompt_tuning"
    single = softprompt.load(base, path, task="b").save(tmp_path / "b.safetensors")  # the task on its own
    ids = tokenizer(PROMPT)["input_ids"]
    assert complete(client, "second").json()["choices"][0]["text"] == greedy_alone(
        base, tokenizer, single, ids, 6
    )


def test_a_task_a_multitask_file_lacks_is_refused_with_its_tasks(client, base, tmp_path):
    path = _multitask_file(base, tmp_path)
    refused = client.put("/v1/soft_prompts/x", params={"task": "c"}, content=path.read_bytes(), headers=ADMIN)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "the uploaded file has no task 'c'; its tasks: a, b"
    assert "x" not in models(client)
