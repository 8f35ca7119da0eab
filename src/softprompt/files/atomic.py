"""Writes that are whole or absent: a file or a folder is built beside its target and renamed over it.

A crash (or ``kill -9``) at any moment leaves either the old target or the new one, never half of
one: ``os.replace`` is atomic on one file system, and the file (then its folder) is fsynced so the
rename survives a power cut too. Being polite about it:

* a file is written inside a temp folder named ``.<target>.<host>-<pid>.<random>.tmp``; a failed write
  removes it, and the next write to the same target removes those a killed process left (its pid no
  longer runs), with whatever the writer had put in them;
* the new file keeps the mode of the file it replaces (a shared 0644 file stays 0644); a new file
  follows the umask, as ``open`` does;
* a target that is a symlink is written through (the link stays, its file is replaced).

:func:`replace_folder` swaps a whole folder in one step (``peft`` exports: weights and config
never disagree); :func:`atomic_folder` publishes a folder once (first finished copy wins).

Examples:
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
    >>> atomic_write(target, lambda tmp: tmp.write_text("hello"))
    >>> target.read_text()
    'hello'
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

# Temp names of softprompt before it named their writer: removed once they are clearly abandoned.
_LEGACY_AGE_SECONDS = 3600


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)``, then move the finished file over ``path`` in one step."""
    path = _through_links(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    # The file is written inside a temp folder of its own: whatever the writer itself puts beside the
    # file it writes (safetensors writes through a ``.tmpXXXXXX`` of its own) goes with that folder.
    folder = _temp_name(path, ".tmp")
    os.mkdir(folder, 0o700)
    tmp = folder / path.name
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # 0o666 & ~umask, as open() does
        write(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))  # the replaced file's mode stays
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _fsync(path.parent)


def replace_folder(target: str | os.PathLike, build: Callable[[Path], object]) -> None:
    """Fill a temp folder with ``build`` and swap it for ``target`` in one step.

    Files of an existing ``target`` that ``build`` does not write are carried over (hard links), so
    only what ``build`` writes changes. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``;
    elsewhere the old folder is moved aside first and, should the process die before the new one
    is in place, moved back by the next write.
    """
    target = _through_links(Path(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} is a file; a folder is written there")
    tmp = _temp_name(target, ".tmp")
    os.mkdir(tmp, 0o777)  # the umask applies
    try:
        build(tmp)
        if target.is_dir():
            _link_missing(target, tmp)
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        for file in [tmp, *tmp.rglob("*")]:
            _fsync(file)
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp)  # the old folder, now at the temp name
        else:
            aside = _temp_name(target, ".old")
            os.rename(target, aside)
            os.rename(tmp, target)
            shutil.rmtree(aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(target.parent)


def atomic_folder(target: Path, build: Callable[[Path], object]) -> None:
    """Fill a temp folder beside ``target`` with ``build`` and rename it to ``target``.

    A crash or an exception in ``build`` leaves no half-written ``target`` behind, so "the folder
    exists" always means "the folder is complete". A folder that another process finished first
    wins; ours is then discarded.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = _temp_name(target, ".tmp")
    os.mkdir(tmp, 0o777)
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
    _fsync(target.parent)


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temp files and folders that killed writers of ``target`` left beside it; returns them.

    A temp whose writer still runs (same host, live pid) is left alone. A folder moved aside by a
    swap that never finished is moved back when ``target`` is missing.
    """
    target = Path(target)
    ours = re.compile(rf"\.{re.escape(target.name)}\.(?P<host>[\w-]*)-(?P<pid>\d+)\.\w+\.(?P<kind>tmp|old)")
    legacy = re.compile(rf"\.{re.escape(target.name)}\.(\w{{8}}\.tmp|tmp-\w{{8}})")
    removed = []
    try:
        siblings = sorted(target.parent.iterdir(), key=lambda p: p.name)
    except OSError:
        return removed
    for entry in siblings:
        match = ours.fullmatch(entry.name)
        if match:
            if match["host"] != _host() or _running(int(match["pid"])):
                continue  # a writer that runs, or runs on another machine (whose pids this one cannot see)
            if match["kind"] == "old" and not os.path.lexists(target):
                os.rename(entry, target)  # a swap died between its two renames: the old folder returns
                logger.warning("restored %s from %s (an interrupted write)", target, entry.name)
                continue
        elif not (
            legacy.fullmatch(entry.name) and time.time() - entry.lstat().st_mtime > _LEGACY_AGE_SECONDS
        ):
            continue
        _remove(entry)
        removed.append(entry)
    if removed:
        logger.info(
            "removed %d unfinished temp file(s) of %s left by an interrupted write", len(removed), target
        )
    return removed


# ----------------------------------------------------------------------------------------- helpers
def _temp_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{_host()}-{os.getpid()}.{secrets.token_hex(4)}{kind}")


def _host() -> str:
    return re.sub(r"[^\w-]", "-", socket.gethostname())


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:
        return False
    return True


def _through_links(path: Path) -> Path:
    """The file a symlink points to (so writing keeps the link), or ``path`` itself."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _link_missing(old: Path, new: Path) -> None:
    """Hard-link (or copy) into ``new`` what ``old`` holds and ``new`` does not."""
    for entry in old.iterdir():
        if os.path.lexists(new / entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, new / entry.name)


def _link_or_copy(source, destination) -> None:
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, destination, follow_symlinks=False)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; a file system that cannot is skipped."""
    if path.is_symlink():
        return
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. folders cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    renameat2 = getattr(_LIBC, "renameat2", None) if _LIBC is not None else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or a file system without it
        return False
    raise OSError(code, os.strerror(code), str(b))


def _load_libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # no C library to ask (e.g. Windows)
        return None


_LIBC = _load_libc()
