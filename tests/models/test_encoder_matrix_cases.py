"""Encoders the support matrix found crashing, each now working against the model's own numbers or
refused with the reason: ESM-C (no ``inputs_embeds``: virtual tokens through its embedding module), Longformer (global attention on the first
position), I-BERT (quantised embeddings return a pair), T5Gemma (sizes in nested configs)."""

import pytest
import torch
from tiny import random_ids, tiny_model

import softprompt
from softprompt.compat import token_embeddings

PROMPT = softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random")
DEEP = softprompt.PrefixTuningConfig(num_virtual_tokens=2, init="random")


def _virtual_tokens_in_front(model, base, ids):
    """The base's own input for ``ids`` (B, T) with the prompt's embeddings in front: (B, P + T, E)."""
    prompt = model.prompt().embeddings[None].expand(ids.shape[0], -1, -1)
    return torch.cat([prompt, token_embeddings(base.get_input_embeddings(), ids)], 1)


def test_virtual_tokens_through_the_embedding_module_are_virtual_tokens_as_inputs_embeds(monkeypatch):
    # The route a model without inputs_embeds takes (placeholder ids, its embedding module giving the
    # arranged embeddings), forced on BERT, which takes both: the same logits and gradients.
    from softprompt.models import encoder as encoder_module

    base = tiny_model("bert", "sequence-classification")
    model = softprompt.wrap(base, PROMPT)
    ids = random_ids(2, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    results = []
    for takes in (True, False):
        real = encoder_module.compat.takes_argument
        monkeypatch.setattr(
            encoder_module.compat,
            "takes_argument",
            lambda module, name, real=real, takes=takes: (
                takes if name == "inputs_embeds" else real(module, name)
            ),
        )
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits.square().sum().backward()
        results.append((logits.detach(), model.prompt.embeddings.grad.clone()))
        monkeypatch.undo()
    (embeds, embeds_grad), (through_ids, ids_grad) = results
    torch.testing.assert_close(through_ids, embeds, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ids_grad, embeds_grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("head", ["sequence-classification", "token-classification"])
def test_an_encoder_without_inputs_embeds_takes_virtual_tokens_and_deep_prompts(head):
    base = tiny_model("esmc", head).eval()
    rows = [random_ids(1, 5, seed=1)[0], random_ids(1, 3, seed=2)[0]]
    ids = torch.stack([rows[0], torch.cat([rows[1], torch.zeros(2, dtype=torch.long)])])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # ESM-C wants right padding
    for config in (PROMPT, DEEP):
        model = softprompt.wrap(base, config).eval()
        with torch.no_grad():
            for p in model.prompt.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.3)
            batched = model(input_ids=ids, attention_mask=mask).logits
            alone = [model(input_ids=row[None]).logits for row in rows]
            bare = base(input_ids=rows[0][None]).logits
        assert (alone[0] - bare).abs().max() > 1e-5  # the prompt is read
        for i, row_alone in enumerate(alone):
            row = batched[i : i + 1, : len(rows[i])] if head == "token-classification" else batched[i : i + 1]
            torch.testing.assert_close(row, row_alone, atol=1e-5, rtol=1e-5)


def test_longformer_classification_gives_the_first_position_global_attention():
    base = tiny_model("longformer", "sequence-classification")
    model = softprompt.wrap(base, PROMPT).eval()
    ids = random_ids(2, 5)
    embeds = _virtual_tokens_in_front(model, base, ids)
    first = torch.zeros(embeds.shape[:2], dtype=torch.long)
    first[:, 0] = 1  # what Longformer gives [CLS] when called with ids alone: here the first virtual token
    # RoBERTa-style positions, counted from the position table's offset (as the model counts for ids)
    positions = torch.arange(embeds.shape[1]).expand(2, -1) + model.shape.position_offset
    with torch.no_grad():
        expected = base(inputs_embeds=embeds, global_attention_mask=first, position_ids=positions).logits
        torch.testing.assert_close(model(input_ids=ids).logits, expected)
        # a caller's own global attention mask marks its tokens, in its layout
        mine = torch.zeros_like(ids)
        mine[:, 2] = 1
        given = torch.nn.functional.pad(mine, (3, 0))
        expected = base(inputs_embeds=embeds, global_attention_mask=given, position_ids=positions).logits
        torch.testing.assert_close(model(input_ids=ids, global_attention_mask=mine).logits, expected)


def test_quantised_embeddings_that_return_a_pair_take_virtual_tokens():
    base = tiny_model("ibert", "token-classification")
    model = softprompt.wrap(base, PROMPT).eval()
    assert model.shape.embed_dim == base.get_input_embeddings().weight.shape[-1]
    ids = random_ids(2, 5)
    with torch.no_grad():
        expected = base(inputs_embeds=_virtual_tokens_in_front(model, base, ids)).logits[:, 3:]
        torch.testing.assert_close(model(input_ids=ids).logits, expected)
