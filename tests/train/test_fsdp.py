"""FSDP2 through accelerate on two CPU processes (gloo): the frozen base sharded, the prompt whole, the
prompt of a one-process run, inits read from the sharded embedding, an exact resume, the adapter saved once.

The processes run ``sharded_worker.py`` under ``accelerate launch --config_file configs/accelerate/fsdp2.yaml``
(the shipped config; the layer class set for the tiny GPT-2); the one-process reference runs here.
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

ACCELERATE = Path(sys.executable).with_name("accelerate")


def launch(folder: Path, out: Path, *extra: str) -> None:
    sharded_worker.launch(
        "fsdp2", folder, out, *extra, options=("--fsdp_transformer_layer_cls_to_wrap", "GPT2Block")
    )


@pytest.fixture(scope="module")
def runs(tiny_gpt2, tmp_path_factory):
    """A two-process run (checkpoint after step 2 of 4), then a two-process resume from that checkpoint."""
    if not ACCELERATE.exists():
        pytest.skip("accelerate's launcher is not installed next to this python")
    out = tmp_path_factory.mktemp("fsdp")
    launch(tiny_gpt2, out)
    launch(tiny_gpt2, out, "--resume")
    return out


@pytest.fixture(scope="module")
def one_process(tiny_gpt2, tmp_path_factory):
    return sharded_worker.reference(str(tiny_gpt2), tmp_path_factory.mktemp("one"))


def rank(out: Path, name: str, index: int) -> tuple[dict, dict[str, torch.Tensor]]:
    facts = json.loads((out / f"{name}-rank{index}.json").read_text())
    return facts, load_file(out / f"{name}-rank{index}.safetensors")


def test_the_base_is_sharded_and_the_prompt_is_whole_on_every_process(runs):
    for index in (0, 1):
        facts, _ = rank(runs, "run", index)
        assert facts["world"] == 2
        assert facts["base_sharded"] and not facts["prompt_sharded"]
        for whole, local in facts["base"].values():  # each process holds half of every frozen weight
            assert local * 2 == math.prod(whole)


def test_two_sharded_processes_train_the_prompt_of_one(runs, one_process):
    _, first = rank(runs, "run", 0)
    _, second = rank(runs, "run", 1)
    assert torch.equal(first["prompt"], second["prompt"])  # replicated, bit for bit
    assert not torch.equal(first["prompt"], torch.zeros_like(first["prompt"]))
    torch.testing.assert_close(first["prompt"], one_process["prompt"], rtol=1e-5, atol=1e-6)
    # scoring outside the sharded forward (softprompt.sharding.unsharded) gives the one-process scores
    torch.testing.assert_close(first["scores"], one_process["scores"], rtol=1e-5, atol=1e-6)


def test_text_init_reads_the_sharded_embedding_and_layers_whole(runs, one_process):
    for index in (0, 1):
        _, tensors = rank(runs, "run", index)
        for name in ("text_embeddings", "text_keys"):  # prompt tuning's and prefix tuning's text inits
            assert torch.equal(tensors[f"sharded_{name}"], one_process[name]), name


def test_wrap_with_text_init_on_a_sharded_base(runs, one_process):
    facts, tensors = rank(runs, "run", 0)
    assert facts["wrap_embeddings_error"] is None, facts["wrap_embeddings_error"]
    assert torch.equal(tensors["wrapped_text_embeddings"], one_process["text_embeddings"])


def test_wrap_with_prefix_text_init_on_a_sharded_base(runs, one_process):
    facts, tensors = rank(runs, "run", 0)
    assert facts["wrap_prefix_error"] is None, facts["wrap_prefix_error"]
    assert torch.equal(tensors["wrapped_text_prefix"], one_process["prefix_text"])


def test_a_resumed_sharded_run_ends_with_the_uninterrupted_prompt(runs):
    for index in (0, 1):
        run_facts, run = rank(runs, "run", index)
        resumed_facts, resumed = rank(runs, "resumed", index)
        assert torch.equal(resumed["prompt"], run["prompt"])
        assert resumed_facts["losses_after_checkpoint"] == run_facts["losses_after_checkpoint"]


def test_the_adapter_is_written_once_from_the_whole_prompt(runs, tiny_gpt2):
    files = sorted(p.name for p in runs.glob("*-adapter.safetensors"))
    assert files == ["resumed-adapter.safetensors", "run-adapter.safetensors"]  # by the main process only
    _, tensors = rank(runs, "run", 1)
    base, _ = softprompt.hub.load_base_model(str(tiny_gpt2))
    loaded = softprompt.load(base, runs / "run-adapter.safetensors")
    assert torch.equal(loaded.prompt.embeddings, tensors["prompt"])
