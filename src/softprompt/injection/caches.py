"""Every ``transformers`` key/value cache softprompt builds, in one place.

``transformers`` changes its cache classes often; keeping every cache softprompt builds in this one
module means a new release is mended in one place. Two are needed for each model shape:

* :func:`prefix_cache` feeds a fixed prefix to one forward pass (training, scoring);
* :func:`generation_cache` is an ordinary growing cache that starts with the prefix (``generate``).

Encoder-decoders get the same two as an ``EncoderDecoderCache`` (decoder self-attention and
cross-attention): :func:`encoder_decoder_prefix_cache`, :func:`encoder_decoder_generation_cache`.
The caches that record what a forward pass computes are in :mod:`softprompt.injection.capture`.

The forward-pass caches never change what they return when called twice with the same input, so
layers may keep them under gradient checkpointing, whose backward pass replays each layer's forward:
their attention layers store nothing, and their recurrent layers (hybrid models) start from a fresh
state in every call, the replay included.

Examples:
    >>> keys = values = torch.zeros(1, 2, 3, 4)                   # (B, kv_heads, P, head_dim)
    >>> cache = prefix_cache([(keys, values)])
    >>> cache.layers[0].update(torch.ones(1, 2, 5, 4), torch.ones(1, 2, 5, 4))[0].shape
    torch.Size([1, 2, 8, 4])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import (
    Cache,
    CacheLayerMixin,
    DynamicIndexedLayer,
    DynamicLayer,
    LinearAttentionAndFullAttentionLayer,
    LinearAttentionCacheLayerMixin,
)

# Per layer: (keys, values), each (B, kv_heads, P, head_dim).
LayerStates = Sequence[tuple[torch.Tensor, torch.Tensor]]


def _hold(layer: DynamicLayer, keys: torch.Tensor, values: torch.Tensor) -> None:
    layer.keys, layer.values = keys, values
    layer.dtype, layer.device = keys.dtype, keys.device
    layer.is_initialized = True


def _prepend(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
    # (B, H, P, D) ++ (B, H, T, D) -> (B, H, P + T, D). A model split over devices (device_map)
    # runs each layer on its own device: the prefix joins the layer where its keys are.
    keys, values = self.keys.to(key_states.device), self.values.to(value_states.device)
    return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


class _PrefixLayer(DynamicLayer):
    """A layer cache that prepends a fixed prefix and stores nothing (a pure function of its input)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        _hold(self, keys, values)

    update = _prepend


class _IndexedPrefixLayer(DynamicIndexedLayer):
    """A sparse-attention layer's cache (DSA): a fixed key/value prefix, as in :class:`_PrefixLayer`,
    and placeholder indexer keys for its slots, which the indexer never ranks
    (:mod:`softprompt.injection.sparse_indexer`). Stores nothing."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        _hold(self, keys, values)
        self.prefix_length = keys.shape[-2]

    update = _prepend

    def update_indexer(self, indexer_key_states: torch.Tensor) -> torch.Tensor:
        # (B, T, D) -> (B, P + T, D): placeholders keep the indexer's scores as wide as the keys.
        return _with_placeholder_keys(indexer_key_states, self.prefix_length)


def _with_placeholder_keys(indexer_keys: torch.Tensor, length: int) -> torch.Tensor:
    batch, _, dim = indexer_keys.shape
    return torch.cat([indexer_keys.new_zeros(batch, length, dim), indexer_keys], dim=1)


def _prefix_then_indexer_keys(layer: DynamicIndexedLayer, length: int) -> None:
    """A growing sparse-attention layer that holds a prefix of ``length`` slots: its first indexer keys
    get placeholders for them, and the layer says how long its prefix is."""
    update_indexer = layer.update_indexer

    def update(indexer_key_states: torch.Tensor) -> torch.Tensor:
        if not layer.is_indexer_initialized:
            indexer_key_states = _with_placeholder_keys(indexer_key_states, length)
        return update_indexer(indexer_key_states)

    layer.update_indexer = update
    layer.prefix_length = length


class _HybridPrefixLayer(LinearAttentionAndFullAttentionLayer):
    """A layer running linear attention beside attention (Falcon-H1, Zamba2): its recurrent state as the
    model keeps it (fresh in every call, see :func:`_fresh_every_call`), and a fixed key/value prefix
    that, as in :class:`_PrefixLayer`, stores nothing."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, number_of_states: int) -> None:
        super().__init__(number_of_states=number_of_states)
        _hold(self, keys, values)

    update = _prepend


