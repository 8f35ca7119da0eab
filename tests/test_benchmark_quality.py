"""The quality benchmark runs end to end (``--quick``: tiny random GPT-2 and BERT, a few rows of the real
data sets) and writes every row, setting and goal to its JSON."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "quality.py"


def test_quality_quick_run_writes_every_row_and_goal(tmp_path):
    out = tmp_path / "quality.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"date", "machine", "settings", "rows", "goals"} <= set(result)
    assert {"torch", "transformers", "peft", "softprompt", "platform", "torch_threads"} <= set(
        result["machine"]
    )
    assert result["settings"]["quick"] and result["settings"]["budget"]["seed"] == 0

    rows = result["rows"]
    causal = [r for r in rows if r["model"] == result["models"]["causal"]]
    main = {(r["task"], r["library"], r["method"]) for r in causal if r["train_rows"] in (0, 32)}
    for task in ("sst2", "rte", "boolq"):
        assert (task, "zero-shot", "-") in main
        for method in ("prompt_tuning", "prefix_tuning", "p_tuning"):
            assert {(task, "softprompt", method), (task, "peft", method)} <= main
    low_data = {
        (r["library"], r["train_rows"]) for r in causal if r["task"] == "sst2" and r["train_rows"] == 8
    }
    assert low_data == {("softprompt", 8), ("peft", 8)}
    encoder = {(r["method"], r["train_rows"]) for r in rows if r["model"] == result["models"]["encoder"]}
    methods = ("deep_prompt", "deep_prompt_mean", "prompt_tuning", "full_finetuning", "linear_probe")
    assert encoder == {(m, n) for m in methods for n in (8, 32)}

    for r in rows:
        assert 0 <= r["accuracy"] <= 100
        if r["library"] != "zero-shot":
            assert r["trainable_parameters"] > 0 and r["file_bytes"] > 0
    # peft's files and parameters are counted, not copied from softprompt's
    sizes = {(r["library"], r["method"]): r["trainable_parameters"] for r in causal if r["task"] == "sst2"}
    assert sizes[("peft", "prefix_tuning")] == 2 * sizes[("softprompt", "prefix_tuning")]  # 20 vs 10 tokens
    assert [g["goal"].split()[0] for g in result["goals"]] == ["softprompt", "MiniLM", "MiniLM"]
    assert "Goals" in done.stdout


def test_quality_help_lists_the_selection_flags():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for flag in ("--quick", "--out", "--threads", "--tasks", "--methods", "--libraries", "--low-data"):
        assert flag in done.stdout
