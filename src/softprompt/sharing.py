"""Sharing adapters: the folder ``save_pretrained`` writes, its model card, and the Hugging Face Hub.

An adapter folder (and a Hub repo) holds:

* ``softprompt.safetensors`` — the adapter file (:mod:`softprompt.files.adapter`): the prompt, a new
  task head, and the record (method, config, base model, task);
* ``adapter_config.json`` + ``adapter_model.safetensors`` — the same prompt in ``peft``'s layout,
  where peft can hold it, so ``PeftModel.from_pretrained(base, repo)`` loads the repo too;
* ``README.md`` — the model card: YAML front matter (``base_model`` by its Hub id,
  ``library_name``, ``tags``), the method and size, the task, the run's scores, and how to load
  the adapter in softprompt and in peft.

Hub repos are read through the Hugging Face cache (``snapshot_download``), so ``HF_HUB_OFFLINE=1``
or ``local_files_only=True`` load what the cache holds without a network.

Examples:
    >>> base_model.config.name_or_path = "smollm2-135m-instruct"   # the base by its softprompt alias
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> model.task = {"kind": "classification", "template": "{text} ->", "label_words": ["no", "yes"]}
    >>> card = model_card(model, "alice/tiny-prompt", scores={"test": {"accuracy": 0.75}})
    >>> print(card[: card.index("# ")])
    ---
    base_model: HuggingFaceTB/SmolLM2-135M-Instruct
    library_name: softprompt
    tags:
    - softprompt
    - prompt-tuning
    ---
    <BLANKLINE>
    <BLANKLINE>
    >>> resolve(model.save_pretrained(tmp_dir / "tiny-prompt")).name
    'softprompt.safetensors'
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from huggingface_hub import CommitInfo, HfApi, ModelCardData, constants, snapshot_download
from huggingface_hub.errors import (
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

from softprompt.files import peft as peft_files
from softprompt.files.adapter import ADAPTER_FILENAME, split_head
from softprompt.files.atomic import atomic_write
from softprompt.hub import HEADS_WITH_LABELS, hub_id
from softprompt.kinds import HEADS

if TYPE_CHECKING:
    from softprompt.models import PromptedModel

CARD_NAME = "README.md"
# What an adapter folder may hold beside its card; the rest of a repo is never downloaded.
ADAPTER_FILES = (ADAPTER_FILENAME, peft_files.CONFIG_NAME, peft_files.WEIGHTS_NAME)
# Scores as a run reports them: split (dev, test, zero-shot...) -> metric -> value.
Scores = dict[str, dict[str, float]]


def save_folder(
    model: PromptedModel,
    directory: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    scores: Scores | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write ``model``'s adapter folder: softprompt's file, peft's layout (where peft can hold the
    prompt; a stale one is removed) and the model card naming ``repo_id`` (else the folder)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / ADAPTER_FILENAME, dtype=dtype)
    try:
        model.export_peft(folder)
        peft_refusal = None
    except ValueError as err:  # peft has no layout for this prompt: say so in the card
        peft_refusal = str(err)
        for name in (peft_files.CONFIG_NAME, peft_files.WEIGHTS_NAME):
            (folder / name).unlink(missing_ok=True)
    card = model_card(model, repo_id or str(directory), scores=scores, peft_refusal=peft_refusal)
    atomic_write(folder / CARD_NAME, lambda tmp: tmp.write_text(card))
    return folder


def model_card(
    model: PromptedModel, repo_id: str, *, scores: Scores | None = None, peft_refusal: str | None = None
) -> str:
    """The README of ``model``'s adapter folder or repo ``repo_id``.

    ``peft_refusal``: why peft cannot load it (no peft section then).
    """
    record = model.adapter_record()
    base_name = record["base_model"]["name_or_path"]
    base_id = hub_id(base_name)
    method = record["method"]
    tags = ["softprompt", method.replace("_", "-"), *(model.model_tags or [])]
    data = ModelCardData(base_model=base_id, library_name="softprompt", tags=list(dict.fromkeys(tags)))

    tensors = model.adapter_tensors()
    numbers = sum(t.numel() for t in tensors.values())
    with_head = " and the new task head" if split_head(tensors)[1] else ""
    config = record["config"]
    head = HEADS[model.shape.head]
    labels = f", num_labels={model.config.num_labels}" if model.shape.head in HEADS_WITH_LABELS else ""
    base_line = (
        f"[`{base_id}`](https://huggingface.co/{base_id})" if base_id else f"`{base_name}` (a local model)"
    )
    lines = [
        f"# {Path(repo_id).name}",
        "",
        f"A {method.replace('_', ' ')} soft prompt for {base_line}, made with softprompt: "
        f"{config['num_virtual_tokens']} virtual tokens, {numbers:,} trainable numbers. "
        f"The base model stays frozen; this repo holds only the prompt{with_head}.",
        "",
        "## Prompt",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{method}` |",
        f"| virtual tokens | {config['num_virtual_tokens']} |",
        f"| trainable numbers | {numbers:,} |",
        f"| base model | {base_line} ({model.shape.family}, {model.shape.head}) |",
        f"| config | `{json.dumps(config, sort_keys=True)}` |",
    ]
    if "model_options" in record:
        lines.append(f"| model options | `{json.dumps(record['model_options'], sort_keys=True)}` |")
    if model.task is not None:
        task = yaml.dump(
            model.task, Dumper=_CardYaml, sort_keys=False, allow_unicode=True, default_flow_style=None
        )
        task = task.strip()
        lines += ["", "## Task", "", "```yaml", task, "```"]
    if scores:
        lines += ["", "## Scores", "", "| split | metric | value |", "|---|---|---|"]
        lines += [
            f"| {split} | {metric} | {value:.4g} |"
            for split, values in scores.items()
            for metric, value in values.items()
        ]
    base_ref = json.dumps(base_id or base_name)
    load_base = f"base = {head.auto_class}.from_pretrained({base_ref}{labels})"
    lines += [
        "",
        "## Use it",
        "",
        "With [softprompt](https://pypi.org/project/softprompt/):",
        "",
        "```python",
        "import softprompt",
        f"from transformers import AutoTokenizer, {head.auto_class}",
        "",
        load_base,
        f"tokenizer = AutoTokenizer.from_pretrained({base_ref})",
        f"model = softprompt.PromptedModel.from_pretrained(base, {json.dumps(repo_id)})",
        "```",
        "",
    ]
    if peft_refusal is None:
        lines += [
            "With [peft](https://huggingface.co/docs/peft) (the same numbers in peft's layout):",
            "",
            "```python",
            "from peft import PeftModel",
            f"from transformers import {head.auto_class}",
            "",
            load_base,
            f"model = PeftModel.from_pretrained(base, {json.dumps(repo_id)})",
            "```",
        ]
    else:
        lines.append(f"peft cannot load this prompt: {peft_refusal}.")
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


class _CardYaml(yaml.SafeDumper):
    """YAML as a person writes a run config: multi-line templates as literal blocks."""


_CardYaml.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def push_to_hub(
    model: PromptedModel,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload soft prompt",
    create_pr: bool = False,
    scores: Scores | None = None,
    dtype: torch.dtype | None = None,
) -> CommitInfo:
    """Create ``repo_id`` if needed (and the branch ``revision``) and upload ``model``'s adapter folder
    (its tensors in ``dtype``, default: as they are).

    Adapter files the new folder no longer has (a peft layout) are deleted from the repo.
    """
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None and not create_pr:
        api.create_branch(repo.repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_folder(model, tmp, dtype=dtype, scores=scores, repo_id=repo.repo_id)
        return api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=tmp,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
            delete_patterns=list(ADAPTER_FILES),
        )


def resolve(
    path_or_repo_id: str | os.PathLike,
    *,
    revision: str | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """What :func:`softprompt.load` reads for a local folder or file, or a Hub repo at ``revision``:
    softprompt's file when there is one, else a peft folder."""
    local = Path(path_or_repo_id).expanduser()
    if local.exists():
        if revision is not None:
            raise ValueError(f"revision={revision!r} names a Hub revision, but {local} is a local path")
        return _adapter_in(local)
    repo_id = str(path_or_repo_id)
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise FileNotFoundError(
            f"no adapter at {local}, and {repo_id!r} is not a Hub repo id ('user/name')"
        ) from None
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(ADAPTER_FILES),
            local_files_only=local_files_only,
            token=token,
            cache_dir=cache_dir,
        )
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"the Hub has no repo {repo_id!r} (if it is private or gated: log in with `hf auth login` or pass token=)"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"the Hub repo {repo_id!r} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(_not_cached(repo_id, revision, cache_dir)) from None
    return _adapter_in(Path(folder))


