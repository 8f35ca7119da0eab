"""What a run leaves: experiment trackers through accelerate (TensorBoard for real; W&B offline and an
MLflow file store where installed; any registered tracker), run folders that keep an earlier run until
the new one has loaded, one TensorBoard run per run, and curves a reader takes in at a glance."""

from __future__ import annotations

import json

import pytest
from accelerate.tracking import GeneralTracker, get_available_trackers, register_tracker_class
from train_helpers import classification_config, write_jsonl

from softprompt.train import ConfigError, RunError, load_config, train
from softprompt.train.logs import draw_curves


class Recorder(GeneralTracker):
    """A tracker that keeps what accelerate hands it (registered by name, as users register theirs)."""

    name = "recorder"
    requires_logging_directory = False
    runs: list[dict] = []

    def __init__(self, project_name, **kwargs):
        super().__init__()
        self.record = {
            "project": project_name,
            "kwargs": kwargs,
            "config": None,
            "logs": [],
            "finished": False,
        }
        Recorder.runs.append(self.record)

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        self.record["config"] = values

    def log(self, values, step=None, **kwargs):
        self.record["logs"].append((step, values))

    def finish(self):
        self.record["finished"] = True


register_tracker_class(Recorder)


def config_for(tiny_gpt2, cls_data, out, **train_options):
    raw = classification_config(tiny_gpt2, cls_data, out, max_steps=4, eval_every=2, **train_options)
    raw["data"]["test"] = raw["data"]["dev"]
    return load_config(None, base=raw)


def test_a_registered_tracker_gets_the_config_every_score_and_the_end(
    tiny_gpt2, gpt2_base, cls_data, tmp_path
):
    Recorder.runs.clear()
    summary = train(config_for(tiny_gpt2, cls_data, tmp_path / "run", report_to=["recorder"], project="sp-tests"),
                    base=gpt2_base)  # fmt: skip
    (record,) = Recorder.runs
    assert record["project"] == "sp-tests" and record["finished"]
    assert (
        record["config"]["train.lr"] == 0.1
        and record["config"]["task.label_words"] == '{"pos": "good", "neg": "bad"}'
    )
    logged = {(step, name): value for step, values in record["logs"] for name, value in values.items()}
    assert logged[(0, "zero_shot/accuracy")] == summary.zero_shot["accuracy"]
    assert logged[(summary.best_step, "dev/accuracy")] == summary.dev["accuracy"]
    assert logged[(summary.best_step, "test/accuracy")] == summary.test["accuracy"]
    assert {step for step, name in logged if name == "train/loss"} == {4}  # log_every 10: the last step


def test_tensorboard_keeps_one_run_per_run_across_reruns_and_resumes(
    tiny_gpt2, gpt2_base, cls_data, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def config(**train_options):
        raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run", max_steps=4, eval_every=2, log_every=1,
                                    report_to=["tensorboard"], **train_options)  # fmt: skip
        raw["output"]["overwrite"] = True
        return load_config(None, base=raw)

    def scalars():
        runs = sorted((tmp_path / "run" / "tensorboard").iterdir())
        assert [run.name for run in runs] == [
            "softprompt"
        ]  # one TensorBoard run (train.project): no hparams runs
        events = EventAccumulator(str(runs[0])).Reload()
        return {tag: [event.step for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    train(config(), base=gpt2_base)
    first = scalars()
    assert (
        first["train/loss"] == [1, 2, 3, 4]
        and first["dev/accuracy"] == [2, 4]
        and first["zero_shot/accuracy"] == [0]
    )
    train(config(), base=gpt2_base)  # overwrite: the earlier events go
    assert scalars() == first
    train(config(), base=gpt2_base, stop_after=3)
    train(config(), base=gpt2_base, resume=True)  # the resumed run continues the same TensorBoard run
    assert scalars() == first


def test_unknown_and_uninstalled_trackers_are_refused_before_anything_is_written(
    tiny_gpt2, cls_data, tmp_path
):
    with pytest.raises(
        ConfigError, match=r"train.report_to: unknown tracker neptune; choose from \[.*'mlflow'"
    ):
        config_for(tiny_gpt2, cls_data, tmp_path / "a", report_to=["neptune"])
    missing = sorted(
        {"aim", "clearml", "dvclive", "swanlab", "trackio"} - {str(t) for t in get_available_trackers()}
    )
    if not missing:
        pytest.skip("every tracker is installed here")
    with pytest.raises(
        RunError, match=f"train.report_to: {missing[0]} not installed here; pip install {missing[0]}"
    ):
        train(config_for(tiny_gpt2, cls_data, tmp_path / "b", report_to=[missing[0]]))
    assert not (tmp_path / "b").exists()


def test_wandb_offline(tiny_gpt2, gpt2_base, cls_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(config_for(tiny_gpt2, cls_data, tmp_path / "run", report_to=["wandb"]), base=gpt2_base)
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))


def test_mlflow_file_store(tiny_gpt2, gpt2_base, cls_data, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install mlflow-skinny)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses the file store without it
    summary = train(config_for(tiny_gpt2, cls_data, tmp_path / "run", report_to=["mlflow"], project="sp"),
                    base=gpt2_base)  # fmt: skip
    mlflow.set_tracking_uri(f"file:{tmp_path / 'mlruns'}")
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("sp").experiment_id], output_format="list")
    assert run.info.run_name == "run" and run.data.params["train.lr"] == "0.1"
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "dev/accuracy")
    assert [metric.step for metric in history] == [2, 4]
    assert summary.dev["accuracy"] in [metric.value for metric in history]


