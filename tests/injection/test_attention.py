"""The training fast path: grouped key/value heads kept in masked attention.

A prefix (or padding) gives every attention call an explicit mask; ``transformers``' sdpa then copies
keys/values to every query head. softprompt's calls keep them grouped on CPU (``cache.py``); these
tests check that this computes what the repeated heads compute, saves only grouped keys, and leaves
the bare model's own calls alone.
"""

import pytest
import torch
from tiny import padded_batch, random_ids, tiny_causal_lm, tiny_model

import softprompt

GROUPED_FAMILIES = ["llama", "mistral", "qwen2"]  # 4 query heads, 2 key/value heads
CONFIGS = {
    "prompt_tuning": lambda: softprompt.PromptTuningConfig(num_virtual_tokens=5, init="vocab"),
    "prefix_tuning": lambda: softprompt.PrefixTuningConfig(num_virtual_tokens=4, init="vocab"),
}


def pair(family: str, method: str):
    """The same prompt on an sdpa base (grouped route) and on an eager base (heads repeated)."""
    model = softprompt.wrap(tiny_causal_lm(family), CONFIGS[method]())
    eager = tiny_causal_lm(family)
    eager.set_attn_implementation("eager")
    reference = softprompt.wrap(eager, CONFIGS[method]())
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    reference.prompt.load_state_dict(model.prompt.state_dict())
    return model, reference


def left_padded():
    return padded_batch([random_ids(1, n, seed=n)[0] for n in (7, 3, 5)], "left")


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("family", GROUPED_FAMILIES)
def test_grouped_route_gives_the_logits_and_gradients_of_repeated_heads(family, method):
    model, reference = pair(family, method)
    assert model.base_model.config._attn_implementation == "softprompt_attention"
    ids, mask = left_padded()
    results = []
    for m in (model, reference):
        logits = m(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        (logits[mask.bool()] ** 2).mean().backward()
        results.append((logits[mask.bool()], [p.grad for p in m.prompt.parameters()]))
    (got, got_grads), (expected, expected_grads) = results
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_grouped_route_saves_grouped_keys_not_repeated_ones():
    model, _ = pair("llama", "prefix_tuning")
    ids, mask = left_padded()
    saved: list[tuple[int, ...]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=mask)
    batch, keys = ids.shape[0], 4 + ids.shape[1]  # P + T
    config = model.base_model.config
    head_dim = config.hidden_size // config.num_attention_heads
    assert (batch, config.num_key_value_heads, keys, head_dim) in saved  # (B, H_kv, P + T, D)
    assert (batch, config.num_attention_heads, keys, head_dim) not in saved  # no repeat_kv copies


def test_the_bare_model_computes_what_it_computed_before_wrapping():
    base = tiny_causal_lm("llama")
    ids, mask = left_padded()  # an explicit mask: the path that repeats heads
    with torch.no_grad():
        before = base(input_ids=ids, attention_mask=mask).logits
        model = softprompt.wrap(base, CONFIGS["prefix_tuning"]())
        model(input_ids=ids, attention_mask=mask)
        after = base(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize(("family", "attention"), [("gpt2", "sdpa"), ("llama", "eager")])
def test_models_without_grouped_sdpa_attention_keep_their_attention(family, attention):
    base = tiny_causal_lm(family)
    base.set_attn_implementation(attention)
    softprompt.wrap(base, CONFIGS["prefix_tuning"]())
    assert base.config._attn_implementation == attention


def test_a_prefix_joins_each_layer_on_that_layers_device():
    # Models split over devices (device_map) compute each layer's keys on its own device (peft #2134).
    from softprompt.injection.caches import prefix_cache

    keys, values = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    layer = prefix_cache([(keys, values)]).layers[0]
    new_keys, new_values = (torch.empty(2, 3, 5, 8, device="meta") for _ in range(2))
    joined_keys, joined_values = layer.update(new_keys, new_values, 0)
    assert joined_keys.device.type == joined_values.device.type == "meta"
    assert joined_keys.shape == joined_values.shape == (2, 3, 9, 8)


def test_a_tower_that_takes_no_sdpa_keeps_its_attention_and_the_text_model_takes_the_prompt():
    base = tiny_model("gemma4", "causal-lm")  # text + vision + an audio encoder that refuses sdpa
    assert base.config.audio_config._attn_implementation == "eager"
    model = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=3, init="random"))
    assert base.config.get_text_config()._attn_implementation == "softprompt_attention"  # sdpa inside
    assert base.config.audio_config._attn_implementation == "softprompt_eager"  # its own eager inside
    ids = torch.tensor([[5, 6, 7]])
    assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits)


def _encoder_pair(model_type: str, attention: str):
    base = tiny_model(model_type, "sequence-classification", seed=0)
    base.set_attn_implementation(attention)
    model = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="random"))
    torch.manual_seed(1)
    for p in model.prompt.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return base, model.eval()


@pytest.mark.parametrize("padded_prefix", [False, True])
def test_an_eager_model_reads_a_prefix_through_its_own_eager_function_as_sdpa_does(padded_prefix):
    # The same prefix on BERT run eager (softprompt_eager: its additive float mask) and sdpa (boolean).
    (eager_base, eager), (sdpa_base, sdpa) = _encoder_pair("bert", "eager"), _encoder_pair("bert", "sdpa")
    sdpa.prompt.load_state_dict(eager.prompt.state_dict())
    ids, mask = padded_batch([random_ids(1, n, seed=n)[0] for n in (6, 3)], "right")
    with torch.no_grad():
        # a row without the prompt makes the prefix's own mask explicit (pad slots in the prefix)
        rows = torch.tensor([0, -1] if padded_prefix else [0, 0])
        got, expected = (
            m(
                input_ids=ids,
                attention_mask=mask,
                row_prompts=m.row_prompts([m.compile_prompt(m.prompt)], rows, ids.device),
            ).logits
            for m in (eager, sdpa)
        )
    assert eager_base.config._attn_implementation == "softprompt_eager"
    assert sdpa_base.config._attn_implementation == "softprompt_attention"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["markuplm", "switch_transformers"])
def test_a_model_without_sdpa_takes_a_prefix_and_computes_bit_for_bit_what_it_did_bare(model_type):
    # Neither declares sdpa support: transformers refuses any attention named "...sdpa..." for them.
    head = "sequence-classification" if model_type == "markuplm" else "seq2seq-lm"
    base = tiny_model(model_type, head).eval()
    ids = random_ids(1, 5, seed=3)
    extra = {"decoder_input_ids": ids[:, :2]} if head == "seq2seq-lm" else {}
    with torch.no_grad():
        before = base(input_ids=ids, **extra).logits
        model = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=3, init="random"))
        prompted = model(input_ids=ids, **extra).logits
        after = base(input_ids=ids, **extra).logits
    assert base.config._attn_implementation == "softprompt_eager"
    assert torch.equal(before, after)
    assert not torch.allclose(prompted, before)
