"""softprompt's attention function: sdpa that takes per-call key/value prefixes, and keeps grouped heads.

Encoder self-attention has no cache path in ``transformers`` (BART's, T5's, DistilBERT's encoders
drop or refuse a cache), so its prefixes take this route instead: an :class:`AttentionPrefix` passed
as the keyword argument ``softprompt_prefix``, which ``transformers`` hands down to every attention
function, where :data:`PREFIX_ATTENTION` prepends it.

The same function keeps grouped key/value heads in masked attention on CPU for the calls that ask
for it (``softprompt_grouped=True``, see :func:`use_grouped_attention`): a prefix makes every mask
explicit, and ``transformers``' sdpa then copies keys/values to every query head.

The function is registered with ``transformers`` by an explicit :func:`install` (which the two
``use_*`` switches call), never as a side effect of import, under two names: :data:`PREFIX_ATTENTION`
wraps ``transformers``' sdpa, :data:`EAGER_PREFIX_ATTENTION` wraps the model's own eager function
(the ``eager_attention_forward`` of its modeling file). A model is switched to the one that wraps
what it ran, so called without softprompt's keyword arguments a switched model computes what it
computed before, bit for bit, and with a prefix its own attention (soft-capping, sinks, biases)
reads the longer keys. Neither name says "sdpa": ``transformers`` would refuse it for models that
do not declare sdpa support (Pegasus-X, Switch Transformers, MarkupLM...).

Examples:
    >>> install()
    >>> PREFIX_ATTENTION in ALL_ATTENTION_FUNCTIONS
    True
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from softprompt import compat
from softprompt.families import ModelShape

PREFIX_ATTENTION = "softprompt_attention"
EAGER_PREFIX_ATTENTION = "softprompt_eager"
PREFIX_ATTENTIONS = (PREFIX_ATTENTION, EAGER_PREFIX_ATTENTION)


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
    inner: Callable[[nn.Module], Callable],
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
    """``inner(module)``'s attention that prepends ``softprompt_prefix``'s keys/values for the modules it
    names and, with ``softprompt_grouped`` on sdpa, keeps grouped key/value heads where it can
    (:func:`_grouped_sdpa`)."""
    attend = inner(module)
    indices = kwargs.pop("indices", None)
    if indices is not None:  # a sparse attention's selected keys, which only the eager and sdpa paths fold
        attention_mask = _only_selected_keys(attention_mask, indices, query, key)
    if softprompt_capture is not None:
        softprompt_capture.calls.append((module, key, value))
    if softprompt_prefix is not None and module in softprompt_prefix.layers:
        prefix_keys, prefix_values = softprompt_prefix.layers[module]
        key = torch.cat([prefix_keys.to(key.dtype), key], dim=-2)  # (B, H, P + T, D)
        value = torch.cat([prefix_values.to(value.dtype), value], dim=-2)
        additive = attend is not sdpa_attention_forward  # eager functions add their mask to the scores
        if attention_mask is None and not additive and _is_causal_call(module, query, kwargs):
            # sdpa skipped an all-ones causal mask and would align its triangle top-left over P + T
            # keys, hiding the last tokens from the prefix-less rows: the triangle is made explicit.
            attention_mask = _causal_mask(query, key.shape[-2] - prefix_keys.shape[-2])
        attention_mask = _mask_with_prefix(attention_mask, softprompt_prefix.mask, query, key, additive)
        if kwargs.get("position_bias") is not None:
            # T5's relative-position bias (.., Q, T): prefix slots carry no position, so no bias.
            kwargs["position_bias"] = F.pad(kwargs["position_bias"], (prefix_keys.shape[-2], 0))
    if (
        softprompt_grouped
        and attend is sdpa_attention_forward
        and _can_keep_grouped_heads(query, key, attention_mask, kwargs)
    ):
        return _grouped_sdpa(query, key, value, attention_mask, **kwargs)
    return attend(module, query, key, value, attention_mask, **kwargs)


def _only_selected_keys(
    mask: torch.Tensor | None, indices: torch.Tensor, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor:
    """``mask`` (B, 1, Q, T) hiding every key but the ``indices`` (B, Q, k) a sparse-attention indexer
    selected (DSA), as the model's own eager and sdpa paths fold them."""
    batch, _, queries, _ = query.shape
    left_out = torch.ones(batch, queries, key.shape[-2], dtype=torch.bool, device=query.device)
    left_out = left_out.scatter(-1, indices.long(), False)[:, None]  # (B, 1, Q, T)
    if mask is None:
        return ~left_out
    if mask.dtype == torch.bool:
        return mask & ~left_out
    return mask.masked_fill(left_out, torch.finfo(mask.dtype).min)


def _is_causal_call(module: nn.Module, query: torch.Tensor, kwargs: dict) -> bool:
    """Whether sdpa would run this call causally (as ``sdpa_attention_forward`` decides, for > 1 query)."""
    causal = kwargs.get("is_causal")
    return query.shape[-2] > 1 and bool(getattr(module, "is_causal", False) if causal is None else causal)


