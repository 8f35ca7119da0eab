"""Training logs: one record per log point, written to JSONL, CSV and TensorBoard; and the PNG curves.

A record is ``{"step": 50, "split": "train" | "dev" | "test" | "zero_shot", <name>: <value>...}``.
``metrics.jsonl`` holds one record a line; ``metrics.csv`` the same numbers in long form
(``step,split,name,value``) so any spreadsheet reads it; TensorBoard gets ``<split>/<name>``
scalars. A resumed run first drops records after the checkpoint's step, so the logs read as one
uninterrupted run.

Examples:
    >>> log = MetricsLog(run_dir, tensorboard=False)  # doctest: +SKIP
    >>> log.write("train", 10, {"loss": 1.25, "lr": 0.3})  # doctest: +SKIP
    >>> plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", metric="accuracy")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"
PLOT_NAME = "curves.png"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """Appends records to ``<dir>/metrics.jsonl``, ``<dir>/metrics.csv`` and TensorBoard."""

    def __init__(self, directory: Path, *, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.directory / JSONL_NAME
        self.csv = self.directory / CSV_NAME
        if resume_step is None:
            for path in (self.jsonl, self.csv):
                path.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed session logged after the checkpoint.
            self.writer = SummaryWriter(str(self.directory / TENSORBOARD_DIR), purge_step=resume_step)

    def write(self, split: str, step: int, values: dict[str, float]) -> None:
        """Log ``values`` of ``split`` at ``step``."""
        record = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        new_csv = not self.csv.exists()
        with self.csv.open("a", newline="") as f:
            out = csv.writer(f)
            if new_csv:
                out.writerow(["step", "split", "name", "value"])
            out.writerows([step, split, name, value] for name, value in values.items())
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{split}/{name}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _truncate(self, step: int) -> None:
        """Keep only the records a run had logged up to ``step`` (zero-shot records always stay)."""
        records = [r for r in read_records(self.jsonl) if r["step"] <= step or r["split"] == "zero_shot"]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
        if self.csv.exists():
            with self.csv.open() as f:
                rows = list(csv.reader(f))
            kept = rows[:1] + [row for row in rows[1:] if int(row[0]) <= step or row[1] == "zero_shot"]
            with self.csv.open("w", newline="") as f:
                csv.writer(f).writerows(kept)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (none if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(jsonl: Path, out: Path, *, metric: str) -> Path:
    """Draw the training loss and the dev ``metric`` (with the zero-shot level) against the step."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    records = read_records(jsonl)
    train = [r for r in records if r["split"] == "train" and "loss" in r]
    dev = [r for r in records if r["split"] == "dev" and metric in r]
    zero = [r for r in records if r["split"] == "zero_shot" and metric in r]

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], ".-", label="train")
    dev_loss = [r for r in records if r["split"] == "dev" and "loss" in r]
    if dev_loss:
        left.plot([r["step"] for r in dev_loss], [r["loss"] for r in dev_loss], "o-", label="dev")
    left.set(title="loss", xlabel="step")
    left.legend()
    if dev:
        right.plot([r["step"] for r in dev], [r[metric] for r in dev], "o-", label="dev")
    if zero:
        right.axhline(zero[0][metric], color="gray", linestyle="--", label="zero-shot")
    right.set(title=f"dev {metric}", xlabel="step")
    if dev or zero:
        right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
