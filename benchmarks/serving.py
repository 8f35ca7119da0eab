"""Serving many tasks over HTTP: ``softprompt serve`` under load, against the ways users serve them today.

Eight tasks share one frozen base model (``mixed_tasks.TASKS``: three prompt-tuning prompts of 20
tokens, three prefix-tuning prefixes of 10, two P-tuning prompts of 20). Clients (1, 4, 16, 64 at
once, each sending its next request when the last one is answered) send completions of random
token ids (``--min-len``-``--max-len`` tokens, ``--new-tokens`` greedy tokens each, ``ignore_eos``
so every case does the same work) to:

- **mixed**: ``softprompt serve``, each request to one of the 8 tasks in turn;
- **single task**: the same server, every request to one prompt-tuning task;
- **bare model**: the same server, the base model's own name (no prompt);
- **peft**: a FastAPI server that does what peft users do — the 8 adapters loaded on ``PeftModel`` s
  (one per method: peft cannot hold adapters of two methods in one), ``set_adapter`` and
  ``generate`` per request, one request at a time (peft cannot mix adapters in one batch);
- **vLLM** (with ``--vllm-python``, an interpreter with vLLM): a vLLM server sent the prompt
  embeddings directly (computed before timing); ``softprompt serve --engine vllm --vllm-url`` in
  front of it; and, when that interpreter has softprompt installed too, ``softprompt serve --engine
  vllm`` with vLLM in its own process — prompt-tuning and P-tuning tasks only: vLLM takes no
  prefix. These servers are processes of their own, as users run them.

Also measured: time to the first streamed token of a prompt-tuning task against the bare model (one
client, requests interleaved), the HTTP layer's cost (a request through HTTP against the same request
submitted to the engine in-process), and how fast 429s come back under 2x overload (``softprompt
serve`` in a process of its own with ``max_batch + max_queue`` = 8, hit by bursts of 16).

Each (case, clients) runs for ``--seconds`` after a warm-up, or ``--requests`` requests, whichever
comes first. softprompt's local-engine servers and the peft server run in this process's threads
(uvicorn, loopback), the clients on its event loop: on a 2-core machine the client's own work is
counted in every latency.

Run (real SmolLM2-135M-Instruct, ~15 minutes on 2 CPU cores with vLLM):
    python benchmarks/serving.py --out benchmarks/results/serving.json --vllm-python /work/vllm-venv/bin/python
    python benchmarks/serving.py --quick        # tiny random Llama, seconds (the test)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import peft
import torch
import uvicorn
from _common import machine_info, markdown_table, set_threads, write_json
from fastapi import FastAPI
from mixed_tasks import PROMPT_TASK, TASKS, build_tasks, load_base

from softprompt.serve.app import create_app
from softprompt.serve.engine import GenerationRequest, RequestHandle
from softprompt.serve.registry import TaskRegistry
from softprompt.serve.sampling import SamplingParams
from softprompt.serve.scheduler import LocalEngine
from softprompt.serve.vllm_engine import VLLMEngine, _base64_tensor

BARE = "bare"
MIXED, SINGLE, BARE_CASE, PEFT = (
    "mixed 8 tasks",
    "single task",
    "bare model",
    "peft (set_adapter per request)",
)
VLLM_ENGINE, VLLM_IN_PROCESS, VLLM_PLAIN = (
    "softprompt serve --engine vllm --vllm-url",
    "softprompt serve --engine vllm (in-process vLLM)",
    "vLLM, prompt embeds",
)
# Tasks vLLM can take (input embeddings): prompt tuning and P-tuning.
EMBEDDING_TASKS = [name for name, config in TASKS if config.method != "prefix_tuning"]


# ------------------------------------------------------------------------------------------ servers
@contextlib.contextmanager
def serving(app):
    """``app`` on a free loopback port in a uvicorn thread: yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)


def softprompt_app(bank, engine, models: dict, tokenizer, names: list[str]):
    """``softprompt serve``'s app over ``engine`` with the tasks ``names`` of ``models``."""
    registry = TaskRegistry(bank, engine)
    for name in names:
        registry.add(name, models[name])
    return create_app(engine, registry, tokenizer), registry


