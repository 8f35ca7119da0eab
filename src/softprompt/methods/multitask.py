"""Multitask prompt tuning (Wang et al. 2023, arXiv 2303.02861): one prompt shared by several tasks,
each task's prompt the shared one times a rank-``r`` matrix of its own.

Task ``k``'s prompt is ``P* ∘ (U_k V_kᵀ)`` (Hadamard product): ``P*`` (P, E) is shared, ``U_k`` (P, r)
and ``V_k`` (E, r) are the task's factors — with the paper's rank 1, ``P + E`` numbers per task
beside the shared ``P × E``. The factors start at ones, so every task starts at the shared prompt
(with rank > 1 a seeded ±2 % noise lets the components differ). The shared prompt starts as prompt
tuning's does (``vocab``, ``text``, ``random``, or ``file``: a saved prompt, e.g. a source task's).

``prompt.task(name)`` is one task's prompt (a view sharing the parameters, so training it trains the
shared prompt and that task's factors); a batch mixes tasks row by row as the task bank does
(:mod:`softprompt.transfer` trains on rows that carry a task). Run as one prompt for every row (no task
named), a multitask prompt is its shared prompt ``P*``.

Its file holds ``embeddings`` (P, E) — the shared prompt — and ``task_u`` (K, P, r), ``task_v``
(K, E, r) in ``config.tasks`` order. :func:`read_task` reads one task from it as an ordinary
prompt-tuning prompt (its composed (P, E) table), which any task bank serves beside other tasks;
:func:`read_multitask` reads it all (to train on); ``softprompt.load`` and ``init="file"`` read its
shared prompt, the start for a new task.

Examples:
    >>> config = MultitaskPromptTuningConfig(num_virtual_tokens=4, tasks=("rte", "cb"))
    >>> model = softprompt.wrap(base_model, config)
    >>> model.prompt.task("cb")().embeddings.shape             # (P, E): the shared prompt x cb's factors
    torch.Size([4, 32])
    >>> saved = read_task(model.save(tmp_dir / "mpt.safetensors"), model.shape, "cb")
    >>> saved.config.method, torch.equal(saved.embeddings, model.prompt.composed("cb"))
    ('prompt_tuning', True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from softprompt.families import ModelShape
from softprompt.files.adapter import adapter_file, read_adapter
from softprompt.files.errors import RecordError, WrongModelError
from softprompt.files.schema import check_same_model, config_from_record
from softprompt.methods.base import Method, SoftPrompt, VirtualTokens
from softprompt.methods.prompt_tuning import PromptEmbedding, PromptTuningConfig, initial_embeddings

# Seeded noise on the factors of rank > 1: identical components would get identical gradients forever.
FACTOR_NOISE = 0.02


@dataclass(frozen=True)
class MultitaskPromptTuningConfig(PromptTuningConfig):
    """Multitask prompt tuning choices: those of prompt tuning (for the shared prompt) plus the tasks.

    Attributes:
        tasks: the tasks' names, in the order the file keeps their factors (no repeats; none: only
            the shared prompt, which is what the multitask prompt runs as when no task is named).
        rank: rank ``r`` of each task's factor ``U_k V_kᵀ`` (the paper: 1).
    """

    method: ClassVar[str] = "multitask_prompt_tuning"
    tasks: tuple[str, ...] = ()
    rank: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tasks", tuple(self.tasks))  # a file's JSON list reads back as a tuple
        if not all(isinstance(name, str) and name for name in self.tasks):
            raise ValueError(f"tasks must be non-empty strings, got {self.tasks!r}")
        repeated = sorted({name for name in self.tasks if self.tasks.count(name) > 1})
        if repeated:
            raise ValueError(f"tasks must not repeat a name; {', '.join(repeated)} appear more than once")
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")


def initial_factors(config: MultitaskPromptTuningConfig, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, V)``: (K, P, r) and (K, E, r), whose products ``U_k V_kᵀ`` are all ones (the shared prompt)
    for rank 1, and close to it (seeded noise) for higher ranks."""
    tasks, length, rank = len(config.tasks), config.num_virtual_tokens, config.rank
    u, v = torch.ones(tasks, length, rank), torch.full((tasks, width, rank), 1.0 / rank)
    if rank > 1:
        generator = torch.Generator().manual_seed(config.seed + 1)
        u = u + FACTOR_NOISE * torch.randn(u.shape, generator=generator)
        v = v + FACTOR_NOISE / rank * torch.randn(v.shape, generator=generator)
    return u, v


