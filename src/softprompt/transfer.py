"""Transfer between tasks: choosing a source prompt for a new task (SPoT), training one prompt over
several tasks (MPT), and loading a multitask file's tasks.

**SPoT** (Vu et al. 2022, arXiv 2110.07904): a prompt trained on a source task is a better start for
a target task than any init, when the tasks are alike. Which source to take is read from the prompts
themselves: the target's prompt is trained briefly (its *task embedding*), and each source prompt is
scored by its cosine similarity to it — :func:`rank_sources`. Two of the paper's measures:
``"average"`` (cosine of the average-pooled prompts, its best-correlated one and the default) and
``"per_token"`` (the mean cosine over every pair of their tokens). The chosen source then starts the
target's run: ``PromptTuningConfig(init="file", init_file=source)`` (:func:`softprompt.initializers.rows_from_file`).

**MPT** (Wang et al. 2023, arXiv 2303.02861): one prompt shared by several tasks, each task's prompt
the shared one times a rank-1 matrix of its own (:mod:`softprompt.methods.multitask`).
:class:`MultitaskObjective` trains it on batches whose rows carry a task (:func:`multitask_batches`,
examples-proportional mixing), each row with its own task's prompt and label words;
``softprompt.load(base, path, task=name)`` gives one task back as an ordinary prompt-tuning model,
:func:`load_multitask` the whole prompt.
The paper distils the shared prompt from single-task teachers first; this trains it directly, the
variant its ablation reports as a few points lower.

Examples:
    >>> source = torch.tensor([[1.0, 0.0], [0.0, 1.0]])       # two tokens, averaging to (0.5, 0.5)
    >>> target = torch.tensor([[1.0, 1.0]])
    >>> round(prompt_similarity(target, source), 4), round(prompt_similarity(target, source, "per_token"), 4)
    (1.0, 0.7071)
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.api import wrap
from softprompt.data import Encoded, collate, make_dataloader
from softprompt.families import model_shape
from softprompt.files.validate import read_prompt
from softprompt.injection import RowPrompts
from softprompt.injection.positions import last_token_index
from softprompt.kinds import KINDS
from softprompt.methods import method_of
from softprompt.methods.multitask import MultitaskPrompt, read_multitask
from softprompt.models import PromptedModel, SoftPromptModel
from softprompt.train.build import (
    load_base,
    load_data,
    make_objective,
    make_task,
    model_options,
    prompt_config,
)
from softprompt.train.config import RunConfig, TrainSection, load_config
from softprompt.train.core import step
from softprompt.train.objectives import Objective
from softprompt.train.optim import make_optimizer, make_scheduler

Similarity = Literal["average", "per_token"]


# ------------------------------------------------------------------------------ multitask files
def load_multitask(base_model: nn.Module, path: str | os.PathLike) -> PromptedModel:
    """The whole multitask prompt saved at ``path`` on ``base_model`` (shared prompt and every task's
    factors, trainable): to train further with :class:`MultitaskObjective`."""
    shape = model_shape(base_model)
    prompt = read_multitask(path, shape).to(base_model.device)
    return KINDS[shape.kind].model_class(base_model, prompt, shape)


# ------------------------------------------------------------------------------------------ SPoT
def prompt_similarity(a: torch.Tensor, b: torch.Tensor, how: Similarity = "average") -> float:
    """SPoT's similarity of two prompts (P_a, E) and (P_b, E) (lengths may differ).

    ``"average"``: cosine of the two average-pooled prompts (E,). ``"per_token"``: the mean cosine over
    all P_a x P_b pairs of tokens.
    """
    a, b = a.float(), b.float()
    if how == "average":
        return float(F.cosine_similarity(a.mean(0), b.mean(0), dim=0))
    if how == "per_token":
        return float((F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).mean())  # (P_a, P_b) cosines
    raise ValueError(f"similarity must be 'average' or 'per_token', got {how!r}")


def task_embedding(
    objective: Objective,
    examples: Sequence[Encoded],
    *,
    recipe: TrainSection,
    steps: int,
    pad_token_id: int,
) -> torch.Tensor:
    """SPoT's task embedding: the objective's prompt after ``steps`` steps of ``recipe`` on ``examples``,
    as (P, E) embeddings. The prompt is put back as it was afterwards."""
    prompt = objective.model.prompt
    start = [p.detach().clone() for p in prompt.parameters()]
    loader = make_dataloader(
        examples,
        recipe.batch_size,
        pad_token_id,
        type(objective).padding_side,
        seed=recipe.seed,
        group_by_length=recipe.group_by_length,
        drop_last=len(examples) >= recipe.batch_size,
    )
    try:
        train_steps(objective, epochs(loader), recipe, steps)
        embedding = _embeddings(prompt.folded(), "the target's prompt")
    finally:
        with torch.no_grad():
            for parameter, value in zip(prompt.parameters(), start, strict=True):
                parameter.copy_(value)
    return embedding


def rank_sources(
    objective: Objective,
    examples: Sequence[Encoded],
    sources: Sequence[str | os.PathLike],
    *,
    pad_token_id: int,
    steps: int = 50,
    recipe: TrainSection | None = None,
    similarity: Similarity = "average",
) -> list[tuple[str, float]]:
    """SPoT's ranking of saved source prompts for the target task of ``objective`` and ``examples``:
    ``[(source, score), ...]``, the most similar first.

    The target's prompt trains briefly (``steps`` of ``recipe``, default softprompt's training section)
    and is compared with each source by :func:`prompt_similarity`. Sources are adapter files or folders
    of input-space prompts (prompt tuning, P-tuning, a multitask file's shared prompt) made for the
    same base model — anything else is refused with the reason (:func:`~softprompt.files.validate.read_prompt`).
    """
    model = objective.model
    tables = {str(source): _source_embeddings(source, model) for source in sources}
    target = task_embedding(
        objective, examples, recipe=recipe or TrainSection(), steps=steps, pad_token_id=pad_token_id
    )
    scores = [(source, prompt_similarity(target, table, similarity)) for source, table in tables.items()]
    return sorted(scores, key=lambda pair: pair[1], reverse=True)


def rank_sources_for_run(
    config: RunConfig,
    sources: Sequence[str | os.PathLike],
    *,
    steps: int = 50,
    similarity: Similarity = "average",
    base: tuple[nn.Module, object] | None = None,
) -> list[tuple[str, float]]:
    """:func:`rank_sources` for the target task of a run config: its base model (or ``base``, a loaded
    ``(model, tokenizer)``), its prompt, task and training rows, its ``train`` section for the brief training."""
    task = make_task(config.task)
    model, tokenizer = base or load_base(config, task)
    train = load_data(config.data, task, tokenizer, splits=("train",), seed=config.train.seed).train
    if not isinstance(train, list):
        raise ValueError("SPoT's brief training needs the training rows in memory: set data.streaming: false")
    prompted = wrap(
        model.eval(), prompt_config(config, task), tokenizer=tokenizer, **model_options(config, model)
    )
    objective = make_objective(prompted, task, tokenizer)
    return rank_sources(
        objective,
        train,
        sources,
        pad_token_id=tokenizer.pad_token_id,
        steps=steps,
        recipe=config.train,
        similarity=similarity,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m softprompt.transfer CONFIG SOURCE...``: the sources ranked for the config's task."""
    parser = argparse.ArgumentParser(
        prog="python -m softprompt.transfer",
        description="Rank saved source prompts for the target task of a run config by SPoT's prompt "
        "similarity (the target's prompt trained briefly, then compared with each source).",
    )
    parser.add_argument("config", help="the target's run config (YAML)")
    parser.add_argument("sources", nargs="+", help="adapter files or folders of the source prompts")
    parser.add_argument("--steps", type=int, default=50, help="steps of the target's brief training")
    parser.add_argument("--similarity", choices=["average", "per_token"], default="average")
    parser.add_argument("--set", action="append", default=[], help="config overrides, key=value")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        ranked = rank_sources_for_run(config, args.sources, steps=args.steps, similarity=args.similarity)
    except (ValueError, OSError) as err:  # config errors, refused files, missing paths: the reason only
        parser.exit(2, f"error: {err}\n")
    for source, score in ranked:
        print(f"{score:+.4f}  {source}")
    print(f"init_file for the target's run: {ranked[0][0]}")


def _source_embeddings(source: str | os.PathLike, model: PromptedModel) -> torch.Tensor:
    saved = read_prompt(source, model.shape)
    if method_of(saved.config).saves != "embeddings":
        raise ValueError(
            f"{source} holds a {saved.config.method} prompt (a prefix per layer); SPoT compares input-space "
            "prompts: give prompt-tuning or P-tuning sources"
        )
    return _embeddings({"embeddings": saved.table}, str(source))


def _embeddings(folded: dict[str, torch.Tensor], what: str) -> torch.Tensor:
    if "embeddings" not in folded:
        raise ValueError(
            f"{what} is a prefix, not input-space embeddings: SPoT compares prompt-tuning prompts"
        )
    return folded["embeddings"].float().cpu()


# ------------------------------------------------------------------------------------------- MPT
def multitask_batches(
    examples: Mapping[str, Sequence[Encoded]],
    tasks: Sequence[str],
    batch_size: int,
    pad_token_id: int,
    *,
    padding_side: str = "left",
    seed: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Mixed-task batches, epoch after epoch: every example of every task once per epoch in a seeded
    order (examples-proportional mixing), full batches only. Each batch is :func:`~softprompt.data.collate`'s
    plus ``task`` (B,): the row's task as its index in ``tasks``.

    Examples:
        >>> rows = {"a": [Encoded([1, 2], label=0)], "b": [Encoded([3], label=1), Encoded([4], label=0)]}
        >>> batch = next(multitask_batches(rows, ["a", "b"], 3, pad_token_id=0))
        >>> sorted(batch["task"].tolist()), batch["input_ids"].shape
        ([0, 1, 1], torch.Size([3, 2]))
    """
    unknown = sorted(set(examples) - set(tasks))
    if unknown:
        raise KeyError(
            f"examples of tasks {unknown} that the prompt does not hold; its tasks: {', '.join(tasks)}"
        )
    pairs = [(list(tasks).index(name), example) for name, rows in examples.items() for example in rows]
    if len(pairs) < batch_size:
        raise ValueError(f"{len(pairs)} examples cannot fill one batch of {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(pairs), generator=generator).tolist()
        for start in range(0, len(pairs) - batch_size + 1, batch_size):
            chunk = [pairs[i] for i in order[start : start + batch_size]]
            batch = collate([example for _, example in chunk], pad_token_id, padding_side)
            batch["task"] = torch.tensor([task for task, _ in chunk])
            yield batch


def task_row_prompts(model: SoftPromptModel, prompts: MultitaskPrompt, task: torch.Tensor) -> RowPrompts:
    """Each row's task prompt, ``task`` (B,) indexing ``prompts.config.tasks``: every task of the batch
    compiled once (gradients flow into the shared prompt and its factors) and gathered per row."""
    used = sorted(set(task.tolist()))
    compiled = [model.compile_prompt(prompts.task(prompts.config.tasks[k])) for k in used]
    rows = torch.tensor([used.index(k) for k in task.tolist()])
    return model.row_prompts(compiled, rows, task.device)


class MultitaskObjective(nn.Module):
    """Classification by label words over several tasks: each row runs its own task's prompt and is
    scored over its own task's label words (tasks may have different numbers of classes).

    ``batch["task"]`` (B,) gives each row's task (its index in the prompt's ``config.tasks``, as
    :func:`multitask_batches` makes them); the loss is the rows' summed cross-entropy.
    """

    padding_side = "left"  # the answer position is then -1 in every row

    def __init__(self, model: SoftPromptModel, label_token_ids: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        if not isinstance(model.prompt, MultitaskPrompt):
            raise TypeError(
                f"MultitaskObjective trains a multitask prompt; this model's is {model.prompt_config.method}"
            )
        tasks = model.prompt.config.tasks
        missing = [name for name in tasks if name not in label_token_ids]
        if missing:
            raise KeyError(
                f"no label words for the tasks {missing}; give label_token_ids for each of {list(tasks)}"
            )
        width = max(len(label_token_ids[name]) for name in tasks)
        ids = torch.zeros(len(tasks), width, dtype=torch.long)  # (K, C_max), padded with id 0
        valid = torch.zeros(len(tasks), width, dtype=torch.bool)  # (K, C_max): which classes exist
        for k, name in enumerate(tasks):
            ids[k, : len(label_token_ids[name])] = torch.tensor(list(label_token_ids[name]))
            valid[k, : len(label_token_ids[name])] = True
        self.model = model
        self.register_buffer("label_ids", ids, persistent=False)
        self.register_buffer("label_valid", valid, persistent=False)

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task: torch.Tensor
    ) -> torch.Tensor:
        """Each row's label-word logits over its task's classes: (B, C_max), ``-inf`` past a task's classes."""
        rows = task_row_prompts(self.model, self.model.prompt, task)
        answer = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        answer[torch.arange(input_ids.shape[0]), last_token_index(attention_mask)] = True  # (B, T)
        logits = self.model.logits_where(input_ids, attention_mask, answer, row_prompts=rows)  # (B, V)
        chosen = logits.gather(1, self.label_ids[task])  # (B, C_max)
        return chosen.masked_fill(~self.label_valid[task], float("-inf"))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = self.scores(batch["input_ids"], batch["attention_mask"], batch["task"])
        return F.cross_entropy(scores.float(), batch["label"], reduction="sum")

    @staticmethod
    def count(batch: dict[str, torch.Tensor]) -> int:
        return int(batch["label"].shape[0])


# -------------------------------------------------------------------------------------- training
def train_steps(
    objective: Objective, batches: Iterator[dict[str, torch.Tensor]], recipe: TrainSection, steps: int
) -> list[float]:
    """``steps`` optimiser steps (``softprompt.train.core.step``) of ``objective`` with ``recipe``'s
    optimiser, schedule and clipping on the next ``steps`` batches; returns their losses."""
    return list(training_steps(objective, batches, recipe, steps))


def training_steps(
    objective: Objective, batches: Iterator[dict[str, torch.Tensor]], recipe: TrainSection, steps: int
) -> Iterator[float]:
    """:func:`train_steps` one step at a time: each ``next`` runs one optimiser step and gives its loss
    (so a caller can score between steps, or train several objectives in turns; the schedule spans
    ``steps``)."""
    optimizer = make_optimizer(objective.parameters(), recipe)
    scheduler = make_scheduler(optimizer, recipe, steps)
    for batch in itertools.islice(batches, steps):
        yield step(
            objective,
            optimizer,
            batch,
            scheduler=scheduler,
            micro_batch_size=recipe.micro_batch_size,
            max_grad_norm=recipe.max_grad_norm,
        )


def epochs(loader) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches epoch after epoch, each epoch in its own seeded order."""
    for epoch in itertools.count():
        loader.batch_sampler.set_epoch(epoch)
        yield from loader


if __name__ == "__main__":
    main()
