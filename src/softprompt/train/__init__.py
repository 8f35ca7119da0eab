"""Training soft prompts from a YAML run config: ``softprompt train`` as a library.

Modules, one job each: ``config`` (the validated run config), ``presets`` (the papers' recipes),
``build`` (config -> task, data, prompt, objective), ``objectives`` (the losses), ``optim``
(optimiser and schedule), ``loop`` (the accelerate training loop), ``evaluate`` (scores),
``checkpoint`` (exact resume), ``logs`` (JSONL/CSV/TensorBoard and the PNG), ``run`` (a whole run).

Example:
    >>> from softprompt.train import format_summary, load_config, train
    >>> summary = train(load_config("configs/sst2.yaml", ["train.max_steps=200"]))  # doctest: +SKIP
    >>> print(format_summary(summary))  # doctest: +SKIP
"""

from softprompt.train.config import ConfigError, RunConfig, load_config
from softprompt.train.presets import PRESETS
from softprompt.train.run import RunError, RunSummary, format_summary, train

__all__ = [
    "PRESETS",
    "ConfigError",
    "RunConfig",
    "RunError",
    "RunSummary",
    "format_summary",
    "load_config",
    "train",
]
