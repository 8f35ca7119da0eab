"""Load the rows of one split: local files, ``save_to_disk`` folders, hub data sets, builder names.

* a local ``.jsonl``/``.json``, ``.csv`` or ``.tsv`` file is read with the packaged ``datasets``
  builders (TSV without quoting, as GLUE writes it; "NA" and "null" stay text);
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` is read with
  ``datasets.load_from_disk`` (a ``DatasetDict``'s split by name);
* anything else goes to ``datasets.load_dataset`` with its options: a hub name with a subset
  (``glue`` / ``sst2``), a split, a revision; a builder name (``json``, ``csv``, ``parquet``, ``text``)
  or a folder of data files with ``data_files``. Hub data sets need network (or their cache).

Every failure is a :class:`DataError` (or ``FileNotFoundError`` for a missing file) that says which
source failed and why. ``streaming=True`` gives a ``datasets.IterableDataset`` that reads rows as
they are consumed.

Examples:
    >>> path = tmp_dir / "train.jsonl"
    >>> _ = path.write_text('{"text": "a gem", "label": 1}\\n{"text": "dull", "label": 0}\\n')
    >>> load_rows(path, limit=1).to_list()
    [{'text': 'a gem', 'label': 1}]
    >>> datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(tmp_dir / "saved")
    >>> load_rows(tmp_dir / "saved").num_rows
    2
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets

# Extension -> (packaged builder, extra builder options).
# TSV: quoting is off because GLUE-style TSVs hold bare quote characters inside sentences.
# CSV/TSV: keep_default_na=False so words like "NA", "null" or "None" stay text, not NaN.
_FORMATS: dict[str, tuple[str, dict]] = {
    "jsonl": ("json", {}),
    "json": ("json", {}),
    "csv": ("csv", {"keep_default_na": False}),
    "tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False}),
}
SUPPORTED_FORMATS: tuple[str, ...] = tuple(_FORMATS)

Rows = datasets.Dataset | datasets.IterableDataset
DataFiles = str | list[str] | dict[str, str | list[str]]


class DataError(ValueError):
    """Rows that cannot be loaded or used as asked; the message names the source and the reason."""


def load_rows(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    file_format: str | None = None,
    limit: int | None = None,
    subset: str | None = None,
    revision: str | None = None,
    data_files: DataFiles | None = None,
    streaming: bool = False,
) -> Rows:
    """Load one split of a data set as a ``datasets.Dataset`` (an ``IterableDataset`` when streaming).

    Args:
        source: a local data file, a ``save_to_disk`` folder, a hub data set name, a ``datasets``
            builder name (``json``, ``csv``, ``parquet``...) or a folder of data files.
        split: the split to load (default "train"); a local file or saved ``Dataset`` is one split.
        file_format: read a local file as this format ("jsonl", "json", "csv", "tsv") whatever its extension.
        limit: keep only the first ``limit`` rows.
        subset: the hub data set's configuration ("sst2" of "glue").
        revision: the hub data set's branch, tag or commit.
        data_files: files for a builder name or a hub data set, as ``datasets.load_dataset`` takes them.
        streaming: read rows lazily as they are consumed (an ``IterableDataset``).

    Raises:
        FileNotFoundError: a local file (known extension or ``file_format`` given) does not exist.
        DataError: anything else: unknown format, a file that does not parse, no rows, an unknown split
            or subset, a hub data set that cannot be reached, options that do not apply to the source.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of rows, got {limit}")
    hub_options = {"subset": subset, "revision": revision, "data_files": data_files}
    fmt = _local_format(source, file_format)
    if fmt is not None or _is_saved(Path(source)):
        given = [name for name, value in hub_options.items() if value is not None]
        if given:
            raise DataError(
                f"{', '.join(given)} apply to hub data sets and builder names, not to {os.fspath(source)!r}"
            )
        rows = (
            _load_file(os.fspath(source), fmt, streaming)
            if fmt
            else _load_saved(Path(source), split, streaming)
        )
    else:
        rows = _load_dataset(str(source), split or "train", streaming=streaming, **hub_options)
    if not streaming and len(rows) == 0:
        raise DataError(f"data set {os.fspath(source)!r} has no rows")
    return first_rows(rows, limit)


def first_rows(rows: Rows, limit: int | None) -> Rows:
    """The first ``limit`` rows (all for None), of a data set or a stream.

    Examples:
        >>> first_rows(datasets.Dataset.from_dict({"x": [1, 2, 3]}), 2).to_dict()
        {'x': [1, 2]}
    """
    if limit is None:
        return rows
    if isinstance(rows, datasets.IterableDataset):
        return rows.take(limit)
    return rows.select(range(min(limit, len(rows))))