def _adapter_in(path: Path) -> Path:
    if path.is_file() or (path / ADAPTER_FILENAME).is_file():
        return path if path.is_file() else path / ADAPTER_FILENAME
    if peft_files.is_peft_folder(path):
        return path
    hint = (
        " (a Trainer checkpoint? train with softprompt.integrations.trainer.SaveAdapterCallback)"
        if (path / "model.safetensors").is_file()
        else ""
    )
    raise FileNotFoundError(f"{path} holds neither {ADAPTER_FILENAME} nor a peft adapter{hint}")


def _not_cached(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None) -> str:
    """Why an offline look-up failed: the repo is not cached, or not at this revision."""
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    refs = cache / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs"
    offline = "the Hub is not reachable here (HF_HUB_OFFLINE=1 or local_files_only=True)"
    if refs.is_dir():
        cached = sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())
        return (
            f"{repo_id!r} is in the Hugging Face cache ({cache}) but not at revision {revision or 'main'!r} "
            f"(cached: {', '.join(cached)}), and {offline}"
        )
    return f"{repo_id!r} is not in the Hugging Face cache ({cache}), and {offline}: download it once online"


__all__ = ["ADAPTER_FILES", "CARD_NAME", "model_card", "push_to_hub", "resolve", "save_folder"]
