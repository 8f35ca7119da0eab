"""Sharing adapters: ``save_pretrained`` folders (softprompt's file, peft's layout, the model card),
``push_to_hub`` through a faked upload into a local Hugging Face cache, and ``from_pretrained`` from a
folder or a repo id at a revision — all offline, with clear errors for what is not there."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from huggingface_hub import CommitInfo, HfApi, ModelCard
from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoUrl
from tiny import random_ids, tiny_causal_lm, tiny_encoder, tiny_seq2seq_lm

import softprompt
from softprompt import sharing

PROMPT = softprompt.PromptTuningConfig(num_virtual_tokens=4)
TASK = {
    "kind": "classification",
    "template": "Review: {text}\nSentiment:",
    "label_words": ["negative", "positive"],
}
IDS = random_ids(2, 5)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def prompted(seed: int, base=None):
    config = softprompt.PromptTuningConfig(num_virtual_tokens=4, init="random", seed=seed)
    return softprompt.wrap(base or tiny_causal_lm("llama"), config)


# ------------------------------------------------------------------------------------ folders
def test_a_saved_folder_loads_in_softprompt_and_in_peft(tmp_path):
    peft = pytest.importorskip("peft")
    model = prompted(seed=1)
    folder = model.save_pretrained(tmp_path / "prompt")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "softprompt.safetensors",
    ]
    for source in (folder, folder / "softprompt.safetensors"):
        torch.testing.assert_close(
            logits(softprompt.PromptedModel.from_pretrained(tiny_causal_lm("llama"), source)), logits(model)
        )
    theirs = peft.PeftModel.from_pretrained(tiny_causal_lm("llama"), folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(input_ids=IDS).logits[:, -IDS.shape[1] :], logits(model), rtol=1e-5, atol=1e-5
        )


def test_a_prompt_peft_cannot_hold_gets_no_peft_layout_and_the_card_says_why(tmp_path):
    folder = tmp_path / "prompt"
    softprompt.wrap(tiny_seq2seq_lm("t5"), PROMPT).save_pretrained(folder)  # peft can hold this one
    assert (folder / "adapter_config.json").is_file()
    # A prefix at all three sites of an encoder-decoder: peft has one stack only. The stale layout goes.
    model = softprompt.wrap(tiny_seq2seq_lm("t5"), softprompt.PrefixTuningConfig(num_virtual_tokens=4))
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "softprompt.safetensors"]
    card = (folder / "README.md").read_text()
    assert "peft cannot load this prompt: peft puts prefixes in one stack only" in card
    assert "PeftModel" not in card
    again = softprompt.PromptedModel.from_pretrained(tiny_seq2seq_lm("t5"), folder)
    assert torch.equal(again.prompt.prefix, model.prompt.prefix)


def test_only_the_main_process_writes(tmp_path):
    assert prompted(seed=1).save_pretrained(tmp_path / "prompt", is_main_process=False) is None
    assert not (tmp_path / "prompt").exists()


# --------------------------------------------------------------------------------- model card
def card_parts(card: str) -> tuple[dict, str]:
    parsed = ModelCard(card)
    return parsed.data.to_dict(), parsed.text


def test_the_model_card_names_the_base_by_its_hub_id_and_shows_the_task_and_scores(tmp_path):
    base = tiny_causal_lm("llama")
    base.config._name_or_path = "smollm2-135m-instruct"  # softprompt's alias of the Hub model
    model = softprompt.wrap(base, PROMPT)
    model.task = TASK
    model.add_model_tags(["trl", "sft"])
    card = sharing.model_card(
        model, "alice/sst2-prompt", scores={"dev": {"accuracy": 0.8125}, "test": {"accuracy": 0.79}}
    )
    data, text = card_parts(card)
    assert data == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "library_name": "softprompt",
        "tags": ["softprompt", "prompt-tuning", "trl", "sft"],
    }
    assert text.startswith(
        "\n# sst2-prompt\n\nA prompt tuning soft prompt for [`HuggingFaceTB/SmolLM2-135M-Instruct`]"
        "(https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct), made with softprompt: "
        "4 virtual tokens, 128 trainable numbers."
    )
    assert "| method | `prompt_tuning` |" in text
    task_yaml = text.split("## Task\n\n```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(task_yaml) == TASK
    assert "| dev | accuracy | 0.8125 |\n| test | accuracy | 0.79 |" in text
    assert 'base = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in text
    assert 'model = softprompt.PromptedModel.from_pretrained(base, "alice/sst2-prompt")' in text
    assert 'model = PeftModel.from_pretrained(base, "alice/sst2-prompt")' in text


def test_a_classifiers_card_mentions_its_head_and_label_count(tmp_path):
    model = softprompt.wrap(tiny_encoder("bert", num_labels=3), PROMPT, pooling="mean")
    data, text = card_parts((model.save_pretrained(tmp_path / "clf") / "README.md").read_text())
    assert data["base_model"] == "tiny-bert"
    assert "this repo holds only the prompt and the new task head." in text
    assert '| model options | `{"pooling": "mean"}` |' in text
    assert 'AutoModelForSequenceClassification.from_pretrained("tiny-bert", num_labels=3)' in text
    assert "peft cannot load this prompt: peft has no mean-pooling head" in text


def test_a_local_base_model_is_named_but_not_linked(tmp_path):
    base = tiny_causal_lm("llama")
    base.config._name_or_path = str(tmp_path)  # a folder on this machine
    data, text = card_parts(sharing.model_card(softprompt.wrap(base, PROMPT), "alice/p"))
    assert "base_model" not in data
    assert f"`{tmp_path}` (a local model)" in text


# ---------------------------------------------------------------------------- a faked Hub
def fill_cache(cache: Path, repo_id: str, files: dict[str, bytes], revision: str) -> str:
    """Put ``files`` into the Hugging Face cache as one commit of ``repo_id`` at ``revision``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(b"".join(name.encode() + data for name, data in sorted(files.items()))).hexdigest()
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


