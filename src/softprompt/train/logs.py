"""Training logs: one record per log point, in the run folder (JSONL, CSV) and in experiment trackers
(TensorBoard, Weights & Biases, MLflow, ... through ``accelerate``'s tracker interface); the PNG curves.

A record is ``{"step": 50, "split": "train" | "dev" | "test" | "zero_shot", <name>: <value>...}``.
``metrics.jsonl`` holds one record a line; ``metrics.csv`` the same numbers in long form
(``step,split,name,value``) so any spreadsheet reads it; trackers get ``<split>/<name>`` scalars,
and the resolved config (TensorBoard: as text, so hyper-parameters add no runs of their own). A
resumed run first drops records after the checkpoint's step — from the files, and from its
TensorBoard run (``purge_step``) — so the logs read as one uninterrupted run.

Examples:
    >>> log = MetricsLog(tmp_dir)
    >>> log.write("zero_shot", 0, {"accuracy": 60.0})
    >>> for step, loss, accuracy in ((10, 1.2, 70.0), (20, 0.8, 85.0), (30, 0.7, 80.0)):
    ...     log.write("train", step, {"loss": loss, "lr": 0.01})
    ...     log.write("dev", step, {"loss": loss + 0.1, "accuracy": accuracy})
    >>> [record["step"] for record in read_records(tmp_dir / JSONL_NAME) if record["split"] == "dev"]
    [10, 20, 30]
    >>> plot_curves(tmp_dir / JSONL_NAME, tmp_dir / PLOT_NAME, metric="accuracy").name
    'curves.png'
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"
PLOT_NAME = "curves.png"
TENSORBOARD_DIR = "tensorboard"
CSV_HEADER = ["step", "split", "name", "value"]

# Trackers' packages, for the message when one is asked for but not installed.
_PACKAGES = {"comet_ml": "comet-ml"}


class MetricsLog:
    """Appends records to ``<dir>/metrics.jsonl`` and ``<dir>/metrics.csv``, and logs them to the
    ``accelerator``'s trackers (if any were started, see :func:`start_trackers`)."""

    def __init__(self, directory: Path, *, resume_step: int | None = None, accelerator=None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.directory / JSONL_NAME
        self.csv = self.directory / CSV_NAME
        self.accelerator = accelerator
        if resume_step is None:
            for path in (self.jsonl, self.csv):
                path.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)

    def write(self, split: str, step: int, values: dict[str, float]) -> None:
        """Log ``values`` of ``split`` at ``step``."""
        record = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        new_csv = not self.csv.exists()
        with self.csv.open("a", newline="") as f:
            out = csv.writer(f)
            if new_csv:
                out.writerow(CSV_HEADER)
            out.writerows([step, split, name, value] for name, value in values.items())
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log({f"{split}/{name}": float(v) for name, v in values.items()}, step=step)

    def close(self) -> None:
        """Finish the trackers' runs (they flush and upload what they hold)."""
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.end_training()

    def _truncate(self, step: int) -> None:
        """Keep only the records a run had logged up to ``step`` (zero-shot records always stay); a
        line torn by a kill mid-write goes too, so appending starts on a line of its own."""
        records = [r for r in read_records(self.jsonl) if r["step"] <= step or r["split"] == "zero_shot"]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
        if self.csv.exists():
            rows = list(csv.reader(_whole_lines(self.csv)))
            rows = [row for row in rows[1:] if len(row) == len(CSV_HEADER)]
            kept = [row for row in rows if int(row[0]) <= step or row[1] == "zero_shot"]
            with self.csv.open("w", newline="") as f:
                csv.writer(f).writerows([CSV_HEADER, *kept])


def check_trackers(names: Sequence[str]) -> None:
    """Raise, naming the package to install, if a tracker ``names`` asks for is not installed here
    (``accelerate`` would leave it out without a word).

    Examples:
        >>> check_trackers(["tensorboard"])
    """
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    available = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in names if name in LoggerType.list() and name not in available]
    if missing:
        packages = " ".join(_PACKAGES.get(name, name) for name in missing)
        raise ValueError(f"train.report_to: {', '.join(missing)} not installed here; pip install {packages}")


