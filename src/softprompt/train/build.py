"""Turn a validated run config into the run's parts: the task, the encoded data, the prompt, the objective.

Examples:
    >>> from softprompt.examples import DATA_DIR
    >>> from softprompt.train import load_config
    >>> config = load_config(None, base={"task": {"kind": "classification", "template": "{text} ->",
    ...     "label_words": ["no", "yes"]}, "data": {"train": str(DATA_DIR / "train.jsonl")}})
    >>> task = make_task(config.task)
    >>> task.kind, task.words
    ('classification', ['no', 'yes'])
    >>> prompt_config(config, task).init_text            # class-label init: the label words
    ' no yes'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from softprompt.data import (
    DataError,
    Encoded,
    Rows,
    StreamedExamples,
    Task,
    encode_dataset,
    first_rows,
    load_rows,
    require_columns,
)
from softprompt.families import model_shape
from softprompt.hub import HEADS_WITH_LABELS, family_kind, load_base_model
from softprompt.kinds import KINDS
from softprompt.methods import SoftPromptConfig
from softprompt.models import PromptedModel
from softprompt.precision import DTYPES as NAMED_DTYPES
from softprompt.precision import DtypeChoice, DtypeName, choose_dtype
from softprompt.quantization import Quantization, load_quantized
from softprompt.train import objectives
from softprompt.train.config import DataSection, RunConfig, TaskSection
from softprompt.train.objectives import Objective

# model.dtype and output.save_dtype names; "auto" (None) is chosen for the hardware when the base loads.
DTYPES: dict[str, torch.dtype | None] = {**NAMED_DTYPES, "auto": None}

logger = logging.getLogger(__name__)


@dataclass
class Data:
    """Encoded examples of each split (``dev``/``test`` are None when not configured); streamed
    training rows are a :class:`~softprompt.data.StreamedExamples`, encoded as the loop reads them."""

    train: list[Encoded] | StreamedExamples
    dev: list[Encoded] | None = None
    test: list[Encoded] | None = None


# Rows the Python API takes instead of data.train/dev/test: one data set (the training rows), or
# splits by name (a DatasetDict, or a dict), picked with data.train_split / dev_split / test_split.
InMemoryRows = Rows | Mapping[str, Rows]

SPLITS = ("train", "dev", "test")


def make_task(task: TaskSection) -> Task:
    """The data layer's task object for the ``task`` section."""
    return task.to_task()


def load_data(
    data: DataSection,
    task: Task,
    tokenizer: Any,
    *,
    splits: tuple[str, ...] = SPLITS,
    rows: InMemoryRows | None = None,
    seed: int = 0,
) -> Data:
    """Load, rename and encode the configured splits (truncations are counted and warned about).

    ``rows`` replaces the configured sources: a data set (the training rows) or splits by name.
    Training rows that stream (``data.streaming``, or an ``IterableDataset``) are encoded as they are
    read, in an order seeded by ``seed``; dev and test rows are encoded whole.
    """
    given = _splits_given(rows, data) if rows is not None else None
    encoded: dict[str, Any] = {"train": [], "dev": None, "test": None}
    for split in splits:
        if given is not None:
            source, where = given.get(split), f"the {split} rows given to train()"
            if source is not None:
                source = first_rows(source, getattr(data, f"{split}_limit"))
        else:
            where = f"data.{split} ({getattr(data, split)})"
            source = None if getattr(data, split) is None else _load_split(data, split, where)
        if source is None:
            continue
        if data.rename:
            require_columns(source, list(data.rename), where=f"{where}, for data.rename")
            source = source.rename_columns(data.rename)
        if isinstance(source, datasets.IterableDataset):
            if split == "train":
                encoded[split] = StreamedExamples(source, task, tokenizer, where=where, seed=seed)
                continue
            source = list(source)  # dev and test are scored whole
        encoded[split], _ = encode_dataset(task, source, tokenizer, where=where)
    return Data(**encoded)


def _load_split(data: DataSection, split: str, where: str) -> Rows:
    """One configured split's rows; failures name the config key."""
    try:
        return load_rows(
            getattr(data, split),
            split=getattr(data, f"{split}_split"),
            file_format=data.format,
            limit=getattr(data, f"{split}_limit"),
            subset=data.subset,
            revision=data.revision,
            data_files=data.data_files,
            streaming=data.streaming and split == "train",
        )
    except DataError as err:
        raise DataError(f"data.{split}: {err}") from None


def _splits_given(rows: InMemoryRows, data: DataSection) -> dict[str, Rows]:
    """{"train" | "dev" | "test": rows} from what the Python API was given."""
    if isinstance(rows, datasets.Dataset | datasets.IterableDataset):
        return {"train": rows}
    if not isinstance(rows, Mapping):
        raise DataError(
            f"train(data=...) takes a datasets.Dataset, IterableDataset or DatasetDict, not {type(rows).__name__}"
        )
    names = {split: getattr(data, f"{split}_split") for split in SPLITS}
    if names["train"] not in rows:
        raise DataError(
            f"the data sets given to train() have no {names['train']!r} split (data.train_split); "
            f"they have {list(rows)}"
        )
    return {split: rows[name] for split, name in names.items() if name in rows}


