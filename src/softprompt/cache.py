"""All construction of ``transformers`` key/value caches lives here, and the one cache-less route.

``transformers`` changes its cache classes often; keeping every cache softprompt builds in this one
module means a new release is mended in one place. Three caches are needed:

* :func:`capture_cache` records the per-layer keys/values of one forward pass (to turn an
  input-embedding prompt into a prefix, or to initialise a prefix from a text);
* :func:`prefix_cache` feeds a fixed prefix to one forward pass (training, scoring);
* :func:`generation_cache` is an ordinary growing cache that starts with the prefix (``generate``).

Encoder-decoders get the same three as an ``EncoderDecoderCache`` (decoder self-attention and
cross-attention, see :func:`encoder_decoder_prefix_cache`). Encoder self-attention has no cache
path in ``transformers`` (BART's, T5's, DistilBERT's encoders drop or refuse ``past_key_values``),
so its prefixes take the other route defined here: an :class:`AttentionPrefix` passed as a keyword
argument, which ``transformers`` hands down to every attention function, where
:data:`PREFIX_ATTENTION` (sdpa plus prefixes) prepends it. :func:`site_states` captures what
tokens leave at every site, for every kind of model.

The same attention function keeps grouped key/value heads in masked attention on CPU for the calls
that ask for it (``softprompt_grouped=True``, see :func:`use_grouped_attention`): a prefix makes every
mask explicit, and ``transformers``' sdpa then copies keys/values to every query head.

All of these never change what they return when called twice with the same input, so layers may
keep them under gradient checkpointing, whose backward pass replays each layer's forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, DynamicCache, EncoderDecoderCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_layers import GradientCheckpointingLayer

from softprompt.compat import cache_kwargs
from softprompt.families import ModelShape, Site

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
        # (B, H, P, D) ++ (B, H, T, D) -> (B, H, P + T, D). A model split over devices (device_map)
        # runs each layer on its own device: the prefix joins the layer where its keys are.
        keys, values = self.keys.to(key_states.device), self.values.to(value_states.device)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


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
        elif getattr(module, "gradient_checkpointing", False) and _holds_checkpointed_layers(module):
            module.gradient_checkpointing = False


def _holds_checkpointed_layers(module: nn.Module) -> bool:
    # A backbone loop (GPT-2's) holds the layers; a flag inside a layer (T5's attention marks its zero
    # position bias as requiring grad under checkpointing) is not about caches and stays.
    return any(isinstance(m, GradientCheckpointingLayer) for m in module.modules())


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


def _filled_cache(states: LayerStates | None) -> DynamicCache:
    cache = DynamicCache()
    for layer_idx, (keys, values) in enumerate(states or ()):
        cache.update(keys, values, layer_idx)
    return cache


def encoder_decoder_generation_cache(
    self_states: LayerStates | None, cross_states: LayerStates | None
) -> EncoderDecoderCache:
    """An ordinary growing ``EncoderDecoderCache`` for ``generate`` that starts with the prefixes.

    Its cross-attention layers hold only the prefix at first and are marked not updated, so the first
    decoding step appends the encoder's keys/values after the prefix and later steps reuse both.
    """
    cache = EncoderDecoderCache(_filled_cache(self_states), _filled_cache(cross_states))
    for layer_idx in cache.is_updated:
        cache.is_updated[layer_idx] = False
    return cache


# ----------------------------------------------------------------- encoder self-attention (no cache)
PREFIX_ATTENTION = "softprompt_sdpa"


@dataclass
class AttentionPrefix:
    """Key/value prefixes for attention modules without a cache path, for one forward pass.

    Passed to a model as the keyword argument ``softprompt_prefix``; ``layers`` maps each attention
    module to its (keys, values), each (B, H, P, D); ``mask``: (B, P), 0 for padding slots.
    """

    layers: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor


@dataclass
class AttentionCapture:
    """Records ``(module, keys, values)`` of every attention call it is passed to (``softprompt_capture``)."""

    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _prefix_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    softprompt_prefix: AttentionPrefix | None = None,
    softprompt_capture: AttentionCapture | None = None,
    softprompt_grouped: bool = False,
    **kwargs,
):
    """sdpa attention that prepends ``softprompt_prefix``'s keys/values for the modules it names and,
    with ``softprompt_grouped``, keeps grouped key/value heads where it can (:func:`_grouped_sdpa`)."""
    if softprompt_capture is not None:
        softprompt_capture.calls.append((module, key, value))
    if softprompt_prefix is not None and module in softprompt_prefix.layers:
        prefix_keys, prefix_values = softprompt_prefix.layers[module]
        key = torch.cat([prefix_keys.to(key.dtype), key], dim=-2)  # (B, H, P + T, D)
        value = torch.cat([prefix_values.to(value.dtype), value], dim=-2)
        attention_mask = _mask_with_prefix(attention_mask, softprompt_prefix.mask, query, key)
        if kwargs.get("position_bias") is not None:
            # T5's relative-position bias (.., Q, T): prefix slots carry no position, so no bias.
            kwargs["position_bias"] = F.pad(kwargs["position_bias"], (prefix_keys.shape[-2], 0))
    if softprompt_grouped and _can_keep_grouped_heads(query, key, attention_mask, kwargs):
        return _grouped_sdpa(query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _can_keep_grouped_heads(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, kwargs: dict
) -> bool:
    """Whether :func:`_grouped_sdpa` replaces ``sdpa_attention_forward`` for this call.

    Only where the latter would ``repeat_kv``: grouped heads, an explicit mask, more than one query.
    (Without a mask it already passes ``enable_gqa``; for one query it packs the heads.) It repeats
    because CUDA's kernels cannot take a mask and grouped heads together; torch's CPU kernels can.
    Biases and soft-caps stay with ``sdpa_attention_forward``, which handles or refuses them.
    """
    return (
        query.device.type == "cpu"
        and mask is not None
        and query.shape[1] != key.shape[1]
        and query.shape[2] > 1
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
    )


def _grouped_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Masked sdpa on grouped heads: query (B, H_q, Q, D), keys/values (B, H_kv, K, D), H_q = g * H_kv.

    Each key/value head serves its ``g`` query heads inside the kernel, so no (B, H_q, K, D) copies of
    keys and values are made and saved for backward in every layer (``repeat_kv``). Returns the
    attention output as ``sdpa_attention_forward`` does: (B, Q, H_q, D), and no weights.
    """
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def _mask_with_prefix(
    mask: torch.Tensor | None, prefix_mask: torch.Tensor, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor | None:
    """The 4-D mask (B, 1, Q, T) extended to the prefix's keys: (B, 1, Q, P + T)."""
    batch, queries, prefix = query.shape[0], query.shape[-2], prefix_mask.shape[-1]
    keep = prefix_mask.bool()[:, None, None, :].expand(batch, 1, queries, prefix)
    if mask is None:  # sdpa skipped an all-ones mask
        if bool(keep.all()):
            return None
        mask = torch.ones(batch, 1, queries, key.shape[-2] - prefix, dtype=torch.bool, device=keep.device)
    mask = mask.expand(batch, 1, queries, -1)
    if mask.dtype != torch.bool:  # an additive float mask
        keep = torch.zeros_like(keep, dtype=mask.dtype).masked_fill(~keep, torch.finfo(mask.dtype).min)
    return torch.cat([keep, mask], dim=-1)


AttentionInterface.register(PREFIX_ATTENTION, _prefix_attention)
AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)


