"""``transformers.Trainer`` with a softprompt model: it works as is; this adds softprompt's own file.

``Trainer(model=wrapped)`` trains only what trains (the prompt, and a classifier's new head): a
:class:`~softprompt.models.PromptedModel`'s ``state_dict`` holds just those tensors and the adapter
record, so each checkpoint's ``model.safetensors`` is the prompt, not the frozen base, and
``resume_from_checkpoint`` continues exactly. :class:`SaveAdapterCallback` also writes
``softprompt.safetensors`` into every checkpoint, so a checkpoint folder is an adapter folder:
``softprompt.load(base, "out/checkpoint-500")`` and the CLI read it.

Examples:
    >>> from transformers import Trainer, TrainingArguments
    >>> model = softprompt.wrap(base_model, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    >>> rows = [{"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8]}] * 4
    >>> args = TrainingArguments(tmp_dir, max_steps=2, save_steps=2, report_to=[], use_cpu=True, disable_tqdm=True)
    >>> trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[SaveAdapterCallback()])
    >>> _ = trainer.train()  # doctest: +ELLIPSIS
    {'train_runtime': ...}
    >>> sorted(p.name for p in (tmp_dir / "checkpoint-2").glob("*.safetensors"))
    ['model.safetensors', 'softprompt.safetensors']
    >>> softprompt.load(base_model, tmp_dir / "checkpoint-2").prompt.embeddings.shape
    torch.Size([4, 32])
"""

from __future__ import annotations

from pathlib import Path

from accelerate.utils import extract_model_from_parallel
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from softprompt.files.adapter import ADAPTER_FILENAME


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


__all__ = ["SaveAdapterCallback"]
