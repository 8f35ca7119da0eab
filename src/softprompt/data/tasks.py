"""Turn data rows into token ids: the tasks a language model answers in text — classification by
label words, multiple choice by the choices' likelihood, generation — and what every task shares.

A task is a small frozen dataclass: it formats a row with its template, tokenizes it, truncates
it so that the answer position survives, and carries what the loss needs (label token ids for a
verbalizer, the choices' tokens, or a target mask). Truncation is counted, never silent. The tasks
an encoder's head answers are in :mod:`softprompt.data.head_tasks`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import datasets

from softprompt.data.sources import require_columns
from softprompt.data.text import TextFormat, format_template, template_fields
from softprompt.injection.positions import IGNORE_INDEX

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    """One tokenized example.

    Attributes:
        input_ids: the tokens the model reads, `(T,)` (multiple choice: the context before each choice).
        label: the row's target: a class index (classification, multiple choice), a number
            (regression), or a multi-hot vector `(C,)` (multi-label).
        labels: per-token targets, `IGNORE_INDEX` where no loss is taken, `(T,)`: the next tokens
            (generation) or each word's tag on its first token (token classification).
        prompt_ids: the source tokens alone, to generate from at evaluation (generation only).
        reference: the target text, to score generations against (generation only).
        choices: each choice's tokens, read after `input_ids` (multiple choice only).
        truncated: whether any part of the row was cut to fit the length limits.
    """

    input_ids: list[int]
    label: int | float | list[float] | None = None
    labels: list[int] | None = None
    prompt_ids: list[int] | None = None
    reference: str | None = None
    choices: list[list[int]] | None = None
    truncated: bool = False

    def prompt(self) -> Encoded:
        """This example as a generation prompt: source tokens only, no loss targets.

        Examples:
            >>> Encoded([5, 6, 7, 0], labels=[-100, -100, 7, 0], prompt_ids=[5, 6]).prompt().input_ids
            [5, 6]
        """
        ids = self.prompt_ids if self.prompt_ids is not None else self.input_ids
        return Encoded(ids, label=self.label, reference=self.reference, truncated=self.truncated)


class Task(Protocol):
    """What `encode_dataset` needs from a task; ``kind`` picks the training objective (:mod:`softprompt.kinds`)."""

    kind: ClassVar[str]
    max_length: int

    @property
    def columns(self) -> list[str]: ...

    def encode(self, row: Mapping[str, Any], tokenizer: Any) -> Encoded: ...


@dataclass(frozen=True)
class ClassificationTask:
    """Classify by scoring one label word per class at the position after the template.

    Args:
        template: `str.format` template over the row's columns, ending where the answer goes,
            e.g. "Review: {sentence}\\nSentiment:" (no trailing space: the label word carries it).
        label_column: the column holding the label value.
        label_words: label value -> label word, or a list of words for labels 0..n-1. A word's
            first token scores the class: with a leading space (added if missing) after plain text, as
            written at the start of a chat reply.
        max_length: longest input in tokens; longer inputs keep their last `max_length` tokens
            (after any BOS, inside any chat frame), so the answer position survives.
        format: the text as is, or inside the tokenizer's chat template (:class:`TextFormat`).

    Examples:
        >>> task = ClassificationTask("review {sentence} sentiment", "label", ["negative", "positive"], 128)
        >>> ex = task.encode({"sentence": "a gem", "label": 1}, tokenizer)
        >>> tokenizer.decode(ex.input_ids), ex.label, task.label_token_ids(tokenizer)
        ('review a gem sentiment', 1, [5, 4])
    """

    kind: ClassVar[str] = "classification"
    template: str
    label_column: str
    label_words: Mapping[Any, str] | Sequence[str]
    max_length: int
    format: TextFormat = TextFormat()

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be positive, got {self.max_length}")
        keys = [str(k) for k, _ in self.classes]
        if len(keys) < 2:
            raise ValueError(f"label_words needs at least two classes, got {self.label_words!r}")
        if len(set(keys)) != len(keys):
            raise ValueError(f"label_words keys collide once written as text: {keys}")

    @property
    def classes(self) -> list[tuple[Any, str]]:
        """(label value, label word) per class, in class-index order."""
        if isinstance(self.label_words, Mapping):
            return list(self.label_words.items())
        return list(enumerate(self.label_words))

    @property
    def columns(self) -> list[str]:
        """Columns a row must have."""
        return [*template_fields(self.template), self.label_column]

    @property
    def num_outputs(self) -> int:
        """Outputs of a classifier head for this task (encoders): one per class."""
        return len(self.classes)

    @property
    def words(self) -> list[str]:
        """The classes' words, in class order (what a class-label prompt init starts from)."""
        return [word.strip() for _, word in self.classes]

    def label_index(self, value: Any) -> int:
        """Class index of a label value; ints and strings match by their text (1 matches "1")."""
        for i, (key, _) in enumerate(self.classes):
            if str(key) == str(value):
                return i
        known = [k for k, _ in self.classes]
        raise ValueError(
            f"label value {value!r} in column {self.label_column!r} is not a key of label_words; known: {known}"
        )

    def label_token_ids(self, tokenizer: Any) -> list[int]:
        """First token id of each label word as the answer, one per class.

        Raises:
            ValueError: a word tokenizes to nothing, or two words share their first token.
        """
        ids: list[int] = []
        for _, word in self.classes:
            tokens = self.format.word_ids(word, tokenizer)
            if not tokens:
                raise ValueError(f"label word {word!r} tokenizes to no tokens")
            ids.append(tokens[0])
        first_word: dict[int, str] = {}
        for (_, word), tid in zip(self.classes, ids, strict=True):
            if tid in first_word:
                raise ValueError(
                    f"label words {first_word[tid]!r} and {word!r} share their first token (id {tid}); "
                    "choose words that start differently"
                )
            first_word[tid] = word
        return ids

    def encode(self, row: Mapping[str, Any], tokenizer: Any) -> Encoded:
        """Tokenize the templated row (no answer appended) and look up its class index."""
        text = format_template(self.template, row)
        if self.label_column not in row:
            raise ValueError(f"row has no label column {self.label_column!r}; available columns: {list(row)}")
        ids, truncated = self.format.prompt_ids(text, tokenizer, self.max_length)
        return Encoded(ids, label=self.label_index(row[self.label_column]), truncated=truncated)


