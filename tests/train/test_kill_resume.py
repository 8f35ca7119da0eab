"""Training survives ``kill -9``: a run killed inside a step, inside a checkpoint write or inside a
metrics record (real SIGKILLs of a training process), then resumed, ends bit-identical on CPU to an
uninterrupted run, with the same metrics files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_helpers import classification_config

from softprompt.train.checkpoint import CHECKPOINT_NAME, read_checkpoint
from softprompt.train.logs import CSV_NAME, JSONL_NAME

# A training process that SIGKILLs itself at an exact moment, or runs until the test kills it.
TRAINER = textwrap.dedent(
    """
    import os, signal, sys
    config_path, mode, at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    calls = 0

    def die_at_call():
        global calls
        calls += 1
        if calls == at:
            os.kill(os.getpid(), signal.SIGKILL)

    if mode == "checkpoint":  # die half-way through writing the at-th checkpoint
        import softprompt.train.checkpoint as checkpoint
        write = checkpoint.save_file

        def half_then_die(tensors, path, metadata=None):
            if calls + 1 == at:
                with open(path, "wb") as f:
                    f.write(b"\\0" * 4096)
            die_at_call()
            write(tensors, path, metadata=metadata)

        checkpoint.save_file = half_then_die
    elif mode == "log":  # die half-way through writing the at-th record of metrics.jsonl / .csv
        from softprompt.train import logs
        write = logs.MetricsLog.write

        def half_then_die(self, split, step, values):
            if calls + 1 == at:
                for path, torn in ((self.jsonl, '{"step": %d, "split": "%s", "lo' % (step, split)),
                                   (self.csv, "%d,%s,lo" % (step, split))):
                    with path.open("a") as f:
                        f.write(torn)
            die_at_call()
            write(self, split, step, values)

        logs.MetricsLog.write = half_then_die
    elif mode == "step":  # die inside the at-th step: parameters updated, scheduler and counters not
        from torch.optim.optimizer import register_optimizer_step_post_hook
        register_optimizer_step_post_hook(lambda *args: die_at_call())
    from softprompt.train import load_config, train
    print("training", flush=True)
    train(load_config(config_path), resume=resume)
    """
)


def run_config(tiny_gpt2, cls_data, out) -> dict:
    # Adafactor's factored state, a decaying schedule, a checkpoint every step, evaluations that save
    # the best adapter: everything a resume must restore exactly.
    raw = classification_config(
        tiny_gpt2, cls_data, out, max_steps=8, eval_every=2, save_every=1, lr=0.05, seed=3,
        optimizer="adafactor", schedule="linear", warmup_steps=2,
    )  # fmt: skip
    raw["prompt"] = {"method": "prefix_tuning", "num_virtual_tokens": 3, "projection_hidden_size": 8}
    raw["data"]["train_limit"] = 20
    raw["eval"]["zero_shot"] = False
    return raw


def start_trainer(config_path, mode: str, at: int = 0, resume: bool = False) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(config_path), mode, str(at), "1" if resume else "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def finish(config_path, out) -> None:
    """Resume the killed run (or start it again, if it died before its first checkpoint) to the end,
    in a new process as ``softprompt train --resume`` would."""
    trainer = start_trainer(config_path, "none", resume=(out / CHECKPOINT_NAME).exists())
    output = trainer.communicate(timeout=300)[0]
    assert trainer.returncode == 0, output
    assert read_checkpoint(out / CHECKPOINT_NAME)["progress"]["step"] == 8


def assert_same_run(expected_dir, got_dir) -> None:
    expected, got = (read_checkpoint(d / CHECKPOINT_NAME)["trainable"] for d in (expected_dir, got_dir))
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    adapters = [load_file(d / "softprompt.safetensors") for d in (expected_dir, got_dir)]
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    assert sorted(p.name for p in got_dir.iterdir() if p.name.startswith(".")) == []  # no temps left
    # the metrics files read as one run: dev scores bit-identical, no torn or repeated line
    for name in (JSONL_NAME, CSV_NAME):
        expected_lines, got_lines = ((d / name).read_text().splitlines() for d in (expected_dir, got_dir))
        assert [line for line in got_lines if "dev" in line] == [
            line for line in expected_lines if "dev" in line
        ]
        assert [
            line.split(",")[:3] if name == CSV_NAME else json.loads(line).keys() for line in got_lines
        ] == [line.split(",")[:3] if name == CSV_NAME else json.loads(line).keys() for line in expected_lines]


@pytest.fixture(scope="module")
def uninterrupted(tiny_gpt2, cls_data, tmp_path_factory):
    """The run without interruption, in its own process like every other session here (runs in one
    process with models saved by the test itself are not always bit-identical to a fresh process)."""
    folder = tmp_path_factory.mktemp("whole")
    config_path = folder / "run.yaml"
    config_path.write_text(yaml.safe_dump(run_config(tiny_gpt2, cls_data, folder / "run")))
    finish(config_path, folder / "run")
    return folder / "run"


@pytest.mark.parametrize(
    "mode, at, last_checkpoint",
    # the 2nd record is dev at step 4, written before step 4's checkpoint
    [("checkpoint", 4, 3), ("log", 2, 3), pytest.param("step", 5, 4, marks=pytest.mark.slow)],
    ids=["in-checkpoint-write", "in-metrics-record", "in-step"],
)
def test_killed_then_resumed_ends_bit_identical(
    mode, at, last_checkpoint, uninterrupted, tiny_gpt2, gpt2_base, cls_data, tmp_path
):
    raw = run_config(tiny_gpt2, cls_data, tmp_path / "killed")
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    trainer = start_trainer(config_path, mode, at)
    output = trainer.communicate(timeout=300)[0]
    assert trainer.returncode == -signal.SIGKILL, output
    saved = read_checkpoint(tmp_path / "killed" / CHECKPOINT_NAME)  # the last whole checkpoint stands
    assert saved["progress"]["step"] == last_checkpoint
    finish(config_path, tmp_path / "killed")
    assert_same_run(uninterrupted, tmp_path / "killed")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_killed_again_and_again_at_random_moments(
    seed, uninterrupted, tiny_gpt2, gpt2_base, cls_data, tmp_path
):
    rng = random.Random(seed)
    raw = run_config(tiny_gpt2, cls_data, tmp_path / "killed")
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "killed"
    for _ in range(3):
        trainer = start_trainer(config_path, "random", resume=(out / CHECKPOINT_NAME).exists())
        assert trainer.stdout.readline().strip() == "training"
        time.sleep(rng.uniform(1.0, 6.0))  # somewhere in loading, a step, an evaluation or a save
        trainer.send_signal(signal.SIGKILL)
        trainer.communicate(timeout=60)
    finish(config_path, out)
    assert_same_run(uninterrupted, out)
