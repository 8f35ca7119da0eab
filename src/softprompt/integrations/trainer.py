"""``transformers.Trainer`` with a softprompt model: it works as is; this adds the fast path and softprompt's file.

``Trainer(model=wrapped)`` trains only what trains (the prompt, and a classifier's new head): a
:class:`~softprompt.models.PromptedModel`'s ``state_dict`` holds just those tensors and the adapter
record, so each checkpoint's ``model.safetensors`` is the prompt, not the frozen base, and
``resume_from_checkpoint`` continues exactly. :class:`SaveAdapterCallback` also writes
``softprompt.safetensors`` into every checkpoint, so a checkpoint folder is an adapter folder:
``softprompt.load(base, "out/checkpoint-500")`` and the CLI read it.

:class:`SoftPromptTrainer` is ``Trainer`` with both: the callback, and causal LMs' logits computed only
where a label is (``forward(..., logits_at="labels")``) whenever the loss is all that is used —
training steps, and evaluation with ``prediction_loss_only``. A plain ``Trainer`` calls
``model(..., labels=...)``, which computes (B, T, V) logits at every position for a loss that reads a
few of them: on SmolLM2 with the loss on one token per row, 1.4x the step time of logits at the
labelled positions on an fp32 base, 1.2x on bf16 (``benchmarks/precision.py``). Evaluation that hands logits to ``compute_metrics`` keeps full logits.

Examples:
    >>> from transformers import TrainingArguments
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> rows = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, -100, 8]}] * 4
    >>> args = TrainingArguments(tmp_dir, max_steps=2, save_steps=2, report_to=[], use_cpu=True, disable_tqdm=True)
    >>> trainer = SoftPromptTrainer(model=model, args=args, train_dataset=rows)
    >>> _ = trainer.train()  # doctest: +ELLIPSIS
    {'train_runtime': ...}
    >>> sorted(p.name for p in (tmp_dir / "checkpoint-2").glob("*.safetensors"))
    ['model.safetensors', 'softprompt.safetensors']
    >>> softprompt.load(base_model, tmp_dir / "checkpoint-2").prompt.embeddings.shape
    torch.Size([4, 32])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from softprompt.files.adapter import ADAPTER_FILENAME
from softprompt.models import SoftPromptModel


class SaveAdapterCallback(TrainerCallback):
    """Write ``softprompt.safetensors`` (the folded prompt, a new head, the record) into each checkpoint."""

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        # `on_save` runs right after Trainer wrote `checkpoint-<step>` (its own naming).
        if model is None or not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        extract_model_from_parallel(model).save(checkpoint / ADAPTER_FILENAME)


class SoftPromptTrainer(Trainer):
    """``Trainer`` for softprompt models: logits only where labels are when only the loss is used, and
    ``softprompt.safetensors`` in every checkpoint (:class:`SaveAdapterCallback`). Takes ``Trainer``'s
    arguments; models without a vocabulary-sized output per position (encoders' heads, seq2seq
    decoders, which score every target) train exactly as under ``Trainer``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not any(isinstance(callback, SaveAdapterCallback) for callback in self.callback_handler.callbacks):
            self.add_callback(SaveAdapterCallback())

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ):
        if self._loss_only(model, inputs, return_outputs):
            inputs = {**inputs, "logits_at": "labels"}  # logits (N, V): the labelled positions only
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _loss_only(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool) -> bool:
        """Whether this call's logits are never read: a training step or a loss-only evaluation, where
        the model computes the loss itself (no label smoother or custom loss reads its logits)."""
        return (
            (not return_outputs or self.args.prediction_loss_only)
            and inputs.get("labels") is not None
            and self.label_smoother is None
            and self.compute_loss_func is None
            and isinstance(extract_model_from_parallel(model), SoftPromptModel)
        )


__all__ = ["SaveAdapterCallback", "SoftPromptTrainer"]
