"""The shipped example scripts run."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_trains_saves_reloads_and_generates():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "saved prompt.safetensors" in result.stdout
    assert "generated:" in result.stdout
