"""The tasks a server serves: loaded from adapter files at start, added and removed while it runs.

Every task goes through the same door, :meth:`TaskRegistry.add`: the file is read by
:func:`softprompt.load` (safetensors only; a file made for another base model, a corrupt file or a
pickle is refused with the reason), the engine prepares it (or refuses it, e.g. prefix tuning under
vLLM), and only then does the name point at it. A refused file changes nothing; a request already
running keeps the prompt it started with.

Example:
    >>> from softprompt.bank import TaskBank
    >>> from softprompt.serve.scheduler import LocalEngine
    >>> bank = TaskBank(base_model)
    >>> registry = TaskRegistry(bank, LocalEngine(bank, tokenizer, name="tiny"))
    >>> path = softprompt.wrap(base_model, softprompt.PrefixTuningConfig(num_virtual_tokens=2)).save(tmp_dir / "t.safetensors")
    >>> registry.add_file("topic", path).method
    'prefix_tuning'
    >>> try:
    ...     registry.add_bytes("broken", b"not an adapter")
    ... except TaskRefused as refused:
    ...     print(refused)  # doctest: +ELLIPSIS
    the uploaded file: the header length is ... bytes; expected at most 6 (the file is truncated, or not safetensors).
    The file is damaged (an interrupted copy or download?): copy it again, or save it again.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import softprompt
from softprompt.bank import TaskBank, TaskInfo
from softprompt.models import PromptedModel
from softprompt.serve.engine import Engine

# Task names go into URLs and the ``model`` field: letters, digits and . _ - only.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class TaskRefused(ValueError):
    """A task that cannot be added, with the reason the client or operator can act on."""


class UnknownTask(KeyError):
    """A name that is neither a task nor the bare model."""

    def __str__(self) -> str:
        return self.args[0]


class TaskRegistry:
    """Named tasks on one frozen base model, each with what its engine prepared for it."""

    def __init__(self, bank: TaskBank, engine: Engine) -> None:
        self.bank, self.engine = bank, engine
        self._prepared: dict[str, Any] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return list(self._prepared)

    def info(self) -> dict[str, TaskInfo]:
        with self._lock:
            return {info.name: info for info in self.bank.info()}

    def prepared(self, name: str | None) -> Any:
        """What the engine needs to run ``name`` (``None`` or the bare model's name: nothing)."""
        if name is None or name == self.engine.name:
            return None
        with self._lock:
            if name not in self._prepared:
                known = ", ".join([self.engine.name, *self._prepared])
                raise UnknownTask(f"no model {name!r}; this server has: {known}")
            return self._prepared[name]

    def add(self, name: str, model: PromptedModel) -> TaskInfo:
        """Add (or replace) task ``name``: a prompted model on this registry's base model."""
        self._check_name(name)
        try:
            prepared = self.engine.prepare(model)
            with self._lock:
                self.bank.add(name, model, replace=True)  # refuses a model made for another base model
                self._prepared[name] = prepared
                return next(info for info in self.bank.info() if info.name == name)
        except ValueError as err:
            raise TaskRefused(str(err)) from err

    def add_file(
        self, name: str, path: str | os.PathLike, source: str | None = None, task: str | None = None
    ) -> TaskInfo:
        """Add (or replace) task ``name`` from an adapter file or folder on this machine; ``task`` names
        one task of a multitask (MPT) file, served as its composed prompt."""
        self._check_name(name)
        try:
            model = softprompt.load(self.bank.base_model, path, task=task)
        except (ValueError, FileNotFoundError, KeyError) as err:  # AdapterFileError is a ValueError
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            if source is not None:  # never show a client where the server keeps its files
                message = message.replace(str(path), source)
            raise TaskRefused(message) from err
        return self.add(name, model)

    def add_bytes(self, name: str, data: bytes, task: str | None = None) -> TaskInfo:
        """Add (or replace) task ``name`` from an uploaded adapter file's bytes (``task``: as in :meth:`add_file`)."""
        self._check_name(name)
        with tempfile.TemporaryDirectory(prefix="softprompt-upload-") as folder:
            path = Path(folder) / "adapter.safetensors"
            path.write_bytes(data)
            return self.add_file(name, path, source="the uploaded file", task=task)

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self._prepared:
                raise UnknownTask(f"no task {name!r}; tasks: {', '.join(self._prepared) or 'none'}")
            self.bank.remove(name)
            del self._prepared[name]

    def _check_name(self, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise TaskRefused(
                f"task name {name!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        if name == self.engine.name:
            raise TaskRefused(f"{name!r} is the bare model's name; choose another task name")
