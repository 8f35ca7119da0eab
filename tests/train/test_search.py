"""The budgeted search: the rung arithmetic, the grid, bad search sections, a whole search on a tiny GPT-2
(winner, adapter, resolved config, metrics, resume after a kill) and the CLI flag."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_helpers import classification_config
from typer.testing import CliRunner

import softprompt
from softprompt.cli import app
from softprompt.train import ConfigError, RunError, load_config, train
from softprompt.train import search as search_module
from softprompt.train.logs import read_records
from softprompt.train.search import SEARCH_NAME, TRIALS_DIR, Rung, plan_rungs, search


# ------------------------------------------------------------------------------------------ plan
@pytest.mark.parametrize(
    ("args", "rungs", "eval_every", "spent"),
    [
        # 12 trials, one run = 300 steps, 4 runs' worth: 1200 steps, 400 a rung; 400 // 12 = 33 < eval_every 50.
        ((12, 300, 4, 3, 50), [(12, 33, 33), (4, 132, 99), (1, 528, 396)], 33, 1188),
        ((12, 300, 2, 3, 50), [(12, 16, 16), (4, 64, 48), (1, 256, 192)], 16, 576),
        # eval_every 10 is finer than the first rung's 16 steps: every rung is a multiple of 10.
        ((12, 150, 4, 3, 10), [(12, 10, 10), (4, 60, 50), (1, 260, 200)], 10, 520),
        ((36, 100, 4, 3, None), [(36, 2, 2), (12, 10, 8), (4, 34, 24), (1, 134, 100)], 2, 364),
        ((2, 100, 2, 3, 50), [(2, 50, 50), (1, 150, 100)], 50, 200),
        ((1, 100, 2, 3, 50), [(1, 200, 200)], 50, 200),
    ],
)
def test_rungs_split_the_budget_as_stated(args, rungs, eval_every, spent):
    plan = plan_rungs(*args)
    assert plan.rungs == tuple(Rung(*rung) for rung in rungs)
    assert plan.eval_every == eval_every and plan.spent == spent and plan.spent <= plan.budget_steps
    assert all(rung.steps % plan.eval_every == 0 for rung in plan.rungs)  # every rung ends on an evaluation


def test_a_budget_too_small_for_the_grid_says_the_least_one():
    with pytest.raises(ValueError, match=r"^1 x 20 = 20 steps leave .* 12 trials .* 3 rungs \(36 steps at least\); "
                                         r"raise it to 1.8 or more$"):  # fmt: skip
        plan_rungs(12, 20, budget=1, eta=3)
    assert plan_rungs(12, 20, budget=1.8, eta=3).rungs[0].added == 1


# ------------------------------------------------------------------------------------------ grid
def test_the_default_grid_follows_the_method_and_the_task(tiny_gpt2, cls_data, gen_data, tmp_path):
    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run", max_steps=30)
    settings = load_config(None, ["search={}"], base=raw).search_settings()
    assert len(settings) == 12 and settings[0] == {"num_virtual_tokens": 4, "init": "text", "lr": 0.003}
    assert [s["init"] for s in settings[::4]] == ["text", "vocab", "random"]
    assert [s["lr"] for s in settings[:4]] == [3e-3, 1e-2, 3e-2, 1e-1]

    prefix = load_config(
        None, ["search={num_virtual_tokens: [2, 8]}", "prompt.method=prefix_tuning"], base=raw
    )
    assert len(prefix.search_settings()) == 2 * 3 * 4
    assert [s["lr"] for s in prefix.search_settings()[:4]] == [1e-3, 3e-3, 1e-2, 3e-2]
    assert prefix.search_settings()[-1] == {"num_virtual_tokens": 8, "init": "random", "lr": 3e-2}

    generation = {**raw, "task": {"kind": "generation", "source_template": "{mr}", "target_template": " {ref}"},
                  "prompt": {"method": "prompt_tuning", "init": "vocab"}}  # fmt: skip
    inits = {s["init"] for s in load_config(None, ["search={}"], base=generation).search_settings()}
    assert inits == {"vocab", "random"}  # no words to start "text" from


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search={bugdet: 2}", "search.bugdet: unknown key (did you mean 'budget'?); known keys: lr, init,"),
        ("search={eta: 1}", "search.eta: Input should be greater than or equal to 2 (got 1)"),
        ("search={lr: []}", "search.lr: List should have at least 1 item after validation, not 0"),
        ("search={lr: [0.1, -1]}", "search.lr.1: Input should be greater than 0 (got -1)"),
        ("search={lr: [0.1, 0.1]}", "search.lr: each value once, got [0.1, 0.1]"),
        ("search={budget: 0}", "search.budget: Input should be greater than 0 (got 0)"),
        (
            "search={init: [zero]}",
            "search.init: 'zero' is not an init of prompt_tuning: ['random', 'vocab', 'text', ",
        ),
        (
            "search={init: [file]}",
            "search: the prompt of the trial {'num_virtual_tokens': 4, 'init': 'file', ",
        ),
        (
            "search={budget: 0.1}",
            "search.budget: 0.1 x 30 = 3 steps leave some of the 12 trials no step in one of ",
        ),
        ("train.epochs=2", "search: one run's budget is train.max_steps; set it instead of train.epochs"),
    ],
)
def test_a_bad_search_section_is_a_clear_config_error(tiny_gpt2, cls_data, tmp_path, override, message):
    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run", max_steps=30)
    overrides = [override] if override.startswith("search") else ["search={}", override]
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides, base=raw)
    assert message in str(err.value)


def test_train_refuses_a_config_with_a_search_section(tiny_gpt2, cls_data, tmp_path):
    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run", max_steps=30)
    config = load_config(None, ["search={}"], base=raw)
    with pytest.raises(RunError, match=r"search section: run softprompt.train.search.search\(config\)"):
        train(config)


# ---------------------------------------------------------------------------------------- search
def search_config(tiny_gpt2, cls_data, out):
    """4 trials (2 learning rates x 2 inits), eta 2, 4 x 4 steps: rungs of 4 x 1, 2 x 2 and 1 x 5 steps."""
    raw = classification_config(tiny_gpt2, cls_data, out, max_steps=4, eval_every=2, best_metric="loss")
    raw["eval"]["zero_shot"] = False  # the dev loss picks (least wins): a tiny random model's accuracies tie
    raw["search"] = {"lr": [0.03, 0.3], "init": ["vocab", "random"], "budget": 4, "eta": 2}
    return load_config(None, base=raw)


def dev_losses(trial_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_records(trial_dir / "metrics.jsonl") if r["split"] == "dev"}


@pytest.fixture(scope="module")
def searched(tiny_gpt2, cls_data, gpt2_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    config = search_config(tiny_gpt2, cls_data, out)
    return config, search(config, base=gpt2_base)


def test_the_winner_is_the_best_trial_on_dev(searched):
    config, summary = searched
    out = Path(config.output.dir)
    assert summary.finished and [(r.trials, r.steps) for r in summary.plan.rungs] == [(4, 1), (2, 3), (1, 8)]
    trials = {trial.name: trial for trial in summary.trials}
    assert list(trials) == [
        "00-lr0.03-vocab-p4",
        "01-lr0.3-vocab-p4",
        "02-lr0.03-random-p4",
        "03-lr0.3-random-p4",
    ]
    # Every trial's scores per rung, read back from its own run folder: the best dev score up to the rung's end.
    for name, trial in trials.items():
        losses = dev_losses(out / TRIALS_DIR / name)  # every step is an evaluation (eval_every 1)
        assert sorted(losses) == list(range(1, trial.steps + 1))
        ends = [rung.steps for rung in summary.plan.rungs][: len(trial.scores)]
        assert trial.scores == [min(v for step, v in losses.items() if step <= end) for end in ends]
    rung_two = sorted(trials.values(), key=lambda t: t.scores[0])[:2]
    assert sorted(t.name for t in trials.values() if len(t.scores) >= 2) == sorted(t.name for t in rung_two)
    assert len({t.scores[0] for t in trials.values()}) == 4  # no ties: the cut is the search's choice
    winner = trials[summary.winner]
    assert len(winner.scores) == 3 and winner.steps == 8
    assert all(winner.scores[-1] <= score for t in trials.values() for score in t.scores)
    assert summary.run.dev["loss"] == winner.scores[-1] and summary.run.run_dir == str(out)


def test_the_run_folder_holds_the_winner_and_its_config(searched, gpt2_base, tiny_gpt2, tmp_path):
    config, summary = searched
    out = Path(config.output.dir)
    winner_dir = out / TRIALS_DIR / summary.winner
    for name in (
        "softprompt.safetensors",
        "adapter_model.safetensors",
        "checkpoint.safetensors",
        "README.md",
    ):
        assert (out / name).read_bytes() == (winner_dir / name).read_bytes(), name
    setting = next(t.setting for t in summary.trials if t.name == summary.winner)
    resolved = load_config(out / "config.yaml")
    assert (
        resolved.search is None
        and resolved.train.lr == setting["lr"]
        and resolved.prompt.init == setting["init"]
    )
    assert (resolved.train.max_steps, resolved.train.eval_every, resolved.output.dir) == (8, 1, str(out))
    model = softprompt.load(gpt2_base[0], out)  # the usual run folder
    assert model.prompt_config.num_virtual_tokens == 4 and model.task == config.task.model_dump(mode="json")
    # Training the resolved config again (no search) trains the winner, to the bit.
    again = train(load_config(out / "config.yaml", [f"output.dir={tmp_path / 'again'}"]), base=gpt2_base)
    assert again.dev == summary.run.dev and again.best_step == summary.run.best_step
    expected, got = (
        load_file(out / "softprompt.safetensors"),
        load_file(tmp_path / "again" / "softprompt.safetensors"),
    )
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    record = json.loads((out / SEARCH_NAME).read_text())
    assert record["winner"]["name"] == summary.winner and record["winner"]["setting"] == setting
    assert record["budget"] == {"multiple": 4.0, "one_run_steps": 4, "steps": 16, "spent": 13}
    assert [rung["trials"] for rung in record["rungs"]] == [4, 2, 1]


def test_every_trial_is_in_the_run_folders_metrics(searched):
    config, summary = searched
    out = Path(config.output.dir)
    records = read_records(out / "metrics.jsonl")
    for trial in summary.trials:
        own = [r for r in records if r["trial"] == trial.name]
        assert [{k: v for k, v in r.items() if k != "trial"} for r in own] == read_records(
            out / TRIALS_DIR / trial.name / "metrics.jsonl"
        )
    rows = list(csv.reader((out / "metrics.csv").open()))
    assert rows[0] == ["trial", "step", "split", "name", "value"]
    dev = {(r[0], int(r[1])): float(r[4]) for r in rows[1:] if r[2] == "dev" and r[3] == "loss"}
    assert dev == {(r["trial"], r["step"]): r["loss"] for r in records if r["split"] == "dev"}


def test_a_killed_search_resumes_to_the_same_winner(
    searched, tiny_gpt2, cls_data, gpt2_base, tmp_path, monkeypatch
):
    _, whole = searched
    config = search_config(tiny_gpt2, cls_data, tmp_path / "run")
    real_train, calls = search_module.train, []

    def killed_in_the_sixth_trial_run(trial_config, **options):  # rung 2's second trial, Ctrl-C after a step
        calls.append(trial_config.output.dir)
        if len(calls) == 6:
            options["stop_after"] = 1
        return real_train(trial_config, **options)

    monkeypatch.setattr(search_module, "train", killed_in_the_sixth_trial_run)
    first = search(config, base=gpt2_base)
    assert not first.finished and first.winner is None and len(calls) == 6
    assert not json.loads((tmp_path / "run" / SEARCH_NAME).read_text())["finished"]
    with pytest.raises(RunError, match="--resume"):
        search(config, base=gpt2_base)
    monkeypatch.setattr(search_module, "train", real_train)
    resumed = search(config, base=gpt2_base, resume=True)
    assert resumed.finished and resumed.winner == whole.winner
    assert [t.scores for t in resumed.trials] == [t.scores for t in whole.trials]
    expected = load_file(whole.run.adapter)
    got = load_file(tmp_path / "run" / "softprompt.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ------------------------------------------------------------------------------------------- cli
def test_the_cli_flag_searches_with_the_default_grid(tiny_gpt2, cls_data, tmp_path):
    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run", max_steps=9)
    raw["eval"]["zero_shot"] = False
    raw["data"]["dev_limit"] = 4
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    refused = CliRunner().invoke(app, ["train", str(path), "--search", "--stop-after", "2"])
    assert refused.exit_code == 2 and "a search stops with Ctrl-C" in refused.output
    result = CliRunner().invoke(app, ["train", str(path), "--search"])
    assert result.exit_code == 0, result.output
    assert "search: 12 trials" in result.output and "budget 4 x 9 = 36 steps, 12 per rung" in result.output
    assert "<- winner" in result.output and "run folder" in result.output
    record = json.loads((tmp_path / "run" / SEARCH_NAME).read_text())
    assert record["finished"] and len(record["trials"]) == 12
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["search"] is None
