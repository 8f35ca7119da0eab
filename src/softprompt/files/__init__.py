"""Everything softprompt reads from or writes to disk: adapter files, ``peft`` folders, atomic writes.

* :mod:`~softprompt.files.adapter` — softprompt's adapter file (safetensors + a JSON record);
* :mod:`~softprompt.files.peft` — ``peft`` prompt-learning adapter folders, both ways;
* :mod:`~softprompt.files.atomic` — writes that leave the old or the new file, never half of one.
"""

from softprompt.files.adapter import (
    ADAPTER_FILENAME,
    HEAD_PREFIX,
    AdapterFileError,
    read_adapter,
    write_adapter,
)
from softprompt.files.atomic import atomic_folder, atomic_write

__all__ = [
    "ADAPTER_FILENAME",
    "HEAD_PREFIX",
    "AdapterFileError",
    "atomic_folder",
    "atomic_write",
    "read_adapter",
    "write_adapter",
]
