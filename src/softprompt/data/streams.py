"""Training on a streamed data set: rows encoded as they are read, one pass over the stream an epoch.

A stream has no length, so it cannot be sorted by length or counted into epochs up front. Its order
is still a pure function of (seed, epoch) — rows go through ``IterableDataset.shuffle``'s seeded
buffer, reseeded each epoch — so a run resumed at (epoch, batches done) skips the rows of those
batches and reads exactly the rows an uninterrupted run would.

Examples:
    >>> import datasets
    >>> from softprompt.data import ClassificationTask
    >>> rows = datasets.Dataset.from_dict({"text": ["a gem", "dull", "a film"], "label": [1, 0, 1]})
    >>> task = ClassificationTask("{text}", "label", ["no", "yes"], max_length=8)
    >>> stream = StreamedExamples(rows.to_iterable_dataset(), task, tokenizer, where="train", seed=0)
    >>> len(list(stream.examples(epoch=0, skip=1)))  # the rows after the first
    2
    >>> batches = StreamBatches(stream, 2, tokenizer.pad_token_id, "left")
    >>> [batch["input_ids"].shape[0] for batch in batches.epoch(0)]  # 3 rows: one full batch
    [2]
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import datasets
import torch

from softprompt.data.batching import PaddingSide, collate
from softprompt.data.tasks import Encoded, Task

logger = logging.getLogger(__name__)

SHUFFLE_BUFFER = 1000


class StreamedExamples:
    """Examples of ``task`` encoded from a streamed data set, in a seeded order per epoch.

    Args:
        rows: the stream (a ``datasets.IterableDataset``).
        task: encodes each row.
        tokenizer: the model's tokenizer.
        where: what the rows are, for messages (``"data.train (glue)"``).
        seed: seeds the shuffle buffer; with ``shuffle=False`` the stream's own order is kept.
        buffer_size: rows the shuffle buffer holds.
    """

    def __init__(
        self,
        rows: datasets.IterableDataset,
        task: Task,
        tokenizer: Any,
        *,
        where: str,
        seed: int = 0,
        shuffle: bool = True,
        buffer_size: int = SHUFFLE_BUFFER,
    ) -> None:
        self.rows = rows.shuffle(seed=seed, buffer_size=buffer_size) if shuffle else rows
        self.task, self.tokenizer, self.where = task, tokenizer, where
        self._warned = False

    def examples(self, epoch: int, skip: int = 0) -> Iterator[Encoded]:
        """The examples of ``epoch``'s pass, after its first ``skip`` rows."""
        self.rows.set_epoch(epoch)
        # islice, not IterableDataset.skip: a skipped stream forgets its epoch (datasets 5.2).
        for row in itertools.islice(self.rows, skip, None):
            example = self.task.encode(row, self.tokenizer)
            if example.truncated and not self._warned:
                self._warned = True
                logger.warning(
                    "%s: rows are truncated to fit max_length=%d", self.where, self.task.max_length
                )
            yield example


class StreamBatches:
    """The training loop's global batches from a stream, an epoch (one pass) at a time; a last batch
    short of ``batch_size`` rows is dropped, as :class:`~softprompt.data.ExampleBatches` drops it."""

    num_batches: int | None = None  # unknown until the stream ends

    def __init__(
        self, stream: StreamedExamples, batch_size: int, pad_token_id: int, padding_side: PaddingSide
    ):
        self.stream, self.batch_size = stream, batch_size
        self.pad_token_id, self.padding_side = pad_token_id, padding_side

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of ``epoch``'s pass after its first ``skip`` batches."""
        rows: list[Encoded] = []
        for example in self.stream.examples(epoch, skip * self.batch_size):
            rows.append(example)
            if len(rows) == self.batch_size:
                yield collate(rows, self.pad_token_id, self.padding_side)
                rows = []