def word_tokenizer(vocab: int):
    """A word-level tokenizer over ``vocab`` ids (``w0`` ...) for the random models: requests are token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    raw.pre_tokenizer, raw.decoder = pre_tokenizers.Whitespace(), decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="w1", pad_token="w0")


def base_tokenizer(name: str, vocab: int):
    if name != "smollm2":
        return word_tokenizer(vocab)
    from transformers import AutoTokenizer

    from softprompt.hub import builtin_model_path

    return AutoTokenizer.from_pretrained(builtin_model_path("smollm2-135m-instruct"))


def peft_app(peft_models: dict) -> FastAPI:
    """What a peft user writes: pick the adapter, generate, one request at a time."""
    app = FastAPI()
    lock = threading.Lock()

    def generate(body: dict) -> dict:
        ids = torch.tensor([body["prompt"]])
        with lock, torch.no_grad():
            model = peft_models[body["model"]]
            model.set_adapter(body["model"], inference_mode=True)  # peft's way: one active adapter
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=body["max_tokens"],
                min_new_tokens=body["max_tokens"],
                do_sample=False,
            )
        return {"usage": {"completion_tokens": out.shape[1] - ids.shape[1]}}

    @app.post("/v1/completions")
    def completions(body: dict) -> dict:  # FastAPI runs a plain def in its thread pool
        return generate(body)

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command(python: str, model_dir: str, port: int, max_model_len: int) -> list[str]:
    """An external vLLM OpenAI server on loopback with prompt embeddings on (CPU settings: eager, fp32)."""
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--host",
        "127.0.0.1",
    ]
    command += ["--port", str(port), "--enable-prompt-embeds", "--max-model-len", str(max_model_len)]
    return command + ["--dtype", "float32", "--gpu-memory-utilization", "0.25", "--enforce-eager"]


@contextlib.contextmanager
def running(command: list[str], url: str, env: dict | None = None, seconds: float = 600):
    """Run ``command`` in its own process group until ``url``/health answers; stop the whole group after."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
    )
    try:
        deadline = time.monotonic() + seconds
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise RuntimeError(f"{' '.join(command[:4])} did not start: {process.stderr.read()[-3000:]}")
            time.sleep(1)
        yield process
    finally:
        stop(process)


def _healthy(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    return False


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (vLLM's engine and workers are children), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


# ------------------------------------------------------------------------------------------ clients
class Workload:
    """The requests of one run: random token ids per (client, turn), a task per request."""

    def __init__(self, vocab: int, min_len: int, max_len: int, new_tokens: int) -> None:
        self.vocab, self.min_len, self.max_len, self.new_tokens = vocab, min_len, max_len, new_tokens

    def ids(self, client: int, turn: int) -> list[int]:
        generator = torch.Generator().manual_seed(client * 100_003 + turn)
        length = int(torch.randint(self.min_len, self.max_len + 1, (1,), generator=generator))
        return torch.randint(3, self.vocab, (length,), generator=generator).tolist()

    def body(self, model: str, client: int, turn: int, **extra) -> dict:
        return {
            "model": model,
            "prompt": self.ids(client, turn),
            "max_tokens": self.new_tokens,
            "temperature": 0,
            "ignore_eos": True,
            **extra,
        }


async def drive(url: str, clients: int, make_body, seconds: float, max_requests: int, path="/v1/completions"):
    """``clients`` closed-loop clients for ``seconds`` (or ``max_requests``): throughput and latency."""
    latencies, tokens, statuses = [], 0, {}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        started, cpu = time.perf_counter(), time.process_time()
        stop_at = started + seconds

        async def client(index: int) -> None:
            nonlocal tokens
            for turn in itertools.count():  # every client sends at least one request
                body = make_body(index, turn)
                sent = time.perf_counter()
                reply = await http.post(path, json=body)
                latencies.append(time.perf_counter() - sent)
                statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
                if reply.status_code == 200:
                    tokens += reply.json()["usage"]["completion_tokens"]
                if time.perf_counter() >= stop_at or len(latencies) + clients > max_requests:
                    return

        await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "clients": clients,
        "requests": len(latencies),
        "statuses": statuses,
        "seconds": elapsed,
        # this process's CPU time (server threads and clients): the work done, whatever else runs
        "cpu_seconds": cpu,
        "requests_per_s": len(latencies) / elapsed,
        "tokens_per_s": tokens / elapsed,
        "tokens_per_cpu_s": tokens / cpu,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
    }


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)


