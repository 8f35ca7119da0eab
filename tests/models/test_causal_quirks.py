"""Causal LMs whose forward needs more than embeddings, or cannot be shown a mask: each works checked
against the model's own numbers, or is refused with the reason.

* Gemma 4 adds to every layer an input looked up by token id (``per_layer_inputs``): virtual tokens
  have no id, so they get the pad token's, as Gemma 4 gives its image tokens — a prompt holding the
  pad token's embeddings is then exactly the bare model with pad tokens in front.
* CTRL scales the ``inputs_embeds`` it is given in place: compiling a prompt hands it a copy, so the
  prompt's parameters stay as they were and train.
* RecurrentGemma keeps its recurrent states in its blocks, not in the cache it is given: each call
  starts them afresh, so a call computes the same whatever ran before it.
* ProphetNet reads a cache only one token at a time: virtual tokens enter as input embeddings (the
  bare model with the prompt's embeddings in front), a key/value prefix is refused with the reason.
* CPM-Ant builds its own attention mask from the token ids: refused, for every method.
* RoBERTa-style LMs number positions from ``padding_idx + 1``: the caller's tokens after a prompt are
  numbered the model's way (the bare model with the prompt's embeddings in front).
* A BERT-style LM built without ``is_decoder`` attends both ways, so it is no causal LM: refused,
  saying to set ``is_decoder``.
"""

import pytest
import torch
import transformers as T
from test_causal import CONFIGS
from test_invariance_windows import assert_batch_invariant
from tiny import random_ids, tiny_model

import softprompt


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_gemma4_virtual_tokens_get_the_pad_tokens_per_layer_inputs(method):
    base = tiny_model("gemma4_text", "causal-lm")
    model = softprompt.wrap(base, CONFIGS[method]()).eval()
    assert model.compile_prompt(model.prompt).tokens is not None  # embeddings, not a key/value prefix
    rows = [random_ids(1, n, seed=n)[0] for n in (7, 4, 5)]
    with torch.no_grad():
        for p in model.prompt.parameters():  # a prompt away from its init
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
        assert not torch.allclose(
            model(input_ids=rows[0][None]).logits, base(rows[0][None]).logits, atol=1e-3
        )
    assert_batch_invariant(model, rows)


