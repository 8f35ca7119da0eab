"""Shapes read from the model itself (families.model_shape's probe), checked against the model's own numbers.

Each model here has no entry in softprompt.families.FAMILIES: latent attention (keys and values of
different widths), KV sharing (layers that read another layer's keys/values), per-layer head sizes,
hybrid stacks (recurrent layers beside attention), a state-space-only stack.
"""

import re

import pytest
import torch
import transformers as T
from tiny import _COMMON, HYBRID_CONFIGS, VOCAB, random_ids

import softprompt
from softprompt.compat import cache_kwargs
from softprompt.families import LayerShape, model_shape
from softprompt.injection.caches import generation_cache, prefix_cache
from softprompt.injection.capture import site_states
from softprompt.methods.base import PrefixStates, flatten_prefix


def small(config_class, layers: int, **fields):
    """A tiny config of ``config_class``: tiny.py's common sizes, 2 key/value heads, ``layers`` layers."""
    return config_class(**{**_COMMON, "num_key_value_heads": 2, "num_hidden_layers": layers, **fields})


CONFIGS = {
    # latent attention: the cache holds a 16-wide latent as "keys" and the 4-wide rotary key part as "values"
    "deepseek_v3": lambda: small(
        T.DeepseekV3Config,
        2,
        num_key_value_heads=4,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_rope_head_dim=4,
        qk_nope_head_dim=8,
        v_head_dim=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        first_k_dense_replace=2,
        n_group=1,
        topk_group=1,
    ),
    # KV sharing: the last 2 of 5 layers read the keys/values of earlier layers
    "gemma3n_text": lambda: small(
        T.Gemma3nTextConfig,
        5,
        num_kv_shared_layers=2,
        head_dim=8,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=VOCAB,
        laurel_rank=4,
        altup_num_inputs=2,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"] * 2 + ["sliding_attention"],
        activation_sparsity_pattern=[0.0] * 5,
    ),
    # per-layer head sizes (sliding layers 8 wide, full-attention layers 16) and KV sharing
    "gemma4_text": lambda: small(
        T.Gemma4TextConfig,
        4,
        num_kv_shared_layers=2,
        head_dim=8,
        global_head_dim=16,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"] * 2,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=VOCAB,
    ),
    **HYBRID_CONFIGS,  # qwen3_next, jamba, falcon_h1: recurrent layers beside attention
    "mamba": lambda: T.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8),
}


def tiny(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(CONFIGS[model_type]())
    for module in model.modules():  # tiny inits zero some norms and gates; make every layer count
        for name, param in module.named_parameters(recurse=False):
            if param.dim() == 1 and name in ("weight", "scale"):
                torch.nn.init.normal_(param, 1.0, 0.1)
    model.config._name_or_path = f"tiny-{model_type}"
    return model.eval()


def own_cache(model, ids):
    """The model's own cache after a forward over ``ids``: {layer index: (keys, values)} of layers with keys."""
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    return {
        i: (layer.keys, layer.values)
        for i, layer in enumerate(cache.layers)
        if getattr(layer, "keys", None) is not None and layer.keys.numel()
    }


@pytest.mark.parametrize(
    "model_type", ["deepseek_v3", "gemma3n_text", "gemma4_text", "qwen3_next", "jamba", "falcon_h1"]
)
def test_the_shape_is_what_the_models_own_cache_holds(model_type):
    model = tiny(model_type)
    shape = model_shape(model)
    assert model_type not in softprompt.FAMILIES
    cache = own_cache(model, random_ids(1, 4))
    assert list(shape.layer_indices) == sorted(cache)
    assert [
        LayerShape(keys.shape[1], keys.shape[-1], values.shape[-1]) for keys, values in cache.values()
    ] == list(shape.layers)
    assert shape.prefix_width == sum(k.shape[1] * (k.shape[-1] + v.shape[-1]) for k, v in cache.values())


def test_latent_attention_keys_and_values_have_their_own_widths():
    shape = model_shape(tiny("deepseek_v3"))
    assert shape.layers == (LayerShape(num_kv_heads=1, head_dim=16, value_head_dim=4),) * 2
    assert shape.layers[0].kv_size == 20
    # files record the third number only where values differ
    assert shape.fingerprint()["layers"] == [[1, 16, 4], [1, 16, 4]]


def test_kv_sharing_layers_get_no_prefix_slots():
    gemma3n = model_shape(tiny("gemma3n_text"))
    assert gemma3n.layer_indices == (0, 1, 2) and gemma3n.num_layers == 3
    gemma4 = model_shape(tiny("gemma4_text"))
    assert gemma4.layer_indices == (0, 1)
    assert gemma4.layers == (LayerShape(2, 8), LayerShape(2, 16))  # per-layer head sizes
    # the consumers are the last layers: the fingerprint stays what files have always held
    assert "attention_layers" not in gemma4.fingerprint()
    assert model_shape(tiny("jamba")).fingerprint()["attention_layers"] == [1]


@pytest.mark.parametrize(
    ("model_type", "attention", "recurrent"),
    [("qwen3_next", (3,), (0, 1, 2)), ("jamba", (1,), (0, 2, 3)), ("falcon_h1", (0, 1), (0, 1))],
)
def test_hybrid_models_name_their_attention_and_recurrent_layers(model_type, attention, recurrent):
    shape = model_shape(tiny(model_type))
    assert (shape.layer_indices, shape.recurrent_layers) == (attention, recurrent)
    layout = softprompt.methods.prefix_tuning.prefix_layout(softprompt.PrefixTuningConfig(), shape)
    assert len(layout.layers) == len(attention)  # prefix slots in the attention layers only
    assert shape.fingerprint()["recurrent_layers"] == list(recurrent)


@pytest.mark.parametrize("model_type", ["deepseek_v3", "gemma3n_text", "gemma4_text"])
def test_a_prefix_of_the_models_own_keys_values_equals_the_text_in_front(model_type):
    """The family-independent reference: keys/values a text leaves, as a prefix, = the text itself in front."""
    model = tiny(model_type)
    shape = model_shape(model)
    text, ids = random_ids(1, 3, seed=1), random_ids(1, 4)
    states = site_states(model, shape, text[0])["self"]
    cache = prefix_cache([(k[None], v[None]) for k, v in states], model.config, shape.layer_indices)
    with torch.no_grad():
        got = model(
            input_ids=ids,
            attention_mask=torch.ones(1, 7, dtype=torch.long),
            position_ids=torch.arange(3, 7)[None],
            use_cache=False,
            **cache_kwargs(model, cache),
        ).logits
        expected = model(torch.cat([text, ids], dim=1)).logits[:, 3:]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["deepseek_v3", "gemma4_text", "qwen3_next", "falcon_h1"])
