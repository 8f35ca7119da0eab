"""Load rows from local files or the Hugging Face hub into a `datasets.Dataset`.

Local `.jsonl`/`.json`, `.csv` and `.tsv` files are read with the packaged `datasets` builders;
any other string is handed to `datasets.load_dataset` as a hub name or path, which needs network.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

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


def load_rows(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    file_format: str | None = None,
    limit: int | None = None,
) -> datasets.Dataset:
    """Load a data set as one `datasets.Dataset`.

    Args:
        source: a local `.jsonl`, `.json`, `.csv` or `.tsv` file, or a hub data set name/path.
        split: the hub split to load (default "train"). A local file is a single split, so
            `split` is ignored for it.
        file_format: read a local file as this format ("jsonl", "json", "csv", "tsv") whatever
            its extension.
        limit: keep only the first `limit` rows.

    Raises:
        FileNotFoundError: a local file (known extension or `file_format` given) does not exist.
        ValueError: unknown extension or format, a file that does not parse, or no rows.
        RuntimeError: loading from the hub failed (e.g. no network).

    Examples:
        >>> ds = load_rows("/data/sst2/dev.tsv", limit=100)  # doctest: +SKIP
        >>> ds.column_names  # doctest: +SKIP
        ['sentence', 'label']
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    fmt = _local_format(source, file_format)
    ds = _load_hub(str(source), split or "train") if fmt is None else _load_file(os.fspath(source), fmt)
    if len(ds) == 0:
        raise ValueError(f"data set {os.fspath(source)!r} has no rows")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def require_columns(ds: datasets.Dataset, names: Iterable[str], *, where: str = "data set") -> None:
    """Raise if any of `names` is not a column of `ds`, naming it and listing the available ones.

    Examples:
        >>> ds = datasets.Dataset.from_dict({"sentence": ["hi"], "label": [1]})
        >>> require_columns(ds, ["sentence", "label"], where="train data")
        >>> require_columns(ds, ["text"], where="train data")
        Traceback (most recent call last):
        ...
        ValueError: train data has no column 'text'; available columns: ['sentence', 'label']
    """
    missing = [n for n in names if n not in ds.column_names]
    if missing:
        what = ", ".join(repr(n) for n in missing)
        plural = "s" if len(missing) > 1 else ""
        raise ValueError(f"{where} has no column{plural} {what}; available columns: {ds.column_names}")


def _local_format(source: str | os.PathLike, file_format: str | None) -> str | None:
    """The local format of `source`, or None if it should be loaded from the hub."""
    path = Path(source)
    if file_format is not None:
        fmt = file_format.lower().lstrip(".")
        if fmt not in _FORMATS:
            raise ValueError(f"unknown file_format {file_format!r}; supported: {list(SUPPORTED_FORMATS)}")
    else:
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in _FORMATS:
            if path.is_file():
                raise ValueError(
                    f"cannot read {os.fspath(source)!r}: unknown extension {path.suffix!r}; "
                    f"supported: {['.' + f for f in SUPPORTED_FORMATS]} (or pass file_format=)"
                )
            # Not a file with a data extension: a hub name such as "glue" or a dataset folder.
            return None
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {os.fspath(source)!r}")
    return fmt


def _load_file(path: str, fmt: str) -> datasets.Dataset:
    """Read a local file with the packaged builder for `fmt`."""
    if os.path.getsize(path) == 0:
        # An empty JSON Lines file makes the json builder raise a bare StopIteration.
        raise ValueError(f"data set {path!r} has no rows")
    builder, options = _FORMATS[fmt]
    try:
        # A local file always lands in the builder's single "train" split.
        return datasets.load_dataset(builder, data_files=path, split="train", **options)
    except Exception as exc:
        # datasets reports a file without rows as 'Instruction "train" corresponds to no data!'.
        if "corresponds to no data" in str(exc):
            raise ValueError(f"data set {path!r} has no rows") from None
        raise ValueError(f"could not read {path!r} as {fmt}: {exc}") from exc


def _load_hub(name: str, split: str) -> datasets.Dataset:
    """`load_dataset(name, split=split)`, with failures explained (most often: no network)."""
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        raise RuntimeError(
            f"could not load {name!r} (split {split!r}) from the Hugging Face hub: {exc}. "
            f"It is not a local file (supported: {['.' + f for f in SUPPORTED_FORMATS]}); "
            "loading from the hub needs network access and an existing data set name."
        ) from exc
