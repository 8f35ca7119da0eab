"""``softprompt serve`` end to end: a tiny model folder and adapters in, an OpenAI API on loopback out."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from softprompt.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_folder(base, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    base.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_serve_answers_with_its_tasks_and_stops_on_sigterm(model_folder, adapters, tmp_path):
    command = [sys.executable, "-m", "softprompt.cli", "serve", "--model", str(model_folder), "--port", "0"]
    command += ["--task", f"prefix={adapters['prefix']}", "--task", f"prompt={adapters['prompt']}"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        log = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = server.stderr.readline()
            log.append(line)
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if found or server.poll() is not None:
                break
        assert found, "".join(log)
        url = found.group(1)
        assert "task prefix: prefix_tuning, 3 virtual tokens" in "".join(log)
        names = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=60).json()["data"]]
        assert names == [str(model_folder), "prefix", "prompt"]
        reply = httpx.post(
            f"{url}/v1/completions",
            json={"model": "prefix", "prompt": "hello", "max_tokens": 3, "temperature": 0},
            timeout=60,  # httpx's 5 s default is short for a first request on a loaded machine
        )
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    finally:
        server.send_signal(signal.SIGTERM)
        _, rest = server.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells why it stopped
    assert server.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in rest


def test_a_bad_task_is_one_clear_message(model_folder, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"junk")
    result = runner.invoke(app, ["serve", "--model", str(model_folder), "--task", f"x={broken}"])
    assert result.exit_code == 2
    assert f"--task x={broken}:" in result.output and "damaged" in result.output
    result = runner.invoke(app, ["serve", "--model", str(model_folder), "--task", "no-equals-sign"])
    assert result.exit_code == 2 and "--task takes KEY=VALUE" in result.output


def test_the_vllm_engine_refuses_prefix_tuning_at_load(model_folder, adapters):
    result = runner.invoke(
        app,
        [
            "serve",
            "--model",
            str(model_folder),
            "--engine",
            "vllm",
            "--vllm-url",
            "http://127.0.0.1:9",
            "--task",
            f"topic={adapters['prefix']}",
        ],
    )
    assert result.exit_code == 2
    assert "prefix_tuning prompt is keys and values in every layer" in result.output
    assert "--engine local" in result.output


def test_a_model_the_scheduler_cannot_decode_is_refused(tmp_path):
    import transformers as T

    t5 = T.T5ForConditionalGeneration(
        T.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=2)
    )
    t5.save_pretrained(tmp_path / "t5")
    from serve_helpers import make_tokenizer

    make_tokenizer().save_pretrained(tmp_path / "t5")
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "t5")])
    assert result.exit_code == 2
    assert (
        "softprompt serve decodes causal LMs (one key/value cache per sequence); t5 is a seq2seq model"
        in result.output
    )


def test_a_task_option_names_one_task_of_a_multitask_file(tmp_path):
    from softprompt.cli.serve import _adapter_and_task

    assert _adapter_and_task("runs/mpt.safetensors#rte") == (Path("runs/mpt.safetensors"), "rte")
    assert _adapter_and_task("runs/example") == (Path("runs/example"), None)
    assert _adapter_and_task("runs#2/adapter.safetensors") == (Path("runs#2/adapter.safetensors"), None)
    odd = tmp_path / "a#b.safetensors"  # a file whose own name has a '#'
    odd.write_bytes(b"")
    assert _adapter_and_task(str(odd)) == (odd, None)
