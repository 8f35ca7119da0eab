"""An unmodified ``transformers.Trainer`` on softprompt models of every kind: only the prompt (and a
new head) trains, checkpoints hold just that, resuming reaches the same prompt, evaluate/predict,
gradient accumulation, activation checkpointing, and softprompt's own file in each checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny import random_ids, tiny_causal_lm, tiny_encoder, tiny_seq2seq_lm
from transformers import Trainer, TrainingArguments

import softprompt
from softprompt.integrations.trainer import SaveAdapterCallback

PROMPT = softprompt.PromptTuningConfig(num_virtual_tokens=4)
BASES = {
    "causal": lambda: tiny_causal_lm("llama"),
    "seq2seq": lambda: tiny_seq2seq_lm("t5"),  # dropout 0.1: resuming must restore the RNG too
    "encoder": lambda: tiny_encoder("bert"),
}
TENSORS = {
    "causal": ["_extra_state", "prompt.embeddings"],
    "seq2seq": ["_extra_state", "prompt.embeddings"],
    "encoder": [
        "_extra_state",
        "base_model.classifier.bias",
        "base_model.classifier.weight",
        "prompt.embeddings",
    ],
}


def rows(kind: str, count: int = 8) -> list[dict[str, list[int]]]:
    """Training rows whose label counts differ from row to row."""
    ids = random_ids(count, 6, seed=1)
    out = []
    for i, row in enumerate(ids.tolist()):
        item = {"input_ids": row, "attention_mask": [1] * 6}
        if kind == "encoder":
            item["labels"] = i % 3
        else:
            labels = row[:4] if kind == "seq2seq" else list(row)
            keep = 1 + i % len(labels)  # the first `keep` labels count
            item["labels"] = labels[:keep] + [-100] * (len(labels) - keep)
        out.append(item)
    return out


def arguments(output_dir, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir),
        max_steps=4,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return TrainingArguments(**{**settings, **overrides})


def trained_numbers(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", sorted(BASES))
def test_trainer_trains_the_prompt_saves_only_it_and_resumes_to_the_same_prompt(kind, tmp_path):
    model = softprompt.wrap(BASES[kind](), PROMPT)
    frozen = {name: p.clone() for name, p in model.base_model.named_parameters() if not p.requires_grad}
    before = trained_numbers(model)
    trainer = Trainer(model=model, args=arguments(tmp_path / "full"), train_dataset=rows(kind))
    assert trainer.model_accepts_loss_kwargs
    trainer.train()

    after = trained_numbers(model)
    assert sorted(after) == [k for k in TENSORS[kind] if k != "_extra_state"]
    assert all(not torch.equal(after[name], before[name]) for name in after)  # prompt (and head) moved
    assert all(
        torch.equal(p, frozen[name]) for name, p in model.base_model.named_parameters() if name in frozen
    )

    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert sorted(load_file(str(checkpoint / "model.safetensors"))) == TENSORS[kind]
    base_bytes = sum(p.numel() * p.element_size() for p in model.base_model.parameters())
    assert (checkpoint / "model.safetensors").stat().st_size < base_bytes / 20

    # A fresh model (another initial prompt) resumed from step 2 ends where the uninterrupted run did.
    torch.manual_seed(123)
    fresh = softprompt.wrap(BASES[kind](), softprompt.PromptTuningConfig(num_virtual_tokens=4, seed=7))
    resumed = Trainer(model=fresh, args=arguments(tmp_path / "resumed"), train_dataset=rows(kind))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name, value in trained_numbers(fresh).items():
        assert torch.equal(value, after[name]), name
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    resumed_losses = [entry["loss"] for entry in resumed.state.log_history if "loss" in entry]
    assert resumed_losses == losses  # steps 1-2 from the checkpoint, 3-4 computed again


@pytest.mark.parametrize("kind", sorted(BASES))
def test_evaluate_and_predict_give_the_models_own_numbers(kind, tmp_path):
    model = softprompt.wrap(BASES[kind](), PROMPT).eval()
    data = rows(kind)
    trainer = Trainer(model=model, args=arguments(tmp_path), eval_dataset=data)
    batch = {key: torch.tensor([row[key] for row in data]) for key in data[0]}
    with torch.no_grad():
        halves = [model(**{k: v[i : i + 4] for k, v in batch.items()}).loss for i in (0, 4)]
        logits = model(**batch).logits

    scores = trainer.evaluate()
    assert scores["eval_loss"] == pytest.approx(torch.stack(halves).mean().item(), rel=1e-5)
    prediction = trainer.predict(data)
    torch.testing.assert_close(torch.as_tensor(prediction.predictions), logits)
    assert torch.equal(torch.as_tensor(prediction.label_ids), batch["labels"])


def test_gradient_accumulation_trains_as_one_big_batch(tmp_path):
    """Trainer's num_items_in_batch makes 2 x 2 accumulated rows the gradient of 4 rows."""
    prompts = []
    for batch_size, steps in ((4, 1), (2, 2)):
        model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT)
        args = arguments(
            tmp_path / f"ga{steps}",
            max_steps=2,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=steps,
            optim="sgd",
            learning_rate=1.0,
            save_strategy="no",
        )
        Trainer(model=model, args=args, train_dataset=rows("causal")).train()
        prompts.append(model.prompt.embeddings.detach())
    torch.testing.assert_close(prompts[1], prompts[0], rtol=0, atol=1e-6)