@dataclass(frozen=True)
class GenerationTask:
    """Generate a target text from a source text; the loss covers the target tokens only.

    `input_ids` = source + target + end and `labels` = `IGNORE_INDEX` over the source, the target
    ids + end over the rest; the end is EOS, or the chat template's end of turn. The source keeps at most `max_length - max_target_length` tokens (its
    last ones, next to the answer), the target its first `max_target_length - 1` tokens + EOS, so
    training rows and evaluation prompts plus generations both fit in `max_length`.

    Args:
        source_template: e.g. "Table: {mr}\\nText:".
        target_template: e.g. " {ref}" (leading space: it continues the source text).
        max_length: longest `input_ids` in tokens.
        max_target_length: longest target in tokens, EOS included.
        format: the text as is, or the source as a user's message in the tokenizer's chat template and
            the target as the assistant's reply (:class:`TextFormat`).

    Examples:
        >>> task = GenerationTask("Table: {mr}\\nText:", " {ref}", max_length=256, max_target_length=64)
        >>> ex = task.encode({"mr": "name[Aromi]", "ref": "Aromi is a pub."}, tokenizer)
        >>> ex.labels[: len(ex.prompt_ids)] == [-100] * len(ex.prompt_ids)  # the loss covers the target only
        True
    """

    kind: ClassVar[str] = "generation"
    source_template: str
    target_template: str
    max_length: int
    max_target_length: int
    format: TextFormat = TextFormat()

    def __post_init__(self) -> None:
        if self.max_target_length < 1:
            raise ValueError(f"max_target_length must be positive, got {self.max_target_length}")
        if self.max_length <= self.max_target_length:
            raise ValueError(
                f"max_length ({self.max_length}) must exceed max_target_length ({self.max_target_length}) "
                "to leave room for the source"
            )

    @property
    def columns(self) -> list[str]:
        """Columns a row must have."""
        fields = template_fields(self.source_template) + template_fields(self.target_template)
        return list(dict.fromkeys(fields))

    def encode(self, row: Mapping[str, Any], tokenizer: Any) -> Encoded:
        """Tokenize source and target; mask the source out of `labels`."""
        end = self.format.end_id(tokenizer)
        source_text = format_template(self.source_template, row)
        target_text = format_template(self.target_template, row)
        prompt, cut = self.format.prompt_ids(source_text, tokenizer, self.max_length - self.max_target_length)
        target = self.format.answer_ids(target_text, tokenizer)
        answer = target[: self.max_target_length - 1] + [end]
        return Encoded(
            prompt + answer,
            labels=[IGNORE_INDEX] * len(prompt) + answer,
            prompt_ids=prompt,
            reference=target_text.strip(),
            truncated=cut or len(target) > self.max_target_length - 1,
        )


