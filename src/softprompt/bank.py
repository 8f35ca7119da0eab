"""Many task prompts on one frozen model, mixed freely within a batch (Lester et al. §2).

A :class:`TaskBank` holds named task prompts of any method and length. Each row of a batch names
its task (or none, for the bare model); rows get their own prompt in one forward pass, through the
same per-row injection every model uses (:func:`softprompt.injection.gather`), by the protocol of
:class:`~softprompt.models.PromptedModel` (``compile_prompt``, ``row_prompts``, ``forward``, ``generate``).

Each task is *compiled* on first use: its per-layer keys/values are computed once and kept, so a
prompt-tuned task costs no prefill per request — it starts from its cache like a prefix-tuned one.
A compiled cache is dropped when its task is replaced or removed, or when its parameters change
in place (an optimiser step), detected through the tensors' version counters.

Examples:
    >>> bank = TaskBank(base_model)
    >>> bank.add("sentiment", softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4)))
    >>> bank.add("topic", softprompt.wrap(base_model, softprompt.PrefixTuningConfig(num_virtual_tokens=2)))
    >>> bank.generate(input_ids, attention_mask=attention_mask, tasks=["sentiment", "topic"], max_new_tokens=3).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from softprompt.api import load
from softprompt.families import UnsupportedModelError, model_shape
from softprompt.hub import HEADS_WITH_LABELS
from softprompt.injection import CompiledPrompt, RowPrompts
from softprompt.kinds import KINDS
from softprompt.methods import SoftPrompt
from softprompt.models import PromptedModel, SoftPromptModel
from softprompt.models.base import parameter_versions

TaskRef = str | int | None


@dataclass(frozen=True)
class TaskInfo:
    """One task of a bank: its method, prompt length and size of its folded numbers."""

    name: str
    method: str
    length: int
    numbers: int
    bytes: int


class TaskBank(nn.Module):
    """Named soft prompts on one frozen base model; a batch may mix tasks row by row."""

    def __init__(self, base_model: nn.Module) -> None:
        super().__init__()
        shape = model_shape(base_model)
        kind = KINDS[shape.kind]
        if not kind.serves_bank or shape.head in HEADS_WITH_LABELS:
            served = " and ".join(name for name, entry in KINDS.items() if entry.serves_bank)
            what = shape.head if kind.serves_bank else f"{shape.kind} ({kind.label})"
            raise UnsupportedModelError(
                f"a task bank serves {served} language models; this {shape.family} model is a {what} model "
                "(classifiers carry a task head each: serve them one model per task)"
            )
        self.runner: PromptedModel = kind.model_class(base_model, None, shape)
        self.tasks = nn.ModuleDict()
        # name -> (parameter versions when compiled, compiled prompt)
        self._compiled: dict[str, tuple[tuple[int, ...], CompiledPrompt]] = {}

    @property
    def base_model(self) -> nn.Module:
        return self.runner.base_model

    # ------------------------------------------------------------------------------ managing tasks
    def add(
        self,
        name: str,
        source: str | os.PathLike | PromptedModel | SoftPrompt,
        replace: bool = False,
        task: str | None = None,
    ) -> None:
        """Add a task from an adapter file or folder (softprompt or peft), a wrapped model or a prompt.

        ``task`` names one task of a multitask file (``multitask_prompt_tuning``): the task's composed
        prompt is added, as an ordinary prompt-tuning prompt (a multitask prompt in memory gives one
        with ``prompt.task(task)``). Refuses a name already taken unless ``replace=True``, and a prompt
        made for another model.

        Examples:
            >>> config = softprompt.methods.MultitaskPromptTuningConfig(num_virtual_tokens=4, tasks=("rte", "cb"))
            >>> path = softprompt.wrap(base_model, config).save(tmp_dir / "mpt.safetensors")
            >>> bank = TaskBank(base_model)
            >>> bank.add("rte", path, task="rte")
            >>> bank.info()[0].method, bank.info()[0].length
            ('prompt_tuning', 4)
        """
        if name in self.tasks and not replace:
            raise KeyError(f"task {name!r} exists; pass replace=True to replace it")
        if task is not None and isinstance(source, PromptedModel | SoftPrompt):
            raise ValueError(
                f"task={task!r} picks a task of a multitask file; for a prompt in memory pass prompt.task({task!r})"
            )
        if isinstance(source, PromptedModel):
            if source.shape.fingerprint() != self.runner.shape.fingerprint():
                raise ValueError(
                    f"task {name!r} was made for another base model ({source.shape.name_or_path})"
                )
            prompt = source.prompt
        elif isinstance(source, SoftPrompt):
            prompt = source
        else:
            prompt = load(self.base_model, source, task=task).prompt
        self.tasks[name] = prompt
        self._compiled.pop(name, None)

    def remove(self, name: str) -> None:
        if name not in self.tasks:
            raise KeyError(f"no task {name!r}; tasks: {', '.join(self.tasks) or 'none'}")
        del self.tasks[name]
        self._compiled.pop(name, None)

    def info(self) -> list[TaskInfo]:
        """The tasks with their method, prompt length and size."""
        rows = []
        for name, prompt in self.tasks.items():
            tensors = prompt.folded().values()  # one table, or a multitask prompt's shared prompt and factors
            rows.append(
                TaskInfo(
                    name,
                    prompt.config.method,
                    prompt.config.num_virtual_tokens,
                    sum(t.numel() for t in tensors),
                    sum(t.numel() * t.element_size() for t in tensors),
                )
            )
        return rows

    # ----------------------------------------------------------------------------------- compiling
    @torch.no_grad()
    def compiled(self, name: str) -> CompiledPrompt:
        """The task's compiled prompt (causal: per-layer keys/values), reused until the task changes."""
        prompt = self.tasks[name]
        versions = parameter_versions(prompt)
        kept = self._compiled.get(name)
        if kept is None or kept[0] != versions:
            kept = (versions, self.runner.compile_prompt(prompt))
            self._compiled[name] = kept
        return kept[1]

    def row_prompts(self, tasks: Sequence[TaskRef], device: torch.device) -> RowPrompts:
        """Each row's compiled prompt (shorter ones left-padded and masked; ``None`` = no prompt)."""
        names = [self._name(task) for task in tasks]
        used = sorted({n for n in names if n is not None}, key=list(self.tasks).index)
        rows = torch.tensor([-1 if n is None else used.index(n) for n in names])
        return self.runner.row_prompts([self.compiled(n) for n in used], rows, device)

    def _name(self, task: TaskRef) -> str | None:
        if task is None or (isinstance(task, int) and task < 0):
            return None
        if isinstance(task, int):
            if task >= len(self.tasks):
                raise IndexError(f"task index {task} out of range: the bank has {len(self.tasks)} tasks")
            return list(self.tasks)[task]
        if task not in self.tasks:
            raise KeyError(f"no task {task!r}; tasks: {', '.join(self.tasks) or 'none'}")
        return task

    # ------------------------------------------------------------------------------------- running
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        tasks: Sequence[TaskRef],
        labels: torch.Tensor | None = None,
        **kwargs,
    ):
        """Like the wrapped model's ``forward``, with ``tasks[i]`` naming row ``i``'s task.

        With ``labels``, a causal LM computes logits only where a label is (``logits_at="labels"``:
        flat (N, V) logits of those positions, and the loss): scoring a mixed-task batch's labels
        never projects unlabelled positions onto the vocabulary. Pass ``logits_at="all"`` for (B, T, V).

        Examples:
            >>> bank = TaskBank(base_model)
            >>> bank.add("sentiment", softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4)))
            >>> labels = torch.full_like(input_ids, -100)
            >>> labels[:, -1] = input_ids[:, -1]                  # one scored token per row
            >>> out = bank(input_ids, attention_mask, tasks=["sentiment", None], labels=labels)
            >>> out.logits.shape                                  # (N, V): the 2 labelled positions only
            torch.Size([2, 96])
        """
        self._check_rows(input_ids, tasks)
        rows = self.row_prompts(tasks, input_ids.device)
        if labels is not None:
            kwargs["labels"] = labels
            if isinstance(self.runner, SoftPromptModel):
                kwargs.setdefault("logits_at", "labels")
        return self.runner(input_ids=input_ids, attention_mask=attention_mask, row_prompts=rows, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        tasks: Sequence[TaskRef],
        **kwargs,
    ) -> torch.Tensor:
        """Like the wrapped model's ``generate``, with ``tasks[i]`` naming row ``i``'s task."""
        self._check_rows(input_ids, tasks)
        rows = self.row_prompts(tasks, input_ids.device)
        return self.runner.generate(input_ids, attention_mask, row_prompts=rows, **kwargs)

    @staticmethod
    def _check_rows(input_ids: torch.Tensor, tasks: Sequence[TaskRef]) -> None:
        if len(tasks) != input_ids.shape[0]:
            raise ValueError(f"tasks names {len(tasks)} rows but the batch has {input_ids.shape[0]}")
