"""A causal LM that keeps no key/value cache (GPT-1, ``openai-gpt``): every method at positions.

Its prefix enters at placeholder positions before the input, whose fused ``c_attn`` projection's key
and value channels the prefix overwrites in every layer; virtual tokens enter as input embeddings;
``generate`` runs the whole sequence every step, as the model does. Checked against the model's own
numbers: a prefix of the keys/values a text leaves, or a prompt of the text's embeddings, gives the
logits of the text in front; greedy tokens are the forward passes' argmax, alone or left-padded.
"""

import pytest
import torch
from tiny import padded_batch, random_ids, tiny_model

import softprompt
from softprompt.bank import TaskBank
from softprompt.families import UnsupportedModelError
from softprompt.injection.capture import site_states
from softprompt.injection.positional_prefix import positional_prefix
from softprompt.methods.base import PrefixStates, flatten_prefix
from softprompt.serve.batch import Decoder

SLOTS = 3
METHODS = {
    "prefix_tuning": lambda: softprompt.PrefixTuningConfig(num_virtual_tokens=SLOTS),
    "prompt_tuning": lambda: softprompt.PromptTuningConfig(num_virtual_tokens=SLOTS, init="random"),
    "p_tuning": lambda: softprompt.PTuningConfig(num_virtual_tokens=SLOTS, encoder_hidden_size=8),
}


def gpt1():
    return tiny_model("openai-gpt", "causal-lm")


def wrapped(method: str, base=None):
    model = softprompt.wrap(base or gpt1(), METHODS[method]()).eval()
    with torch.no_grad():
        for p in model.prompt.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.3)
    return model


def test_the_probe_reads_its_layers_from_the_fused_projections_key_and_value_channels():
    base = gpt1()
    model = softprompt.wrap(base, METHODS["prefix_tuning"]())
    assert model.shape.self_prefix_route == "positions"
    layer = positional_prefix(base, base.base_model).layers[0]
    width = layer.key_width  # c_attn gives queries, keys, values one after another
    assert torch.equal(layer.key_channels, torch.arange(width, 2 * width))
    assert torch.equal(layer.value_channels, torch.arange(2 * width, 3 * width))


def test_a_prefix_of_the_models_own_keys_values_equals_the_text_in_front():
    base = gpt1()
    model = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=SLOTS, init="zero")).eval()
    text, ids = random_ids(1, SLOTS, seed=1), random_ids(1, 4)
    with torch.no_grad():
        model.prompt.prefix.copy_(
            flatten_prefix(PrefixStates(site_states(base, model.shape, text[0])["self"]))
        )
        got = model(input_ids=ids).logits
        expected = base(torch.cat([text, ids], dim=1)).logits[:, SLOTS:]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_prompt_of_the_texts_embeddings_equals_the_text_in_front():
    base = gpt1()
    model = softprompt.wrap(base, METHODS["prompt_tuning"]()).eval()
    text, ids = random_ids(1, SLOTS, seed=1), random_ids(1, 4)
    with torch.no_grad():
        model.prompt.embeddings.copy_(base.get_input_embeddings()(text[0]))
        got = model(input_ids=ids).logits
        expected = base(torch.cat([text, ids], dim=1)).logits[:, SLOTS:]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_greedy_tokens_are_the_forward_passes_argmax_alone_and_left_padded(method):
    model = wrapped(method)
    rows = [random_ids(1, n, seed=n)[0] for n in (6, 3)]
    ids, mask = padded_batch(rows, "left")
    with torch.no_grad():
        batched = model.generate(
            ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False
        )
        for i, row in enumerate(rows):
            expected = row[None]
            for _ in range(4):
                step = model(input_ids=expected).logits[:, -1:].argmax(-1)
                expected = torch.cat([expected, step], dim=1)
            alone = model.generate(row[None], max_new_tokens=4, min_new_tokens=4, do_sample=False)
            assert alone.tolist() == expected.tolist()
            assert batched[i, ids.shape[1] :].tolist() == expected[0, len(row) :].tolist()


def test_beam_search_returns_each_rows_beams_as_it_does_alone():
    model = wrapped("prefix_tuning")
    ids = random_ids(2, 4)
    options = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    with torch.no_grad():
        both = model.generate(ids, **options)
        alone = torch.cat([model.generate(ids[i : i + 1], **options) for i in range(2)])
    assert both.tolist() == alone.tolist()


def test_the_bare_model_is_unchanged_by_wrapping_and_by_prompted_runs():
    base = gpt1()
    ids = random_ids(1, 5)
    with torch.no_grad():
        before = base(ids).logits
        model = wrapped("prefix_tuning", base)
        model(input_ids=ids)
        model.generate(ids, max_new_tokens=2, do_sample=False)
        assert torch.equal(base(ids).logits, before)


def test_training_reaches_the_prompt_and_a_saved_prompt_loads_back(tmp_path):
    model = wrapped("prefix_tuning")
    ids = random_ids(2, 5)
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.prompt.prefix.grad.abs().sum() > 0
    path = model.save(tmp_path / "gpt1.safetensors")
    loaded = softprompt.load(gpt1(), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_a_task_bank_runs_prefixes_of_different_lengths_and_refuses_mixing_kinds_with_the_reason():
    base = gpt1()
    bank = TaskBank(base)
    short = softprompt.wrap(base, softprompt.PrefixTuningConfig(num_virtual_tokens=2)).eval()
    long = wrapped("prefix_tuning", base)
    bank.add("short", short)
    bank.add("long", long)
    bank.add("tokens", wrapped("prompt_tuning", base))
    rows = [random_ids(1, n, seed=n)[0] for n in (5, 3)]
    ids, mask = padded_batch(rows, "right")
    with torch.no_grad():
        logits = bank.eval()(ids, mask, tasks=["short", "long"]).logits
        for i, single in enumerate((short, long)):
            alone = single(input_ids=rows[i][None]).logits[0]
            torch.testing.assert_close(logits[i][mask[i].bool()], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(UnsupportedModelError, match="rows of one batch must carry the one kind or the other"):
        bank(ids, mask, tasks=["short", "tokens"])


def test_the_local_engine_refuses_it_with_the_reason():
    with pytest.raises(UnsupportedModelError, match="openai-gpt keeps no key/value cache"):
        Decoder(wrapped("prefix_tuning"))
