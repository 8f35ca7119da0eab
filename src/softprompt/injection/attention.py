"""softprompt's attention function: sdpa that takes per-call key/value prefixes, and keeps grouped heads.

Encoder self-attention has no cache path in ``transformers`` (BART's, T5's, DistilBERT's encoders
drop or refuse a cache), so its prefixes take this route instead: an :class:`AttentionPrefix` passed
as the keyword argument ``softprompt_prefix``, which ``transformers`` hands down to every attention
function, where :data:`PREFIX_ATTENTION` prepends it.

The same function keeps grouped key/value heads in masked attention on CPU for the calls that ask
for it (``softprompt_grouped=True``, see :func:`use_grouped_attention`): a prefix makes every mask
explicit, and ``transformers``' sdpa then copies keys/values to every query head.

The function is registered with ``transformers`` by an explicit :func:`install` (which the two
``use_*`` switches call), never as a side effect of import. Called without softprompt's keyword
arguments it is ``transformers``' own sdpa, so a switched model computes what it computed before.

Examples:
    >>> install()
    >>> PREFIX_ATTENTION in ALL_ATTENTION_FUNCTIONS
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from softprompt import compat
from softprompt.families import ModelShape

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


def install() -> None:
    """Register :data:`PREFIX_ATTENTION` with ``transformers`` (idempotent; :func:`use_prefix_attention`
    and :func:`use_grouped_attention` call it before switching a model)."""
    if PREFIX_ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(PREFIX_ATTENTION, _prefix_attention)
        AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)


def use_prefix_attention(model: nn.Module) -> None:
    """Switch ``model`` (and its sub-models) to :data:`PREFIX_ATTENTION`: sdpa that also takes
    per-call prefixes. Without a prefix it computes exactly what sdpa computes."""
    install()
    if compat.attention_implementation(model) == PREFIX_ATTENTION:
        return
    config = model.config
    towers = {
        key: getattr(config, key) for key in getattr(config, "sub_configs", {}) if getattr(config, key, None)
    }
    before = {key: sub._attn_implementation for key, sub in towers.items()}
    try:
        model.set_attn_implementation(PREFIX_ATTENTION)
    except ValueError:
        # A tower that takes no sdpa (Gemma 4's audio encoder) refuses the whole switch: the prompt
        # goes to the text model only, and every other tower keeps the attention it had.
        text = config.get_text_config()
        if not any(sub is text for sub in towers.values()):
            raise
        chosen = {key: PREFIX_ATTENTION if sub is text else before[key] for key, sub in towers.items()}
        model.set_attn_implementation({"": PREFIX_ATTENTION, **chosen})


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