@dataclass(frozen=True)
class MultipleChoiceTask:
    """Pick one of several answers by how likely the model finds each after the context.

    A choice's score is its tokens' log-likelihood after the templated context — summed, or their
    mean (``score="mean"``, lm-eval-harness's length-normalised ``acc_norm`` per token rather than per
    byte) — and training takes the cross-entropy over the row's choice scores.

    Args:
        template: the context, e.g. "Question: {question}\nAnswer:".
        label_column: the column of the right choice's index.
        choices_column: the column holding each row's choices as a list (or use ``choice_columns``).
        choice_columns: one column per choice (PIQA's "sol1", "sol2"), instead of ``choices_column``.
        choice_template: turns a choice into its text after the context, e.g. " {choice}".
        max_length: longest context + choice in tokens; longer contexts keep their end.
        score: "mean" or "sum" of the choice tokens' log-likelihoods.
        format: the context as is, or as a user's message in the chat template, the choice as the reply.

    Examples:
        >>> task = MultipleChoiceTask("review {text}", "label", choices_column="options", max_length=16)
        >>> ex = task.encode({"text": "a gem", "options": ["positive", "negative"], "label": 0}, tokenizer)
        >>> ex.input_ids, ex.choices, ex.label
        ([12, 8, 9], [[4], [5]], 0)
    """

    kind: ClassVar[str] = "multiple_choice"
    template: str
    label_column: str
    choices_column: str | None = None
    choice_columns: Sequence[str] | None = None
    choice_template: str = " {choice}"
    max_length: int = 256
    score: str = "mean"
    format: TextFormat = TextFormat()

    def __post_init__(self) -> None:
        if (self.choices_column is None) == (self.choice_columns is None):
            raise ValueError(
                "give the choices either as choices_column (a list per row) or as choice_columns"
            )
        if self.score not in ("mean", "sum"):
            raise ValueError(f"score must be 'mean' or 'sum', got {self.score!r}")
        if template_fields(self.choice_template) != ["choice"]:
            raise ValueError(
                f"choice_template must have the one field {{choice}}, got {self.choice_template!r}"
            )

    @property
    def columns(self) -> list[str]:
        choices = [self.choices_column] if self.choices_column else list(self.choice_columns or [])
        return [*template_fields(self.template), *choices, self.label_column]

    def encode(self, row: Mapping[str, Any], tokenizer: Any) -> Encoded:
        """The context's tokens, each choice's tokens, and the right choice's index."""
        if self.choices_column is not None:
            choices = row.get(self.choices_column)
            if not isinstance(choices, list | tuple) or len(choices) < 2:
                raise ValueError(
                    f"column {self.choices_column!r} must hold a list of at least two choices, got {choices!r}"
                )
        else:
            missing = [name for name in self.choice_columns if name not in row]
            if missing:
                raise ValueError(f"row has no choice columns {missing}; available columns: {list(row)}")
            choices = [str(row[name]) for name in self.choice_columns]
        answers = [self.format.answer_ids(self.choice_template.format(choice=c), tokenizer) for c in choices]
        if not all(answers):
            raise ValueError(f"a choice tokenizes to no tokens: {list(choices)}")
        longest = max(len(answer) for answer in answers)
        context, truncated = self.format.prompt_ids(
            format_template(self.template, row), tokenizer, self.max_length - longest
        )
        label = row.get(self.label_column)
        try:
            index = int(label)
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < len(choices):
            raise ValueError(
                f"column {self.label_column!r} must hold the right choice's index (0..{len(choices) - 1}), got {label!r}"
            )
        return Encoded(context, label=index, choices=answers, truncated=truncated)


def encode_dataset(
    task: Task,
    rows: datasets.Dataset | Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    where: str = "data set",
) -> tuple[list[Encoded], int]:
    """Encode every row; return the examples and how many were truncated (warned about if any).

    Examples:
        >>> task = ClassificationTask("review {text} sentiment", "label", ["negative", "positive"], 4)
        >>> examples, n_truncated = encode_dataset(task, [{"text": "a gem", "label": 1}, {"text": "a dull film", "label": 0}], tokenizer)
        >>> [len(ex.input_ids) for ex in examples], n_truncated  # the longer row keeps its last 4 tokens
        ([4, 4], 1)
    """
    if isinstance(rows, datasets.Dataset):
        # Fail once, up front, rather than on the first row.
        require_columns(rows, task.columns, where=where)
    examples = [task.encode(row, tokenizer) for row in rows]
    n_truncated = sum(ex.truncated for ex in examples)
    if n_truncated:
        logger.warning(
            "%s: %d of %d rows were truncated to fit max_length=%d",
            where,
            n_truncated,
            len(examples),
            task.max_length,
        )
    return examples, n_truncated
