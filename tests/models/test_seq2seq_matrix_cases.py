"""Encoder-decoders the support matrix found crashing, each now working against the model's own numbers
or refused with the reason: T5Gemma (sizes in nested encoder/decoder configs, no sdpa), FSMT (a
decoder that wants the masks its model builds, an encoder that wants ``input_ids`` named)."""

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
    assert shape.layers[0].num_kv_heads == encoder.num_attention_heads


@pytest.mark.parametrize(
    ("model_type", "reason"),
    [
        ("t5gemma", "does not support an attention implementation through torch.nn.functional.scaled_dot"),
        ("fsmt", "its attention calls no replaceable attention function"),
    ],
)
def test_prefix_tuning_is_refused_with_the_reason(model_type, reason):
    base = tiny_model(model_type, "seq2seq-lm")
    with pytest.raises(
        softprompt.UnsupportedModelError,
        match=f"{model_type} encoders cannot take a key/value prefix.*{reason}",
    ):
        softprompt.wrap(base, PREFIX)
