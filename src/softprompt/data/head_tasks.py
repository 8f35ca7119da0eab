"""Tasks a classifier head answers (encoders): several labels per row, a number per row, a tag per word.

Each reads its text through a template (or, for tagging, a row's words) and keeps the start of a
long row: a head reads every position, so there is no answer position at the end to protect.

Examples:
    >>> task = MultiLabelTask("review {text}", "labels", ["positive", "negative", "film"], max_length=8)
    >>> task.encode({"text": "a gem film", "labels": ["positive", "film"]}, tokenizer).label
    [1.0, 0.0, 1.0]
    >>> RegressionTask("review {text}", "score", max_length=8).encode({"text": "dull", "score": 2}, tokenizer).label
    2.0
    >>> tags = TokenClassificationTask("words", "tags", ["O", "B-FILM"], max_length=8)
    >>> tags.encode({"words": ["a", "film"], "tags": ["O", "B-FILM"]}, tokenizer).labels
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from softprompt.data.tasks import Encoded
from softprompt.data.text import format_template, special_frame, template_fields, text_ids
from softprompt.injection.positions import IGNORE_INDEX


def _index_of(value: Any, names: Sequence[Any], what: str) -> int:
    """The position of ``value`` in ``names``; ints and strings match by their text, and an int
    that is not a name is an index."""
    for i, name in enumerate(names):
        if str(name) == str(value):
            return i
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    raise ValueError(f"{what} {value!r} is not one of {list(names)}")


@dataclass(frozen=True)
class MultiLabelTask:
    """Any number of labels per row, one sigmoid output of the head per label.

    Args:
        template: ``str.format`` template over the row's columns.
        label_column: the column holding each row's labels: a list of label names (or indices).
        labels: the label names, in the head's output order.
        max_length: longest input in tokens (longer rows keep their start).
    """

    kind: ClassVar[str] = "multi_label"
    template: str
    label_column: str
    labels: Sequence[Any]
    max_length: int

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len({str(name) for name in self.labels}) != len(self.labels):
            raise ValueError(f"labels needs at least two distinct names, got {list(self.labels)}")

    @property
    def columns(self) -> list[str]:
        return [*template_fields(self.template), self.label_column]

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    @property
    def words(self) -> list[str]:
        """The label names as words (what a class-label prompt init starts from)."""
        return [str(name).replace("_", " ") for name in self.labels]

    def encode(self, row: Mapping[str, Any], tokenizer: Any) -> Encoded:
        """The templated text and its multi-hot target (C,)."""
        values = row.get(self.label_column)
        if not isinstance(values, list | tuple):
            raise ValueError(
                f"column {self.label_column!r} must hold a list of labels per row, got {values!r}"
            )
        hot = [0.0] * len(self.labels)
        for value in values:
            hot[_index_of(value, self.labels, f"label in column {self.label_column!r}")] = 1.0
        ids, truncated = text_ids(
            format_template(self.template, row), tokenizer, self.max_length, keep="start"
        )
        return Encoded(ids, label=hot, truncated=truncated)


@dataclass(frozen=True)
class RegressionTask:
    """One number per row, the head's single output.

    Args:
        template: ``str.format`` template over the row's columns.
        label_column: the column holding each row's value.
        max_length: longest input in tokens (longer rows keep their start).
    """

    kind: ClassVar[str] = "regression"
    template: str
    label_column: str
    max_length: int
    num_outputs: ClassVar[int] = 1

    @property
    def columns(self) -> list[str]:
        return [*template_fields(self.template), self.label_column]

    def encode(self, row: Mapping[str, Any], tokenizer: Any) -> Encoded:
        try:
            value = float(row[self.label_column])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"column {self.label_column!r} must hold a number per row, got {row.get(self.label_column)!r}"
            ) from None
        ids, truncated = text_ids(
            format_template(self.template, row), tokenizer, self.max_length, keep="start"
        )
        return Encoded(ids, label=value, truncated=truncated)


@dataclass(frozen=True)
class TokenClassificationTask:
    """A tag per word (named entities, parts of speech), on the word's first token.

    Rows hold their words and tags as lists (the CoNLL layout of ``datasets``). Each word is tokenized
    as it reads inside the sentence (after a space); its later tokens and the special tokens get no
    label (``IGNORE_INDEX``), as ``transformers``' examples do.

    Args:
        tokens_column: the column of each row's words.
        tags_column: the column of each row's tags: names, or indices into ``tags``.
        tags: the tag names (e.g. BIO: "O", "B-PER", "I-PER"), in the head's output order.
        max_length: longest input in tokens (longer rows keep their start).
    """

    kind: ClassVar[str] = "token_classification"
    tokens_column: str
    tags_column: str
    tags: Sequence[str]
    max_length: int

    def __post_init__(self) -> None:
        if len(self.tags) < 2 or len(set(self.tags)) != len(self.tags):
            raise ValueError(f"tags needs at least two distinct names, got {list(self.tags)}")

    @property
    def columns(self) -> list[str]:
        return [self.tokens_column, self.tags_column]

    @property
    def num_outputs(self) -> int:
        return len(self.tags)

    def encode(self, row: Mapping[str, Any], tokenizer: Any) -> Encoded:
        """Token ids of the words and, per token, the word's tag index on its first token."""
        words, tags = row.get(self.tokens_column), row.get(self.tags_column)
        if (
            not isinstance(words, list | tuple)
            or not isinstance(tags, list | tuple)
            or len(words) != len(tags)
        ):
            raise ValueError(
                f"columns {self.tokens_column!r} and {self.tags_column!r} must hold lists of equal length per "
                f"row, got {words!r} and {tags!r}"
            )
        tag_ids = [_index_of(tag, self.tags, f"tag in column {self.tags_column!r}") for tag in tags]
        head, tail = special_frame(tokenizer)
        room = self.max_length - len(head) - len(tail)
        ids: list[int] = []
        labels: list[int] = []
        tagged = 0
        for i, (word, tag) in enumerate(zip(words, tag_ids, strict=True)):
            # Each word as it reads inside the sentence: after a space (GPT-2/RoBERTa BPE marks it).
            piece = tokenizer(str(word) if i == 0 else " " + str(word), add_special_tokens=False)["input_ids"]
            piece = piece[: room - len(ids)]
            if not piece:
                continue
            ids += piece
            labels += [tag] + [IGNORE_INDEX] * (len(piece) - 1)
            tagged += 1
        return Encoded(
            head + ids + tail,
            labels=[IGNORE_INDEX] * len(head) + labels + [IGNORE_INDEX] * len(tail),
            truncated=tagged < len(words),
        )
