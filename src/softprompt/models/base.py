"""``PromptedModel``: a frozen ``transformers`` model plus one trainable soft prompt — what every
model shape shares, and the protocol the task bank and the server build on.

One subclass per kind of model (:mod:`softprompt.kinds`) says how a prompt joins a batch:
:class:`~softprompt.models.causal.SoftPromptModel` (causal LMs),
:class:`~softprompt.models.seq2seq.Seq2SeqSoftPromptModel` (encoder-decoders) and
:class:`~softprompt.models.encoder.EncoderSoftPromptModel` (encoders). Each provides:

* :meth:`PromptedModel.compile_prompt` — a task's prompt placed for this model, once;
* :meth:`PromptedModel.row_prompts` — per-row prompts for a batch from compiled ones;
* ``forward(..., row_prompts=...)`` and ``generate(..., row_prompts=...)`` — the model run with
  those prompts (or, without ``row_prompts``, with its own prompt).

Examples:
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> compiled = [model.compile_prompt(model.prompt)]
    >>> rows = model.row_prompts(compiled, torch.tensor([0, -1]), input_ids.device)  # row 1: bare model
    >>> model(input_ids, row_prompts=rows).logits.shape
    torch.Size([2, 5, 96])
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.compat import allow_checkpointing_with_cache
from softprompt.families import ModelShape
from softprompt.files import peft as peft_files
from softprompt.files.adapter import AdapterFileError, write_adapter
from softprompt.injection import CompiledPrompt, RowPrompts, gather, place
from softprompt.methods import SoftPrompt, method_of


def parameter_versions(module: nn.Module) -> tuple[int, ...]:
    """Version counters of ``module``'s parameters: they change with every in-place update (optimiser steps)."""
    return tuple(p._version for p in module.parameters())


class PromptedModel(nn.Module, ABC):
    """A frozen ``transformers`` model plus one trainable soft prompt (``prompt=None``: the bare model).

    Only ``self.prompt`` (and a classifier's new head) has trainable parameters; the base model is
    frozen and never modified.
    """

    def __init__(self, base_model: nn.Module, prompt: SoftPrompt | None, shape: ModelShape) -> None:
        super().__init__()
        self.base_model = base_model.requires_grad_(False)
        self.prompt = prompt
        self.shape = shape
        # (prompt, its parameter versions, compiled prompt) of the last compile without gradients
        self._served: tuple[SoftPrompt, tuple[int, ...], CompiledPrompt] | None = None

    # ----------------------------------------------------------------------------------------- info
    @property
    def prompt_config(self):
        """The prompt's config (the user's choices): a method's config dataclass."""
        return self.prompt.config

    @property
    def config(self):
        """The prompt's config; being replaced by :attr:`prompt_config` (``config`` will be the base model's)."""
        return self.prompt.config

    def without_prompt(self) -> PromptedModel:
        """The same frozen model and class without any prompt: the bare model (zero-shot scores)."""
        return type(self)(self.base_model, None, self.shape, **self.model_options())

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the frozen layers' activations in backward; works with every method."""
        self.base_model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
        allow_checkpointing_with_cache(self.base_model)

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments (beyond the prompt) that rebuild this model class on load, e.g. pooling."""
        return {}

    # ------------------------------------------------------------------------------------ protocol
    def compile_prompt(self, prompt: SoftPrompt) -> CompiledPrompt:
        """A task's prompt placed where it enters this model (gradients flow through).

        This is what a task bank keeps per task. The default places virtual tokens before the input
        and cuts a prefix by attention site; causal decoders compile virtual tokens into a prefix.
        """
        return place(prompt(), method_of(prompt.config).layout(prompt.config, self.shape))

    def row_prompts(
        self, compiled: list[CompiledPrompt], rows: torch.Tensor, device: torch.device
    ) -> RowPrompts:
        """Per-row prompts from compiled ones: ``rows`` (B,) indexes ``compiled``, -1 for none."""
        return gather(compiled, rows, self.base_model.dtype, device)

    def own_prompts(self, batch_size: int, device: torch.device) -> RowPrompts:
        """This model's own prompt for every one of ``batch_size`` rows.

        Recompiled while gradients are on, so they flow into the prompt; without gradients (serving)
        it is compiled once and reused until the prompt or its parameters change.
        """
        if self.prompt is None:
            return RowPrompts()
        if torch.is_grad_enabled():
            compiled = self.compile_prompt(self.prompt)
        else:
            versions = parameter_versions(self.prompt)
            if self._served is None or self._served[0] is not self.prompt or self._served[1] != versions:
                self._served = (self.prompt, versions, self.compile_prompt(self.prompt))
            compiled = self._served[2]
        return self.row_prompts([compiled], torch.zeros(batch_size, dtype=torch.long), device)

    @abstractmethod
    def forward(self, *args, row_prompts: RowPrompts | None = None, **kwargs):
        """The base model's output for the caller's tokens, each row with its prompt."""

    @abstractmethod
    def generate(
        self, input_ids: torch.Tensor, attention_mask=None, row_prompts=None, **kwargs
    ) -> torch.Tensor:
        """``transformers`` ``generate`` with each row's prompt in place."""

    # ---------------------------------------------------------------------------------------- files
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """What an adapter file holds: the folded prompt (classifiers add their task head)."""
        return self.prompt.folded()

    def load_head(self, tensors: dict[str, torch.Tensor], source) -> None:
        """Set the task head from a file's ``head.*`` tensors (only classifiers have one)."""
        raise AdapterFileError(
            f"{source} holds a task head, but this {self.shape.family} {self.shape.kind} model has none"
        )

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write the folded prompt (optionally as fp16/bf16) and its record to one safetensors file."""
        tensors = {name: t.to(dtype) if dtype else t for name, t in self.adapter_tensors().items()}
        record = {
            "method": self.prompt_config.method,
            "config": asdict(self.prompt_config),
            "base_model": {"name_or_path": self.shape.name_or_path, **self.shape.fingerprint()},
            "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch."),
        }
        options = self.model_options()
        if options:
            record["model_options"] = options
        return write_adapter(path, tensors, record)

    def export_peft(self, directory: str | os.PathLike) -> Path:
        """Write the prompt as a ``peft`` adapter folder that ``PeftModel.from_pretrained`` loads."""
        return peft_files.export_peft(self, directory)