async def first_token_times(
    url: str, workload: Workload, models: list[str], rounds: int
) -> dict[str, list[float]]:
    """Seconds to the first streamed token of each model, one client, models interleaved (A B, B A, ...)."""
    times: dict[str, list[float]] = {m: [] for m in models}
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        for turn in range(rounds):
            for model in models if turn % 2 == 0 else models[::-1]:
                body = workload.body(model, 10_000, turn, stream=True, max_tokens=1)
                sent = time.perf_counter()
                first = None
                async with http.stream("POST", "/v1/completions", json=body) as reply:
                    async for line in reply.aiter_lines():  # read to the end: the next request starts idle
                        if first is None and line.startswith("data: {"):
                            first = time.perf_counter() - sent
                times[model].append(first)
    return times


async def http_overhead(
    url: str, engine: LocalEngine, workload: Workload, rounds: int
) -> dict[str, list[float]]:
    """The same one-client request (one token) through HTTP and submitted to the engine directly, interleaved.

    One token: the model's time, the same both ways, is kept small next to what is measured.
    """
    times: dict[str, list[float]] = {"http": [], "engine": []}
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        for turn in range(rounds):
            body = workload.body(BARE, 20_000, turn, max_tokens=1)
            sent = time.perf_counter()
            (await http.post("/v1/completions", json=body)).raise_for_status()
            times["http"].append(time.perf_counter() - sent)
            sent = time.perf_counter()
            handle = RequestHandle(GenerationRequest(body["prompt"], None, params))
            engine.submit(handle)
            async for _ in handle.pieces():
                pass
            times["engine"].append(time.perf_counter() - sent)
    return times


async def overload(url: str, workload: Workload, model: str, burst: int, rounds: int) -> dict:
    """Bursts of ``burst`` requests for ``model`` at once: how fast the ones over capacity are answered 429."""
    refusals, served = [], 0
    async with httpx.AsyncClient(
        base_url=url, timeout=600, limits=httpx.Limits(max_connections=burst + 4)
    ) as http:

        async def one(turn: int, index: int) -> None:
            nonlocal served
            sent = time.perf_counter()
            reply = await http.post("/v1/completions", json=workload.body(model, 30_000 + index, turn))
            if reply.status_code == 429:
                refusals.append(time.perf_counter() - sent)
            else:
                served += reply.status_code == 200

        for turn in range(rounds):
            await asyncio.gather(*(one(turn, i) for i in range(burst)))
    return {
        "burst": burst,
        "rounds": rounds,
        "served": served,
        "refused": len(refusals),
        "refusal_p50_s": percentile(refusals, 50) if refusals else None,
        "refusal_p99_s": percentile(refusals, 99) if refusals else None,
    }


# ------------------------------------------------------------------------------------------- report
def goal(name: str, value: float | None, bound: float, at_least: bool, unit: str = "x") -> dict:
    met = value is not None and (value >= bound if at_least else value <= bound)
    return {"goal": name, "value": value, "bound": f"{'>=' if at_least else '<='} {bound}{unit}", "met": met}


