"""The local engine on models that count key columns or share keys/values: mixed-task requests through
the scheduler give each request the greedy tokens ``softprompt.load(base, adapter).generate`` gives it
alone, for every method — sliding windows shorter than prompt + input (Mistral; Gemma 3 with sliding
and full layers), MPT's ALiBi, and Gemma 3n (sliding windows, layers reading earlier layers' keys/values).
"""

from __future__ import annotations

import asyncio

import pytest
import torch
import transformers as T
from models.test_invariance_windows import CONFIGS as WINDOWED
from models.test_invariance_windows import WINDOW, gemma3n_text
from serve_helpers import TASKS, greedy_tokens, make_tokenizer
from tiny import random_ids, tiny_hybrid_lm, tiny_model

import softprompt
from softprompt.bank import TaskBank
from softprompt.serve.engine import GenerationRequest, RequestHandle
from softprompt.serve.sampling import SamplingParams
from softprompt.serve.scheduler import LocalEngine


def windowed(family: str):
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(WINDOWED[family]()).eval()


BASES = {
    "mistral": lambda: windowed("mistral"),
    "gemma3_text": lambda: windowed("gemma3_text"),
    "mpt": lambda: windowed("mpt"),
    "gemma3n_text": gemma3n_text,
}
# Where prompt tuning and P-tuning enter as input embeddings (per-layer inputs looked up by token id):
# the local engine serves prefix tuning there and refuses the others (see the last test).
PREFIX_ONLY = {"gemma3n_text"}


async def generated(handle: RequestHandle) -> list[int]:
    return [t async for piece in handle.pieces() for t in piece.token_ids]


def serve_together(engine: LocalEngine, requests) -> list[list[int]]:
    """Submit every (ids, prepared task prompt or None, max_tokens) at once; each one's new tokens."""

    async def main():
        await engine.start()
        try:
            handles = [
                RequestHandle(
                    GenerationRequest(ids, None, SamplingParams(max_tokens=n, temperature=0.0), task)
                )
                for ids, task, n in requests
            ]
            for handle in handles:
                engine.submit(handle)
            return await asyncio.gather(*(generated(h) for h in handles))
        finally:
            await engine.stop()

    return asyncio.run(main())


@pytest.mark.parametrize("family", sorted(BASES))
def test_mixed_tasks_through_the_scheduler_equal_each_task_generating_alone(family, tmp_path):
    base = BASES[family]()
    served = {
        name: c for name, c in TASKS.items() if family not in PREFIX_ONLY or c.method == "prefix_tuning"
    }
    adapters = {
        name: softprompt.wrap(base, config).save(tmp_path / f"{name}.safetensors")
        for name, config in served.items()
    }
    engine = LocalEngine(TaskBank(base), make_tokenizer(), name=family)
    prepared = {name: engine.prepare(softprompt.load(base, path)) for name, path in adapters.items()}
    tasks = [None, *served, *reversed(served), None]
    rows = [random_ids(1, 2 + (5 * i) % 9, seed=i)[0].tolist() for i in range(len(tasks))]
    assert max(len(r) for r in rows) > 2 * WINDOW  # inputs past the window, prompts out of it
    lengths = [4 + i % 3 for i in range(len(tasks))]
    outputs = serve_together(
        engine, [(r, prepared.get(t), n) for r, t, n in zip(rows, tasks, lengths, strict=True)]
    )
    for ids, task, n, out in zip(rows, tasks, lengths, outputs, strict=True):
        assert out == greedy_tokens(base, adapters.get(task), ids, n), (task, ids)


@pytest.mark.parametrize(
    ("base", "reason"),
    [
        (lambda: tiny_hybrid_lm("jamba"), "carries a recurrent state in its layers"),
        (lambda: tiny_model("bart", "causal-lm"), "numbers positions by cache column"),
    ],
    ids=["recurrent layers", "positions by cache column"],
)
def test_a_model_whose_rows_cannot_be_padded_and_joined_is_refused_with_the_reason(base, reason):
    with pytest.raises(softprompt.UnsupportedModelError, match=reason):
        LocalEngine(TaskBank(base()), make_tokenizer(), name="tiny")


@pytest.mark.parametrize("task", ["prompt", "ptuning"])
def test_prompts_that_enter_as_input_embeddings_are_refused_with_the_reason(task):
    base = tiny_model(
        "gemma4_text", "causal-lm"
    )  # per-layer inputs by token id: virtual tokens enter as embeddings
    engine = LocalEngine(TaskBank(base), make_tokenizer(), name="gemma4")
    with pytest.raises(
        ValueError, match="takes .* prompts as input embeddings .* serve a prefix-tuning task"
    ):
        engine.prepare(softprompt.wrap(base, TASKS[task]))
