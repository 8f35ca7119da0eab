"""One process of a sharded-base training run on CPU, started by ``accelerate launch`` (tests/train/test_fsdp.py,
test_deepspeed.py): the tiny GPT-2 sharded by FSDP2 or DeepSpeed ZeRO-3, a prompt trained with the library's
core, a checkpoint, and what each process saw, written as JSON and safetensors for the test to read.

accelerate 1.15 turns FSDP on only for accelerator devices (``AcceleratorState`` lists CUDA, NPU, XPU...,
not ``MULTI_CPU``), so on a CPU machine this script sets the distributed type itself; everything after that
is the code GPUs run: accelerate's ``fsdp2_prepare_model`` and torch's ``fully_shard`` over gloo.

The batches and the reference run (one process, no accelerator) live here too, so the test computes the
same steps in its own process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import softprompt  # noqa: E402
from softprompt import initializers  # noqa: E402
from softprompt.injection.capture import site_states  # noqa: E402
from softprompt.train.checkpoint import Progress, load_checkpoint, save_checkpoint  # noqa: E402
from softprompt.train.core import step  # noqa: E402
from softprompt.train.objectives import ClassificationObjective  # noqa: E402

STEPS, CHECKPOINT_AT = 4, 2
INIT_TEXT = " good bad"
LABEL_WORDS = (" good", " bad")


ROOT = HERE.parents[1]
CONFIGS = ROOT / "configs" / "accelerate"


def launch(
    config: str, folder: Path, out: Path, *extra: str, options: tuple[str, ...] = (), env: dict | None = None
) -> None:
    """Run this script (arguments ``folder out *extra``) on 2 CPU processes under ``accelerate launch``
    with the shipped ``config`` (``fsdp2`` or ``zero3``) and launcher ``options``, in fp32; fails with
    the processes' output if they do."""
    import os
    import subprocess

    from test_distributed import free_port

    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--config_file", str(CONFIGS / f"{config}.yaml"), "--num_processes", "2",
        "--mixed_precision", "no", "--main_process_port", str(free_port()), *options,
        __file__, str(folder), str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0 and "(exitcode: -6)" in done.stderr:
        # A worker aborted by the C++ runtime ("terminate called without an active exception": gloo's
        # threads on a heavily loaded 2-core machine) is run once more; a run failing on its own is not.
        print(done.stderr[-3000:], file=sys.stderr)
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def global_batches(vocab: int, steps: int = STEPS) -> list[dict[str, torch.Tensor]]:
    """``steps`` global batches of 6 rows, left-padded to different lengths (every process builds all)."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        ids = torch.randint(3, vocab, (6, 7), generator=generator)
        mask = torch.ones_like(ids)
        for row, pads in enumerate((0, 2, 1, 3, 0, 1)):
            mask[row, :pads] = 0
            ids[row, :pads] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "label": torch.tensor([0, 1, 1, 0, 1, 0])})
    return batches


def build(folder: str):
    """The frozen tiny GPT-2, its tokenizer, a prompt-tuning model (vocab init) and its objective.

    Under ZeRO-3 the base loads partitioned (every weight has shape ``[0]``, peft #206): the vocab
    init gathers the embedding itself (``softprompt.initializers.embeddings_of``)."""
    from softprompt.hub import load_base_model

    base, tokenizer = load_base_model(folder)
    config = softprompt.PromptTuningConfig(num_virtual_tokens=4, init="vocab", vocab_top_k=50)
    model = softprompt.wrap(base, config)
    label_ids = [tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in LABEL_WORDS]
    return base, tokenizer, model, ClassificationObjective(model, label_token_ids=label_ids)


def optimizer_for(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.prompt.parameters(), lr=0.05)


def train(objective, optimizer, batches, accelerator=None, micro_batch_size: int | None = 2) -> list[float]:
    """The steps every run takes: micro-batches of 2 (3 rows per process of 2: uneven), clipping."""
    return [
        step(
            objective, optimizer, batch, micro_batch_size=micro_batch_size, max_grad_norm=1.0,
            accelerator=accelerator,
        )
        for batch in batches
    ]  # fmt: skip


def reference(folder: str, out: Path) -> dict[str, torch.Tensor]:
    """One process, no accelerator: the prompt after STEPS steps, its checkpoint after CHECKPOINT_AT,
    and the inits of an unsharded base."""
    base, tokenizer, model, objective = build(folder)
    initial_prompt = model.prompt.embeddings.detach().clone()
    inits = init_reference(base, tokenizer)
    optimizer = optimizer_for(model)
    batches = global_batches(base.config.vocab_size)
    train(objective, optimizer, batches[:CHECKPOINT_AT])
    train(objective, optimizer, batches[CHECKPOINT_AT:])
    with torch.no_grad():
        scores = objective.scores(batches[0]["input_ids"], batches[0]["attention_mask"])
    return {
        "prompt": model.prompt.embeddings.detach().clone(),
        "initial_prompt": initial_prompt,
        "scores": scores,
        **inits,
    }


def init_ids(tokenizer) -> torch.Tensor:
    return initializers.text_token_ids(tokenizer, INIT_TEXT, 4)


def init_reference(base, tokenizer) -> dict[str, torch.Tensor]:
    """What text init reads of the base: the embeddings of the init text, and its keys/values."""
    shape = softprompt.families.model_shape(base)
    ids = init_ids(tokenizer)
    wrapped = wrap_on_sharded(base, tokenizer)
    return {
        "text_embeddings": initializers.embeddings_of(base, ids),
        "text_keys": site_states(base, shape, ids)["self"][0][0],
        "prefix_text": wrapped["prefix"],
    }


def sharded_inits(base, tokenizer) -> dict[str, torch.Tensor]:
    """The same, read from the sharded base by the initializers (each gathers what it reads)."""
    shape = softprompt.families.model_shape(base)
    ids = init_ids(tokenizer)
    return {
        "text_embeddings": initializers.embeddings_of(base, ids),
        "text_keys": initializers.states_of(base, shape, ids)["self"][0][0],
    }


def wrap_on_sharded(base, tokenizer) -> dict:
    """``softprompt.wrap`` with text init on the sharded base, as a user calls it: prompt tuning (reads
    the embedding) and prefix tuning (runs the layers). Returns each one's tensor, or its error as text
    (recorded for the test, not raised)."""
    configs = {
        "embeddings": softprompt.PromptTuningConfig(num_virtual_tokens=4, init="text", init_text=INIT_TEXT),
        "prefix": softprompt.PrefixTuningConfig(num_virtual_tokens=4, init="text", init_text=INIT_TEXT),
    }
    found = {}
    for name, config in configs.items():
        try:
            found[name] = getattr(softprompt.wrap(base, config, tokenizer=tokenizer).prompt, name).detach()
        except Exception as err:  # noqa: BLE001 — the test reports what went wrong
            found[name] = f"{type(err).__name__}: {err}"
    return found


def make_accelerator(engine: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if engine == "fsdp2":
        accelerator = Accelerator(cpu=True)
        # What accelerate does on GPUs (see the module docstring); the plugin reads the launcher's config.
        plugin = FullyShardedDataParallelPlugin()  # (built first: building it resets the state's type)
        state = AcceleratorState()
        state.fsdp_plugin, state.distributed_type = plugin, DistributedType.FSDP
        return accelerator
    if engine == "zero3":
        from accelerate.utils import InitProcessGroupKwargs

        # No accelerator device: accelerate finds no backend of its own; DeepSpeed's CPU one is gloo.
        accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
        # Partition even these tiny tensors, as a big model's are (by default ZeRO-3 keeps tensors
        # under 100,000 numbers whole on every process).
        zero = accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
        zero["stage3_param_persistence_threshold"] = 0
        return accelerator
    raise SystemExit(f"unknown engine {engine}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("out", type=Path)
    parser.add_argument("--engine", default="fsdp2", choices=("fsdp2", "zero3"))
    parser.add_argument("--resume", action="store_true", help="continue from out/checkpoint.safetensors")
    args = parser.parse_args()
    from softprompt.sharding import is_sharded, prepare, unsharded, whole_parameters

    accelerator = make_accelerator(args.engine)
    rank = accelerator.process_index
    base, tokenizer, model, objective = build(args.folder)
    tensors = {"initial_prompt": model.prompt.embeddings.detach().clone()}
    facts = {"embedding_shape_at_rest": list(base.get_input_embeddings().weight.shape)}
    if args.engine == "zero3" and not args.resume:
        # Partitioned since it loaded, before DeepSpeed's hooks exist: what peft #206 / #1633 hit.
        wrapped_init = wrap_on_sharded(base, tokenizer)
    optimizer = optimizer_for(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    checkpoint = args.out / "checkpoint.safetensors"
    # ZeRO-3 keeps the optimiser state partitioned: softprompt's checkpoint (whole tensors) is FSDP2's only.
    checkpoint_at = CHECKPOINT_AT if args.engine == "fsdp2" else None
    batches = global_batches(base.config.vocab_size)
    if args.resume:  # as softprompt train resumes: restored before accelerator.prepare
        progress = load_checkpoint(checkpoint, model, optimizer, scheduler)
        batches = batches[progress.step :]
    wrapped, optimizer = prepare(accelerator, objective, optimizer)
    facts |= {
        "world": accelerator.num_processes,
        "prompt_sharded": is_sharded(model.prompt.embeddings),
        "base": {name: [list(_whole_shape(p)), _local_numel(p)] for name, p in base.named_parameters()},
        "base_sharded": all(is_sharded(p) for p in base.parameters()),
    }
    if not args.resume:
        tensors |= {f"sharded_{k}": v for k, v in sharded_inits(base, tokenizer).items()}
        if args.engine == "fsdp2":  # FSDP2 shards at prepare
            wrapped_init = wrap_on_sharded(base, tokenizer)
        for name, found in wrapped_init.items():
            facts[f"wrap_{name}_error"] = found if isinstance(found, str) else None
            if not isinstance(found, str):
                tensors[f"wrapped_text_{name}"] = found
        facts["losses"] = train(wrapped, optimizer, batches[:checkpoint_at], accelerator)
        batches = batches[len(facts["losses"]) :]
        if checkpoint_at is not None:
            if accelerator.is_main_process:
                save_checkpoint(checkpoint, model, optimizer, scheduler, Progress(step=checkpoint_at))
            accelerator.wait_for_everyone()
    facts["losses_after_checkpoint"] = train(wrapped, optimizer, batches, accelerator)
    first = global_batches(base.config.vocab_size)[0]
    with torch.no_grad(), unsharded(wrapped):  # scoring does not go through the sharded forward
        tensors["scores"] = objective.scores(first["input_ids"], first["attention_mask"])
    name = "resumed" if args.resume else "run"
    with whole_parameters(model.prompt):  # every process gathers (ZeRO-3 partitions the prompt too)
        tensors["prompt"] = model.prompt.embeddings.detach().clone()
        if accelerator.is_main_process:
            model.save(args.out / f"{name}-adapter.safetensors")  # once
    if args.engine == "zero3":  # how many optimiser steps DeepSpeed takes in one step of 2 micro-batches
        before = wrapped.global_steps
        train(wrapped, optimizer, [first], accelerator, micro_batch_size=2)
        facts["engine_steps_per_step_of_two_micro_batches"] = wrapped.global_steps - before
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(args.out / f"{name}-rank{rank}.safetensors")
    )
    (args.out / f"{name}-rank{rank}.json").write_text(json.dumps(facts))


def _whole_shape(param: torch.Tensor) -> torch.Size:
    return param.ds_shape if hasattr(param, "ds_shape") else param.shape


def _local_numel(param: torch.Tensor) -> int:
    """Numbers of ``param`` this process holds at rest."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor.numel()
    return param.to_local().numel() if hasattr(param, "to_local") else param.numel()


if __name__ == "__main__":
    main()