class MultitaskPrompt(SoftPrompt):
    """The shared prompt and every task's factors. Parameters ``shared`` (P, E), ``task_u`` (K, P, r),
    ``task_v`` (K, E, r)."""

    def __init__(
        self,
        config: MultitaskPromptTuningConfig,
        shared: torch.Tensor,
        task_u: torch.Tensor,
        task_v: torch.Tensor,
    ) -> None:
        super().__init__(config)
        self.shared = nn.Parameter(shared)
        self.task_u = nn.Parameter(task_u)
        self.task_v = nn.Parameter(task_v)

    def index(self, task: str) -> int:
        """The position of ``task`` in ``config.tasks``; an unknown name is refused with the known ones."""
        if task not in self.config.tasks:
            raise KeyError(
                f"no task {task!r} in this multitask prompt; its tasks: {', '.join(self.config.tasks)}"
            )
        return self.config.tasks.index(task)

    def composed(self, task: str) -> torch.Tensor:
        """Task ``task``'s prompt ``P* ∘ (U_k V_kᵀ)``: (P, E)."""
        k = self.index(task)
        return self.shared * (self.task_u[k] @ self.task_v[k].T)  # (P, E) * ((P, r) @ (r, E))

    def task(self, task: str) -> TaskPrompt:
        """Task ``task``'s prompt as a prompt of its own, sharing this prompt's parameters."""
        return TaskPrompt(self, task)

    def forward(self) -> VirtualTokens:
        """The shared prompt ``P*`` (P, E): what the multitask prompt is as one prompt for every row — the
        start MPT gives a new task. A task's own prompt is ``self.task(name)()``."""
        return VirtualTokens(self.shared)

    def folded(self) -> dict[str, torch.Tensor]:
        """What its file holds: the shared prompt as ``embeddings`` (P, E) and the factors."""
        return {
            "embeddings": self.shared.detach().clone(),
            "task_u": self.task_u.detach().clone(),
            "task_v": self.task_v.detach().clone(),
        }


class TaskPrompt(SoftPrompt):
    """One task of a :class:`MultitaskPrompt`, seen as an ordinary prompt-tuning prompt: its output is
    the composed (P, E) prompt, and it folds (and saves) as a ``prompt_tuning`` table."""

    def __init__(self, prompts: MultitaskPrompt, task: str) -> None:
        prompts.index(task)
        super().__init__(task_config(prompts.config.num_virtual_tokens))
        self.prompts = prompts  # a submodule: the view trains (and versions) the shared parameters
        self.name = task

    def forward(self) -> VirtualTokens:
        return VirtualTokens(self.prompts.composed(self.name))


class MultitaskPromptTuning(Method):
    """Multitask prompt tuning: the shared prompt saved as ``embeddings`` (P, E), beside each task's factors."""

    config = MultitaskPromptTuningConfig
    saves = "embeddings"
    reload_init = "random"
    peft_type = "MULTITASK_PROMPT_TUNING"

    def build(self, config, model, shape, tokenizer=None) -> SoftPrompt:
        shared = initial_embeddings(config, model, shape, tokenizer)
        return MultitaskPrompt(config, shared, *initial_factors(config, shape.embed_dim))

    def extra_tensors(self, config: MultitaskPromptTuningConfig, width: int) -> dict[str, tuple[int, ...]]:
        """The tensors its file holds beside the (P, width) table, by name and shape."""
        tasks, length, rank = len(config.tasks), config.num_virtual_tokens, config.rank
        return {"task_u": (tasks, length, rank), "task_v": (tasks, width, rank)}

    def rebuild(self, config, table, shape) -> SoftPrompt:
        # softprompt.load reads one prompt: a multitask file's shared prompt, as plain prompt tuning (what
        # the wrapped multitask prompt runs as). Its tasks come back with read_task / read_multitask.
        return PromptEmbedding(task_config(config.num_virtual_tokens), table.float())

    def peft_fields(self, config) -> dict:
        raise ValueError(
            "softprompt does not write peft's multitask layout; export a task's composed prompt instead: "
            "softprompt.load(base_model, path, task=task).export_peft(folder)"
        )

    def from_peft(self, length, fields, shape):
        raise ValueError(
            "softprompt does not read peft's multitask layout (MULTITASK_PROMPT_TUNING); "
            "load it with peft, or save its tasks' prompts one by one"
        )


METHOD = MultitaskPromptTuning()


def read_multitask(path: str | os.PathLike, shape: ModelShape) -> MultitaskPrompt:
    """The multitask prompt saved at ``path`` for a model of ``shape``, every check made (the record,
    checksum and tensor shapes by :func:`~softprompt.files.adapter.read_adapter`; the base model and
    the width here). A file of another method is refused: read single prompts with ``softprompt.load``."""
    source = adapter_file(path)
    record, tensors = read_adapter(source)
    check_same_model(record["base_model"], shape, source)
    config = config_from_record(record, source)
    if not isinstance(config, MultitaskPromptTuningConfig):
        raise RecordError(
            source,
            "method",
            record["method"],
            f"{METHOD.name!r}: a file holding a shared prompt and per-task factors",
            fix="this is a single prompt: load it with softprompt.load(base_model, path)",
        )
    shared = tensors["embeddings"]
    if shared.shape[1] != shape.embed_dim:
        raise WrongModelError(
            source,
            "tensor 'embeddings'",
            found_text=f"of shape {tuple(shared.shape)}",
            expected=f"({shared.shape[0]}, {shape.embed_dim}) for this {shape.family} model",
        )
    return MultitaskPrompt(config, shared.float(), tensors["task_u"].float(), tensors["task_v"].float())


def read_task(path: str | os.PathLike, shape: ModelShape, task: str) -> PromptEmbedding:
    """Task ``task`` of the multitask file at ``path`` as an ordinary prompt-tuning prompt: its composed
    (P, E) table, trainable on its own from here."""
    prompts = read_multitask(path, shape)
    if task not in prompts.config.tasks:
        raise KeyError(
            f"{adapter_file(path)} has no task {task!r}; its tasks: {', '.join(prompts.config.tasks)}"
        )
    with torch.no_grad():
        table = prompts.composed(task).clone()
    return PromptEmbedding(task_config(len(table)), table)


def task_config(length: int) -> PromptTuningConfig:
    """The config of one task's composed prompt: plain prompt tuning (its numbers come from the file)."""
    return PromptTuningConfig(num_virtual_tokens=length, init="random")
