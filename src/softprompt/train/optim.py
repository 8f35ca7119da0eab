"""The optimiser and the learning-rate schedule that the ``train`` section describes.

Examples:
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> train = TrainSection(lr=0.1, warmup_steps=2, schedule="linear")
    >>> optimizer = make_optimizer(model.prompt.parameters(), train)
    >>> scheduler = make_scheduler(optimizer, train, total_steps=10)
    >>> rates = []
    >>> for _ in range(4):                        # warm up over 2 steps, then decay linearly to 0 at 10
    ...     rates.append(round(scheduler.get_last_lr()[0], 4))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> type(optimizer).__name__, rates
    ('AdamW', [0.0, 0.05, 0.1, 0.0875])
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import get_scheduler
from transformers.optimization import Adafactor

from softprompt.train.config import TrainSection


def make_optimizer(params: Iterable[torch.nn.Parameter], train: TrainSection) -> torch.optim.Optimizer:
    """Adafactor as Lester et al. ran it (fixed lr, no parameter scaling), or AdamW."""
    params = [p for p in params if p.requires_grad]
    if train.optimizer == "adafactor":
        return Adafactor(
            params,
            lr=train.lr,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            weight_decay=train.weight_decay,
        )
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainSection, total_steps: int):
    """Linear warm-up over ``warmup_steps``, then constant, linear or cosine decay to 0 at ``total_steps``."""
    name = train.schedule
    if name == "constant" and train.warmup_steps:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=train.warmup_steps, num_training_steps=total_steps)
