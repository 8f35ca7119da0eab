"""Reading bytes that a stranger may have made: regular files only, safetensors only, everything bounded.

Adapter files, ``peft`` folders, checkpoints and uploads to the server all come through here:

* :func:`read_regular_file` refuses FIFOs, devices, sockets, folders, symlink loops and dangling
  links from ``stat`` alone, before anything is opened (a FIFO would block a reader forever), and
  reads at most a size limit;
* :func:`load_json` parses strict JSON: nesting depth checked before the parser recurses,
  duplicated keys and ``NaN``/``Infinity`` refused;
* :func:`read_safetensors` checks a safetensors header by hand — tensor names, dtypes, shapes and
  byte ranges — before ``safetensors`` builds a tensor, and names a pickle (or a ``torch.save``
  zip) as what it is instead of unpickling it.

Every refusal is an :class:`~softprompt.files.errors.AdapterFileError`.

Examples:
    >>> from safetensors.torch import save_file
    >>> save_file({"x": torch.ones(2, 3)}, str(tmp_dir / "x.safetensors"), metadata={"k": "v"})
    >>> metadata, tensors = read_safetensors(tmp_dir / "x.safetensors")
    >>> metadata, tensors["x"].shape
    ({'k': 'v'}, torch.Size([2, 3]))
    >>> try:
    ...     load_json('{"a": 1, "a": 2}', "f.json", "the config")
    ... except RecordError as err:
    ...     print(str(err).splitlines()[0])
    f.json: the config key 'a' is given twice; expected each key once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickletools
import re
import stat
import struct
from collections.abc import Collection
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes

from softprompt.files.errors import (
    AdapterFileError,
    AdapterNotFoundError,
    CorruptFileError,
    RecordError,
    SpecialFileError,
    TensorError,
    UnsafeFileError,
)

# Adapters are kilobytes to a few hundred megabytes; checkpoints hold the optimiser state besides.
MAX_FILE_BYTES = 4 << 30
MAX_HEADER_BYTES = 8 << 20
MAX_JSON_DEPTH = 64
# Bytes per element of each safetensors dtype softprompt can be shown (others are refused by name).
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
# The dtypes a prompt or a task head may be stored in; others are refused, never cast.
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


# ------------------------------------------------------------------------------------------ files
def check_regular_file(path: str | os.PathLike) -> os.stat_result:
    """``stat`` of ``path`` if it is a regular file (symlinks followed); refuses anything else unopened."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            target = os.readlink(path)
            raise SpecialFileError(
                path,
                "the path",
                found_text=f"a symbolic link to {target!r}, which does not exist",
                expected="a regular file",
            ) from None
        raise AdapterNotFoundError(path, "the path", found_text="nothing", expected="a file") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SpecialFileError(
                path, "the path", found_text="a loop of symbolic links", expected="a regular file"
            ) from None
        raise _os_error(path, err) from None
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise SpecialFileError(path, "the path", found_text=kind, expected="a regular file")
    return info


def read_regular_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; anything else is refused before reading."""
    check_regular_file(path)
    try:
        # O_NONBLOCK: should the path turn into a FIFO between stat and open, open does not block.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise _os_error(path, err) from None
    with open(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SpecialFileError(
                path, "the path", found_text="no longer a regular file", expected="a regular file"
            )
        if info.st_size > max_bytes:
            raise AdapterFileError(
                path,
                "the file size",
                found_text=f"{info.st_size:,} bytes",
                expected=f"at most {max_bytes:,}",
                fix="this is not an adapter softprompt wrote (those are far smaller)",
            )
        return f.read(max_bytes + 1)[:max_bytes]


def _os_error(path, err: OSError) -> AdapterFileError:
    return AdapterFileError(
        path,
        "the file",
        found_text=f"unreadable ({err.strerror or err})",
        expected="a file this user can read",
        fix="check the path and its permissions",
    )


# ------------------------------------------------------------------------------------------- JSON
def load_json(
    text: str | bytes, path: str | os.PathLike, field: str, *, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Parse strict JSON read from ``path``; refuses deep nesting, duplicated keys, NaN and infinities."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorruptFileError(
                path,
                field,
                found_text=f"bytes that are not UTF-8 (at byte {err.start})",
                expected="UTF-8 JSON text",
            ) from None
    depth = json_depth(text)
    if depth > max_depth:
        raise RecordError(
            path, field, found_text=f"JSON nested {depth} deep", expected=f"at most {max_depth} levels"
        )
    try:
        return json.loads(
            text, object_pairs_hook=_unique_keys(path, field), parse_constant=_no_constant(path, field)
        )
    except json.JSONDecodeError as err:
        raise CorruptFileError(
            path, field, found_text=f"not valid JSON ({err})", expected="JSON text"
        ) from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        if isinstance(err, AdapterFileError):
            raise
        raise RecordError(
            path, field, found_text=f"unreadable JSON ({err})", expected="JSON of ordinary values"
        ) from None


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON ``text`` (strings skipped), without recursing."""
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", _STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _unique_keys(path, field):
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                # Readers disagree on which copy wins: refuse rather than pick one.
                raise RecordError(
                    path, f"{field} key {key!r}", found_text="given twice", expected="each key once"
                )
            seen[key] = value
        return seen

    return build