def test_activation_checkpointing_from_training_arguments_trains_the_same_prompt(tmp_path):
    prompts = []
    for checkpointing in (False, True):
        model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT)
        args = arguments(
            tmp_path / str(checkpointing), activation_checkpointing=checkpointing, save_strategy="no"
        )
        Trainer(model=model, args=args, train_dataset=rows("causal")).train()
        assert model.is_activation_checkpointing is checkpointing  # Trainer switched it on
        prompts.append(model.prompt.embeddings.detach())
    torch.testing.assert_close(prompts[1], prompts[0])


@pytest.mark.parametrize(
    "config",
    [
        PROMPT,
        softprompt.PrefixTuningConfig(num_virtual_tokens=3),
        softprompt.PTuningConfig(num_virtual_tokens=3),
    ],
    ids=["prompt_tuning", "prefix_tuning", "p_tuning"],
)
def test_gradient_checkpointing_true_trains_the_same_prompt_and_leaves_the_base_alone(config, tmp_path):
    # TrainingArguments(gradient_checkpointing=True), the older spelling, with checkpointing also
    # switched on the base model before wrapping (as a user following the base model's docs would).
    prompts = []
    for checkpointing in (False, True):
        base = tiny_causal_lm("gpt2")
        if checkpointing:
            base.gradient_checkpointing_enable()
        weights = {k: v.clone() for k, v in base.state_dict().items()}
        model = softprompt.wrap(base, config)
        initial = trained_numbers(model)
        args = arguments(
            tmp_path / str(checkpointing), gradient_checkpointing=checkpointing, save_strategy="no"
        )
        Trainer(model=model, args=args, train_dataset=rows("causal")).train()
        assert model.is_activation_checkpointing is checkpointing
        assert all(torch.equal(weights[k], v) for k, v in base.state_dict().items())
        assert all(not torch.equal(initial[k], v) for k, v in trained_numbers(model).items())
        prompts.append(trained_numbers(model))
    for name, trained in prompts[0].items():
        torch.testing.assert_close(prompts[1][name], trained)


def test_save_adapter_callback_makes_each_checkpoint_an_adapter_folder(tmp_path):
    base = tiny_encoder("bert")
    model = softprompt.wrap(base, PROMPT)
    args = arguments(tmp_path, max_steps=2)
    Trainer(model=model, args=args, train_dataset=rows("encoder"), callbacks=[SaveAdapterCallback()]).train()

    checkpoint = tmp_path / "checkpoint-2"
    loaded = softprompt.load(tiny_encoder("bert"), checkpoint)
    trainer_file = load_file(str(checkpoint / "model.safetensors"))
    assert torch.equal(loaded.prompt.embeddings, trainer_file["prompt.embeddings"])
    assert torch.equal(loaded.base_model.classifier.weight, trainer_file["base_model.classifier.weight"])


@pytest.mark.parametrize("kind", ["encoder", "seq2seq"])
def test_resuming_a_prefix_with_dropout_reaches_the_same_prefix(kind, tmp_path):
    config = softprompt.PrefixTuningConfig(num_virtual_tokens=4, init="zero")
    runs = []
    for name, resume in (("full", None), ("resumed", str(tmp_path / "full" / "checkpoint-2"))):
        model = softprompt.wrap(BASES[kind](), config)
        Trainer(model=model, args=arguments(tmp_path / name), train_dataset=rows(kind)).train(
            resume_from_checkpoint=resume
        )
        runs.append(model.prompt.prefix.detach())
    assert torch.equal(runs[1], runs[0])


def test_load_best_model_at_end_loads_the_best_checkpoints_prompt(tmp_path):
    model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT)
    args = arguments(
        tmp_path,
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows("causal"), eval_dataset=rows("causal")[:4])
    trainer.train()
    best = load_file(f"{trainer.state.best_model_checkpoint}/model.safetensors")
    assert torch.equal(model.prompt.embeddings, best["prompt.embeddings"])
