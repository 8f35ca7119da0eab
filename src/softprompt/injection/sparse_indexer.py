"""Sparse attention with a prefix: every token attends to the prefix, the indexer ranks the real keys.

DeepSeek-V3.2's sparse attention (DSA) and the models built like it (GLM-MoE-DSA, HY-V4, AXK2)
attend, per query, only to the top-k keys an *indexer* ranks; the indexer scores queries against
keys of its own, cached beside the keys/values (``transformers``' ``DynamicIndexedLayer``). A prefix
is keys/values only. Its slots get placeholder indexer keys in the cache
(:mod:`softprompt.injection.caches`) so the indexer's tensors keep the attention's width, and two
hooks on each indexer module make the prefix a prefix:

* before the indexer runs, the prefix columns of its mask are masked, so it ranks the real keys
  only — a prefix never displaces a token the bare model would attend to;
* after it, the prefix slots ``0 .. P - 1`` join every query's selection, so every token attends to
  the prefix (where the row has one: the attention mask's prefix columns still hide padded slots).

``P`` is read from the cache the indexer is called with: a cache layer carrying a prefix says how
long it is (``prefix_length``); any other cache (the bare model's, the recording caches) leaves
the indexer as it was, bit for bit. The indexer modules, and the cache layer each one updates, are
found by a probe (:func:`softprompt.injection.capture.read_indexers`), not by name.

Examples:
    >>> from transformers import DynamicCache
    >>> prefix_length_of(DynamicCache(), 0)     # a cache without a prefix: the indexer runs as it did
    0
"""

from __future__ import annotations

import inspect
import weakref

import torch
from torch import nn
from transformers.cache_utils import Cache

from softprompt.families import UnsupportedModelError

# The indexer argument holding the mask it ranks under ((B, S, P + T), bool or additive float).
MASK_ARGUMENT = "attention_mask"

_HOOKED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def prefix_length_of(cache: Cache | None, layer_idx: int) -> int:
    """How many prefix slots open cache layer ``layer_idx`` of ``cache`` (0 where it has none)."""
    layers = getattr(cache, "layers", ())
    return getattr(layers[layer_idx], "prefix_length", 0) if layer_idx < len(layers) else 0


def rank_real_keys(indexers: dict[nn.Module, int]) -> None:
    """Hook each indexer module (with the cache layer index it updates) so that a prefix in that cache
    layer is kept out of its ranking and joins its selection. Idempotent; a no-op without a prefix."""
    for module, layer_idx in indexers.items():
        if module in _HOOKED:
            continue
        signature = inspect.signature(module.forward)
        if MASK_ARGUMENT not in signature.parameters:
            raise UnsupportedModelError(
                f"its sparse-attention indexer {type(module).__name__} takes no {MASK_ARGUMENT!r}, so a "
                "prefix cannot be kept out of the keys it ranks"
            )
        module.register_forward_pre_hook(_mask_prefix(signature, layer_idx), with_kwargs=True)
        module.register_forward_hook(_select_prefix(signature, layer_idx), with_kwargs=True)
        _HOOKED.add(module)


def _cache_of(bound: inspect.BoundArguments) -> Cache | None:
    return next((value for value in bound.arguments.values() if isinstance(value, Cache)), None)


def _mask_prefix(signature: inspect.Signature, layer_idx: int):
    def hook(module: nn.Module, args: tuple, kwargs: dict):
        bound = signature.bind(*args, **kwargs)
        length = prefix_length_of(_cache_of(bound), layer_idx)
        if not length:
            return None
        mask = bound.arguments[MASK_ARGUMENT]  # (B, S, P + T)
        hidden = torch.zeros_like(mask[..., :length])
        if mask.dtype != torch.bool:  # additive
            hidden = hidden.fill_(torch.finfo(mask.dtype).min)
        bound.arguments[MASK_ARGUMENT] = torch.cat([hidden, mask[..., length:]], dim=-1)
        return bound.args, bound.kwargs

    return hook


def _select_prefix(signature: inspect.Signature, layer_idx: int):
    def hook(module: nn.Module, args: tuple, kwargs: dict, selected):
        length = prefix_length_of(_cache_of(signature.bind(*args, **kwargs)), layer_idx)
        if not length:
            return None
        if not (torch.is_tensor(selected) and selected.dim() == 3 and not selected.is_floating_point()):
            raise UnsupportedModelError(
                f"its sparse-attention indexer {type(module).__name__} returned "
                f"{type(selected).__name__}, not the (batch, queries, k) indices of the keys it selects"
            )
        batch, queries, _ = selected.shape
        prefix = torch.arange(length, dtype=selected.dtype, device=selected.device)
        return torch.cat([prefix.expand(batch, queries, length), selected], dim=-1)  # (B, S, P + k)

    return hook