def _no_constant(path, field):
    def refuse(name: str) -> None:
        raise RecordError(
            path, field, found_text=name, expected="finite numbers only (JSON has no NaN or Infinity)"
        )

    return refuse


# ------------------------------------------------------------------------------------ safetensors
def read_safetensors(
    path: str | os.PathLike, *, dtypes: Collection[str] | None = None, max_bytes: int = MAX_FILE_BYTES
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a safetensors file, every header entry checked before any tensor is built.

    ``dtypes`` (safetensors names such as ``"F32"``) are the dtypes the caller accepts; others are
    refused by name instead of being cast.
    """
    data = read_regular_file(path, max_bytes)
    try:
        metadata, entries = parse_header(data, path)
    except CorruptFileError:
        _refuse_pickle(data, path)
        raise
    if dtypes is not None:
        for name, (dtype, _) in entries.items():
            if dtype not in dtypes:
                raise TensorError(
                    path,
                    f"tensor {name!r}",
                    found_text=f"of dtype {dtype}",
                    expected=f"one of {', '.join(dtypes)}",
                    fix="integer, bool, fp8 and complex numbers are not cast into a prompt: "
                    "save the prompt again as float32, float16 or bfloat16",
                )
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CorruptFileError(
            path, "the tensor data", found_text=f"unreadable ({err})", expected="safetensors data"
        ) from None
    return metadata, tensors


def parse_header(data: bytes, path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """``(metadata, {name: (dtype, shape)})`` of safetensors ``data``, with every byte range checked."""
    if len(data) < 8:
        raise CorruptFileError(
            path, "the file", found_text=f"{len(data)} bytes", expected="a safetensors file (8 bytes or more)"
        )
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise CorruptFileError(
            path,
            "the header length",
            found_text=f"{size:,} bytes",
            expected=f"at most {min(MAX_HEADER_BYTES, len(data) - 8):,} (the file is truncated, or not safetensors)",
        )
    header = load_json(data[8 : 8 + size], path, "the safetensors header")
    if not isinstance(header, dict):
        raise CorruptFileError(path, "the safetensors header", header, "a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFileError(path, "the safetensors __metadata__", metadata, "an object of strings")
    body = len(data) - 8 - size
    entries = {name: _check_entry(name, entry, body, path) for name, entry in header.items()}
    return metadata, entries


def _check_entry(name: str, entry: Any, body: int, path) -> tuple[str, tuple[int, ...]]:
    field = f"tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CorruptFileError(path, field, entry, "an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise TensorError(path, f"{field} dtype", dtype, f"one of {', '.join(DTYPE_SIZES)}")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(_is_count(d) for d in shape)):
        raise CorruptFileError(path, f"{field} shape", shape, "a list of at most 8 non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise CorruptFileError(path, f"{field} data_offsets", offsets, "two non-negative integers")
    begin, end = offsets
    if not begin <= end <= body or end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise CorruptFileError(
            path,
            f"{field} data_offsets",
            offsets,
            f"a range of {math.prod(shape) * DTYPE_SIZES[dtype]:,} bytes inside the {body:,} bytes of data "
            "(the file is truncated or its header damaged)",
        )
    return dtype, tuple(shape)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 48


def _refuse_pickle(data: bytes, path) -> None:
    """Name a pickle (or PyTorch's zip of one) as what it is; its opcodes are read, never run."""
    if data[:4] == b"PK\x03\x04":
        found = "a zip archive (what torch.save writes: its weights are a pickle)"
    elif _is_pickle(data):
        found = "a Python pickle"
    else:
        return
    raise UnsafeFileError(path, "the file", found_text=found, expected="a safetensors file")


def _is_pickle(data: bytes) -> bool:
    try:
        return any(opcode.name == "STOP" for opcode, _, _ in pickletools.genops(data[: 1 << 20]))
    except Exception:  # noqa: BLE001 - any malformed stream: not a pickle
        return False


# --------------------------------------------------------------------------------------- checksum
def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """``sha256:<hex>`` of the tensors' names, dtypes, shapes and bytes, in name order.

    It does not depend on how safetensors lays out the file, so it is computed before writing and
    checked after reading. It finds damage (a bad copy, flipped bits), not forgery: anyone who can
    edit a file can recompute it.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()}"


def check_checksum(tensors: dict[str, torch.Tensor], recorded: str, path, field: str) -> None:
    found = tensor_checksum(tensors)
    if found != recorded:
        raise CorruptFileError(
            path,
            "the tensor data",
            found_text=f"checksum {found[:19]}...",
            expected=f"the {field} {recorded[:19]}... the file was saved with",
        )
