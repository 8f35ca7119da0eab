"""The ``softprompt`` command line, end to end on a tiny GPT-2 folder (the test tokenizer, random weights)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
import torch
import typer
import yaml
from safetensors.torch import load_file
from train.train_helpers import (
    classification_config,
    save_tiny_gpt2,
    write_classification_data,
)
from typer.testing import CliRunner

from softprompt.cli import app, example_config_path

runner = CliRunner()
SOFTPROMPT = Path(sys.executable).with_name("softprompt")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_gpt2(root / "tiny-gpt2")
    data = write_classification_data(root)
    raw = classification_config(model, data, root / "run", max_steps=4, eval_every=2)
    raw["output"]["plot"] = True
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return root, model, config


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_every_option_and_argument_is_documented():
    group = typer.main.get_command(app)
    assert set(group.commands) == {"train", "eval", "predict", "generate", "inspect", "convert", "serve"}
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name} has no help"
        text = invoke(name, "--help").output
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.opts[0] in text, f"{name} --help does not show {param.opts[0]}"


def test_train_eval_inspect_generate_convert(setup):
    root, model, config = setup
    result = invoke("train", config, "--set", "train.seed=1")
    assert result.exit_code == 0, result.output
    run_dir = root / "run"
    for name in [
        "softprompt.safetensors",
        "config.yaml",
        "metrics.jsonl",
        "metrics.csv",
        "curves.png",
        "summary.json",
    ]:
        assert (run_dir / name).is_file(), name
    assert "zero-shot" in result.output and "trained" in result.output and "dev accuracy" in result.output
    assert "trainable parameters" in result.output and "base dtype: " in result.output
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["seed"] == 1

    result = invoke("eval", run_dir)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    assert "accuracy" in invoke("eval", run_dir, "--zero-shot").output

    result = invoke("inspect", run_dir / "softprompt.safetensors", "--base", model, "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "prompt_tuning" in result.output and "(4, 16)" in result.output
    assert result.output.count("virtual ") == 4  # one line of nearest tokens per virtual token

    result = invoke("predict", run_dir, "a great film", "terrible acting")
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.output.strip().splitlines()]
    assert [text for _, _, text in lines] == ["a great film", "terrible acting"]
    assert all(label in ("pos", "neg") and 0.5 <= float(p) <= 1 for label, p, _ in lines)

    result = invoke("generate", run_dir, "a great film", "--max-new-tokens", "3")
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1

    assert invoke("convert", run_dir, root / "peft").exit_code == 0
    assert (root / "peft" / "adapter_config.json").is_file()
    assert invoke("convert", root / "peft", root / "back.safetensors", "--base", model).exit_code == 0
    original = load_file(run_dir / "softprompt.safetensors")["embeddings"]
    assert torch.equal(load_file(root / "back.safetensors")["embeddings"], original)

    # A second train into the same folder refuses, naming the way out.
    again = invoke("train", config)
    assert again.exit_code == 2 and "--resume" in again.output


def test_a_shared_folder_with_both_layouts_converts_to_peft_and_names_its_base_from_softprompts_file(
    setup, tmp_path
):
    root, model, config = setup
    assert invoke("train", config, "--set", f"output.dir={tmp_path / 'run'}").exit_code == 0
    shared = tmp_path / "shared"  # what save_pretrained / the Hub hold: no config.yaml
    shared.mkdir()
    for name in ("softprompt.safetensors", "adapter_config.json", "adapter_model.safetensors", "README.md"):
        shutil.copy(tmp_path / "run" / name, shared / name)
    result = invoke("convert", shared, tmp_path / "peft")  # the base: the file's record names the folder
    assert result.exit_code == 0 and f"wrote peft adapter folder {tmp_path / 'peft'}" in result.output
    assert (tmp_path / "peft" / "adapter_config.json").is_file()


def test_config_errors_name_the_key_and_exit_2(setup):
    _, _, config = setup
    result = invoke("train", config, "--set", "train.lrr=1", "--set", "data.dev=missing.jsonl")
    assert result.exit_code == 2
    assert "train.lrr: unknown key" in result.output
    assert "data.dev: file not found" in result.output


def test_the_example_config_ships_with_the_package():
    assert example_config_path().is_file()


def test_console_script_is_this_app():
    (script,) = entry_points(group="console_scripts", name="softprompt")
    assert script.value == "softprompt.cli:app" and script.load() is app


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes(setup, tmp_path):
    """A real SIGINT mid-run: exit code 130, a checkpoint, and --resume completes the run."""
    root, model, _ = setup
    raw = classification_config(
        model, write_classification_data(tmp_path), tmp_path / "run", max_steps=400, eval_every=None
    )
    raw["train"]["save_every"] = 1000
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    process = subprocess.Popen(
        [str(SOFTPROMPT), "train", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    deadline = time.time() + 120
    seen = ""
    while "step/s" not in seen and time.time() < deadline:  # the progress bar runs: training started
        seen += process.stdout.read(64)
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    output = seen + process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    assert "continue with --resume" in output
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()
    resumed = subprocess.run(
        [str(SOFTPROMPT), "train", str(config), "--resume"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "steps        400 of 400" in resumed.stdout
    shutil.rmtree(tmp_path / "run")
