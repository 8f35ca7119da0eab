"""Soft-prompt methods: one file each, registered in ``METHODS``.

Adding a method is one file — its config dataclass, its prompt module and its
:class:`~softprompt.methods.base.Method` — plus one entry in ``_REGISTERED`` below.

Examples:
    >>> sorted(METHODS)
    ['multitask_prompt_tuning', 'p_tuning', 'prefix_tuning', 'prompt_tuning']
    >>> method_of(PrefixTuningConfig()).saves
    'prefix'
"""

from __future__ import annotations

from torch import nn

from softprompt.families import ModelShape
from softprompt.methods import multitask, p_tuning, prefix_tuning, prompt_tuning
from softprompt.methods.base import (
    Method,
    PrefixStates,
    PromptOutput,
    SoftPrompt,
    SoftPromptConfig,
    VirtualTokens,
)
from softprompt.methods.multitask import MultitaskPromptTuningConfig
from softprompt.methods.p_tuning import PTuningConfig
from softprompt.methods.prefix_tuning import PrefixTuningConfig
from softprompt.methods.prompt_tuning import PromptTuningConfig

_REGISTERED: list[Method] = [prompt_tuning.METHOD, prefix_tuning.METHOD, p_tuning.METHOD, multitask.METHOD]
METHODS: dict[str, Method] = {method.name: method for method in _REGISTERED}


def method_of(config: SoftPromptConfig) -> Method:
    """The registered method a config belongs to."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; known: {', '.join(METHODS)}")
    return METHODS[config.method]


def build_prompt(config: SoftPromptConfig, model: nn.Module, shape: ModelShape, tokenizer=None) -> SoftPrompt:
    """Build the trainable prompt that ``config`` describes for ``model``."""
    return method_of(config).build(config, model, shape, tokenizer)


__all__ = [
    "METHODS",
    "Method",
    "MultitaskPromptTuningConfig",
    "PTuningConfig",
    "PrefixStates",
    "PrefixTuningConfig",
    "PromptOutput",
    "PromptTuningConfig",
    "SoftPrompt",
    "SoftPromptConfig",
    "VirtualTokens",
    "build_prompt",
    "method_of",
]
