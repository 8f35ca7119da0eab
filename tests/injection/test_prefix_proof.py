"""The probe proves every prefix slot it lays out is read: a random prefix through the real injection
path must reach the model's output from every layer, or the layer is named and refused.

Each model here has one layer that takes keys/values (the probe sees it write or compute them) but
ignores the prefix handed to it: a cache whose keys it does not use, an attention module that drops
softprompt's prefix.
"""

import copy

import pytest
import torch
import transformers as T
from tiny import _ENCODER, random_ids, tiny_causal_lm, tiny_model

import softprompt
from softprompt.families import model_shape
from softprompt.injection.capture import unread_decoder_layers

DEEP = softprompt.PrefixTuningConfig(num_virtual_tokens=2, init="random")
PROMPT = softprompt.PromptTuningConfig(num_virtual_tokens=2, init="random")


class _WritesButIgnores:
    """A cache seen by one layer: the layer's keys/values are written to ``cache``, and the layer
    attends to its own keys/values only (what the cache returned, prefix included, is dropped)."""

    def __init__(self, cache) -> None:
        self.cache = cache

    def update(self, keys, values, *args, **kwargs):
        self.cache.update(keys, values, *args, **kwargs)
        return keys, values

    def __getattr__(self, name):
        return getattr(self.cache, name)


def _llama_with_a_layer_ignoring_its_cache(layer: int):
    model = tiny_causal_lm("llama")
    attention = model.model.layers[layer].self_attn
    forward = attention.forward

    def ignoring(*args, cache=None, **kwargs):
        return forward(*args, cache=None if cache is None else _WritesButIgnores(cache), **kwargs)

    attention.forward = ignoring
    return model


def _bert_with_a_module_dropping_the_prefix(layer: int):
    torch.manual_seed(0)
    model = T.BertForSequenceClassification(T.BertConfig(**{**_ENCODER, "num_hidden_layers": 3})).eval()
    attention = model.bert.encoder.layer[layer].attention.self
    forward = attention.forward

    def dropping(*args, softprompt_prefix=None, **kwargs):
        return forward(*args, **kwargs)

    attention.forward = dropping
    return model


def test_a_causal_layer_that_ignores_its_prefix_is_named_and_the_model_refused():
    with pytest.raises(
        softprompt.UnsupportedModelError,
        match=r"llama's layers \[1\] write keys/values to the cache but do not read a prefix placed there",
    ):
        model_shape(_llama_with_a_layer_ignoring_its_cache(1))


def test_every_layer_of_a_causal_lm_reads_its_prefix():
    model = tiny_causal_lm("llama")
    shape = model_shape(model)
    from softprompt.injection.capture import read_decoder_cache

    assert unread_decoder_layers(model, shape.layer_indices, read_decoder_cache(model)) == []


def test_an_encoder_module_that_drops_its_prefix_is_named_and_the_prefix_takes_positions():
    from softprompt.injection.capture import read_attention_calls

    base = _bert_with_a_module_dropping_the_prefix(2)
    _, refusal = read_attention_calls(base, base.base_model)
    assert refusal.startswith(
        "its attention modules ['encoder.layer.2.attention.self'] ignore the keys/values handed to them"
    )
    # The attention route refuses; the prefix then enters through positions, which the proof accepts.
    assert softprompt.wrap(base, DEEP).shape.encoder_prefix_route == "positions"
    # Prompt tuning enters through the embeddings, which every layer reads: it still runs, and moves the logits.
    model = softprompt.wrap(base, PROMPT).eval()
    ids = random_ids(1, 5)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-6)


def test_the_proof_leaves_the_model_as_it_was():
    model = tiny_causal_lm("llama")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    model_shape(model)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def _bart_with_a_cross_attention_ignoring_its_cache(layer: int):
    model = tiny_model("bart", "seq2seq-lm")
    attention = model.get_decoder().layers[layer].encoder_attn
    forward = attention.forward

    def ignoring(*args, cache=None, **kwargs):
        if cache is not None:  # the same cache, but what its cross-attention part returns is dropped
            cache = copy.copy(cache)
            cache.cross_attention_cache = _WritesButIgnores(cache.cross_attention_cache)
        return forward(*args, cache=cache, **kwargs)

    attention.forward = ignoring
    return model


def test_a_decoder_layer_that_ignores_its_cross_prefix_refuses_decoder_prefixes_naming_it():
    base = _bart_with_a_cross_attention_ignoring_its_cache(1)
    assert model_shape(base).decoder_refusals == (
        (
            "cross",
            "its decoder layers [1] do not read a cross prefix (a random one left the logits as they were)",
        ),
    )
    with pytest.raises(
        softprompt.UnsupportedModelError,
        match=r"bart decoders cannot take a key/value prefix at \('encoder', 'decoder', 'cross'\): its decoder "
        r"layers \[1\] do not read a cross prefix",
    ):
        softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=2))
    # the decoder's self-attention alone (peft's choice) reads its prefix; virtual tokens enter the encoder
    softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=2, prefix_sites="decoder"))
    softprompt.wrap(base, PROMPT)


def test_every_decoder_layer_of_an_encoder_decoder_reads_both_prefixes():
    assert model_shape(tiny_model("bart", "seq2seq-lm")).decoder_refusals == ()