class FakeHub:
    """``HfApi``'s repo, branch and upload calls, landing in the local cache instead of the Hub."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}  # (repo, revision) -> files
        self.calls: list[tuple] = []

    def create_repo(self, api, repo_id, *, private=None, exist_ok=False, repo_type=None, **kwargs):
        self.calls.append(("create_repo", repo_id, private))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, api, repo_id, *, branch, exist_ok=False, **kwargs):
        self.calls.append(("create_branch", repo_id, branch))
        self.files.setdefault((repo_id, branch), dict(self.files.get((repo_id, "main"), {})))

    def upload_folder(
        self, api, *, repo_id, folder_path, revision=None, commit_message=None, delete_patterns=(), **kwargs
    ):
        revision = revision or "main"
        self.calls.append(("upload_folder", repo_id, revision, commit_message))
        files = {
            name: data
            for name, data in self.files.get((repo_id, revision), {}).items()
            if not any(fnmatch.fnmatch(name, pattern) for pattern in delete_patterns)
        }
        files |= {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.files[(repo_id, revision)] = files
        oid = fill_cache(self.cache, repo_id, files, revision)
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
            commit_message=commit_message,
            commit_description="",
            oid=oid,
        )


@pytest.fixture
def hub(offline_hub, monkeypatch) -> FakeHub:
    fake = FakeHub(offline_hub)
    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, lambda api, *a, _name=name, **k: getattr(fake, _name)(api, *a, **k))
    return fake


def test_push_to_hub_then_from_pretrained_by_repo_id_and_revision(hub):
    first, second = prompted(seed=1), prompted(seed=2)
    info = first.push_to_hub("alice/tiny-prompt", commit_message="first prompt", private=True)
    second.push_to_hub("alice/tiny-prompt", revision="v2")
    assert hub.calls == [
        ("create_repo", "alice/tiny-prompt", True),
        ("upload_folder", "alice/tiny-prompt", "main", "first prompt"),
        ("create_repo", "alice/tiny-prompt", None),
        ("create_branch", "alice/tiny-prompt", "v2"),
        ("upload_folder", "alice/tiny-prompt", "v2", "Upload soft prompt"),
    ]
    assert sorted(hub.files[("alice/tiny-prompt", "main")]) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "softprompt.safetensors",
    ]
    card = hub.files[("alice/tiny-prompt", "main")]["README.md"].decode()
    assert 'softprompt.PromptedModel.from_pretrained(base, "alice/tiny-prompt")' in card

    load = softprompt.PromptedModel.from_pretrained
    torch.testing.assert_close(logits(load(tiny_causal_lm("llama"), "alice/tiny-prompt")), logits(first))
    torch.testing.assert_close(
        logits(load(tiny_causal_lm("llama"), "alice/tiny-prompt", revision="v2")), logits(second)
    )
    by_commit = load(tiny_causal_lm("llama"), "alice/tiny-prompt", revision=info.oid, local_files_only=True)
    torch.testing.assert_close(logits(by_commit), logits(first))


def test_pushing_a_prompt_peft_cannot_hold_removes_the_old_peft_layout(hub):
    softprompt.wrap(tiny_encoder("bert"), PROMPT).push_to_hub("bob/clf")
    assert "adapter_config.json" in hub.files[("bob/clf", "main")]
    softprompt.wrap(tiny_encoder("bert"), PROMPT, pooling="mean").push_to_hub("bob/clf")
    assert sorted(hub.files[("bob/clf", "main")]) == ["README.md", "softprompt.safetensors"]
    again = softprompt.PromptedModel.from_pretrained(tiny_encoder("bert"), "bob/clf")
    assert again.pooling == "mean"


def test_the_real_hub_is_never_reached_in_tests():
    with pytest.raises(OfflineModeIsEnabled):
        prompted(seed=1).push_to_hub("alice/never-uploaded")


# ------------------------------------------------------------------------------------- errors
def test_a_repo_missing_from_the_offline_cache_is_named(offline_hub):
    with pytest.raises(FileNotFoundError) as err:
        softprompt.PromptedModel.from_pretrained(tiny_causal_lm("llama"), "bob/nothing")
    assert str(err.value) == (
        f"'bob/nothing' is not in the Hugging Face cache ({offline_hub}), and the Hub is not reachable here "
        "(HF_HUB_OFFLINE=1 or local_files_only=True): download it once online"
    )


def test_a_revision_missing_from_the_offline_cache_lists_the_cached_ones(hub, offline_hub):
    prompted(seed=1).push_to_hub("alice/tiny-prompt")
    prompted(seed=2).push_to_hub("alice/tiny-prompt", revision="v2")
    with pytest.raises(FileNotFoundError) as err:
        softprompt.PromptedModel.from_pretrained(tiny_causal_lm("llama"), "alice/tiny-prompt", revision="v9")
    assert str(err.value) == (
        f"'alice/tiny-prompt' is in the Hugging Face cache ({offline_hub}) but not at revision 'v9' "
        "(cached: main, v2), and the Hub is not reachable here (HF_HUB_OFFLINE=1 or local_files_only=True)"
    )


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (RepositoryNotFoundError, "the Hub has no repo 'bob/private' (if it is private or gated: log in"),
        (RevisionNotFoundError, "the Hub repo 'bob/private' has no revision 'v3'"),
    ],
)
def test_the_hubs_answers_become_clear_errors(error, message, monkeypatch):
    response = httpx.Response(
        404, request=httpx.Request("GET", "https://huggingface.co/api/models/bob/private")
    )

    def refuse(*args, **kwargs):
        raise error("404", response=response)

    monkeypatch.setattr(sharing, "snapshot_download", refuse)
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        sharing.resolve("bob/private", revision="v3")


def test_a_revision_for_a_local_folder_is_refused(tmp_path):
    folder = prompted(seed=1).save_pretrained(tmp_path / "prompt")
    with pytest.raises(ValueError, match=r"revision='v1' names a Hub revision, but .* is a local path"):
        sharing.resolve(folder, revision="v1")


def test_neither_a_path_nor_a_repo_id_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "deep"
    with pytest.raises(FileNotFoundError, match=r"no adapter at .*deep, and '.*' is not a Hub repo id"):
        sharing.resolve(missing)


def test_a_folder_without_an_adapter_says_so_and_recognises_a_trainer_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds neither softprompt.safetensors nor a peft adapter$"):
        sharing.resolve(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"a Trainer checkpoint\? train with .*SaveAdapterCallback"):
        sharing.resolve(tmp_path)


def test_from_pretrained_on_a_class_of_another_kind_is_refused(tmp_path):
    folder = prompted(seed=1).save_pretrained(tmp_path / "prompt")
    with pytest.raises(TypeError, match="makes a SoftPromptModel, not a Seq2SeqSoftPromptModel"):
        softprompt.Seq2SeqSoftPromptModel.from_pretrained(tiny_causal_lm("llama"), folder)
