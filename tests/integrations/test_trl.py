"""TRL's SFTTrainer trains a soft prompt on a chat dataset through ``for_trl(model)``; the model
itself gets a clear pointer there, and packed batches are refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_causal_lm, tiny_encoder

import softprompt
from softprompt.integrations.trl import for_trl

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

PROMPT = softprompt.PromptTuningConfig(num_virtual_tokens=4)
CHATS = [
    [{"role": "user", "content": "where is paris"}, {"role": "assistant", "content": "paris is the sun"}],
    [{"role": "user", "content": "what is a cat"}, {"role": "assistant", "content": "a cat is a cat"}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
] * 3


def sft(model, tokenizer, output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=0.05,
        save_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )
    return trl.SFTTrainer(
        model=model,
        args=trl.SFTConfig(**{**settings, **overrides}),
        train_dataset=datasets.Dataset.from_dict({"messages": CHATS}),
        processing_class=tokenizer,
    )


def test_sft_trainer_trains_the_prompt_with_its_fused_loss_and_resumes(tokenizer, tmp_path):
    model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT)
    frozen = {name: p.clone() for name, p in model.base_model.named_parameters()}
    before = model.prompt.embeddings.detach().clone()
    trainer = sft(for_trl(model), tokenizer, tmp_path / "full")

    # TRL's fused LM head computes the loss the model's own forward computes: the prompt is in it.
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        fused = trainer.compute_loss(trainer.model, dict(batch))
        own = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    torch.testing.assert_close(fused, own.loss)

    trainer.train()
    assert model.is_activation_checkpointing  # TRL's default, through the view
    assert not torch.equal(model.prompt.embeddings, before)
    assert all(torch.equal(p, frozen[name]) for name, p in model.base_model.named_parameters())
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert sorted(load_file(str(checkpoint / "model.safetensors"))) == ["_extra_state", "prompt.embeddings"]

    fresh = softprompt.wrap(
        tiny_causal_lm("llama"), softprompt.PromptTuningConfig(num_virtual_tokens=4, seed=5)
    )
    sft(for_trl(fresh), tokenizer, tmp_path / "resumed").train(resume_from_checkpoint=str(checkpoint))
    assert torch.equal(fresh.prompt.embeddings, model.prompt.embeddings)


def test_the_model_itself_points_to_for_trl(tokenizer, tmp_path):
    model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT)
    with pytest.raises(TypeError, match=r"Give the trainer softprompt\.integrations\.trl\.for_trl\(model\)"):
        sft(model, tokenizer, tmp_path).train()


def test_packing_is_refused(tokenizer, tmp_path):
    model = softprompt.wrap(tiny_causal_lm("llama"), PROMPT)
    with pytest.raises(ValueError, match=r"soft prompt goes before each sequence.*packing=False"):
        sft(for_trl(model), tokenizer, tmp_path, packing=True).train()


def test_for_trl_takes_only_causal_lms():
    with pytest.raises(softprompt.UnsupportedModelError, match="TRL's trainers train causal LMs"):
        for_trl(softprompt.wrap(tiny_encoder("bert"), PROMPT))
