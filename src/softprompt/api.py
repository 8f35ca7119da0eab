"""``wrap`` and ``load``: the two ways to get a soft-prompted model.

The model class follows the base model's kind (:mod:`softprompt.kinds`):
:class:`~softprompt.models.SoftPromptModel` for causal LMs,
:class:`~softprompt.models.Seq2SeqSoftPromptModel` for encoder-decoders (T5, BART) and
:class:`~softprompt.models.EncoderSoftPromptModel` for encoders (BERT...).

Examples:
    >>> config = softprompt.PromptTuningConfig(num_virtual_tokens=4, init="text", init_text=" yes no")
    >>> model = softprompt.wrap(base_model, config, tokenizer=tokenizer)
    >>> path = model.save(tmp_dir / "task.safetensors")
    >>> again = softprompt.load(base_model, path)
    >>> torch.equal(again.prompt.embeddings, model.prompt.embeddings)
    True
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from torch import nn

from softprompt.families import ModelShape, model_shape
from softprompt.files.errors import AdapterFileError, RecordError
from softprompt.files.validate import check_head, read_prompt
from softprompt.kinds import KINDS
from softprompt.methods import SoftPromptConfig, build_prompt, method_of
from softprompt.methods.multitask import read_task
from softprompt.models import PromptedModel


def wrap(base_model: nn.Module, config: SoftPromptConfig, tokenizer=None, **options: Any) -> PromptedModel:
    """Freeze ``base_model`` and attach a new trainable soft prompt described by ``config``.

    ``tokenizer`` is needed only for ``init="text"``. A classifier's new task head trains too.
    ``options`` go to the model class (encoders: ``pooling="mean"``) and are saved with the prompt.
    """
    shape = model_shape(base_model)
    # The model first: it refuses a head it cannot serve before the prompt's init runs the base model.
    model = _model_class(shape, options)(base_model, None, shape, **options)
    model.prompt = build_prompt(config, base_model, shape, tokenizer).to(base_model.device)
    return model


def load(base_model: nn.Module, path: str | os.PathLike, task: str | None = None) -> PromptedModel:
    """Load a saved prompt (a softprompt file, or a ``peft`` adapter folder) onto ``base_model``.

    The loaded prompt stays trainable, so it can start further training or another task. A saved
    task head is loaded into the base model's head, and the task the file records (if any) is the
    model's ``task``. Everything read is checked first (:mod:`softprompt.files.validate`): a file
    made for a model of another family or shape, a corrupt, malformed or unsafe file is refused with
    an :class:`~softprompt.files.errors.AdapterFileError` saying why — this is the one door for
    files from strangers too.

    ``task`` names one task of a multitask (MPT) file: it loads as an ordinary prompt-tuning model
    of that task's composed (P, E) prompt, which trains, saves and serves as any other (an unknown
    name is refused with the file's tasks). Without it a multitask file gives its shared prompt (the
    start MPT gives a new task); :func:`softprompt.transfer.load_multitask` reads all of it.
    """
    shape = model_shape(base_model)
    if task is not None:
        prompt = read_task(path, shape, task).to(base_model.device)
        return KINDS[shape.kind].model_class(base_model, prompt, shape)
    saved = read_prompt(path, shape)
    prompt = method_of(saved.config).rebuild(saved.config, saved.table, shape)
    cls = _model_class(shape, saved.options, saved.source)
    try:
        model = cls(base_model, prompt.to(base_model.device), shape, **saved.options)
    except ValueError as err:  # an option's value the class refuses (e.g. pooling="max")
        if not saved.options:
            raise
        raise RecordError(
            saved.source, "model_options", saved.options, f"options a {cls.__name__} takes ({err})"
        ) from None
    if saved.head:
        check_head(saved.head, model, saved.source)
        model.load_head(saved.head, saved.source)
    model.task = saved.task
    return model


def _model_class(shape: ModelShape, options: dict[str, Any], path=None) -> type[PromptedModel]:
    """The model class for ``shape``, checked to take ``options`` (a file's, when ``path`` is set)."""
    cls = KINDS[shape.kind].model_class
    # Options are the constructor's keyword arguments with defaults, never the model or prompt itself.
    takes = {
        name for name, p in inspect.signature(cls.__init__).parameters.items() if p.default is not p.empty
    }
    unknown = sorted(set(options) - takes)
    if unknown and path is not None:
        raise AdapterFileError(
            path,
            "model_options",
            found_text=f"the options {unknown}",
            expected=f"options a {cls.__name__} takes: {sorted(takes)}",
        )
    if unknown:
        raise TypeError(f"{cls.__name__} ({shape.kind} models) takes no option {', '.join(unknown)}")
    return cls
