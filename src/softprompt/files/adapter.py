"""The adapter file: folded prompt tensors in safetensors, with a small JSON header.

One ``.safetensors`` file holds the trainable numbers and, in its ``__metadata__``, the JSON record
of what they are (method, the user's config, the base model's name and shape). Files are written
atomically (:mod:`softprompt.files.atomic`) so a crash never leaves half a file where a good one was,
and read with safetensors only — never pickle.

Tensor names: the folded prompt is ``embeddings`` (P, E) or ``prefix`` (P, F) — see
:mod:`softprompt.methods` — and a trained task head's weights are ``head.<module>.<parameter>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from softprompt.files.atomic import atomic_write

FORMAT_VERSION = 1
METADATA_KEY = "softprompt"
ADAPTER_FILENAME = "softprompt.safetensors"
# Tensors of a trained task head are saved as ``head.<module name>.<parameter>``.
HEAD_PREFIX = "head."


class AdapterFileError(ValueError):
    """An adapter file that cannot be used: corrupt, foreign, of an unknown version, or for another model."""


def adapter_file(path: str | os.PathLike) -> Path:
    """The adapter file for ``path``: the path itself, or ``ADAPTER_FILENAME`` inside a folder."""
    path = Path(path)
    return path / ADAPTER_FILENAME if path.is_dir() or not path.suffix else path


def split_head(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(prompt tensors, task-head tensors)`` of an adapter's tensors (head tensors keep their ``head.`` names)."""
    head = {name: t for name, t in tensors.items() if name.startswith(HEAD_PREFIX)}
    return {name: t for name, t in tensors.items() if name not in head}, head


def write_adapter(path: str | os.PathLike, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> Path:
    """Write ``tensors`` and the JSON ``record`` as one safetensors file; returns the file's path."""
    target = adapter_file(path)
    metadata = {METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION, **record}, sort_keys=True)}
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    atomic_write(target, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))
    return target


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an adapter file: ``(record, tensors)``. Raises :class:`AdapterFileError` with the reason."""
    target = adapter_file(path)
    if not target.is_file():
        raise FileNotFoundError(f"no softprompt adapter at {target}")
    try:
        from safetensors import safe_open

        with safe_open(str(target), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(target))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFileError(
            f"{target} is truncated or corrupt and cannot be read ({err}); save it again"
        ) from err
    if METADATA_KEY not in metadata:
        raise AdapterFileError(
            f"{target} is a safetensors file but not a softprompt adapter (no softprompt header)"
        )
    try:
        record = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise AdapterFileError(f"{target} has a corrupt softprompt header: {err}") from err
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise AdapterFileError(
            f"{target} has adapter format version {version!r}; this softprompt reads version {FORMAT_VERSION}. "
            "Upgrade softprompt or re-export the adapter."
        )
    return record, tensors
