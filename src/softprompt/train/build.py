"""Turn a validated run config into the run's parts: the task, the encoded data, the prompt, the objective.

Example:
    >>> task = make_task(config.task)  # doctest: +SKIP
    >>> data = load_data(config.data, task, tokenizer)  # doctest: +SKIP
    >>> model = softprompt.wrap(base, prompt_config(config, task), tokenizer=tokenizer)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from softprompt.data import (
    ClassificationTask,
    Encoded,
    GenerationTask,
    Task,
    encode_dataset,
    load_rows,
    require_columns,
)
from softprompt.encoder import EncoderSoftPromptModel
from softprompt.families import model_shape
from softprompt.hub import ModelKind, family_kind, load_base_model
from softprompt.methods import SoftPromptConfig
from softprompt.model import PromptedModel
from softprompt.seq2seq import Seq2SeqSoftPromptModel
from softprompt.train.config import DataSection, RunConfig, TaskSection
from softprompt.train.objectives import (
    ClassificationObjective,
    GenerationObjective,
    HeadClassificationObjective,
    Objective,
    Seq2SeqClassificationObjective,
    Seq2SeqGenerationObjective,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# How a run loads each kind of model family (``ModelShape.kind``): encoders get a classifier head.
LOAD_KINDS: dict[str, ModelKind] = {
    "causal": "causal-lm",
    "seq2seq": "seq2seq-lm",
    "encoder": "sequence-classification",
}

logger = logging.getLogger(__name__)


@dataclass
class Data:
    """Encoded examples of each split (``dev``/``test`` are None when not configured)."""

    train: list[Encoded]
    dev: list[Encoded] | None = None
    test: list[Encoded] | None = None


def make_task(task: TaskSection) -> Task:
    """The data layer's task object for the ``task`` section."""
    if task.kind == "classification":
        return ClassificationTask(task.template, task.label_column, task.label_words, task.max_length)
    return GenerationTask(task.source_template, task.target_template, task.max_length, task.max_target_length)


def load_data(
    data: DataSection, task: Task, tokenizer: Any, *, splits: tuple[str, ...] = ("train", "dev", "test")
) -> Data:
    """Load, rename and encode the configured splits (truncations are counted and warned about)."""
    encoded: dict[str, list[Encoded] | None] = {"train": [], "dev": None, "test": None}
    for split in splits:
        source = getattr(data, split)
        if source is None:
            continue
        rows = load_rows(
            source,
            split=getattr(data, f"{split}_split"),
            file_format=data.format,
            limit=getattr(data, f"{split}_limit"),
        )
        if data.rename:
            require_columns(rows, list(data.rename), where=f"data.{split} ({source}), for data.rename")
            rows = rows.rename_columns(data.rename)
        encoded[split], _ = encode_dataset(task, rows, tokenizer, where=f"data.{split} ({source})")
    return Data(**encoded)


def prompt_config(config: RunConfig, task: Task) -> SoftPromptConfig:
    """The method's config; ``init: text`` without ``init_text`` starts from the class labels' words.

    Lester et al. §3.2 ("class label" initialisation): each virtual token starts as the embedding
    of a label word, the words repeated to fill the prompt. Each word gets its leading space, so
    the prompt starts from the very tokens the verbalizer scores (" billing", not "b" + "illing").
    """
    prompt = config.prompt
    if getattr(prompt, "init", None) == "text" and not getattr(prompt, "init_text", None):
        words = "".join(" " + word.strip() for _, word in task.classes)
        prompt = prompt.model_copy(update={"init_text": words})
    return prompt.to_config()


def load_base(config: RunConfig, task: Task) -> tuple[Any, Any]:
    """The frozen ``(model, tokenizer)`` the run adapts: a causal LM, or — for an encoder family and a
    classification task — a sequence classifier with one (new) output per class."""
    name, dtype = config.model.name_or_path, DTYPES[config.model.dtype]
    kind = family_kind(name)
    if kind != "encoder":
        return load_base_model(name, kind=LOAD_KINDS[kind], dtype=dtype)
    if not isinstance(task, ClassificationTask):
        raise ValueError(
            f"{name} is an encoder: it classifies (task.kind: classification), it cannot generate"
        )
    return load_base_model(name, kind=LOAD_KINDS[kind], dtype=dtype, num_labels=len(task.classes))


def model_options(config: RunConfig, base: Any) -> dict[str, Any]:
    """Options of the model class beyond the prompt (encoders: ``pooling``)."""
    if model_shape(base).kind != "encoder":
        if config.model.pooling != "model":
            raise ValueError("model.pooling applies to encoders only")
        return {}
    return {"pooling": config.model.pooling}


def make_objective(model: PromptedModel, task: Task, tokenizer: Any) -> Objective:
    """The loss module for ``task``: verbalizer cross-entropy (causal LMs: at the answer position;
    encoder-decoders: at the first decoder step), the classifier head's cross-entropy (encoders), or
    target-token cross-entropy."""
    if isinstance(model, EncoderSoftPromptModel):
        return HeadClassificationObjective(model)
    seq2seq = isinstance(model, Seq2SeqSoftPromptModel)
    if isinstance(task, ClassificationTask):
        kind = Seq2SeqClassificationObjective if seq2seq else ClassificationObjective
        return kind(model, task.label_token_ids(tokenizer))
    return Seq2SeqGenerationObjective(model) if seq2seq else GenerationObjective(model)


def bare_objective(objective: Objective) -> Objective:
    """The same objective on the frozen model without any prompt (the zero-shot baseline)."""
    model = objective.model
    if isinstance(objective, HeadClassificationObjective):
        raise ValueError("an encoder's classifier head trains with the prompt: it has no zero-shot score")
    bare = type(model)(model.base_model, None, model.shape)
    if isinstance(objective, ClassificationObjective):  # and its seq2seq subclass
        return type(objective)(bare, objective.label_ids.tolist()).to(objective.label_ids.device)
    return type(objective)(bare)
