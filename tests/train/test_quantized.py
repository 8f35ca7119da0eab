"""Soft prompts on a quantized frozen base (bitsandbytes int8 / nf4): every method trains, the
gradient reaches the prompt only, the quantized weights never change, and the file is the same as
on a full-precision base."""

from __future__ import annotations

import pytest
import torch
from tiny import random_ids, tiny_causal_lm
from train_helpers import save_small_llama

import softprompt
from softprompt.train.core import step
from softprompt.train.objectives import ClassificationObjective

bnb = pytest.importorskip("bitsandbytes")

from softprompt.quantization import QUANTIZATIONS, load_quantized, quantization_of  # noqa: E402

METHODS = {
    "prompt_tuning": softprompt.PromptTuningConfig(num_virtual_tokens=4),
    "prefix_tuning": softprompt.PrefixTuningConfig(num_virtual_tokens=4),
    "p_tuning": softprompt.PTuningConfig(num_virtual_tokens=4),
}
LABEL_IDS = [5, 6]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small grouped-query Llama saved as a folder (quantization happens when it loads)."""
    return str(save_small_llama(tmp_path_factory.mktemp("small-llama")))


def batch(rows: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = random_ids(rows, 6, seed)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "label": torch.arange(rows) % 2}


def quantized_weights(model) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in model.state_dict().items()}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_every_method_trains_the_prompt_only_on_a_quantized_base(folder, quantization, method):
    base, _ = load_quantized(folder, quantization)
    assert quantization_of(base) == quantization
    linear = base.model.layers[0].self_attn.q_proj
    assert type(linear).__name__ == {"int8": "Linear8bitLt", "nf4": "Linear4bit"}[quantization]
    before = quantized_weights(base)
    model = softprompt.wrap(base, METHODS[method])
    objective = ClassificationObjective(model, label_token_ids=LABEL_IDS)
    with torch.no_grad():  # a dev evaluation before training must not cut the gradient (the CPU repacking)
        objective.scores(batch()["input_ids"], batch()["attention_mask"])
    folded = {name: t.clone() for name, t in model.prompt.folded().items()}  # what the file would hold
    optimizer = torch.optim.AdamW(model.prompt.parameters(), lr=1e-2)

    loss = step(objective, optimizer, batch(), micro_batch_size=2)

    assert loss > 0
    # Every prompt parameter is in the graph (a reparameterising MLP's zero-initialised last layer
    # passes no gradient to the layers before it on the first step: some are exactly zero).
    assert all(p.grad is not None for p in model.prompt.parameters())
    assert sum(p.grad.abs().sum() for p in model.prompt.parameters()) > 0
    for name, tensor in model.prompt.folded().items():
        assert not torch.equal(tensor, folded[name]), f"the prompt's {name} did not move"
    assert all(p.grad is None and not p.requires_grad for p in base.parameters())
    after = quantized_weights(base)
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"the frozen {name} changed"


@pytest.mark.parametrize("quantization,min_cosine", [("int8", 0.99), ("nf4", 0.8)])
def test_the_prompt_gradient_through_quantized_weights_points_where_the_full_one_does(
    folder, quantization, min_cosine
):
    """Quantization perturbs the frozen weights, not the direction the prompt learns in."""

    def prompt_gradient(base) -> torch.Tensor:
        model = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=4, init="vocab"))
        objective = ClassificationObjective(model, label_token_ids=LABEL_IDS)
        rows = batch(8, seed=1)
        objective(rows).backward()
        return model.prompt.embeddings.grad.flatten()

    full = prompt_gradient(softprompt.hub.load_base_model(folder)[0])
    quantized = prompt_gradient(load_quantized(folder, quantization)[0])
    cosine = torch.nn.functional.cosine_similarity(full, quantized, dim=0)
    assert cosine > min_cosine, f"cosine {cosine:.3f}"


def test_a_prompt_trained_on_a_quantized_base_loads_on_the_full_precision_one(folder, tmp_path):
    quantized, _ = load_quantized(folder, "nf4")
    model = softprompt.wrap(quantized, softprompt.PrefixTuningConfig(num_virtual_tokens=4))
    path = model.save(tmp_path / "prompt.safetensors")
    full, _ = softprompt.hub.load_base_model(folder)
    again = softprompt.load(full, path)
    torch.testing.assert_close(again.prompt.prefix, model.prompt.prefix, rtol=0, atol=0)
    back = softprompt.load(quantized, path)  # and onto a quantized base
    torch.testing.assert_close(back.prompt.prefix, model.prompt.prefix, rtol=0, atol=0)


@pytest.mark.skipif(
    not bnb.functional.has_avx512bf16(), reason="bitsandbytes repacks 4-bit weights only on AVX512-BF16 CPUs"
)
def test_a_4bit_base_that_ran_before_wrapping_is_refused_not_silently_untrainable(folder, monkeypatch):
    """The trap ``keep_differentiable`` closes, shown on bitsandbytes itself: after one forward pass
    without gradient in eval mode, a 4-bit layer runs an inference kernel that has no backward. A
    model loaded without the guard and run once is refused by wrap's gradient proof, with the reason."""
    monkeypatch.setattr("softprompt.quantization.keep_differentiable", lambda model: model)
    base, _ = load_quantized(folder, "nf4")
    with torch.no_grad():
        base(input_ids=batch()["input_ids"])  # e.g. a zero-shot evaluation before wrapping
    assert base.model.layers[0].self_attn.q_proj.weight.quant_state.packing_format_for_cpu
    with pytest.raises(softprompt.UnsupportedModelError, match="repacked for inference, with no backward"):
        softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=4))


def test_wrap_keeps_a_4bit_base_differentiable_however_it_was_loaded(folder, monkeypatch):
    monkeypatch.setattr("softprompt.quantization.keep_differentiable", lambda model: model)
    base, _ = load_quantized(folder, "nf4")  # the guard skipped: as a model quantized by hand
    model = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=4))
    objective = ClassificationObjective(model, label_token_ids=LABEL_IDS)
    with torch.no_grad():
        objective.scores(batch()["input_ids"], batch()["attention_mask"])
    objective(batch()).backward()
    assert model.prompt.embeddings.grad is not None and model.prompt.embeddings.grad.any()


def test_quantization_of_a_plain_model_is_none():
    assert quantization_of(tiny_causal_lm("llama")) is None
