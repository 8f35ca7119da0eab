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

import dataclasses
import inspect
import os
from typing import Any

from torch import nn

from softprompt.families import ModelShape, model_shape
from softprompt.files import peft as peft_files
from softprompt.files.adapter import AdapterFileError, read_adapter, split_head
from softprompt.kinds import KINDS
from softprompt.methods import METHODS, SoftPromptConfig, build_prompt, method_of
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


def load(base_model: nn.Module, path: str | os.PathLike) -> PromptedModel:
    """Load a saved prompt (a softprompt file, or a ``peft`` adapter folder) onto ``base_model``.

    The loaded prompt stays trainable, so it can start further training or another task. A saved
    task head is loaded into the base model's head. Refuses, with the reason, a file made for a
    model of another family or shape, or a corrupt file.
    """
    shape = model_shape(base_model)
    options: dict[str, Any] = {}
    if peft_files.is_peft_folder(path):
        config, tensors, _ = peft_files.read_peft_folder(path, shape)
    else:
        record, tensors = read_adapter(path)
        _check_same_model(record.get("base_model", {}), shape, path)
        config = _config_from_record(record, path)
        options = record.get("model_options", {})
    tensors, head = split_head(tensors)
    method = method_of(config)
    table = _saved_table(tensors, config, shape, path)
    prompt = method.rebuild(config, table, shape)
    model = _model_class(shape, options, path)(base_model, prompt.to(base_model.device), shape, **options)
    if head:
        model.load_head(head, path)
    return model


def _model_class(shape: ModelShape, options: dict[str, Any], path=None) -> type[PromptedModel]:
    """The model class for ``shape``, checked to take ``options`` (a file's, when ``path`` is set)."""
    cls = KINDS[shape.kind].model_class
    unknown = sorted(set(options) - set(inspect.signature(cls.__init__).parameters) - {"self"})
    if unknown and path is not None:
        raise AdapterFileError(f"{path} asks for model options {unknown} that a {cls.__name__} does not take")
    if unknown:
        raise TypeError(f"{cls.__name__} ({shape.kind} models) takes no option {', '.join(unknown)}")
    return cls


def _config_from_record(record: dict[str, Any], path) -> SoftPromptConfig:
    name = record.get("method")
    if name not in METHODS:
        raise AdapterFileError(f"{path} holds an unknown method {name!r}; known: {', '.join(METHODS)}")
    method = METHODS[name]
    known = {f.name for f in dataclasses.fields(method.config)}
    choices = record.get("config", {})
    unknown = sorted(set(choices) - known)
    if unknown:
        raise AdapterFileError(
            f"{path} has config keys {unknown} this softprompt does not know; upgrade softprompt"
        )
    return method.reload_config(choices)


def _check_same_model(saved: dict[str, Any], shape: ModelShape, path) -> None:
    expected = shape.fingerprint()
    differences = [
        f"{key}: file {saved.get(key)!r}, model {value!r}"
        for key, value in expected.items()
        if saved.get(key) != value
    ]
    if differences:
        made_for = saved.get("name_or_path") or saved.get("family")
        raise AdapterFileError(
            f"{path} was made for another base model ({made_for}); it does not fit this {shape.family} model: "
            + "; ".join(differences)
        )


def _saved_table(tensors: dict, config: SoftPromptConfig, shape: ModelShape, path):
    """The file's one prompt tensor, checked to be what the method saves, in this model's shape."""
    method = method_of(config)
    if set(tensors) != {method.saves}:
        raise AdapterFileError(
            f"{path} holds tensors {sorted(tensors)}; a {method.name} prompt is saved as '{method.saves}'"
        )
    table = tensors[method.saves]
    expected = (config.num_virtual_tokens, method.saved_width(config, shape))
    if tuple(table.shape) != expected:
        raise AdapterFileError(
            f"{path}: {method.saves} has shape {tuple(table.shape)}, but this {shape.family} model needs "
            f"{expected} (was it made for another base model?)"
        )
    return table
