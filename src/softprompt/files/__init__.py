"""Everything softprompt reads from or writes to disk: adapter files, ``peft`` folders, atomic writes.

* :mod:`~softprompt.files.adapter` — softprompt's adapter file (safetensors + a JSON record);
* :mod:`~softprompt.files.peft` — ``peft`` prompt-learning adapter folders, both ways;
* :mod:`~softprompt.files.validate` — the one door saved prompts come in by, checked against the model;
* :mod:`~softprompt.files.schema` — the adapter record's typed, bounded fields;
* :mod:`~softprompt.files.container` — untrusted bytes: regular files, strict JSON, safetensors headers;
* :mod:`~softprompt.files.errors` — :class:`AdapterFileError` and a subclass per cause of refusal;
* :mod:`~softprompt.files.atomic` — writes that leave the old or the new file, never half of one.
"""

from softprompt.files.adapter import (
    ADAPTER_FILENAME,
    HEAD_PREFIX,
    read_adapter,
    write_adapter,
)
from softprompt.files.atomic import atomic_folder, atomic_write, replace_folder
from softprompt.files.errors import (
    AdapterFileError,
    AdapterNotFoundError,
    CorruptFileError,
    RecordError,
    SpecialFileError,
    TensorError,
    UnsafeFileError,
    VersionError,
    WrongModelError,
)

__all__ = [
    "ADAPTER_FILENAME",
    "HEAD_PREFIX",
    "AdapterFileError",
    "AdapterNotFoundError",
    "CorruptFileError",
    "RecordError",
    "SpecialFileError",
    "TensorError",
    "UnsafeFileError",
    "VersionError",
    "WrongModelError",
    "atomic_folder",
    "atomic_write",
    "read_adapter",
    "replace_folder",
    "write_adapter",
]
