"""``softprompt serve``: many task prompts on one frozen model behind an OpenAI-compatible API.

Modules, one job each, from the wire inwards:

* :mod:`~softprompt.serve.app` — the FastAPI app (routes, streaming, error JSON);
* :mod:`~softprompt.serve.schemas` — OpenAI's request and response bodies;
* :mod:`~softprompt.serve.errors` — errors as OpenAI sends them; :mod:`~softprompt.serve.auth` — keys;
* :mod:`~softprompt.serve.metrics` — Prometheus metrics;
* :mod:`~softprompt.serve.registry` — the tasks: loaded, added and removed, validated;
* :mod:`~softprompt.serve.engine` — what an engine is to the server (requests, pieces of text);
* :mod:`~softprompt.serve.scheduler` — softprompt's own engine: iteration-level, mixed-task batching;
* :mod:`~softprompt.serve.batch` — the running sequences' key/value caches and forward passes;
* :mod:`~softprompt.serve.sampling`, :mod:`~softprompt.serve.text` — choosing tokens; text and stop strings;
* :mod:`~softprompt.serve.vllm_engine` — vLLM as the engine, tasks sent as prompt embeddings.

FastAPI and uvicorn come with the ``serve`` extra (``pip install "softprompt[serve]"``).
"""
