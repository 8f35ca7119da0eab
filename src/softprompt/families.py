"""The one place that knows model families.

A family is a row of ``FAMILIES``: how to read its attention shapes from a ``transformers`` config.
Everything else in softprompt works from the immutable :class:`ModelShape` derived here once, so a
new family is a table entry, never a branch elsewhere.

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                                      num_key_value_heads=2, intermediate_size=64, vocab_size=128))
    >>> shape = model_shape(model)
    >>> shape.family, shape.num_layers, shape.layers[0]
    ('llama', 2, LayerShape(num_kv_heads=2, head_dim=8))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

ModelKind = Literal["causal"]


@dataclass(frozen=True)
class LayerShape:
    """Key/value shape of one attention layer: prefixes are ``(num_kv_heads, P, head_dim)`` per layer."""

    num_kv_heads: int
    head_dim: int

    @property
    def kv_size(self) -> int:
        """Numbers one virtual token needs in this layer: a key and a value."""
        return 2 * self.num_kv_heads * self.head_dim


def _heads(config: Any) -> int:
    return config.num_attention_heads


def _kv_heads(config: Any) -> int:
    # Grouped-query attention (Llama 3, Qwen2, Mistral...): prefixes live in key/value-head space.
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _head_dim(config: Any) -> int:
    # Qwen3 and Gemma set head_dim explicitly, and it need not be hidden_size / heads.
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _falcon_kv_heads(config: Any) -> int:
    # Falcon: multi-query (one shared key/value head) unless the "new decoder architecture" uses GQA.
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def _hidden(config: Any) -> int:
    return config.hidden_size


@dataclass(frozen=True)
class Family:
    """How to read one family's shapes from its config. Defaults fit the Llama-style configs."""

    kind: ModelKind
    kv_heads: Callable[[Any], int] = _kv_heads
    head_dim: Callable[[Any], int] = _head_dim
    # Width of the input embeddings; OPT embeds into word_embed_proj_dim and projects up afterwards.
    embed_dim: Callable[[Any], int] = _hidden
    # Config attribute holding a tanh soft-cap applied to the final logits (Gemma 2).
    logit_softcap_attr: str | None = None


FAMILIES: dict[str, Family] = {
    "gpt2": Family("causal", kv_heads=_heads),
    "llama": Family("causal"),
    "mistral": Family("causal"),
    "qwen2": Family("causal"),
    "qwen3": Family("causal"),
    "gemma": Family("causal"),
    "gemma2": Family("causal", logit_softcap_attr="final_logit_softcapping"),
    "phi3": Family("causal"),
    "gpt_neox": Family("causal", kv_heads=_heads),
    "opt": Family("causal", kv_heads=_heads, embed_dim=lambda c: c.word_embed_proj_dim),
    "falcon": Family("causal", kv_heads=_falcon_kv_heads),
    "bloom": Family("causal", kv_heads=_heads),
}


class UnsupportedModelError(ValueError):
    """Raised for a model family softprompt has no table entry for."""


@dataclass(frozen=True)
class ModelShape:
    """Facts about a base model, derived once from its config; never what the user chose."""

    family: str
    kind: ModelKind
    name_or_path: str
    hidden_size: int
    embed_dim: int
    vocab_size: int
    num_attention_heads: int
    layers: tuple[LayerShape, ...]
    # Whether the model's forward takes position_ids (Bloom derives ALiBi positions from the mask instead).
    takes_position_ids: bool
    logit_softcap: float | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def prefix_width(self) -> int:
        """Numbers per virtual token of a prefix over all layers: ``sum_l 2 * kv_heads_l * head_dim_l``."""
        return sum(layer.kv_size for layer in self.layers)

    def fingerprint(self) -> dict[str, Any]:
        """The facts an adapter file records, to refuse loading onto a model of another shape."""
        return {
            "family": self.family,
            "hidden_size": self.hidden_size,
            "embed_dim": self.embed_dim,
            "vocab_size": self.vocab_size,
            "num_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "layers": [[layer.num_kv_heads, layer.head_dim] for layer in self.layers],
        }


def family_of(config: Any) -> tuple[str, Family]:
    """Return ``(model_type, Family)`` for a config, or raise naming the supported families."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise UnsupportedModelError(
            f"softprompt does not support model family {model_type!r} yet. Supported families: {supported}. "
            "A family is one entry in softprompt.families.FAMILIES."
        )
    return model_type, FAMILIES[model_type]


def model_shape(model: nn.Module) -> ModelShape:
    """Derive the :class:`ModelShape` of a ``transformers`` model from its config."""
    config = model.config
    name, family = family_of(config)
    layer = LayerShape(num_kv_heads=family.kv_heads(config), head_dim=family.head_dim(config))
    softcap = getattr(config, family.logit_softcap_attr) if family.logit_softcap_attr else None
    return ModelShape(
        family=name,
        kind=family.kind,
        name_or_path=str(getattr(config, "_name_or_path", "") or ""),
        hidden_size=config.hidden_size,
        embed_dim=family.embed_dim(config),
        vocab_size=config.vocab_size,
        num_attention_heads=config.num_attention_heads,
        layers=tuple(layer for _ in range(config.num_hidden_layers)),
        takes_position_ids="position_ids" in inspect.signature(model.forward).parameters,
        logit_softcap=softcap,
    )
