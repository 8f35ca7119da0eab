"""load_rows reads local files, save_to_disk folders, builder names and hub data sets (the hub faked:
tests run offline), streams them, and explains every failure with a DataError."""

import json
from pathlib import Path

import datasets
import pytest

from softprompt.data import sources
from softprompt.data.sources import DataError, load_rows, require_columns

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"needs the shared data sets at {SHARED}")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Keep the arrow files datasets writes for each tiny file out of the user's cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_keeps_int_labels_quotes_and_na_words(tmp_path):
    path = write(tmp_path / "train.tsv", 'sentence\tlabel\na "quoted" word\t1\nNA\t0\nnull\t1\n')
    ds = load_rows(path)
    assert ds.column_names == ["sentence", "label"]
    assert ds["sentence"] == ['a "quoted" word', "NA", "null"]
    assert ds["label"] == [1, 0, 1]
    assert ds.features["label"].dtype == "int64"


def test_csv_with_quoted_commas(tmp_path):
    path = write(tmp_path / "e2e.csv", 'mr,ref\n"name[A], area[city]","A is, in fact, central."\n')
    ds = load_rows(path)
    assert ds[0] == {"mr": "name[A], area[city]", "ref": "A is, in fact, central."}


def test_jsonl_and_json_keep_string_labels(tmp_path):
    rows = [{"premise": "p1", "label": "entailment"}, {"premise": "p2", "label": "not_entailment"}]
    jsonl = write(tmp_path / "val.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    as_json = write(tmp_path / "val.json", json.dumps(rows))
    assert load_rows(jsonl).to_list() == rows
    assert load_rows(as_json).to_list() == rows


def test_limit_and_file_format_override(tmp_path):
    path = write(tmp_path / "data.txt", "text\tlabel\na\t0\nb\t1\nc\t0\n")
    ds = load_rows(path, file_format="tsv", limit=2)
    assert ds["text"] == ["a", "b"]
    with pytest.raises(ValueError, match="limit"):
        load_rows(path, file_format="tsv", limit=0)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_rows(missing)


def test_unknown_extension_lists_supported(tmp_path):
    path = write(tmp_path / "data.parquet", "x")
    with pytest.raises(ValueError, match=r"'\.parquet'.*\.jsonl.*\.csv.*\.tsv"):
        load_rows(path)
    with pytest.raises(ValueError, match="unknown file_format 'xml'.*jsonl"):
        load_rows(path, file_format="xml")


@pytest.mark.parametrize(
    ("name", "text"),
    [("empty.tsv", "sentence\tlabel\n"), ("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("e.json", "[]")],
)
def test_empty_data_set_has_no_rows(tmp_path, name, text):
    with pytest.raises(ValueError, match=f"{name}' has no rows"):
        load_rows(write(tmp_path / name, text))


def test_unparsable_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="could not read .*bad.jsonl"):
        load_rows(write(tmp_path / "bad.jsonl", "{not json\n"))


class FakeHub:
    """Stands in for datasets.load_dataset with hub names: records each call, answers from ``splits``."""

    def __init__(self, splits: dict[str, datasets.Dataset] | None = None, error: Exception | None = None):
        self.splits, self.error, self.calls = splits or {}, error, []

    def __call__(self, path, name=None, *, split=None, revision=None, data_files=None, streaming=False):
        self.calls.append({"path": path, "name": name, "split": split, "revision": revision,
                           "data_files": data_files, "streaming": streaming})  # fmt: skip
        if self.error is not None:
            raise self.error
        if split not in self.splits:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(self.splits)}.')
        rows = self.splits[split]
        return rows.to_iterable_dataset() if streaming else rows


ROWS = datasets.Dataset.from_dict({"sentence": ["a gem", "dull", "fine"], "label": [1, 0, 1]})


def test_a_hub_name_with_subset_split_and_revision_reaches_load_dataset(monkeypatch):
    hub = FakeHub({"validation": ROWS})
    monkeypatch.setattr(sources.datasets, "load_dataset", hub)
    rows = load_rows("nyu-mll/glue", subset="sst2", split="validation", revision="v1.0", limit=2)
    assert rows.to_dict() == {"sentence": ["a gem", "dull"], "label": [1, 0]}
    assert hub.calls == [{"path": "nyu-mll/glue", "name": "sst2", "split": "validation", "revision": "v1.0",
                          "data_files": None, "streaming": False}]  # fmt: skip
    streamed = load_rows("nyu-mll/glue", subset="sst2", split="validation", streaming=True, limit=2)
    assert isinstance(streamed, datasets.IterableDataset) and list(streamed) == ROWS.select([0, 1]).to_list()
    assert hub.calls[-1]["streaming"] is True
    with pytest.raises(DataError, match=r"\(subset 'sst2', split 'train'\)"):  # no split given: train
        load_rows("nyu-mll/glue", subset="sst2")


def test_hub_failures_are_named_data_errors(monkeypatch):
    monkeypatch.setattr(
        sources.datasets, "load_dataset", FakeHub(error=ConnectionError("couldn't reach the hub"))
    )
    with pytest.raises(
        DataError, match=r"could not reach 'glue' \(subset 'sst2', split 'validation'\).*network"
    ):
        load_rows("glue", subset="sst2", split="validation")
    monkeypatch.setattr(sources.datasets, "load_dataset", FakeHub({"train": ROWS}))
    with pytest.raises(DataError, match=r"could not load 'glue' \(split 'dev'\): Unknown split \"dev\""):
        load_rows("glue", split="dev")
    missing = FileNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")
    monkeypatch.setattr(sources.datasets, "load_dataset", FakeHub(error=missing))
    with pytest.raises(
        DataError, match="'nobody/nothing' .* is neither a local file or folder nor a data set on the hub"
    ):
        load_rows("nobody/nothing")


def test_a_builder_name_reads_data_files_by_split(tmp_path):
    train = write(tmp_path / "a.jsonl", '{"text": "x", "label": 1}\n')
    dev = write(tmp_path / "b.jsonl", '{"text": "y", "label": 0}\n{"text": "z", "label": 1}\n')
    files = {"train": str(train), "validation": str(dev)}
    assert load_rows("json", data_files=files, split="validation")["text"] == ["y", "z"]
    assert load_rows("json", data_files=str(train))["text"] == ["x"]  # one file: the train split
    with pytest.raises(
        DataError, match=r"could not load 'json' \(data files .*, split 'test'\): Unknown split"
    ):
        load_rows("json", data_files=files, split="test")


def test_save_to_disk_folders_of_a_dataset_and_of_a_dataset_dict(tmp_path):
    ROWS.save_to_disk(tmp_path / "one")
    datasets.DatasetDict({"train": ROWS, "validation": ROWS.select([2])}).save_to_disk(tmp_path / "dict")
    assert load_rows(tmp_path / "one").to_list() == ROWS.to_list()
    assert load_rows(tmp_path / "dict", split="validation")["sentence"] == ["fine"]
    assert load_rows(tmp_path / "dict").num_rows == 3  # split defaults to train
    streamed = load_rows(tmp_path / "dict", split="validation", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset) and list(streamed) == [
        {"sentence": "fine", "label": 1}
    ]
    with pytest.raises(DataError, match=r"has no split 'test'; its splits: \['train', 'validation'\]"):
        load_rows(tmp_path / "dict", split="test")
    with pytest.raises(DataError, match="subset, revision apply to hub data sets and builder names, not to"):
        load_rows(tmp_path / "one", subset="sst2", revision="main")


def test_a_local_file_streams_with_a_limit(tmp_path):
    path = write(tmp_path / "train.tsv", "sentence\tlabel\na\t0\nb\t1\nc\t0\n")
    streamed = load_rows(path, streaming=True, limit=2)
    assert isinstance(streamed, datasets.IterableDataset)
    assert list(streamed) == [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 1}]


