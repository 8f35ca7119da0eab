"""Two CPU processes (over gloo, started by ``accelerate launch``) running ``softprompt train`` train the
prompt one process would: DDP, and FSDP2 with the frozen base sharded (softprompt.sharding.prepare)."""

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

import softprompt
from softprompt.train import load_config, train
from softprompt.train.checkpoint import CHECKPOINT_NAME, read_checkpoint

ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
LAUNCHERS = {
    # On a machine without GPUs, --multi_gpu starts two CPU processes that talk over gloo.
    "ddp": ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"],
    # The shipped FSDP2 config, its layer class set for the tiny GPT-2.
    "fsdp2": [
        "--config_file",
        str(CONFIGS / "fsdp2.yaml"),
        "--fsdp_transformer_layer_cls_to_wrap",
        "GPT2Block",
    ],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_train_the_prompt_of_one(launcher, tiny_gpt2, gpt2_base, cls_data, tmp_path):
    if not ACCELERATE.exists():
        pytest.skip("accelerate's launcher is not installed next to this python")

    def config(name: str) -> dict:
        # A global batch of 6 rows: each process takes 3, in micro-batches of 2 (uneven: 2 + 1).
        raw = classification_config(
            tiny_gpt2, cls_data, tmp_path / name, max_steps=3, eval_every=3, batch_size=6, micro_batch_size=2,
            optimizer="adamw", lr=0.01, cpu=True,
        )  # fmt: skip
        # zero-shot scoring runs outside the prepared forward: under FSDP2 it reads a sharded base
        raw["eval"]["zero_shot"] = launcher == "fsdp2"
        raw["model"]["dtype"] = "float32"  # the one-process run trains gpt2_base, an fp32 model
        return raw

    one = train(load_config(None, base=config("one")), base=gpt2_base)

    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config("two"), sort_keys=False))
    command = [
        str(ACCELERATE), "launch", *LAUNCHERS[launcher], "--num_processes", "2", "--mixed_precision", "no",
        "--main_process_port", str(free_port()), "-m", "softprompt.cli", "train", str(path),
    ]  # fmt: skip
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
    if launcher == "fsdp2":
        assert summary["zero_shot"]["accuracy"] == pytest.approx(one.zero_shot["accuracy"])
        saved = softprompt.load(gpt2_base[0], tmp_path / "two")  # the run folder holds the adapter
        torch.testing.assert_close(saved.prompt.embeddings, single["prompt.embeddings"], rtol=1e-5, atol=1e-6)
