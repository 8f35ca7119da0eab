"""Training soft prompts from a YAML run config: ``softprompt train`` as a library.

Modules, one job each, bottom up: ``objectives`` (the losses), ``core`` (one optimiser step, with
or without accelerate), ``evaluate`` (scores), ``optim`` (optimiser and schedule), ``config`` (the
validated run config), ``presets`` (the papers' recipes), ``build`` (config -> task, data, prompt,
objective), ``checkpoint`` (exact resume), ``logs`` (JSONL/CSV/TensorBoard and the PNG), ``loop``
(the accelerate loop with evaluation, checkpoints and progress), ``run`` (a whole run), ``search``
(a budgeted search over runs: successive halving on dev; ``search.search(config)``).

``train(load_config("configs/sst2.yaml", ["train.max_steps=200"]))`` runs what ``softprompt train``
runs; :mod:`softprompt.train.run` has a whole run as an example that runs.
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