def test_a_missing_folder_or_name_is_explained(tmp_path):
    with pytest.raises(DataError, match="neither a local file or folder nor a data set on the hub"):
        load_rows(tmp_path / "no-such-folder")


def test_require_columns_names_missing_and_available():
    ds = datasets.Dataset.from_dict({"sentence": ["hi"], "label": [1]})
    require_columns(ds, ["sentence", "label"])
    with pytest.raises(
        ValueError, match=r"train data has no column 'text'; available columns: \['sentence', 'label'\]"
    ):
        require_columns(ds, ["text", "label"], where="train data")
    with pytest.raises(ValueError, match="no columns 'a', 'b'"):
        require_columns(ds, ["a", "b"])


@pytest.mark.slow
@needs_shared
def test_real_glue_tsvs_keep_every_row():
    # RTE sentences hold bare quote characters; CSV quoting would merge rows.
    rte = load_rows(SHARED / "rte" / "dev.tsv")
    assert len(rte) == 277 and rte.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert set(rte["label"]) == {0, 1}
    sst2 = load_rows(SHARED / "sst2" / "dev.tsv")
    assert len(sst2) == 872 and set(sst2["label"]) == {0, 1}


@pytest.mark.slow
@needs_shared
def test_real_superglue_jsonl_and_e2e_csv():
    rte = load_rows(SHARED / "superglue" / "RTE" / "val.jsonl")
    assert len(rte) == 277 and set(rte["label"]) == {"entailment", "not_entailment"}
    e2e = load_rows(SHARED / "e2e" / "devset.csv", limit=10)
    assert e2e.column_names == ["mr", "ref"] and len(e2e) == 10
