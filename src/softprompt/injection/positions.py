"""Where a row's real tokens sit once a prompt is in front of them: positions, mask columns, alignment.

A row's real tokens take the positions right after *its own* prompt and skip pads, so its numbers
do not depend on its batch or on the padding side (peft #1093). Some models measure distances in
key *columns* instead of positions (sliding windows, MPT's ALiBi) and recurrent layers read every
column in order: for them a pad between a prompt and its row's tokens changes the row. A forward
pass therefore runs each row with its pads after its tokens (:func:`pads_last`), where they are
never attended to and never reach a recurrent state.

Examples:
    >>> mask = torch.tensor([[0, 1, 1], [1, 1, 1]])                  # row 0 left-padded
    >>> positions_after_prefix(mask, torch.tensor([2, 2])).tolist()  # both rows after a prompt of 2
    [[0, 2, 3], [2, 3, 4]]
"""

from __future__ import annotations

from dataclasses import dataclass

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


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, with left or right padding: (B, T) -> (B,).

    Examples:
        >>> last_token_index(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
        [2, 1]
    """
    trailing_pads = attention_mask.flip(-1).long().argmax(-1)  # first 1 from the right
    return attention_mask.shape[-1] - 1 - trailing_pads


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's pads to its left (generation appends tokens at the right end of every row)."""
    order = torch.argsort(attention_mask.long(), dim=-1, stable=True)  # pads (0) first, tokens keep order
    return input_ids.gather(-1, order), attention_mask.gather(-1, order)


@dataclass(frozen=True)
class Alignment:
    """A re-ordering of every row's columns, and its inverse (``order=None``: the batch is kept as it is).

    ``order`` (B, T): column ``j`` of a re-ordered row is column ``order[b, j]`` of the caller's;
    ``leading``: columns put in front of the re-ordered rows (virtual tokens), dropped on the way back.
    """

    order: torch.Tensor | None = None
    leading: int = 0

    def apply(self, batch: torch.Tensor | None) -> torch.Tensor | None:
        """(B, T, ...) in the caller's layout -> the re-ordered layout."""
        return batch if batch is None or self.order is None else _gather_columns(batch, self.order)

    def undo(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, leading + T, ...) in the re-ordered layout -> (B, T, ...) in the caller's."""
        batch = batch[:, self.leading :]
        return batch if self.order is None else _gather_columns(batch, self.order.argsort(-1))

    def undo_selected(self, selected: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """(N, ...) values at the ``where`` (B, T) positions of the caller's layout, picked in the re-ordered
        layout, back in the caller's row-major order (a selected pad may have moved past its row's tokens)."""
        if self.order is None:
            return selected
        moved = self.apply(where)
        rows = moved.nonzero()[:, 0]
        return selected[(rows * where.shape[1] + self.order[moved]).argsort()]


def pads_last(attention_mask: torch.Tensor) -> Alignment:
    """The re-ordering that moves each row's pads after its tokens (tokens keep their order).

    A (B, T) mask that is right-padded (or has no pads) is kept; a 4-D mask is the caller's own
    attention pattern and is kept too.

    Examples:
        >>> align = pads_last(torch.tensor([[0, 1, 1], [1, 1, 1]]))
        >>> align.apply(torch.tensor([[7, 8, 9], [4, 5, 6]])).tolist()
        [[8, 9, 7], [4, 5, 6]]
        >>> align.undo(align.apply(torch.tensor([[7, 8, 9], [4, 5, 6]]))).tolist()
        [[7, 8, 9], [4, 5, 6]]
    """
    if attention_mask.dim() != 2:
        return Alignment()
    real = attention_mask != 0
    if not bool((real[:, 1:] & ~real[:, :-1]).any()):  # no token follows a pad
        return Alignment()
    return Alignment(torch.argsort((~real).to(torch.int8), dim=-1, stable=True))


def _gather_columns(batch: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    index = order.view(*order.shape, *(1,) * (batch.dim() - 2)).expand(*order.shape, *batch.shape[2:])
    return batch.gather(1, index)
