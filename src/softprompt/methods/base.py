"""What every soft-prompt method shares: its config base, its two output kinds, and the module API.

A method is *what a prompt is*: a module that takes no input and returns either

* :class:`VirtualTokens` — ``P`` vectors in the input-embedding space (prompt tuning, P-tuning), or
* :class:`PrefixStates` — a key and a value per attention layer for ``P`` positions (prefix tuning).

How the output joins a batch is :mod:`softprompt.injection`'s job, not the method's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from softprompt.families import ModelShape


@dataclass(frozen=True)
class SoftPromptConfig:
    """Choices common to all methods. Subclasses add their own; model facts never live here."""

    method: ClassVar[str]
    num_virtual_tokens: int = 20

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be at least 1, got {self.num_virtual_tokens}")


@dataclass
class VirtualTokens:
    """Input-space virtual tokens. ``embeddings``: (P, E)."""

    embeddings: torch.Tensor

    @property
    def length(self) -> int:
        return self.embeddings.shape[0]


@dataclass
class PrefixStates:
    """Per-layer attention prefixes. ``layers[l] = (keys, values)``, each (kv_heads_l, P, head_dim_l)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[-2]


PromptOutput = VirtualTokens | PrefixStates


def split_prefix(flat: torch.Tensor, shape: ModelShape) -> PrefixStates:
    """Cut a flat prefix (P, sum_l 2 * kv_heads_l * head_dim_l) into per-layer keys and values.

    The flat layout is, per virtual token, layer after layer, key before value, head-major — the
    layout ``peft`` uses too, so its prefix files load without reshuffling.
    """
    if flat.shape[-1] != shape.prefix_width:
        raise ValueError(f"prefix has width {flat.shape[-1]}, the model needs {shape.prefix_width}")
    layers = []
    for chunk, layer in zip(flat.split([s.kv_size for s in shape.layers], dim=-1), shape.layers, strict=True):
        # (P, 2 * H * D) -> (2, H, P, D)
        kv = chunk.view(-1, 2, layer.num_kv_heads, layer.head_dim).permute(1, 2, 0, 3)
        layers.append((kv[0], kv[1]))
    return PrefixStates(layers)


def flatten_prefix(states: PrefixStates) -> torch.Tensor:
    """Inverse of :func:`split_prefix`: per-layer (H, P, D) keys/values -> (P, sum_l 2 * H * D)."""
    chunks = []
    for keys, values in states.layers:
        kv = torch.stack([keys, values])  # (2, H, P, D)
        chunks.append(kv.permute(2, 0, 1, 3).reshape(kv.shape[2], -1))
    return torch.cat(chunks, dim=-1)


class SoftPrompt(nn.Module, ABC):
    """A trainable soft prompt. ``forward()`` takes no input: a prompt never sees the batch."""

    def __init__(self, config: SoftPromptConfig) -> None:
        super().__init__()
        self.config = config

    @abstractmethod
    def forward(self) -> PromptOutput: ...

    def folded(self) -> dict[str, torch.Tensor]:
        """The plain tensors that reproduce this prompt for inference (reparameterisations folded away).

        Returns ``{"embeddings": (P, E)}`` or ``{"prefix": (P, F)}``; these are what files hold.
        """
        with torch.no_grad():
            out = self()
        if isinstance(out, VirtualTokens):
            return {"embeddings": out.embeddings.detach().clone()}
        return {"prefix": flatten_prefix(out).detach().clone()}
