"""One door in for saved prompts: an adapter file or a ``peft`` folder, checked against the model.

:func:`read_prompt` is what :func:`softprompt.load` (and so the task bank and the server's uploads)
reads through. Beyond what each format's reader checks on its own (special files, pickles, bounded
and typed records, dtypes, shapes, finite numbers, checksums; :mod:`~softprompt.files.adapter`,
:mod:`~softprompt.files.peft`), it refuses a prompt that does not fit the model: another family or
shape, a table of another width, a task head the model does not have.

Examples:
    >>> model = softprompt.wrap(base_model, softprompt.PrefixTuningConfig(num_virtual_tokens=3))
    >>> saved = read_prompt(model.save(tmp_dir / "task.safetensors"), model.shape)
    >>> saved.config.method, tuple(saved.table.shape), saved.head, saved.task
    ('prefix_tuning', (3, 64), {}, None)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from softprompt.families import ModelShape, UnsupportedModelError
from softprompt.files import peft
from softprompt.files.adapter import adapter_file, read_adapter
from softprompt.files.errors import WrongModelError
from softprompt.files.schema import check_same_model, config_from_record, split_head
from softprompt.methods import SoftPromptConfig, method_of

if TYPE_CHECKING:
    from softprompt.models import PromptedModel


@dataclass(frozen=True)
class SavedPrompt:
    """A saved prompt, checked to fit a model: everything :func:`softprompt.load` builds from.

    Attributes:
        config: the prompt's config (its init set to the method's ``reload_init``).
        table: the folded prompt, ``embeddings`` (P, E) or ``prefix`` (P, F), finite.
        head: a task head's tensors (``head.<module>.<parameter>``), checked by :func:`check_head`.
        options: keyword arguments of the model class the file records (e.g. ``pooling``).
        task: the task object the file records (template, label words...), or None.
        source: the file or folder read.
    """

    config: SoftPromptConfig
    table: torch.Tensor
    head: dict[str, torch.Tensor]
    options: dict[str, Any]
    task: dict[str, Any] | None
    source: Path


def read_prompt(path: str | os.PathLike, shape: ModelShape) -> SavedPrompt:
    """Read the adapter file or ``peft`` folder at ``path`` for a model of ``shape``, every check made.

    A folder holding both (``save_pretrained`` writes softprompt's file and a peft copy) is read
    from softprompt's file, which also carries the task and the model options.
    """
    if peft.is_peft_folder(path) and not adapter_file(path).is_file():
        source, options, task = Path(path), {}, None
        config, tensors, _ = peft.read_peft_folder(source, shape)
    else:
        source = adapter_file(path)
        record, tensors = read_adapter(source)
        check_same_model(record["base_model"], shape, source)
        config = config_from_record(record, source)
        options, task = record.get("model_options", {}), record.get("task")
    prompt, head = split_head(tensors)
    method = method_of(config)
    try:
        width = method.saved_width(config, shape)
    except UnsupportedModelError as err:  # e.g. prefix_sites="decoder" saved from a T5, loaded on a Llama
        raise WrongModelError(
            source,
            "config",
            found_text=f"{config} ({err})",
            expected=f"a {method.name} config this {shape.family} model takes",
        ) from None
    table = prompt[method.saves]
    if table.shape[1] != width:
        raise WrongModelError(
            source,
            f"tensor {method.saves!r}",
            found_text=f"of shape {tuple(table.shape)}",
            expected=f"({table.shape[0]}, {width}) for this {shape.family} model (was it made for another base model?)",
        )
    return SavedPrompt(config, table, head, options, task, source)


def check_head(head: dict[str, torch.Tensor], model: PromptedModel, source) -> None:
    """Refuse task-head tensors that ``model`` has no place for, or of another shape than its head's."""
    expected = split_head(model.adapter_tensors())[1]
    unknown = sorted(set(head) - set(expected))
    if unknown:
        raise WrongModelError(
            source,
            "the task-head tensors",
            found_text=f"{unknown}",
            expected=f"tensors of this {type(model.base_model).__name__}'s head: {sorted(expected) or 'it has none'}",
        )
    for name, tensor in head.items():
        if tensor.shape != expected[name].shape:
            raise WrongModelError(
                source,
                f"tensor {name!r}",
                found_text=f"of shape {tuple(tensor.shape)}",
                expected=f"{tuple(expected[name].shape)}, the shape of this model's head",
                fix="the head was trained for another number of labels: load it onto a model with that many "
                "(num_labels), or train a new head",
            )