def _fresh_every_call(layer: LinearAttentionCacheLayerMixin) -> LinearAttentionCacheLayerMixin:
    """``layer`` (a recurrent layer's cache) made to start every call from no previous state.

    A recurrent layer reads its cached state only once it has one (``has_previous_state``), and a
    call stores its final state there. Gradient checkpointing replays each layer's forward: the replay
    would read the state the first call stored — a decoding step, not the prefill — and compute
    something else (``CheckpointError``). Forgetting that a state was stored keeps every call a
    prefill of its own input, as the first call was.
    """
    update_conv_state = layer.update_conv_state

    def forgetting_update(conv_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        full = update_conv_state(conv_states, state_idx, **kwargs)
        layer.has_previous_state[state_idx] = False
        return full

    layer.update_conv_state = forgetting_update
    return layer


def _holds_keys(layer) -> bool:
    """Whether a ``DynamicCache(config=...)`` layer takes keys/values (not a recurrent-only or shared layer)."""
    return isinstance(layer, CacheLayerMixin)


def _with_prefix(layer, keys: torch.Tensor, values: torch.Tensor):
    if isinstance(layer, LinearAttentionCacheLayerMixin):
        prefixed = _fresh_every_call(_HybridPrefixLayer(keys, values, layer.number_of_states))
    elif isinstance(layer, DynamicIndexedLayer):
        prefixed = _IndexedPrefixLayer(keys, values)
    else:
        prefixed = _PrefixLayer(keys, values)
    own = _methods_a_prefix_lacks(type(layer), type(prefixed))
    if own:
        raise ValueError(
            f"the model's cache layer {type(layer).__name__} keeps a state of its own beside keys/values "
            f"(its methods {own}), which a prefix layer cannot stand in for"
        )
    return prefixed


@functools.cache
def _methods_a_prefix_lacks(layer_class: type, prefix_class: type) -> list[str]:
    """The public methods a model's modeling file gives its cache layer class beyond ``cache_utils``'
    that ``prefix_class`` has not (once per pair of classes: a prefix cache is built every forward)."""
    own = {
        name
        for cls in layer_class.__mro__
        if cls.__module__ != Cache.__module__ and cls is not object
        for name, value in vars(cls).items()
        if not name.startswith("_") and callable(value)
    }
    return sorted(name for name in own if not hasattr(prefix_class, name))


def prefix_cache(states: LayerStates, config=None, layer_indices: Sequence[int] | None = None) -> Cache:
    """A read-only cache that prepends ``states`` in the attention layers of one forward pass.

    Without ``config`` the cache has one prefix layer per state. With the model's ``config`` and the
    cache index of each state (``ModelShape.layer_indices``) its other layers are the model's own:
    recurrent layers (hybrid models) keep their state there as the model expects, starting afresh in
    every call; layers that read another layer's keys/values (Gemma 3n) never ask.
    """
    if config is None:
        return Cache(layers=[_PrefixLayer(keys, values) for keys, values in states])
    layers = [
        _fresh_every_call(layer) if isinstance(layer, LinearAttentionCacheLayerMixin) else layer
        for layer in DynamicCache(config=config).layers
    ]
    indices = range(len(states)) if layer_indices is None else layer_indices
    for index, (keys, values) in zip(indices, states, strict=True):
        if not _holds_keys(layers[index]):
            raise ValueError(
                f"cache layer {index} of this model holds no keys/values; it cannot take a prefix"
            )
        layers[index] = _with_prefix(layers[index], keys, values)
    return Cache(layers=layers)


def generation_cache(config, states: LayerStates, layer_indices: Sequence[int] | None = None) -> DynamicCache:
    """An ordinary ``DynamicCache`` (sliding-window and recurrent layers where the config has them)
    holding the prefix in the layers ``layer_indices`` (default: the first ``len(states)``).

    A prefix layer follows the device of the keys it is first given: a model split over devices
    (``device_map``) runs each layer where its weights are, and the prefix joins it there.
    """
    cache = DynamicCache(config=config)
    indices = range(len(states)) if layer_indices is None else layer_indices
    for layer_idx, (keys, values) in zip(indices, states, strict=True):
        cache.update(keys, values, layer_idx)
        layer = cache.layers[layer_idx]
        if isinstance(layer, DynamicIndexedLayer):
            _prefix_then_indexer_keys(layer, keys.shape[-2])
        # The layer's own update (full, sliding window...), after moving what it holds to the new keys.
        layer.update = functools.partial(_update_on_keys_device, layer, layer.update)
    return cache


def _update_on_keys_device(
    layer, update, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
):
    if layer.is_initialized and layer.keys.device != key_states.device:
        layer.keys, layer.values = layer.keys.to(key_states.device), layer.values.to(value_states.device)
        layer.device = key_states.device
    return update(key_states, value_states, *args, **kwargs)


# ------------------------------------------------------------------------------- encoder-decoders
class _PassLayer(DynamicLayer):
    """A layer cache for a site without prefix: returns what it is given and stores nothing."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return key_states, value_states


class _NeverUpdated(dict):
    """``EncoderDecoderCache.is_updated`` that always answers "not yet".

    Cross-attention then computes the encoder's keys/values on every call and passes them through
    its prefix layer, so a replayed layer (gradient checkpointing) sees the same as the first call.
    """

    def __setitem__(self, key, value) -> None:
        pass

    def __getitem__(self, key) -> bool:
        return False

    def get(self, key, default=None) -> bool:
        return False


def _read_only(states: LayerStates | None, num_layers: int) -> Cache:
    if states is None:
        return Cache(layers=[_PassLayer() for _ in range(num_layers)])
    return prefix_cache(states)


def encoder_decoder_prefix_cache(
    self_states: LayerStates | None, cross_states: LayerStates | None, num_layers: int
) -> EncoderDecoderCache:
    """A read-only cache prepending ``self_states`` to the decoder's self-attention and ``cross_states``
    to its cross-attention (before the encoder's keys/values) in every layer of one forward pass.

    ``None`` leaves that site without a prefix. The decoder's positions start after the self-attention
    prefix, as they would after ``P`` real tokens.
    """
    cache = EncoderDecoderCache(_read_only(self_states, num_layers), _read_only(cross_states, num_layers))
    cache.is_updated = _NeverUpdated()
    return cache


def _fill(cache: Cache, states: LayerStates | None) -> Cache:
    for layer_idx, (keys, values) in enumerate(states or ()):
        cache.update(keys, values, layer_idx)
    return cache


class _PrefixedEncoderDecoderCache(EncoderDecoderCache):
    """An ``EncoderDecoderCache`` whose cross-attention prefix survives a model swapping in a cache of its
    own: T5Gemma and T5Gemma2 replace the cross-attention cache before generating (a full-attention one
    for the sliding-window one ``generate`` builds from the config), which would drop the prefix while
    the mask still has its columns. An empty replacement gets the prefix first, as the original had it.
    """

    def __init__(self, self_states: LayerStates | None, cross_states: LayerStates | None) -> None:
        self._cross_states = cross_states
        super().__init__(_fill(DynamicCache(), self_states), _fill(DynamicCache(), cross_states))

    @property
    def cross_attention_cache(self) -> Cache:
        return self._cross_attention_cache

    @cross_attention_cache.setter
    def cross_attention_cache(self, cache: Cache) -> None:
        if cache.get_seq_length() == 0:
            _fill(cache, self._cross_states)
        self._cross_attention_cache = cache


def encoder_decoder_generation_cache(
    self_states: LayerStates | None, cross_states: LayerStates | None
) -> EncoderDecoderCache:
    """An ordinary growing ``EncoderDecoderCache`` for ``generate`` that starts with the prefixes.

    Its cross-attention layers hold only the prefix at first and are marked not updated, so the first
    decoding step appends the encoder's keys/values after the prefix and later steps reuse both; a
    cross-attention cache the model puts in its place before generating starts with the prefix too.
    """
    cache = _PrefixedEncoderDecoderCache(self_states, cross_states)
    for layer_idx in cache.is_updated:
        cache.is_updated[layer_idx] = False
    return cache
