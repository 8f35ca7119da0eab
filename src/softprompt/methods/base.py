"""What every soft-prompt method shares: its config base, its two output kinds, the module API, and
the :class:`Method` protocol a method file implements.

A prompt module is *what a prompt is*: it takes no input and returns either

* :class:`VirtualTokens` — ``P`` vectors in the input-embedding space (prompt tuning, P-tuning), or
* :class:`PrefixStates` — a key and a value per attention layer for ``P`` positions (prefix tuning).

How the output joins a batch is :mod:`softprompt.injection`'s job, not the method's. What a method
saves, how it is rebuilt from a file, and how it maps onto ``peft``'s format is its
:class:`Method`'s job, so no other module needs to know which method it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from softprompt.families import ModelShape, PrefixLayout

# What a method's file holds: input-space embeddings (P, E), or a flat prefix (P, F).
SavedTensor = Literal["embeddings", "prefix"]


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
    """Per-layer attention prefixes. ``layers[l] = (keys, values)``: (kv_heads_l, P, head_dim_l) and
    (kv_heads_l, P, value_head_dim_l)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[-2]


PromptOutput = VirtualTokens | PrefixStates


def split_prefix(flat: torch.Tensor, shape: ModelShape | PrefixLayout) -> PrefixStates:
    """Cut a flat prefix (P, sum_l kv_heads_l * (key_l + value_l widths)) into per-layer keys and values.

    The flat layout is, per virtual token, layer after layer, key before value, head-major — the
    layout ``peft`` uses too, so its prefix files load without reshuffling.
    """
    if flat.shape[-1] != shape.prefix_width:
        raise ValueError(f"prefix has width {flat.shape[-1]}, the model needs {shape.prefix_width}")
    layers = []
    sizes = [size for layer in shape.layers for size in (layer.key_size, layer.value_size)]
    parts = flat.split(sizes, dim=-1)
    for layer, keys, values in zip(shape.layers, parts[0::2], parts[1::2], strict=True):
        # (P, H * D) -> (H, P, D)
        keys = keys.view(-1, layer.num_kv_heads, layer.head_dim).transpose(0, 1)
        values = values.view(-1, layer.num_kv_heads, layer.value_head_dim).transpose(0, 1)
        layers.append((keys, values))
    return PrefixStates(layers)


def flatten_prefix(states: PrefixStates) -> torch.Tensor:
    """Inverse of :func:`split_prefix`: per-layer (H, P, D) keys/values -> (P, sum_l H * (D_k + D_v))."""
    chunks = [
        part.transpose(0, 1).reshape(part.shape[1], -1)
        for keys, values in states.layers
        for part in (keys, values)
    ]
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


class Method(ABC):
    """One soft-prompt method: how it is built, what it saves, and how it comes back.

    A method file holds its config dataclass, its prompt module(s) and one subclass of this, whose
    instance is registered in :data:`softprompt.methods.METHODS` under ``config.method``.

    Attributes:
        config: the method's config dataclass.
        saves: the tensor its files hold (``embeddings`` (P, E) or ``prefix`` (P, F)).
        reload_init: the init a reloaded config gets: the numbers come from the file, so the init
            that made them must not run again.
        peft_type: ``peft``'s ``peft_type`` for this method.
    """

    config: ClassVar[type[SoftPromptConfig]]
    saves: ClassVar[SavedTensor]
    reload_init: ClassVar[str]
    peft_type: ClassVar[str]

    @property
    def name(self) -> str:
        return self.config.method

    @abstractmethod
    def build(
        self, config: SoftPromptConfig, model: nn.Module, shape: ModelShape, tokenizer=None
    ) -> SoftPrompt:
        """A new trainable prompt for ``model``, started as ``config.init`` says."""

    @abstractmethod
    def rebuild(self, config: SoftPromptConfig, table: torch.Tensor, shape: ModelShape) -> SoftPrompt:
        """A trainable prompt holding the folded ``table`` a file saved (reparameterisations stay folded)."""

    def layout(self, config: SoftPromptConfig, shape: ModelShape) -> PrefixLayout | None:
        """The attention layers the prompt's prefix fills; ``None`` for input-space virtual tokens."""
        return None

    def saved_width(self, config: SoftPromptConfig, shape: ModelShape) -> int:
        """Numbers per virtual token in the saved table (the embedding width, or the prefix width)."""
        layout = self.layout(config, shape)
        return shape.embed_dim if layout is None else layout.prefix_width

    def reload_config(self, choices: dict[str, Any]) -> SoftPromptConfig:
        """The config of a saved prompt from the choices its file records."""
        return self.config(**{**choices, "init": self.reload_init})

    def peft_fields(self, config: SoftPromptConfig) -> dict[str, Any]:
        """Method-specific fields of a ``peft`` ``adapter_config.json`` (beyond the table's shape)."""
        return {}

    def from_peft(self, length: int, fields: dict[str, Any], shape: ModelShape | None) -> SoftPromptConfig:
        """The config of a prompt read from a ``peft`` folder with ``length`` virtual tokens."""
        return self.config(num_virtual_tokens=length, init=self.reload_init)
