"""Runs on rows from anywhere: in-memory data sets given to train(), streams (with exact resume),
builder names with data_files, and hub names (faked: offline) whose failures are clean CLI errors."""

from __future__ import annotations

import datasets
import pytest
import torch
import yaml
from train_helpers import classification_config, classification_rows
from typer.testing import CliRunner

from softprompt.cli import app
from softprompt.data import DataError, sources
from softprompt.train import ConfigError, RunError, load_config, train
from softprompt.train.checkpoint import CHECKPOINT_NAME, read_checkpoint

TRAIN = datasets.Dataset.from_list(classification_rows(24, seed=1))
DEV = datasets.Dataset.from_list(classification_rows(8, seed=2))


def in_memory_config(tiny_gpt2, out, **train_options) -> dict:
    raw = classification_config(tiny_gpt2, {"train": None, "dev": None}, out, max_steps=4, eval_every=2)
    raw["train"].update(train_options)
    del raw["data"]  # the rows come with the call
    raw["eval"]["zero_shot"] = False
    return raw


def test_train_takes_a_dataset_or_a_dataset_dict(tiny_gpt2, gpt2_base, tmp_path):
    one = train(
        load_config(None, base=in_memory_config(tiny_gpt2, tmp_path / "one")), base=gpt2_base, data=TRAIN
    )
    assert one.finished and one.dev is None and one.best_step == 4  # no dev set: the last prompt

    def config(name: str):
        raw = in_memory_config(tiny_gpt2, tmp_path / name)
        raw["data"] = {"dev_limit": 4}
        return load_config(None, base=raw)

    both = train(
        config("dict"), base=gpt2_base, data=datasets.DatasetDict({"train": TRAIN, "validation": DEV})
    )
    assert both.dev is not None and set(both.dev) == {"loss", "accuracy", "macro_f1"}
    with pytest.raises(
        DataError, match=r"have no 'train' split \(data.train_split\); they have \['validation'\]"
    ):
        train(config("no-train"), base=gpt2_base, data={"validation": DEV})
    with pytest.raises(DataError, match="takes a datasets.Dataset, IterableDataset or DatasetDict, not list"):
        train(config("list"), base=gpt2_base, data=[{"text": "a", "label": "pos"}])
    with pytest.raises(RunError, match=r"no training rows: set data.train \(or give the rows"):
        train(config("none"), base=gpt2_base)


def test_a_streamed_run_resumes_exactly(tiny_gpt2, gpt2_base, tmp_path):
    # 24 rows, batch 4: 6 batches a pass; 9 steps cross into the second pass, the break falls in it.
    path = tmp_path / "train.jsonl"
    TRAIN.to_json(path)

    def config(name: str):
        raw = classification_config(tiny_gpt2, {"train": path, "dev": path}, tmp_path / name, max_steps=9,
                                    eval_every=3, optimizer="adamw", lr=0.05)  # fmt: skip
        raw["data"].update(streaming=True, dev_limit=8)
        raw["eval"]["zero_shot"] = False
        return load_config(None, base=raw)

    whole = train(config("whole"), base=gpt2_base)
    assert whole.finished and whole.steps == 9
    assert not train(config("parts"), base=gpt2_base, stop_after=7).finished
    assert train(config("parts"), base=gpt2_base, resume=True).finished
    expected, got = (read_checkpoint(tmp_path / name / CHECKPOINT_NAME) for name in ("whole", "parts"))
    assert (got["progress"]["epoch"], got["progress"]["batches_done"]) == (1, 3)
    for name in expected["trainable"]:
        assert torch.equal(expected["trainable"][name], got["trainable"][name]), name
    # An in-memory stream trains the same way; epochs need a length.
    streamed = train(
        load_config(None, base=in_memory_config(tiny_gpt2, tmp_path / "mem")), base=gpt2_base,
        data=TRAIN.to_iterable_dataset(),
    )  # fmt: skip
    assert streamed.finished and streamed.steps == 4
    with pytest.raises(RunError, match="streamed training rows have no length for train.epochs"):
        train(load_config(None, base=in_memory_config(tiny_gpt2, tmp_path / "ep", epochs=1)), base=gpt2_base,
              data=TRAIN.to_iterable_dataset())  # fmt: skip
    with pytest.raises(ConfigError, match="data.streaming: a stream has no length for train.epochs"):
        load_config(
            None, base={**in_memory_config(tiny_gpt2, tmp_path / "x", epochs=1), "data": {"streaming": True}}
        )


def test_a_stream_too_short_for_one_batch_is_refused(tiny_gpt2, gpt2_base, tmp_path):
    with pytest.raises(ValueError, match="do not fill one batch of train.batch_size=4"):
        train(load_config(None, base=in_memory_config(tiny_gpt2, tmp_path / "r")), base=gpt2_base,
              data=TRAIN.select(range(3)).to_iterable_dataset())  # fmt: skip


def test_a_builder_name_with_data_files_relative_to_the_config(tiny_gpt2, tmp_path):
    folder = tmp_path / "cfg"
    (folder / "rows").mkdir(parents=True)
    TRAIN.to_json(folder / "rows" / "train.jsonl")
    DEV.to_json(folder / "rows" / "dev.jsonl")
    raw = classification_config(tiny_gpt2, {"train": "json", "dev": "json"}, tmp_path / "run", max_steps=2)
    raw["data"].update(data_files={"train": "rows/train.jsonl", "validation": "rows/*.jsonl"})
    (folder / "run.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(folder / "run.yaml")
    assert config.data.data_files == {
        "train": str(folder / "rows/train.jsonl"),
        "validation": str(folder / "rows/*.jsonl"),
    }
    assert config.data.train == "json"  # a builder name, not a path
    summary = train(config)
    assert summary.finished and summary.zero_shot is not None  # dev: both files (32 rows)


def test_cli_reports_hub_failures_without_a_traceback(tiny_gpt2, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(sources.datasets, "load_dataset", offline)
    raw = classification_config(tiny_gpt2, {"train": "nyu-mll/glue", "dev": None}, tmp_path / "run")
    raw["data"].update(subset="sst2", revision="main")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    assert (
        "data.train: could not reach 'nyu-mll/glue' (subset 'sst2', revision 'main', split 'train')"
        in result.output
    )
    assert "Traceback" not in result.output
