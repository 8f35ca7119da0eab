"""The adapter file: folded prompt tensors in safetensors, with a small JSON header.

One ``.safetensors`` file holds the trainable numbers and, in its ``__metadata__``, the JSON record
of what they are (method, the user's config, the base model's name and shape). Files are written
atomically (temp file + ``os.replace``) so a crash never leaves half a file where a good one was,
and read with safetensors only — never pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
METADATA_KEY = "softprompt"
ADAPTER_FILENAME = "softprompt.safetensors"


class AdapterFileError(ValueError):
    """An adapter file that cannot be used: corrupt, foreign, of an unknown version, or for another model."""


def adapter_file(path: str | os.PathLike) -> Path:
    """The adapter file for ``path``: the path itself, or ``ADAPTER_FILENAME`` inside a folder."""
    path = Path(path)
    return path / ADAPTER_FILENAME if path.is_dir() or not path.suffix else path


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then move the finished file over ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