def use_prefix_attention(model: nn.Module) -> None:
    """Switch ``model`` (and its sub-models) to :data:`PREFIX_ATTENTION`: sdpa that also takes
    per-call prefixes. Without a prefix it computes exactly what sdpa computes."""
    if model.config._attn_implementation != PREFIX_ATTENTION:
        model.set_attn_implementation(PREFIX_ATTENTION)


def use_grouped_attention(model: nn.Module, shape: ModelShape) -> bool:
    """Switch a causal LM with grouped key/value heads and sdpa attention to :data:`PREFIX_ATTENTION`.

    Returns whether it did; softprompt's calls then pass ``softprompt_grouped=True`` to keep the
    heads grouped in masked attention. Calls that do not pass it — the model used on its own, or by
    another library — run ``sdpa_attention_forward`` exactly as before. Other attention
    implementations (eager, flash...) were the user's choice and stay.
    """
    grouped = any(layer.num_kv_heads < shape.num_attention_heads for layer in shape.layers)
    if not grouped or model.config._attn_implementation not in ("sdpa", PREFIX_ATTENTION):
        return False
    # Models whose attention does not call the AttentionInterface (Falcon) cannot switch; asking
    # would only log a warning. This is the check ``set_attn_implementation`` itself makes.
    if not model._can_set_attn_implementation():
        return False
    use_prefix_attention(model)
    return model.config._attn_implementation == PREFIX_ATTENTION