def start_trackers(accelerator, config: Any, run_name: str, *, resume_step: int | None = None) -> None:
    """Start a run named ``run_name`` in each of the ``accelerator``'s trackers (its ``log_with``)
    under ``config.train.project``, with the resolved config as hyper-parameters.

    TensorBoard writes into the accelerator's logging folder, one run named after the project
    (``<run dir>/tensorboard/<project>``); a resumed run continues it, dropping the events logged
    after ``resume_step``.
    """
    if not accelerator.log_with:
        return
    accelerator.init_trackers(
        config.train.project,
        init_kwargs={
            "tensorboard": {} if resume_step is None else {"purge_step": resume_step + 1},
            "wandb": {"name": run_name},
            "mlflow": {"run_name": run_name},
        },
    )
    flat = _flatten(config.model_dump(mode="json"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            # add_hparams would write a TensorBoard run of its own for the hyper-parameters.
            tracker.writer.add_text("config", "```yaml\n" + config.to_yaml() + "```", 0)
        elif accelerator.is_main_process:
            tracker.store_init_configuration(flat)


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``: trackers take only bool, str, int, float
    and None, so lists and mappings inside a section become JSON text."""
    flat: dict[str, Any] = {}
    for section, options in config.items():
        if not isinstance(options, dict):
            options, section = {section: options}, ""
        for key, value in options.items():
            scalar = isinstance(value, bool | str | int | float) or value is None
            flat[f"{section}.{key}" if section else key] = value if scalar else json.dumps(value)
    return flat


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (none if it does not exist).

    A last line that a kill cut short (no newline, or not JSON: a filesystem may leave zeros) is
    left out with a warning; a broken line before the last is damage, and raises.

    Examples:
        >>> _ = (tmp_dir / "torn.jsonl").write_text('{"step": 1, "split": "train", "loss": 0.5}\\n{"step": 2, "spl')
        >>> read_records(tmp_dir / "torn.jsonl")
        [{'step': 1, 'split': 'train', 'loss': 0.5}]
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = _whole_lines(path)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(
                    f"{path}, line {number}: not a JSON record ({line[:60]!r}); the metrics file is damaged"
                ) from None
            logger.warning(
                "%s: dropped a torn last record %r (the run was killed while writing it)", path, line[:60]
            )
    return records


def _whole_lines(path: Path) -> list[str]:
    """The lines of ``path`` that were written whole (with their newline); a torn last line is dropped."""
    text = path.read_text(errors="replace")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        logger.warning(
            "%s: dropped a torn last line %r (the run was killed while writing it)", path, lines[-1][:60]
        )
        lines.pop()
    return lines


def plot_curves(jsonl: Path, out: Path, **options: Any) -> Path:
    """Write :func:`draw_curves` of a ``metrics.jsonl`` file as a PNG; ``options`` as it takes them."""
    import matplotlib.pyplot as plt

    figure = draw_curves(read_records(jsonl), **options)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return Path(out)


def draw_curves(
    records: list[dict[str, Any]],
    *,
    metric: str,
    best_step: int | None = None,
    loss_label: str = "cross-entropy (nats per item)",
    metric_unit: str = "%",
):
    """A figure of the loss (training and dev) and the dev ``metric`` against the optimiser step, with
    the best evaluation marked and the frozen model's (zero-shot) level as a labelled line.

    Args:
        records: a run's log records (:func:`read_records`).
        best_step: the step whose prompt was kept (a dotted line in both panels, and a star).
        loss_label: what the loss is, for the left y-axis.
        metric_unit: the metric's unit, for the right y-axis ("%" for percentages, "" for none).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    train = [r for r in records if r["split"] == "train" and "loss" in r]
    dev_loss = [r for r in records if r["split"] == "dev" and "loss" in r]
    dev = [r for r in records if r["split"] == "dev" and metric in r]
    zero = next((r[metric] for r in records if r["split"] == "zero_shot" and metric in r), None)

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], ".-", color="tab:blue",
              label="training (mean since the last point)")  # fmt: skip
    if dev_loss:
        left.plot(
            [r["step"] for r in dev_loss],
            [r["loss"] for r in dev_loss],
            "o-",
            color="tab:orange",
            label="dev",
        )
    left.set(title="loss", xlabel="optimiser step", ylabel=loss_label)
    if dev:
        right.plot([r["step"] for r in dev], [r[metric] for r in dev], "o-", color="tab:orange", label="dev")
    if zero is not None:
        right.axhline(zero, color="tab:gray", linestyle="--", linewidth=1.5, label=f"zero-shot {zero:.2f}")
    best = next((r for r in dev if r["step"] == best_step), None)
    if best is not None:
        for axis in (left, right):
            axis.axvline(best_step, color="tab:green", linestyle=":", linewidth=1.2)
        right.plot([best_step], [best[metric]], "*", color="tab:green", markersize=14, zorder=3,
                   label=f"best {best[metric]:.2f} at step {best_step}")  # fmt: skip
    values = [r[metric] for r in dev] + ([zero] if zero is not None else [])
    if values:  # room around every value, so the zero-shot line never lies on the frame
        low, high = min(values), max(values)
        pad = max(0.08 * (high - low), 1.0 if metric_unit == "%" else 0.05 * (abs(high) or 1.0))
        right.set_ylim(low - pad, high + pad)
    right.set(
        title=f"dev {metric}",
        xlabel="optimiser step",
        ylabel=f"{metric} ({metric_unit})" if metric_unit else metric,
    )
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure
