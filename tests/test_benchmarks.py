"""The benchmark scripts run: each one's ``--quick`` mode on a tiny model, and its ``--help``.

No timings are checked (the suite has no timed tests); only that every script runs end to end,
prints its tables and writes the JSON that RESULTS.md is made from. Adding a script = one entry
in ``QUICK_RUNS``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

# script -> extra arguments of its smoke run (each must finish in seconds)
QUICK_RUNS = {
    "speed_memory.py": ["--quick"],
}


def run_quick(script: str, out: Path) -> tuple[str, dict]:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *QUICK_RUNS[script], "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


@pytest.mark.parametrize("script", sorted(QUICK_RUNS))
def test_help_describes_the_script(script, capsys):
    module = importlib.import_module(Path(script).stem)
    with pytest.raises(SystemExit) as exit_:
        module.parse_args(["--help"])
    assert exit_.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_speed_memory_quick_run_writes_tables_and_json(tmp_path):
    stdout, result = run_quick("speed_memory.py", tmp_path / "speed.json")
    assert "Step time" in stdout and "Peak training memory" in stdout
    for key in ("date", "cpu_count", "platform", "torch", "transformers", "peft", "torch_threads"):
        assert key in result["machine"]

    entries = result["entries"]
    methods = {"prompt_tuning", "prefix_tuning", "prefix_tuning_mlp512", "p_tuning_mlp"}
    for style in ("classification", "generation"):
        mine = [e for e in entries if e["style"] == style]
        assert {(e["contestant"], e["method"]) for e in mine} == {("floor", None)} | {
            (c, m) for m in methods for c in ("softprompt", "peft", "peft-scored")
        }
        for e in mine:
            assert len(e["step_seconds"]["values"]) == 2  # --quick: 2 timed rounds
            assert e["peak_bytes"] > 0
        ratios = {r["method"]: r["softprompt_vs"] for r in result["ratios"] if r["style"] == style}
        assert set(ratios) == methods
        assert all(v["time"] > 0 and v["memory"] > 0 for r in ratios.values() for v in r.values())


def test_peak_memory_sees_a_freed_temporary_and_what_stays():
    from _common import peak_memory

    kept = []
    with peak_memory() as mem:
        temporary = torch.ones(2**20)  # 4 MiB, freed inside the window
        kept.append(torch.ones(2**18))  # 1 MiB, still alive at the end
        del temporary
    assert mem.peak >= 5 * 2**20
    assert 2**20 <= mem.end < 2 * 2**20