def attention_modules(stack: nn.Module) -> list[nn.Module]:
    """The attention modules ``stack`` (an encoder) calls, in call order: one per layer."""
    capture = AttentionCapture()
    device = next(stack.parameters()).device
    with torch.no_grad():
        stack(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), softprompt_capture=capture)
    return [module for module, _, _ in capture.calls]


# ------------------------------------------------------------------------------- capturing states
def _causal_states(model: nn.Module, shape: ModelShape, ids: torch.Tensor) -> dict[Site, list]:
    cache = capture_cache(model.config.num_hidden_layers)
    model.base_model(input_ids=ids, use_cache=True, **cache_kwargs(model.base_model, cache))
    return {"self": captured_states(cache)}


def _encoder_states(model: nn.Module, shape: ModelShape, ids: torch.Tensor) -> dict[Site, list]:
    use_prefix_attention(model)
    capture = AttentionCapture()
    model.base_model(input_ids=ids, softprompt_capture=capture)
    return {"encoder": [(keys, values) for _, keys, values in capture.calls]}


def _seq2seq_states(model: nn.Module, shape: ModelShape, ids: torch.Tensor) -> dict[Site, list]:
    use_prefix_attention(model)
    capture = AttentionCapture()
    encoded = model.get_encoder()(input_ids=ids, softprompt_capture=capture).last_hidden_state
    count = len(shape.decoder_layers)
    cache = EncoderDecoderCache(capture_cache(count), capture_cache(count))
    decoder = model.get_decoder()
    decoder(input_ids=ids, encoder_hidden_states=encoded, use_cache=True, **cache_kwargs(decoder, cache))
    return {
        "encoder": [(keys, values) for _, keys, values in capture.calls],
        "decoder": captured_states(cache.self_attention_cache),
        "cross": captured_states(cache.cross_attention_cache),
    }


_SITE_STATES: dict[str, Callable[[nn.Module, ModelShape, torch.Tensor], dict[Site, list]]] = {
    "causal": _causal_states,
    "encoder": _encoder_states,
    "seq2seq": _seq2seq_states,
}


def site_states(model: nn.Module, shape: ModelShape, ids: torch.Tensor) -> dict[Site, list]:
    """The keys/values the frozen ``model`` computes for ``ids`` (P,) at every attention site of its kind.

    Returns ``{site: [(keys, values) per layer]}``, each (H, P, D) in fp32, computed in eval mode
    (the model's own numbers, not a dropout sample of them). The decoder reads ``ids`` too.
    """
    device = model.get_input_embeddings().weight.device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            states = _SITE_STATES[shape.kind](model, shape, ids[None].to(device))
    finally:
        model.train(was_training)
    return {site: [(k[0].float(), v[0].float()) for k, v in layers] for site, layers in states.items()}
