"""Transfer between tasks: a saved prompt as a new run's init, and SPoT's ranking of source prompts."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from tiny import random_ids, tiny_causal_lm
from train.train_helpers import classification_config, save_tiny_gpt2, write_classification_data

import softprompt
from softprompt import initializers
from softprompt.data import Encoded
from softprompt.families import model_shape
from softprompt.files import WrongModelError
from softprompt.methods import MultitaskPromptTuningConfig
from softprompt.train.config import TrainSection
from softprompt.train.objectives import ClassificationObjective
from softprompt.transfer import main, multitask_batches, prompt_similarity, rank_sources, task_embedding

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # a bare clone has none


def saved_prompt(base, path, length=4, seed=1):
    model = softprompt.wrap(
        base, softprompt.PromptTuningConfig(num_virtual_tokens=length, init="random", seed=seed)
    )
    return model, model.save(path)


@pytest.mark.parametrize("config_class", [softprompt.PromptTuningConfig, softprompt.PTuningConfig])
def test_a_run_initialised_from_a_saved_prompt_is_that_prompt_at_step_0(tmp_path, config_class):
    base = tiny_causal_lm("llama")
    source, path = saved_prompt(base, tmp_path / "source.safetensors")
    target = softprompt.wrap(
        base, config_class(num_virtual_tokens=4, init="file", init_file=str(path))
    ).eval()
    assert torch.equal(target.prompt().embeddings, source.prompt.embeddings)
    ids = random_ids(2, 5)
    torch.testing.assert_close(target(input_ids=ids).logits, source.eval()(input_ids=ids).logits)
    assert target.prompt.embeddings.requires_grad


def test_a_prompt_of_another_length_is_tiled_or_cut_and_the_log_says_so(tmp_path, caplog):
    base = tiny_causal_lm("llama")
    source, path = saved_prompt(base, tmp_path / "source.safetensors", length=3)
    shape = model_shape(base)
    with caplog.at_level(logging.INFO, logger="softprompt.initializers"):
        tiled = initializers.rows_from_file(path, "embeddings", 7, shape.embed_dim, shape)
        cut = initializers.rows_from_file(path, "embeddings", 2, shape.embed_dim, shape)
    rows = source.prompt.embeddings
    assert torch.equal(tiled, rows[[0, 1, 2, 0, 1, 2, 0]]) and torch.equal(cut, rows[:2])
    assert (
        "holds 3 virtual tokens: tiled to 7" in caplog.text
        and "holds 3 virtual tokens: cut to 2" in caplog.text
    )


def test_a_prompt_of_another_base_model_is_refused_with_the_reason(tmp_path):
    # Same embedding width (32), one layer more: a prompt means nothing on another model.
    source, path = saved_prompt(tiny_causal_lm("llama"), tmp_path / "source.safetensors")
    config = copy.deepcopy(source.base_model.config)
    config.num_hidden_layers = 3
    other = transformers.AutoModelForCausalLM.from_config(config)
    shape = model_shape(other)
    assert shape.embed_dim == source.shape.embed_dim
    with pytest.raises(WrongModelError, match="differs from this model in num_layers: file 2, model 3"):
        initializers.rows_from_file(path, "embeddings", 4, shape.embed_dim, shape)


def test_a_run_initialised_from_another_base_models_prompt_is_refused(tmp_path):
    source, path = saved_prompt(tiny_causal_lm("llama"), tmp_path / "source.safetensors")
    config = copy.deepcopy(source.base_model.config)
    config.num_hidden_layers = 3
    other = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(WrongModelError, match="num_layers: file 2, model 3"):
        softprompt.wrap(
            other, softprompt.PromptTuningConfig(num_virtual_tokens=4, init="file", init_file=str(path))
        )


def test_a_multitask_file_initialises_a_new_task_from_its_shared_prompt(tmp_path):
    base = tiny_causal_lm("llama")
    config = MultitaskPromptTuningConfig(num_virtual_tokens=4, tasks=("a", "b"), init="random", seed=3)
    multitask = softprompt.wrap(base, config)
    path = multitask.save(tmp_path / "mpt.safetensors")
    target = softprompt.wrap(
        base, softprompt.PromptTuningConfig(num_virtual_tokens=4, init="file", init_file=str(path))
    )
    assert torch.equal(target.prompt.embeddings, multitask.prompt.shared)


def test_prompt_similarity_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 2.0]])  # average (1, 1)
    b = torch.tensor([[0.0, 3.0]])
    assert prompt_similarity(a, b) == pytest.approx(2**-0.5)
    # per token: cos((1,0),(0,1)) = 0, cos((1,2),(0,1)) = 2/sqrt(5)
    assert prompt_similarity(a, b, "per_token") == pytest.approx((0 + 2 / 5**0.5) / 2)
    with pytest.raises(ValueError, match="similarity must be 'average' or 'per_token'"):
        prompt_similarity(a, b, "max")


def target_task(base):
    model = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=4, init="random", seed=7))
    examples = [Encoded(random_ids(1, 5, seed=s)[0].tolist(), label=s % 2) for s in range(8)]
    return ClassificationObjective(model, [5, 6]), examples


def test_the_task_embedding_is_the_briefly_trained_prompt_and_the_prompt_is_put_back():
    objective, examples = target_task(tiny_causal_lm("llama"))
    start = objective.model.prompt.embeddings.detach().clone()
    recipe = TrainSection(lr=0.1, batch_size=4)
    embedding = task_embedding(objective, examples, recipe=recipe, steps=3, pad_token_id=0)
    assert not torch.allclose(embedding, start)
    assert torch.equal(objective.model.prompt.embeddings, start)
    again = task_embedding(objective, examples, recipe=recipe, steps=3, pad_token_id=0)
    assert torch.equal(again, embedding)  # seeded: the same steps each time
    assert torch.equal(task_embedding(objective, examples, recipe=recipe, steps=0, pad_token_id=0), start)


def test_sources_rank_by_similarity_to_the_target_prompt(tmp_path):
    base = tiny_causal_lm("llama")
    objective, examples = target_task(base)
    near = objective.model.prompt.embeddings.detach() + 0.01  # the target's own start, nudged
    close = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=4, init="random", seed=7))
    with torch.no_grad():
        close.prompt.embeddings.copy_(near)
    close_path = close.save(tmp_path / "close.safetensors")
    _, far_path = saved_prompt(base, tmp_path / "far.safetensors", length=6, seed=99)
    ranked = rank_sources(objective, examples, [far_path, close_path], pad_token_id=0, steps=2)
    assert [source for source, _ in ranked] == [str(close_path), str(far_path)]
    assert ranked[0][1] > 0.9 > ranked[1][1]
    per_token = rank_sources(
        objective, examples, [far_path, close_path], pad_token_id=0, steps=2, similarity="per_token"
    )
    assert per_token[0][0] == str(close_path)


def test_sources_that_cannot_be_compared_are_refused(tmp_path):
    base = tiny_causal_lm("llama")
    objective, examples = target_task(base)
    prefix = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=2)).save(
        tmp_path / "prefix"
    )
    with pytest.raises(
        ValueError, match="holds a prefix_tuning prompt .* give prompt-tuning or P-tuning sources"
    ):
        rank_sources(objective, examples, [prefix], pad_token_id=0, steps=1)
    _, foreign = saved_prompt(tiny_causal_lm("opt"), tmp_path / "opt.safetensors")
    with pytest.raises(WrongModelError, match="base_model"):
        rank_sources(objective, examples, [foreign], pad_token_id=0, steps=1)


def test_multitask_batches_show_every_example_once_an_epoch():
    examples = {"a": [Encoded([1, 2], label=0)] * 3, "b": [Encoded([3], label=1)] * 3}
    batches = multitask_batches(examples, ["b", "a"], 2, pad_token_id=0, seed=1)
    epoch = [next(batches) for _ in range(3)]
    tasks = torch.cat([batch["task"] for batch in epoch]).tolist()
    assert sorted(tasks) == [0, 0, 0, 1, 1, 1]
    assert all(batch["label"].tolist() == [1 - k for k in batch["task"].tolist()] for batch in epoch)
    with pytest.raises(KeyError, match=r"examples of tasks \['c'\] that the prompt does not hold"):
        next(multitask_batches({"c": []}, ["a"], 2, pad_token_id=0))
    with pytest.raises(ValueError, match="6 examples cannot fill one batch of 8"):
        next(multitask_batches(examples, ["a", "b"], 8, pad_token_id=0))


def test_the_command_ranks_sources_for_a_run_config(tmp_path, capsys):
    model_dir = save_tiny_gpt2(tmp_path / "tiny-gpt2")
    raw = classification_config(model_dir, write_classification_data(tmp_path), tmp_path / "run")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    sources = [saved_prompt(base, tmp_path / f"s{seed}.safetensors", seed=seed)[1] for seed in (1, 2)]
    main([str(config), *map(str, sources), "--steps", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[1] for line in lines[:2]) == sorted(map(str, sources))
    assert lines[2] == f"init_file for the target's run: {lines[0].split()[1]}"
    with pytest.raises(SystemExit) as exit_:
        main([str(config), str(tmp_path / "missing.safetensors")])
    assert exit_.value.code == 2
    assert "missing.safetensors" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no {SHARED_DATA}")
def test_the_benchmark_quick_run_writes_its_table_and_json(tmp_path):
    out = tmp_path / "transfer.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "transfer.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| target | train rows | seeds | zero-shot | scratch | spot | mpt |" in done.stdout
    result = json.loads(out.read_text())
    assert {(run["target"], run["rows"]) for run in result["runs"]} == {("rte", 8), ("rte", 16), ("cb", 8)}
    assert all(run["spot_source"] in ("sst2", "mr") for run in result["runs"])
