"""Whole runs on a tiny GPT-2: files, exact resume, gradient accumulation, early stopping, generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_helpers import classification_config, save_tiny_bert, save_tiny_t5
from typer.testing import CliRunner

from softprompt.cli import app
from softprompt.files.adapter import read_adapter
from softprompt.train import ConfigError, RunError, load_config, train
from softprompt.train.checkpoint import CHECKPOINT_NAME, read_checkpoint


def run(raw: dict, **kwargs):
    return train(load_config(None, base=raw), **kwargs)


def final_state(run_dir) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / CHECKPOINT_NAME)["trainable"]


def test_a_run_writes_its_folder(tiny_gpt2, cls_data, tmp_path):
    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run")
    raw["output"]["plot"] = True
    raw["train"]["report_to"] = ["tensorboard"]
    summary = run(raw)
    out = tmp_path / "run"
    for name in ["softprompt.safetensors", "config.yaml", "metrics.jsonl", "metrics.csv", "curves.png",
                 "summary.json", CHECKPOINT_NAME, "tensorboard"]:  # fmt: skip
        assert (out / name).exists(), name
    assert summary.finished and summary.steps == 6 and summary.best_step in (3, 6)
    assert summary.trainable_parameters == 4 * 16 and summary.adapter_bytes > 0
    assert set(summary.zero_shot) == {"loss", "accuracy", "macro_f1"} and summary.dev is not None
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "dev"] == [3, 6]
    assert [r["split"] for r in records][0] == "zero_shot"
    # The resolved config reloads to the same run config.
    assert load_config(out / "config.yaml") == load_config(None, base=raw)
    # A second run into the same folder must be asked for.
    with pytest.raises(RunError, match="--resume"):
        run(raw)
    with pytest.raises(RunError, match="nothing to resume"):
        run({**raw, "output": {**raw["output"], "dir": str(tmp_path / "empty")}}, resume=True)


def test_interrupted_and_resumed_run_ends_with_the_same_prompt(tiny_gpt2, gpt2_base, cls_data, tmp_path):
    # Prefix tuning with its MLP, Adafactor's factored state and a decaying schedule: all must resume.
    # 5 batches per epoch and 8 steps: the interruption and the end fall mid-epoch, in different epochs.
    def config(name: str) -> dict:
        raw = classification_config(
            tiny_gpt2, cls_data, tmp_path / name, max_steps=8, eval_every=2, lr=0.05, seed=3,
            optimizer="adafactor", schedule="linear", warmup_steps=2,
        )  # fmt: skip
        raw["prompt"] = {"method": "prefix_tuning", "num_virtual_tokens": 3, "projection_hidden_size": 8}
        raw["data"]["train_limit"] = 20
        raw["eval"]["zero_shot"] = False
        return raw

    whole = run(config("whole"), base=gpt2_base)
    assert whole.finished
    first = run(config("parts"), stop_after=6, base=gpt2_base)
    assert not first.finished and first.steps == 6
    last = run(config("parts"), resume=True, base=gpt2_base)
    assert last.finished and last.steps == 8

    expected, got = final_state(tmp_path / "whole"), final_state(tmp_path / "parts")
    assert expected.keys() == got.keys() and len(expected) == 5  # embedding + MLP
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    whole_adapter = load_file(tmp_path / "whole" / "softprompt.safetensors")
    parts_adapter = load_file(tmp_path / "parts" / "softprompt.safetensors")
    assert all(torch.equal(whole_adapter[k], parts_adapter[k]) for k in whole_adapter)
    assert last.best_step == whole.best_step and last.dev == whole.dev
    # The logs read as one run.
    logs = [(tmp_path / name / "metrics.jsonl").read_text() for name in ("whole", "parts")]
    assert [json.loads(line)["step"] for line in logs[0].splitlines()] == [
        json.loads(line)["step"] for line in logs[1].splitlines()
    ]


def test_micro_batches_give_the_gradient_of_the_whole_batch(tiny_gpt2, gpt2_base, cls_data, tmp_path):
    states = []
    for name, micro in (("whole", None), ("micro", 1)):
        raw = classification_config(
            tiny_gpt2, cls_data, tmp_path / name, max_steps=3, eval_every=None, micro_batch_size=micro,
            optimizer="adamw", lr=0.01,
        )  # fmt: skip
        raw["eval"]["zero_shot"] = False
        run(raw, base=gpt2_base)
        states.append(final_state(tmp_path / name))
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=1e-5, atol=1e-6)


def test_early_stopping_ends_the_run(tiny_gpt2, gpt2_base, cls_data, tmp_path):
    raw = classification_config(
        tiny_gpt2, cls_data, tmp_path / "run", max_steps=40, eval_every=2, early_stopping_patience=1, lr=1e-9,
        optimizer="adamw",
    )  # fmt: skip
    raw["eval"]["zero_shot"] = False
    summary = run(raw, base=gpt2_base)
    assert summary.finished and summary.stopped_early
    assert summary.steps == 4 and summary.best_step == 2


def test_generation_run_scores_generated_text(tiny_gpt2, gpt2_base, gen_data, tmp_path):
    raw = {
        "model": {"name_or_path": str(tiny_gpt2)},
        "prompt": {"method": "prefix_tuning", "num_virtual_tokens": 2, "projection_hidden_size": 8},
        "task": {
            "kind": "generation",
            "source_template": "Data: {mr}\nText:",
            "target_template": " {ref}",
            "max_length": 48,
            "max_target_length": 12,
            "metrics": ["bleu", "rouge", "exact_match"],
            "max_new_tokens": 4,
        },
        "data": {"train": str(gen_data["train"]), "dev": str(gen_data["dev"]), "test": str(gen_data["dev"])},
        "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "report_to": []},
        "eval": {"batch_size": 4, "zero_shot": False},
        "output": {"dir": str(tmp_path / "gen")},
    }
    summary = run(raw, base=gpt2_base)
    assert summary.method == "prefix_tuning" and summary.metric == "bleu"
    assert set(summary.dev) == {"bleu", "rouge1", "rouge2", "rougeL", "exact_match"}
    assert set(summary.test) == set(summary.dev)


def test_an_encoder_decoder_classifies_and_generates(cls_data, gen_data, tmp_path):
    t5 = save_tiny_t5(tmp_path / "t5")
    raw = classification_config(
        t5, cls_data, tmp_path / "cls", max_steps=4, eval_every=2, optimizer="adamw", lr=0.01
    )
    raw["prompt"] = {"method": "prefix_tuning", "num_virtual_tokens": 2}  # all three attention sites
    summary = run(raw)
    assert summary.finished and set(summary.zero_shot) == set(summary.dev) == {"loss", "accuracy", "macro_f1"}
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "cls")])  # the saved adapter scores the same
    assert result.exit_code == 0, result.output
    assert f"{summary.dev['accuracy']:9.2f}" in result.output

    raw = {
        "model": {"name_or_path": str(t5)},
        "prompt": {"method": "prompt_tuning", "num_virtual_tokens": 3, "init": "vocab"},
        "task": {"kind": "generation", "source_template": "Data: {mr}", "target_template": " {ref}",
                 "max_length": 48, "max_target_length": 12, "max_new_tokens": 4, "metrics": ["bleu"]},
        "data": {"train": str(gen_data["train"]), "dev": str(gen_data["dev"])},
        "train": {"max_steps": 3, "batch_size": 4, "eval_every": 3, "lr": 0.1, "report_to": []},
        "eval": {"batch_size": 4},
        "output": {"dir": str(tmp_path / "gen"), "plot": False},
    }  # fmt: skip
    summary = run(raw)
    assert summary.finished and set(summary.dev) == set(summary.zero_shot) == {"bleu"}
    result = CliRunner().invoke(
        app, ["generate", str(tmp_path / "gen"), "name[Aromi]", "--max-new-tokens", "3"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_encoder_decoder_objectives_score_what_the_bare_model_computes(gpt2_base, tmp_path):
    # The zero-shot objectives against T5's own forward: label words at the first decoder step, and
    # the decoder's loss on the target with the source in the encoder.
    from softprompt.data import ClassificationTask, GenerationTask, collate
    from softprompt.families import model_shape
    from softprompt.hub import load_base_model
    from softprompt.models.seq2seq import Seq2SeqSoftPromptModel
    from softprompt.train.build import make_objective

    t5, tokenizer = load_base_model(str(save_tiny_t5(tmp_path / "t5")), head="seq2seq-lm")
    bare = Seq2SeqSoftPromptModel(t5, None, model_shape(t5))
    task = ClassificationTask("Review: {text}", "label", {"pos": "good", "neg": "bad"}, 32)
    rows = [task.encode({"text": text, "label": "pos"}, tokenizer) for text in ("a great film", "dull")]
    objective = make_objective(bare, task, tokenizer)
    batch = collate(rows, tokenizer.pad_token_id, objective.padding_side)
    start = torch.full((2, 1), t5.config.decoder_start_token_id)
    with torch.no_grad():
        expected = t5(
            **{k: batch[k] for k in ("input_ids", "attention_mask")}, decoder_input_ids=start
        ).logits
        got = objective.scores(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, expected[:, 0, objective.label_ids], atol=1e-5, rtol=1e-5)

    task = GenerationTask("Data: {mr}", " {ref}", max_length=32, max_target_length=8)
    row = task.encode({"mr": "name[Aromi]", "ref": "Aromi serves food."}, tokenizer)
    objective = make_objective(bare, task, tokenizer)
    batch = collate([row], tokenizer.pad_token_id, objective.padding_side)
    source = torch.tensor([row.prompt_ids])
    target = torch.tensor([[t for t in row.labels if t != -100]])
    with torch.no_grad():
        expected = t5(input_ids=source, labels=target).loss * target.shape[1]
        torch.testing.assert_close(objective(batch), expected, atol=1e-5, rtol=1e-5)


def test_tqdm_disable_hides_the_bar_but_not_the_dev_scores(cls_data, tiny_gpt2, tmp_path):
    # tqdm reads TQDM_DISABLE when it is imported: a fresh process, as a user runs it.
    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run", max_steps=3, eval_every=3)
    raw["eval"]["zero_shot"] = False
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-m", "softprompt.cli", "train", str(config)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 3: dev accuracy" in done.stdout
    assert "step/s" not in done.stdout + done.stderr


def test_an_encoder_trains_its_deep_prompt_and_new_head(cls_data, tmp_path):
    bert = save_tiny_bert(tmp_path / "bert")
    raw = classification_config(
        bert, cls_data, tmp_path / "run", max_steps=4, eval_every=2, optimizer="adamw"
    )
    raw["prompt"] = {"method": "prefix_tuning", "num_virtual_tokens": 2}
    raw["model"]["pooling"] = "mean"
    summary = run(raw)
    assert summary.finished and summary.zero_shot is None  # a new head has no zero-shot answer
    assert set(summary.dev) == {"loss", "accuracy", "macro_f1"}
    record, tensors = read_adapter(tmp_path / "run" / "softprompt.safetensors")
    assert record["method"] == "prefix_tuning" and record["model_options"] == {"pooling": "mean"}
    assert {"head.mean_classifier.weight", "head.mean_classifier.bias"} <= set(tensors)
    # The CLI scores the saved (best) adapter as the run did.
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"{summary.dev['accuracy']:9.2f}" in result.output
    refused = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--zero-shot"])
    assert refused.exit_code == 2 and "no zero-shot score" in refused.output


def test_a_chat_template_run_trains_scores_and_generates_in_the_chat_frame(
    gpt2_base, tiny_gpt2, cls_data, gen_data, tmp_path
):
    from softprompt.data import TextFormat
    from softprompt.train.build import load_data, make_task

    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "cls", max_steps=2, eval_every=2)
    raw["task"].update(chat_template=True, system_message="Answer in one word.", max_length=64)
    config = load_config(None, base=raw)
    data = load_data(config.data, make_task(config.task), gpt2_base[1], splits=("dev",))
    rendered = gpt2_base[1].decode(data.dev[0].input_ids)
    assert rendered.startswith(
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nReview: "
    )
    assert rendered.endswith("Sentiment:<|im_end|>\n<|im_start|>assistant\n")
    summary = train(config, base=gpt2_base)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "cls")])
    assert result.exit_code == 0, result.output
    assert f"{summary.dev['accuracy']:9.2f}" in result.output

    raw = {
        "model": {"name_or_path": str(tiny_gpt2)},
        "prompt": {"method": "prompt_tuning", "num_virtual_tokens": 2, "init": "vocab"},
        "task": {"kind": "generation", "source_template": "Data: {mr}", "target_template": " {ref}",
                 "max_length": 64, "max_target_length": 12, "metrics": ["bleu"], "chat_template": True},
        "data": {"train": str(gen_data["train"]), "dev": str(gen_data["dev"])},
        "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "report_to": []},
        "eval": {"batch_size": 4, "zero_shot": False},
        "output": {"dir": str(tmp_path / "gen"), "plot": False},
    }  # fmt: skip
    assert train(load_config(None, base=raw), base=gpt2_base).finished
    # generate gives the text in the run's chat frame; --no-chat-template as it is.
    out = {flag: CliRunner().invoke(app, ["generate", str(tmp_path / "gen"), "name[Aromi]", *flag])
           for flag in ((), ("--no-chat-template",))}  # fmt: skip
    assert all(result.exit_code == 0 for result in out.values()), [r.output for r in out.values()]
    with pytest.raises(ValueError, match="system_message applies only with the chat template"):
        TextFormat(system_message="x")
    raw["task"]["system_message"] = "x"
    raw["task"]["chat_template"] = False
    with pytest.raises(ConfigError, match="task: system_message applies only with the chat template"):
        load_config(None, base=raw)
