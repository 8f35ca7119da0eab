"""Where a row's real tokens sit once a prompt is in front of them: positions, mask columns, alignment.

A row's real tokens take the positions right after *its own* prompt and skip pads, so its numbers
do not depend on its batch or on the padding side (peft #1093).

Examples:
    >>> mask = torch.tensor([[0, 1, 1], [1, 1, 1]])                  # row 0 left-padded
    >>> positions_after_prefix(mask, torch.tensor([2, 2])).tolist()  # both rows after a prompt of 2
    [[0, 2, 3], [2, 3, 4]]
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
"""Label value the loss skips (PyTorch cross-entropy's default ``ignore_index``): labels move with
their tokens, and virtual tokens get this label."""


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
