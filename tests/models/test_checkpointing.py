"""Gradient checkpointing however it is switched on — on the wrapper with transformers' arguments, on
the base model before or after wrapping — for every method: the prompt's gradients equal the
unchecked run's, the layers really recompute, the base's weights stay the same bit for bit, and the
switches softprompt makes for a forward are put back after it. Hybrid models (recurrent layers beside
attention) too: the replayed recurrent layers start from the same fresh state as the first call."""

import pytest
import torch
from test_causal import CONFIGS
from tiny import HYBRID_FAMILIES, random_ids, tiny_causal_lm, tiny_hybrid_lm, tiny_seq2seq_lm

import softprompt

# How checkpointing is switched on: None (the reference run) or one of these.
WAYS = {
    "wrapper": lambda base, model: model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False}
    ),
    "base_before_wrap": None,  # base.gradient_checkpointing_enable() before softprompt.wrap
    "base_after_wrap": lambda base, model: base.gradient_checkpointing_enable(),
}
BASES = {"t5": lambda: tiny_seq2seq_lm("t5")} | {
    family: lambda family=family: tiny_hybrid_lm(family) for family in HYBRID_FAMILIES
}


def build(family: str, method: str, way: str | None):
    base = BASES.get(family, lambda: tiny_causal_lm(family))().train()
    if way == "base_before_wrap":
        base.gradient_checkpointing_enable()
    model = softprompt.wrap(base, CONFIGS[method]()).train()
    if way in WAYS and WAYS[way] is not None:
        WAYS[way](base, model)
    with torch.no_grad():  # the same prompt, away from its init, in every run
        for p in model.prompt.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    return base, model


def first_layer_part(base) -> torch.nn.Module:
    """A module with weights inside the first checkpointed layer (a Linear, GPT-2's Conv1D...)."""
    layer = next(m for m in base.modules() if isinstance(m, softprompt.compat.GradientCheckpointingLayer))
    return next(m for m in layer.modules() if m is not layer and list(m.parameters(recurse=False)))


def step(base, model):
    """One training step; returns the prompt's gradients and how often layer 0 ran."""
    calls = []
    # a pre-hook: a replay may stop early, as soon as it has what backward needs
    hook = first_layer_part(base).register_forward_pre_hook(lambda *_: calls.append(1))
    ids = random_ids(2, 6)
    labels = ids[:, :4].contiguous() if base.config.is_encoder_decoder else ids
    model(input_ids=ids, labels=labels).loss.backward()
    hook.remove()
    return [p.grad.clone() for p in model.prompt.parameters()], len(calls)


@pytest.mark.parametrize("way", sorted(WAYS))
@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("family", ["llama", "gpt2", "bloom", "falcon", "opt", "t5"])
def test_checkpointing_gives_the_unchecked_gradients_however_it_is_switched_on(family, method, way):
    assert_checkpointing_gives_the_unchecked_gradients(family, method, way)


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_checkpointing_a_hybrid_model_gives_the_unchecked_gradients(family, method):
    # prefix tuning once raised CheckpointError: the replay read the recurrent state the first call stored
    assert_checkpointing_gives_the_unchecked_gradients(family, method, "base_before_wrap")


def assert_checkpointing_gives_the_unchecked_gradients(family: str, method: str, way: str) -> None:
    reference, reference_runs = step(*build(family, method, None))
    base, model = build(family, method, way)
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    grads, runs = step(base, model)
    assert all(g.abs().sum() > 0 for g in reference)
    for got, expected in zip(grads, reference, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert runs > reference_runs  # layer 0 recomputed in backward: checkpointing is on
    torch.optim.SGD(model.prompt.parameters(), lr=0.1).step()
    assert all(torch.equal(weights[k], v) for k, v in base.state_dict().items())  # bit for bit
    # The switches made for the forward are back: the base on its own still drops caches.
    layers = [m for m in base.modules() if isinstance(m, softprompt.compat.GradientCheckpointingLayer)]
    assert all("_can_checkpoint_with_cache" not in vars(m) and m.gradient_checkpointing for m in layers)
    if family == "gpt2":  # its backbone loop has a switch of its own
        assert base.transformer.gradient_checkpointing


def test_reentrant_checkpointing_on_the_base_is_refused_with_the_way_out():
    base = tiny_causal_lm("llama").train()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model = softprompt.wrap(base, CONFIGS["prompt_tuning"]()).train()
    ids = random_ids(2, 6)
    with pytest.raises(ValueError, match=r"non-reentrant checkpointing \(use_reentrant=False\).*"):
        model(input_ids=ids, labels=ids)
    with torch.no_grad():  # evaluation does not checkpoint: nothing to refuse
        assert model.eval()(input_ids=ids).logits.shape == (2, 6, 96)
