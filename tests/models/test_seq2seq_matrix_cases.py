"""Encoder-decoders the support matrix found crashing, each now working against the model's own numbers
or refused with the reason: T5Gemma (sizes in nested encoder/decoder configs, no sdpa), T5Gemma /
T5Gemma2 generation with a cross-attention prefix (their ``generate`` swaps the cross-attention cache),
FSMT (a decoder that wants the masks its model builds, an encoder that wants ``input_ids`` named),
Pegasus-X's encoder prefix refused with the reason."""

import pytest
import torch
from tiny import random_ids, tiny_model

import softprompt
from softprompt.families import model_shape

PROMPT = softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random")
PREFIX = softprompt.PrefixTuningConfig(num_virtual_tokens=2, init="random")


@pytest.mark.parametrize("model_type", ["t5gemma", "fsmt"])
def test_prompt_tuning_equals_its_embeddings_in_front_of_the_encoder_input(model_type):
    base = tiny_model(model_type, "seq2seq-lm")
    model = softprompt.wrap(base, PROMPT).eval()
    ids, decoder_ids = random_ids(2, 5), random_ids(2, 3, seed=1)
    embeds = torch.cat(
        [model.prompt().embeddings[None].expand(2, -1, -1), base.get_input_embeddings()(ids)], 1
    )
    with torch.no_grad():
        got = model(input_ids=ids, decoder_input_ids=decoder_ids).logits
        expected = base(input_ids=None, inputs_embeds=embeds, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(got, expected)


def test_nested_configs_give_the_encoders_sizes():
    base = tiny_model("t5gemma", "seq2seq-lm")
    shape = model_shape(base)
    encoder = base.config.encoder
    assert shape.num_layers == encoder.num_hidden_layers
    assert shape.layers[0].num_kv_heads == encoder.num_key_value_heads


def test_prefix_tuning_is_refused_with_the_reason():
    # Pegasus-X pads its staggered blocks by half a block: placeholder positions would not line up.
    base = tiny_model("pegasus_x", "seq2seq-lm")
    with pytest.raises(
        softprompt.UnsupportedModelError, match="pegasus_x encoders cannot take a key/value prefix"
    ):
        softprompt.wrap(base, PREFIX)


# T5Gemma's and T5Gemma2's `generate` swap in a cross-attention cache of their own (full attention instead
# of sliding windows); T5Gemma2's decoder attends to its own tokens and the encoder's in one merged call.
def _greedy_by_forward(model, ids, mask, steps: int) -> torch.Tensor:
    """Greedy decoding by full forward passes (the read-only prefix cache): the reference for `generate`."""
    decoded = torch.full((ids.shape[0], 1), model.base_model.config.decoder_start_token_id)
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoded).logits
        decoded = torch.cat([decoded, logits[:, -1].argmax(-1, keepdim=True)], dim=-1)
    return decoded


@pytest.mark.parametrize("sites", ["all", "decoder"])
@pytest.mark.parametrize("model_type", ["t5gemma", "t5gemma2"])
def test_prefix_generation_equals_greedy_forward_passes(model_type, sites):
    base = tiny_model(model_type, "seq2seq-lm")
    model = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=3, prefix_sites=sites))
    model.eval()
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.3)
        ids = random_ids(2, 6)
        mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # row 0 left-padded
        expected = _greedy_by_forward(model, ids, mask, steps=4)
        generated = model.generate(
            ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False
        )
        beams = model.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, num_beams=2)
    assert generated.tolist() == expected.tolist()
    assert beams.shape == expected.shape


def test_a_cross_attention_cache_swapped_in_before_generating_starts_with_the_prefix():
    from transformers import DynamicCache

    from softprompt.injection.caches import encoder_decoder_generation_cache

    keys, values = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    cache = encoder_decoder_generation_cache(None, [(keys, values)])
    cache.cross_attention_cache = DynamicCache()  # what T5Gemma / T5Gemma2's generate do
    layer = cache.cross_attention_cache.layers[0]
    assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    assert cache.is_updated == {0: False}  # the first step still appends the encoder's keys/values
