"""The serving benchmark runs end to end (``--quick``: tiny random Llama) and writes its JSON."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mixed_tasks.py"


def test_mixed_tasks_quick_run_writes_every_case_and_goal(tmp_path):
    out = tmp_path / "mixed_tasks.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"date", "machine", "settings", "throughput", "latency", "goals", "checks_max_rel_diff"} <= set(
        result
    )
    assert {"torch", "transformers", "peft", "softprompt", "platform"} <= set(result["machine"])
    assert len(result["tasks"]) == 8
    assert {t["method"] for t in result["tasks"]} == {"prompt_tuning", "prefix_tuning", "p_tuning"}
    for workload in ("forward", "generate"):
        assert "TaskBank, 8 tasks mixed, 1 batch" in result["throughput"][workload]
        assert "peft, 8 batches, set_adapter" in result["throughput"][workload]
        assert "TaskBank, compiled prompt" in result["latency"][workload]
    assert len(result["goals"]) == 4
    # The ways of serving that are timed compute the same numbers.
    checks = result["checks_max_rel_diff"]
    assert all(diff < 1e-5 for diff in checks.values()), checks
    assert "Goals" in done.stdout