def load_table(results: dict[str, list[dict]]) -> str:
    rows = []
    for case, runs in results.items():
        for run in runs:
            rows.append(
                [
                    case,
                    run["clients"],
                    run["requests"],
                    f"{run['requests_per_s']:.2f}",
                    f"{run['tokens_per_s']:.1f}",
                    f"{run['tokens_per_cpu_s']:.1f}",
                    f"{run['p50_s'] * 1e3:.0f}",
                    f"{run['p99_s'] * 1e3:.0f}",
                    " ".join(f"{k}:{v}" for k, v in sorted(run["statuses"].items())),
                ]
            )
    headers = [
        "case",
        "clients",
        "requests",
        "req/s",
        "tokens/s",
        "tokens/CPU-s",
        "p50 ms",
        "p99 ms",
        "statuses",
    ]
    return markdown_table(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", choices=("smollm2", "random-llama-135m", "tiny-llama"), default="smollm2")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed window per (case, clients)")
    parser.add_argument("--requests", type=int, default=256, help="most requests per (case, clients)")
    parser.add_argument("--min-len", type=int, default=24, help="shortest prompt (tokens)")
    parser.add_argument("--max-len", type=int, default=48, help="longest prompt (tokens)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per request")
    parser.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch")
    parser.add_argument("--first-token-rounds", type=int, default=40, help="streamed requests per model")
    parser.add_argument("--overhead-rounds", type=int, default=40, help="requests each way (HTTP, engine)")
    parser.add_argument("--overload-rounds", type=int, default=5, help="bursts of 2x capacity")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--vllm-python", help="an interpreter with vLLM: adds the vLLM cases")
    parser.add_argument(
        "--peft-clients",
        type=int,
        nargs="*",
        default=[1, 4, 16],
        help="concurrency levels for the peft server (it answers one request at a time: 64 clients only queue)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny random Llama, short windows (numbers mean nothing)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.clients, args.seconds, args.requests = "tiny-llama", [1, 4, 16], 0.5, 24
        args.min_len, args.max_len, args.new_tokens = 4, 8, 4
        args.first_token_rounds = args.overhead_rounds = 4
        args.overload_rounds, args.threads = 2, 1
    return args


async def measure(args, bank, models, peft_models, tokenizer, workload: Workload, report) -> dict:
    names = [name for name, _ in TASKS]
    results: dict[str, list[dict]] = {}
    cases = {
        MIXED: lambda c, t: workload.body(names[(c + t) % len(names)], c, t),
        SINGLE: lambda c, t: workload.body(PROMPT_TASK, c, t),
        BARE_CASE: lambda c, t: workload.body(BARE, c, t),
    }
    engine = LocalEngine(bank, tokenizer, name=BARE, max_batch=args.max_batch, max_queue=4096)
    out: dict = {}
    with serving(softprompt_app(bank, engine, models, tokenizer, names)[0]) as url:
        await drive(url, 4, cases[MIXED], args.seconds / 4, 8)  # warm-up
        for clients in args.clients:
            for case, make in cases.items():
                results.setdefault(case, []).append(
                    await drive(url, clients, make, args.seconds, args.requests)
                )
            report(f"  softprompt, {clients} clients")
        first = await first_token_times(url, workload, [BARE, PROMPT_TASK], args.first_token_rounds)
        out["first_token_s"] = first
        out["http_overhead_s"] = await http_overhead(url, engine, workload, args.overhead_rounds)
        report("  first token, HTTP overhead")
    if args.peft_clients:
        with serving(peft_app(peft_models)) as url:
            await drive(url, 1, cases[MIXED], args.seconds / 4, 4)
            for clients in args.peft_clients:
                results.setdefault(PEFT, []).append(
                    await drive(url, clients, cases[MIXED], args.seconds, args.requests)
                )
                report(f"  peft, {clients} clients")
    with tempfile.TemporaryDirectory() as folder:
        # A server process of its own, as users run it: the clients' event loop here is not its GIL.
        bank.base_model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        url = f"http://127.0.0.1:{(port := free_port())}"
        command = [sys.executable, "-m", "softprompt.cli", "serve", "--model", folder, "--port", str(port)]
        with running(command + ["--max-batch", "4", "--max-queue", "4"], url):
            out["overload"] = await overload(url, workload, folder, burst=16, rounds=args.overload_rounds)
    report("  overload")
    if args.vllm_python:
        results |= await measure_vllm(args, bank, models, tokenizer, workload, report)
    out["load"] = results
    return out


async def measure_vllm(args, bank, models, tokenizer, workload: Workload, report) -> dict[str, list[dict]]:
    """``softprompt serve --engine vllm`` and plain vLLM on the same embedding-task requests.

    Every server is a process of its own, as users run them, driven by this process's clients:
    plain vLLM's OpenAI server; ``softprompt serve --engine vllm --vllm-url`` in front of it (the
    scale-out path: embeddings made here, generation there); and, when ``--vllm-python`` can import
    softprompt, ``softprompt serve --engine vllm`` with vLLM in its own process (``AsyncLLM``).
    """
    from softprompt.hub import builtin_model_path

    model_dir = str(builtin_model_path("smollm2-135m-instruct"))
    results: dict[str, list[dict]] = {}
    # Plain vLLM's requests carry [prompt ; token embeddings], made before timing by an engine that
    # never starts: plain vLLM's client does no work in the window.
    maker = VLLMEngine(bank, tokenizer, name=BARE, url="http://unused")
    registry = TaskRegistry(bank, maker)
    for name in EMBEDDING_TASKS:
        registry.add(name, models[name])

    def mine(c: int, t: int) -> dict:
        return workload.body(EMBEDDING_TASKS[(c + t) % len(EMBEDDING_TASKS)], c, t)

    def plain_bodies(clients: int) -> dict:
        turns = args.requests // clients + 2
        bodies = {}
        for c in range(clients):
            for t in range(turns):
                body = mine(c, t)
                inputs = maker.inputs(body.pop("prompt"), registry.prepared(body["model"]))
                bodies[c, t] = {
                    **body,
                    "model": "base",
                    "prompt_embeds": _base64_tensor(inputs["prompt_embeds"]),
                }
        return bodies

    def bodies_for(case: str, clients: int):
        if case != VLLM_PLAIN:
            return mine
        bodies = plain_bodies(clients)
        return lambda c, t: bodies[c, t]

    async def load(case: str, url: str) -> None:
        await drive(url, 4, bodies_for(case, 4), args.seconds / 4, 8)  # warm-up
        for clients in args.clients:
            run = await drive(url, clients, bodies_for(case, clients), args.seconds, args.requests)
            results.setdefault(case, []).append(run)
            report(f"  {case}, {clients} clients")

    with tempfile.TemporaryDirectory() as folder:
        tasks = []
        for name in EMBEDDING_TASKS:
            tasks += ["--task", f"{name}={models[name].save(Path(folder) / f'{name}.safetensors')}"]
        vllm_url = f"http://127.0.0.1:{(vllm_port := free_port())}"
        command = vllm_command(args.vllm_python, model_dir, vllm_port, 512)
        with running(command + ["--served-model-name", "base", "--disable-log-stats"], vllm_url):
            report("  vLLM started")
            await load(VLLM_PLAIN, vllm_url)
            url = f"http://127.0.0.1:{(port := free_port())}"
            remote = softprompt_serve(sys.executable, model_dir, port, tasks, f"--vllm-url={vllm_url}")
            with running(remote, url):
                await load(VLLM_ENGINE, url)
        if _imports_softprompt(args.vllm_python):
            url = f"http://127.0.0.1:{(port := free_port())}"
            in_process = softprompt_serve(args.vllm_python, model_dir, port, tasks, *VLLM_IN_PROCESS_ARGS)
            with running(in_process, url):
                report("  softprompt serve with vLLM in its process started")
                await load(VLLM_IN_PROCESS, url)
    return results


# The in-process engine with plain vLLM's settings (vllm_command): fp32, eager, the same context.
VLLM_IN_PROCESS_ARGS = (
    "--vllm-arg=dtype=float32",
    "--vllm-arg=max_model_len=512",
    "--vllm-arg=enforce_eager=true",
    "--vllm-gpu-memory-utilization=0.25",
)


def softprompt_serve(python: str, model_dir: str, port: int, tasks: list[str], *options: str) -> list[str]:
    """``softprompt serve --engine vllm`` on loopback with ``tasks`` (``--task NAME=FILE`` ...)."""
    command = [python, "-m", "softprompt.cli", "serve", "--model", model_dir, "--engine", "vllm"]
    return command + ["--port", str(port), "--max-queue", "4096", *tasks, *options]


def _imports_softprompt(python: str) -> bool:
    """Whether ``python`` (vLLM's interpreter) can run softprompt's server too."""
    probe = subprocess.run([python, "-c", "import softprompt.serve.app"], capture_output=True)
    return probe.returncode == 0


def goals(out: dict, args) -> list[dict]:
    load = out["load"]
    at = 16 if 16 in args.clients else args.clients[-1]

    def rate(case: str, key: str = "tokens_per_s") -> float | None:
        runs = [r for r in load.get(case, []) if r["clients"] == at]
        return runs[0][key] if runs else None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    first, overhead = out["first_token_s"], out["http_overhead_s"]
    refusal = out["overload"]["refusal_p99_s"]
    found = [
        goal(
            f"mixed 8-task throughput / {name}, {at} clients ({clock})",
            ratio(rate(MIXED, key), rate(other, key)),
            bound,
            True,
        )
        for other, name, bound in ((SINGLE, "single-task", 0.9), (PEFT, "peft", 3.0))
        for clock, key in (("wall", "tokens_per_s"), ("CPU", "tokens_per_cpu_s"))
    ]
    found += [
        goal(
            "HTTP overhead at p50 (HTTP - engine, 1 client, paired)",
            statistics.median(h - e for h, e in zip(overhead["http"], overhead["engine"], strict=True)) * 1e3,
            10.0,
            False,
            " ms",
        ),
        goal(
            "time to first token, prompt-tuning task / bare model (paired median)",
            statistics.median(t / b for t, b in zip(first[PROMPT_TASK], first[BARE], strict=True)),
            1.05,
            False,
        ),
        goal(
            "429 answered under 2x overload, p99",
            None if refusal is None else refusal * 1e3,
            50.0,
            False,
            " ms",
        ),
    ]
    found += [
        goal(
            f"{case} throughput / plain vLLM, {at} clients (wall)",
            ratio(rate(case), rate(VLLM_PLAIN)),
            0.9,
            True,
        )
        for case in (VLLM_IN_PROCESS, VLLM_ENGINE)
        if case in load
    ]
    return found


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    started = time.perf_counter()
    info = machine_info()
    base = load_base(args.model)
    tokenizer = base_tokenizer(args.model, base.config.vocab_size)
    print(
        f"{args.model}: clients {args.clients}, {args.seconds:g} s per case, load {info['load_average_at_start']}"
    )

    def report(what: str) -> None:
        print(f"{what}: {time.perf_counter() - started:.0f} s", flush=True)

    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        bank, models, peft_models = build_tasks(base, Path(folder))
        workload = Workload(base.config.vocab_size, args.min_len, args.max_len, args.new_tokens)
        out = asyncio.run(measure(args, bank, models, peft_models, tokenizer, workload, report))
    found = goals(out, args)
    print("\n## Load (tokens/s counts generated tokens; every request asks for", args.new_tokens, "tokens)\n")
    print(load_table(out["load"]))
    print("\n## Goals\n")
    print(
        markdown_table(
            ["goal", "value", "bound", "met"],
            [[g["goal"], _fmt(g["value"]), g["bound"], "yes" if g["met"] else "NO"] for g in found],
        )
    )
    payload = {
        "date": info["date"],
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tasks": [
            {"name": name, "method": config.method, "num_virtual_tokens": config.num_virtual_tokens}
            for name, config in TASKS
        ],
        **out,
        "goals": found,
        "seconds_total": time.perf_counter() - started,
        "peft": peft.__version__,
    }
    if args.out:
        write_json(args.out, payload)
    return payload


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main(sys.argv[1:])
