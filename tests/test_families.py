"""The families table must agree with what each model really puts in its key/value cache."""

import pytest
import torch
import transformers as T
from tiny import FAMILIES, random_ids, tiny_causal_lm

import softprompt
from softprompt.families import model_shape


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_matches_the_models_own_cache(family):
    model = tiny_causal_lm(family)
    shape = model_shape(model)
    cache = model(random_ids(1, 4), use_cache=True).past_key_values
    seen = [(layer.keys.shape[1], layer.keys.shape[3]) for layer in cache.layers]
    assert seen == [(layer.num_kv_heads, layer.head_dim) for layer in shape.layers]
    assert shape.family == family
    assert shape.embed_dim == model.get_input_embeddings().weight.shape[1]


def test_grouped_query_and_explicit_head_dim_are_read_from_config():
    shape = model_shape(tiny_causal_lm("qwen3"))
    assert shape.layers[0].num_kv_heads == 2 and shape.layers[0].head_dim == 16  # not 32 / 4
    assert model_shape(tiny_causal_lm("falcon")).layers[0].num_kv_heads == 1  # multi-query


def test_unsupported_family_error_names_it_and_lists_supported():
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(
        T.GPTJConfig(vocab_size=64, n_embd=32, n_layer=1, n_head=4, rotary_dim=4, n_positions=64)
    )
    with pytest.raises(softprompt.UnsupportedModelError, match="'gptj'.*Supported families: bloom, falcon"):
        softprompt.wrap(model, softprompt.PromptTuningConfig(num_virtual_tokens=2))
