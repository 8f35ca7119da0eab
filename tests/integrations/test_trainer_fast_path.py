"""``SoftPromptTrainer``: causal LMs compute logits only at labelled positions when only the loss is
used, and train to the same prompt as a plain ``Trainer``; evaluation that returns logits keeps them
whole; other kinds train as under ``Trainer``; every checkpoint is an adapter folder."""

from __future__ import annotations

import pytest
import torch
from tiny import random_ids, tiny_causal_lm, tiny_encoder, tiny_seq2seq_lm
from transformers import Trainer, TrainingArguments

import softprompt
from softprompt.integrations.trainer import SaveAdapterCallback, SoftPromptTrainer

PROMPT = softprompt.PromptTuningConfig(num_virtual_tokens=4)
LENGTH = 6


def causal_rows(count: int = 8) -> list[dict[str, list[int]]]:
    """Rows whose loss reads 1 to 3 labelled tokens each (the rest -100)."""
    out = []
    for i, row in enumerate(random_ids(count, LENGTH, seed=1).tolist()):
        keep = 1 + i % 3
        out.append({"input_ids": row, "labels": [-100] * (LENGTH - keep) + row[-keep:]})
    return out


def arguments(output_dir, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir), max_steps=3, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=0.05, lr_scheduler_type="constant", save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    return TrainingArguments(**{**settings, **overrides})


def record_logit_shapes(model) -> list[tuple[int, ...]]:
    """The shape of the logits of every forward call of ``model`` from now on."""
    shapes: list[tuple[int, ...]] = []
    model.register_forward_hook(lambda _module, _args, output: shapes.append(tuple(output.logits.shape)))
    return shapes


def test_training_steps_compute_logits_at_the_labelled_positions_only(tmp_path):
    model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT)
    shapes = record_logit_shapes(model)
    SoftPromptTrainer(model=model, args=arguments(tmp_path), train_dataset=causal_rows()).train()
    vocab = model.config.vocab_size
    assert len(shapes) == 3
    # (N, V), not (B, T, V): a batch of 4 rows has 4 to 12 labelled tokens, not 4 x 6 positions
    assert all(len(shape) == 2 and 4 <= shape[0] <= 12 and shape[1] == vocab for shape in shapes)


def test_it_trains_the_same_prompt_as_a_plain_trainer(tmp_path):
    prompts = []
    for trainer_class in (Trainer, SoftPromptTrainer):
        model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT)
        trainer_class(
            model=model, args=arguments(tmp_path / trainer_class.__name__), train_dataset=causal_rows()
        ).train()
        prompts.append(model.prompt.embeddings.detach().clone())
    torch.testing.assert_close(prompts[1], prompts[0], rtol=1e-5, atol=1e-6)


def test_evaluation_keeps_full_logits_for_metrics_and_the_fast_path_for_the_loss_alone(tmp_path):
    model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT)
    rows = causal_rows(4)
    shapes = record_logit_shapes(model)
    full = SoftPromptTrainer(model=model, args=arguments(tmp_path / "full"))
    predictions = full.predict(rows)
    assert predictions.predictions.shape == (4, LENGTH, model.config.vocab_size)
    assert shapes[-1] == (4, LENGTH, model.config.vocab_size)

    loss_only = SoftPromptTrainer(model=model, args=arguments(tmp_path / "loss", prediction_loss_only=True))
    metrics = loss_only.evaluate(rows)
    assert len(shapes[-1]) == 2  # (N, V)
    assert metrics["eval_loss"] == pytest.approx(predictions.metrics["test_loss"], rel=1e-5)


@pytest.mark.parametrize(
    ("base", "rows"),
    [
        (lambda: tiny_seq2seq_lm("t5"), [{"input_ids": [5, 6, 7, 8], "labels": [9, 10]}] * 4),
        (lambda: tiny_encoder("bert"), [{"input_ids": [5, 6, 7, 8], "labels": i % 3} for i in range(4)]),
    ],
    ids=["seq2seq", "encoder"],
)
def test_other_kinds_train_as_under_a_plain_trainer(base, rows, tmp_path):
    prompts = []
    for trainer_class in (Trainer, SoftPromptTrainer):
        model = softprompt.wrap(base(), PROMPT)
        args = arguments(tmp_path / trainer_class.__name__, max_steps=2)
        trainer_class(model=model, args=args, train_dataset=rows).train()
        prompts.append(model.prompt.embeddings.detach().clone())
    torch.testing.assert_close(prompts[1], prompts[0])


def test_checkpoints_are_adapter_folders_with_one_callback(tmp_path):
    model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT)
    args = arguments(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer = SoftPromptTrainer(
        model=model, args=args, train_dataset=causal_rows(), callbacks=[SaveAdapterCallback()]
    )
    assert sum(isinstance(c, SaveAdapterCallback) for c in trainer.callback_handler.callbacks) == 1
    trainer.train()
    loaded = softprompt.load(tiny_causal_lm("llama"), tmp_path / "checkpoint-2")
    torch.testing.assert_close(loaded.prompt.embeddings, model.prompt.embeddings)
