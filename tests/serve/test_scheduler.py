"""The iteration-level scheduler: mixed tasks share steps, requests join and leave between steps, and each
request's output equals its output alone."""

from __future__ import annotations

import asyncio

import pytest
import torch
from serve_helpers import TASKS, HoldStep, greedy_tokens

import softprompt
from softprompt.bank import TaskBank
from softprompt.serve.engine import GenerationRequest, RequestHandle
from softprompt.serve.errors import APIError
from softprompt.serve.sampling import SamplingParams
from softprompt.serve.scheduler import LocalEngine
from softprompt.serve.text import TextStream


@pytest.fixture()
def engine(base, tokenizer):
    return LocalEngine(TaskBank(base), tokenizer, name="bare", max_batch=64)


@pytest.fixture(scope="module")
def compiled(base, adapters):
    return {name: softprompt.load(base, path) for name, path in adapters.items()}


def request(engine, ids, task=None, prepared=None, **params):
    return RequestHandle(
        GenerationRequest(ids, task, SamplingParams(**{"temperature": 0.0, **params}), prepared)
    )


async def tokens_of(handle) -> list[int]:
    return [t async for piece in handle.pieces() for t in piece.token_ids]


def run(engine, scenario):
    async def main():
        await engine.start()
        try:
            return await scenario()
        finally:
            await engine.stop()

    return asyncio.run(main())


def prompts(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 12, (count,), generator=generator).tolist()
    return [torch.randint(4, 96, (n,), generator=generator).tolist() for n in lengths]


def test_mixed_requests_arriving_together_share_steps_and_equal_themselves_alone(
    engine, base, adapters, compiled
):
    tasks = [None, *TASKS] * 2
    rows = prompts(len(tasks))
    lengths = [3 + (7 * i) % 11 for i in range(len(tasks))]

    async def scenario():
        handles = []
        for ids, task, n in zip(rows, tasks, lengths, strict=True):
            prepared = None if task is None else engine.prepare(compiled[task])
            handles.append(request(engine, ids, task, prepared, max_tokens=n))
            engine.submit(handles[-1])
        return await asyncio.gather(*(tokens_of(h) for h in handles))

    outputs = run(engine, scenario)
    for ids, task, n, out in zip(rows, tasks, lengths, outputs, strict=True):
        assert out == greedy_tokens(base, adapters.get(task), ids, n), (task, ids)
    # Decoding steps shared: on average several sequences in each step.
    assert engine.steps < sum(len(o) for o in outputs) / 2


def test_a_long_request_does_not_hold_short_ones_that_join_later(engine, base, adapters, compiled):
    long_ids, short_ids = prompts(2, seed=1)
    expected_long = greedy_tokens(base, adapters["prefix"], long_ids, 100)
    assert len(expected_long) > 10  # long enough to be running while the short ones come and go
    # The long request's prefill is held until the short ones wait: they join it after its first step.
    held = HoldStep(base, (1, 1))
    finished = []

    async def collect(name, handle):
        out = await tokens_of(handle)
        finished.append(name)
        return out

    async def scenario():
        long = request(engine, long_ids, "prefix", engine.prepare(compiled["prefix"]), max_tokens=100)
        engine.submit(long)
        shorts = [
            request(engine, short_ids, task, engine.prepare(compiled[task]), max_tokens=3)
            for task in ("prompt", "ptuning")
        ]
        try:
            assert await asyncio.to_thread(held.holding.wait, 60)
            for handle in shorts:
                engine.submit(handle)
            assert engine.load()["waiting"] == 2
        finally:
            held.released.set()  # never leave the worker held: stopping waits for it
        return await asyncio.gather(
            collect("long", long), *(collect(f"short{i}", h) for i, h in enumerate(shorts))
        )

    try:
        long_out, *short_outs = run(engine, scenario)
    finally:
        held.remove()
    assert finished[-1] == "long"
    assert short_outs == [greedy_tokens(base, adapters[t], short_ids, 3) for t in ("prompt", "ptuning")]
    assert long_out == expected_long


def test_seeded_samples_do_not_depend_on_the_batch(engine, compiled):
    ids = prompts(1, seed=3)[0]
    params = dict(max_tokens=8, temperature=0.9, top_p=0.8, seed=11, n=2)

    async def alone():
        handle = request(engine, ids, "prompt", engine.prepare(compiled["prompt"]), **params)
        engine.submit(handle)
        return await tokens_of(handle)

    async def in_a_crowd():
        others = [request(engine, p, None, None, max_tokens=6, temperature=1.0) for p in prompts(5, seed=4)]
        mine = request(engine, ids, "prompt", engine.prepare(compiled["prompt"]), **params)
        for handle in [*others[:3], mine, *others[3:]]:
            engine.submit(handle)
        outs = await asyncio.gather(*(tokens_of(h) for h in [mine, *others]))
        return outs[0]

    first = run(engine, alone)
    assert len(first) == 16  # both choices, to the end
    assert run(engine, in_a_crowd) == first  # an engine starts again after a stop


