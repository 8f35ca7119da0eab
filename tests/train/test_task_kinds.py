"""Every task kind through `softprompt train`, `eval` and `predict` on tiny models: multi-label,
regression and token classification on an encoder's new head, multiple choice on a causal LM; and the
kinds a model cannot train refused with the reason."""

from __future__ import annotations

import random
import re

import pytest
from train_helpers import save_tiny_bert, write_jsonl
from typer.testing import CliRunner

from softprompt.cli import app
from softprompt.files.adapter import read_adapter
from softprompt.train import load_config, train
from softprompt.train.logs import read_records

WORDS = {"pos": ["great", "wonderful", "superb", "joy"], "neg": ["dull", "terrible", "boring", "waste"]}
runner = CliRunner()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def rows(n: int, seed: int) -> list[dict]:
    """Rows with a sentiment, its words' tags and a score: every kind's columns in one row."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        mood = "pos" if i % 2 == 0 else "neg"
        words = ["a", rng.choice(WORDS[mood]), "film"]
        out.append({
            "text": " ".join(words), "labels": [mood] + (["film"] if i % 3 == 0 else []), "score": 4.0 if mood == "pos" else 1.0,
            "tokens": words, "tags": ["O", "B-POS" if mood == "pos" else "B-NEG", "O"],
            "options": ["good", "bad"], "answer": 0 if mood == "pos" else 1,
        })  # fmt: skip
    return out


def run_config(model, task: dict, tmp_path, name: str, **train_options) -> dict:
    data = {split: str(write_jsonl(tmp_path / f"{name}-{split}.jsonl", rows(n, seed)))
            for split, n, seed in (("train", 16, 0), ("dev", 8, 1))}  # fmt: skip
    return {
        "model": {"name_or_path": str(model)},
        "prompt": {"method": "prefix_tuning", "num_virtual_tokens": 2},
        "task": task,
        "data": data,
        "train": {
            "max_steps": 4,
            "batch_size": 4,
            "eval_every": 2,
            "lr": 0.05,
            "report_to": [],
            **train_options,
        },
        "eval": {"batch_size": 8},
        "output": {"dir": str(tmp_path / name), "plot": False},
    }


def eval_and_predict(run_dir, *texts):
    evaluated = runner.invoke(app, ["eval", str(run_dir)])
    assert evaluated.exit_code == 0, evaluated.output
    predicted = runner.invoke(app, ["predict", str(run_dir), *texts])
    assert predicted.exit_code == 0, predicted.output
    return evaluated.output, [line.split("\t") for line in predicted.output.strip().splitlines()]


def test_multi_label_on_an_encoder_head(bert, tmp_path):
    task = {
        "kind": "multi_label",
        "template": "{text}",
        "label_column": "labels",
        "labels": ["pos", "neg", "film"],
    }
    summary = train(load_config(None, base=run_config(bert, task, tmp_path, "ml")))
    assert summary.zero_shot is None and set(summary.dev) == {"loss", "micro_f1", "macro_f1", "accuracy"}
    record, tensors = read_adapter(tmp_path / "ml" / "softprompt.safetensors")
    assert tensors["head.classifier.weight"].shape[0] == 3  # one output per label
    scores, lines = eval_and_predict(tmp_path / "ml", "a great film")
    assert f"{summary.dev['micro_f1']:9.2f}" in scores
    ((labels, probabilities, text),) = lines
    assert text == "a great film" and set(labels.split(",")) <= {"pos", "neg", "film", "-"}
    assert len(labels.split(",")) == len(probabilities.split(","))


def test_regression_keeps_the_adapter_with_the_least_error(bert, tmp_path):
    task = {"kind": "regression", "template": "{text}", "label_column": "score"}
    summary = train(load_config(None, base=run_config(bert, task, tmp_path, "reg", best_metric="mse")))
    assert set(summary.dev) == {"loss", "pearson", "spearman", "mse"} and summary.metric == "mse"
    dev = [r for r in read_records(tmp_path / "reg" / "metrics.jsonl") if r["split"] == "dev"]
    assert summary.dev["mse"] == min(r["mse"] for r in dev)  # least, not most
    assert summary.dev["loss"] == pytest.approx(summary.dev["mse"])  # the loss is the squared error
    _, ((value, text),) = eval_and_predict(tmp_path / "reg", "a dull film")
    assert re.fullmatch(r"-?\d+\.\d{4}", value) and text == "a dull film"


def test_token_classification_on_an_encoders_token_head(bert, tmp_path):
    task = {"kind": "token_classification", "tokens_column": "tokens", "tags_column": "tags",
            "tags": ["O", "B-POS", "B-NEG"]}  # fmt: skip
    summary = train(load_config(None, base=run_config(bert, task, tmp_path, "tok")))
    assert set(summary.dev) == {"loss", "entity_f1", "token_accuracy"}
    _, tensors = read_adapter(tmp_path / "tok" / "softprompt.safetensors")
    assert tensors["head.classifier.weight"].shape[0] == 3  # a token head: one output per tag
    _, ((tagged, text),) = eval_and_predict(tmp_path / "tok", "a superb film")
    assert [pair.rsplit("/", 1)[0] for pair in tagged.split()] == ["a", "superb", "film"]
    assert all(pair.rsplit("/", 1)[1] in {"O", "B-POS", "B-NEG"} for pair in tagged.split())


def test_multiple_choice_on_a_causal_lm(tiny_gpt2, tmp_path):
    task = {"kind": "multiple_choice", "template": "Review: {text}\nSentiment:", "choices_column": "options",
            "label_column": "answer", "score": "sum"}  # fmt: skip
    summary = train(load_config(None, base=run_config(tiny_gpt2, task, tmp_path, "mc")))
    assert (
        set(summary.zero_shot) == set(summary.dev) == {"loss", "accuracy"}
    )  # the bare LM scores choices too
    evaluated = runner.invoke(app, ["eval", str(tmp_path / "mc"), "--zero-shot"])
    assert evaluated.exit_code == 0 and f"{summary.zero_shot['accuracy']:9.2f}" in evaluated.output
    refused = runner.invoke(app, ["predict", str(tmp_path / "mc"), "a film"])
    assert (
        refused.exit_code == 2
        and "needs each row's choices: score a data file with softprompt eval" in refused.output
    )


HEAD_TASKS = {
    "multi_label": ({"kind": "multi_label", "template": "{text}", "label_column": "labels",
                     "labels": ["pos", "neg", "film"]}, {"loss", "micro_f1", "macro_f1", "accuracy"}),
    "regression": ({"kind": "regression", "template": "{text}", "label_column": "score"},
                   {"loss", "pearson", "spearman", "mse"}),
    "token_classification": ({"kind": "token_classification", "tokens_column": "tokens", "tags_column": "tags",
                              "tags": ["O", "B-POS", "B-NEG"]}, {"loss", "entity_f1", "token_accuracy"}),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(HEAD_TASKS))
def test_a_decoder_trains_a_new_head_for_tasks_without_label_words(tiny_gpt2, tmp_path, kind):
    # A causal LM loads its sequence- or token-classification head for these, pooled and trained by
    # softprompt (models/heads.py); no zero-shot: the head is new.
    task, metrics = HEAD_TASKS[kind]
    summary = train(load_config(None, base=run_config(tiny_gpt2, task, tmp_path, kind)))
    assert summary.zero_shot is None and set(summary.dev) == metrics
    _, tensors = read_adapter(tmp_path / kind / "softprompt.safetensors")
    outputs = 1 if kind == "regression" else 3
    assert [t.shape[0] for n, t in tensors.items() if n.startswith("head.") and n.endswith("weight")] == [
        outputs
    ]
    scores, lines = eval_and_predict(tmp_path / kind, "a great film")
    assert lines and lines[0][-1] == "a great film"