def _causal_mask(query: torch.Tensor, keys: int) -> torch.Tensor:
    """The boolean causal mask (B, 1, Q, T) over a layer's own ``keys``, aligned bottom-right."""
    queries = query.shape[-2]
    visible = torch.ones(queries, keys, dtype=torch.bool, device=query.device).tril(keys - queries)
    return visible.expand(query.shape[0], 1, queries, keys)


def _sdpa(module: nn.Module) -> Callable:
    return sdpa_attention_forward


@cache
def _eager_of(module_class: type[nn.Module]) -> Callable:
    """The eager attention function of ``module_class``'s modeling file (every ``transformers`` model
    file defines or imports one ``eager_attention_forward``); sdpa where a file has none."""
    return getattr(sys.modules[module_class.__module__], "eager_attention_forward", sdpa_attention_forward)


def _eager(module: nn.Module) -> Callable:
    return _eager_of(type(module))


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
    mask: torch.Tensor | None,
    prefix_mask: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    additive: bool = False,
) -> torch.Tensor | None:
    """The 4-D mask (B, 1, Q, T) extended to the prefix's keys: (B, 1, Q, P + T).

    A missing mask (sdpa and eager skip an all-ones one) stays missing if every prefix slot is
    kept; otherwise it is made boolean, or ``additive`` (0 / dtype min) for an eager function.
    """
    batch, queries, prefix = query.shape[0], query.shape[-2], prefix_mask.shape[-1]
    keep = prefix_mask.bool()[:, None, None, :].expand(batch, 1, queries, prefix)
    if mask is None:
        if bool(keep.all()):
            return None
        size = (batch, 1, queries, key.shape[-2] - prefix)
        mask = (
            torch.zeros(size, dtype=query.dtype, device=keep.device)
            if additive
            else torch.ones(size, dtype=torch.bool, device=keep.device)
        )
    mask = mask.expand(batch, 1, queries, -1)
    if mask.dtype != torch.bool:  # an additive float mask
        keep = torch.zeros_like(keep, dtype=mask.dtype).masked_fill(~keep, torch.finfo(mask.dtype).min)
    return torch.cat([keep, mask], dim=-1)


def install() -> None:
    """Register :data:`PREFIX_ATTENTION` and :data:`EAGER_PREFIX_ATTENTION` with ``transformers``
    (idempotent; :func:`use_prefix_attention` and :func:`use_grouped_attention` call it)."""
    for name, inner, masks in (
        (PREFIX_ATTENTION, _sdpa, sdpa_mask),
        (EAGER_PREFIX_ATTENTION, _eager, eager_mask),
    ):
        if name not in ALL_ATTENTION_FUNCTIONS:
            AttentionInterface.register(name, partial(_prefix_attention, inner))
            AttentionMaskInterface.register(name, masks)


def prefix_attention_for(implementation: str | None) -> str:
    """The softprompt attention that wraps ``implementation``: the eager one for ``"eager"``, else sdpa's."""
    if implementation in PREFIX_ATTENTIONS:
        return implementation
    return EAGER_PREFIX_ATTENTION if implementation == "eager" else PREFIX_ATTENTION


def use_prefix_attention(model: nn.Module) -> None:
    """Switch ``model`` and each of its towers to softprompt's attention around the one it runs
    (:func:`prefix_attention_for`), which also takes per-call prefixes. Without a prefix each computes
    exactly what it computed before (Gemma 4's eager audio encoder stays eager underneath)."""
    install()
    current = compat.attention_implementation(model)
    if current in PREFIX_ATTENTIONS:
        return
    config = model.config
    towers = {
        key: prefix_attention_for(getattr(config, key)._attn_implementation)
        for key in getattr(config, "sub_configs", {})
        if getattr(config, key, None)
    }
    name = prefix_attention_for(current)
    model.set_attn_implementation({"": name, **towers} if towers else name)


def use_grouped_attention(model: nn.Module, shape: ModelShape) -> bool:
    """Switch a causal LM with grouped key/value heads and sdpa attention to :data:`PREFIX_ATTENTION`.

    Returns whether it did; softprompt's calls then pass ``softprompt_grouped=True`` to keep the
    heads grouped in masked attention. Calls that do not pass it — the model used on its own, or by
    another library — run ``sdpa_attention_forward`` exactly as before. Other attention
    implementations (eager, flash...) were the user's choice and stay.
    """
    grouped = any(layer.num_kv_heads < shape.num_attention_heads for layer in shape.layers)
    if not grouped or compat.attention_implementation(model) not in ("sdpa", PREFIX_ATTENTION):
        return False
    if not compat.can_switch_attention(model):
        return False
    use_prefix_attention(model)
    return compat.attention_implementation(model) == PREFIX_ATTENTION
