"""``benchmarks/serving.py --quick`` runs end to end on a tiny model: every case, every goal, the JSON.

No timings are checked (the numbers of a tiny model on a shared machine mean nothing); only that the
script runs, that every request of every case was answered 200, and that it reports each goal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serving_benchmark_quick_run(tmp_path):
    out = tmp_path / "serving.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"date", "machine", "settings", "tasks", "load", "goals", "first_token_s", "overload"} <= set(
        result
    )
    assert {t["method"] for t in result["tasks"]} == {"prompt_tuning", "prefix_tuning", "p_tuning"}
    cases = ("mixed 8 tasks", "single task", "bare model", "peft (set_adapter per request)")
    assert set(result["load"]) == set(cases)
    for case in cases:
        runs = result["load"][case]
        assert [r["clients"] for r in runs] == [1, 4, 16]
        for run in runs:
            assert set(run["statuses"]) == {"200"} and run["requests"] >= run["clients"]
            assert run["tokens_per_s"] > 0 and run["p99_s"] >= run["p50_s"] > 0
    overload = result["overload"]
    assert overload["refused"] > 0 and overload["served"] + overload["refused"] == 16 * overload["rounds"]
    assert [g["goal"] for g in result["goals"]] == [
        "mixed 8-task throughput / single-task, 16 clients (wall)",
        "mixed 8-task throughput / single-task, 16 clients (CPU)",
        "mixed 8-task throughput / peft, 16 clients (wall)",
        "mixed 8-task throughput / peft, 16 clients (CPU)",
        "HTTP overhead at p50 (HTTP - engine, 1 client, paired)",
        "time to first token, prompt-tuning task / bare model (paired median)",
        "429 answered under 2x overload, p99",
    ]
    assert all(g["value"] is not None for g in result["goals"])
    assert "## Goals" in done.stdout and "| mixed 8 tasks | 16 |" in done.stdout


def test_serving_benchmark_help_names_its_modes():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    for flag in ("--quick", "--out", "--clients", "--vllm-python", "--seconds"):
        assert flag in done.stdout