class PoisonOnToken:
    """Forward pre-hooks that raise when ``token`` is among the backbone's input ids: before the backbone
    runs, or with ``in_layer``, when that decoder layer is reached (the layers before it have already
    appended the step's keys/values to the cache)."""

    def __init__(
        self, model, token: int, only_single_steps: bool = False, in_layer: int | None = None
    ) -> None:
        self.token, self.only_single_steps = token, only_single_steps
        self.poisoned = False
        self.handles = [model.model.register_forward_pre_hook(self, with_kwargs=True)]
        if in_layer is not None:
            self.handles.append(
                model.model.layers[in_layer].register_forward_pre_hook(self.raise_if_poisoned)
            )
        self.in_layer = in_layer

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None:  # compiling a prompt (virtual tokens)
            return
        self.poisoned = (ids.shape[1] == 1 or not self.only_single_steps) and bool((ids == self.token).any())
        if self.in_layer is None:
            self.raise_if_poisoned()

    def raise_if_poisoned(self, *_) -> None:
        if self.poisoned:
            raise RuntimeError(f"poisoned token {self.token}")

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_a_request_that_fails_in_prefill_fails_alone(engine, base, adapters, compiled):
    good = prompts(3, seed=5)
    poisoned = [*good[0][:2], 95, *good[0][2:]]
    good = [[t for t in ids if t != 95] for ids in good]
    hook = PoisonOnToken(base, 95)

    async def scenario():
        handles = [
            request(engine, ids, "prompt", engine.prepare(compiled["prompt"]), max_tokens=4) for ids in good
        ]
        bad = request(engine, poisoned, None, None, max_tokens=4)
        for handle in [handles[0], bad, *handles[1:]]:
            engine.submit(handle)
        outs = await asyncio.gather(*(tokens_of(h) for h in [*handles, bad]), return_exceptions=True)
        return outs

    try:
        *outs, failure = run(engine, scenario)
    finally:
        hook.remove()
    assert isinstance(failure, APIError) and failure.status == 500
    assert "poisoned token 95" in failure.message
    assert outs == [greedy_tokens(base, adapters["prompt"], ids, 4) for ids in good]


@pytest.mark.parametrize("in_layer", [None, 1], ids=["before the model", "inside the model"])
def test_a_request_that_fails_in_a_decoding_step_fails_alone(engine, base, in_layer):
    # Find a request whose first generated token no other request generates: feeding it back fails.
    candidates = prompts(12, seed=6)
    firsts = [greedy_tokens(base, None, ids, 12) for ids in candidates]
    victim = next(
        i
        for i, out in enumerate(firsts)
        if all(out[0] not in other for j, other in enumerate(firsts) if j != i)
    )
    others = [i for i in range(len(candidates)) if i != victim][:4]
    hook = PoisonOnToken(base, firsts[victim][0], only_single_steps=True, in_layer=in_layer)

    async def scenario():
        handles = {i: request(engine, candidates[i], max_tokens=12) for i in [victim, *others]}
        for handle in handles.values():
            engine.submit(handle)
        outs = await asyncio.gather(*(tokens_of(h) for h in handles.values()), return_exceptions=True)
        return dict(zip(handles, outs, strict=True))

    try:
        outs = run(engine, scenario)
    finally:
        hook.remove()
    assert isinstance(outs[victim], APIError) and outs[victim].status == 500
    assert {i: outs[i] for i in others} == {i: firsts[i] for i in others}


def test_a_cancelled_request_frees_its_rows(engine, base):
    # Held in its first decoding step, the request cannot end on its own (no end-of-sequence, 120
    # tokens): whatever frees its 3 rows afterwards is the cancel.
    held = HoldStep(base, (3, 1))

    async def scenario():
        handle = request(engine, prompts(1)[0], max_tokens=120, temperature=1.0, n=3, ignore_eos=True)
        engine.submit(handle)
        pieces = handle.pieces()
        try:
            assert (await anext(pieces)).token_ids
            assert await asyncio.to_thread(held.holding.wait, 60)
            assert engine.load()["running"] == 3
            handle.cancel()
            assert [p async for p in pieces] == []  # the handle ends at once
            calls_so_far = len(held.calls)
        finally:
            held.released.set()  # never leave the worker held: stopping waits for it
        # The next iteration drops the cancelled rows before it runs anything else: a request that
        # arrives then is prefilled and finishes alone.
        after = request(engine, [5, 6, 7], max_tokens=1)
        engine.submit(after)
        assert len(await tokens_of(after)) == 1
        return calls_so_far

    try:
        calls_so_far = run(engine, scenario)  # and stopped: every accepted request has finished
    finally:
        held.remove()
    # Since the cancel, only the new request's prefill ran: no step of the cancelled rows, ever.
    assert held.calls[calls_so_far:] == [(1, 2), (1, 1)]
    assert engine.load() == {"running": 0, "waiting": 0}


def test_a_fault_outside_the_model_fails_the_running_requests_and_the_engine_goes_on(engine, monkeypatch):
    real = TextStream.push
    calls = []

    def fail_once(self, token):
        calls.append(token)
        if len(calls) == 2:
            raise RuntimeError("detokenizer broke")
        return real(self, token)

    monkeypatch.setattr(TextStream, "push", fail_once)

    async def scenario():
        first = request(engine, [5, 6, 7], max_tokens=4)
        engine.submit(first)
        failed = await asyncio.gather(tokens_of(first), return_exceptions=True)
        second = request(engine, [5, 6, 7], max_tokens=4)
        engine.submit(second)
        return failed[0], await tokens_of(second)

    failed, served = run(engine, scenario)
    assert isinstance(failed, APIError) and "detokenizer broke" in failed.message and failed.status == 500
    assert len(served) == 4


def test_more_choices_than_the_batch_holds_are_refused_and_hold_no_one_up(base, tokenizer):
    engine = LocalEngine(TaskBank(base), tokenizer, name="bare", max_batch=4)

    async def scenario():
        with pytest.raises(APIError) as refused:
            engine.submit(request(engine, [5, 6, 7], max_tokens=2, n=5))
        behind = request(engine, [5, 6, 7], max_tokens=2, n=4)
        engine.submit(behind)
        return refused.value, await tokens_of(behind)

    refused, served = run(engine, scenario)
    assert (refused.status, refused.param) == (400, "n")
    assert refused.message == (
        "n=5 choices are more than the 4 sequences this server decodes at once; ask for at most 4"
    )
    assert len(served) == 8
