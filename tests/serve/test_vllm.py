"""``--engine vllm`` on the real SmolLM2-135M-Instruct: greedy outputs equal softprompt's own ``generate``.

Opt-in: runs where ``import vllm`` works (the engine in this process), or where
``SOFTPROMPT_VLLM_PYTHON`` names an interpreter that has vLLM (e.g. ``/work/vllm-venv/bin/python``):
then an external vLLM server and ``softprompt serve --engine vllm`` (in-process AsyncLLM) are started
with it on loopback. Each start takes about a minute on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_helpers import greedy_alone

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from serving import free_port, running, vllm_command  # noqa: E402  (the benchmark starts vLLM the same way)

import softprompt
from softprompt.bank import TaskBank
from softprompt.serve.app import ServerSettings, create_app
from softprompt.serve.registry import TaskRegistry
from softprompt.serve.vllm_engine import VLLMEngine

VLLM_PYTHON = os.environ.get("SOFTPROMPT_VLLM_PYTHON")
IN_PROCESS = importlib.util.find_spec("vllm") is not None
pytestmark = pytest.mark.skipif(
    not (VLLM_PYTHON or IN_PROCESS), reason="vLLM is not installed here and SOFTPROMPT_VLLM_PYTHON is not set"
)
needs_python = pytest.mark.skipif(
    not VLLM_PYTHON, reason="set SOFTPROMPT_VLLM_PYTHON to an interpreter with vLLM"
)
PROMPTS = ["The capital of France is", "Once upon a time,", "def fibonacci(n):"]
MAX_TOKENS = 12
START_SECONDS = 400  # vLLM's start on 2 busy CPU cores


@pytest.fixture(scope="module")
def smollm2():
    from softprompt.hub import builtin_model_path, load_base_model

    try:
        folder = builtin_model_path("smollm2-135m-instruct")
    except (KeyError, ImportError, FileNotFoundError) as err:
        pytest.skip(f"SmolLM2 is not installed: {err}")
    base, tokenizer = load_base_model(str(folder))
    return folder, base, tokenizer


@pytest.fixture(scope="module")
def tasks(smollm2, tmp_path_factory):
    _, base, tokenizer = smollm2
    folder = tmp_path_factory.mktemp("vllm-tasks")
    configs = {
        "prompt": softprompt.PromptTuningConfig(num_virtual_tokens=8, init="vocab", seed=1),
        "ptuning": softprompt.PTuningConfig(num_virtual_tokens=6, init="random", seed=2),
        "prefix": softprompt.PrefixTuningConfig(num_virtual_tokens=4, seed=3),
    }
    return {
        name: softprompt.wrap(base, config, tokenizer=tokenizer).save(folder / f"{name}.safetensors")
        for name, config in configs.items()
    }


def check_outputs(post, smollm2, tasks, model_name):
    """Every served model's greedy text equals softprompt's own generate on the same model."""
    _, base, tokenizer = smollm2
    for name in (model_name, "prompt", "ptuning"):
        for text in PROMPTS:
            body = {"model": name, "prompt": text, "max_tokens": MAX_TOKENS, "temperature": 0}
            reply = post("/v1/completions", body)
            assert reply.status_code == 200, reply.text
            expected = greedy_alone(
                base, tokenizer, tasks.get(name), tokenizer(text)["input_ids"], MAX_TOKENS
            )
            assert reply.json()["choices"][0]["text"] == expected, (name, text)


@needs_python
def test_an_external_vllm_server_serves_the_tasks_as_prompt_embeddings(smollm2, tasks):
    folder, base, tokenizer = smollm2
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(vllm_command(VLLM_PYTHON, str(folder), port, 512), url, seconds=START_SECONDS):
        bank = TaskBank(base)
        engine = VLLMEngine(bank, tokenizer, name="smollm2", url=url)
        registry = TaskRegistry(bank, engine)
        for name in ("prompt", "ptuning"):
            registry.add_file(name, tasks[name])
        app = create_app(engine, registry, tokenizer, ServerSettings(admin_key="admin"))
        with TestClient(app) as client:
            check_outputs(lambda path, body: client.post(path, json=body), smollm2, tasks, "smollm2")
            body = {"model": "prompt", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0}
            whole = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
            with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as reply:
                events = [line for line in reply.iter_lines() if line.startswith("data: {")]
            streamed = "".join(choice["text"] for e in events for choice in json.loads(e[6:])["choices"])
            assert streamed == whole
            refused = client.put(
                "/v1/soft_prompts/topic",
                content=tasks["prefix"].read_bytes(),
                headers={"Authorization": "Bearer admin"},
            )
            assert refused.status_code == 400 and "prefix_tuning prompt is keys and values" in refused.text
            assert engine.load()["running"] == 0


@needs_python
def test_softprompt_serve_runs_vllm_in_process(smollm2, tasks):
    folder, _, _ = smollm2
    port = free_port()
    src = Path(softprompt.__file__).resolve().parents[1]
    command = [VLLM_PYTHON, "-m", "softprompt.cli", "serve", "--engine", "vllm", "--model", str(folder)]
    command += [
        "--port",
        str(port),
        "--vllm-gpu-memory-utilization",
        "0.25",
        "--vllm-arg",
        "max_model_len=512",
    ]
    command += ["--task", f"prompt={tasks['prompt']}", "--task", f"ptuning={tasks['ptuning']}"]
    env = {**os.environ, "PYTHONPATH": str(src)}
    url = f"http://127.0.0.1:{port}"
    with running(command, url, env, seconds=START_SECONDS):
        check_outputs(
            lambda path, body: httpx.post(f"{url}{path}", json=body, timeout=120), smollm2, tasks, str(folder)
        )


@pytest.mark.skipif(not IN_PROCESS, reason="vLLM is not importable in this interpreter")
def test_the_engine_in_this_process(smollm2, tasks):
    folder, base, tokenizer = smollm2
    bank = TaskBank(base)
    engine = VLLMEngine(
        bank, tokenizer, name="smollm2", source=str(folder), max_model_len=512, gpu_memory_utilization=0.25
    )
    registry = TaskRegistry(bank, engine)
    for name in ("prompt", "ptuning"):
        registry.add_file(name, tasks[name])
    with TestClient(create_app(engine, registry, tokenizer)) as client:
        check_outputs(lambda path, body: client.post(path, json=body), smollm2, tasks, "smollm2")
