"""How soft prompts join a batch of a causal decoder: one mechanism for every method, per row.

Every prompt enters as a key/value prefix in every attention layer:

* a :class:`PrefixStates` prompt (prefix tuning) already is one;
* a :class:`VirtualTokens` prompt (prompt tuning, P-tuning) is run once through the frozen model,
  alone, and the keys/values it leaves in each layer become its prefix. In a causal decoder the
  prompt never attends to the input, so this equals prepending the embeddings to every row — but
  costs ``P`` tokens once instead of ``B * P`` tokens per batch.

Rows may carry different prompts of different lengths (or none): prefixes are left-padded to the
longest with masked slots, so each row sees its own prompt only. The row's real tokens take the
positions right after its own prompt and skip pads, so a row's numbers do not depend on its batch
or on the padding side (peft #1093).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from softprompt.cache import capture_cache, captured_states
from softprompt.compat import cache_kwargs
from softprompt.families import ModelShape
from softprompt.methods.base import PrefixStates, PromptOutput


def compile_prompt(model: nn.Module, prompt: PromptOutput) -> PrefixStates:
    """The per-layer prefix a prompt amounts to in a causal decoder (gradients flow through).

    ``model`` is a ``transformers`` causal LM; virtual tokens (P, E) are run through its backbone once.
    """
    if isinstance(prompt, PrefixStates):
        return prompt
    embeddings = prompt.embeddings.to(model.dtype)
    cache = capture_cache(model.config.num_hidden_layers)
    model.base_model(inputs_embeds=embeddings[None], use_cache=True, **cache_kwargs(model.base_model, cache))
    return PrefixStates([(keys[0], values[0]) for keys, values in captured_states(cache)])


@dataclass
class BatchPrefix:
    """Prefixes of a batch. ``layers[l]``: (keys, values), each (B, H_l, P_max, D_l); ``mask``: (B, P_max)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Real prefix length of each row: (B,)."""
        return self.mask.sum(-1)

    def repeat_interleave(self, repeats: int) -> BatchPrefix:
        """Each row ``repeats`` times in a row, as ``generate`` expands rows for beams and samples."""
        if repeats == 1:
            return self
        layers = [(k.repeat_interleave(repeats, 0), v.repeat_interleave(repeats, 0)) for k, v in self.layers]
        return BatchPrefix(layers, self.mask.repeat_interleave(repeats, 0))


def batch_prefix(
    prefixes: Sequence[PrefixStates], rows: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> BatchPrefix:
    """Gather each row's prefix. ``rows``: (B,) index into ``prefixes``, or -1 for a row without prompt.

    Shorter prefixes are left-padded with zeros that the mask hides.
    """
    batch = rows.shape[0]
    if len(prefixes) == 1 and bool((rows == 0).all()):
        # One shared prompt: broadcast without copying.
        (prefix,) = prefixes
        layers = [
            (
                k.to(device, dtype)[None].expand(batch, -1, -1, -1),
                v.to(device, dtype)[None].expand(batch, -1, -1, -1),
            )
            for k, v in prefix.layers
        ]
        return BatchPrefix(layers, torch.ones(batch, prefix.length, dtype=torch.long, device=device))

    longest = max(p.length for p in prefixes)
    # Row `len(prefixes)` of each stack is the empty prompt used by rows == -1.
    index = torch.where(rows < 0, len(prefixes), rows).to(device)
    lengths = torch.tensor([p.length for p in prefixes] + [0], device=device)
    mask = (torch.arange(longest, device=device) >= longest - lengths[:, None]).long()  # (N + 1, P_max)
    layers = []
    for layer_idx in range(len(prefixes[0].layers)):
        stacked = []
        for part in (0, 1):  # keys, values
            padded = [_left_pad(p.layers[layer_idx][part].to(device, dtype), longest) for p in prefixes]
            padded.append(torch.zeros_like(padded[0]))
            stacked.append(torch.stack(padded)[index])  # (B, H, P_max, D)
        layers.append((stacked[0], stacked[1]))
    return BatchPrefix(layers, mask[index])


def no_prefix(shape: ModelShape, batch: int, dtype: torch.dtype, device: torch.device) -> BatchPrefix:
    """An empty prefix (P = 0) for ``batch`` rows: the bare model."""
    layers = [
        (torch.zeros(batch, s.num_kv_heads, 0, s.head_dim, dtype=dtype, device=device),) * 2
        for s in shape.layers
    ]
    return BatchPrefix(layers, torch.zeros(batch, 0, dtype=torch.long, device=device))


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """(H, P, D) -> (H, length, D) with zeros before the real positions."""
    return nn.functional.pad(states, (0, 0, length - states.shape[-2], 0))


def positions_after_prefix(attention_mask: torch.Tensor, prefix_lengths: torch.Tensor) -> torch.Tensor:
    """Position ids of the real tokens, counted from the end of each row's prompt and skipping pads.

    ``attention_mask``: (B, T) of the caller's tokens; returns (B, T), pads at position 0.
    """
    positions = attention_mask.long().cumsum(-1) - 1 + prefix_lengths[:, None]
    return positions.masked_fill(attention_mask == 0, 0)


def with_prefix_columns(attention_mask: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
    """The caller's mask with the prompt's key columns in front of it.

    2-D ``(B, T)`` padding masks get ``prefix_mask`` (B, P) prepended. 4-D masks ``(B, 1, T, S)``
    (custom attention patterns, e.g. packed sequences) get (B, 1, T, P) columns in which every
    query sees the row's prompt slots: ``True`` / ``0.0`` where a slot is real and ``False`` / the
    dtype's minimum where it is padding, in the mask's own convention (bool, or additive float).
    """
    if attention_mask.dim() == 2:
        return torch.cat([prefix_mask, attention_mask.long()], dim=-1)
    if attention_mask.dim() != 4:
        raise ValueError(
            f"attention_mask must be (batch, seq) or (batch, 1, seq, keys), got shape {tuple(attention_mask.shape)}"
        )
    batch, heads, queries, _ = attention_mask.shape
    visible = prefix_mask.bool()[:, None, None, :].expand(batch, heads, queries, -1)  # (B, 1, T, P)
    if attention_mask.dtype == torch.bool:
        columns = visible
    else:
        blocked = torch.finfo(attention_mask.dtype).min
        columns = torch.zeros(visible.shape, dtype=attention_mask.dtype, device=attention_mask.device)
        columns = columns.masked_fill(~visible, blocked)
    return torch.cat([columns.to(attention_mask.device), attention_mask], dim=-1)


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's pads to its left (generation appends tokens at the right end of every row)."""
    order = torch.argsort(attention_mask.long(), dim=-1, stable=True)  # pads (0) first, tokens keep order
    return input_ids.gather(-1, order), attention_mask.gather(-1, order)


__all__ = [
    "BatchPrefix",
    "batch_prefix",
    "compile_prompt",
    "left_align",
    "no_prefix",
    "positions_after_prefix",
    "with_prefix_columns",
]