def prompt_config(config: RunConfig, task: Task) -> SoftPromptConfig:
    """The method's config; ``init: text`` without ``init_text`` starts from the labels' words
    (classification and multi-label tasks).

    Lester et al. §3.2 ("class label" initialisation): each virtual token starts as the embedding
    of a label word, the words repeated to fill the prompt. Each word gets its leading space, so
    the prompt starts from the very tokens the verbalizer scores (" billing", not "b" + "illing").
    """
    prompt = config.prompt
    if getattr(prompt, "init", None) == "text" and not getattr(prompt, "init_text", None):
        words = "".join(" " + word for word in task.words)
        prompt = prompt.model_copy(update={"init_text": words})
    return prompt.to_config()


def load_base(config: RunConfig, task: Task) -> tuple[Any, Any]:
    """The frozen ``(model, tokenizer)`` the run adapts, with the head its kind trains for the task
    (see :mod:`softprompt.kinds`): a causal or seq2seq LM, or an encoder with a new head of
    ``task.num_outputs`` outputs (classes, labels, 1 for a number, tags). Its dtype is
    :func:`dtype_choice`'s, its linear layers quantized if ``model.quantization`` says so."""
    return load_base_for(
        config.model.name_or_path, task, dtype=config.model.dtype, quantization=config.model.quantization
    )


def dtype_choice(config: RunConfig, task: Task) -> DtypeChoice:
    """The dtype :func:`load_base` gives the run's base and why: ``model.dtype``, or for ``auto``
    :func:`softprompt.precision.choose_dtype`'s choice; its ``message()`` is the line a run prints."""
    head = run_head(config.model.name_or_path, task)
    return base_dtype(config.model.dtype, trains_base_head=head in HEADS_WITH_LABELS)


def load_base_for(
    name: str,
    task: Task,
    *,
    dtype: torch.dtype | DtypeName | None = "auto",
    quantization: Quantization | None = None,
) -> tuple[Any, Any]:
    """:func:`load_base` for a model name and a task (e.g. the task an adapter file carries);
    ``dtype`` is a dtype, a ``model.dtype`` name, or None for ``"auto"``."""
    head = run_head(name, task)
    new_head = head in HEADS_WITH_LABELS
    choice = base_dtype(dtype, trains_base_head=new_head)
    logger.debug(choice.message())
    if quantization is not None:
        if new_head:
            raise ValueError(
                f"model.quantization applies to models without a new task head; {name} trains a new "
                f"{head} head (set model.quantization: null)"
            )
        return load_quantized(name, quantization, head=head, compute_dtype=choice.dtype)
    labels = {"num_labels": task.num_outputs} if new_head else {}
    return load_base_model(name, head=head, dtype=choice.dtype, **labels)


def run_head(name: str, task: Task) -> str:
    """The head a run of ``task`` loads on the model ``name`` (refusing, with the reason, a task its
    kind cannot train); read from the model's config alone."""
    kind = KINDS[family_kind(name)]
    kind.objective(task.kind)
    return kind.head_for(task.kind)


def base_dtype(dtype: torch.dtype | DtypeName | None, *, trains_base_head: bool = False) -> DtypeChoice:
    """The base's :class:`~softprompt.precision.DtypeChoice` for a dtype, a dtype name or None (auto)."""
    if isinstance(dtype, torch.dtype):
        return DtypeChoice(dtype, "set by the caller", automatic=False)
    return choose_dtype(dtype or "auto", trains_base_head=trains_base_head)


def model_options(config: RunConfig, base: Any) -> dict[str, Any]:
    """Options of the model class beyond the prompt (encoders: ``pooling``)."""
    if model_shape(base).kind != "encoder":
        if config.model.pooling != "model":
            raise ValueError("model.pooling applies to encoders only")
        return {}
    return {"pooling": config.model.pooling}


def make_objective(model: PromptedModel, task: Task, tokenizer: Any) -> Objective:
    """The loss module for ``task``, as the model's kind trains it (see :mod:`softprompt.kinds`):
    verbalizer cross-entropy (causal LMs: at the answer position; encoder-decoders: at the first
    decoder step), the classifier head's cross-entropy (encoders), or target-token cross-entropy."""
    return objectives.for_task(model, task, tokenizer)


def bare_objective(objective: Objective) -> Objective:
    """The same objective on the frozen model without any prompt (the zero-shot baseline)."""
    kind = KINDS[objective.model.shape.kind]
    if not kind.zero_shot:
        raise ValueError(
            f"{kind.label}' classifier heads train with the prompt: they have no zero-shot score"
        )
    return objective.without_prompt()
