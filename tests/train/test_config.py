"""Run-config validation: every error names its key; presets fill gaps (shipped configs: tests/test_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from softprompt.train import PRESETS, ConfigError, load_config
from softprompt.train.presets import DEFAULTS, apply_preset


def write(tmp_path: Path, config: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def minimal(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "hi", "label": 0}\n')
    return {
        "task": {"kind": "classification", "template": "{text} ->", "label_words": ["no", "yes"]},
        "data": {"train": "train.jsonl"},
    }


def error_of(tmp_path, config, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, config), list(overrides))
    return str(info.value)


def test_minimal_config_gets_the_measured_defaults(tmp_path, minimal):
    config = load_config(write(tmp_path, minimal))
    assert config.preset is None
    assert config.prompt.method == "prompt_tuning"
    assert (config.train.optimizer, config.train.lr, config.train.schedule) == ("adamw", 0.01, "constant")
    assert config.prompt.init == "text" and config.prompt.init_text is None  # filled with the labels later
    assert config.data.train == str(tmp_path / "train.jsonl")  # relative to the config file


def test_unknown_key_is_named_with_a_suggestion(tmp_path, minimal):
    minimal["train"] = {"lrr": 0.1}
    message = error_of(tmp_path, minimal)
    assert "train.lrr: unknown key" in message
    assert "did you mean 'lr'" in message


def test_unknown_prompt_option_is_named(tmp_path, minimal):
    minimal["prompt"] = {"method": "prompt_tuning", "projection_hidden_size": 512}
    assert "prompt.projection_hidden_size: unknown key" in error_of(tmp_path, minimal)


def test_wrong_type_is_named(tmp_path, minimal):
    minimal["train"] = {"lr": "fast", "max_steps": 1.5}
    message = error_of(tmp_path, minimal)
    assert "train.lr: Input should be a valid number" in message
    assert "'fast'" in message
    assert "train.max_steps:" in message


def test_missing_files_are_named(tmp_path, minimal):
    minimal["data"]["dev"] = "nowhere/dev.tsv"
    minimal["prompt"] = {"init": "file", "init_file": "missing.safetensors"}
    message = error_of(tmp_path, minimal)
    assert "data.dev: file not found" in message and "nowhere/dev.tsv" in message
    assert "prompt.init_file: file not found" in message


def test_missing_required_key_and_missing_config_file(tmp_path, minimal):
    del minimal["task"]["template"]
    assert "task.template: missing" in error_of(tmp_path, minimal)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_method_checks_are_reported(tmp_path, minimal):
    minimal["prompt"] = {"num_virtual_tokens": 0}
    assert "num_virtual_tokens must be at least 1" in error_of(tmp_path, minimal)
    minimal["prompt"] = {"method": "prompt_tuning"}
    minimal["train"] = {"best_metric": "bleu"}
    assert "best_metric" in error_of(tmp_path, minimal)


def test_unknown_preset_and_method_list_the_choices(tmp_path, minimal):
    minimal["preset"] = "smith"
    assert "preset:" in error_of(tmp_path, minimal) and "'lester'" in error_of(tmp_path, minimal)
    minimal["preset"] = None
    minimal["prompt"] = {"method": "lora"}
    assert "prompt" in error_of(tmp_path, minimal)


def test_overrides_parse_yaml_values_and_win_over_presets(tmp_path, minimal):
    config = load_config(
        write(tmp_path, minimal),
        ["train.lr=0.05", "train.max_grad_norm=null", "prompt.num_virtual_tokens=7", "eval.zero_shot=false"],
    )
    assert config.train.lr == 0.05 and config.train.max_grad_norm is None
    assert config.prompt.num_virtual_tokens == 7 and config.eval.zero_shot is False
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(write(tmp_path, minimal), ["train.lr"])
    with pytest.raises(ConfigError, match="train.lr is not a section"):
        load_config(write(tmp_path, minimal), ["train.lr=1", "train.lr.x=1"])


def test_override_paths_are_relative_to_the_current_folder(tmp_path, minimal, monkeypatch):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "dev.jsonl").write_text('{"text": "a", "label": 1}\n')
    monkeypatch.chdir(other)
    config = load_config(write(tmp_path, minimal), ["data.dev=dev.jsonl", "output.dir=out"])
    assert config.data.dev == str(other / "dev.jsonl")
    assert config.output.dir == str(other / "out")


def test_each_method_gets_its_defaults_and_presets_their_papers_recipe():
    for method in DEFAULTS:
        resolved = apply_preset({"prompt": {"method": method}})
        assert resolved["train"] == DEFAULTS[method].train and "preset" not in resolved
    lester = apply_preset({"preset": "lester"})
    assert lester["prompt"]["method"] == "prompt_tuning" and lester["train"]["optimizer"] == "adafactor"
    assert lester["train"]["lr"] == 0.3
    li_liang = apply_preset({"preset": "li-liang"})["prompt"]
    assert li_liang["projection_hidden_size"] == 512 and li_liang["num_virtual_tokens"] == 10
    assert apply_preset({"preset": "p-tuning"})["prompt"]["encoder"] == "lstm"
    # A preset's prompt options do not leak into another method.
    mixed = apply_preset({"preset": "li-liang", "prompt": {"method": "prompt_tuning"}})
    assert (
        "projection_hidden_size" not in mixed["prompt"]
        and mixed["train"]["lr"] == PRESETS["li-liang"].train["lr"]
    )


def test_resolved_config_round_trips(tmp_path, minimal):
    config = load_config(write(tmp_path, minimal))
    again = load_config(write(tmp_path, yaml.safe_load(config.to_yaml()), "resolved.yaml"))
    assert again == config


def test_a_task_without_words_starts_from_the_vocabulary_unless_text_is_asked_for(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "hi", "target": "there"}\n')
    config = {
        "task": {"kind": "generation", "source_template": "{text} ->", "target_template": "{target}"},
        "data": {"train": "train.jsonl"},
    }
    assert load_config(write(tmp_path, config)).prompt.init == "vocab"  # the labels' words: there are none
    config["prompt"] = {"method": "prompt_tuning", "init": "text"}
    assert "prompt.init_text is needed for init 'text'" in error_of(tmp_path, config)