def test_a_failing_rerun_leaves_the_earlier_run_as_it_was(tiny_gpt2, gpt2_base, cls_data, tmp_path):
    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run", max_steps=2, eval_every=2,
                                report_to=["tensorboard"])  # fmt: skip
    raw["output"]["plot"] = True
    train(load_config(None, base=raw), base=gpt2_base)
    before = {
        path.relative_to(tmp_path): path.read_bytes()
        for path in (tmp_path / "run").rglob("*")
        if path.is_file()
    }
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a film", "label": "meh"}] * 8)
    raw["output"]["overwrite"] = True
    for change, error in (
        ({"data": {**raw["data"], "train": str(bad)}}, "label value 'meh'"),  # bad rows
        (
            {"task": {**raw["task"], "label_words": {"pos": "good", "neg": "goods"}}},
            "share their first token",
        ),
    ):
        with pytest.raises(ValueError, match=error):
            train(load_config(None, base={**raw, **change}), base=gpt2_base)
        after = {
            path.relative_to(tmp_path): path.read_bytes()
            for path in (tmp_path / "run").rglob("*")
            if path.is_file()
        }
        assert after == before


def test_curves_have_labelled_axes_the_best_step_and_a_visible_zero_shot_line():
    records = [{"step": 0, "split": "zero_shot", "accuracy": 50.0, "loss": 0.9}]
    for step, loss, accuracy in ((10, 0.8, 50.0), (20, 0.6, 75.0), (30, 0.5, 70.0)):
        records += [{"step": step, "split": "train", "loss": loss, "lr": 0.01},
                    {"step": step, "split": "dev", "loss": loss + 0.1, "accuracy": accuracy}]  # fmt: skip
    left, right = draw_curves(records, metric="accuracy", best_step=20).axes
    assert (left.get_xlabel(), left.get_ylabel()) == ("optimiser step", "cross-entropy (nats per item)")
    assert (right.get_xlabel(), right.get_ylabel()) == ("optimiser step", "accuracy (%)")
    labels = right.get_legend_handles_labels()[1]
    assert labels == ["dev", "zero-shot 50.00", "best 75.00 at step 20"]
    low, high = right.get_ylim()
    assert (
        low < 50.0 - 0.5 and high > 75.0 + 0.5
    )  # the zero-shot line (also the lowest dev score) is off the frame
    assert [
        line.get_xdata()[0] for axis in (left, right) for line in axis.lines if line.get_linestyle() == ":"
    ] == [20, 20]


def test_the_metrics_files_read_as_one_run(tmp_path):
    from softprompt.train.logs import CSV_NAME, JSONL_NAME, MetricsLog

    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write("train", step, {"loss": 1.0 / step})
    MetricsLog(tmp_path, resume_step=2).write("train", 3, {"loss": 0.25})  # resumed after step 2
    assert [json.loads(line)["loss"] for line in (tmp_path / JSONL_NAME).read_text().splitlines()] == [
        1.0,
        0.5,
        0.25,
    ]
    assert (tmp_path / CSV_NAME).read_text().splitlines()[1:] == [
        "1,train,loss,1.0",
        "2,train,loss,0.5",
        "3,train,loss,0.25",
    ]


def test_a_torn_last_line_is_dropped_and_a_resumed_run_appends_on_a_line_of_its_own(tmp_path, caplog):
    from softprompt.train.logs import CSV_NAME, JSONL_NAME, MetricsLog, read_records

    log = MetricsLog(tmp_path)
    for step in (1, 2):
        log.write("train", step, {"loss": 1.0 / step})
    # kill -9 in the middle of the step-3 record: a line without its end in both files
    with (tmp_path / JSONL_NAME).open("a") as f:
        f.write('{"step": 3, "split": "train", "lo')
    with (tmp_path / CSV_NAME).open("a") as f:
        f.write("3,train,lo")
    assert [r["step"] for r in read_records(tmp_path / JSONL_NAME)] == [1, 2]
    assert "dropped a torn last line" in caplog.text
    MetricsLog(tmp_path, resume_step=2).write("train", 3, {"loss": 0.25})
    assert read_records(tmp_path / JSONL_NAME) == [
        {"step": 1, "split": "train", "loss": 1.0},
        {"step": 2, "split": "train", "loss": 0.5},
        {"step": 3, "split": "train", "loss": 0.25},
    ]
    assert (tmp_path / CSV_NAME).read_text().splitlines() == [
        "step,split,name,value",
        "1,train,loss,1.0",
        "2,train,loss,0.5",
        "3,train,loss,0.25",
    ]


def test_a_last_line_of_zeros_is_torn_and_a_broken_line_before_it_is_damage(tmp_path):
    from softprompt.train.logs import MetricsLog, read_records

    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "split": "dev", "accuracy": 50.0}\n' + "\0" * 8 + "\n"
    )  # a filesystem's zeros
    assert read_records(path) == [{"step": 1, "split": "dev", "accuracy": 50.0}]
    MetricsLog(tmp_path, resume_step=1)
    assert path.read_text() == '{"step": 1, "split": "dev", "accuracy": 50.0}\n'
    path.write_text('{"step": 1, "spl\n{"step": 2, "split": "dev", "accuracy": 50.0}\n')
    with pytest.raises(
        ValueError, match=r"metrics.jsonl, line 1: not a JSON record .*the metrics file is damaged"
    ):
        read_records(path)
