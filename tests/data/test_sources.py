"""load_rows reads local JSONL/JSON/CSV/TSV files and explains every failure."""

import json
from pathlib import Path

import datasets
import pytest

from softprompt.data import sources
from softprompt.data.sources import load_rows, require_columns

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


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


def test_hub_failure_is_explained(monkeypatch):
    calls = []

    def offline(name, split):
        calls.append((name, split))
        raise ConnectionError("couldn't reach the hub")

    monkeypatch.setattr(sources.datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=r"'glue/sst2' \(split 'validation'\).*couldn't reach.*network"):
        load_rows("glue/sst2", split="validation")
    with pytest.raises(RuntimeError):
        load_rows("glue")  # a hub name without split loads "train"
    assert calls == [("glue/sst2", "validation"), ("glue", "train")]


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
def test_real_glue_tsvs_keep_every_row():
    # RTE sentences hold bare quote characters; CSV quoting would merge rows.
    rte = load_rows(SHARED / "rte" / "dev.tsv")
    assert len(rte) == 277 and rte.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert set(rte["label"]) == {0, 1}
    sst2 = load_rows(SHARED / "sst2" / "dev.tsv")
    assert len(sst2) == 872 and set(sst2["label"]) == {0, 1}


@pytest.mark.slow
def test_real_superglue_jsonl_and_e2e_csv():
    rte = load_rows(SHARED / "superglue" / "RTE" / "val.jsonl")
    assert len(rte) == 277 and set(rte["label"]) == {"entailment", "not_entailment"}
    e2e = load_rows(SHARED / "e2e" / "devset.csv", limit=10)
    assert e2e.column_names == ["mr", "ref"] and len(e2e) == 10