def test_gemma4_a_prompt_of_pad_embeddings_is_the_bare_model_with_pads_in_front():
    base = tiny_model("gemma4_text", "causal-lm")
    model = softprompt.wrap(base, softprompt.PromptTuningConfig(num_virtual_tokens=3)).eval()
    pads = torch.zeros(1, 3, dtype=torch.long)  # the pad id
    ids = random_ids(1, 5)
    with torch.no_grad():
        (embeddings,) = model.prompt.parameters()
        embeddings.copy_(base.get_input_embeddings()(pads)[0])
        expected = base(torch.cat([pads, ids], 1)).logits[:, 3:]
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_a_model_that_builds_its_own_mask_is_refused_with_the_reason(method):
    with pytest.raises(
        softprompt.UnsupportedModelError, match=r"cpmant's backbone \(CpmAntModel\) takes no attention_mask"
    ):
        softprompt.wrap(tiny_model("cpmant", "causal-lm"), CONFIGS[method]())


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_a_model_that_scales_its_inputs_embeds_in_place_leaves_the_prompt_as_it_was(method):
    model = softprompt.wrap(tiny_model("ctrl", "causal-lm"), CONFIGS[method]())
    before = [p.clone() for p in model.prompt.parameters()]
    ids = random_ids(2, 5)
    with torch.no_grad():
        first, again = (model.eval()(input_ids=ids).logits for _ in range(2))
    torch.testing.assert_close(first, again, atol=0, rtol=0)  # compiled twice: the same prefix
    assert all(torch.equal(p, b) for p, b in zip(model.prompt.parameters(), before, strict=True))
    model.train()(input_ids=ids, labels=ids).loss.backward()  # no in-place change of a leaf
    assert sum(p.grad.abs().sum() for p in model.prompt.parameters()) > 0


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_a_model_keeping_recurrent_states_in_its_blocks_starts_each_call_afresh(method):
    model = softprompt.wrap(tiny_model("recurrent_gemma", "causal-lm"), CONFIGS[method]()).eval()
    rows = [random_ids(1, n, seed=n)[0] for n in (7, 4, 5)]
    with torch.no_grad():
        for p in model.prompt.parameters():  # a prompt away from its init
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
        first = model(input_ids=rows[0][None]).logits
        model(input_ids=rows[1][None])  # another row in between
        torch.testing.assert_close(model(input_ids=rows[0][None]).logits, first, atol=0, rtol=0)
    assert_batch_invariant(model, rows)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_a_model_reading_its_cache_one_token_at_a_time_takes_virtual_tokens_as_embeddings(method):
    base = tiny_model("prophetnet", "causal-lm")
    model = softprompt.wrap(base, CONFIGS[method]()).eval()
    rows = [random_ids(1, n, seed=n)[0] for n in (7, 4, 5)]
    with torch.no_grad():
        for p in model.prompt.parameters():  # a prompt away from its init
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
        virtual = model.prompt().embeddings
        expected = base(inputs_embeds=torch.cat([virtual, base.get_input_embeddings()(rows[0])])[None]).logits
        got = model(input_ids=rows[0][None]).logits
        torch.testing.assert_close(got, expected[:, virtual.shape[0] :], atol=1e-5, rtol=1e-5)
        # generation reads its cache one token at a time: the greedy tokens of full forwards
        sequence = rows[0]
        for _ in range(3):
            logits = model(input_ids=sequence[None]).logits[0, -1]
            logits[base.config.eos_token_id] = -float("inf")  # min_new_tokens
            sequence = torch.cat([sequence, logits.argmax()[None]])
        new = model.generate(rows[0][None], max_new_tokens=3, min_new_tokens=3, do_sample=False)
        assert new[0, 7:].tolist() == sequence[7:].tolist()
    # (the bare ProphetNet itself is not padding-invariant: pads after a row move its logits by ~1e-3)


def test_a_prefix_before_a_model_reading_its_cache_one_token_at_a_time_is_refused():
    model = softprompt.wrap(tiny_model("prophetnet", "causal-lm"), CONFIGS["prefix_tuning"]())
    with pytest.raises(
        softprompt.UnsupportedModelError, match="reads a key/value cache only one token at a time"
    ):
        model(input_ids=random_ids(1, 4))


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_roberta_style_positions_count_from_after_the_padding_index(method):
    base = tiny_model("roberta", "causal-lm")
    model = softprompt.wrap(base, CONFIGS[method]()).eval()
    assert model.shape.position_offset == base.config.pad_token_id + 1
    ids = random_ids(1, 5)
    with torch.no_grad():
        got = model(input_ids=ids).logits
        if method == "prompt_tuning":
            prompt = model.prompt().embeddings[None]
            inputs = torch.cat([prompt, base.get_input_embeddings()(ids)], dim=1)
            expected = base(inputs_embeds=inputs).logits[:, prompt.shape[1] :]
        else:  # a prefix of a text's own keys/values: the text in front
            from softprompt.injection.capture import site_states
            from softprompt.methods.base import PrefixStates, flatten_prefix

            text = random_ids(1, model.prompt.prefix.shape[0], seed=1)
            model.prompt.prefix.copy_(
                flatten_prefix(PrefixStates(site_states(base, model.shape, text[0])["self"]))
            )
            got = model(input_ids=ids).logits
            expected = base(torch.cat([text, ids], dim=1)).logits[:, text.shape[1] :]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_bert_style_lm_built_without_is_decoder_is_refused_saying_so():
    config = tiny_model("bert", "causal-lm").config
    config.is_decoder = False  # transformers then warns, and the model attends both ways
    base = T.BertLMHeadModel(config).eval()
    with pytest.raises(
        softprompt.UnsupportedModelError, match=r"BertLMHeadModel is not causal: .*is_decoder=True"
    ):
        softprompt.wrap(base, CONFIGS["prompt_tuning"]())
