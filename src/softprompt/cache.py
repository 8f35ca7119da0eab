"""All construction of ``transformers`` key/value caches lives here.

``transformers`` changes its cache classes often; keeping every cache softprompt builds in this one
module means a new release is mended in one place. Three caches are needed:

* :func:`capture_cache` records the per-layer keys/values of one forward pass (to turn an
  input-embedding prompt into a prefix, or to initialise a prefix from a text);
* :func:`prefix_cache` feeds a fixed prefix to one forward pass (training, scoring);
* :func:`generation_cache` is an ordinary growing cache that starts with the prefix (``generate``).

The first two never change what they return when called twice with the same input, so layers may
keep them under gradient checkpointing, whose backward pass replays each layer's forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

# Per layer: (keys, values), each (B, kv_heads, P, head_dim).
LayerStates = Sequence[tuple[torch.Tensor, torch.Tensor]]


class _PrefixLayer(DynamicLayer):
    """A layer cache that prepends a fixed prefix and stores nothing (a pure function of its input)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # (B, H, P, D) ++ (B, H, T, D) -> (B, H, P + T, D)
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class _CaptureLayer(DynamicLayer):
    """A layer cache that records the keys/values it is given and returns them unchanged."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys, self.values = key_states, value_states
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True
        return key_states, value_states


def capture_cache(num_layers: int) -> Cache:
    """An empty cache whose layers record what one forward pass computes."""
    return Cache(layers=[_CaptureLayer() for _ in range(num_layers)])


def captured_states(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The per-layer ``(keys, values)`` a :func:`capture_cache` recorded, each (B, H, T, D)."""
    missing = [i for i, layer in enumerate(cache.layers) if not layer.is_initialized]
    if missing:
        raise RuntimeError(
            f"layers {missing} wrote nothing to the cache; this model shares or skips their keys"
        )
    return [(layer.keys, layer.values) for layer in cache.layers]


def prefix_cache(states: LayerStates) -> Cache:
    """A read-only cache that prepends ``states`` in every layer of one forward pass."""
    return Cache(layers=[_PrefixLayer(keys, values) for keys, values in states])


def generation_cache(config, states: LayerStates) -> DynamicCache:
    """An ordinary ``DynamicCache`` (sliding-window layers where the config has them) holding the prefix."""
    cache = DynamicCache(config=config)
    for layer_idx, (keys, values) in enumerate(states):
        cache.update(keys, values, layer_idx)
    return cache


def allow_checkpointing_with_cache(model: nn.Module) -> None:
    """Let a checkpointed model keep softprompt's caches, which are safe to replay (see module docstring).

    ``transformers`` drops ``past_key_values`` under gradient checkpointing, in each checkpointed layer
    and in some backbones' own loops (GPT-2), because a growing cache would be appended to twice.
    Without this, the prefix would silently vanish. The layers still checkpoint; backbone-level
    switches only ever decided about caches.
    """
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True
        elif getattr(module, "gradient_checkpointing", False):
            module.gradient_checkpointing = False
