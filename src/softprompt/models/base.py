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

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from softprompt import compat, sharing
from softprompt.families import ModelShape, UnsupportedModelError
from softprompt.files import peft as peft_files
from softprompt.files.adapter import AdapterFileError, write_adapter
from softprompt.injection import IGNORE_INDEX, CompiledPrompt, RowPrompts, gather, place
from softprompt.kinds import KINDS, supported_heads
from softprompt.methods import SoftPrompt, method_of
from softprompt.models.heads import head_tensors, load_head_tensors

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo


def parameter_versions(module: nn.Module) -> tuple[int, ...]:
    """Version counters of ``module``'s parameters: they change with every in-place update (optimiser steps)."""
    return tuple(p._version for p in module.parameters())


# What ``state_dict()`` adds for ``get_extra_state()`` at the top level: the adapter record.
EXTRA_STATE_KEY = "_extra_state"
# Keywords of padding-free packing (TRL ``packing=True``, ``DataCollatorWithFlattening``): several
# sequences in one row, told apart by these instead of an attention mask.
PACKED_KEYWORDS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


class PromptedModel(nn.Module, ABC):
    """A frozen ``transformers`` model plus one trainable soft prompt (``prompt=None``: the bare model).

    Only ``self.prompt`` (and a classifier's new head) has trainable parameters; the base model is
    frozen and never modified.

    It also shows Hugging Face tools (``Trainer``, TRL, pipelines, the Hub) the surface they read
    from a ``PreTrainedModel``: ``config`` is the base model's config (the prompt's own is
    :attr:`prompt_config`, as peft's is ``peft_config``), ``device``, ``dtype``,
    ``generation_config``, the embeddings, activation checkpointing with ``transformers``' keyword
    arguments, ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``, and a ``state_dict``
    that holds only what trains — so ``Trainer`` checkpoints are the prompt (and a new head), not the
    frozen base, and resume exactly.

    Attributes:
        task: the run's task (template, label words, chat-template choice...) as a JSON object, or
            None; :meth:`save` writes it into the adapter record so the file alone can serve the task.

    Examples:
        >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
        >>> model.config is base_model.config, model.prompt_config.num_virtual_tokens
        (True, 4)
        >>> sorted(model.state_dict())                       # what a Trainer checkpoint holds
        ['_extra_state', 'prompt.embeddings']
        >>> model.print_trainable_parameters()
        trainable params: 128 || all params: 21,792 || trainable%: 0.5874
    """

    main_input_name = "input_ids"
    # Trainer passes ``num_items_in_batch``: the loss becomes sum / items, so gradient accumulation
    # and several processes compute the gradient of one big batch.
    accepts_loss_kwargs = True

    def __init__(self, base_model: nn.Module, prompt: SoftPrompt | None, shape: ModelShape) -> None:
        kind = KINDS[shape.kind]
        if shape.head not in kind.heads:  # e.g. a decoder with a classification head, a masked LM
            raise UnsupportedModelError(
                f"softprompt cannot adapt a {type(base_model).__name__}: on {shape.family} {kind.label} it "
                f"supports {supported_heads(shape.kind)}"
            )
        super().__init__()
        self.base_model = base_model.requires_grad_(False)
        self.prompt = prompt
        self.shape = shape
        self.task: dict[str, Any] | None = None
        # A classifier's task head (module name -> module of the base model), trainable and saved with
        # the prompt; set by the subclasses whose models have one (see models.heads).
        self.head: dict[str, nn.Module] = {}
        self.model_tags: list[str] | None = None
        # (prompt, its parameter versions, compiled prompt) of the last compile without gradients
        self._served: tuple[SoftPrompt, tuple[int, ...], CompiledPrompt] | None = None
        # `num_items_in_batch` of the call in progress, between the two forward hooks
        self._items_in_batch: torch.Tensor | int | None = None
        self.register_state_dict_post_hook(_keep_what_trains)
        self.register_load_state_dict_post_hook(_frozen_keys_are_not_missing)
        self.register_forward_pre_hook(_take_trainer_keywords, with_kwargs=True)
        self.register_forward_hook(_loss_over_items_in_batch, with_kwargs=True)

    def __call__(self, *args, **kwargs):
        # However checkpointing was switched on (here, on the base model, by Trainer), its layers keep
        # softprompt's caches for this call (see compat.checkpointing_keeps_cache).
        with compat.checkpointing_keeps_cache(self.base_model):
            return super().__call__(*args, **kwargs)

    # ----------------------------------------------------------------------------------------- info
    @property
    def prompt_config(self):
        """The prompt's config (the user's choices): a method's config dataclass."""
        return self.prompt.config

    @property
    def config(self):
        """The base model's ``PretrainedConfig`` (what ``Trainer``, pipelines and TRL read and set)."""
        return self.base_model.config

    @property
    def generation_config(self):
        """The base model's ``GenerationConfig``: the defaults :meth:`generate` starts from (None for encoders)."""
        return getattr(self.base_model, "generation_config", None)

    @generation_config.setter
    def generation_config(self, value) -> None:
        self.base_model.generation_config = value

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.dtype

    @property
    def loss_type(self) -> str | None:
        """The ``transformers`` loss family of the model's loss (``ForCausalLM``...): ``Trainer`` counts
        ``num_items_in_batch`` over shifted labels for ``ForCausalLM``."""
        return getattr(self.base_model, "loss_type", None)

    def can_generate(self) -> bool:
        """Whether :meth:`generate` makes text (causal and encoder-decoder LMs; not encoders)."""
        return self.base_model.can_generate()

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return self.base_model.get_output_embeddings()

    def without_prompt(self) -> PromptedModel:
        """The same frozen model and class without any prompt: the bare model (zero-shot scores)."""
        return type(self)(self.base_model, None, self.shape, **self.model_options())

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def print_trainable_parameters(self) -> None:
        """Print the trainable and total parameter counts, in ``peft``'s words."""
        trainable = self.num_trainable_parameters()
        total = sum(p.numel() for p in self.parameters())
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def add_model_tags(self, tags: str | Iterable[str]) -> None:
        """Tags for the model card (TRL adds ``trl``, ``sft``), as ``PreTrainedModel.add_model_tags``."""
        tags = [tags] if isinstance(tags, str) else list(tags)
        self.model_tags = list(dict.fromkeys([*(self.model_tags or []), *tags]))

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute the frozen layers' activations in backward; works with every method.

        Takes ``transformers``' arguments (``Trainer(args=TrainingArguments(activation_checkpointing=True))``
        calls it). Checkpointing is non-reentrant: every layer reads the one prompt, which reentrant
        checkpointing would differentiate once per layer.
        """
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        compat.require_non_reentrant(kwargs)
        # The base's layers keep softprompt's caches through each forward (compat.checkpointing_keeps_cache),
        # so checkpointing switched on the base model directly works the same.
        self.base_model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
        )

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **options
    ) -> None:
        """:meth:`activation_checkpointing_enable` under its older ``transformers`` name."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **options)

    def activation_checkpointing_disable(self) -> None:
        self.base_model.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.base_model.is_activation_checkpointing

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
        """What an adapter file holds: the folded prompt plus a classifier's task head (``head.<name>``)."""
        return {**self.prompt.folded(), **head_tensors(self.head)}

    def adapter_record(self) -> dict[str, Any]:
        """What an adapter file says about its tensors: method, the user's config, the base model,
        the model options and the task (when set)."""
        record = {
            "method": self.prompt_config.method,
            "config": asdict(self.prompt_config),
            "base_model": {"name_or_path": self.shape.name_or_path, **self.shape.fingerprint()},
        }
        options = self.model_options()
        if options:
            record["model_options"] = options
        if self.task is not None:
            record["task"] = self.task
        return record

    def load_head(self, tensors: dict[str, torch.Tensor], source) -> None:
        """Set the task head from a file's ``head.*`` tensors (only classifiers have one); head weights
        a file lacks stay as they are."""
        if not self.head:
            raise AdapterFileError(
                f"{source} holds a task head, but this {self.shape.family} {self.shape.kind} model has none"
            )
        load_head_tensors(self.head, tensors, source, type(self.base_model).__name__)

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write the folded prompt (optionally as fp16/bf16) and its record to one safetensors file."""
        tensors = {name: t.to(dtype) if dtype else t for name, t in self.adapter_tensors().items()}
        dtype_name = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
        return write_adapter(path, tensors, {**self.adapter_record(), "dtype": dtype_name})

    def export_peft(self, directory: str | os.PathLike) -> Path:
        """Write the prompt as a ``peft`` adapter folder that ``PeftModel.from_pretrained`` loads."""
        return peft_files.export_peft(self, directory)

    # ------------------------------------------------------------------------------- the Hub
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        scores: dict[str, dict[str, float]] | None = None,
        is_main_process: bool = True,
    ) -> Path | None:
        """Write an adapter folder: ``softprompt.safetensors``, a ``peft`` layout where peft can hold
        the prompt, and a model card (``README.md``). See :mod:`softprompt.sharing`.

        ``scores`` (split -> metric -> value) go into the card. Only the main process writes.

        Examples:
            >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
            >>> folder = model.save_pretrained(tmp_dir / "my-prompt")
            >>> sorted(p.name for p in folder.iterdir())
            ['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'softprompt.safetensors']
            >>> again = softprompt.PromptedModel.from_pretrained(base_model, folder)
            >>> torch.equal(again.prompt.embeddings, model.prompt.embeddings)
            True
        """
        if not is_main_process:
            return None
        return sharing.save_folder(self, save_directory, dtype=dtype, scores=scores)

    @classmethod
    def from_pretrained(
        cls,
        base_model: nn.Module,
        path_or_repo_id: str | os.PathLike,
        *,
        revision: str | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> PromptedModel:
        """Load an adapter folder or file, or a Hub repo (``"user/name"`` at ``revision``), onto ``base_model``.

        Reads softprompt's own file (or a peft folder), like :func:`softprompt.load`; Hub repos are
        fetched through the Hugging Face cache (``HF_HUB_OFFLINE=1`` / ``local_files_only=True``: cache only).
        """
        from softprompt.api import load  # api builds models: imported at call time

        path = sharing.resolve(
            path_or_repo_id,
            revision=revision,
            local_files_only=local_files_only,
            token=token,
            cache_dir=cache_dir,
        )
        model = load(base_model, path)
        if not isinstance(model, cls):
            raise TypeError(
                f"{path_or_repo_id} on this {type(base_model).__name__} makes a {type(model).__name__}, "
                f"not a {cls.__name__}; call PromptedModel.from_pretrained"
            )
        return model

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload soft prompt",
        create_pr: bool = False,
        scores: dict[str, dict[str, float]] | None = None,
    ) -> CommitInfo:
        """Upload :meth:`save_pretrained`'s folder to the Hub repo ``repo_id`` (created if needed)."""
        return sharing.push_to_hub(
            self,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
            scores=scores,
        )

    # -------------------------------------------------------------------- state dict: what trains
    def trained_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of what trains: the prompt and every module with trainable
        parameters of its own (a classifier's new head)."""
        names = {"prompt."}
        for name, module in self.named_modules():
            if name and any(p.requires_grad for p in module.parameters(recurse=False)):
                names.add(f"{name}.")
        return tuple(sorted(names))

    def get_extra_state(self) -> torch.Tensor:
        """The adapter record as JSON bytes (uint8): ``state_dict()["_extra_state"]`` says what it holds."""
        record = self.adapter_record() if self.prompt is not None else {}
        return torch.frombuffer(bytearray(json.dumps(record, sort_keys=True).encode()), dtype=torch.uint8)

    def set_extra_state(self, state: torch.Tensor) -> None:
        """Refuse a state dict made for another method, prompt length or base model."""
        saved = json.loads(bytes(state.to(torch.uint8).tolist()).decode())
        if not saved or self.prompt is None:
            return
        mine = self.adapter_record()
        pairs = {
            "method": (saved.get("method"), mine["method"]),
            "num_virtual_tokens": (
                saved.get("config", {}).get("num_virtual_tokens"),
                mine["config"].get("num_virtual_tokens"),
            ),
            **{
                key: (saved.get("base_model", {}).get(key), ours)
                for key, ours in self.shape.fingerprint().items()
            },
        }
        differences = [
            f"{key}: saved {theirs!r}, here {ours!r}"
            for key, (theirs, ours) in pairs.items()
            if theirs != ours
        ]
        if differences:
            raise AdapterFileError(
                f"this state dict holds a prompt for another setup ({'; '.join(differences)}); "
                "build the model the way the run that saved it did"
            )


# ------------------------------------------------------------------------------- module hooks
def _keep_what_trains(model: PromptedModel, state_dict: dict, prefix: str, local_metadata) -> None:
    """``state_dict`` post-hook: drop the frozen base model's tensors (tied ones included)."""
    keep = tuple(prefix + name for name in model.trained_prefixes()) + (prefix + EXTRA_STATE_KEY,)
    for key in [key for key in state_dict if key.startswith(prefix) and not key.startswith(keep)]:
        del state_dict[key]


def _frozen_keys_are_not_missing(model: PromptedModel, incompatible: Any) -> None:
    """``load_state_dict`` post-hook: a state dict without the frozen model is complete, so strict
    loading (and ``Trainer``'s checks) only miss what trains."""
    keep = model.trained_prefixes() + (EXTRA_STATE_KEY,)
    frozen = [key for key in incompatible.missing_keys if not key.startswith(keep)]
    for key in frozen:
        incompatible.missing_keys.remove(key)


def refuse_packed(kwargs: dict[str, Any]) -> None:
    """Refuse padding-free packed batches: one row would hold several sequences, each needing its prompt."""
    packed = [key for key in PACKED_KEYWORDS if key in kwargs]
    if packed:
        raise ValueError(
            f"this batch is packed (padding-free: {', '.join(packed)}): several sequences share a row, but a "
            "soft prompt goes before each sequence. Turn packing off (TRL: SFTConfig(packing=False, "
            "padding_free=False))"
        )


def _take_trainer_keywords(model: PromptedModel, args: tuple, kwargs: dict[str, Any]):
    """Forward pre-hook: take the keywords Hugging Face trainers add to every call."""
    refuse_packed(kwargs)
    if kwargs.pop("fused_lm_head", False):
        raise TypeError(
            "TRL's fused LM head runs model.base_model as the backbone, but a softprompt model's base_model is "
            "the whole frozen model (without the prompt). Give the trainer "
            "softprompt.integrations.trl.for_trl(model) instead"
        )
    kwargs.pop("use_cache", None)  # softprompt builds the caches its prompt needs itself
    model._items_in_batch = kwargs.pop("num_items_in_batch", None)
    return args, kwargs


def _loss_over_items_in_batch(model: PromptedModel, args: tuple, kwargs: dict[str, Any], output):
    """Forward hook: with ``num_items_in_batch``, the mean loss becomes its sum over this batch's
    labels divided by the items of the whole (accumulated, all-process) batch, as ``Trainer`` expects."""
    items, model._items_in_batch = model._items_in_batch, None
    labels = kwargs.get("labels")
    if items is None or labels is None or getattr(output, "loss", None) is None:
        return None
    # The count Trainer makes: causal LM losses predict labels[:, 1:].
    counted = labels[..., 1:] if model.loss_type == "ForCausalLM" else labels
    output.loss = output.loss * (counted != IGNORE_INDEX).sum() / items
    return output
