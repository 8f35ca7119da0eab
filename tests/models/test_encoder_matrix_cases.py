"""Encoders the support matrix found crashing, each now working against the model's own numbers or
refused with the reason: ESM-C (no ``inputs_embeds``), Longformer (global attention on the first
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


@pytest.mark.parametrize("head", ["sequence-classification", "token-classification"])
def test_an_encoder_without_inputs_embeds_refuses_virtual_tokens_and_takes_deep_prompts(head):
    base = tiny_model("esmc", head)
    ids = random_ids(2, 5)
    model = softprompt.wrap(base, PROMPT)
    with pytest.raises(
        softprompt.UnsupportedModelError,
        match="EsmcModel takes no inputs_embeds, so virtual tokens cannot enter its input: prompt tuning and "
        r"P-tuning are not supported on esmc; prefix tuning is \(PrefixTuningConfig\)",
    ):
        model(input_ids=ids)
    deep = softprompt.wrap(base, DEEP).eval()
    with torch.no_grad():
        prompted, bare = deep(input_ids=ids).logits, base(input_ids=ids).logits
        for p in deep.prompt.parameters():
            p.zero_()
        zeroed = deep(input_ids=ids).logits
    assert (prompted - bare).abs().max() > 1e-5  # the ids reach the model, and the prefix is read
    assert zeroed.shape == bare.shape


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
