"""A run folder is a shareable adapter folder (model card with the run's scores, peft layout), and
``softprompt train --push-to-hub REPO`` uploads it — through a faked upload, never the network."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoUrl
from train_helpers import classification_config
from typer.testing import CliRunner

import softprompt
from softprompt.cli import app

runner = CliRunner()


class Uploads:
    """``HfApi.create_repo`` / ``upload_folder`` recorded: repo id -> the uploaded files' bytes."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}

    def create_repo(self, api, repo_id, **kwargs):
        self.repos.setdefault(repo_id, {})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, api, *, repo_id, folder_path, **kwargs):
        self.repos[repo_id] = {path.name: path.read_bytes() for path in Path(folder_path).iterdir()}
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/abc123",
            commit_message="Upload soft prompt",
            commit_description="",
            oid="abc123",
        )


@pytest.fixture
def uploads(monkeypatch) -> Uploads:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake = Uploads()
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **k: fake.create_repo(api, repo_id, **k))
    monkeypatch.setattr(HfApi, "upload_folder", lambda api, **k: fake.upload_folder(api, **k))
    return fake


def write_config(tiny_gpt2, cls_data, tmp_path) -> Path:
    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run", max_steps=4, eval_every=2)
    raw["data"]["test"] = raw["data"]["dev"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def score_rows(card: str) -> dict[tuple[str, str], str]:
    """The card's score table: (split, metric) -> value as printed."""
    table = card.split("## Scores", 1)[1].split("##", 1)[0]
    cells = [line.strip("|").split("|") for line in table.strip().splitlines()[2:]]
    return {(split.strip(), metric.strip()): value.strip() for split, metric, value in cells}


def test_train_pushes_the_best_adapter_with_its_scores(tiny_gpt2, gpt2_base, cls_data, tmp_path, uploads):
    result = runner.invoke(app, ["train", str(write_config(tiny_gpt2, cls_data, tmp_path)),
                                 "--push-to-hub", "alice/tiny-run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pushed       https://huggingface.co/alice/tiny-run/commit/abc123" in result.output
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["hub_commit"] == "https://huggingface.co/alice/tiny-run/commit/abc123"
    pushed = uploads.repos["alice/tiny-run"]
    assert sorted(pushed) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "softprompt.safetensors",
    ]
    assert pushed["softprompt.safetensors"] == (run / "softprompt.safetensors").read_bytes()
    card = pushed["README.md"].decode()
    scores = score_rows(card)
    for split, key in (("dev", "dev"), ("test", "test"), ("dev, zero-shot", "zero_shot")):
        assert scores[(split, "accuracy")] == f"{summary[key]['accuracy']:.4g}"
    assert 'PromptedModel.from_pretrained(base, "alice/tiny-run")' in card
    # the run folder holds the same card (naming the folder) and loads as a save_pretrained folder
    assert score_rows((run / "README.md").read_text()) == scores
    again = softprompt.PromptedModel.from_pretrained(gpt2_base[0], run)
    assert again.task["label_words"] == {"pos": "good", "neg": "bad"}


def test_a_bad_repo_id_is_refused_before_anything_is_written(tiny_gpt2, cls_data, tmp_path, uploads):
    result = runner.invoke(app, ["train", str(write_config(tiny_gpt2, cls_data, tmp_path)),
                                 "--push-to-hub", "not a repo"])  # fmt: skip
    assert result.exit_code == 2 and result.output.startswith("push to hub: Repo id must")
    assert not (tmp_path / "run").exists() and uploads.repos == {}


def test_a_failed_upload_leaves_the_finished_run_and_says_how_to_push_again(
    tiny_gpt2, cls_data, tmp_path, uploads, monkeypatch
):
    def refuse(api, **kwargs):
        request = httpx.Request("POST", "https://huggingface.co/api/models/alice/tiny-run/commit/main")
        raise HfHubHTTPError("403 Forbidden: you cannot write to alice/tiny-run",
                             response=httpx.Response(403, request=request))  # fmt: skip

    monkeypatch.setattr(HfApi, "upload_folder", refuse)
    result = runner.invoke(app, ["train", str(write_config(tiny_gpt2, cls_data, tmp_path)),
                                 "--push-to-hub", "alice/tiny-run"])  # fmt: skip
    run = tmp_path / "run"
    assert result.exit_code == 2
    assert (
        f"the run in {run} finished, but pushing it to alice/tiny-run failed: 403 Forbidden" in result.output
    )
    assert f".from_pretrained(base, '{run}').push_to_hub('alice/tiny-run')" in result.output
    assert (run / "softprompt.safetensors").is_file() and (run / "README.md").is_file()


def test_a_fresh_run_removes_the_earlier_runs_card_and_peft_layout(tiny_gpt2, gpt2_base, cls_data, tmp_path):
    from softprompt.train import load_config, train

    raw = classification_config(tiny_gpt2, cls_data, tmp_path / "run", max_steps=2, eval_every=2)
    train(load_config(None, base=raw), base=gpt2_base)
    assert (tmp_path / "run" / "adapter_config.json").is_file()
    raw["output"]["overwrite"] = True
    train(load_config(None, base=raw), base=gpt2_base, stop_after=1)  # interrupted: no adapter yet
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.safetensors", "config.yaml", "metrics.csv", "metrics.jsonl", "summary.json",
    ]  # fmt: skip


def test_output_push_to_hub_in_the_config_uploads_the_run(uploads, tiny_gpt2, cls_data, tmp_path):
    config = write_config(tiny_gpt2, cls_data, tmp_path)
    result = runner.invoke(app, ["train", str(config), "--set", "output.push_to_hub=alice/from-config"])
    assert result.exit_code == 0, result.output
    assert "softprompt.safetensors" in uploads.repos["alice/from-config"]