def require_columns(ds: Rows, names: Iterable[str], *, where: str = "data set") -> None:
    """Raise if any of `names` is not a column of `ds`, naming it and listing the available ones.

    Examples:
        >>> ds = datasets.Dataset.from_dict({"sentence": ["hi"], "label": [1]})
        >>> require_columns(ds, ["sentence", "label"], where="train data")
        >>> require_columns(ds, ["text"], where="train data")
        Traceback (most recent call last):
        ...
        softprompt.data.sources.DataError: train data has no column 'text'; available columns: ['sentence', 'label']
    """
    if ds.column_names is None:  # a stream whose columns are known only from its rows
        return
    missing = [n for n in names if n not in ds.column_names]
    if missing:
        what = ", ".join(repr(n) for n in missing)
        plural = "s" if len(missing) > 1 else ""
        raise DataError(f"{where} has no column{plural} {what}; available columns: {ds.column_names}")


def _local_format(source: str | os.PathLike, file_format: str | None) -> str | None:
    """The local format of `source`, or None if it is not a local data file."""
    path = Path(source)
    if file_format is not None:
        fmt = file_format.lower().lstrip(".")
        if fmt not in _FORMATS:
            raise DataError(f"unknown file_format {file_format!r}; supported: {list(SUPPORTED_FORMATS)}")
    else:
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in _FORMATS:
            if path.is_file():
                raise DataError(
                    f"cannot read {os.fspath(source)!r}: unknown extension {path.suffix!r}; "
                    f"supported: {['.' + f for f in SUPPORTED_FORMATS]} (or pass file_format=)"
                )
            return None  # a hub name, a builder name, or a folder
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {os.fspath(source)!r}")
    return fmt


def _is_saved(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_file(path: str, fmt: str, streaming: bool) -> Rows:
    """Read a local file with the packaged builder for `fmt`."""
    if os.path.getsize(path) == 0:
        # An empty JSON Lines file makes the json builder raise a bare StopIteration.
        raise DataError(f"data set {path!r} has no rows")
    builder, options = _FORMATS[fmt]
    try:
        # A local file always lands in the builder's single "train" split.
        return datasets.load_dataset(builder, data_files=path, split="train", streaming=streaming, **options)
    except Exception as exc:
        # datasets reports a file without rows as 'Instruction "train" corresponds to no data!'.
        if "corresponds to no data" in str(exc):
            raise DataError(f"data set {path!r} has no rows") from None
        raise DataError(f"could not read {path!r} as {fmt}: {exc}") from exc


def _load_saved(path: Path, split: str | None, streaming: bool) -> Rows:
    """A ``save_to_disk`` folder: a ``Dataset`` as it is, a ``DatasetDict``'s split by name."""
    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"could not read the saved data set {str(path)!r}: {exc}") from exc
    if isinstance(saved, datasets.DatasetDict):
        name = split or "train"
        if name not in saved:
            raise DataError(
                f"the saved data set {str(path)!r} has no split {name!r}; its splits: {list(saved)}"
            )
        saved = saved[name]
    return saved.to_iterable_dataset() if streaming else saved


def _load_dataset(name: str, split: str, *, streaming: bool, **options: Any) -> Rows:
    """``datasets.load_dataset`` with the source's options; its many failure types become one
    :class:`DataError` that names the source (most often: no network, or a wrong split or subset)."""
    described = _describe(name, split, **options)
    try:
        return datasets.load_dataset(
            name,
            options["subset"],
            split=split,
            revision=options["revision"],
            data_files=options["data_files"],
            streaming=streaming,
        )
    except ConnectionError as exc:
        raise DataError(
            f"could not reach {described} on the Hugging Face hub ({exc}); loading a hub data set needs "
            "network access or the data set in the local datasets cache"
        ) from exc
    except FileNotFoundError as exc:
        raise DataError(
            f"{described} is neither a local file or folder nor a data set on the hub ({exc}); local "
            f"files need one of the extensions {['.' + f for f in SUPPORTED_FORMATS]} (or data.format)"
        ) from exc
    except Exception as exc:  # datasets raises ValueError for an unknown split or subset, and others
        raise DataError(f"could not load {described}: {exc}") from exc


def _describe(name: str, split: str, **options: Any) -> str:
    """``'glue' (subset 'sst2', split 'validation')`` — the source as a message names it."""
    parts = [f"{key.replace('_', ' ')} {value!r}" for key, value in options.items() if value is not None]
    return f"{name!r} ({', '.join([*parts, f'split {split!r}'])})"
