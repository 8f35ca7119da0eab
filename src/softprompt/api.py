"""``wrap`` and ``load``: the two ways to get a soft-prompted model.

The model class follows the base model's kind (``ModelShape.kind``, from ``families.py``):
:class:`~softprompt.model.SoftPromptModel` for causal LMs,
:class:`~softprompt.seq2seq.Seq2SeqSoftPromptModel` for encoder-decoders (T5, BART) and
:class:`~softprompt.encoder.EncoderSoftPromptModel` for encoders (BERT...).

Example:
    >>> model = softprompt.wrap(base, softprompt.PromptTuningConfig(init="text", init_text="yes no"), tokenizer=tok)
    >>> model.save("task.safetensors")
    >>> again = softprompt.load(base, "task.safetensors")
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

import torch
from torch import nn

from softprompt import peft_format
from softprompt.encoder import HEAD_PREFIX, EncoderSoftPromptModel
from softprompt.families import ModelShape, model_shape
from softprompt.io import AdapterFileError, read_adapter
from softprompt.methods import METHODS, SoftPromptConfig, build_prompt, plain_prompt
from softprompt.model import PromptedModel, SoftPromptModel
from softprompt.seq2seq import Seq2SeqSoftPromptModel

# The model class for each kind of base model.
MODEL_CLASSES: dict[str, type[PromptedModel]] = {
    "causal": SoftPromptModel,
    "seq2seq": Seq2SeqSoftPromptModel,
    "encoder": EncoderSoftPromptModel,
}


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
    if peft_format.is_peft_folder(path):
        config, tensors, _ = peft_format.read_peft_folder(path, shape)
    else:
        record, tensors = read_adapter(path)
        _check_same_model(record.get("base_model", {}), shape, path)
        config = _config_from_record(record, path)
        options = record.get("model_options", {})
    head = {name: tensors.pop(name) for name in list(tensors) if name.startswith(HEAD_PREFIX)}
    _check_tensors(tensors, config, shape, path)
    prompt = plain_prompt(config, tensors, shape)
    model = _model_class(shape, options, path)(base_model, prompt.to(base_model.device), shape, **options)
    if head:
        if not isinstance(model, EncoderSoftPromptModel):
            raise AdapterFileError(f"{path} holds a task head, but this {shape.family} model has none")
        model.load_head(head, path)
    return model


def _model_class(shape: ModelShape, options: dict[str, Any], path=None) -> type[PromptedModel]:
    """The model class for ``shape``, checked to take ``options`` (a file's, when ``path`` is set)."""
    cls = MODEL_CLASSES[shape.kind]
    unknown = sorted(set(options) - set(inspect.signature(cls.__init__).parameters) - {"self"})
    if unknown and path is not None:
        raise AdapterFileError(f"{path} asks for model options {unknown} that a {cls.__name__} does not take")
    if unknown:
        raise TypeError(f"{cls.__name__} ({shape.kind} models) takes no option {', '.join(unknown)}")
    return cls


def _config_from_record(record: dict[str, Any], path) -> SoftPromptConfig:
    method = record.get("method")
    if method not in METHODS:
        raise AdapterFileError(f"{path} holds an unknown method {method!r}; known: {', '.join(METHODS)}")
    config_cls = METHODS[method].config
    known = {f.name for f in dataclasses.fields(config_cls)}
    choices = record.get("config", {})
    unknown = sorted(set(choices) - known)
    if unknown:
        raise AdapterFileError(
            f"{path} has config keys {unknown} this softprompt does not know; upgrade softprompt"
        )
    # The prompt's numbers come from the file, so the init that made them is not re-run.
    return config_cls(**{**choices, "init": "zero" if method == "prefix_tuning" else "random"})


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


def _check_tensors(
    tensors: dict[str, torch.Tensor], config: SoftPromptConfig, shape: ModelShape, path
) -> None:
    if set(tensors) not in ({"embeddings"}, {"prefix"}):
        raise AdapterFileError(f"{path} holds tensors {sorted(tensors)}; expected 'embeddings' or 'prefix'")
    name, table = next(iter(tensors.items()))
    if name == "embeddings":
        width = shape.embed_dim
    else:
        width = shape.prefix_layout(getattr(config, "prefix_sites", "all")).prefix_width
    expected = (config.num_virtual_tokens, width)
    if tuple(table.shape) != expected:
        raise AdapterFileError(
            f"{path}: {name} has shape {tuple(table.shape)}, but this {shape.family} model needs {expected} "
            "(was it made for another base model?)"
        )
