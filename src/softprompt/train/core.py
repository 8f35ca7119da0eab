"""The training core: one optimiser step of an objective on a batch, with or without ``accelerate``.

This is what every trainer in the project stands on — ``softprompt train``'s loop
(:mod:`softprompt.train.loop`, which adds accelerate, checkpoints and progress), the benchmarks and
the example probe. Scoring is :mod:`softprompt.train.evaluate`.

A global batch is split over processes (contiguous rows) and micro-batches; each micro-batch's
summed loss is divided by the item count of the *whole* global batch (and multiplied by the number
of processes, which DDP's gradient averaging divides out again), so one process and N processes,
one micro-batch or many, compute the gradient of the same batch.

Examples:
    >>> from softprompt.train.objectives import ClassificationObjective
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> objective = ClassificationObjective(model, label_token_ids=[5, 6])
    >>> optimizer = torch.optim.AdamW(model.prompt.parameters(), lr=1e-2)
    >>> batch = {"input_ids": input_ids, "attention_mask": attention_mask, "label": torch.tensor([0, 1])}
    >>> loss = step(objective, optimizer, batch, micro_batch_size=1, max_grad_norm=1.0)
    >>> loss > 0
    True
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from softprompt.train.objectives import Objective


class _OneProcess:
    """The few ``accelerate.Accelerator`` members :func:`step` uses, for a plain single-process run."""

    num_processes = 1
    process_index = 0
    optimizer_step_was_skipped = False
    sync_gradients = True

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def unwrap_model(self, module: nn.Module) -> nn.Module:
        return module

    def no_sync(self, module: nn.Module):
        return contextlib.nullcontext()

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def step(
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    *,
    scheduler: Any = None,
    micro_batch_size: int | None = None,
    max_grad_norm: float | None = None,
    accelerator: Any = None,
) -> float:
    """One optimiser step on a global ``batch``; returns the batch's mean loss over all processes.

    Args:
        objective: the loss (``objective(batch)`` summed, ``objective.count(batch)`` items); with
            ``accelerator``, the ``accelerator.prepare``-d module.
        optimizer: steps the trainable parameters; ``scheduler`` (optional) steps after it.
        micro_batch_size: rows per forward/backward pass (gradients accumulate); default all rows.
        max_grad_norm: clip the gradient norm to this before the step.
        accelerator: an ``accelerate.Accelerator`` (DDP, mixed precision); ``None`` runs plainly on
            the objective's device.
    """
    if accelerator is None:
        accelerator = _OneProcess(next(objective.parameters()).device)
    optimizer.zero_grad(set_to_none=True)
    denominator = accelerator.unwrap_model(objective).count(batch)  # items of the whole global batch
    world = accelerator.num_processes
    share = _rows(batch, accelerator.process_index, world)
    rows = share["input_ids"].shape[0]
    micro = micro_batch_size or rows
    starts = range(0, rows, micro)
    local_sum = torch.zeros((), device=accelerator.device)
    for i, start in enumerate(starts):
        piece = _trim({k: v[start : start + micro] for k, v in share.items()})
        piece = {k: v.to(accelerator.device) for k, v in piece.items()}
        last = i == len(starts) - 1
        # Only the last micro-batch all-reduces the gradients across processes (DDP: no_sync) and
        # ends the accumulation (DeepSpeed steps its engine inside the backward that syncs).
        accelerator.sync_gradients = last
        sync = contextlib.nullcontext() if last else accelerator.no_sync(objective)
        with sync:
            with accelerator.autocast():
                summed = objective(piece)
            accelerator.backward(summed * (world / denominator))
        local_sum += summed.detach().float()
    if max_grad_norm is not None:
        accelerator.clip_grad_norm_([p for p in objective.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    if scheduler is not None and not accelerator.optimizer_step_was_skipped:  # fp16 overflow: no step
        scheduler.step()
    total = accelerator.reduce(local_sum, reduction="sum") if world > 1 else local_sum
    return float(total) / denominator


def _rows(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """This process's contiguous share of the global batch's rows."""
    size = batch["input_ids"].shape[0]
    bounds = [size * r // world for r in range(world + 1)]
    return {k: v[bounds[rank] : bounds[rank + 1]] for k, v in batch.items()}


# The per-token tensors of a batch, (B, T) or (B, C, T): trimmed together. Row targets ("label",
# (B,) or multi-hot (B, C)) are not, even when C happens to equal T.
_TOKEN_KEYS = ("input_ids", "attention_mask", "labels")


def _trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the pad columns no row of this piece needs (the global batch was padded to its longest row)."""
    keep = batch["attention_mask"].bool().flatten(0, -2).any(0)  # (T,)
    if bool(keep.all()):
        return batch
    return {k: v[..., keep] if k in _TOKEN_KEYS else v for k, v in batch.items()}
