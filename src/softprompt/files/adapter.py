"""The adapter file: folded prompt tensors in safetensors, with a small JSON record.

One ``.safetensors`` file holds the trainable numbers and, in its ``__metadata__``, the JSON record
of what they are (method, the user's config, the base model's name and shape, a checksum of the
tensors; :mod:`softprompt.files.schema`). Files are written atomically
(:mod:`softprompt.files.atomic`) and read through :mod:`softprompt.files.container` — safetensors
only, never pickle — so that :func:`read_adapter` returns a record whose every field has its type
and tensors that are finite floats of the shape the method saves, or raises
:class:`~softprompt.files.errors.AdapterFileError` saying why not.

Tensor names: the folded prompt is ``embeddings`` (P, E) or ``prefix`` (P, F) — see
:mod:`softprompt.methods` — and a trained task head's weights are ``head.<module>.<parameter>``.

Examples:
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> record, tensors = read_adapter(model.save(tmp_dir / "task.safetensors"))
    >>> record["format_version"], record["checksum"][:7], tensors["embeddings"].shape
    (2, 'sha256:', torch.Size([4, 32]))
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from softprompt.files.atomic import atomic_write
from softprompt.files.container import (
    FLOAT_DTYPES,
    check_checksum,
    load_json,
    read_safetensors,
    tensor_checksum,
)
from softprompt.files.errors import AdapterFileError, RecordError
from softprompt.files.schema import (
    FORMAT_VERSION,
    HEAD_PREFIX,
    check_record,
    check_tensors,
    config_from_record,
    split_head,
)

METADATA_KEY = "softprompt"
ADAPTER_FILENAME = "softprompt.safetensors"

__all__ = [
    "ADAPTER_FILENAME",
    "HEAD_PREFIX",
    "AdapterFileError",
    "adapter_file",
    "read_adapter",
    "split_head",
    "write_adapter",
]


def adapter_file(path: str | os.PathLike) -> Path:
    """The adapter file to read at ``path``: ``ADAPTER_FILENAME`` inside a folder, else the path itself."""
    path = Path(path)
    return path / ADAPTER_FILENAME if path.is_dir() else path


def write_adapter(path: str | os.PathLike, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> Path:
    """Write ``tensors`` and the JSON ``record`` as one safetensors file; returns the file's path.

    ``path`` is a file, or a folder (an existing one, or a new path without a suffix) that gets
    ``ADAPTER_FILENAME``.
    """
    path = Path(path)
    target = path / ADAPTER_FILENAME if path.is_dir() or (not path.suffix and not path.exists()) else path
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    full = {"format_version": FORMAT_VERSION, **record, "checksum": tensor_checksum(contiguous)}
    metadata = {METADATA_KEY: json.dumps(full, sort_keys=True)}
    atomic_write(target, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))
    return target


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an adapter file: ``(record, tensors)``, both checked. Raises :class:`AdapterFileError` with the reason."""
    target = adapter_file(path)
    metadata, tensors = read_safetensors(target, dtypes=FLOAT_DTYPES)
    if METADATA_KEY not in metadata:
        raise RecordError(
            target,
            "the safetensors metadata",
            found_text=f"keys {sorted(metadata)}",
            expected=f"a {METADATA_KEY!r} record: this is a safetensors file but not a softprompt adapter",
            fix="give a file softprompt saved, or a peft adapter folder",
        )
    record = check_record(load_json(metadata[METADATA_KEY], target, "the softprompt record"), target)
    if "checksum" in record:
        check_checksum(tensors, record["checksum"], target, "checksum")
    table = check_tensors(tensors, config_from_record(record, target), target)
    dtype = str(table.dtype).removeprefix("torch.")
    if record["dtype"] != dtype:
        raise RecordError(target, "dtype", record["dtype"], f"{dtype!r}, the dtype of the saved prompt")
    return record, tensors
