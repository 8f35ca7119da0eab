"""DeepSpeed ZeRO-3 through accelerate on two CPU processes (gloo, ``DS_ACCELERATOR=cpu``): the frozen base
loaded partitioned (every weight shape ``[0]`` at rest, peft #206 / #1633), vocabulary and text inits read
whole, the prompt of a one-process run, the adapter saved once.

The processes run ``sharded_worker.py --engine zero3`` under ``accelerate launch --config_file
configs/accelerate/zero3.yaml`` (the shipped config, fp32 on CPU). One launch takes ~40 s here: slow.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import sharded_worker
import torch
from safetensors.torch import load_file

import softprompt

deepspeed = pytest.importorskip("deepspeed")

ACCELERATE = Path(sys.executable).with_name("accelerate")
CONFIG = sharded_worker.CONFIGS / "zero3.yaml"


def test_the_shipped_zero3_config_loads_the_base_partitioned():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIG))
    assert config.distributed_type == "DEEPSPEED"
    zero = config.deepspeed_config
    assert zero["zero_stage"] == 3 and zero["zero3_init_flag"] is True
    assert (
        zero["gradient_accumulation_steps"] == 1
    )  # softprompt's core accumulates (one engine step per step)
    assert zero["zero3_save_16bit_model"] is False  # the base is never saved


@pytest.fixture(scope="module")
def run(tiny_gpt2, tmp_path_factory):
    if not ACCELERATE.exists():
        pytest.skip("accelerate's launcher is not installed next to this python")
    out = tmp_path_factory.mktemp("zero3")
    sharded_worker.launch("zero3", tiny_gpt2, out, "--engine", "zero3", env={"DS_ACCELERATOR": "cpu"})
    return out


@pytest.fixture(scope="module")
def one_process(tiny_gpt2, tmp_path_factory):
    return sharded_worker.reference(str(tiny_gpt2), tmp_path_factory.mktemp("one"))


def rank(out: Path, index: int) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((out / f"run-rank{index}.json").read_text()), load_file(
        out / f"run-rank{index}.safetensors"
    )


@pytest.mark.slow
def test_the_base_loads_partitioned_and_the_vocab_init_reads_it_whole(run, one_process):
    for index in (0, 1):
        facts, tensors = rank(run, index)
        assert facts["world"] == 2 and facts["base_sharded"]
        assert facts["embedding_shape_at_rest"] == [0]  # what peft's vocab/text inits read (#206)
        for whole, local in facts["base"].values():  # each process holds half of every frozen weight
            assert local * 2 == math.prod(whole)
        # softprompt.wrap(vocab init) on that base: the prompt a whole base gives
        assert torch.equal(tensors["initial_prompt"], one_process["initial_prompt"])


@pytest.mark.slow
def test_two_partitioned_processes_train_the_prompt_of_one(run, one_process):
    first, second = rank(run, 0)[1], rank(run, 1)[1]
    # ZeRO-3 partitions the prompt too (the worker gathers it to save and compare)
    assert all(rank(run, index)[0]["prompt_sharded"] for index in (0, 1))
    assert torch.equal(first["prompt"], second["prompt"])
    assert not torch.equal(first["prompt"], first["initial_prompt"])
    torch.testing.assert_close(first["prompt"], one_process["prompt"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first["scores"], one_process["scores"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_text_inits_read_the_partitioned_embedding_and_layers_whole(run, one_process):
    for index in (0, 1):
        facts, tensors = rank(run, index)
        for name in ("text_embeddings", "text_keys"):  # initializers.embeddings_of / states_of
            assert torch.equal(tensors[f"sharded_{name}"], one_process[name]), name
        assert facts["wrap_embeddings_error"] is None, facts["wrap_embeddings_error"]
        assert torch.equal(tensors["wrapped_text_embeddings"], one_process["text_embeddings"])


@pytest.mark.slow
def test_wrap_with_prefix_text_init_on_a_partitioned_base(run, one_process):
    facts, tensors = rank(run, 0)
    assert facts["wrap_prefix_error"] is None, facts["wrap_prefix_error"]
    assert torch.equal(tensors["wrapped_text_prefix"], one_process["prefix_text"])


@pytest.mark.slow
def test_a_step_of_two_micro_batches_is_one_deepspeed_step(run):
    facts, _ = rank(run, 0)
    assert facts["engine_steps_per_step_of_two_micro_batches"] == 1


@pytest.mark.slow
def test_the_adapter_is_written_once_from_the_gathered_prompt(run, tiny_gpt2):
    assert sorted(p.name for p in run.glob("*-adapter.safetensors")) == ["run-adapter.safetensors"]
    _, tensors = rank(run, 1)
    base, _ = softprompt.hub.load_base_model(str(tiny_gpt2))
    loaded = softprompt.load(base, run / "run-adapter.safetensors")
    assert torch.equal(loaded.prompt.embeddings, tensors["prompt"])
