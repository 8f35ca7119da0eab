"""Batch encoded examples: dynamic padding, length-grouped seeded batch order, exact resume.

The batch order of an epoch is a pure function of (seed, epoch), so a run resumed from a
checkpoint at (epoch, batches consumed) sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Literal

import torch
from torch.utils.data import DataLoader, Sampler

from softprompt.data.tasks import IGNORE_INDEX, Encoded

PaddingSide = Literal["left", "right"]


def collate(
    examples: Sequence[Encoded], pad_token_id: int, padding_side: PaddingSide
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest row.

    Returns `input_ids` and `attention_mask` `(B, T)`, plus `labels` `(B, T)` padded with
    `IGNORE_INDEX` when the examples have per-token labels and `label` when they have row targets:
    `(B,)` class indices or numbers, `(B, C)` multi-hot vectors. Multiple-choice examples become
    `(B, C, T)` tensors: row b's choice c is its context + that choice, `labels` covering the choice's
    tokens (rows with fewer choices get empty slots, mask all 0). Left padding is for generation
    (the last position is every row's last real token); right padding suits training.

    Examples:
        >>> batch = collate([Encoded([1, 2, 3], label=0), Encoded([4], label=1)], 0, "left")
        >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["label"].tolist()
        ([[1, 2, 3], [0, 0, 4]], [[1, 1, 1], [0, 0, 1]], [0, 1])
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if _all_or_none(examples, "choices"):
        return _collate_choices(examples, pad_token_id, padding_side)
    width = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    has_labels = _all_or_none(examples, "labels")
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long) if has_labels else None
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, cols] = torch.tensor(ex.input_ids, dtype=torch.long)
        attention_mask[row, cols] = 1
        if labels is not None:
            labels[row, cols] = torch.tensor(ex.labels, dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if labels is not None:
        batch["labels"] = labels
    if _all_or_none(examples, "label"):
        # (B,) long class indices or float values, or (B, C) float multi-hot vectors
        batch["label"] = torch.tensor([ex.label for ex in examples])
    return batch


class LengthGroupedSampler(Sampler[list[int]]):
    """Batch sampler (yields lists of indices) with a seeded, resumable order per epoch.

    With `shuffle`, rows are permuted by a generator seeded from (seed, epoch). With
    `group_by_length`, each run of `mega_batch_factor * batch_size` rows is sorted by length
    before being cut into batches, so a batch holds rows of similar length and pads little; the
    batches are then shuffled so training does not see long-to-short sweeps. Without `shuffle`,
    the order is the data order (sorted within mega-batches if `group_by_length`).

    `set_epoch(epoch, skip_batches)` selects the epoch and drops its first `skip_batches` batches,
    which is how a run resumes from a checkpoint mid-epoch.

    Examples:
        >>> sampler = LengthGroupedSampler([5, 1, 9, 3, 7], batch_size=2, seed=0)
        >>> sampler.set_epoch(1, skip_batches=1)
        >>> len(sampler)
        2
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        group_by_length: bool = True,
        seed: int = 0,
        mega_batch_factor: int = 50,
        drop_last: bool = False,
        epoch: int = 0,
        skip_batches: int = 0,
    ) -> None:
        if batch_size < 1 or mega_batch_factor < 1:
            raise ValueError(
                f"batch_size and mega_batch_factor must be positive, got {batch_size}, {mega_batch_factor}"
            )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.mega_batch_factor = mega_batch_factor
        self.drop_last = drop_last
        self.set_epoch(epoch, skip_batches)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Use `epoch`'s order from now on, leaving out its first `skip_batches` batches."""
        if not 0 <= skip_batches <= self.num_batches:
            raise ValueError(f"skip_batches must be in [0, {self.num_batches}], got {skip_batches}")
        self.epoch = epoch
        self.skip_batches = skip_batches

    @property
    def num_batches(self) -> int:
        """Batches in a whole epoch."""
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch`, in order; the same for the same (seed, epoch)."""
        n, size = len(self.lengths), self.batch_size
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        if self.group_by_length:
            mega = self.mega_batch_factor * size
            # Longest first within each mega-batch; sorted() is stable, so ties keep the random order.
            order = [
                i
                for start in range(0, n, mega)
                for i in sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            ]
        batches = [order[start : start + size] for start in range(0, n, size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        if self.shuffle and self.group_by_length:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)[self.skip_batches :]

    def __len__(self) -> int:
        return self.num_batches - self.skip_batches


def make_dataloader(
    examples: Sequence[Encoded],
    batch_size: int,
    pad_token_id: int,
    padding_side: PaddingSide,
    *,
    shuffle: bool = True,
    seed: int = 0,
    group_by_length: bool = False,
    epoch: int = 0,
    skip_batches: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over `examples` whose batch order is fixed by (seed, epoch).

    Call `loader.batch_sampler.set_epoch(epoch)` at the start of each epoch; pass `epoch` and
    `skip_batches` (batches already consumed in it) to resume exactly where a checkpoint left off.
    For evaluation in data order use `shuffle=False, group_by_length=False`.

    Examples:
        >>> from softprompt.data import ClassificationTask, encode_dataset
        >>> task = ClassificationTask("review {text} sentiment", "label", ["negative", "positive"], 16)
        >>> rows = [{"text": "a " * n + "gem", "label": n % 2} for n in range(8)]
        >>> examples, _ = encode_dataset(task, rows, tokenizer)
        >>> loader = make_dataloader(examples, 4, tokenizer.pad_token_id, "right", seed=1)
        >>> for epoch in range(2):
        ...     loader.batch_sampler.set_epoch(epoch)
        ...     print([tuple(batch["input_ids"].shape) for batch in loader])  # rows of like length, a new order
        [(4, 9), (4, 10)]
        [(4, 10), (4, 7)]
    """
    sampler = LengthGroupedSampler(
        [len(ex.input_ids) for ex in examples],
        batch_size,
        shuffle=shuffle,
        group_by_length=group_by_length,
        seed=seed,
        drop_last=drop_last,
        epoch=epoch,
        skip_batches=skip_batches,
    )
    collate_fn = partial(collate, pad_token_id=pad_token_id, padding_side=padding_side)
    return DataLoader(examples, batch_sampler=sampler, collate_fn=collate_fn)


class ExampleBatches:
    """The training loop's global batches from a list of examples, an epoch at a time: the seeded
    (optionally length-grouped) order of :class:`LengthGroupedSampler`, full batches only.

    Examples:
        >>> examples = [Encoded([1, 2], label=0), Encoded([3], label=1), Encoded([4, 5, 6], label=1)]
        >>> batches = ExampleBatches(examples, 2, 0, "left", seed=0)
        >>> batches.num_batches, [batch["input_ids"].shape[0] for batch in batches.epoch(0)]
        (1, [2])
    """

    def __init__(
        self,
        examples: Sequence[Encoded],
        batch_size: int,
        pad_token_id: int,
        padding_side: PaddingSide,
        *,
        seed: int = 0,
        group_by_length: bool = False,
    ) -> None:
        # drop_last: every step sees a full global batch, whatever the number of processes.
        self.loader = make_dataloader(
            examples, batch_size, pad_token_id, padding_side, seed=seed, group_by_length=group_by_length,
            drop_last=True,
        )  # fmt: skip
        self.num_batches: int | None = self.loader.batch_sampler.num_batches

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of ``epoch`` after its first ``skip`` batches."""
        self.loader.batch_sampler.set_epoch(epoch, skip)
        return iter(self.loader)


def _collate_choices(
    examples: Sequence[Encoded], pad_token_id: int, padding_side: PaddingSide
) -> dict[str, torch.Tensor]:
    """(B, C, T) ids, mask and choice-token labels, and (B,) right-choice indices."""
    rows, most = len(examples), max(len(ex.choices) for ex in examples)
    width = max(len(ex.input_ids) + len(choice) for ex in examples for choice in ex.choices)
    input_ids = torch.full((rows, most, width), pad_token_id, dtype=torch.long)  # (B, C, T)
    attention_mask = torch.zeros((rows, most, width), dtype=torch.long)
    labels = torch.full((rows, most, width), IGNORE_INDEX, dtype=torch.long)
    for row, ex in enumerate(examples):
        for c, choice in enumerate(ex.choices):
            n = len(ex.input_ids) + len(choice)
            start = 0 if padding_side == "right" else width - n
            input_ids[row, c, start : start + n] = torch.tensor(ex.input_ids + choice)
            attention_mask[row, c, start : start + n] = 1
            labels[row, c, start + len(ex.input_ids) : start + n] = torch.tensor(choice)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if _all_or_none(examples, "label"):
        batch["label"] = torch.tensor([ex.label for ex in examples], dtype=torch.long)  # (B,)
    return batch


def _all_or_none(examples: Sequence[Encoded], field: str) -> bool:
    """Whether every example sets `field`; mixing set and unset in one batch is an error."""
    present = [getattr(ex, field) is not None for ex in examples]
    if any(present) and not all(present):
        raise ValueError(f"some examples in the batch have {field!r} and some do not")
    return all(present)


def _epoch_seed(seed: int, epoch: int) -> int:
    """One generator seed per (seed, epoch); plain `seed + epoch` would make (1, 0) replay (0, 1)."""
    return (seed * 1_000_003 + epoch) % 2**63
