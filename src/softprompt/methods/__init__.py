"""Soft-prompt methods: one module each, registered in ``METHODS``.

Adding a method is one file (its config dataclass, its module, its ``build``) plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from softprompt.families import ModelShape
from softprompt.methods import p_tuning, prefix_tuning, prompt_tuning
from softprompt.methods.base import PrefixStates, PromptOutput, SoftPrompt, SoftPromptConfig, VirtualTokens
from softprompt.methods.p_tuning import PTuningConfig
from softprompt.methods.prefix_tuning import PrefixTable, PrefixTuningConfig
from softprompt.methods.prompt_tuning import PromptEmbedding, PromptTuningConfig


@dataclass(frozen=True)
class Method:
    config: type[SoftPromptConfig]
    build: Callable[..., SoftPrompt]


METHODS: dict[str, Method] = {
    cls.method: Method(cls, module.build)
    for cls, module in [
        (PromptTuningConfig, prompt_tuning),
        (PrefixTuningConfig, prefix_tuning),
        (PTuningConfig, p_tuning),
    ]
}


def build_prompt(config: SoftPromptConfig, model: nn.Module, shape: ModelShape, tokenizer=None) -> SoftPrompt:
    """Build the trainable prompt that ``config`` describes for ``model``."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; known: {', '.join(METHODS)}")
    return METHODS[config.method].build(config, model, shape, tokenizer)


def plain_prompt(config: SoftPromptConfig, tensors: dict[str, torch.Tensor], shape: ModelShape) -> SoftPrompt:
    """A trainable prompt from folded tensors (``embeddings`` or ``prefix``), e.g. read from a file."""
    if "embeddings" in tensors:
        return PromptEmbedding(config, tensors["embeddings"].float())
    layout = shape.prefix_layout(getattr(config, "prefix_sites", "all"))
    return PrefixTable(config, tensors["prefix"].float(), layout)


__all__ = [
    "METHODS",
    "PTuningConfig",
    "PrefixStates",
    "PrefixTuningConfig",
    "PromptOutput",
    "PromptTuningConfig",
    "SoftPrompt",
    "SoftPromptConfig",
    "VirtualTokens",
    "build_prompt",
    "plain_prompt",
]
