"""Writes that are whole or absent: a file or a folder is built beside its target and renamed over it.

A crash (or ``kill -9``) at any moment leaves either the old target or the new one, never half of
one, because ``os.replace`` is atomic on one file system.

Examples:
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> atomic_write(target, lambda tmp: tmp.write_text("hello"))
    >>> target.read_text()
    'hello'
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)``, then move the finished file over ``path`` in one step."""
    path = Path(path)
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


def atomic_folder(target: Path, build: Callable[[Path], object]) -> None:
    """Fill a temp folder beside ``target`` with ``build`` and rename it to ``target``.

    A crash or an exception in ``build`` leaves no half-written ``target`` behind, so "the folder
    exists" always means "the folder is complete". A folder that another process finished first
    wins; ours is then discarded.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)  # atomic on one file system; fails if target is a non-empty folder
        except OSError:
            if not target.is_dir():
                raise
            logger.info("%s was written concurrently; keeping that copy", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
