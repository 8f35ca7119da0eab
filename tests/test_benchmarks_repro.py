"""The reproduction benchmarks of issue 14 run: ``--quick`` of each (tiny random Llama, seconds), the
numbers they report consistent with the runs they record, and the data readers they add.

Runs in-process (``main(argv)``): the scripts' JSON is checked, not their timings.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import SHARED_DATA  # noqa: E402  (real data sets and GPT-2's tokenizer; a bare clone has none)

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no {SHARED_DATA}")


@pytest.mark.parametrize("script", ["panel", "lester", "li_liang", "search", "storage"])
def test_help_names_the_reproduction_flags(script, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_:
        module.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--quick" in text and "--out" in text
    if script != "storage":
        assert "--seeds" in text and "--steps" in text and "--journal" in text


def test_storage_quick_saves_every_method_and_the_full_copy(tmp_path, capsys):
    result = importlib.import_module("storage").main(["--quick", "--out", str(tmp_path / "s.json")])
    saved = {(s["library"], s["method"]): s for s in result["saved"]}
    assert set(saved) == {
        *(("softprompt", m) for m in ("prompt_tuning", "prefix_tuning", "p_tuning")),
        *(("peft", m) for m in ("prompt_tuning", "prefix_tuning", "p_tuning", "lora_qv", "lora_all")),
        ("transformers", "full_finetuning"),
    }
    full = saved[("transformers", "full_finetuning")]
    assert full["files"] and any(f.endswith(".safetensors") for f in full["files"])
    assert full["bytes"] >= 4 * full["trainable_parameters"]  # fp32: every weight is in the copy
    hidden = 32  # _common.tiny_llama
    prompt = saved[("softprompt", "prompt_tuning")]
    assert prompt["trainable_parameters"] == 20 * hidden and prompt["bytes"] >= 4 * 20 * hidden
    for s in saved.values():
        assert 0 < s["bytes"] <= full["bytes"]
    # peft's prefix (20 tokens) holds twice the numbers of softprompt's default prefix (10 tokens)
    assert (
        saved[("peft", "prefix_tuning")]["trainable_parameters"]
        == 2 * (saved[("softprompt", "prefix_tuning")]["trainable_parameters"])
    )
    assert "Bytes per task on disk" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["saved"] == result["saved"]


@needs_shared_data
def test_panel_quick_compares_setups_per_seed_and_reports_the_goal(tmp_path, capsys):
    panel = importlib.import_module("panel")
    setups = "zero-shot,softprompt,peft-text-3e-2,peft-random-3e-3"
    argv = ["--quick", "--tasks", "sst2,copa,e2e", "--setups", setups, "--out", str(tmp_path / "p.json")]
    result = panel.main([*argv, "--journal", str(tmp_path / "runs.jsonl")])
    runs = result["runs"]
    budget = result["settings"]["budget"]
    assert {(r["task"], r["setup"], r["seed"]) for r in runs} == {
        ("sst2", "zero-shot", 0),
        ("copa", "zero-shot", 0),
        ("e2e", "zero-shot", 0),
        *((t, s, seed) for t in ("sst2", "copa", "e2e") for s in setups.split(",")[1:] for seed in (0, 1)),
    }
    for r in runs:
        assert r["metric"] == ("bleu" if r["task"] == "e2e" else "accuracy")
        assert 0 <= r["score"] <= 100 and r["score"] == r["scores"][r["metric"]]
        trained = r["setup"] != "zero-shot"
        assert r["steps"] == (budget["steps"] if trained else 0)
        assert r["examples_seen"] == r["steps"] * budget["batch_size"]
    # the summary and the goal are the runs' numbers
    copa = [r["score"] for r in runs if r["task"] == "copa" and r["setup"] == "softprompt"]
    assert result["summary"]["copa"]["softprompt"]["values"] == copa
    held = result["goals"]["held-out"]
    best_peft = max(result["summary"]["copa"][s]["mean"] for s in ("peft-text-3e-2", "peft-random-3e-3"))
    assert held["tasks"] == ["copa", "e2e"]
    assert held["softprompt_minus_best_peft"]["copa"] == pytest.approx(
        result["summary"]["copa"]["softprompt"]["mean"] - best_peft
    )
    assert result["goals"]["tune"]["tasks"] == ["sst2"]
    assert "softprompt − best peft" in capsys.readouterr().out
    # the journal reproduces the report without training
    again = panel.main([*argv, "--from-journal", str(tmp_path / "runs.jsonl")])
    assert again["summary"] == result["summary"]


@needs_shared_data
def test_panel_rerun_with_its_journal_trains_only_the_runs_it_lacks(tmp_path, monkeypatch):
    panel = importlib.import_module("panel")
    journal = tmp_path / "runs.jsonl"
    argv = ["--quick", "--tasks", "sst2", "--setups", "zero-shot,softprompt,peft-random-3e-3"]
    argv += ["--out", str(tmp_path / "p.json"), "--journal", str(journal)]
    first = panel.main(argv)["runs"]
    lines = journal.read_text().splitlines()
    assert len(lines) == len(first) == 5  # zero-shot, then 2 setups x 2 seeds
    journal.write_text("\n".join(lines[:-1]) + "\n")  # interrupted before the last run finished

    trained: list[int] = []
    train_steps = panel.train_steps
    monkeypatch.setattr(panel, "train_steps", lambda *a, **k: trained.append(1) or train_steps(*a, **k))
    resumed = panel.main(argv)["runs"]
    assert len(trained) == 1  # only the missing run trained
    assert resumed[:-1] == first[:-1]  # the others are the journal's, score for score
    assert {(r["setup"], r["seed"]) for r in resumed} == {(r["setup"], r["seed"]) for r in first}
    assert len(journal.read_text().splitlines()) == 5  # the journal is whole again

    # a different budget is a different run: nothing of the journal is reused
    trained.clear()
    panel.main([*argv, "--steps", "2"])
    assert len(trained) == 4


@needs_shared_data
def test_search_quick_contests_every_seed_and_reports_again_from_its_journal(tmp_path, monkeypatch, capsys):
    search = importlib.import_module("search")
    argv = ["--quick", "--tasks", "example", "--seeds", "0,1", "--out", str(tmp_path / "s.json")]
    result = search.main([*argv, "--journal", str(tmp_path / "contests.jsonl")])
    rows, budget = result["results"], result["settings"]["budget"]
    assert [(r["seed"], r["contestant"]) for r in rows] == [
        (0, "defaults"), (0, "search 2x"), (1, "defaults"), (1, "search 2x")
    ]  # fmt: skip
    assert budget["seeds"] == [0, 1] and result["skipped"] == []
    one_run = budget["one_run_steps"]
    for r in rows:
        assert 0 <= r["dev"] <= 100 and 0 <= r["test"] <= 100
        # each contestant states its budget: one run's steps; a search more, within its multiple of them
        if r["contestant"] == "defaults":
            assert r["steps"] == one_run
        else:
            assert one_run < r["steps"] <= 2 * one_run and r["trials"] == 4
    assert "| example | 1 | search 2x |" in capsys.readouterr().out
    # the journal reproduces the report, nothing trained
    monkeypatch.setattr(search, "run_contests", lambda *_: pytest.fail("trained from a journal"))
    again = search.main([*argv, "--from-journal", str(tmp_path / "contests.jsonl")])
    assert again["results"] == rows and again["settings"]["from_journal"] == str(tmp_path / "contests.jsonl")


def test_panel_goal_needs_every_held_out_task_within_a_point_and_a_lead_on_average():
    panel = importlib.import_module("panel")

    def summary(gaps):
        return {
            t: {
                "softprompt": {"mean": 70.0 + g},
                "peft-text-3e-2": {"mean": 70.0},
                "peft-random-3e-3": {"mean": 60.0},
            }
            for t, g in gaps.items()
        }

    assert panel.goal(summary({"mr": 2.0, "cb": -0.5}), ["mr", "cb"])["met"]
    assert not panel.goal(summary({"mr": 5.0, "cb": -1.5}), ["mr", "cb"])["met"]  # one task too far behind
    assert not panel.goal(summary({"mr": -0.5, "cb": 0.0}), ["mr", "cb"])["met"]  # behind on average
    assert panel.goal(summary({"mr": 1.0}), ["mr", "cb"])["tasks"] == ["mr"]  # only tasks that ran count


def test_webnlg_rows_linearise_the_triples_with_one_row_per_reference(tmp_path):
    panel = importlib.import_module("panel")
    (tmp_path / "a.xml").write_text(
        "<benchmark><entries><entry category='Airport' eid='Id1' size='2'>"
        "<modifiedtripleset><mtriple>Aarhus | cityServed | Aarhus_Airport</mtriple>"
        "<mtriple>Aarhus_Airport | elevation | 25.0</mtriple></modifiedtripleset>"
        "<lex comment='good' lid='Id1'>Aarhus Airport serves Aarhus.</lex>"
        "<lex comment='good' lid='Id2'>It lies 25 metres up.</lex></entry></entries></benchmark>"
    )
    triples = "Aarhus | cityServed | Aarhus_Airport ; Aarhus_Airport | elevation | 25.0"
    assert panel.webnlg_rows(tmp_path) == [
        {"triples": triples, "text": "Aarhus Airport serves Aarhus."},
        {"triples": triples, "text": "It lies 25 metres up."},
    ]


@needs_shared_data
def test_mr_split_is_seeded_disjoint_and_labelled(tmp_path):
    panel = importlib.import_module("panel")
    train, dev = panel.mr_files(SHARED_DATA, tmp_path)
    read = [[json.loads(line) for line in path.read_text().splitlines()] for path in (train, dev)]
    assert len(read[1]) == panel.MR_DEV_ROWS and len(read[0]) + len(read[1]) == 10662
    assert {r["label"] for r in read[1]} == {0, 1}
    again = tmp_path / "again"
    again.mkdir()
    assert panel.mr_files(SHARED_DATA, again)[1].read_text() == dev.read_text()  # the same split each time


def test_lester_grids():
    lester = importlib.import_module("lester")
    inits, lengths = ["text", "vocab", "random"], [1, 5, 20, 100]
    cross = lester.settings("cross", inits, lengths)
    assert cross == [("text", 20), ("vocab", 20), ("random", 20), ("text", 1), ("text", 5), ("text", 100)]
    assert len(lester.settings("full", inits, lengths)) == 12


@needs_shared_data
def test_lester_quick_runs_every_init_and_length_of_the_cross(tmp_path, capsys):
    result = importlib.import_module("lester").main(["--quick", "--out", str(tmp_path / "l.json")])
    assert {(r["setup"], r["seed"]) for r in result["runs"]} == {
        (f"{i}-{n}", s) for i, n in result["settings"]["pairs"] for s in (0, 1)
    }
    assert all(0 <= r["score"] <= 100 and r["task"] == "sst2" for r in result["runs"])
    assert "20 tokens" in capsys.readouterr().out


@needs_shared_data
def test_li_liang_quick_scores_prefix_full_and_lora_by_bleu_and_rouge(tmp_path, capsys):
    result = importlib.import_module("li_liang").main(
        ["--quick", "--tasks", "e2e", "--out", str(tmp_path / "g.json")]
    )
    runs = result["runs"]
    assert {(r["setup"], r["seed"]) for r in runs} == {
        (m, s) for m in ("prefix", "full", "lora") for s in (0, 1)
    }
    for r in runs:
        assert r["metric"] == "bleu" and {"bleu", "rougeL"} <= set(r["scores"])
        assert all(0 <= r["scores"][k] <= 100 for k in ("bleu", "rougeL"))
    assert "ROUGE-L" in capsys.readouterr().out