def test_prefix_tuning_from_the_models_own_keys_values_equals_the_text_in_front(model_type):
    """The same through softprompt.wrap: a trained prefix holding what a text leaves."""
    model = tiny(model_type)
    wrapped = softprompt.wrap(model, softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="zero")).eval()
    text, ids = random_ids(1, 3, seed=1), random_ids(1, 4)
    states = site_states(model, wrapped.shape, text[0])["self"]
    with torch.no_grad():
        wrapped.prompt.prefix.copy_(flatten_prefix(PrefixStates(states)))
        got = wrapped(input_ids=ids).logits
        expected = model(torch.cat([text, ids], dim=1)).logits[:, 3:]
    if wrapped.shape.recurrent_layers:
        # recurrent layers never see a key/value prefix: it changes the output, not as the text would
        with torch.no_grad():
            bare = model(ids).logits
        assert not torch.allclose(got, bare, atol=1e-4) and not torch.allclose(got, expected, atol=1e-4)
    else:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["qwen3_next", "jamba", "falcon_h1"])
def test_a_masked_prefix_leaves_a_hybrid_models_output_as_it_was(model_type):
    # recurrent layers keep their own fresh state in the prefix cache; masked slots change nothing
    model = tiny(model_type)
    shape = model_shape(model)
    states = [
        (torch.randn(1, s.num_kv_heads, 3, s.head_dim), torch.randn(1, s.num_kv_heads, 3, s.value_head_dim))
        for s in shape.layers
    ]
    ids = random_ids(1, 4)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        for cache in (
            prefix_cache(states, model.config, shape.layer_indices),
            generation_cache(model.config, states, shape.layer_indices),
        ):
            got = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=torch.arange(4)[None],
                **cache_kwargs(model, cache),
            ).logits
            torch.testing.assert_close(got, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_a_state_space_only_model_has_no_prefix_layers_and_prefix_tuning_says_why():
    shape = model_shape(tiny("mamba"))
    assert (shape.layers, shape.recurrent_layers) == ((), (0, 1))
    with pytest.raises(
        softprompt.UnsupportedModelError, match="has no attention layer with keys/values of its own"
    ):
        shape.layout()


@pytest.mark.parametrize(
    "model_type, reason",
    [("deepseek_v3", "needs keys and values of one width"), ("jamba", "takes a prefix in layers [1] only")],
)
def test_a_prefix_peft_cannot_hold_is_not_exported(model_type, reason, tmp_path):
    model = softprompt.wrap(tiny(model_type), softprompt.PrefixTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match=re.escape(reason)):
        model.export_peft(tmp_path / "peft")
    assert not (tmp_path / "peft").exists()  # nothing half-written
