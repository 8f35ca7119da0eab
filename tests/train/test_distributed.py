"""Two CPU processes (DDP over gloo, started by ``accelerate launch``) train the prompt one process would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import classification_config

from softprompt.train import load_config, train
from softprompt.train.checkpoint import CHECKPOINT_NAME, read_checkpoint

ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_the_prompt_of_one(tiny_gpt2, gpt2_base, cls_data, tmp_path):
    if not ACCELERATE.exists():
        pytest.skip("accelerate's launcher is not installed next to this python")

    def config(name: str) -> dict:
        # A global batch of 6 rows: each process takes 3, in micro-batches of 2 (uneven: 2 + 1).
        raw = classification_config(
            tiny_gpt2, cls_data, tmp_path / name, max_steps=3, eval_every=3, batch_size=6, micro_batch_size=2,
            optimizer="adamw", lr=0.01, cpu=True,
        )  # fmt: skip
        raw["eval"]["zero_shot"] = False
        raw["model"]["dtype"] = "float32"  # the one-process run trains gpt2_base, an fp32 model
        return raw

    one = train(load_config(None, base=config("one")), base=gpt2_base)

    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config("two"), sort_keys=False))
    command = [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "softprompt.cli", "train", str(path),
    ]  # fmt: skip
    # On a machine without GPUs, --multi_gpu starts two CPU processes that talk over gloo.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "step 3: dev accuracy" in done.stdout + done.stderr

    single = read_checkpoint(tmp_path / "one" / CHECKPOINT_NAME)["trainable"]
    double = read_checkpoint(tmp_path / "two" / CHECKPOINT_NAME)["trainable"]
    for name in single:
        assert not torch.equal(single[name], torch.zeros_like(single[name]))
        torch.testing.assert_close(double[name], single[name], rtol=1e-5, atol=1e-6)
    summary = yaml.safe_load((tmp_path / "two" / "summary.json").read_text())
    assert summary["dev"]["accuracy"] == pytest.approx(one.dev["accuracy"])  # sharded eval, gathered
